//! `outpost upgrade`: stage → smoke → record → stop → swap → start → health gate, with
//! automatic rollback, and crash-safe resolution of an interrupted upgrade.
//!
//! Downloading, verifying, unpacking and the smoke test all happen before the service is
//! touched, so the downtime is only stop + swap + start + READY.
pub mod decide;
pub mod fault;
mod orchestrate;
pub mod record;
pub mod stage;

pub use orchestrate::{run, Located};

use decide::Resolution;
use outpost_core::journal::Journal;
use outpost_core::layout::{Layout, Mode};
use outpost_installer::apply::Host;
use outpost_installer::error::{Error, Result};
use outpost_installer::fsx;
use outpost_installer::receipt::Receipt;
use outpost_systemd::{ServiceManager, UnitStatus};
use record::{Record, Step};
use semver::Version;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where upgrades come from: the release host (see [`stage::ReleaseStager`]).
pub trait Stager {
    /// Newest version on `channel`.
    fn newest(&self, channel: &str) -> Result<Option<Version>>;
    /// Download, verify and unpack `version` into `versions_dir/<version>`; returns that dir.
    /// Must not leave a partial version under its final name.
    fn stage(&self, version: &Version, versions_dir: &Path) -> Result<PathBuf>;
}

#[derive(Debug, Clone, Default)]
pub struct UpgradeArgs {
    pub target: Option<Version>,
    pub channel: Option<String>,
    pub no_restart: bool,
    pub dry_run: bool,
    pub json: bool,
}

/// The version `current` points at (`versions/<ver>`).
pub fn current_version(layout: &Layout) -> Result<Option<Version>> {
    link_version(layout, &layout.current_link())
}

/// The version `last-good` points at.
pub fn last_good_version(layout: &Layout) -> Result<Option<Version>> {
    link_version(layout, &layout.last_good_link())
}

/// Read `current` or `last-good`: the link and its directories must pass the StrictModes
/// checks (owned by root or the caller, not group/other-writable), and it must point at
/// exactly `versions/<semver>`.
fn link_version(layout: &Layout, link: &Path) -> Result<Option<Version>> {
    use std::os::unix::fs::MetadataExt;
    let host = layout.host(link);
    let euid = rustix::process::geteuid().as_raw();
    let untrusted = |e: outpost_core::trust::TrustError| Error::failed(e.to_string(), e.hint());
    if let Some(dir) = host.parent() {
        outpost_core::trust::check_trusted(&layout.root, dir, euid).map_err(untrusted)?;
    }
    let meta = match std::fs::symlink_metadata(&host) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", &host, e)),
    };
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(untrusted(outpost_core::trust::TrustError::Unsafe {
            path: host.clone(),
            why: format!("owned by uid {}, not root", meta.uid()),
        }));
    }
    let t = std::fs::read_link(&host).map_err(|e| Error::io("read", &host, e))?;
    let bad = || {
        Error::failed(
            format!(
                "{} points at {}, which is not versions/<version>",
                host.display(),
                t.display()
            ),
            "re-run `sudo outpost install` to repair it",
        )
    };
    let mut parts = t.components();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(std::path::Component::Normal(v)), Some(std::path::Component::Normal(name)), None)
            if v == "versions" =>
        {
            let version = Version::parse(&name.to_string_lossy()).map_err(|_| bad())?;
            Ok(Some(version))
        }
        _ => Err(bad()),
    }
}

fn swap_current(layout: &Layout, version: &Version) -> Result<()> {
    let link = layout.host(&layout.current_link());
    fsx::symlink_atomic(&Layout::version_link_target(version), &link)
        .map_err(|e| Error::io("swap", &link, e))
}

/// Per-step timings, carried by every event.
#[derive(Default)]
struct Timings(Vec<(&'static str, u128)>, Option<(&'static str, Instant)>);

