//! Planning: pure functions from (what we want, what is on disk) to a list of changes.
//!
//! [`observe`] is the only I/O here: it stats the paths a plan will touch. Everything else
//! is deterministic and unit-tested; `--dry-run` prints a plan, `--json` serializes it, and
//! [`crate::apply`] executes it.
use crate::detect::PolkitFlavor;
use crate::receipt::{Kind, Receipt, Role};
use crate::render::{self, UnitParams};
use outpost_core::layout::{Layout, Mode};
use outpost_systemd::UnitStatus;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where polkit JS rules live.
pub const POLKIT_RULES: &str = "/etc/polkit-1/rules.d/50-outpost.rules";
/// Watchdog interval written into the unit.
pub const WATCHDOG_SEC: u32 = 30;

/// What is on disk at a path (host-absolute key), as seen by [`observe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Dir,
    File { sha256: String, mode: u32, uid: u32 },
    Symlink { target: PathBuf },
    Other,
}

/// The current state of the host, as far as a plan cares.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub paths: BTreeMap<PathBuf, Seen>,
    /// `None` when the service manager could not be asked (dry-run without a bus).
    pub unit: Option<UnitStatus>,
    pub receipt: Option<Receipt>,
    /// Users that exist, by name.
    pub users: BTreeMap<String, (u32, u32)>,
    /// Users whose linger is on (`/var/lib/systemd/linger/NAME` exists), by name.
    pub lingering: BTreeSet<String>,
}

impl Observed {
    pub fn get(&self, p: &Path) -> Option<&Seen> {
        self.paths.get(p)
    }
}

/// Stat every path in `paths` under the layout's root; files are hashed.
pub fn observe_paths(
    layout: &Layout,
    paths: &[PathBuf],
) -> std::io::Result<BTreeMap<PathBuf, Seen>> {
    let mut out = BTreeMap::new();
    for p in paths {
        let hp = layout.host(p);
        let meta = match std::fs::symlink_metadata(&hp) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot stat {}: {e}", hp.display()),
                ))
            }
        };
        let ft = meta.file_type();
        let seen = if ft.is_symlink() {
            Seen::Symlink {
                target: fs_err::read_link(&hp)?,
            }
        } else if ft.is_dir() {
            Seen::Dir
        } else if ft.is_file() {
            Seen::File {
                sha256: crate::fsx::sha256_file(&hp)?,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
            }
        } else {
            Seen::Other
        };
        out.insert(p.clone(), seen);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Create,
    Update,
    Unchanged,
    /// The operator's file exists: left exactly as it is.
    Keep,
}

