//! The one executor: applies an [`InstallPlan`] or [`UninstallPlan`] to the host.
//!
//! File changes run inside a [`Transaction`]: each step records how to undo itself and
//! dropping the transaction without `commit()` rolls them back, so a failed install leaves
//! the host as it found it.
use crate::error::{Error, Result};
use crate::fsx;
use crate::plan::{
    Change, Content, InstallPlan, Item, Op, OwnerSpec, RemoveAction, ServiceAction, UninstallPlan,
};
use crate::receipt::{Entry, Kind, Receipt, Role};
use outpost_core::layout::{Layout, Mode};
use outpost_systemd::{Logind, Scope, ServiceManager, SvcError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long install waits for user@UID and its bus after turning linger on.
pub const USER_MANAGER_TIMEOUT: Duration = Duration::from_secs(30);

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

/// How to put back one change a [`Transaction`] step made. Each typed operation of the
/// transaction records its own, before it touches the disk, so no caller can forget one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Undo {
    /// The step created this file or symlink: remove it.
    RemoveFile(PathBuf),
    /// The step created this (empty) directory: remove it.
    RemoveDir(PathBuf),
    /// The step replaced this file: write the old bytes back.
    RestoreFile {
        path: PathBuf,
        bytes: Vec<u8>,
        mode: u32,
    },
    /// The step replaced this symlink: point it back at the old target.
    Relink { path: PathBuf, target: PathBuf },
}

impl Undo {
    /// The undo of writing `path`: its old bytes and mode, or removal when there was nothing
    /// readable there.
    fn of_write(path: &Path) -> Undo {
        match std::fs::read(path) {
            Ok(bytes) => {
                let mode = std::fs::metadata(path)
                    .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
                    .unwrap_or(0o644);
                Undo::RestoreFile {
                    path: path.to_path_buf(),
                    bytes,
                    mode,
                }
            }
            Err(_) => Undo::RemoveFile(path.to_path_buf()),
        }
    }

    /// The undo of (re)pointing the symlink `path`: its old target, or removal.
    fn of_symlink(path: &Path) -> Undo {
        match std::fs::read_link(path) {
            Ok(target) => Undo::Relink {
                path: path.to_path_buf(),
                target,
            },
            Err(_) => Undo::RemoveFile(path.to_path_buf()),
        }
    }

    /// Whether undoing puts back something that was there before (an update), rather than
    /// only removing what this transaction created.
    fn restores_old(&self) -> bool {
        matches!(self, Undo::RestoreFile { .. } | Undo::Relink { .. })
    }

    fn run(&self) -> std::io::Result<()> {
        match self {
            Undo::RemoveFile(p) => fsx::remove_file(p).map(|_| ()),
            Undo::RemoveDir(p) => fs_err::remove_dir(p),
            Undo::RestoreFile { path, bytes, mode } => fsx::write_atomic(path, bytes, *mode, None),
            Undo::Relink { path, target } => fsx::symlink_atomic(target, path),
        }
    }
}

/// Rollback-on-drop record of file changes, rustup style: the typed operations
/// ([`Transaction::create_dirs`], [`Transaction::write_file`], [`Transaction::symlink`])
/// change the disk and record their undo; dropping the transaction without
/// [`Transaction::commit`] undoes them, newest first.
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

    /// Create `path` and its missing parents (`mode`, `owner`); rollback removes each
    /// directory this made.
    pub fn create_dirs(
        &mut self,
        path: &Path,
        mode: u32,
        owner: fsx::Owner,
    ) -> std::io::Result<()> {
        disk_fault::before_change()?;
        let made = fsx::create_dirs(path, mode, owner)?;
        self.undo.extend(made.into_iter().map(Undo::RemoveDir));
        Ok(())
    }

    /// Write `bytes` to `path` atomically; rollback puts the old file back (bytes and mode),
    /// or removes the new one.
    pub fn write_file(
        &mut self,
        path: &Path,
        bytes: &[u8],
        mode: u32,
        owner: fsx::Owner,
    ) -> std::io::Result<()> {
        self.undo.push(Undo::of_write(path));
        disk_fault::before_change()?;
        fsx::write_atomic(path, bytes, mode, owner)
    }

    /// Point the symlink `link` at `target` atomically; rollback points it back, or removes it.
    pub fn symlink(&mut self, target: &Path, link: &Path) -> std::io::Result<()> {
        self.undo.push(Undo::of_symlink(link));
        disk_fault::before_change()?;
        fsx::symlink_atomic(target, link)
    }

    /// Nothing recorded: this transaction changed no file.
    pub fn is_empty(&self) -> bool {
        self.undo.is_empty()
    }

    /// Rolling back would put back something that existed before (not only remove new paths).
    pub fn restores_old(&self) -> bool {
        self.undo.iter().any(Undo::restores_old)
    }

    /// Undo every step now (what dropping an uncommitted transaction does).
    pub fn rollback(self) {
        drop(self);
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
            if let Err(e) = u.run() {
                eprintln!("warning: rollback step failed: {e}");
            }
        }
    }
}

/// Unit tests make the Nth disk change of a [`Transaction`] fail (after its undo is
/// recorded, before the disk is touched, like a full disk would); other builds have no knob.
#[cfg(test)]
pub(crate) mod disk_fault {
    use std::cell::Cell;

