//! The one executor: applies an [`InstallPlan`] or [`UninstallPlan`] to the host.
//!
//! File changes run inside a [`Transaction`]: each step records how to undo itself and
//! dropping the transaction without `commit()` rolls them back, so a failed install leaves
//! the host as it found it.
use crate::error::{Error, Result};
use crate::fsx;
use crate::plan::{
    Change, Content, InstallPlan, Op, OwnerSpec, RemoveAction, ServiceAction, UninstallPlan,
};
use crate::receipt::{Entry, Kind, Receipt, Role};
use outpost_core::layout::{Layout, Mode};
use outpost_systemd::{Logind, Scope, ServiceManager, SvcError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The side-effect seam for the executor: the service manager, logind, account tools.
pub trait Host {
    fn service_manager(
        &self,
        scope: Scope,
    ) -> std::result::Result<Box<dyn ServiceManager>, SvcError>;
    fn logind(&self) -> std::result::Result<Box<dyn Logind>, SvcError>;
    /// Wait for user@UID and its bus after linger was enabled.
    fn wait_user_manager(&self, uid: u32, timeout: Duration) -> std::result::Result<(), SvcError>;
    /// Run an account tool (`useradd`, `userdel`); Err carries its stderr.
    fn run(&self, argv: &[String]) -> std::result::Result<(), String>;
    /// uid/gid of a user, from the passwd database under the root.
    fn user_ids(&self, name: &str) -> Option<(u32, u32)>;
}

/// The real host: D-Bus to systemd/logind and the passwd database under `root`.
pub struct RealHost {
    pub root: PathBuf,
}

impl Host for RealHost {
    fn service_manager(
        &self,
        scope: Scope,
    ) -> std::result::Result<Box<dyn ServiceManager>, SvcError> {
        Ok(Box::new(outpost_systemd::dbus::SystemdBus::connect(scope)?))
    }
    fn logind(&self) -> std::result::Result<Box<dyn Logind>, SvcError> {
        Ok(Box::new(outpost_systemd::dbus::LogindBus::connect()?))
    }
    fn wait_user_manager(&self, uid: u32, timeout: Duration) -> std::result::Result<(), SvcError> {
        outpost_systemd::dbus::wait_user_manager(uid, timeout)
    }
    fn run(&self, argv: &[String]) -> std::result::Result<(), String> {
        let (cmd, args) = argv.split_first().ok_or("empty command")?;
        let out = std::process::Command::new(cmd)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {cmd}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{cmd} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
    fn user_ids(&self, name: &str) -> Option<(u32, u32)> {
        crate::users::by_name(&self.root, name)
            .ok()
            .flatten()
            .map(|a| (a.uid, a.gid))
    }
}

enum Undo {
    Remove(PathBuf),
    RemoveDir(PathBuf),
    Restore {
        path: PathBuf,
        bytes: Vec<u8>,
        mode: u32,
    },
    Relink {
        path: PathBuf,
        target: PathBuf,
    },
}

/// Rollback-on-drop record of file changes.
pub struct Transaction {
    undo: Vec<Undo>,
    committed: bool,
}

impl Transaction {
    pub fn new() -> Self {
        Transaction {
            undo: Vec::new(),
            committed: false,
        }
    }
    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Default for Transaction {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // Best effort, newest first: each undo is independent, so one failure must not stop the rest.
        for u in self.undo.drain(..).rev() {
            let r = match &u {
                Undo::Remove(p) => fsx::remove_file(p).map(|_| ()),
                Undo::RemoveDir(p) => fs_err::remove_dir(p),
                Undo::Restore { path, bytes, mode } => fsx::write_atomic(path, bytes, *mode, None),
                Undo::Relink { path, target } => fsx::symlink_atomic(target, path),
            };
            if let Err(e) = r {
                eprintln!("warning: rollback step failed: {e}");
            }
        }
    }
}

fn resolve_owner(spec: OwnerSpec, service_ids: Option<(u32, u32)>, mode: Mode) -> fsx::Owner {
    match (spec, mode) {
        (OwnerSpec::ServiceUser, Mode::System) => service_ids,
        (OwnerSpec::Invoker, Mode::System) => Some((0, 0)),
        _ => None,
    }
}

/// System mode: what root uses must be root's. Records an earlier layout left to the service
/// user (the receipt, the upgrade record) are set aside unread, `outpost.env` is taken back
/// (root, 0600; a symlink is refused), and the agent's own files move from the state dir
/// into its agent dir. (`config.toml` is checked before anything changes, in `prepare`.)
fn repair_privilege_split(l: &Layout, out: &mut dyn Write) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if l.mode != Mode::System {
        return Ok(());
    }
    let sd = l.host(&l.state_dir);
    let ad = l.host(&l.agent_dir);
    for name in [
        outpost_core::layout::files::IDENTITY,
        outpost_core::layout::files::HEARTBEAT,
        outpost_core::journal::FILE,
    ] {
        let from = sd.join(name);
        let Ok(m) = std::fs::symlink_metadata(&from) else {
            continue;
        };
        if m.uid() == 0 {
            continue; // root's own journal
        }
        let to = ad.join(name);
        if std::fs::symlink_metadata(&to).is_ok() {
            // Both exist: the agent dir's copy wins; the old one is set aside, not deleted.
            let aside = sd.join(format!("{name}.pre-agent-dir"));
            fs_err::rename(&from, &aside).map_err(|e| Error::io("move aside", &from, e))?;
            writeln!(
                out,
                "moved the agent's old {name} aside to {}",
                aside.display()
            )
            .ok();
            continue;
        }
        // rename(2) moves the entry itself (a symlink stays a symlink, never followed).
        fs_err::rename(&from, &to).map_err(|e| Error::io("move", &from, e))?;
        writeln!(
            out,
            "moved the agent's {name} into {}",
            l.agent_dir.display()
        )
        .ok();
    }
    // Root's records that the service user could have written are never trusted: set aside
    // (install writes a new receipt; an upgrade record is then simply gone).
    for p in [
        l.host(&l.receipt_file()),
        l.host(
            &l.state_dir
                .join(outpost_core::layout::files::UPGRADE_RECORD),
        ),
    ] {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.uid() != 0 || m.mode() & 0o022 != 0 || !m.is_file() {
            let mut aside = p.clone().into_os_string();
            aside.push(".untrusted");
            fs_err::rename(&p, &aside).map_err(|e| Error::io("move aside", &p, e))?;
            writeln!(
                out,
                "set aside {} (not root's): nothing in it is used",
                p.display()
            )
            .ok();
        }
    }
    // The secrets file: systemd reads it as root; it becomes root's (0600).
    let env = l.host(&l.env_file);
    if let Ok(m) = std::fs::symlink_metadata(&env) {
        if m.file_type().is_symlink() || !m.is_file() {
            return Err(Error::failed(
                format!("refusing {}: it is not a regular file (a symlink?)", env.display()),
                format!("check who replaced it, remove it (`sudo rm {}`) and re-run `sudo outpost install`", env.display()),
            ));
        }
        if m.uid() != 0 || m.gid() != 0 || m.mode() & 0o077 != 0 {
            fsx::set_mode_owner(&env, 0o600, Some((0, 0)))
                .map_err(|e| Error::io("take back", &env, e))?;
            writeln!(out, "{} now belongs to root (0600)", env.display()).ok();
        }
    }
    Ok(())
}

fn now_rfc3339() -> String {
    outpost_core::time::now_rfc3339()
}

fn scope_for(layout: &Layout, uid: u32) -> Scope {
    match layout.mode {
        Mode::System => Scope::System,
        Mode::User => Scope::User { uid },
    }
}

/// What an applied install did, for the summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallOutcome {
    pub changed: bool,
    pub service: String,
    pub receipt: Receipt,
}