impl Timings {
    fn begin(&mut self, step: &'static str) {
        self.end();
        self.1 = Some((step, Instant::now()));
    }
    fn end(&mut self) {
        if let Some((s, t)) = self.1.take() {
            self.0.push((s, t.elapsed().as_millis()));
        }
    }
    fn json(&mut self) -> serde_json::Value {
        self.end();
        let mut m = serde_json::Map::new();
        let mut total = 0;
        for (s, ms) in &self.0 {
            m.insert(format!("{s}_ms"), json!(ms));
            total += ms;
        }
        m.insert("total_ms".into(), json!(total));
        serde_json::Value::Object(m)
    }
}

fn event(layout: &Layout, kind: &str, data: serde_json::Value, out: &mut dyn Write) {
    let journal = Journal::open(&layout.host(&layout.state_dir));
    if let Err(e) = journal.append(kind, data) {
        writeln!(
            out,
            "warning: cannot write event {kind} to the journal: {e}"
        )
        .ok();
    }
}

fn owner_of(dir: &Path) -> fsx::Owner {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.uid(), m.gid()))
}

fn save_record(layout: &Layout, r: &Record) -> Result<()> {
    let sd = layout.host(&layout.state_dir);
    record::save(&sd, r, owner_of(&sd))
        .map_err(|e| Error::io("record the upgrade in", &record::path(&sd), e))
}

/// Run `versions/V/outpost self-test` with the live config, as the service user.
fn smoke(
    layout: &Layout,
    version_dir: &Path,
    service_ids: Option<(u32, u32)>,
) -> std::result::Result<String, String> {
    let bin = version_dir.join("outpost");
    // As root, run it as the service user (without root's groups) so a state dir the service
    // could not write fails here, not after the swap.
    let drop_to = service_ids.filter(|(uid, _)| *uid != 0 && rustix::process::geteuid().is_root());
    let mut cmd = match drop_to {
        Some((uid, gid)) => {
            let mut c = std::process::Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(&bin);
            c
        }
        None => std::process::Command::new(&bin),
    };
    cmd.arg("self-test")
        .arg("--config")
        .arg(layout.host(&layout.config_file))
        .arg("--state-dir")
        .arg(layout.host(&layout.agent_dir))
        .arg("--mode")
        .arg(layout.mode.as_str())
        .env_remove(outpost_core::env::CONFIG)
        .env_remove(outpost_core::env::STATE_DIR);
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{} self-test failed ({}): {text}",
            bin.display(),
            out.status
        ))
    }
}

/// Soak: the unit must stay healthy for `soak`; with a hub, the first heartbeat after
/// `since` must be accepted too.
fn health_gate(
    svc: &dyn ServiceManager,
    layout: &Layout,
    soak: Duration,
    hub: bool,
    since: std::time::SystemTime,
) -> std::result::Result<UnitStatus, String> {
    let unit = outpost_installer::UNIT;
    let base = svc.status(unit).map_err(|e| e.to_string())?;
    decide::health(&base, &base)?;
    let start = Instant::now();
    let hub_deadline = soak.max(Duration::from_secs(20));
    let mut heartbeat_ok = !hub;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = svc.status(unit).map_err(|e| e.to_string())?;
        decide::health(&base, &now)?;
        if !heartbeat_ok {
            heartbeat_ok = heartbeat_accepted_since(layout, since)?;
        }
        if start.elapsed() >= soak && heartbeat_ok {
            return Ok(now);
        }
        if start.elapsed() >= hub_deadline {
            return Err("no heartbeat accepted by the hub".into());
        }
    }
}

/// Largest heartbeat state read (the agent writes a few hundred bytes).
const MAX_HEARTBEAT_BYTES: u64 = 64 << 10;

