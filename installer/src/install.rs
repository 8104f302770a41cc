//! `outpost install`: detect → plan → apply, plus the summary.
use crate::apply::{self, Host};
use crate::detect::{self, Detection, Probe};
use crate::error::{Error, Result};
use crate::plan::{self, Change, InstallPlan, Observed, Op, ServiceAction, ServiceUser};
use crate::receipt::Receipt;
use outpost_core::layout::{Layout, Mode};
use outpost_systemd::Scope;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The system user created when there is nobody else to run the service as.
pub const DEFAULT_SYSTEM_USER: &str = "outpost";

#[derive(Debug, Clone, Default)]
pub struct InstallArgs {
    /// `--user` / `--system`; `None` = the detected recommendation.
    pub mode: Option<Mode>,
    pub run_as: Option<String>,
    pub admin_group: Option<String>,
    pub hub_url: Option<String>,
    /// `--insecure-http`: allow `http://` to a non-loopback hub.
    pub insecure_http: bool,
    pub enroll_key: Option<String>,
    pub no_start: bool,
    pub dry_run: bool,
    pub json: bool,
    pub root: PathBuf,
    /// Binary to install; default: the running executable.
    pub binary: Option<PathBuf>,
    /// Verify this binary against the signed release at this URL (install.sh passes it), and
    /// write it as `[release] url` into a new config.
    pub release_url: Option<String>,
    /// Trusted release public keys (added to the built-in ones; written into a new config).
    pub release_keys: Vec<String>,
    /// Extra CA bundle for the release host and hub (written into a new config).
    pub ca_file: Option<PathBuf>,
}

/// A verified copy of this version's binary, unpacked from the signed release into a fresh
/// private temp dir (mkdtemp, 0700: nobody else can pre-create or swap anything in it);
/// removed on drop.
pub struct VerifiedBinary {
    _dir: outpost_release::fsx::PrivateTempDir,
    pub binary: PathBuf,
}

/// Fetch this version's tarball from the signed release (manifest signature and replay check,
/// sha256, tarball signature), unpack it, and check that the running binary is byte for byte
/// the released one. Fail closed: no trusted key, no install.
/// The target triple of this build (what `install.sh` and the manifest call it); an error
/// on an architecture outpost is not released for (never silently another one's build).
pub fn this_target() -> Result<&'static str> {
    outpost_release::manifest::current_target().ok_or_else(|| {
        Error::failed(
            format!(
                "outpost is not released for this architecture ({})",
                std::env::consts::ARCH
            ),
            "releases exist for x86_64 and aarch64; build from source for others",
        )
    })
}

pub fn verify_against_release(
    url: &str,
    extra_keys: &[String],
    ca_file: Option<&Path>,
    running: &Path,
    replay: &outpost_release::ReplayState,
) -> Result<VerifiedBinary> {
    use outpost_release::{extract, fetch_release, ExtractLimits, Source, TrustedKeys, Want};
    let pkg = |e: outpost_release::Error| {
        Error::from(e).context(&format!(
            "cannot verify outpost {} against the release",
            outpost_release::VERSION
        ))
    };
    let source = Source::parse(url)
        .map_err(pkg)?
        .with_ca_file(ca_file.map(Path::to_path_buf));
    let mut keys = TrustedKeys::builtin();
    for (i, k) in extra_keys.iter().enumerate() {
        keys.add_text(k, &format!("release key #{}", i + 1))
            .map_err(|e| {
                Error::usage(
                    e.to_string(),
                    "pass minisign public keys (base64) in OUTPOST_RELEASE_PUBKEYS",
                )
            })?;
    }
    if keys.is_empty() {
        return Err(Error::failed(
            "no trusted release key: nothing to verify the release against",
            "pass the release's minisign public key in OUTPOST_RELEASE_PUBKEYS (install.sh does this)",
        ));
    }
    let tmp = outpost_release::fsx::private_temp_dir("verify")?;
    let dir = tmp.path().to_path_buf();
    let guard = VerifiedBinary {
        binary: dir.join("staging").join("outpost"),
        _dir: tmp,
    };
    let version = outpost_release::version();
    let v = fetch_release(
        &source,
        &keys,
        replay,
        &Want::Exact(version.clone()),
        this_target()?,
        &dir.join("download"),
    )
    .map_err(pkg)?;
    // install.sh resolved this version from a channel file, which is not signed: the signed
    // manifest must name it as that channel's head (a forged channel is a downgrade).
    v.check_channel_from_env().map_err(pkg)?;
    extract::extract_tarball(
        &v.tarball_path,
        &dir.join("staging"),
        &ExtractLimits::default(),
    )
    .map_err(pkg)?;
    let released =
        crate::fsx::sha256_file(&guard.binary).map_err(|e| Error::io("read", &guard.binary, e))?;
    let mine = crate::fsx::sha256_file(running).map_err(|e| Error::io("read", running, e))?;
    if released != mine {
        return Err(Error::failed(
            format!("{} is not the outpost {version} of the signed release (sha256 {mine}, release has {released})", running.display()),
            "download the release again with install.sh; do not install a binary the release does not list",
        ));
    }
    Ok(guard)
}

