//! The `outpost` command line. `main` calls [`main`]; everything here is thin glue from
//! flags to the library functions.
pub mod agentctl;
pub mod cloudinit;
pub mod pack;
pub mod privileged;
pub mod runs;
pub mod status;

use clap::{Args, CommandFactory, Parser, Subcommand};
use outpost_core::env;
use outpost_core::exit;
use outpost_core::layout::{Layout, Mode};
use outpost_installer::apply::{Host, RealHost};
use outpost_installer::detect::{self, HostProbe, Probe};
use outpost_installer::error::{Error, Result};
use outpost_installer::install::{self, InstallArgs};
use outpost_installer::uninstall::{self, UninstallArgs};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "outpost",
    version = outpost_release::VERSION,
    about = "Install, run and upgrade the outpost agent as a systemd service",
    long_about = "outpost is the installer, systemd unit writer, self-upgrader and runner agent in one binary.\n\nExit codes: 0 ok, 1 failure, 2 bad input (nothing changed), 3 service not running (status), 10 token revoked (agent).",
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Filesystem root to operate on (a test seam of test builds only; default /).
    #[cfg_attr(
        any(debug_assertions, feature = "fault-injection"),
        arg(long, global = true, env = env::ROOT, default_value = "/", hide = true)
    )]
    #[cfg_attr(
        not(any(debug_assertions, feature = "fault-injection")),
        arg(long, global = true, default_value = "/", hide = true)
    )]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args, Clone, Copy)]
#[group(multiple = false)]
pub(crate) struct ModeFlags {
    /// Act on the per-user service (systemd --user, linger)
    #[arg(long)]
    user: bool,
    /// Act on the system-wide service
    #[arg(long)]
    system: bool,
}