    thread_local! {
        /// Changes left before the one that fails; `None`: never fail.
        static FAIL_IN: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// Fail the `n`th change from now (0 = the next one) on this thread; `None` clears it.
    pub(crate) fn fail_change(n: Option<usize>) {
        FAIL_IN.with(|c| c.set(n));
    }

    pub(super) fn before_change() -> std::io::Result<()> {
        FAIL_IN.with(|c| match c.get() {
            Some(0) => {
                c.set(None);
                Err(std::io::Error::other("injected failure"))
            }
            Some(n) => {
                c.set(Some(n - 1));
                Ok(())
            }
            None => Ok(()),
        })
    }
}

#[cfg(not(test))]
mod disk_fault {
    #[inline(always)]
    pub(super) fn before_change() -> std::io::Result<()> {
        Ok(())
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
    if l.mode != Mode::System {
        return Ok(());
    }
    move_agent_files(l, out)?;
    set_aside_untrusted_records(l, out)?;
    take_back_env_file(l, out)
}

/// The agent's own files (identity, heartbeat, its journal) move from the state dir into the
/// agent dir; when the agent dir already has one, the old one is set aside, not deleted.
fn move_agent_files(l: &Layout, out: &mut dyn Write) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
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
    Ok(())
}

/// A record root reads must be a regular file of root's that nobody else can write.
fn untrusted_record(uid: u32, mode: u32, is_file: bool) -> bool {
    uid != 0 || mode & 0o022 != 0 || !is_file
}

/// Root's records that the service user could have written are never trusted: set aside
/// (install writes a new receipt; an upgrade record is then simply gone).
fn set_aside_untrusted_records(l: &Layout, out: &mut dyn Write) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
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
        if untrusted_record(m.uid(), m.mode(), m.is_file()) {
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
    Ok(())
}

/// The secrets file must be root's and private to root (0600 or stricter).
fn env_file_needs_taking_back(uid: u32, gid: u32, mode: u32) -> bool {
    uid != 0 || gid != 0 || mode & 0o077 != 0
}

/// The secrets file: systemd reads it as root; it becomes root's (0600).
fn take_back_env_file(l: &Layout, out: &mut dyn Write) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let env = l.host(&l.env_file);
    if let Ok(m) = std::fs::symlink_metadata(&env) {
        if m.file_type().is_symlink() || !m.is_file() {
            return Err(Error::failed(
                format!("refusing {}: it is not a regular file (a symlink?)", env.display()),
                format!("check who replaced it, remove it (`sudo rm {}`) and re-run `sudo outpost install`", env.display()),
            ));
        }
        if env_file_needs_taking_back(m.uid(), m.gid(), m.mode()) {
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
    let mut run = InstallRun::begin(plan, prior, host, out);
    // Accounts first: file owners depend on them.
    run.create_accounts()?;
    run.resolve_service_ids()?;
    run.apply_items()?;
    run.wait_user_manager()?;
    run.start_service(uid)
}

/// One [`apply_install`], one method per step. It owns the [`Transaction`]: a step that fails
/// returns early and drops it, which undoes every file step done so far.
struct InstallRun<'a> {
    plan: &'a InstallPlan,
    layout: &'a Layout,
    host: &'a dyn Host,
    out: &'a mut dyn Write,
    tx: Transaction,
    receipt: Receipt,
    changed: bool,
    service_ids: Option<(u32, u32)>,
    /// The uid linger was turned on for by this run (whose manager is waited for).
    lingered_uid: Option<u32>,
}

/// The receipt an install updates: the previous one, or a new one; stamped with this
/// version and service user, and the time when anything changes.
fn start_receipt(plan: &InstallPlan, prior: Option<Receipt>, changed: bool) -> Receipt {
    let mut receipt = prior.unwrap_or_else(|| Receipt {
        schema: crate::receipt::SCHEMA,
        mode: plan.layout.mode,
        version: plan.version.clone(),
        installed_at: now_rfc3339(),
        service_user: plan.service_user.name.clone(),
        created_user: None,
        linger_enabled_for: None,
        unit_enabled: false,
        uninstalled_at: None,
        entries: Vec::new(),
    });
    receipt.uninstalled_at = None;
    receipt.version = plan.version.clone();
    receipt.service_user = plan.service_user.name.clone();
    if changed {
        receipt.installed_at = now_rfc3339();
    }
    receipt
}

/// The bytes an [`Op::File`] writes, checked against the sha256 the plan was made with.
fn file_bytes(path: &Path, content: &Content, sha256: &str) -> Result<Vec<u8>> {
    let bytes = match content {
        Content::Text { text } => text.clone().into_bytes(),
        Content::CopyOf { from } => fs_err::read(from).map_err(|e| Error::io("read", from, e))?,
    };
    if fsx::sha256_bytes(&bytes) != sha256 {
        return Err(Error::failed(
            format!("{} changed while installing (sha256 mismatch)", path.display()),
            "run the command again; if it persists, the source binary is being replaced concurrently",
        ));
    }
    Ok(bytes)
}

/// Whether a step with this change writes to disk.
fn writes(change: Change) -> bool {
    matches!(change, Change::Create | Change::Update)
}

/// Once the agent dir exists (the item before `i` made it), the privilege split is repaired.
fn follows_agent_dir(plan: &InstallPlan, i: usize) -> bool {
    i > 0 && matches!(&plan.items[i - 1].op, Op::Dir { path, .. } if path == &plan.layout.agent_dir)
}

impl<'a> InstallRun<'a> {
    fn begin(
        plan: &'a InstallPlan,
        prior: Option<Receipt>,
        host: &'a dyn Host,
        out: &'a mut dyn Write,
    ) -> Self {
        let changed = plan.changes_anything();
        InstallRun {
            plan,
            layout: &plan.layout,
            host,
            out,
            tx: Transaction::new(),
            receipt: start_receipt(plan, prior, changed),
            changed,
            service_ids: plan.service_user.ids,
            lingered_uid: None,
        }
    }

    fn owner(&self, spec: OwnerSpec) -> fsx::Owner {
        resolve_owner(spec, self.service_ids, self.layout.mode)
    }

    /// `useradd` for each system user the plan creates (never undone: a later run reuses it).
    fn create_accounts(&mut self) -> Result<()> {
        for item in &self.plan.items {
            if let (Op::CreateUser { name, home }, Change::Create) = (&item.op, item.change) {
                let argv = crate::users::create_system_user_cmd(name, home);
                self.host.run(&argv).map_err(|e| {
                    Error::failed(
                        format!("cannot create system user {name}: {e}"),
                        "create it yourself (useradd --system) or pass --run-as USER",
                    )
                })?;
                self.receipt.created_user = Some(name.clone());
                writeln!(self.out, "created system user {name}").ok();
            }
        }
        Ok(())
    }

    /// The service user's uid/gid (looked up when it was just created or not known); system
    /// mode cannot go on without them.
    fn resolve_service_ids(&mut self) -> Result<()> {
        let su = &self.plan.service_user;
        if su.create || self.service_ids.is_none() {
            self.service_ids = self.host.user_ids(&su.name);
        }
        if self.layout.mode == Mode::System && self.service_ids.is_none() {
            return Err(Error::failed(
                format!("service user {} does not exist", su.name),
                "pass --run-as with an existing user",
            ));
        }
        Ok(())
    }