/// System mode: `config.toml` decides what root trusts (release URL, keys, CA), so it must
/// be root's own regular file, writable by root only. (Its directory is repaired by install.)
fn config_is_roots(cfg: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(cfg) else {
        return Ok(());
    };
    let why = if m.file_type().is_symlink() {
        Some("it is a symlink".to_string())
    } else if !m.is_file() {
        Some("not a regular file".to_string())
    } else {
        outpost_core::trust::strict_modes(m.uid(), m.mode(), false, 0)
    };
    match why {
        None => Ok(()),
        Some(why) => Err(Error::failed(
            format!("refusing {}: {why}", cfg.display()),
            format!("it may have been replaced by another user: review it (its [release] url, public_keys and ca_file decide what root installs), then `sudo chown root:root {p} && sudo chmod 644 {p}` and re-run", p = cfg.display()),
        )),
    }
}

/// The replay guard install shares with `upgrade` (root's state dir), when that dir exists
/// and is trusted; a first install has seen no manifest yet, so it records nothing.
fn install_replay_state(layout: &Layout, dry_run: bool) -> outpost_release::ReplayState {
    let sd = layout.host(&layout.state_dir);
    let euid = rustix::process::geteuid().as_raw();
    let path = sd.join(outpost_core::layout::files::RELEASE_REPLAY);
    match outpost_core::trust::check_trusted(&layout.root, &sd, euid) {
        Ok(true) if dry_run => outpost_release::ReplayState::checking(path),
        Ok(true) => outpost_release::ReplayState::at(path),
        _ => outpost_release::ReplayState::none(),
    }
}

/// Pick the mode and check the caller may use it.
pub fn choose_mode(det: &Detection, requested: Option<Mode>, euid: u32) -> Result<Mode> {
    let mode = requested.unwrap_or(det.recommendation.mode);
    match (mode, euid) {
        (Mode::System, 0) => Ok(Mode::System),
        (Mode::System, _) => Err(Error::usage(
            "installing the system service needs root",
            "run `sudo outpost install --system`, or `outpost install --user` for a per-user service",
        )),
        (Mode::User, 0) if det.topology.sudo_user.is_some() => Err(Error::usage(
            "refusing a user-mode install through sudo: it would leave root-owned files in your home",
            "run `outpost install --user` without sudo, or `sudo outpost install --system`",
        )),
        (Mode::User, 0) => Err(Error::usage(
            "root has no user service to install into",
            "run `outpost install --user` as the user who should own the service, or `outpost install --system`",
        )),
        (Mode::User, _) => Ok(Mode::User),
    }
}

pub fn validate_hub_url(url: &str, insecure_http: bool) -> Result<()> {
    outpost_core::config::check_hub_url(url, insecure_http).map_err(|why| {
        Error::usage(
            format!("invalid hub url {url:?}: {why}"),
            "pass --hub https://hub.example.com (plain http:// only to 127.0.0.1/localhost, or with --insecure-http)",
        )
    })
}

/// Layout for `mode` on this host.
pub fn layout_for(det: &Detection, mode: Mode, root: &Path) -> Result<Layout> {
    match mode {
        Mode::System => Ok(Layout::system(root)),
        Mode::User => {
            let t = det.topology.target_user.as_ref().ok_or_else(|| {
                Error::usage(
                    "no user to install a user service for",
                    "run `sudo outpost install --system`",
                )
            })?;
            Ok(Layout::user(root, &t.account.home))
        }
    }
}