impl ModeFlags {
    fn mode(self) -> Option<Mode> {
        match (self.user, self.system) {
            (true, _) => Some(Mode::User),
            (_, true) => Some(Mode::System),
            _ => None,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what outpost finds on this host and which mode it recommends
    Detect {
        #[arg(long)]
        json: bool,
    },
    /// Install (or update in place) the service; keeps config, secrets and state
    Install(InstallFlags),
    /// Stop and remove the service; keeps config, secrets and state unless --purge
    Uninstall(UninstallFlags),
    /// Show the installed version, mode and service state
    Status {
        #[command(flatten)]
        mode: ModeFlags,
        #[arg(long)]
        json: bool,
    },
    /// Start outpost.service
    Start(ControlArgs),
    /// Stop outpost.service
    Stop(ControlArgs),
    /// Restart outpost.service
    Restart(ControlArgs),
    /// Upgrade (or, with an older --target, roll back) to a verified release
    Upgrade(UpgradeFlags),
    /// Check this host's agent: hub reachable, TLS, clock skew, token file, disk, memory,
    /// unit, linger, journal (non-zero exit when a check fails)
    Diagnostics {
        #[command(flatten)]
        mode: ModeFlags,
        #[arg(long)]
        json: bool,
        /// Also upload the report to the hub
        #[arg(long)]
        send: bool,
    },
    /// Ask the running agent to heartbeat now and print the result
    Heartbeat {
        #[command(flatten)]
        mode: ModeFlags,
        /// Heartbeat now (required: there is no other mode yet)
        #[arg(long, required = true)]
        now: bool,
        #[arg(long)]
        json: bool,
    },
    /// Audit the event journal
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Show the event journal (upgrades, enrollment, revocation)
    Events {
        #[command(flatten)]
        mode: ModeFlags,
        /// Keep printing new events as they are written
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// The agent (the service's ExecStart)
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Check that this binary can run the installed service (loads the config, checks the state dir)
    SelfTest {
        #[command(flatten)]
        paths: AgentPaths,
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff)
    Man,
    /// Packs: the actions this host allows the hub to run (validate, install, list, remove, trust)
    Pack {
        #[command(subcommand)]
        command: crate::cli::pack::PackCommand,
    },
    /// The runs this host executed for the hub (newest last), from the agent's records
    Runs {
        #[command(subcommand)]
        command: Option<crate::cli::runs::RunsCommand>,
        /// Keep printing runs as they start and end
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        mode: ModeFlags,
    },
    /// Supervised workloads: `workload stop RUN [--now]`
    Workload {
        #[command(subcommand)]
        command: crate::cli::runs::WorkloadCommand,
    },
    /// The actions the installed packs allow (`action list`)
    Action {
        #[command(subcommand)]
        command: crate::cli::runs::ActionCommand,
    },
    /// Root's half of a privileged run (outpost-run-privileged@ID.service starts it)
    #[command(hide = true)]
    PrivilegedRun { run_id: String },
    /// Render cloud-init user-data that bootstraps an enrolled host
    CloudInit {
        #[command(subcommand)]
        command: crate::cli::cloudinit::CloudInitCommand,
    },
}

#[derive(Debug, Args)]
struct InstallFlags {
    #[command(flatten)]
    mode: ModeFlags,
    /// System mode: run the service as USER (default: SUDO_USER, else a new `outpost` system user)
    #[arg(long, value_name = "USER", env = env::RUN_AS)]
    run_as: Option<String>,
    /// System mode: also let members of GROUP start/stop/restart outpost.service (polkit)
    #[arg(long, value_name = "GROUP")]
    admin_group: Option<String>,
    /// Control-plane URL written into a new config
    #[arg(long, value_name = "URL", env = env::HUB_URL)]
    hub: Option<String>,
    /// Accept a plain http:// hub URL for a host other than loopback (the token then
    /// crosses the network unencrypted); recorded as `[hub] insecure_http = true`
    #[arg(long)]
    insecure_http: bool,
    /// Verify this binary against the signed release at URL and record URL in a new config
    /// (install.sh passes it; trusted keys come from OUTPOST_RELEASE_PUBKEYS and the build)
    #[arg(long, value_name = "URL", env = env::RELEASE_URL)]
    release_url: Option<String>,
    /// PEM file of extra CAs for the release host and hub (recorded in a new config)
    #[arg(long, value_name = "PEM", env = env::CA_FILE)]
    ca_file: Option<PathBuf>,
    /// Install and enable, but do not start the service
    #[arg(long)]
    no_start: bool,
    /// Print the plan (every file, unit, user and linger change) and change nothing
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct UninstallFlags {
    #[command(flatten)]
    mode: ModeFlags,
    /// Also remove config, secrets, state and the system user install created
    #[arg(long)]
    purge: bool,
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct UpgradeFlags {
    #[command(flatten)]
    mode: ModeFlags,
    /// Exact version to go to (an older one is the documented rollback)
    #[arg(long, value_name = "X.Y.Z")]
    target: Option<semver::Version>,
    /// Channel whose newest version to take (default: [release] channel, else stable)
    #[arg(long, value_name = "CHANNEL", value_parser = ["stable", "beta"])]
    channel: Option<String>,
    /// Release source instead of [release] url: https:// URL, directory or offline bundle file
    #[arg(long, value_name = "URL|DIR|FILE", env = env::RELEASE_URL)]
    from: Option<String>,
    /// Swap the package only; leave the running service alone and print the restart command
    #[arg(long)]
    no_restart: bool,
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
    /// Resolve an interrupted upgrade and exit (the unit's ExecStartPre runs this)
    #[arg(long, hide = true)]
    resolve_pending: bool,
    /// Watch a running upgrade and finish or revert it if its upgrader dies (the
    /// upgrader starts this in a transient unit)
    #[arg(long, hide = true, conflicts_with = "resolve_pending")]
    guard: bool,
}

#[derive(Debug, Args)]
struct ControlArgs {
    #[command(flatten)]
    mode: ModeFlags,
    /// Print what would be done
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args, Clone)]
struct AgentPaths {
    /// Config file (default: the mode's config path)
    #[arg(long, env = env::CONFIG, value_name = "PATH")]
    config: Option<PathBuf>,
    /// State directory (default: the mode's state path)
    #[arg(long, env = env::STATE_DIR, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Mode the service was installed in
    #[arg(long, env = env::MODE, value_name = "MODE", value_parser = ["system", "user"])]
    mode: Option<String>,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify the journal's hash chain; names the first broken record
    Verify {
        #[command(flatten)]
        mode: ModeFlags,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Run the agent in the foreground (systemd runs this)
    Run {
        #[command(flatten)]
        paths: AgentPaths,
    },
}

/// Entry point: parse, run, print errors as `error:` + `hint:`, return the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return clap_error(e),
    };
    // Not `stdout().lock()`: the agent's threads log to stdout too, and a lock held here
    // for the whole process would block them forever.
    let mut out = std::io::stdout();
    match dispatch(cli, &mut out) {
        Ok(code) => code,
        Err(e) => {
            let _ = out.flush();
            eprintln!("error: {e}");
            eprintln!("hint: {}", e.hint());
            e.exit_code()
        }
    }
}

/// The enrollment key: `OUTPOST_ENROLL_KEY`, or the file `OUTPOST_ENROLL_KEY_FILE` names
/// (the safer way through sudo: `--preserve-env=VAR` makes sudo log the value).
fn enroll_key_from_env() -> Result<Option<String>> {
    let direct = std::env::var(env::ENROLL_KEY)
        .ok()
        .filter(|k| !k.trim().is_empty());
    let file = std::env::var_os(env::ENROLL_KEY_FILE)
        .filter(|f| !f.is_empty())
        .map(PathBuf::from);
    match (direct, file) {
        (Some(_), Some(_)) => Err(Error::usage(
            format!(
                "both {} and {} are set",
                env::ENROLL_KEY,
                env::ENROLL_KEY_FILE
            ),
            "set only one of them",
        )),
        (Some(k), None) => Ok(Some(k.trim().to_string())),
        (None, Some(f)) => {
            let text = fs_err::read_to_string(&f).map_err(|e| {
                Error::usage(
                    format!(
                        "cannot read the enrollment key file {}: {}",
                        f.display(),
                        e.kind()
                    ),
                    "write the key into that file (mode 0600) first",
                )
            })?;
            let k = text.trim().to_string();
            if k.is_empty() {
                return Err(Error::usage(
                    format!("the enrollment key file {} is empty", f.display()),
                    "write the key printed by `outpost-hub keys create` into it",
                ));
            }
            Ok(Some(k))
        }
        (None, None) => Ok(None),
    }
}

fn clap_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                exit::USAGE
            } else {
                exit::OK
            }
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("error: {first}");
            let tip = rendered
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("tip:"))
                .map(|t| t.trim_start_matches("tip: ").to_string());
            eprintln!(
                "hint: {}",
                tip.unwrap_or_else(|| {
                    "run `outpost --help` (or `outpost COMMAND --help`) for usage".into()
                })
            );
            exit::USAGE
        }
    }
}