/// Who owns a created path; resolved by the executor (the system user may not exist yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OwnerSpec {
    /// Whoever runs outpost (root in system mode, the user in user mode).
    Invoker,
    /// The service user (system mode).
    ServiceUser,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum Content {
    /// Text rendered by outpost. Not serialized: it may hold a secret.
    Text {
        #[serde(skip)]
        text: String,
    },
    /// A copy of a file (the running binary).
    CopyOf { from: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    Dir {
        path: PathBuf,
        mode: u32,
        owner: OwnerSpec,
        role: Role,
    },
    File {
        path: PathBuf,
        role: Role,
        content: Content,
        sha256: String,
        mode: u32,
        owner: OwnerSpec,
    },
    Symlink {
        path: PathBuf,
        target: PathBuf,
        role: Role,
    },
    CreateUser {
        name: String,
        home: PathBuf,
    },
    /// Turn on linger for the user whose own manager (`user@UID.service`) install needs: the
    /// user-mode service runs there; in system mode the agent starts its runs there.
    EnableLinger {
        user: String,
        /// `None`: the service user this install creates; the executor looks its uid up
        /// after `useradd`.
        uid: Option<u32>,
    },
}

impl Op {
    pub fn path(&self) -> Option<&Path> {
        match self {
            Op::Dir { path, .. } | Op::File { path, .. } | Op::Symlink { path, .. } => Some(path),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    #[serde(flatten)]
    pub op: Op,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum ServiceAction {
    Start,
    Restart,
    None { reason: String },
}

/// Who the system service runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceUser {
    pub name: String,
    /// Known ids; `None` when install will create the user.
    pub ids: Option<(u32, u32)>,
    pub create: bool,
}

/// What the operator asked for, after validation and detection.
#[derive(Debug, Clone)]
pub struct InstallInputs {
    pub layout: Layout,
    pub version: semver::Version,
    /// The binary to install (normally the running executable) and its sha256.
    pub binary: PathBuf,
    pub binary_sha256: String,
    pub service_user: ServiceUser,
    pub admin_group: Option<String>,
    pub polkit: Option<PolkitFlavor>,
    pub hub_url: Option<String>,
    pub enroll_key: Option<String>,
    pub start: bool,
    /// Release settings for a new config (install.sh passes them).
    pub release: ConfigSeed,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstallPlan {
    pub mode: Mode,
    pub version: String,
    pub layout: Layout,
    pub service_user: ServiceUser,
    pub items: Vec<Item>,
    pub daemon_reload: bool,
    pub enable: bool,
    pub service: ServiceAction,
    /// Linger is turned on now: wait for the user's manager (user@UID, the uid of the linger
    /// step) and its bus before going on.
    pub wait_user_manager: bool,
    pub warnings: Vec<String>,
}

impl InstallPlan {
    /// Anything on disk or in the service manager will change.
    pub fn changes_anything(&self) -> bool {
        self.items
            .iter()
            .any(|i| matches!(i.change, Change::Create | Change::Update))
            || self.daemon_reload
            || self.enable
            || !matches!(self.service, ServiceAction::None { .. })
    }
}

/// Every path an install plan may look at, for [`observe_paths`].
pub fn install_paths(layout: &Layout, version: &semver::Version) -> Vec<PathBuf> {
    let mut v = vec![
        layout.base.clone(),
        layout.versions_dir(),
        layout.version_dir(version),
        layout.version_dir(version).join("outpost"),
        layout.current_link(),
        layout.last_good_link(),
        layout.bin_link.clone(),
        layout.config_dir.clone(),
        layout.config_file.clone(),
        layout.env_file.clone(),
        layout.state_dir.clone(),
        layout.agent_dir.clone(),
        layout.unit_dir.clone(),
        layout.unit_file.clone(),
    ];
    v.extend(layout.privileged_template());
    if layout.mode == Mode::System {
        v.extend([
            PathBuf::from(POLKIT_RULES),
            PathBuf::from("/etc/polkit-1/rules.d"),
        ]);
    }
    for p in ancestors_to_create(layout) {
        v.push(p);
    }
    if let Some(d) = &layout.dropin_file {
        v.push(d.clone());
        if let Some(p) = d.parent() {
            v.push(p.to_path_buf());
        }
    }
    v.sort();
    v.dedup();
    v
}

/// Parent directories that may not exist yet (mostly in user mode: ~/.local/bin, …).
fn ancestors_to_create(layout: &Layout) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let stop: PathBuf = match layout.mode {
        Mode::System => PathBuf::from("/"),
        // the home directory itself is never ours
        Mode::User => layout
            .base
            .ancestors()
            .nth(3)
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    for p in [
        &layout.base,
        &layout.bin_link,
        &layout.config_dir,
        &layout.state_dir,
        &layout.unit_dir,
    ] {
        for a in p.ancestors().skip(1) {
            if a == stop || a.as_os_str().is_empty() || a == Path::new("/") {
                break;
            }
            out.push(a.to_path_buf());
        }
    }
    out.sort();
    out.dedup();
    out
}

pub fn unit_params(inp: &InstallInputs) -> UnitParams {
    let l = &inp.layout;
    let user = (l.mode == Mode::System).then(|| inp.service_user.name.clone());
    UnitParams {
        watchdog_sec: WATCHDOG_SEC,
        ..UnitParams::from_layout(l, user, None)
    }
}

/// The config file `install` writes when there is none.
/// Settings a new config starts with (from `install` flags and install.sh).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSeed {
    pub hub_url: Option<String>,
    /// `[hub] insecure_http = true` (install `--insecure-http`).
    pub insecure_http: bool,
    pub release_url: Option<String>,
    pub release_keys: Vec<String>,
    pub ca_file: Option<PathBuf>,
}

/// The config file `install` writes when there is none: the template, with the seed's
/// settings filled in (values were validated by the caller: no quotes or control characters).
pub fn initial_config(seed: &ConfigSeed) -> String {
    let mut t = outpost_core::Config::TEMPLATE.to_string();
    if let Some(url) = &seed.hub_url {
        t = t.replacen(
            "# url = \"https://hub.example.com\"",
            &format!(
                "url = \"{url}\"{}",
                if seed.insecure_http {
                    "\ninsecure_http = true"
                } else {
                    ""
                }
            ),
            1,
        );
    }
    if let Some(url) = &seed.release_url {
        t = t.replacen(
            "# url = \"https://releases.example.com/outpost\"",
            &format!("url = \"{url}\""),
            1,
        );
    }
    if !seed.release_keys.is_empty() {
        let keys: Vec<String> = seed
            .release_keys
            .iter()
            .map(|k| format!("\"{k}\""))
            .collect();
        t = t.replacen(
            "# public_keys = []",
            &format!("public_keys = [{}]", keys.join(", ")),
            1,
        );
    }
    if let Some(ca) = &seed.ca_file {
        t = t.replacen(
            "# ca_file = \"/etc/outpost/ca.pem\"",
            &format!("ca_file = \"{}\"", ca.display()),
            1,
        );
    }
    t
}

/// The secrets file `install` writes when there is none.
pub fn initial_env(enroll_key: Option<&str>) -> String {
    let mut s = String::from(
        "# outpost secrets: read by systemd (EnvironmentFile=), mode 0600. Never logged.\n\
         # `outpost uninstall` keeps this file; only `--purge` removes it.\n",
    );
    if let Some(k) = enroll_key {
        s.push_str(&format!("{}={k}\n", outpost_core::env::ENROLL_KEY));
    }
    s
}

fn dir_item(obs: &Observed, path: &Path, mode: u32, owner: OwnerSpec, role: Role) -> Item {
    let change = match obs.get(path) {
        Some(Seen::Dir) => Change::Unchanged,
        _ => Change::Create,
    };
    Item {
        op: Op::Dir {
            path: path.to_path_buf(),
            mode,
            owner,
            role,
        },
        change,
    }
}

fn file_item(
    obs: &Observed,
    path: &Path,
    role: Role,
    content: Content,
    sha256: String,
    mode: u32,
    owner: OwnerSpec,
) -> Item {
    let change = match obs.get(path) {
        None => Change::Create,
        Some(_) if role.is_user_data() => Change::Keep,
        Some(Seen::File {
            sha256: s, mode: m, ..
        }) if *s == sha256 && *m == mode => Change::Unchanged,
        Some(_) => Change::Update,
    };
    Item {
        op: Op::File {
            path: path.to_path_buf(),
            role,
            content,
            sha256,
            mode,
            owner,
        },
        change,
    }
}

fn text_item(
    obs: &Observed,
    path: &Path,
    role: Role,
    text: String,
    mode: u32,
    owner: OwnerSpec,
) -> Item {
    let sha = crate::fsx::sha256_bytes(text.as_bytes());
    file_item(obs, path, role, Content::Text { text }, sha, mode, owner)
}

fn link_item(obs: &Observed, path: &Path, target: PathBuf, role: Role) -> Item {
    let change = match obs.get(path) {
        None => Change::Create,
        Some(Seen::Symlink { target: t }) if *t == target => Change::Unchanged,
        Some(_) => Change::Update,
    };
    Item {
        op: Op::Symlink {
            path: path.to_path_buf(),
            target,
            role,
        },
        change,
    }
}

/// Decide what `install` must do.
pub fn plan_install(inp: &InstallInputs, obs: &Observed) -> InstallPlan {
    let mut p = InstallPlanner {
        inp,
        obs,
        items: Vec::new(),
        warnings: Vec::new(),
    };
    p.accounts();
    p.versioned_binary();
    p.config_and_state();
    p.unit_files();
    p.polkit();
    p.finish()
}

/// [`plan_install`], one part of the plan per method, in the order the executor applies
/// the items. Each item's change comes from the pure `*_item` functions above.
struct InstallPlanner<'a> {
    inp: &'a InstallInputs,
    obs: &'a Observed,
    items: Vec<Item>,
    warnings: Vec<String>,
}

impl InstallPlanner<'_> {
    fn dir(&mut self, path: &Path, mode: u32, owner: OwnerSpec, role: Role) {
        self.items.push(dir_item(self.obs, path, mode, owner, role));
    }

    fn text(&mut self, path: &Path, role: Role, text: String, mode: u32) {
        let item = text_item(self.obs, path, role, text, mode, OwnerSpec::Invoker);
        self.items.push(item);
    }

    fn link(&mut self, path: &Path, target: PathBuf) {
        self.items
            .push(link_item(self.obs, path, target, Role::Link));
    }

    /// The system user to create, and linger to turn on for the service user, before
    /// anything else.
    fn accounts(&mut self) {
        self.items.extend(create_user_item(self.inp, self.obs));
        self.items.push(linger_item(self.inp, self.obs));
    }

    /// Missing parents, `versions/V/outpost`, and the `current`, `last-good` and command links.
    fn versioned_binary(&mut self) {
        let (l, v) = (&self.inp.layout, &self.inp.version);
        for d in ancestors_to_create(l) {
            self.dir(&d, 0o755, OwnerSpec::Invoker, Role::Dir);
        }
        for d in [l.base.clone(), l.versions_dir(), l.version_dir(v)] {
            self.dir(&d, 0o755, OwnerSpec::Invoker, Role::Dir);
        }
        self.items.push(file_item(
            self.obs,
            &l.version_dir(v).join("outpost"),
            Role::Binary,
            Content::CopyOf {
                from: self.inp.binary.clone(),
            },
            self.inp.binary_sha256.clone(),
            0o755,
            OwnerSpec::Invoker,
        ));
        self.link(&l.current_link(), Layout::version_link_target(v));
        self.link(&l.last_good_link(), Layout::version_link_target(v));
        self.link(&l.bin_link, l.current_binary());
    }

    /// Root's: config, secrets (systemd reads them as root) and the state dir holding the
    /// receipt, the upgrade record and the replay state. The agent writes only its agent dir.
    fn config_and_state(&mut self) {
        let l = &self.inp.layout;
        self.dir(&l.config_dir, 0o755, OwnerSpec::Invoker, Role::Config);
        let seed = ConfigSeed {
            hub_url: self.inp.hub_url.clone(),
            ..self.inp.release.clone()
        };
        self.text(&l.config_file, Role::Config, initial_config(&seed), 0o644);
        let env = initial_env(self.inp.enroll_key.as_deref());
        self.text(&l.env_file, Role::Secrets, env, 0o600);
        self.dir(&l.state_dir, 0o755, OwnerSpec::Invoker, Role::State);
        self.dir(&l.agent_dir, 0o700, service_owner(l.mode), Role::State);
        self.warnings.extend(kept_file_warnings(self.inp, self.obs));
    }

    /// The unit, and in system mode its hardening drop-in.
    fn unit_files(&mut self) {
        let l = &self.inp.layout;
        let params = unit_params(self.inp);
        self.dir(&l.unit_dir, 0o755, OwnerSpec::Invoker, Role::Dir);
        self.text(&l.unit_file, Role::Unit, render::unit(&params), 0o644);
        if let Some(dropin) = &l.dropin_file {
            if let Some(dir) = dropin.parent() {
                self.dir(dir, 0o755, OwnerSpec::Invoker, Role::Dir);
            }
            let text = render::hardening_dropin(&params);
            self.text(dropin, Role::Dropin, text, 0o644);
        }
        if let Some(t) = l.privileged_template() {
            self.text(&t, Role::Unit, render::privileged_template(l), 0o644);
        }
    }

    /// System mode: a polkit JS rule where polkit can limit it to the unit, else a warning.
    fn polkit(&mut self) {
        if self.inp.layout.mode != Mode::System {
            return;
        }
        if let Some(why) = polkit_warning(self.inp.polkit) {
            self.warnings.push(why.into());
            return;
        }
        let p = PathBuf::from(POLKIT_RULES);
        if let Some(dir) = p.parent() {
            self.dir(dir, 0o755, OwnerSpec::Invoker, Role::Dir);
        }
        let su = &self.inp.service_user.name;
        let text = render::polkit_rules(su, self.inp.admin_group.as_deref());
        self.text(&p, Role::Polkit, text, 0o644);
    }

    /// The service manager's part, from what the items change and the unit's state.
    fn finish(self) -> InstallPlan {
        let (inp, l) = (self.inp, &self.inp.layout);
        let touched = Touched::of(&self.items);
        let unit = self.obs.unit.as_ref();
        let loaded = unit.is_some_and(|u| u.is_loaded());
        let active = unit.is_some_and(|u| u.is_active());
        let enabled = unit.is_some_and(|u| u.unit_file_state == "enabled");
        let wait_user_manager = wait_user_manager(&self.items);
        InstallPlan {
            mode: l.mode,
            version: inp.version.to_string(),
            layout: l.clone(),
            service_user: inp.service_user.clone(),
            daemon_reload: touched.unit || !loaded,
            enable: !enabled,
            service: service_action(inp.start, active, touched.runtime()),
            wait_user_manager,
            items: self.items,
            warnings: self.warnings,
        }
    }
}

/// Who owns the agent dir: the service user in system mode, else whoever installs.
fn service_owner(mode: Mode) -> OwnerSpec {
    match mode {
        Mode::System => OwnerSpec::ServiceUser,
        Mode::User => OwnerSpec::Invoker,
    }
}

/// `useradd`, when install is to create the system user: unchanged once it exists.
fn create_user_item(inp: &InstallInputs, obs: &Observed) -> Option<Item> {
    let su = &inp.service_user;
    if !su.create {
        return None;
    }
    let change = if obs.users.contains_key(&su.name) {
        Change::Unchanged
    } else {
        Change::Create
    };
    Some(Item {
        op: Op::CreateUser {
            name: su.name.clone(),
            home: inp.layout.agent_dir.clone(),
        },
        change,
    })
}

/// Linger for the service user, in both modes: the user-mode service runs in the user's own
/// manager, and in system mode the agent starts its runs in the service user's manager
/// (user@UID, over /run/user/UID/bus), which must run without a login. Turned on when it is
/// off (also by an update); unchanged when it is on already (then it is the admin's, and
/// uninstall leaves it). The uid of a user this install creates is not known yet.
fn linger_item(inp: &InstallInputs, obs: &Observed) -> Item {
    let su = &inp.service_user;
    let change = if obs.lingering.contains(&su.name) {
        Change::Unchanged
    } else {
        Change::Create
    };
    Item {
        op: Op::EnableLinger {
            user: su.name.clone(),
            uid: su.ids.map(|(uid, _)| uid),
        },
        change,
    }
}

/// A hub URL or key given for a config or secrets file that exists (and is kept) is not
/// written: say so.
fn kept_file_warnings(inp: &InstallInputs, obs: &Observed) -> Vec<String> {
    let l = &inp.layout;
    let mut warnings = Vec::new();
    if inp.hub_url.is_some() && obs.get(&l.config_file).is_some() {
        warnings.push(format!(
            "{} exists and is kept as it is: set [hub] url there if it should change",
            l.config_file.display()
        ));
    }
    if inp.enroll_key.is_some() && obs.get(&l.env_file).is_some() {
        warnings.push(format!(
            "{} exists and is kept as it is: the new enrollment key was not written (edit the file to replace it)",
            l.env_file.display()
        ));
    }
    warnings
}

/// Why no polkit rule is written (system mode), or `None` when one is.
fn polkit_warning(flavor: Option<PolkitFlavor>) -> Option<&'static str> {
    match flavor {
        Some(PolkitFlavor::Rules) => None,
        Some(PolkitFlavor::Pkla) => Some(
            "polkit 0.105 cannot limit a grant to one unit, so no polkit rule was written: managing outpost.service needs sudo on this host",
        ),
        None => Some(
            "polkit is not installed: the service user cannot restart outpost.service without sudo",
        ),
    }
}