fn service_user(
    det: &Detection,
    mode: Mode,
    args: &InstallArgs,
    root: &Path,
    prior: Option<&Receipt>,
) -> Result<ServiceUser> {
    if mode == Mode::User {
        let t = det
            .topology
            .target_user
            .as_ref()
            .map(|t| t.account.clone())
            .unwrap_or(det.topology.invoking.clone());
        return Ok(ServiceUser {
            name: t.name,
            ids: Some((t.uid, t.gid)),
            create: false,
        });
    }
    let lookup = |name: &str| -> Result<Option<(u32, u32)>> {
        crate::users::by_name(root, name)
            .map(|a| a.map(|a| (a.uid, a.gid)))
            .map_err(|e| Error::failed(e.to_string(), "check /etc/passwd is readable"))
    };
    if let Some(name) = &args.run_as {
        if !crate::users::valid_username(name) {
            return Err(Error::usage(
                format!("invalid --run-as {name:?}: not a valid user name"),
                "pass the name of an existing user",
            ));
        }
        let ids = lookup(name)?;
        if name == "root" || ids.is_some_and(|(uid, _)| uid == 0) {
            return Err(Error::usage(
                format!("--run-as {name}: the agent never runs as root"),
                "omit --run-as to use the `outpost` system user, or name an unprivileged user",
            ));
        }
        return match ids {
            Some(ids) => Ok(ServiceUser { name: name.clone(), ids: Some(ids), create: false }),
            None if name == DEFAULT_SYSTEM_USER => Ok(ServiceUser { name: name.clone(), ids: None, create: true }),
            None => Err(Error::usage(
                format!("--run-as {name}: no such user"),
                format!("create it first (`useradd --system {name}`), or omit --run-as to use the `{DEFAULT_SYSTEM_USER}` system user"),
            )),
        };
    }
    if let Some(prior) = prior {
        // Re-install keeps whoever the service already runs as.
        if let Some(ids) = lookup(&prior.service_user)?.filter(|(uid, _)| *uid != 0) {
            let create = prior.created_user.as_deref() == Some(prior.service_user.as_str());
            return Ok(ServiceUser {
                name: prior.service_user.clone(),
                ids: Some(ids),
                create,
            });
        }
    }
    if let Some(a) = det.topology.sudo_user.as_ref().filter(|a| a.uid != 0) {
        return Ok(ServiceUser {
            name: a.name.clone(),
            ids: Some((a.uid, a.gid)),
            create: false,
        });
    }
    let ids = lookup(DEFAULT_SYSTEM_USER)?;
    Ok(ServiceUser {
        name: DEFAULT_SYSTEM_USER.into(),
        ids,
        create: true,
    })
}

/// What [`prepare`] decided: everything install needs before it touches anything.
pub struct Prepared {
    pub detection: Detection,
    pub plan: InstallPlan,
    /// The receipt of the install this one updates (`None`: first install, or one not trusted).
    pub prior: Option<Receipt>,
    /// The caller's effective uid (the user-mode scope).
    pub euid: u32,
    /// The binary verified against the signed release; its temp dir lives until this is dropped,
    /// so keep it until the install is done.
    pub verified: Option<VerifiedBinary>,
}

/// Everything install decides before touching anything. Shared with `--dry-run`.
pub fn prepare(args: &InstallArgs, probe: &dyn Probe, host: &dyn Host) -> Result<Prepared> {
    let p = Preparer { args, probe, host };
    let detection = p.detect()?;
    let euid = probe.euid();
    let mode = choose_mode(&detection, args.mode, euid)?;
    p.check_hub_and_admin_group()?;
    let layout = p.layout(&detection, mode)?;
    let prior = prior_receipt(&layout)?;
    let su = service_user(&detection, mode, args, &args.root, prior.as_ref())?;
    let running = p.running_binary()?;
    p.check_release_flags()?;
    let verified = p.verify_against_release(&layout, &running)?;
    let (binary, binary_sha256) = install_binary(verified.as_ref(), running)?;
    let version = outpost_release::version();
    let obs = p.observe(&layout, &version, &su, prior.clone(), euid)?;
    let inputs = p.inputs(&detection, layout, version, (binary, binary_sha256), su)?;
    let mut plan = plan::plan_install(&inputs, &obs);
    plan.warnings
        .splice(0..0, detection.warnings.iter().cloned());
    Ok(Prepared {
        detection,
        plan,
        prior,
        euid,
        verified,
    })
}