    /// Every item in plan order; right after the agent dir, the privilege split is repaired.
    fn apply_items(&mut self) -> Result<()> {
        let plan = self.plan;
        for (i, item) in plan.items.iter().enumerate() {
            if follows_agent_dir(plan, i) {
                repair_privilege_split(self.layout, self.out)?;
            }
            self.apply_item(item)?;
        }
        Ok(())
    }

    fn apply_item(&mut self, item: &Item) -> Result<()> {
        let change = item.change;
        match &item.op {
            Op::Dir {
                path,
                mode,
                owner,
                role,
            } => self.dir(path, *mode, *owner, *role, change),
            Op::File {
                path,
                role,
                content,
                sha256,
                mode,
                owner,
            } => {
                if writes(change) {
                    self.write_file(path, content, sha256, *mode, *owner)?;
                }
                self.record_file(path, *role, sha256, *mode, change);
                Ok(())
            }
            Op::Symlink { path, target, role } => self.symlink(path, target, *role, change),
            Op::EnableLinger { user, uid } if writes(change) => self.enable_linger(user, *uid),
            Op::EnableLinger { .. } | Op::CreateUser { .. } => Ok(()),
        }
    }

    /// Create a missing directory (recorded), or keep an existing state/config dir owned by
    /// the service user after `--run-as` changed (not undone).
    fn dir(
        &mut self,
        path: &Path,
        mode: u32,
        owner: OwnerSpec,
        role: Role,
        change: Change,
    ) -> Result<()> {
        let hp = self.layout.host(path);
        let own = self.owner(owner);
        if change == Change::Create {
            self.tx
                .create_dirs(&hp, mode, own)
                .map_err(|e| Error::io("create directory", &hp, e))?;
            self.receipt.upsert(Entry {
                kind: Kind::Dir,
                role,
                path: path.to_path_buf(),
                sha256: None,
                mode: Some(mode),
                target: None,
            });
        } else if matches!(role, Role::State | Role::Config) && own.is_some() {
            // keep the service user able to write its state after --run-as changes
            fsx::set_mode_owner(&hp, mode, own).map_err(|e| Error::io("set owner of", &hp, e))?;
        }
        Ok(())
    }

    fn write_file(
        &mut self,
        path: &Path,
        content: &Content,
        sha256: &str,
        mode: u32,
        owner: OwnerSpec,
    ) -> Result<()> {
        let hp = self.layout.host(path);
        let bytes = file_bytes(path, content, sha256)?;
        let own = self.owner(owner);
        self.tx
            .write_file(&hp, &bytes, mode, own)
            .map_err(|e| Error::io("write", &hp, e))
    }

    /// The receipt entry of a file; a kept operator file is recorded as found (once), so a
    /// later edit is still visible.
    fn record_file(&mut self, path: &Path, role: Role, sha256: &str, mode: u32, change: Change) {
        if change == Change::Keep && self.receipt.entry(path).is_some() {
            return;
        }
        let recorded = if change == Change::Keep {
            fsx::sha256_file(&self.layout.host(path)).ok()
        } else {
            Some(sha256.to_string())
        };
        self.receipt.upsert(Entry {
            kind: Kind::File,
            role,
            path: path.to_path_buf(),
            sha256: recorded,
            mode: Some(mode),
            target: None,
        });
    }

    fn symlink(&mut self, path: &Path, target: &Path, role: Role, change: Change) -> Result<()> {
        if writes(change) {
            let hp = self.layout.host(path);
            self.tx
                .symlink(target, &hp)
                .map_err(|e| Error::io("create symlink", &hp, e))?;
        }
        self.receipt.upsert(Entry {
            kind: Kind::Symlink,
            role,
            path: path.to_path_buf(),
            sha256: None,
            mode: None,
            target: Some(target.to_path_buf()),
        });
        Ok(())
    }

    /// The uid of the user a linger step is for: the plan's, else (a service user this run
    /// created) the one looked up after `useradd`.
    fn linger_uid(&self, user: &str, uid: Option<u32>) -> Result<u32> {
        let looked_up = || {
            let su = &self.plan.service_user;
            (su.name == user)
                .then_some(self.service_ids)
                .flatten()
                .or_else(|| self.host.user_ids(user))
                .map(|(uid, _)| uid)
        };
        uid.or_else(looked_up).ok_or_else(|| {
            Error::failed(
                format!("cannot enable linger for {user}: no such user"),
                "pass --run-as with an existing user",
            )
        })
    }

    /// Turn on linger for the service user (not undone; uninstall turns it off again, as the
    /// receipt records that install turned it on).
    fn enable_linger(&mut self, user: &str, uid: Option<u32>) -> Result<()> {
        let uid = self.linger_uid(user, uid)?;
        let mode = self.layout.mode;
        self.host
            .logind()
            .and_then(|logind| logind.set_linger(uid, true))
            .map_err(|e| linger_error(mode, user, uid, e))?;
        self.receipt.linger_enabled_for = Some(user.to_string());
        self.lingered_uid = Some(uid);
        writeln!(self.out, "enabled linger for {user}").ok();
        Ok(())
    }

    /// After turning linger on: wait for user@UID and its bus.
    fn wait_user_manager(&self) -> Result<()> {
        let (true, Some(uid)) = (self.plan.wait_user_manager, self.lingered_uid) else {
            return Ok(());
        };
        let user = &self.plan.service_user.name;
        self.host
            .wait_user_manager(uid, USER_MANAGER_TIMEOUT)
            .map_err(|e| {
                let hint = match self.layout.mode {
                    Mode::User => format!("check `systemctl status user@{uid}.service`; or install system-wide with `sudo outpost install --system`"),
                    Mode::System => format!("check `systemctl status user@{uid}.service` and `journalctl -u user@{uid}.service` (the agent starts its runs in {user}'s manager), then re-run `sudo outpost install`"),
                };
                Error::failed(
                    format!("the user service manager (user@{uid}.service) did not come up: {e}"),
                    hint,
                )
            })
    }