fn default_paths(
    paths: &AgentPaths,
    probe: &dyn Probe,
    root: &std::path::Path,
) -> Result<(PathBuf, PathBuf, String)> {
    let mode = match paths.mode.as_deref() {
        Some("user") => Mode::User,
        Some(_) => Mode::System,
        None if probe.euid() == 0 => Mode::System,
        None => Mode::User,
    };
    let layout = match mode {
        Mode::System => Layout::system(root),
        Mode::User => {
            let home = std::env::var_os(env::HOME)
                .map(PathBuf::from)
                .ok_or_else(|| {
                    Error::usage(
                        "HOME is not set, so the user-mode paths are unknown",
                        "pass --config and --state-dir",
                    )
                })?;
            Layout::user(root, &home)
        }
    };
    Ok((
        paths
            .config
            .clone()
            .unwrap_or_else(|| layout.host(&layout.config_file)),
        paths
            .state_dir
            .clone()
            .unwrap_or_else(|| layout.host(&layout.agent_dir)),
        mode.to_string(),
    ))
}

/// Every command that acts on an install first resolves an upgrade that was interrupted
/// (SIGKILL, power loss): finish or revert, so no host stays half-upgraded.
fn resolve_interrupted(
    probe: &dyn Probe,
    host: &dyn Host,
    root: &std::path::Path,
    mode: Option<Mode>,
) {
    if let Ok((layout, Some(_))) = uninstall::find_install(probe, root, mode) {
        resolve_interrupted_at(&layout, host, probe.euid());
    }
}