/// The receipt of an earlier install. One that is not root's (an earlier layout gave it to
/// the service user) or unreadable is ignored, with a warning: nothing in it is trusted;
/// install plans from what is on disk and writes a new one.
fn prior_receipt(layout: &Layout) -> Result<Option<Receipt>> {
    match Receipt::load(layout) {
        Ok(r) => Ok(r),
        Err(
            e @ (crate::receipt::ReceiptError::Untrusted(_)
            | crate::receipt::ReceiptError::Corrupt { .. }
            | crate::receipt::ReceiptError::Foreign { .. }),
        ) => {
            eprintln!("warning: ignoring the install receipt: {e}\nhint: install writes a new, root-owned one");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The binary to install and its sha256: with a release URL, the verified copy from the
/// signed release, else the running one.
fn install_binary(
    verified: Option<&VerifiedBinary>,
    running: PathBuf,
) -> Result<(PathBuf, String)> {
    let binary = verified.map(|v| v.binary.clone()).unwrap_or(running);
    let sha256 = crate::fsx::sha256_file(&binary).map_err(|e| Error::io("read", &binary, e))?;
    Ok((binary, sha256))
}

/// A release public key as given on the command line: one base64 line, nothing that could
/// break out of the TOML string it is recorded in.
fn check_release_key(k: &str) -> Result<()> {
    if k.chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c.is_control())
    {
        return Err(Error::usage(
            format!("invalid release public key {k:?}"),
            "pass the base64 line of the minisign .pub file",
        ));
    }
    Ok(())
}

/// A release URL: any source the release reader understands (https://, http://, file:///,
/// github:O/R), and nothing that could break out of the TOML string it is recorded in.
fn check_release_url(url: &str) -> Result<()> {
    let printable = !url
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '"' || c == '\\');
    if !printable || outpost_release::Source::parse(url).is_err() {
        return Err(Error::usage(
            format!("invalid release url {url:?}: expected https://HOST[/PATH], file:///DIR or github:OWNER/REPO"),
            "pass --release-url https://releases.example.com/outpost",
        ));
    }
    Ok(())
}

/// [`prepare`]'s steps, in the order it takes them (so the first problem found is the one
/// reported), over the arguments and the two seams.
struct Preparer<'a> {
    args: &'a InstallArgs,
    probe: &'a dyn Probe,
    host: &'a dyn Host,
}

impl Preparer<'_> {
    /// What this host is; a platform outpost cannot run on is refused here.
    fn detect(&self) -> Result<Detection> {
        let det = detect::probe::detect(self.probe);
        if let Some(reason) = &det.unsupported {
            return Err(Error::failed(
                reason.clone(),
                "see the platform table in README.md; `outpost detect` shows what was found",
            ));
        }
        Ok(det)
    }

    fn check_hub_and_admin_group(&self) -> Result<()> {
        let args = self.args;
        if let Some(url) = &args.hub_url {
            validate_hub_url(url, args.insecure_http)?;
        }
        if let Some(g) = &args.admin_group {
            let exists = crate::users::group_exists(&args.root, g)
                .map_err(|e| Error::failed(e.to_string(), "check /etc/group is readable"))?;
            if !crate::users::valid_username(g) || !exists {
                return Err(Error::usage(
                    format!("--admin-group {g}: no such group"),
                    format!("create it first (`groupadd {g}`)"),
                ));
            }
        }
        Ok(())
    }

    /// The mode's layout; the operator's config must load with this binary (and in system
    /// mode be root's) before anything changes.
    fn layout(&self, det: &Detection, mode: Mode) -> Result<Layout> {
        let layout = layout_for(det, mode, &self.args.root)?;
        let cfg = layout.host(&layout.config_file);
        if mode == Mode::System {
            config_is_roots(&cfg)?;
        }
        if cfg.exists() {
            outpost_core::Config::load(&cfg)?;
        }
        Ok(layout)
    }

    /// `--binary`, else the running executable.
    fn running_binary(&self) -> Result<PathBuf> {
        match &self.args.binary {
            Some(b) => Ok(b.clone()),
            None => std::env::current_exe().map_err(|e| {
                Error::failed(
                    format!("cannot locate the running binary: {e}"),
                    "run outpost by its full path",
                )
            }),
        }
    }

    fn check_release_flags(&self) -> Result<()> {
        for k in &self.args.release_keys {
            check_release_key(k)?;
        }
        if let Some(url) = &self.args.release_url {
            check_release_url(url)?;
        }
        Ok(())
    }

    /// With a release URL: the signed release's copy of `running` (which must be identical).
    fn verify_against_release(
        &self,
        layout: &Layout,
        running: &Path,
    ) -> Result<Option<VerifiedBinary>> {
        let args = self.args;
        let Some(url) = &args.release_url else {
            return Ok(None);
        };
        verify_against_release(
            url,
            &args.release_keys,
            args.ca_file.as_deref(),
            running,
            &install_replay_state(layout, args.dry_run),
        )
        .map(Some)
    }

    /// What is on disk at every path the plan may touch, the known service user and whether
    /// it lingers, and the unit's state (no manager yet, user mode before linger, simply
    /// means nothing runs).
    fn observe(
        &self,
        layout: &Layout,
        version: &semver::Version,
        su: &ServiceUser,
        prior: Option<Receipt>,
        euid: u32,
    ) -> Result<Observed> {
        let paths = plan::install_paths(layout, version);
        let mut obs = Observed {
            paths: plan::observe_paths(layout, &paths)
                .map_err(|e| Error::failed(e.to_string(), "check permissions"))?,
            unit: None,
            receipt: prior,
            users: Default::default(),
            lingering: Default::default(),
        };
        if let Some(ids) = su.ids {
            obs.users.insert(su.name.clone(), ids);
        }
        // What logind's SetUserLinger writes (and `loginctl show-user -p Linger` reads).
        if self
            .probe
            .exists(&format!("/var/lib/systemd/linger/{}", su.name))
        {
            obs.lingering.insert(su.name.clone());
        }
        let scope = match layout.mode {
            Mode::System => Scope::System,
            Mode::User => Scope::User { uid: euid },
        };
        if let Ok(svc) = self.host.service_manager(scope) {
            obs.unit = Some(svc.status(crate::UNIT)?);
        }
        Ok(obs)
    }

    /// The planner's inputs, with unit parameters that render.
    fn inputs(
        &self,
        det: &Detection,
        layout: Layout,
        version: semver::Version,
        (binary, binary_sha256): (PathBuf, String),
        service_user: ServiceUser,
    ) -> Result<plan::InstallInputs> {
        let args = self.args;
        let inputs = plan::InstallInputs {
            layout,
            version,
            binary,
            binary_sha256,
            service_user,
            admin_group: args.admin_group.clone(),
            polkit: det.topology.polkit.as_ref().map(|p| p.flavor),
            hub_url: args.hub_url.clone(),
            enroll_key: args.enroll_key.clone(),
            start: !args.no_start,
            release: plan::ConfigSeed {
                hub_url: None,
                insecure_http: args.insecure_http,
                release_url: args.release_url.clone(),
                release_keys: args.release_keys.clone(),
                ca_file: args.ca_file.clone(),
            },
        };
        crate::render::validate(&plan::unit_params(&inputs)).map_err(|e| {
            Error::usage(e.to_string(), "install paths must be absolute, printable and free of control characters; use --system if the home directory is unusual")
        })?;
        Ok(inputs)
    }
}