/// Which kinds of file a plan writes (creates or updates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Touched {
    /// The unit or its drop-in: systemd must reload.
    unit: bool,
    /// The binary, a link or the secrets: what the running service uses.
    binary_links_or_secrets: bool,
}

impl Touched {
    fn of(items: &[Item]) -> Touched {
        let changed = |role: Role| {
            items.iter().any(|i| {
                matches!(i.change, Change::Create | Change::Update)
                    && match &i.op {
                        Op::File { role: r, .. } | Op::Symlink { role: r, .. } => *r == role,
                        _ => false,
                    }
            })
        };
        Touched {
            unit: changed(Role::Unit) || changed(Role::Dropin),
            binary_links_or_secrets: changed(Role::Binary)
                || changed(Role::Link)
                || changed(Role::Secrets),
        }
    }

    /// A running service must restart to see the change.
    fn runtime(self) -> bool {
        self.unit || self.binary_links_or_secrets
    }
}

/// Start, restart or leave the service.
fn service_action(start: bool, active: bool, runtime_changed: bool) -> ServiceAction {
    if !start {
        ServiceAction::None {
            reason: "--no-start".into(),
        }
    } else if !active {
        ServiceAction::Start
    } else if runtime_changed {
        ServiceAction::Restart
    } else {
        ServiceAction::None {
            reason: "already running this version with these files".into(),
        }
    }
}