    /// daemon-reload, enable, start or restart; then commit, or decide what a failure undoes.
    fn start_service(mut self, uid: u32) -> Result<InstallOutcome> {
        let svc = self.host.service_manager(scope_for(self.layout, uid))?;
        let result = self.service_steps(&*svc);
        self.receipt.unit_enabled = true;
        match result {
            Ok(service) => self.commit(service),
            Err(e) if self.is_update() => Err(self.restore_update(&*svc, e)),
            Err(e) => Err(self.keep_fresh_install(e)),
        }
    }

    /// The service manager's part of the plan; the words say what happened to the service.
    fn service_steps(&self, svc: &dyn ServiceManager) -> std::result::Result<String, SvcError> {
        let unit = crate::UNIT;
        if self.plan.daemon_reload {
            svc.daemon_reload()?;
        }
        if self.plan.enable {
            svc.enable(unit)?;
            // Like `systemctl enable`: reload so the target picks up its new `.wants/` link
            // (otherwise an inactive unit is garbage-collected and loses its state).
            svc.daemon_reload()?;
        }
        match &self.plan.service {
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
    }

    /// This run replaced files of a working install (so a failure must put them back).
    fn is_update(&self) -> bool {
        let fresh =
            self.receipt.entries.iter().all(|e| e.role != Role::Binary) || self.tx.is_empty();
        !fresh && self.tx.restores_old()
    }

    fn save_receipt(&self) -> Result<()> {
        let invoker = self.owner(OwnerSpec::Invoker);
        Ok(self.receipt.save(self.layout, invoker)?)
    }

    /// Success: the receipt is written first (a failure there still rolls back), then commit.
    fn commit(self, service: String) -> Result<InstallOutcome> {
        self.save_receipt()?;
        self.tx.commit();
        Ok(InstallOutcome {
            changed: self.changed,
            service,
            receipt: self.receipt,
        })
    }

    /// An update broke a working install: put the old files back and restart them.
    fn restore_update(self, svc: &dyn ServiceManager, e: SvcError) -> Error {
        let unit = crate::UNIT;
        self.tx.rollback();
        let _ = svc.daemon_reload();
        let _ = svc.reset_failed(unit);
        let restored = svc.restart(unit).is_ok();
        Error::failed(
            format!(
                "{e}; the previous files were restored{}",
                if restored {
                    " and the service restarted"
                } else {
                    ""
                }
            ),
            e.hint(),
        )
    }

    /// A fresh install: keep the files so the operator can look at the failure.
    fn keep_fresh_install(self, e: SvcError) -> Error {
        let InstallRun {
            tx,
            receipt,
            layout,
            service_ids,
            ..
        } = self;
        tx.commit();
        let invoker = resolve_owner(OwnerSpec::Invoker, service_ids, layout.mode);
        match receipt.save(layout, invoker) {
            Ok(()) => explain_start_failure(layout, e),
            Err(save) => save.into(),
        }
    }
}

/// Why linger could not be turned on, and what to do: user mode asks for it without root
/// (logind may refuse), system mode needs it for the service user's own manager.
fn linger_error(mode: Mode, user: &str, uid: u32, e: SvcError) -> Error {
    match (mode, e) {
        (Mode::User, SvcError::AccessDenied { .. }) => Error::failed(
            format!("not allowed to enable linger for {user}, so a user service would stop at logout"),
            format!("run `sudo loginctl enable-linger {user}` and try again, or install system-wide with `sudo outpost install --system`"),
        ),
        (Mode::User, e) => Error::Svc(e),
        (Mode::System, e) => Error::failed(
            format!("cannot enable linger for {user} (uid {uid}): {e}; the agent starts its runs in {user}'s own service manager (user@{uid}.service), which needs it"),
            format!("check that systemd-logind runs (`systemctl status systemd-logind`); `loginctl enable-linger {user}` does it by hand, then re-run `sudo outpost install`"),
        ),
    }
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
    let mut run = UninstallRun {
        plan,
        host,
        uid,
        out,
        outcome: UninstallOutcome::default(),
        remaining: Vec::new(),
    };
    run.stop_and_disable()?;
    for r in &plan.removals {
        run.remove(r)?;
    }
    run.daemon_reload()?;
    run.disable_linger()?;
    run.delete_user()?;
    run.finish_receipt(receipt)?;
    Ok(run.outcome)
}

/// Why uninstall keeps a path it was asked about (`None`: it removes it, or it is gone).
/// Why a directory that could not be removed is kept: "not empty" when it is, else the
/// error itself, so a busy mount point or a read-only file system is not reported as full.
fn dir_keep_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::DirectoryNotEmpty => "not empty".into(),
        _ => format!("cannot remove it: {e}"),
    }
}

fn keep_reason(action: RemoveAction) -> Option<&'static str> {
    match action {
        RemoveAction::KeepModified => Some("modified since install"),
        RemoveAction::KeepUserData => Some("your data (use --purge to remove)"),
        RemoveAction::KeepNotEmpty => Some("not empty"),
        RemoveAction::Remove | RemoveAction::RemoveTree | RemoveAction::Missing => None,
    }
}

/// One applied [`UninstallPlan`], step by step: stop, remove, reload, linger, user, receipt.
struct UninstallRun<'a> {
    plan: &'a UninstallPlan,
    host: &'a dyn Host,
    uid: u32,
    out: &'a mut dyn Write,
    outcome: UninstallOutcome,
    /// Receipt paths still on disk afterwards (what a later `--purge` must know about).
    remaining: Vec<PathBuf>,
}