/// Human-readable plan, one line per change.
pub fn render_plan(p: &InstallPlan, verb: &str) -> String {
    let mut s = format!(
        "{verb} outpost {} ({} mode, service user {})\n",
        p.version, p.mode, p.service_user.name
    );
    for i in &p.items {
        let change = match i.change {
            Change::Create => "create",
            Change::Update => "update",
            Change::Unchanged => "unchanged",
            Change::Keep => "keep",
        };
        let what = match &i.op {
            Op::Dir { path, mode, .. } => format!("dir      {} ({mode:04o})", path.display()),
            Op::File {
                path,
                mode,
                sha256,
                role,
                ..
            } => {
                format!(
                    "file     {} ({mode:04o}, {}, sha256 {})",
                    path.display(),
                    role_name(*role),
                    &sha256[..12.min(sha256.len())]
                )
            }
            Op::Symlink { path, target, .. } => {
                format!("symlink  {} -> {}", path.display(), target.display())
            }
            Op::CreateUser { name, home } => {
                format!("user     {name} (system, home {})", home.display())
            }
            Op::EnableLinger {
                user,
                uid: Some(uid),
            } => format!("linger   {user} (user@{uid}.service runs without a login)"),
            Op::EnableLinger { user, uid: None } => {
                format!("linger   {user} (its user@UID.service runs without a login)")
            }
        };
        s.push_str(&format!("  {change:<9} {what}\n"));
    }
    if p.wait_user_manager {
        s.push_str(&format!(
            "  wait      {}'s user manager and its bus (up to {} s)\n",
            p.service_user.name,
            apply::USER_MANAGER_TIMEOUT.as_secs()
        ));
    }
    if p.daemon_reload {
        s.push_str("  reload    systemd (daemon-reload)\n");
    }
    if p.enable {
        s.push_str(&format!("  enable    {}\n", crate::UNIT));
    }
    match &p.service {
        ServiceAction::Start => s.push_str(&format!("  start     {}\n", crate::UNIT)),
        ServiceAction::Restart => s.push_str(&format!("  restart   {}\n", crate::UNIT)),
        ServiceAction::None { reason } => {
            s.push_str(&format!("  no start  {} ({reason})\n", crate::UNIT))
        }
    }
    for w in &p.warnings {
        s.push_str(&format!("warning: {w}\n"));
    }
    s
}

fn role_name(r: crate::receipt::Role) -> &'static str {
    use crate::receipt::Role::*;
    match r {
        Binary => "binary",
        Unit => "unit",
        Dropin => "drop-in",
        Polkit => "polkit rule",
        Config => "config",
        Secrets => "secrets",
        State => "state",
        Link => "link",
        Dir => "dir",
    }
}