/// The agent's heartbeat state: written by the service user, so read without following
/// links, owner-checked, bounded and schema-validated; never modified.
fn heartbeat_accepted_since(
    layout: &Layout,
    since: std::time::SystemTime,
) -> std::result::Result<bool, String> {
    use std::os::unix::fs::MetadataExt;
    let p = layout.host(&layout.heartbeat_file());
    let owner = std::fs::symlink_metadata(layout.host(&layout.agent_dir))
        .ok()
        .map(|m| m.uid());
    let Ok(Some(bytes)) = outpost_core::trust::read_untrusted(&p, owner, MAX_HEARTBEAT_BYTES)
    else {
        return Ok(false);
    };
    let Ok(hb) = serde_json::from_slice::<outpost_core::state::HeartbeatState>(&bytes) else {
        return Ok(false);
    };
    let since_ms = since
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    decide::heartbeat_verdict(&hb, since_ms)
}

/// Keep `current`, `last-good`, `from` and the newest `keep` versions; remove the rest.
fn prune(layout: &Layout, keep: usize, protect: &[&str]) -> Vec<String> {
    let dir = layout.host(&layout.versions_dir());
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return vec![];
    };
    let mut versions: Vec<Version> = rd
        .flatten()
        .filter_map(|e| Version::parse(&e.file_name().to_string_lossy()).ok())
        .collect();
    versions.sort();
    versions.reverse();
    let mut removed = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let name = v.to_string();
        if i < keep || protect.contains(&name.as_str()) {
            continue;
        }
        if fs_err::remove_dir_all(dir.join(&name)).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// `<base>/last-good` → the version last confirmed healthy; the unit's ExecStartPre resolver
/// runs from there so a broken new binary cannot break its own rollback.
pub fn set_last_good(layout: &Layout, version: &Version) -> Result<()> {
    let link = layout.host(&layout.last_good_link());
    fsx::symlink_atomic(&Layout::version_link_target(version), &link)
        .map_err(|e| Error::io("update", &link, e))
}

/// Bring the install receipt in line with `versions/`, `current` and `last-good` after an
/// upgrade, a rollback or a resolution, so `uninstall` still removes exactly what outpost
/// put there.
pub fn sync_receipt(layout: &Layout) -> Result<()> {
    use outpost_installer::receipt::{Entry, Kind, Role};
    let Some(mut r) = Receipt::load(layout)? else {
        return Ok(());
    };
    let vdir = layout.versions_dir();
    let present: Vec<String> = std::fs::read_dir(layout.host(&vdir))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| Version::parse(n).is_ok())
                .collect()
        })
        .unwrap_or_default();
    // drop versions that are gone
    r.entries.retain(|e| match e.path.strip_prefix(&vdir) {
        Ok(rest) => rest
            .components()
            .next()
            .is_some_and(|c| present.iter().any(|p| c.as_os_str() == p.as_str())),
        Err(_) => true,
    });
    for v in &present {
        let d = vdir.join(v);
        if r.entry(&d).is_none() {
            r.upsert(Entry {
                kind: Kind::Dir,
                role: Role::Dir,
                path: d.clone(),
                sha256: None,
                mode: Some(0o755),
                target: None,
            });
        }
        for entry in std::fs::read_dir(layout.host(&d))
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = d.join(entry.file_name());
            if r.entry(&p).is_none() {
                let sha = fsx::sha256_file(&layout.host(&p)).ok();
                r.upsert(Entry {
                    kind: Kind::File,
                    role: Role::Binary,
                    path: p,
                    sha256: sha,
                    mode: None,
                    target: None,
                });
            }
        }
    }
    for link in [layout.current_link(), layout.last_good_link()] {
        if let Ok(t) = std::fs::read_link(layout.host(&link)) {
            r.upsert(Entry {
                kind: Kind::Symlink,
                role: Role::Link,
                path: link,
                sha256: None,
                mode: None,
                target: Some(t),
            });
        }
    }
    if let Some(v) = current_version(layout)? {
        r.version = v.to_string();
    }
    let sd = layout.host(&layout.state_dir);
    r.save(layout, owner_of(&sd))?;
    Ok(())
}

/// Where a pending upgrade is resolved from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveContext {
    /// The unit's `ExecStartPre=` (a start job is running: only fix files, never call systemd).
    ServiceStart,
    /// Any CLI command: fix files and bring the service back to a running state.
    Cli,
}