/// [`resolve_interrupted`] for an install already located.
fn resolve_interrupted_at(layout: &Layout, host: &dyn Host, euid: u32) {
    if !layout
        .host(&outpost_upgrade::record::path(&layout.state_dir))
        .exists()
    {
        return;
    }
    let mut err = std::io::stderr();
    if let Err(e) = outpost_upgrade::resolve_pending(
        layout,
        host,
        euid,
        outpost_upgrade::ResolveContext::Cli,
        &mut err,
    ) {
        eprintln!(
            "warning: an interrupted upgrade could not be resolved: {e}\nhint: {}",
            e.hint()
        );
    }
}

/// Whether this build has the test seams (`--root`/`OUTPOST_ROOT`, fault knobs).
pub const TEST_SEAMS: bool = cfg!(any(debug_assertions, feature = "fault-injection"));

/// The root resolver and the upgrade guard act as root on what the unit says, nothing else:
/// drop every inherited variable but PATH before anything reads one.
fn scrub_environment() {
    for (k, _) in std::env::vars_os() {
        if k != "PATH" {
            std::env::remove_var(k);
        }
    }
}

/// What every subcommand acts on: the filesystem root (`/` in release builds), the host
/// probe and the host's side effects.
struct Ctx {
    root: PathBuf,
    probe: HostProbe,
    host: RealHost,
}

impl Ctx {
    fn new(root: PathBuf) -> Ctx {
        Ctx {
            probe: HostProbe { root: root.clone() },
            host: RealHost { root: root.clone() },
            root,
        }
    }
}

impl Command {
    /// The privileged entry points a unit starts (resolver, guard): they keep only PATH.
    fn is_privileged_unit_entry(&self) -> bool {
        matches!(self, Command::Upgrade(u) if u.resolve_pending || u.guard)
            || matches!(self, Command::PrivilegedRun { .. })
    }

    /// The mode flags of commands that first resolve an interrupted upgrade. `upgrade`
    /// locates the install once and resolves with it; the rest do not touch the install.
    fn resolves_first(&self) -> Option<Option<Mode>> {
        match self {
            Command::Install(InstallFlags { mode, .. })
            | Command::Uninstall(UninstallFlags { mode, .. })
            | Command::Status { mode, .. }
            | Command::Events { mode, .. } => Some(mode.mode()),
            Command::Start(a) | Command::Stop(a) | Command::Restart(a) => Some(a.mode.mode()),
            _ => None,
        }
    }
}