pub fn run(
    args: &InstallArgs,
    probe: &dyn Probe,
    host: &dyn Host,
    out: &mut dyn Write,
) -> Result<()> {
    let prepared = prepare(args, probe, host)?; // holds the verified binary until the end
    let (plan, prior, euid) = (&prepared.plan, prepared.prior, prepared.euid);
    if args.dry_run {
        if args.json {
            print_json(&plan, out);
        } else {
            write!(out, "{}", render_plan(plan, "would install")).ok();
        }
        return Ok(());
    }
    let outcome = apply::apply_install(plan, prior, host, euid, out)?;
    if args.json {
        print_json(&outcome, out);
        return Ok(());
    }
    write!(out, "{}", render_summary(plan, &outcome)).ok();
    Ok(())
}

fn print_json(v: &impl serde::Serialize, out: &mut dyn Write) {
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_default()
    )
    .ok();
}

/// The summary after an applied install: its warnings, what changed and where it lives, and
/// what to run next.
fn render_summary(plan: &InstallPlan, outcome: &apply::InstallOutcome) -> String {
    let mut s = String::new();
    for w in &plan.warnings {
        s.push_str(&format!("warning: {w}\n"));
    }
    let l = &plan.layout;
    let sudo = if l.mode == Mode::System { "sudo " } else { "" };
    let journal = if l.mode == Mode::System {
        "journalctl -u outpost -f"
    } else {
        "journalctl --user -u outpost -f"
    };
    if !outcome.changed {
        s.push_str(&format!(
            "outpost {} is already installed ({} mode): no change\n",
            plan.version, l.mode
        ));
    } else {
        s.push_str(&format!(
            "installed outpost {} ({} mode, runs as {})\n",
            plan.version, l.mode, plan.service_user.name
        ));
        let binary = l.versions_dir().join(&plan.version).join("outpost");
        for (what, path) in [
            ("binary   ", binary.display().to_string()),
            ("command  ", l.bin_link.display().to_string()),
            ("config   ", l.config_file.display().to_string()),
            ("secrets  ", format!("{} (0600)", l.env_file.display())),
            ("state    ", l.state_dir.display().to_string()),
            (
                "agent    ",
                format!("{} (the agent's own state)", l.agent_dir.display()),
            ),
            ("unit     ", l.unit_file.display().to_string()),
            ("service  ", format!("{} {}", crate::UNIT, outcome.service)),
        ] {
            s.push_str(&format!("  {what}{path}\n"));
        }
    }
    s.push_str(&format!("next:\n  outpost status\n  {journal}\n  {sudo}outpost uninstall        (keeps config and state; --purge removes everything)\n"));
    s
}

#[cfg(test)]
mod tests {
    //! `prepare` step by step on a fixture host: what it decides, and that the first problem
    //! found in step order is the one reported.
    use super::*;
    use crate::detect::probe::HostProbe;
    use crate::testing::Fake;

    /// A Debian 12 systemd host under a temp root, seen as root without sudo.
    struct Root(HostProbe);

    impl Probe for Root {
        fn read(&self, path: &str) -> Option<String> {
            self.0.read(path)
        }
        fn exists(&self, path: &str) -> bool {
            self.0.exists(path)
        }
        fn env(&self, _name: &str) -> Option<String> {
            None
        }
        fn euid(&self) -> u32 {
            0
        }
        fn arch(&self) -> String {
            self.0.arch()
        }
        fn pkaction_version(&self) -> Option<String> {
            Some("pkaction version 122\n".into())
        }
        fn systemd_version(&self) -> Option<String> {
            Some("252".into())
        }
    }

    fn host_root() -> (tempfile::TempDir, Root, InstallArgs) {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        for (to, from) in [
            ("etc/os-release", "os-release/debian-12"),
            ("etc/passwd", "passwd/passwd"),
            ("etc/group", "passwd/group"),
        ] {
            std::fs::create_dir_all(r.join(to).parent().unwrap()).unwrap();
            std::fs::copy(fixtures.join(from), r.join(to)).unwrap();
        }
        std::fs::create_dir_all(r.join("proc/1")).unwrap();
        std::fs::write(r.join("proc/1/comm"), "systemd\n").unwrap();
        for dir in ["run/systemd/system", "etc/polkit-1/rules.d"] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        let bin = r.join("outpost-src");
        std::fs::write(&bin, b"\x7fELF").unwrap();
        let args = InstallArgs {
            mode: Some(Mode::System),
            dry_run: true,
            root: r.to_path_buf(),
            binary: Some(bin),
            ..Default::default()
        };
        let probe = Root(HostProbe::new(r));
        (d, probe, args)
    }