/// Linger turned on now: wait for user@UID and its bus (it starts asynchronously) before
/// anything talks to it.
fn wait_user_manager(items: &[Item]) -> bool {
    items
        .iter()
        .any(|i| matches!(i.op, Op::EnableLinger { .. }) && i.change == Change::Create)
}

// ---------------------------------------------------------------------------------------
// uninstall

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoveAction {
    Remove,
    /// A directory: removed with everything in it (purge of config/state).
    RemoveTree,
    /// outpost's file was edited by someone: kept.
    KeepModified,
    /// The operator's data: kept unless `--purge`.
    KeepUserData,
    /// A directory that still holds something outpost did not create.
    KeepNotEmpty,
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removal {
    pub path: PathBuf,
    pub kind: Kind,
    pub role: Role,
    pub action: RemoveAction,
}

#[derive(Debug, Clone, Serialize)]
pub struct UninstallPlan {
    pub mode: Mode,
    pub purge: bool,
    pub layout: Layout,
    pub stop_and_disable: bool,
    pub removals: Vec<Removal>,
    pub delete_user: Option<String>,
    pub disable_linger: Option<String>,
}

/// Paths an uninstall plan looks at.
pub fn uninstall_paths(layout: &Layout, receipt: &Receipt) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = receipt.entries.iter().map(|e| e.path.clone()).collect();
    v.extend([
        layout.config_file.clone(),
        layout.env_file.clone(),
        layout.state_dir.clone(),
        layout.config_dir.clone(),
    ]);
    v.sort();
    v.dedup();
    v
}

