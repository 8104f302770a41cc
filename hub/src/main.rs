//! `outpost-hub`: see `outpost-hub --help` and docs/PROTOCOL.md.

use clap::Parser;
use outpost_hub::cli::{run_client, serve_config, terminal_safe, Cli, Cmd};
use outpost_hub::error::HubError;

fn run(cli: Cli) -> Result<(), HubError> {
    match cli.cmd {
        Cmd::Serve(args) => {
            let cfg = serve_config(args)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| HubError::Internal(format!("cannot start the runtime: {e}")))?;
            let r = rt.block_on(outpost_hub::server::serve(cfg));
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            r
        }
        cmd => run_client(cmd),
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        // The message may quote what a hub (or through it an agent) sent: keep it inert.
        eprintln!("error: {}", terminal_safe(&e.to_string()));
        eprintln!("hint: {}", terminal_safe(&e.hint()));
        std::process::exit(e.exit_code());
    }
}