    #[test]
    fn prepare_names_what_it_decided() {
        let (_d, probe, args) = host_root();
        let fake = Fake::default();
        let p = prepare(&args, &probe, &fake).unwrap();
        assert!(p.detection.unsupported.is_none());
        assert_eq!(p.euid, 0);
        assert!(p.prior.is_none());
        assert!(p.verified.is_none());
        assert_eq!(p.plan.mode, Mode::System);
        assert_eq!(p.plan.service_user.name, DEFAULT_SYSTEM_USER);
        assert!(p.plan.service_user.create);
        assert_eq!(p.plan.service, ServiceAction::Start);
        let bin = args.binary.as_deref().unwrap();
        let sha = crate::fsx::sha256_file(bin).unwrap();
        assert!(p.plan.items.iter().any(|i| matches!(
            &i.op,
            Op::File { content: plan::Content::CopyOf { from }, sha256, .. }
                if from == bin && *sha256 == sha
        )));
        // linger for the service user (the fixture's passwd has it, as uid 996)
        let linger = p
            .plan
            .items
            .iter()
            .find(|i| matches!(i.op, Op::EnableLinger { .. }));
        let want = Op::EnableLinger {
            user: DEFAULT_SYSTEM_USER.into(),
            uid: Some(996),
        };
        assert_eq!(
            linger.map(|i| (&i.op, i.change)),
            Some((&want, Change::Create))
        );
        assert!(p.plan.wait_user_manager);
        let dry = render_plan(&p.plan, "would install");
        assert!(
            dry.contains("  create    linger   outpost (user@996.service runs without a login)\n"),
            "{dry}"
        );
        assert!(dry.contains("\n  wait      outpost's user manager and its bus (up to 30 s)\n  reload    systemd"), "{dry}");
        // not known yet: the op says so, and the executor looks it up after useradd
        let mut plan = p.plan.clone();
        plan.items[1].op = Op::EnableLinger {
            user: DEFAULT_SYSTEM_USER.into(),
            uid: None,
        };
        let dry = render_plan(&plan, "would install");
        assert!(
            dry.contains(
                "  create    linger   outpost (its user@UID.service runs without a login)\n"
            ),
            "{dry}"
        );
        // the unit state was asked for (and nothing else done)
        assert!(fake.0.borrow().calls.is_empty());
    }