/// One path an uninstall looks at: from the receipt, or (purge) one of the operator's files
/// the receipt lost track of.
struct Recorded {
    path: PathBuf,
    kind: Kind,
    role: Role,
    /// The sha256 the receipt recorded for a file.
    sha256: Option<String>,
    /// The target the receipt recorded for a symlink.
    target: Option<PathBuf>,
}

/// The receipt's entries, plus (purge) the operator's data it lost track of, deepest paths
/// first so directories empty out before we look at them.
fn uninstall_entries(
    layout: &Layout,
    receipt: &Receipt,
    obs: &Observed,
    purge: bool,
) -> Vec<Recorded> {
    let mut entries: Vec<Recorded> = receipt
        .entries
        .iter()
        .map(|e| Recorded {
            path: e.path.clone(),
            kind: e.kind,
            role: e.role,
            sha256: e.sha256.clone(),
            target: e.target.clone(),
        })
        .collect();
    if purge {
        // Purge also takes the operator's data even when a receipt lost track of it.
        for (p, k, r) in [
            (&layout.config_file, Kind::File, Role::Config),
            (&layout.env_file, Kind::File, Role::Secrets),
            (&layout.state_dir, Kind::Dir, Role::State),
            (&layout.config_dir, Kind::Dir, Role::Config),
        ] {
            if !entries.iter().any(|e| &e.path == p) && obs.get(p).is_some() {
                entries.push(Recorded {
                    path: p.clone(),
                    kind: k,
                    role: r,
                    sha256: None,
                    target: None,
                });
            }
        }
    }
    entries.sort_by(|a, b| {
        b.path
            .components()
            .count()
            .cmp(&a.path.components().count())
            .then(b.path.cmp(&a.path))
    });
    entries
}

/// What uninstall does with one recorded path, given what is there now. `has_foreign` is
/// asked only for a directory outpost would otherwise remove.
fn remove_action(
    e: &Recorded,
    seen: Option<&Seen>,
    purge: bool,
    has_foreign: impl FnOnce() -> bool,
) -> RemoveAction {
    match (e.kind, seen) {
        (_, None) => RemoveAction::Missing,
        _ if e.role.is_user_data() && !purge => RemoveAction::KeepUserData,
        (Kind::Dir, Some(Seen::Dir)) if purge && e.role.is_user_data() => RemoveAction::RemoveTree,
        (Kind::Dir, Some(Seen::Dir)) => {
            if has_foreign() {
                RemoveAction::KeepNotEmpty
            } else {
                RemoveAction::Remove
            }
        }
        (Kind::File, Some(Seen::File { sha256, .. })) => {
            if purge || e.sha256.as_deref().is_none_or(|s| s == sha256) {
                RemoveAction::Remove
            } else {
                RemoveAction::KeepModified
            }
        }
        (Kind::Symlink, Some(Seen::Symlink { target: t })) => {
            if purge || e.target.as_ref().is_none_or(|x| x == t) {
                RemoveAction::Remove
            } else {
                RemoveAction::KeepModified
            }
        }
        _ if purge => RemoveAction::Remove,
        _ => RemoveAction::KeepModified,
    }
}

/// The path is gone after this action (so a parent directory need not count it).
fn frees_path(action: RemoveAction) -> bool {
    matches!(
        action,
        RemoveAction::Remove | RemoveAction::RemoveTree | RemoveAction::Missing
    )
}

/// Decide what `uninstall` removes. `dir_has_foreign(path)` tells whether a directory holds
/// entries that neither the receipt nor this plan accounts for (kept then).
pub fn plan_uninstall(
    layout: &Layout,
    receipt: &Receipt,
    obs: &Observed,
    purge: bool,
    dir_has_foreign: &dyn Fn(&Path, &[PathBuf]) -> bool,
) -> UninstallPlan {
    let mut removals: Vec<Removal> = Vec::new();
    let mut removed: Vec<PathBuf> = Vec::new();
    for e in uninstall_entries(layout, receipt, obs, purge) {
        let action = remove_action(&e, obs.get(&e.path), purge, || {
            dir_has_foreign(&e.path, &removed)
        });
        if frees_path(action) {
            removed.push(e.path.clone());
        }
        removals.push(Removal {
            path: e.path,
            kind: e.kind,
            role: e.role,
            action,
        });
    }
    UninstallPlan {
        mode: layout.mode,
        purge,
        layout: layout.clone(),
        stop_and_disable: obs.unit.as_ref().is_none_or(|u| u.is_loaded()),
        removals,
        delete_user: if purge {
            receipt.created_user.clone()
        } else {
            None
        },
        disable_linger: receipt.linger_enabled_for.clone(),
    }
}