/// Load the upgrade record. An untrusted one (wrong owner, writable by others, a link) is
/// refused and never acted on; a corrupt one is moved aside by [`resolve_pending`].
pub fn load_record(layout: &Layout) -> Result<Option<Record>> {
    let sd = layout.host(&layout.state_dir);
    record::load(&layout.root, &sd).map_err(|e| match e {
        record::LoadError::Untrusted(t) => Error::failed(t.to_string(), t.hint()),
        e @ record::LoadError::Corrupt { .. } => Error::failed(
            e.to_string(),
            "any `sudo outpost` command moves it aside and puts `current` back on `last-good`",
        ),
    })
}

/// Resolve an upgrade record left by an interrupted upgrader. Returns what was done.
pub fn resolve_pending(
    layout: &Layout,
    host: &dyn Host,
    euid: u32,
    ctx: ResolveContext,
    out: &mut dyn Write,
) -> Result<Resolution> {
    let sd = layout.host(&layout.state_dir);
    if ctx == ResolveContext::ServiceStart {
        scrub_used_key(layout, out);
    }
    // Temp files a killed writer left in root's dirs (never the agent's).
    for dir in [&layout.state_dir, &layout.base] {
        fsx::sweep_stale_temps(&layout.host(dir));
    }
    let rec = match record::load(&layout.root, &sd) {
        Ok(r) => r,
        Err(record::LoadError::Untrusted(t)) => return Err(Error::failed(t.to_string(), t.hint())),
        Err(e @ record::LoadError::Corrupt { .. }) => {
            return resolve_corrupt(layout, host, euid, ctx, &e.to_string(), out)
        }
    };
    let Some(rec) = rec else {
        return Ok(Resolution::Nothing);
    };
    let alive = record::upgrader_alive(&rec);
    let res = decide::resolve(Some(&rec), alive);
    let mut pending = Pending {
        layout,
        sd,
        rec,
        ctx,
        out,
    };
    match &res {
        Resolution::Nothing => {}
        Resolution::InProgress { .. } => pending.count_start()?,
        Resolution::Abandon | Resolution::Drop => pending.abort()?,
        Resolution::Revert => pending.revert()?,
        Resolution::Finish => pending.finish()?,
    }
    if let Some(restart) = after_resolution(&res, ctx) {
        bring_service_back(layout, host, euid, restart)?;
    }
    Ok(res)
}

/// What follows a resolution: whether (and with a restart) the service is brought back —
/// only from the CLI, never inside a start job. (The receipt is synced by the resolution
/// itself, before the record is cleared.)
fn after_resolution(res: &Resolution, ctx: ResolveContext) -> Option<bool> {
    (ctx == ResolveContext::Cli && matches!(res, Resolution::Revert | Resolution::Abandon))
        .then_some(*res == Resolution::Revert)
}

/// Boot counting applies while a live upgrader has already swapped and the unit is starting.
fn counts_start(ctx: ResolveContext, step: Step) -> bool {
    ctx == ResolveContext::ServiceStart && step >= Step::Swapped
}

/// The record of an interrupted upgrade, being resolved: one method per resolution.
struct Pending<'a> {
    layout: &'a Layout,
    /// The state dir on the host.
    sd: PathBuf,
    rec: Record,
    ctx: ResolveContext,
    out: &'a mut dyn Write,
}