/// Apply an install plan. `uid` is the invoking user's uid (user-mode scope).
pub fn apply_install(
    plan: &InstallPlan,
    prior: Option<Receipt>,
    host: &dyn Host,
    uid: u32,
    out: &mut dyn Write,
) -> Result<InstallOutcome> {
    let l = &plan.layout;
    let mut tx = Transaction::new();
    let mut receipt = prior.unwrap_or_else(|| Receipt {
        schema: crate::receipt::SCHEMA,
        mode: l.mode,
        version: plan.version.clone(),
        installed_at: now_rfc3339(),
        service_user: plan.service_user.name.clone(),
        created_user: None,
        linger_enabled_for: None,
        unit_enabled: false,
        uninstalled_at: None,
        entries: Vec::new(),
    });
    let changed = plan.changes_anything();
    receipt.uninstalled_at = None;
    receipt.version = plan.version.clone();
    receipt.service_user = plan.service_user.name.clone();
    if changed {
        receipt.installed_at = now_rfc3339();
    }

    // Accounts first: file owners depend on them.
    let mut service_ids = plan.service_user.ids;
    for item in &plan.items {
        if let (Op::CreateUser { name, home }, Change::Create) = (&item.op, item.change) {
            let argv = crate::users::create_system_user_cmd(name, home);
            host.run(&argv).map_err(|e| {
                Error::failed(
                    format!("cannot create system user {name}: {e}"),
                    "create it yourself (useradd --system) or pass --run-as USER",
                )
            })?;
            receipt.created_user = Some(name.clone());
            writeln!(out, "created system user {name}").ok();
        }
    }
    if plan.service_user.create || service_ids.is_none() {
        service_ids = host.user_ids(&plan.service_user.name);
    }
    if l.mode == Mode::System && service_ids.is_none() {
        return Err(Error::failed(
            format!("service user {} does not exist", plan.service_user.name),
            "pass --run-as with an existing user",
        ));
    }

    for (i, item) in plan.items.iter().enumerate() {
        let host_path = |p: &Path| l.host(p);
        // Once the agent dir exists, take root's files back and move the agent's into it.
        if i > 0 && matches!(&plan.items[i - 1].op, Op::Dir { path, .. } if path == &l.agent_dir) {
            repair_privilege_split(l, out)?;
        }
        match (&item.op, item.change) {
            (
                Op::Dir {
                    path,
                    mode,
                    owner,
                    role,
                },
                change,
            ) => {
                let hp = host_path(path);
                let own = resolve_owner(*owner, service_ids, l.mode);
                if change == Change::Create {
                    let made = fsx::create_dirs(&hp, *mode, own)
                        .map_err(|e| Error::io("create directory", &hp, e))?;
                    for d in made {
                        tx.undo.push(Undo::RemoveDir(d));
                    }
                    receipt.upsert(Entry {
                        kind: Kind::Dir,
                        role: *role,
                        path: path.clone(),
                        sha256: None,
                        mode: Some(*mode),
                        target: None,
                    });
                } else if matches!(role, Role::State | Role::Config) && own.is_some() {
                    // keep the service user able to write its state after --run-as changes
                    fsx::set_mode_owner(&hp, *mode, own)
                        .map_err(|e| Error::io("set owner of", &hp, e))?;
                }
            }
            (
                Op::File {
                    path,
                    role,
                    content,
                    sha256,
                    mode,
                    owner,
                },
                change,
            ) => {
                if matches!(change, Change::Create | Change::Update) {
                    let hp = host_path(path);
                    let bytes = match content {
                        Content::Text { text } => text.clone().into_bytes(),
                        Content::CopyOf { from } => {
                            fs_err::read(from).map_err(|e| Error::io("read", from, e))?
                        }
                    };
                    if fsx::sha256_bytes(&bytes) != *sha256 {
                        return Err(Error::failed(
                            format!("{} changed while installing (sha256 mismatch)", path.display()),
                            "run the command again; if it persists, the source binary is being replaced concurrently",
                        ));
                    }
                    match std::fs::read(&hp) {
                        Ok(old) => {
                            let m = std::fs::metadata(&hp)
                                .map(|m| {
                                    std::os::unix::fs::PermissionsExt::mode(&m.permissions())
                                        & 0o7777
                                })
                                .unwrap_or(0o644);
                            tx.undo.push(Undo::Restore {
                                path: hp.clone(),
                                bytes: old,
                                mode: m,
                            });
                        }
                        Err(_) => tx.undo.push(Undo::Remove(hp.clone())),
                    }
                    let own = resolve_owner(*owner, service_ids, l.mode);
                    fsx::write_atomic(&hp, &bytes, *mode, own)
                        .map_err(|e| Error::io("write", &hp, e))?;
                }
                if change != Change::Keep || receipt.entry(path).is_none() {
                    // A kept operator file is recorded as found, so a later edit is still visible.
                    let recorded = if change == Change::Keep {
                        fsx::sha256_file(&l.host(path)).ok()
                    } else {
                        Some(sha256.clone())
                    };
                    receipt.upsert(Entry {
                        kind: Kind::File,
                        role: *role,
                        path: path.clone(),
                        sha256: recorded,
                        mode: Some(*mode),
                        target: None,
                    });
                }
            }
            (Op::Symlink { path, target, role }, change) => {
                if matches!(change, Change::Create | Change::Update) {
                    let hp = host_path(path);
                    match std::fs::read_link(&hp) {
                        Ok(old) => tx.undo.push(Undo::Relink {
                            path: hp.clone(),
                            target: old,
                        }),
                        Err(_) => tx.undo.push(Undo::Remove(hp.clone())),
                    }
                    fsx::symlink_atomic(target, &hp)
                        .map_err(|e| Error::io("create symlink", &hp, e))?;
                }
                receipt.upsert(Entry {
                    kind: Kind::Symlink,
                    role: *role,
                    path: path.clone(),
                    sha256: None,
                    mode: None,
                    target: Some(target.clone()),
                });
            }
            (Op::EnableLinger { user, uid }, _) => {
                let logind = host.logind()?;
                logind.set_linger(*uid, true).map_err(|e| match e {
                    SvcError::AccessDenied { .. } => Error::failed(
                        format!("not allowed to enable linger for {user}, so a user service would stop at logout"),
                        format!("run `sudo loginctl enable-linger {user}` and try again, or install system-wide with `sudo outpost install --system`"),
                    ),
                    e => Error::Svc(e),
                })?;
                receipt.linger_enabled_for = Some(user.clone());
                writeln!(out, "enabled linger for {user}").ok();
            }
            (Op::CreateUser { .. }, _) => {}
        }
    }

    if let Some(uid) = plan.wait_user_manager {
        host.wait_user_manager(uid, Duration::from_secs(30)).map_err(|e| {
            Error::failed(
                format!("the user service manager (user@{uid}.service) did not come up: {e}"),
                "check `systemctl status user@UID.service`; or install system-wide with `sudo outpost install --system`".replace("UID", &uid.to_string()),
            )
        })?;
    }

    let svc = host.service_manager(scope_for(l, uid))?;
    let unit = crate::UNIT;
    let service_result = (|| -> std::result::Result<String, SvcError> {
        if plan.daemon_reload {
            svc.daemon_reload()?;
        }
        if plan.enable {
            svc.enable(unit)?;
            // Like `systemctl enable`: reload so the target picks up its new `.wants/` link
            // (otherwise an inactive unit is garbage-collected and loses its state).
            svc.daemon_reload()?;
        }
        match &plan.service {
            ServiceAction::Start => {
                svc.reset_failed(unit)?;
                svc.start(unit)?;
                Ok("started".into())
            }
            ServiceAction::Restart => {
                svc.reset_failed(unit)?;
                svc.restart(unit)?;
                Ok("restarted".into())
            }
            ServiceAction::None { reason } => Ok(format!("not restarted ({reason})")),
        }
    })();
    receipt.unit_enabled = true;
    let service = match service_result {
        Ok(s) => s,
        Err(e) => {
            let fresh =
                receipt.entries.iter().all(|e| e.role != Role::Binary) || tx.undo.is_empty();
            if !fresh
                && tx
                    .undo
                    .iter()
                    .any(|u| !matches!(u, Undo::Remove(_) | Undo::RemoveDir(_)))
            {
                // An update broke a working install: put the old files back and restart them.
                drop(tx);
                let _ = svc.daemon_reload();
                let _ = svc.reset_failed(unit);
                let restored = svc.restart(unit).is_ok();
                return Err(Error::failed(
                    format!(
                        "{e}; the previous files were restored{}",
                        if restored {
                            " and the service restarted"
                        } else {
                            ""
                        }
                    ),
                    e.hint(),
                ));
            }
            // A fresh install: keep the files so the operator can look at the failure.
            tx.commit();
            receipt.save(l, resolve_owner(OwnerSpec::Invoker, service_ids, l.mode))?;
            return Err(explain_start_failure(l, e));
        }
    };
    receipt.save(l, resolve_owner(OwnerSpec::Invoker, service_ids, l.mode))?;
    tx.commit();
    Ok(InstallOutcome {
        changed,
        service,
        receipt,
    })
}