#[cfg(test)]
mod tests;

/// One table per decision of the install planner.
#[cfg(test)]
mod planner_tests {
    use super::*;

    fn inputs(mode: Mode) -> InstallInputs {
        let root = Path::new("/nonexistent-root");
        InstallInputs {
            layout: match mode {
                Mode::System => Layout::system(root),
                Mode::User => Layout::user(root, Path::new("/home/alice")),
            },
            version: semver::Version::new(1, 0, 0),
            binary: "/bin/outpost".into(),
            binary_sha256: "ab".into(),
            service_user: ServiceUser {
                name: "outpost".into(),
                ids: None,
                create: false,
            },
            admin_group: None,
            polkit: None,
            hub_url: None,
            enroll_key: None,
            start: true,
            release: ConfigSeed::default(),
        }
    }

    #[test]
    fn service_action_table() {
        let none = |r: &str| ServiceAction::None { reason: r.into() };
        let running = "already running this version with these files";
        // (start, active, runtime changed) -> action
        let cases = [
            ((false, false, false), none("--no-start")),
            ((false, true, true), none("--no-start")),
            ((true, false, false), ServiceAction::Start),
            ((true, false, true), ServiceAction::Start),
            ((true, true, true), ServiceAction::Restart),
            ((true, true, false), none(running)),
        ];
        for ((start, active, changed), want) in cases {
            assert_eq!(
                service_action(start, active, changed),
                want,
                "{start} {active} {changed}"
            );
        }
    }

    #[test]
    fn touched_table() {
        let file = |role, change| Item {
            op: Op::File {
                path: "/f".into(),
                role,
                content: Content::Text {
                    text: String::new(),
                },
                sha256: String::new(),
                mode: 0o644,
                owner: OwnerSpec::Invoker,
            },
            change,
        };
        let link = |change| Item {
            op: Op::Symlink {
                path: "/l".into(),
                target: "t".into(),
                role: Role::Link,
            },
            change,
        };
        let dir = Item {
            op: Op::Dir {
                path: "/d".into(),
                mode: 0o755,
                owner: OwnerSpec::Invoker,
                role: Role::Dir,
            },
            change: Change::Create,
        };
        // items -> (unit changed, restart needed)
        let cases: Vec<(Vec<Item>, (bool, bool))> = vec![
            (vec![], (false, false)),
            (vec![dir], (false, false)),
            (vec![file(Role::Unit, Change::Update)], (true, true)),
            (vec![file(Role::Dropin, Change::Create)], (true, true)),
            (vec![file(Role::Unit, Change::Unchanged)], (false, false)),
            (vec![file(Role::Binary, Change::Create)], (false, true)),
            (vec![file(Role::Secrets, Change::Update)], (false, true)),
            (vec![file(Role::Secrets, Change::Keep)], (false, false)),
            (vec![file(Role::Config, Change::Update)], (false, false)),
            (vec![file(Role::Polkit, Change::Create)], (false, false)),
            (vec![link(Change::Update)], (false, true)),
            (vec![link(Change::Unchanged)], (false, false)),
        ];
        for (items, (unit, runtime)) in cases {
            let t = Touched::of(&items);
            assert_eq!((t.unit, t.runtime()), (unit, runtime), "{items:?}");
        }
    }