impl Pending<'_> {
    fn clear(&self) -> Result<()> {
        record::clear(&self.sd).map_err(|e| Error::io("clear", &record::path(&self.sd), e))
    }

    /// The upgrader is alive but the new version keeps being restarted: count the start and
    /// roll back after too many.
    fn count_start(&mut self) -> Result<()> {
        if !counts_start(self.ctx, self.rec.step) {
            return Ok(());
        }
        let (layout, rec) = (self.layout, &mut self.rec);
        rec.starts += 1;
        if rec.starts > decide::MAX_UNCONFIRMED_STARTS {
            swap_current(layout, &rec.from)?;
            event(
                layout,
                "service_upgrade_rolled_back",
                json!({"from": rec.from, "to": rec.to, "reason": format!("{} unconfirmed starts", rec.starts), "by": "start counter"}),
                self.out,
            );
            rec.step = Step::RollingBack;
        }
        save_record(layout, rec)
    }

    fn abort(&mut self) -> Result<()> {
        self.clear()?;
        let (rec, ctx) = (&self.rec, self.ctx);
        event(
            self.layout,
            "upgrade_aborted",
            json!({"from": rec.from, "to": rec.to, "reason": format!("upgrader interrupted at step {:?}", rec.step), "resolved_by": format!("{ctx:?}")}),
            self.out,
        );
        Ok(())
    }

    // The record is the commit marker of an upgrade: every piece of bookkeeping (links,
    // receipt) is done before it is cleared, so a resolver killed half-way (the guard at a
    // reboot, a power cut) leaves the record for the next one to finish the same way.
    fn revert(&mut self) -> Result<()> {
        swap_current(self.layout, &self.rec.from)?;
        sync_receipt(self.layout)?;
        self.clear()?;
        let (rec, ctx) = (&self.rec, self.ctx);
        event(
            self.layout,
            "service_upgrade_rolled_back",
            json!({"from": rec.from, "to": rec.to, "reason": format!("upgrader interrupted at step {:?}, {} never confirmed healthy", rec.step, rec.to), "resolved_by": format!("{ctx:?}")}),
            self.out,
        );
        writeln!(
            self.out,
            "resolved an interrupted upgrade: {} was never confirmed healthy, back on {}",
            rec.to, rec.from
        )
        .ok();
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        set_last_good(self.layout, &self.rec.to)?;
        sync_receipt(self.layout)?;
        self.clear()?;
        let (rec, ctx) = (&self.rec, self.ctx);
        event(
            self.layout,
            "service_upgraded",
            json!({"from": rec.from, "to": rec.to, "resolved_by": format!("{ctx:?}")}),
            self.out,
        );
        Ok(())
    }
}

/// Bring the service back after a resolution: it may have been stopped (or be running the
/// reverted version, `restart`).
fn bring_service_back(layout: &Layout, host: &dyn Host, euid: u32, restart: bool) -> Result<()> {
    if let Ok(svc) = host.service_manager(outpost_installer::uninstall::scope(layout, euid)) {
        let st = svc.status(outpost_installer::UNIT)?;
        if st.is_loaded() {
            svc.reset_failed(outpost_installer::UNIT)?;
            if restart || !st.is_active() {
                svc.restart(outpost_installer::UNIT)?;
            }
        }
    }
    Ok(())
}

/// A record that is trusted (root's) but unreadable: move it aside and go back to the
/// version last confirmed healthy, which is always safe.
fn resolve_corrupt(
    layout: &Layout,
    host: &dyn Host,
    euid: u32,
    ctx: ResolveContext,
    why: &str,
    out: &mut dyn Write,
) -> Result<Resolution> {
    let sd = layout.host(&layout.state_dir);
    let aside =
        record::quarantine(&sd).map_err(|e| Error::io("move aside", &record::path(&sd), e))?;
    let current = current_version(layout)?;
    let good = last_good_version(layout)?;
    let revert = match (&current, &good) {
        (Some(c), Some(g)) if c != g => {
            swap_current(layout, g)?;
            true
        }
        _ => false,
    };
    writeln!(
        out,
        "warning: {why}; moved it to {}{}",
        aside.display(),
        if revert {
            format!(
                ", and put `current` back on the last version confirmed healthy ({})",
                good.as_ref().map(|g| g.to_string()).unwrap_or_default()
            )
        } else {
            String::new()
        }
    )
    .ok();
    event(
        layout,
        "upgrade_record_corrupt",
        json!({"moved_to": aside, "reverted_to": if revert { good.as_ref().map(|g| g.to_string()) } else { None }, "resolved_by": format!("{ctx:?}")}),
        out,
    );
    if revert {
        sync_receipt(layout)?;
    }
    if ctx == ResolveContext::Cli {
        bring_service_back(layout, host, euid, revert)?;
    }
    Ok(if revert {
        Resolution::Revert
    } else {
        Resolution::Drop
    })
}

