//! The `outpost` binary: the composition root. `cli` parses arguments (clap) and calls one
//! function per subcommand; all logic lives in the workspace crates.
mod cli;

fn main() {
    std::process::exit(cli::main());
}