    #[test]
    fn polkit_warning_table() {
        assert_eq!(polkit_warning(Some(PolkitFlavor::Rules)), None);
        assert!(polkit_warning(Some(PolkitFlavor::Pkla)).is_some_and(|w| w.contains("0.105")));
        assert!(polkit_warning(None).is_some_and(|w| w.contains("not installed")));
        // user mode writes no rule and warns about nothing polkit
        let mut inp = inputs(Mode::User);
        inp.polkit = None;
        let p = plan_install(&inp, &Observed::default());
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    /// Linger for the service user in both modes: turned on (and waited for) when it is off,
    /// with the uid when it is known; left alone when it is on.
    #[test]
    fn linger_table() {
        // (mode, service user's uid known, lingering) -> (uid in the op, change, wait)
        let cases = [
            (Mode::System, false, false, (None, Change::Create, true)),
            (Mode::System, true, false, (Some(990), Change::Create, true)),
            (
                Mode::System,
                true,
                true,
                (Some(990), Change::Unchanged, false),
            ),
            (Mode::System, false, true, (None, Change::Unchanged, false)),
            (Mode::User, true, false, (Some(990), Change::Create, true)),
            (
                Mode::User,
                true,
                true,
                (Some(990), Change::Unchanged, false),
            ),
        ];
        for (mode, known, lingering, (uid, change, wait)) in cases {
            let name = format!("{mode} known={known} lingering={lingering}");
            let mut inp = inputs(mode);
            inp.service_user.ids = known.then_some((990, 990));
            inp.service_user.create = !known;
            let mut obs = Observed::default();
            if lingering {
                obs.lingering.insert("outpost".into());
            }
            // someone else's linger does not count
            obs.lingering.insert("bob".into());
            let item = linger_item(&inp, &obs);
            let want = Op::EnableLinger {
                user: "outpost".into(),
                uid,
            };
            assert_eq!((&item.op, item.change), (&want, change), "{name}");
            let p = plan_install(&inp, &obs);
            assert_eq!(p.wait_user_manager, wait, "{name}");
            assert_eq!(wait_user_manager(&p.items), wait, "{name}");
            let at = p.items.iter().position(|i| i.op == want).expect(&name);
            // right after the user it is for (when install creates it), before any file
            let after_user = p.items[..at]
                .iter()
                .all(|i| matches!(i.op, Op::CreateUser { .. }));
            assert!(after_user, "{name}: {:?}", &p.items[..at]);
        }
        assert!(!wait_user_manager(&[]));
    }

    #[test]
    fn accounts_table() {
        // (create, user exists) -> the useradd item's change
        for (create, exists, want) in [
            (false, false, None),
            (false, true, None),
            (true, false, Some(Change::Create)),
            (true, true, Some(Change::Unchanged)),
        ] {
            let mut inp = inputs(Mode::System);
            inp.service_user.create = create;
            let mut obs = Observed::default();
            if exists {
                obs.users.insert("outpost".into(), (990, 990));
            }
            let item = create_user_item(&inp, &obs);
            assert_eq!(item.as_ref().map(|i| i.change), want, "{create} {exists}");
            if let Some(Item {
                op: Op::CreateUser { home, .. },
                ..
            }) = item
            {
                assert_eq!(home, inp.layout.agent_dir);
            }
        }
    }

    #[test]
    fn kept_file_warnings_table() {
        // (hub url given, key given, config exists, env exists) -> warnings about
        let cases = [
            ((false, false, true, true), vec![]),
            ((true, false, false, false), vec![]),
            ((true, true, true, false), vec!["[hub] url"]),
            ((true, true, false, true), vec!["enrollment key"]),
            (
                (true, true, true, true),
                vec!["[hub] url", "enrollment key"],
            ),
        ];
        for ((hub, key, cfg, env), want) in cases {
            let mut inp = inputs(Mode::System);
            inp.hub_url = hub.then(|| "https://hub".into());
            inp.enroll_key = key.then(|| "k".into());
            let mut obs = Observed::default();
            let l = &inp.layout;
            for (present, path) in [(cfg, &l.config_file), (env, &l.env_file)] {
                if present {
                    obs.paths.insert(path.clone(), Seen::Other);
                }
            }
            let got = kept_file_warnings(&inp, &obs);
            assert_eq!(got.len(), want.len(), "{got:?}");
            for (g, w) in got.iter().zip(&want) {
                assert!(g.contains(w), "{g} lacks {w}");
            }
        }
    }

    /// The parts come in the order the executor needs: accounts, the binary and its links,
    /// config and state (the agent dir last, the privilege split is repaired after it), the
    /// unit, polkit.
    #[test]
    fn items_come_in_executor_order() {
        let mut inp = inputs(Mode::System);
        inp.service_user.create = true;
        inp.polkit = Some(PolkitFlavor::Rules);
        let p = plan_install(&inp, &Observed::default());
        let l = &inp.layout;
        let pos = |path: &Path| {
            p.items
                .iter()
                .position(|i| i.op.path() == Some(path))
                .unwrap_or_else(|| panic!("{} not planned", path.display()))
        };
        assert!(matches!(p.items[0].op, Op::CreateUser { .. }));
        assert!(matches!(p.items[1].op, Op::EnableLinger { uid: None, .. }));
        let order = [
            l.base.clone(),
            l.version_dir(&inp.version).join("outpost"),
            l.current_link(),
            l.last_good_link(),
            l.bin_link.clone(),
            l.config_dir.clone(),
            l.config_file.clone(),
            l.env_file.clone(),
            l.state_dir.clone(),
            l.agent_dir.clone(),
            l.unit_dir.clone(),
            l.unit_file.clone(),
            l.dropin_file.clone().unwrap(),
            PathBuf::from(POLKIT_RULES),
        ];
        let at: Vec<usize> = order.iter().map(|p| pos(p)).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{at:?}");
        assert_eq!(at[9] + 1, at[10], "the unit dir follows the agent dir");
        assert!(p.daemon_reload && p.enable);
        assert_eq!(p.service, ServiceAction::Start);
        assert!(p.wait_user_manager);
    }
}

/// One table per decision of the uninstall planner.
#[cfg(test)]
mod uninstall_planner_tests {
    use super::*;
    use crate::receipt::Entry;

    fn rec(kind: Kind, role: Role, sha256: Option<&str>, target: Option<&str>) -> Recorded {
        Recorded {
            path: PathBuf::from("/p"),
            kind,
            role,
            sha256: sha256.map(str::to_owned),
            target: target.map(PathBuf::from),
        }
    }