/// System mode: the secrets file is root's (the agent cannot rewrite it), so once the agent
/// holds a token the root resolver removes the used single-use key from it. What the agent
/// wrote (its identity file) only decides whether root deletes a line from root's own file.
fn scrub_used_key(layout: &Layout, out: &mut dyn Write) {
    if layout.mode != Mode::System || !rustix::process::geteuid().is_root() {
        return;
    }
    let identity = layout
        .host(&layout.agent_dir)
        .join(outpost_core::layout::files::IDENTITY);
    let enrolled = matches!(
        outpost_core::trust::read_untrusted(&identity, None, 64 << 10),
        Ok(Some(b)) if serde_json::from_slice::<serde_json::Value>(&b).is_ok_and(|v| v.get("agent_id").is_some())
    );
    if !enrolled {
        return;
    }
    let env_file = layout.host(&layout.env_file);
    if outpost_core::trust::check_trusted(&layout.root, &env_file, 0).is_err() {
        return;
    }
    match outpost_core::kv::scrub_env_key(&env_file, outpost_core::env::ENROLL_KEY) {
        Ok(true) => {
            writeln!(
                out,
                "removed the used enrollment key from {}",
                env_file.display()
            )
            .ok();
        }
        Ok(false) => {}
        Err(e) => {
            writeln!(out, "warning: {e}").ok();
        }
    }
}

/// Name of the transient unit that finishes or reverts an upgrade whose upgrader died.
pub const GUARD_UNIT: &str = "outpost-upgrade-guard.service";

/// Start [`GUARD_UNIT`]: `last-good/outpost upgrade --guard --<mode>` in its own unit, outside
/// the upgrader's session, so no signal to the upgrader reaches it.
fn start_guard(svc: &dyn ServiceManager, layout: &Layout) -> std::result::Result<(), String> {
    let bin = layout.host(&layout.resolver_binary());
    let mut argv = vec![
        bin.to_string_lossy().into_owned(),
        "upgrade".into(),
        "--guard".into(),
        format!("--{}", layout.mode.as_str()),
    ];
    if layout.root != Path::new("/") {
        argv.extend(["--root".into(), layout.root.to_string_lossy().into_owned()]);
    }
    svc.start_transient(GUARD_UNIT, "outpost upgrade guard", &argv)
        .map_err(|e| e.to_string())
}

/// `outpost upgrade --guard`: wait while the upgrader recorded in `upgrade.json` runs; when
/// it is gone with the record still there, resolve it (CLI context: revert or finish, and
/// bring the service back). Exits when there is no record.
pub fn guard(
    layout: &Layout,
    host: &dyn Host,
    euid: u32,
    out: &mut dyn Write,
) -> Result<Resolution> {
    // Longest an upgrade can legitimately take after the stop: start timeout + soak + gate.
    let limit = Duration::from_secs(2 * outpost_core::config::MAX_SOAK_SECS + 120);
    let started = Instant::now();
    loop {
        let Some(rec) = load_record(layout)? else {
            return Ok(Resolution::Nothing);
        };
        if !record::upgrader_alive(&rec) {
            return resolve_pending(layout, host, euid, ResolveContext::Cli, out);
        }
        if started.elapsed() > limit {
            writeln!(
                out,
                "upgrade guard: the upgrader (pid {}) still runs after {}s; leaving it",
                rec.upgrader_pid,
                limit.as_secs()
            )
            .ok();
            return Ok(Resolution::InProgress {
                pid: rec.upgrader_pid,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