/// A service that failed to start often said why in the journal (a refused enrollment key):
/// turn that into the error, instead of a bare job result.
fn explain_start_failure(l: &Layout, e: SvcError) -> Error {
    let journal = outpost_core::journal::Journal::open(&l.host(&l.agent_dir));
    let last = journal.read_all().ok().and_then(|r| r.into_iter().last());
    match last {
        Some(r) if r.kind == outpost_core::journal::kind::ENROLL_REFUSED => {
            let code = r
                .data
                .get("code")
                .and_then(|c| c.as_str())
                .unwrap_or("refused");
            let hub = r
                .data
                .get("hub_url")
                .and_then(|c| c.as_str())
                .unwrap_or("the hub");
            let why = match code {
                "key_used" => "the key has already been used (keys enroll exactly one host)",
                "key_expired" => "the key has expired",
                "key_unknown" => "the hub does not know this key",
                _ => "the key was refused",
            };
            Error::failed(
                format!("{hub} refused the enrollment key ({code}): {why}; the service is installed but not running"),
                format!("mint a new key (`outpost-hub keys create`), write it to {} as OUTPOST_ENROLL_KEY=…, then `outpost start`", l.env_file.display()),
            )
        }
        _ => Error::Svc(e),
    }
}

/// Remove `dir` if it holds nothing but (nested) empty directories; fails otherwise.
fn remove_empty_tree(dir: &Path) -> std::io::Result<()> {
    for e in fs_err::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_empty_tree(&e.path())?;
        }
    }
    fs_err::remove_dir(dir)
}