    #[test]
    fn remove_action_table() {
        use RemoveAction::*;
        let file = |s: &str| Seen::File {
            sha256: s.into(),
            mode: 0o644,
            uid: 0,
        };
        let link = |t: &str| Seen::Symlink { target: t.into() };
        let (f, d, l) = (Kind::File, Kind::Dir, Kind::Symlink);
        // (recorded, seen, purge, foreign, expected, foreign asked)
        let cases: Vec<(Recorded, Option<Seen>, bool, bool, RemoveAction, bool)> = vec![
            (
                rec(f, Role::Unit, Some("a"), None),
                None,
                false,
                false,
                Missing,
                false,
            ),
            (
                rec(f, Role::Config, None, None),
                None,
                true,
                false,
                Missing,
                false,
            ),
            (
                rec(f, Role::Config, None, None),
                Some(file("a")),
                false,
                false,
                KeepUserData,
                false,
            ),
            (
                rec(d, Role::State, None, None),
                Some(Seen::Dir),
                false,
                true,
                KeepUserData,
                false,
            ),
            (
                rec(d, Role::State, None, None),
                Some(Seen::Dir),
                true,
                true,
                RemoveTree,
                false,
            ),
            (
                rec(d, Role::Dir, None, None),
                Some(Seen::Dir),
                false,
                true,
                KeepNotEmpty,
                true,
            ),
            (
                rec(d, Role::Dir, None, None),
                Some(Seen::Dir),
                true,
                false,
                Remove,
                true,
            ),
            (
                rec(f, Role::Unit, Some("a"), None),
                Some(file("a")),
                false,
                false,
                Remove,
                false,
            ),
            (
                rec(f, Role::Unit, None, None),
                Some(file("b")),
                false,
                false,
                Remove,
                false,
            ),
            (
                rec(f, Role::Unit, Some("a"), None),
                Some(file("b")),
                false,
                false,
                KeepModified,
                false,
            ),
            (
                rec(f, Role::Unit, Some("a"), None),
                Some(file("b")),
                true,
                false,
                Remove,
                false,
            ),
            (
                rec(f, Role::Secrets, Some("a"), None),
                Some(file("b")),
                true,
                false,
                Remove,
                false,
            ),
            (
                rec(l, Role::Link, None, Some("/t")),
                Some(link("/t")),
                false,
                false,
                Remove,
                false,
            ),
            (
                rec(l, Role::Link, None, None),
                Some(link("/u")),
                false,
                false,
                Remove,
                false,
            ),
            (
                rec(l, Role::Link, None, Some("/t")),
                Some(link("/u")),
                false,
                false,
                KeepModified,
                false,
            ),
            (
                rec(l, Role::Link, None, Some("/t")),
                Some(link("/u")),
                true,
                false,
                Remove,
                false,
            ),
            (
                rec(f, Role::Binary, None, None),
                Some(Seen::Dir),
                false,
                false,
                KeepModified,
                false,
            ),
            (
                rec(d, Role::Dir, None, None),
                Some(file("a")),
                false,
                false,
                KeepModified,
                false,
            ),
            (
                rec(l, Role::Link, None, None),
                Some(Seen::Other),
                true,
                false,
                Remove,
                false,
            ),
            (
                rec(f, Role::Polkit, None, None),
                Some(Seen::Other),
                false,
                false,
                KeepModified,
                false,
            ),
        ];
        for (i, (e, seen, purge, foreign, want, asks)) in cases.into_iter().enumerate() {
            let asked = std::cell::Cell::new(false);
            let got = remove_action(&e, seen.as_ref(), purge, || {
                asked.set(true);
                foreign
            });
            assert_eq!(got, want, "case {i}");
            assert_eq!(asked.get(), asks, "case {i}: asked for foreign entries");
        }
    }

    #[test]
    fn frees_path_table() {
        use RemoveAction::*;
        for (a, want) in [
            (Remove, true),
            (RemoveTree, true),
            (Missing, true),
            (KeepModified, false),
            (KeepUserData, false),
            (KeepNotEmpty, false),
        ] {
            assert_eq!(frees_path(a), want, "{a:?}");
        }
    }

    #[test]
    fn uninstall_entries_deepest_first_and_purge_adds_untracked_data() {
        let l = Layout::system(Path::new("/r"));
        let entry = |p: &Path, kind| Entry {
            kind,
            role: Role::Dir,
            path: p.to_path_buf(),
            sha256: None,
            mode: None,
            target: None,
        };
        let receipt = Receipt {
            schema: crate::receipt::SCHEMA,
            mode: Mode::System,
            version: "1.0.0".into(),
            installed_at: "t".into(),
            service_user: "outpost".into(),
            created_user: None,
            linger_enabled_for: None,
            unit_enabled: true,
            uninstalled_at: None,
            entries: vec![
                entry(&l.base, Kind::Dir),
                entry(&l.state_dir, Kind::Dir),
                entry(&l.base.join("versions/1.0.0/outpost"), Kind::File),
            ],
        };
        let mut obs = Observed::default();
        obs.paths.insert(l.config_file.clone(), Seen::Other);
        obs.paths.insert(l.state_dir.clone(), Seen::Dir);
        // (purge, expected paths in order)
        let cases = [
            (
                false,
                vec![
                    l.base.join("versions/1.0.0/outpost"),
                    l.state_dir.clone(),
                    l.base.clone(),
                ],
            ),
            (
                true,
                vec![
                    l.base.join("versions/1.0.0/outpost"),
                    l.state_dir.clone(),
                    l.config_file.clone(),
                    l.base.clone(),
                ],
            ),
        ];
        for (purge, want) in cases {
            let got: Vec<PathBuf> = uninstall_entries(&l, &receipt, &obs, purge)
                .into_iter()
                .map(|e| e.path)
                .collect();
            assert_eq!(got, want, "purge={purge}");
        }
        let purged = uninstall_entries(&l, &receipt, &obs, true);
        let cfg = purged.iter().find(|e| e.path == l.config_file).unwrap();
        assert_eq!((cfg.kind, cfg.role), (Kind::File, Role::Config));
        // the receipt's own state dir entry is not duplicated
        assert_eq!(purged.iter().filter(|e| e.path == l.state_dir).count(), 1);
    }
}