fn dispatch(cli: Cli, out: &mut dyn Write) -> Result<i32> {
    if cli.command.is_privileged_unit_entry() {
        scrub_environment();
    }
    if !TEST_SEAMS && cli.root != std::path::Path::new("/") {
        return Err(Error::usage(
            "--root is a test seam and this is a release build",
            "drop --root; outpost always acts on this host's /",
        ));
    }
    let ctx = Ctx::new(cli.root.clone());
    if let Some(mode) = cli.command.resolves_first() {
        resolve_interrupted(&ctx.probe, &ctx.host, &ctx.root, mode);
    }
    let (probe, host, root) = (&ctx.probe, &ctx.host, &ctx.root);
    match cli.command {
        Command::Upgrade(u) if u.resolve_pending => upgrade_resolve_pending(&ctx, u.mode, out),
        Command::Upgrade(u) if u.guard => upgrade_guard(&ctx, u.mode, out),
        Command::Upgrade(u) => upgrade(&ctx, u, out),
        Command::Diagnostics { mode, json, send } => {
            agentctl::diagnostics(probe, host, root, mode.mode(), json, send, out)
        }
        Command::Heartbeat { mode, now: _, json } => {
            agentctl::heartbeat_now(probe, host, root, mode.mode(), json, out)
        }
        Command::Audit {
            command: AuditCommand::Verify { mode, json },
        } => agentctl::audit_verify(probe, root, mode.mode(), json, out),
        Command::Events { mode, follow, json } => {
            status::events(probe, root, mode.mode(), follow, json, out)
        }
        Command::Detect { json } => detect_host(&ctx, json, out),
        Command::Install(a) => install(&ctx, a, out),
        Command::Uninstall(a) => uninstall(&ctx, a, out),
        Command::Status { mode, json } => status::run(probe, host, root, mode.mode(), json, out),
        Command::Start(a) => control(Verb::Start, a, probe, host, root, out),
        Command::Stop(a) => control(Verb::Stop, a, probe, host, root, out),
        Command::Restart(a) => control(Verb::Restart, a, probe, host, root, out),
        Command::Agent {
            command: AgentCommand::Run { paths },
        } => agent_run(&ctx, &paths),
        Command::SelfTest { paths, json } => self_test(&ctx, &paths, json, out),
        Command::CloudInit { command } => cloudinit::run(command, out),
        Command::PrivilegedRun { run_id } => privileged::run(root, &run_id, out),
        Command::Pack { command } => pack::run(command, probe, host, root, out),
        Command::Runs {
            command: Some(runs::RunsCommand::Logs { run, follow, mode }),
            ..
        } => runs::logs(probe, root, &run, follow, mode, out),
        Command::Runs {
            command: Some(runs::RunsCommand::Peek { run, json, mode }),
            ..
        } => runs::peek(probe, root, &run, json, mode, out),
        Command::Workload { command } => runs::workload(probe, root, command, out),
        Command::Runs {
            command: None,
            follow,
            json,
            mode,
        } => runs::list(probe, root, mode, follow, json, out),
        Command::Action { command } => runs::actions(probe, root, command, out),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "outpost", out);
            Ok(exit::OK)
        }
        Command::Man => man(out),
    }
}

/// `upgrade --resolve-pending`: the unit's `ExecStartPre=` resolver.
fn upgrade_resolve_pending(ctx: &Ctx, mode: ModeFlags, out: &mut dyn Write) -> Result<i32> {
    let (layout, _) = uninstall::find_install(&ctx.probe, &ctx.root, mode.mode())?;
    outpost_upgrade::fault::dump_start_environment(&layout);
    let r = outpost_upgrade::resolve_pending(
        &layout,
        &ctx.host,
        ctx.probe.euid(),
        outpost_upgrade::ResolveContext::ServiceStart,
        out,
    )?;
    if r != outpost_upgrade::decide::Resolution::Nothing {
        writeln!(out, "upgrade record resolved: {r:?}").ok();
    }
    Ok(exit::OK)
}

/// `upgrade --guard`: the transient unit that finishes or reverts an orphaned upgrade.
fn upgrade_guard(ctx: &Ctx, mode: ModeFlags, out: &mut dyn Write) -> Result<i32> {
    let (layout, _) = uninstall::find_install(&ctx.probe, &ctx.root, mode.mode())?;
    let r = outpost_upgrade::guard(&layout, &ctx.host, ctx.probe.euid(), out)?;
    writeln!(out, "upgrade guard: {r:?}").ok();
    Ok(exit::OK)
}