impl UninstallRun<'_> {
    fn layout(&self) -> &Layout {
        &self.plan.layout
    }

    fn stop_and_disable(&mut self) -> Result<()> {
        if !self.plan.stop_and_disable {
            return Ok(());
        }
        let unit = crate::UNIT;
        match self
            .host
            .service_manager(scope_for(self.layout(), self.uid))
        {
            Ok(svc) => {
                let st = svc.status(unit)?;
                if st.is_loaded() {
                    svc.stop(unit)?;
                    svc.disable(unit)?;
                    writeln!(self.out, "stopped and disabled {unit}").ok();
                }
            }
            Err(e) if self.layout().mode == Mode::User => {
                // No user manager (linger off, logged out): nothing is running to stop.
                writeln!(self.out, "warning: {e}; not stopping the user service").ok();
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    fn keep(&mut self, path: &Path, why: &str) {
        self.outcome.kept.push((path.to_path_buf(), why.into()));
        self.remaining.push(path.to_path_buf());
    }

    fn remove(&mut self, r: &crate::plan::Removal) -> Result<()> {
        let hp = self.layout().host(&r.path);
        match r.action {
            RemoveAction::Remove => {
                let res = match r.kind {
                    Kind::Dir => remove_empty_tree(&hp),
                    _ => fsx::remove_file(&hp).map(|_| ()),
                };
                match res {
                    Ok(()) => self.outcome.removed.push(r.path.clone()),
                    // A directory that filled up with something else since planning, or one
                    // that cannot be removed (busy, read-only): keep it and say why.
                    Err(e) if r.kind == Kind::Dir && hp.exists() => {
                        self.keep(&r.path, &dir_keep_reason(&e))
                    }
                    Err(e) => return Err(Error::io("remove", &hp, e)),
                }
            }
            RemoveAction::RemoveTree => {
                fs_err::remove_dir_all(&hp).map_err(|e| Error::io("remove", &hp, e))?;
                self.outcome.removed.push(r.path.clone());
            }
            RemoveAction::Missing => {}
            keep => {
                if let Some(why) = keep_reason(keep) {
                    self.keep(&r.path, why);
                }
            }
        }
        Ok(())
    }

    fn daemon_reload(&self) -> Result<()> {
        if self.plan.stop_and_disable {
            if let Ok(svc) = self
                .host
                .service_manager(scope_for(self.layout(), self.uid))
            {
                svc.daemon_reload()?;
            }
        }
        Ok(())
    }

    fn disable_linger(&mut self) -> Result<()> {
        if let Some(user) = &self.plan.disable_linger {
            if let Some((luid, _)) = self.host.user_ids(user) {
                self.host.logind()?.set_linger(luid, false)?;
                writeln!(
                    self.out,
                    "disabled linger for {user} (install had enabled it)"
                )
                .ok();
            }
        }
        Ok(())
    }

    fn delete_user(&mut self) -> Result<()> {
        if let Some(user) = &self.plan.delete_user {
            self.stop_user_manager(user);
            self.host
                .run(&crate::users::delete_user_cmd(user))
                .map_err(|e| {
                    Error::failed(
                        format!("cannot delete system user {user}: {e}"),
                        format!("delete it yourself with `userdel {user}`"),
                    )
                })?;
            writeln!(self.out, "deleted system user {user}").ok();
        }
        Ok(())
    }

    /// Before `userdel`: the user's own manager (user@UID, kept running by linger) stops only
    /// some time after linger is turned off, and `userdel` refuses a user that still has
    /// processes. Stopping user@UID waits for them (best effort: `userdel` says what is left).
    fn stop_user_manager(&mut self, user: &str) {
        let Some((uid, _)) = self.host.user_ids(user) else {
            return;
        };
        let unit = format!("user@{uid}.service");
        let stopped = self
            .host
            .service_manager(Scope::System)
            .and_then(|svc| svc.stop(&unit));
        if let Err(e) = stopped {
            writeln!(self.out, "warning: {e}").ok();
        }
    }

    /// Keep a receipt of what is left, so a later `uninstall --purge` still knows it; a purge
    /// removes the receipt.
    fn finish_receipt(&self, receipt: &Receipt) -> Result<()> {
        let l = self.layout();
        if !self.plan.purge {
            let mut left = receipt.clone();
            left.entries.retain(|e| self.remaining.contains(&e.path));
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Every step of `apply_install` made to fail in turn: what the transaction undoes (the
    //! tree as it was) and what it keeps (a fresh install whose service did not start).
    use super::*;
    use crate::detect::PolkitFlavor;
    use crate::plan::{self, ConfigSeed, InstallInputs, Observed, ServiceUser};
    use crate::testing::Fake;
    use outpost_systemd::UnitStatus;
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;

    /// Everything under a root: path → what is there (kind, mode, bytes or link target).
    type Tree = BTreeMap<PathBuf, String>;

    fn tree(root: &Path) -> Tree {
        fn walk(root: &Path, dir: &Path, out: &mut Tree) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                let what = if m.file_type().is_symlink() {
                    format!("link -> {}", std::fs::read_link(&p).unwrap().display())
                } else if m.is_dir() {
                    walk(root, &p, out);
                    format!("dir {:o}", m.mode() & 0o7777)
                } else {
                    let bytes = std::fs::read(&p).unwrap();
                    format!("file {:o} {}", m.mode() & 0o7777, fsx::sha256_bytes(&bytes))
                };
                out.insert(rel, what);
            }
        }
        let mut t = Tree::new();
        walk(root, root, &mut t);
        t
    }

    fn me() -> (u32, u32) {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    }

    /// A host whose call `at` fails (`times` times, then it works), else the recording fake.
    #[derive(Clone)]
    struct Failing {
        fake: Fake,
        at: &'static str,
        times: Rc<Cell<u32>>,
    }
    use std::cell::Cell;
    use std::rc::Rc;

    impl Failing {
        fn new(fake: &Fake, at: &'static str, times: u32) -> Self {
            Failing {
                fake: fake.clone(),
                at,
                times: Rc::new(Cell::new(times)),
            }
        }
        fn check(&self, call: &str) -> std::result::Result<(), SvcError> {
            if call != self.at || self.times.get() == 0 {
                return Ok(());
            }
            self.times.set(self.times.get() - 1);
            self.fake.call(format!("{call} (failed)"));
            Err(match call {
                "linger" => SvcError::AccessDenied {
                    scope: "system".into(),
                    action: "set linger for".into(),
                    unit: "user 1000".into(),
                },
                "connect" => SvcError::Connect {
                    scope: "system".into(),
                    address: "/run/dbus".into(),
                    message: "no bus".into(),
                },
                _ => SvcError::Job {
                    action: call.into(),
                    unit: crate::UNIT.into(),
                    result: "failed".into(),
                },
            })
        }
    }

    impl ServiceManager for Failing {
        fn scope(&self) -> Scope {
            Scope::System
        }
        fn daemon_reload(&self) -> std::result::Result<(), SvcError> {
            self.check("daemon-reload")?;
            self.fake.daemon_reload()
        }
        fn enable(&self, u: &str) -> std::result::Result<(), SvcError> {
            self.check("enable")?;
            self.fake.enable(u)
        }
        fn disable(&self, u: &str) -> std::result::Result<(), SvcError> {
            self.fake.disable(u)
        }
        fn start(&self, u: &str) -> std::result::Result<(), SvcError> {
            self.check("start")?;
            self.fake.start(u)
        }
        fn stop(&self, u: &str) -> std::result::Result<(), SvcError> {
            self.fake.stop(u)
        }
        fn restart(&self, u: &str) -> std::result::Result<(), SvcError> {
            self.check("restart")?;
            self.fake.restart(u)
        }
        fn reset_failed(&self, u: &str) -> std::result::Result<(), SvcError> {
            self.fake.reset_failed(u)
        }
        fn status(&self, u: &str) -> std::result::Result<UnitStatus, SvcError> {
            self.fake.status(u)
        }
        fn kill(
            &self,
            u: &str,
            whom: outpost_systemd::Whom,
            signal: i32,
        ) -> std::result::Result<(), SvcError> {
            self.fake.kill(u, whom, signal)
        }
        fn start_transient(
            &self,
            u: &str,
            d: &str,
            argv: &[String],
        ) -> std::result::Result<(), SvcError> {
            self.fake.start_transient(u, d, argv)
        }
    }

    impl Logind for Failing {
        fn set_linger(&self, uid: u32, enable: bool) -> std::result::Result<(), SvcError> {
            self.check("linger")?;
            self.fake.set_linger(uid, enable)
        }
    }

    impl Host for Failing {
        fn service_manager(
            &self,
            _scope: Scope,
        ) -> std::result::Result<Box<dyn ServiceManager>, SvcError> {
            self.check("connect")?;
            Ok(Box::new(self.clone()))
        }
        fn logind(&self) -> std::result::Result<Box<dyn Logind>, SvcError> {
            Ok(Box::new(self.clone()))
        }
        fn wait_user_manager(&self, uid: u32, t: Duration) -> std::result::Result<(), SvcError> {
            self.check("wait")?;
            self.fake.wait_user_manager(uid, t)
        }
        fn run(&self, argv: &[String]) -> std::result::Result<(), String> {
            self.check(&argv[0]).map_err(|e| e.to_string())?;
            self.fake.run(argv)?;
            if argv[0] == "useradd" {
                // the new user "is" the test user, so chown works unprivileged
                let name = argv.last().cloned().unwrap_or_default();
                self.fake.0.borrow_mut().users.insert(name, me());
            }
            Ok(())
        }
        fn user_ids(&self, name: &str) -> Option<(u32, u32)> {
            self.fake.user_ids(name)
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Setup {
        /// System mode into an empty root, the service user exists.
        Fresh,
        /// System mode, install creates the service user.
        FreshNewUser,
        /// System mode, the service user is nowhere to be found.
        FreshNoUser,
        /// System mode, `outpost.env` is a planted symlink (refused after the agent dir).
        FreshEnvSymlink,
        /// 1.0.0 installed and running, its unit and polkit rule edited; now 1.1.0.
        Update,
        /// User mode with linger to turn on.
        User,
        /// User mode, and the receipt cannot be written (a directory is in its place).
        UserReceiptBlocked,
    }

    struct Bed {
        dir: tempfile::TempDir,
        fake: Fake,
        inputs: InstallInputs,
    }

    impl Bed {
        fn layout(&self) -> &Layout {
            &self.inputs.layout
        }

        fn new(setup: Setup) -> Bed {
            let dir = tempfile::tempdir().unwrap();
            for d in [
                "etc/systemd/system",
                "usr/local/bin",
                "var/lib",
                "opt",
                "etc/polkit-1/rules.d",
                "home/alice",
            ] {
                std::fs::create_dir_all(dir.path().join(d)).unwrap();
            }
            let bin = dir.path().join("outpost-src");
            std::fs::write(&bin, b"\x7fELF 1.0.0").unwrap();
            let fake = Fake::default();
            let mut bed = Bed {
                inputs: Self::inputs(dir.path(), &bin, "1.0.0"),
                dir,
                fake,
            };
            let user = matches!(setup, Setup::User | Setup::UserReceiptBlocked);
            if !matches!(setup, Setup::FreshNewUser | Setup::FreshNoUser) && !user {
                bed.fake.0.borrow_mut().users.insert("outpost".into(), me());
            }
            match setup {
                Setup::Fresh => {}
                Setup::FreshNoUser => bed.inputs.service_user.ids = None,
                Setup::FreshNewUser => {
                    bed.inputs.service_user = ServiceUser {
                        name: "outpost".into(),
                        ids: None,
                        create: true,
                    };
                }
                Setup::FreshEnvSymlink => {
                    let l = bed.layout().clone();
                    std::fs::create_dir_all(l.host(&l.config_dir)).unwrap();
                    std::os::unix::fs::symlink("/etc/shadow", l.host(&l.env_file)).unwrap();
                }
                Setup::Update => {
                    let l = bed.layout().clone();
                    bed.apply(&bed.fake).unwrap();
                    std::fs::write(l.host(&l.unit_file), "[Unit]\n# edited\n").unwrap();
                    let polkit = l.host(Path::new(plan::POLKIT_RULES));
                    std::fs::write(&polkit, "// edited\n").unwrap();
                    std::fs::set_permissions(
                        &polkit,
                        std::os::unix::fs::PermissionsExt::from_mode(0o640),
                    )
                    .unwrap();
                    std::fs::write(&bin, b"\x7fELF 1.1.0").unwrap();
                    bed.inputs = Self::inputs(bed.dir.path(), &bin, "1.1.0");
                }
                Setup::User | Setup::UserReceiptBlocked => {
                    bed.inputs.layout = Layout::user(bed.dir.path(), Path::new("/home/alice"));
                    // user mode chowns nothing, so alice need not be the test user
                    bed.inputs.service_user = ServiceUser {
                        name: "alice".into(),
                        ids: Some((1000, 1000)),
                        create: false,
                    };
                    bed.fake
                        .0
                        .borrow_mut()
                        .users
                        .insert("alice".into(), (1000, 1000));
                    if setup == Setup::UserReceiptBlocked {
                        let l = bed.layout();
                        std::fs::create_dir_all(l.host(&l.receipt_file()).join("x")).unwrap();
                    }
                }
            }
            bed.fake.0.borrow_mut().calls.clear();
            bed
        }

        fn inputs(root: &Path, bin: &Path, version: &str) -> InstallInputs {
            InstallInputs {
                layout: Layout::system(root),
                version: version.parse().unwrap(),
                binary: bin.to_path_buf(),
                binary_sha256: fsx::sha256_file(bin).unwrap(),
                service_user: ServiceUser {
                    name: "outpost".into(),
                    ids: Some(me()),
                    create: false,
                },
                admin_group: None,
                polkit: Some(PolkitFlavor::Rules),
                hub_url: None,
                enroll_key: Some("k-1".into()),
                start: true,
                release: ConfigSeed::default(),
            }
        }

        fn plan(&self) -> (InstallPlan, Option<Receipt>) {
            let l = self.layout();
            let prior = Receipt::load(l).ok().flatten();
            let obs = Observed {
                paths: plan::observe_paths(l, &plan::install_paths(l, &self.inputs.version))
                    .unwrap(),
                unit: Some(self.fake.status(crate::UNIT).unwrap()),
                receipt: prior.clone(),
                users: self.fake.0.borrow().users.clone(),
                lingering: self.fake.lingering_users(),
            };
            (plan::plan_install(&self.inputs, &obs), prior)
        }

        fn apply(&self, host: &dyn Host) -> Result<InstallOutcome> {
            let (p, prior) = self.plan();
            apply_install(&p, prior, host, me().0, &mut Vec::new())
        }

        fn tree(&self) -> Tree {
            tree(self.dir.path())
        }

        fn calls(&self) -> Vec<String> {
            self.fake.0.borrow().calls.clone()
        }
    }

    /// Each file step fails in turn (the 0th, 1st, … change of the transaction): the error
    /// names the path and the tree is exactly as before, until every step has had its turn.
    #[test]
    fn a_failed_file_step_restores_the_tree() {
        for (setup, min_steps) in [(Setup::Fresh, 15), (Setup::Update, 6), (Setup::User, 12)] {
            let mut n = 0;
            loop {
                let b = Bed::new(setup);
                let before = b.tree();
                disk_fault::fail_change(Some(n));
                let r = b.apply(&b.fake);
                disk_fault::fail_change(None);
                match r {
                    Ok(_) => break,
                    Err(e) => {
                        let msg = e.to_string();
                        assert!(
                            msg.contains("injected failure"),
                            "{setup:?} step {n}: {msg}"
                        );
                        assert!(msg.starts_with("cannot "), "{setup:?} step {n}: {msg}");
                    }
                }
                assert_eq!(
                    b.tree(),
                    before,
                    "{setup:?}: step {n} failed, tree not restored"
                );
                assert!(
                    !b.calls()
                        .iter()
                        .any(|c| c.starts_with("start") || c.starts_with("restart")),
                    "{setup:?} step {n}: {:?}",
                    b.calls()
                );
                n += 1;
            }
            assert!(n >= min_steps, "{setup:?}: only {n} file steps");
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Expect {
        /// The error, and the tree as it was before.
        Restored,
        /// The error, and the fresh install kept with its receipt (to read the journal).
        Kept,
    }

    /// The host and service-manager steps: which failures roll back and which keep files.
    #[test]
    fn a_failed_host_step_restores_or_keeps_the_install() {
        use Expect::*;
        use Setup::*;
        let cases: &[(Setup, &str, u32, Expect, &str)] = &[
            (FreshNewUser, "useradd", 1, Restored, "cannot create system user outpost"),
            (FreshNoUser, "", 0, Restored, "service user outpost does not exist"),
            (FreshEnvSymlink, "", 0, Restored, "it is not a regular file"),
            (Fresh, "connect", 1, Restored, "cannot connect to the system service manager"),
            (Fresh, "daemon-reload", 1, Kept, "daemon-reload outpost.service failed"),
            (Fresh, "enable", 1, Kept, "enable outpost.service failed"),
            (Fresh, "start", 1, Kept, "start outpost.service failed"),
            (Update, "connect", 1, Restored, "cannot connect"),
            (Update, "daemon-reload", 1, Restored, "failed: job result 'failed'; the previous files were restored and the service restarted"),
            (Update, "restart", 1, Restored, "restart outpost.service failed: job result 'failed'; the previous files were restored and the service restarted"),
            (Update, "restart", 2, Restored, "the previous files were restored"),
            (Fresh, "linger", 1, Restored, "cannot enable linger for outpost (uid "),
            (FreshNewUser, "linger", 1, Restored, "cannot enable linger for outpost (uid "),
            (Fresh, "wait", 1, Restored, "the user service manager (user@"),
            (FreshNewUser, "wait", 1, Restored, "the user service manager (user@"),
            (User, "linger", 1, Restored, "not allowed to enable linger for alice"),
            (User, "wait", 1, Restored, "the user service manager (user@1000.service) did not come up"),
            (User, "start", 1, Kept, "start outpost.service failed"),
            (UserReceiptBlocked, "", 0, Restored, "cannot write install receipt"),
        ];
        for &(setup, at, times, expect, msg) in cases {
            let name = format!("{setup:?} failing {at} x{times}");
            let b = Bed::new(setup);
            let before = b.tree();
            let err = b
                .apply(&Failing::new(&b.fake, at, times))
                .expect_err(&name)
                .to_string();
            assert!(err.contains(msg), "{name}: {err}");
            let l = b.layout();
            let receipt = l.host(&l.receipt_file());
            match expect {
                Restored => assert_eq!(b.tree(), before, "{name}: tree not restored"),
                Kept => {
                    assert!(receipt.is_file(), "{name}: no receipt");
                    let r = Receipt::load(l).unwrap().unwrap();
                    assert!(r.entries.iter().any(|e| e.role == Role::Binary), "{name}");
                    assert!(l.host(&l.current_binary()).is_file(), "{name}");
                }
            }
            if times == 2 {
                assert!(!err.contains("service restarted"), "{name}: {err}");
            }
        }
    }

    /// An update that is rolled back restarts the old files; a rolled-back fresh install
    /// starts nothing.
    #[test]
    fn rolled_back_update_restarts_the_old_version() {
        let b = Bed::new(Setup::Update);
        b.apply(&Failing::new(&b.fake, "restart", 1)).unwrap_err();
        assert_eq!(
            b.calls(),
            [
                "daemon-reload",
                "restart (failed)",
                "daemon-reload",
                "restart outpost.service"
            ]
        );
        let l = b.layout();
        assert_eq!(
            std::fs::read_link(l.host(&l.current_link())).unwrap(),
            Path::new("versions/1.0.0")
        );
        assert_eq!(Receipt::load(l).unwrap().unwrap().version, "1.0.0");
    }

    /// Each typed operation undoes itself on drop and stays on commit.
    #[test]
    fn transaction_operations_undo_themselves() {
        type Op = fn(&mut Transaction, &Path) -> std::io::Result<()>;
        let ops: &[(&str, Op)] = &[
            ("create nested dirs", |tx, r| {
                tx.create_dirs(&r.join("new/a/b"), 0o750, None)
            }),
            ("create existing dir", |tx, r| {
                tx.create_dirs(&r.join("dir"), 0o750, None)
            }),
            ("write new file", |tx, r| {
                tx.write_file(&r.join("dir/new"), b"n", 0o600, None)
            }),
            ("replace file", |tx, r| {
                tx.write_file(&r.join("dir/file"), b"new", 0o600, None)
            }),
            ("new symlink", |tx, r| {
                tx.symlink(Path::new("file"), &r.join("dir/l2"))
            }),
            ("repoint symlink", |tx, r| {
                tx.symlink(Path::new("other"), &r.join("dir/link"))
            }),
        ];
        for (name, op) in ops {
            let d = tempfile::tempdir().unwrap();
            let r = d.path();
            std::fs::create_dir(r.join("dir")).unwrap();
            std::fs::write(r.join("dir/file"), b"old").unwrap();
            std::fs::set_permissions(
                r.join("dir/file"),
                std::os::unix::fs::PermissionsExt::from_mode(0o640),
            )
            .unwrap();
            std::os::unix::fs::symlink("file", r.join("dir/link")).unwrap();
            let before = tree(r);
            let mut tx = Transaction::new();
            op(&mut tx, r).unwrap();
            let changed = tree(r);
            drop(tx);
            assert_eq!(tree(r), before, "{name}: not undone");
            let mut tx = Transaction::new();
            op(&mut tx, r).unwrap();
            tx.commit();
            assert_eq!(tree(r), changed, "{name}: not kept on commit");
        }
    }

    /// What a failed service start undoes depends on what the transaction holds.
    #[test]
    fn restores_old_only_for_replaced_paths() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let mut tx = Transaction::new();
        assert!(tx.is_empty() && !tx.restores_old());
        tx.create_dirs(&r.join("a"), 0o755, None).unwrap();
        tx.write_file(&r.join("a/f"), b"1", 0o644, None).unwrap();
        tx.symlink(Path::new("f"), &r.join("a/l")).unwrap();
        assert!(!tx.is_empty() && !tx.restores_old(), "only new paths");
        tx.write_file(&r.join("a/f"), b"2", 0o644, None).unwrap();
        assert!(tx.restores_old(), "a replaced file");
        tx.rollback();
        assert!(!r.join("a").exists());
    }
}

/// The small decisions of uninstall and of the privilege split, one table each.
#[cfg(test)]
mod decision_tests {
    use super::*;

    #[test]
    fn keep_reason_table() {
        use RemoveAction::*;
        for (a, want) in [
            (Remove, None),
            (RemoveTree, None),
            (Missing, None),
            (KeepModified, Some("modified since install")),
            (KeepUserData, Some("your data (use --purge to remove)")),
            (KeepNotEmpty, Some("not empty")),
        ] {
            assert_eq!(keep_reason(a), want, "{a:?}");
        }
    }

    #[test]
    fn dir_keep_reason_table() {
        use std::io::{Error, ErrorKind};
        let cases = [
            (Error::from(ErrorKind::DirectoryNotEmpty), "not empty"),
            (Error::from_raw_os_error(39), "not empty"),
            (
                Error::from_raw_os_error(16),
                "cannot remove it: Device or resource busy (os error 16)",
            ),
            (
                Error::from_raw_os_error(30),
                "cannot remove it: Read-only file system (os error 30)",
            ),
            (
                Error::from(ErrorKind::PermissionDenied),
                "cannot remove it: permission denied",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(dir_keep_reason(&e), want, "{e:?}");
        }
    }

    #[test]
    fn untrusted_record_table() {
        // (uid, mode, regular file, untrusted)
        for (uid, mode, is_file, want) in [
            (0, 0o100600, true, false),
            (0, 0o100644, true, false),
            (0, 0o100640, true, false),
            (0, 0o100620, true, true),
            (0, 0o100602, true, true),
            (0, 0o100666, true, true),
            (1000, 0o100600, true, true),
            (0, 0o120777, false, true),
            (0, 0o040755, false, true),
        ] {
            assert_eq!(
                untrusted_record(uid, mode, is_file),
                want,
                "{uid} {mode:o} {is_file}"
            );
        }
    }

    #[test]
    fn env_file_needs_taking_back_table() {
        // (uid, gid, mode, take back)
        for (uid, gid, mode, want) in [
            (0, 0, 0o100600, false),
            (0, 0, 0o100400, false),
            (0, 0, 0o100640, true),
            (0, 0, 0o100601, true),
            (0, 999, 0o100600, true),
            (999, 0, 0o100600, true),
            (999, 999, 0o100644, true),
        ] {
            assert_eq!(
                env_file_needs_taking_back(uid, gid, mode),
                want,
                "{uid}:{gid} {mode:o}"
            );
        }
    }
}