    /// Linger is observed where logind keeps it: on already, it is left unchanged.
    #[test]
    fn prepare_sees_linger_that_is_on() {
        let (_d, probe, args) = host_root();
        let linger = args.root.join("var/lib/systemd/linger");
        std::fs::create_dir_all(&linger).unwrap();
        std::fs::write(linger.join(DEFAULT_SYSTEM_USER), "").unwrap();
        let p = prepare(&args, &probe, &Fake::default()).unwrap().plan;
        let linger = p
            .items
            .iter()
            .find(|i| matches!(i.op, Op::EnableLinger { .. }));
        assert_eq!(linger.map(|i| i.change), Some(Change::Unchanged));
        assert!(!p.wait_user_manager);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["items"][1]["op"], "enable-linger", "{json}");
        assert_eq!(json["items"][1]["user"], "outpost", "{json}");
        assert_eq!(json["items"][1]["change"], "unchanged", "{json}");
        assert_eq!(json["wait_user_manager"], false, "{json}");
    }

    /// Several problems at once: the step that comes first reports.
    #[test]
    fn prepare_reports_the_first_problem_in_step_order() {
        type Break = fn(&mut InstallArgs);
        let bad_hub: Break = |a| a.hub_url = Some("ftp://hub".into());
        let bad_group: Break = |a| a.admin_group = Some("no-such-group".into());
        let bad_config: Break = |a| {
            let cfg = a.root.join("etc/outpost/config.toml");
            std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
            std::fs::write(cfg, "[agent\n").unwrap();
        };
        let bad_run_as: Break = |a| a.run_as = Some("root".into());
        let no_binary: Break = |a| a.binary = Some(a.root.join("missing"));
        let bad_key: Break = |a| a.release_keys = vec!["RW Q\"x".into()];
        let bad_url: Break = |a| a.release_url = Some("ftp://x".into());
        let all = [
            (bad_hub, "invalid hub url"),
            (bad_group, "--admin-group no-such-group: no such group"),
            (bad_config, "config.toml"),
            (bad_run_as, "--run-as root: the agent never runs as root"),
            (bad_key, "invalid release public key"),
            (bad_url, "invalid release url"),
            (no_binary, "cannot read"),
        ];
        // each problem from the i-th on: the i-th one is reported
        for i in 0..all.len() {
            let (_d, probe, mut args) = host_root();
            for (brk, _) in &all[i..] {
                brk(&mut args);
            }
            let err = prepare(&args, &probe, &Fake::default())
                .err()
                .unwrap_or_else(|| panic!("step {i} passed"))
                .to_string();
            assert!(err.contains(all[i].1), "step {i}: {err}");
        }
    }

    #[test]
    fn release_flags_table() {
        for (k, ok) in [
            (
                "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3",
                true,
            ),
            ("RWQ f6", false),
            ("RWQ\"", false),
            ("RWQ\\", false),
            ("RWQ\n", false),
        ] {
            assert_eq!(check_release_key(k).is_ok(), ok, "{k:?}");
        }
        for (u, ok) in [
            ("https://releases.example.com/outpost", true),
            ("file:///srv/releases", true),
            ("github:acme/outpost", true),
            ("ftp://x", false),
            ("https://x/\"y", false),
            ("https://x/ y", false),
            ("https://x/\\y", false),
        ] {
            assert_eq!(check_release_url(u).is_ok(), ok, "{u:?}");
        }
    }

    #[test]
    fn prior_receipt_ignores_one_it_cannot_trust() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::system(d.path());
        assert!(prior_receipt(&l).unwrap().is_none(), "none yet");
        let rf = l.host(&l.receipt_file());
        std::fs::create_dir_all(rf.parent().unwrap()).unwrap();
        std::fs::write(&rf, "{ not json").unwrap();
        assert!(prior_receipt(&l).unwrap().is_none(), "corrupt: ignored");
    }

    #[test]
    fn install_binary_prefers_the_verified_copy() {
        let d = tempfile::tempdir().unwrap();
        let running = d.path().join("running");
        std::fs::write(&running, b"a").unwrap();
        let (b, sha) = install_binary(None, running.clone()).unwrap();
        assert_eq!((b, sha), (running.clone(), crate::fsx::sha256_bytes(b"a")));
        let tmp = outpost_release::fsx::private_temp_dir("t").unwrap();
        let copy = tmp.path().join("outpost");
        std::fs::write(&copy, b"b").unwrap();
        let v = VerifiedBinary {
            binary: copy.clone(),
            _dir: tmp,
        };
        let (b, sha) = install_binary(Some(&v), running).unwrap();
        assert_eq!((b, sha), (copy, crate::fsx::sha256_bytes(b"b")));
        let err = install_binary(None, d.path().join("gone")).unwrap_err();
        assert!(err.to_string().starts_with("cannot read"), "{err}");
    }

    #[test]
    fn summary_rendering_table() {
        let (_d, probe, args) = host_root();
        let mut plan = prepare(&args, &probe, &Fake::default()).unwrap().plan;
        plan.warnings = vec!["w1".into()];
        let l = plan.layout.clone();
        let receipt = Receipt {
            schema: crate::receipt::SCHEMA,
            mode: Mode::System,
            version: plan.version.clone(),
            installed_at: "t".into(),
            service_user: "outpost".into(),
            created_user: None,
            linger_enabled_for: None,
            unit_enabled: true,
            uninstalled_at: None,
            entries: Vec::new(),
        };
        let outcome = |changed| apply::InstallOutcome {
            changed,
            service: "started".into(),
            receipt: receipt.clone(),
        };
        let v = &plan.version;
        let next = "next:\n  outpost status\n  journalctl -u outpost -f\n  sudo outpost uninstall        (keeps config and state; --purge removes everything)\n";
        let unchanged = format!(
            "warning: w1\noutpost {v} is already installed (system mode): no change\n{next}"
        );
        let changed = format!(
            "warning: w1\ninstalled outpost {v} (system mode, runs as outpost)\n  binary   {}\n  command  {}\n  config   {}\n  secrets  {} (0600)\n  state    {}\n  agent    {} (the agent's own state)\n  unit     {}\n  service  outpost.service started\n{next}",
            l.versions_dir().join(v).join("outpost").display(),
            l.bin_link.display(),
            l.config_file.display(),
            l.env_file.display(),
            l.state_dir.display(),
            l.agent_dir.display(),
            l.unit_file.display(),
        );
        for (did_change, want) in [(false, unchanged), (true, changed)] {
            assert_eq!(render_summary(&plan, &outcome(did_change)), want);
        }
        // user mode: no sudo, the user journal
        let mut user = plan.clone();
        user.layout = Layout::user(Path::new("/r"), Path::new("/home/alice"));
        let s = render_summary(&user, &outcome(false));
        assert!(s.ends_with("next:\n  outpost status\n  journalctl --user -u outpost -f\n  outpost uninstall        (keeps config and state; --purge removes everything)\n"), "{s}");
    }
}