/// What an applied uninstall did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UninstallOutcome {
    pub removed: Vec<PathBuf>,
    pub kept: Vec<(PathBuf, String)>,
}

pub fn apply_uninstall(
    plan: &UninstallPlan,
    receipt: &Receipt,
    host: &dyn Host,
    uid: u32,
    out: &mut dyn Write,
) -> Result<UninstallOutcome> {
    let l = &plan.layout;
    let unit = crate::UNIT;
    if plan.stop_and_disable {
        match host.service_manager(scope_for(l, uid)) {
            Ok(svc) => {
                let st = svc.status(unit)?;
                if st.is_loaded() {
                    svc.stop(unit)?;
                    svc.disable(unit)?;
                    writeln!(out, "stopped and disabled {unit}").ok();
                }
            }
            Err(e) if l.mode == Mode::User => {
                // No user manager (linger off, logged out): nothing is running to stop.
                writeln!(out, "warning: {e}; not stopping the user service").ok();
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut result = UninstallOutcome::default();
    let mut remaining = Vec::new();
    for r in &plan.removals {
        let hp = l.host(&r.path);
        match r.action {
            RemoveAction::Remove => {
                let res = match r.kind {
                    Kind::Dir => remove_empty_tree(&hp),
                    _ => fsx::remove_file(&hp).map(|_| ()),
                };
                match res {
                    Ok(()) => result.removed.push(r.path.clone()),
                    // A directory that filled up with something else since planning: keep it.
                    Err(_) if r.kind == Kind::Dir && hp.exists() => {
                        result.kept.push((r.path.clone(), "not empty".into()));
                        remaining.push(r.path.clone());
                    }
                    Err(e) => return Err(Error::io("remove", &hp, e)),
                }
            }
            RemoveAction::RemoveTree => {
                fs_err::remove_dir_all(&hp).map_err(|e| Error::io("remove", &hp, e))?;
                result.removed.push(r.path.clone());
            }
            RemoveAction::KeepModified => {
                result
                    .kept
                    .push((r.path.clone(), "modified since install".into()));
                remaining.push(r.path.clone());
            }
            RemoveAction::KeepUserData => {
                result
                    .kept
                    .push((r.path.clone(), "your data (use --purge to remove)".into()));
                remaining.push(r.path.clone());
            }
            RemoveAction::KeepNotEmpty => {
                result.kept.push((r.path.clone(), "not empty".into()));
                remaining.push(r.path.clone());
            }
            RemoveAction::Missing => {}
        }
    }
    if plan.stop_and_disable {
        if let Ok(svc) = host.service_manager(scope_for(l, uid)) {
            svc.daemon_reload()?;
        }
    }
    if let Some(user) = &plan.disable_linger {
        if let Some((luid, _)) = host.user_ids(user) {
            host.logind()?.set_linger(luid, false)?;
            writeln!(out, "disabled linger for {user} (install had enabled it)").ok();
        }
    }
    if let Some(user) = &plan.delete_user {
        host.run(&crate::users::delete_user_cmd(user))
            .map_err(|e| {
                Error::failed(
                    format!("cannot delete system user {user}: {e}"),
                    format!("delete it yourself with `userdel {user}`"),
                )
            })?;
        writeln!(out, "deleted system user {user}").ok();
    }
    if !plan.purge {
        // Keep a receipt of what is left, so a later `uninstall --purge` still knows it.
        let mut left = receipt.clone();
        left.entries.retain(|e| remaining.contains(&e.path));
        left.linger_enabled_for = None;
        left.unit_enabled = false;
        left.uninstalled_at = Some(now_rfc3339());
        if l.host(&l.state_dir).is_dir() {
            left.save(l, None)?;
        }
    } else {
        let rf = l.host(&l.receipt_file());
        fsx::remove_file(&rf).map_err(|e| Error::io("remove", &rf, e))?;
    }
    Ok(result)
}
