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
use std::collections::BTreeMap;
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
    EnableLinger {
        user: String,
        uid: u32,
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
    /// User mode: turn on linger for this user first.
    pub enable_linger: Option<(String, u32)>,
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
    /// User mode: wait for user@UID and its bus before talking to it.
    pub wait_user_manager: Option<u32>,
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
    let l = &inp.layout;
    let mut items = Vec::new();
    let mut warnings = Vec::new();
    let system = l.mode == Mode::System;
    let svc_owner = if system {
        OwnerSpec::ServiceUser
    } else {
        OwnerSpec::Invoker
    };

    if inp.service_user.create {
        let change = if obs.users.contains_key(&inp.service_user.name) {
            Change::Unchanged
        } else {
            Change::Create
        };
        items.push(Item {
            op: Op::CreateUser {
                name: inp.service_user.name.clone(),
                home: l.agent_dir.clone(),
            },
            change,
        });
    }
    if let Some((user, uid)) = &inp.enable_linger {
        items.push(Item {
            op: Op::EnableLinger {
                user: user.clone(),
                uid: *uid,
            },
            change: Change::Create,
        });
    }

    for d in ancestors_to_create(l) {
        items.push(dir_item(obs, &d, 0o755, OwnerSpec::Invoker, Role::Dir));
    }
    for d in [
        l.base.clone(),
        l.versions_dir(),
        l.version_dir(&inp.version),
    ] {
        items.push(dir_item(obs, &d, 0o755, OwnerSpec::Invoker, Role::Dir));
    }
    items.push(file_item(
        obs,
        &l.version_dir(&inp.version).join("outpost"),
        Role::Binary,
        Content::CopyOf {
            from: inp.binary.clone(),
        },
        inp.binary_sha256.clone(),
        0o755,
        OwnerSpec::Invoker,
    ));
    items.push(link_item(
        obs,
        &l.current_link(),
        Layout::version_link_target(&inp.version),
        Role::Link,
    ));
    items.push(link_item(
        obs,
        &l.last_good_link(),
        Layout::version_link_target(&inp.version),
        Role::Link,
    ));
    items.push(link_item(obs, &l.bin_link, l.current_binary(), Role::Link));

    // Root's: config, secrets (systemd reads them as root) and the state dir holding the
    // receipt, the upgrade record and the replay state. The agent writes only its agent dir.
    items.push(dir_item(
        obs,
        &l.config_dir,
        0o755,
        OwnerSpec::Invoker,
        Role::Config,
    ));
    items.push(text_item(
        obs,
        &l.config_file,
        Role::Config,
        initial_config(&ConfigSeed {
            hub_url: inp.hub_url.clone(),
            ..inp.release.clone()
        }),
        0o644,
        OwnerSpec::Invoker,
    ));
    items.push(text_item(
        obs,
        &l.env_file,
        Role::Secrets,
        initial_env(inp.enroll_key.as_deref()),
        0o600,
        OwnerSpec::Invoker,
    ));
    items.push(dir_item(
        obs,
        &l.state_dir,
        0o755,
        OwnerSpec::Invoker,
        Role::State,
    ));
    items.push(dir_item(obs, &l.agent_dir, 0o700, svc_owner, Role::State));

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

    let params = unit_params(inp);
    items.push(dir_item(
        obs,
        &l.unit_dir,
        0o755,
        OwnerSpec::Invoker,
        Role::Dir,
    ));
    items.push(text_item(
        obs,
        &l.unit_file,
        Role::Unit,
        render::unit(&params),
        0o644,
        OwnerSpec::Invoker,
    ));
    if let Some(dropin) = &l.dropin_file {
        if let Some(dir) = dropin.parent() {
            items.push(dir_item(obs, dir, 0o755, OwnerSpec::Invoker, Role::Dir));
        }
        items.push(text_item(
            obs,
            dropin,
            Role::Dropin,
            render::hardening_dropin(&params),
            0o644,
            OwnerSpec::Invoker,
        ));
    }
    if system {
        match inp.polkit {
            Some(PolkitFlavor::Rules) => {
                let p = PathBuf::from(POLKIT_RULES);
                if let Some(dir) = p.parent() {
                    items.push(dir_item(obs, dir, 0o755, OwnerSpec::Invoker, Role::Dir));
                }
                let text = render::polkit_rules(&inp.service_user.name, inp.admin_group.as_deref());
                items.push(text_item(obs, &p, Role::Polkit, text, 0o644, OwnerSpec::Invoker));
            }
            Some(PolkitFlavor::Pkla) => warnings.push(
                "polkit 0.105 cannot limit a grant to one unit, so no polkit rule was written: managing outpost.service needs sudo on this host".into(),
            ),
            None => warnings.push(
                "polkit is not installed: the service user cannot restart outpost.service without sudo".into(),
            ),
        }
    }

    let changed = |role: Role| {
        items.iter().any(|i| {
            matches!(i.change, Change::Create | Change::Update)
                && match &i.op {
                    Op::File { role: r, .. } | Op::Symlink { role: r, .. } => *r == role,
                    _ => false,
                }
        })
    };
    let unit_changed = changed(Role::Unit) || changed(Role::Dropin);
    let runtime_changed =
        unit_changed || changed(Role::Binary) || changed(Role::Link) || changed(Role::Secrets);
    let unit_loaded = obs.unit.as_ref().is_some_and(|u| u.is_loaded());
    let active = obs.unit.as_ref().is_some_and(|u| u.is_active());
    let enabled = obs
        .unit
        .as_ref()
        .is_some_and(|u| u.unit_file_state == "enabled");

    let service = if !inp.start {
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
    };

    InstallPlan {
        mode: l.mode,
        version: inp.version.to_string(),
        layout: l.clone(),
        service_user: inp.service_user.clone(),
        items,
        daemon_reload: unit_changed || !unit_loaded,
        enable: !enabled,
        service,
        wait_user_manager: (l.mode == Mode::User)
            .then_some(inp.enable_linger.as_ref().map(|x| x.1))
            .flatten(),
        warnings,
    }
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
    // (path, kind, role, recorded sha256, recorded symlink target)
    type Recorded = (PathBuf, Kind, Role, Option<String>, Option<PathBuf>);
    let mut entries: Vec<Recorded> = receipt
        .entries
        .iter()
        .map(|e| {
            (
                e.path.clone(),
                e.kind,
                e.role,
                e.sha256.clone(),
                e.target.clone(),
            )
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
            if !entries.iter().any(|e| &e.0 == p) && obs.get(p).is_some() {
                entries.push((p.clone(), k, r, None, None));
            }
        }
    }
    // Deepest paths first so directories empty out before we look at them.
    entries.sort_by(|a, b| {
        b.0.components()
            .count()
            .cmp(&a.0.components().count())
            .then(b.0.cmp(&a.0))
    });
    let mut removed: Vec<PathBuf> = Vec::new();
    for (path, kind, role, sha, target) in entries {
        let seen = obs.get(&path);
        let action = match (kind, seen) {
            (_, None) => RemoveAction::Missing,
            _ if role.is_user_data() && !purge => RemoveAction::KeepUserData,
            (Kind::Dir, Some(Seen::Dir)) if purge && role.is_user_data() => {
                RemoveAction::RemoveTree
            }
            (Kind::Dir, Some(Seen::Dir)) => {
                if dir_has_foreign(&path, &removed) {
                    RemoveAction::KeepNotEmpty
                } else {
                    RemoveAction::Remove
                }
            }
            (Kind::File, Some(Seen::File { sha256, .. })) => {
                if purge || sha.as_deref().is_none_or(|s| s == sha256) {
                    RemoveAction::Remove
                } else {
                    RemoveAction::KeepModified
                }
            }
            (Kind::Symlink, Some(Seen::Symlink { target: t })) => {
                if purge || target.as_ref().is_none_or(|x| x == t) {
                    RemoveAction::Remove
                } else {
                    RemoveAction::KeepModified
                }
            }
            _ if purge => RemoveAction::Remove,
            _ => RemoveAction::KeepModified,
        };
        if matches!(
            action,
            RemoveAction::Remove | RemoveAction::RemoveTree | RemoveAction::Missing
        ) {
            removed.push(path.clone());
        }
        removals.push(Removal {
            path,
            kind,
            role,
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