/// `upgrade [--target V | --channel C]`.
fn upgrade(ctx: &Ctx, u: UpgradeFlags, out: &mut dyn Write) -> Result<i32> {
    // Detect the host, find the install and load its config once.
    let loc = outpost_upgrade::Located::find(&ctx.probe, &ctx.root, u.mode.mode())?;
    if loc.receipt.is_some() {
        resolve_interrupted_at(&loc.layout, &ctx.host, loc.euid);
    }
    let layout = &loc.layout;
    let sd = layout.host(&layout.state_dir);
    let mut stager =
        outpost_upgrade::stage::ReleaseStager::from_config(&loc.config, u.from.as_deref(), &sd)?;
    // The replay state decides which manifests root accepts: root's dir only, and a dry run
    // checks it without recording anything.
    outpost_core::trust::check_trusted(&layout.root, &sd, ctx.probe.euid())
        .map_err(|e| Error::failed(e.to_string(), e.hint()))?;
    if u.dry_run {
        stager.replay =
            outpost_release::ReplayState::checking(sd.join(outpost_upgrade::stage::REPLAY_FILE));
    }
    let args = outpost_upgrade::UpgradeArgs {
        target: u.target,
        channel: u.channel,
        no_restart: u.no_restart,
        dry_run: u.dry_run,
        json: u.json,
    };
    outpost_upgrade::run(&args, &loc, &ctx.host, &stager, out)
}

/// `detect`: what outpost finds and recommends (exit 1 on an unsupported host).
fn detect_host(ctx: &Ctx, json: bool, out: &mut dyn Write) -> Result<i32> {
    let det = detect::probe::detect(&ctx.probe);
    if json {
        let text = serde_json::to_string_pretty(&det).unwrap_or_default();
        writeln!(out, "{text}").ok();
    } else {
        write!(out, "{}", status::render_detection(&det)).ok();
    }
    Ok(if det.unsupported.is_some() {
        exit::FAILURE
    } else {
        exit::OK
    })
}

/// The release keys from `OUTPOST_RELEASE_PUBKEYS`, one per line.
fn release_keys_from_env() -> Vec<String> {
    std::env::var(env::RELEASE_PUBKEYS)
        .map(|v| {
            v.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `install`.
fn install(ctx: &Ctx, a: InstallFlags, out: &mut dyn Write) -> Result<i32> {
    let enroll_key = enroll_key_from_env()?;
    if let Some(k) = &enroll_key {
        if k.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\'' || c == '\\')
        {
            return Err(Error::usage(
                format!("{} contains whitespace or quotes", env::ENROLL_KEY),
                "copy the key exactly as `outpost-hub keys create` printed it",
            ));
        }
    }
    let args = InstallArgs {
        mode: a.mode.mode(),
        run_as: a.run_as,
        admin_group: a.admin_group,
        hub_url: a.hub,
        insecure_http: a.insecure_http,
        enroll_key,
        no_start: a.no_start,
        dry_run: a.dry_run,
        json: a.json,
        root: ctx.root.clone(),
        binary: None,
        release_url: a.release_url,
        release_keys: release_keys_from_env(),
        ca_file: a.ca_file,
    };
    install::run(&args, &ctx.probe, &ctx.host, out)?;
    Ok(exit::OK)
}

/// `uninstall [--purge]`.
fn uninstall(ctx: &Ctx, a: UninstallFlags, out: &mut dyn Write) -> Result<i32> {
    let args = UninstallArgs {
        mode: a.mode.mode(),
        purge: a.purge,
        dry_run: a.dry_run,
        json: a.json,
        root: ctx.root.clone(),
    };
    uninstall::run(&args, &ctx.probe, &ctx.host, out)?;
    Ok(exit::OK)
}

/// `agent run`: the service's `ExecStart`.
fn agent_run(ctx: &Ctx, paths: &AgentPaths) -> Result<i32> {
    let (config_path, state_dir, mode) = default_paths(paths, &ctx.probe, &ctx.root)?;
    outpost_agent::run::run(&outpost_agent::run::RunOptions {
        config_path,
        state_dir,
        mode,
    })
    .map_err(|e| Error::from_hint(&e))?;
    Ok(exit::OK)
}

/// `self-test`: can this binary run the installed service (the upgrade's smoke test).
fn self_test(ctx: &Ctx, paths: &AgentPaths, json: bool, out: &mut dyn Write) -> Result<i32> {
    let (config_path, state_dir, _) = default_paths(paths, &ctx.probe, &ctx.root)?;
    let r = outpost_agent::selftest::self_test(&config_path, &state_dir)
        .map_err(|e| Error::from_hint(&e))?;
    if json {
        let v = serde_json::json!({"ok": true, "version": r.version, "config": config_path, "state_dir": state_dir});
        writeln!(out, "{v}").ok();
    } else {
        writeln!(
            out,
            "outpost {}: self-test ok (config {}, state {})",
            r.version,
            config_path.display(),
            state_dir.display()
        )
        .ok();
    }
    Ok(exit::OK)
}

/// `man`: the roff man page.
fn man(out: &mut dyn Write) -> Result<i32> {
    clap_mangen::Man::new(Cli::command())
        .render(out)
        .map_err(|e| {
            Error::failed(
                format!("cannot write the man page: {e}"),
                "check stdout is writable",
            )
        })?;
    Ok(exit::OK)
}

/// What `outpost start|stop|restart` does to the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Start,
    Stop,
    Restart,
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
        })
    }
}

fn control(
    verb: Verb,
    a: ControlArgs,
    probe: &dyn Probe,
    host: &dyn Host,
    root: &std::path::Path,
    out: &mut dyn Write,
) -> Result<i32> {
    let (layout, _receipt) = uninstall::find_install(probe, root, a.mode.mode())?;
    let scope = uninstall::scope(&layout, probe.euid());
    if a.dry_run {
        writeln!(
            out,
            "would {verb} {} ({} manager)",
            outpost_installer::UNIT,
            layout.mode
        )
        .ok();
        return Ok(exit::OK);
    }
    let svc = host.service_manager(scope)?;
    let st = svc.status(outpost_installer::UNIT)?;
    if !st.is_loaded() {
        return Err(Error::failed(
            format!(
                "{} is not installed in {} mode (load state {})",
                outpost_installer::UNIT,
                layout.mode,
                st.load_state
            ),
            "install it with `sudo outpost install` (or `outpost install --user`)",
        ));
    }
    match verb {
        Verb::Start => svc.start(outpost_installer::UNIT)?,
        Verb::Stop => svc.stop(outpost_installer::UNIT)?,
        Verb::Restart => svc.restart(outpost_installer::UNIT)?,
    }
    let st = svc.status(outpost_installer::UNIT)?;
    writeln!(
        out,
        "{verb}: {} is {} ({})",
        outpost_installer::UNIT,
        st.active_state,
        st.sub_state
    )
    .ok();
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_table() {
        let ok: &[&[&str]] = &[
            &["outpost", "detect", "--json"],
            &["outpost", "install", "--user", "--dry-run"],
            &[
                "outpost",
                "install",
                "--system",
                "--run-as",
                "bob",
                "--no-start",
            ],
            &["outpost", "uninstall", "--purge", "--dry-run"],
            &["outpost", "status", "--json"],
            &["outpost", "restart", "--dry-run"],
            &["outpost", "agent", "run"],
            &["outpost", "self-test", "--json"],
            &["outpost", "completions", "bash"],
        ];
        for argv in ok {
            Cli::try_parse_from(*argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
        let bad: &[&[&str]] = &[
            &["outpost", "install", "--user", "--system"],
            &["outpost", "install", "--bogus"],
            &["outpost", "frobnicate"],
            &["outpost", "agent", "run", "--mode", "weird"],
        ];
        for argv in bad {
            assert!(Cli::try_parse_from(*argv).is_err(), "{argv:?} should fail");
        }
    }
}
