//! `outpost upgrade`: stage → smoke → record → stop → swap → start → health gate, with
//! automatic rollback, and crash-safe resolution of an interrupted upgrade.
//!
//! Downloading, verifying, unpacking and the smoke test all happen before the service is
//! touched, so the downtime is only stop + swap + start + READY.
pub mod decide;
pub mod record;
pub mod stage;

use crate::apply::Host;
use crate::error::{Error, Result};
use crate::fsx;
use crate::layout::{Layout, Mode};
use crate::receipt::Receipt;
use crate::svc::{ServiceManager, UnitStatus};
use decide::{Resolution, Target, Topology};
use outpost_agent::journal::Journal;
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
    pub mode: Option<Mode>,
    pub target: Option<Version>,
    pub channel: Option<String>,
    pub no_restart: bool,
    pub dry_run: bool,
    pub json: bool,
    pub root: PathBuf,
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
    let untrusted = |e: outpost_agent::trust::TrustError| Error::failed(e.to_string(), e.hint());
    if let Some(dir) = host.parent() {
        outpost_agent::trust::check_trusted(&layout.root, dir, euid).map_err(untrusted)?;
    }
    let meta = match std::fs::symlink_metadata(&host) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", &host, e)),
    };
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(untrusted(outpost_agent::trust::TrustError::Unsafe {
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
        .env_remove(outpost_agent::env::CONFIG)
        .env_remove(outpost_agent::env::STATE_DIR);
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
    let unit = crate::UNIT;
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
    let Ok(Some(bytes)) = outpost_agent::trust::read_untrusted(&p, owner, MAX_HEARTBEAT_BYTES)
    else {
        return Ok(false);
    };
    let Ok(hb) = serde_json::from_slice::<outpost_agent::run::HeartbeatState>(&bytes) else {
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
    use crate::receipt::{Entry, Kind, Role};
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

/// Run `outpost upgrade`.
pub fn run(
    args: &UpgradeArgs,
    probe: &dyn crate::detect::Probe,
    host: &dyn Host,
    stager: &dyn Stager,
    out: &mut dyn Write,
) -> Result<i32> {
    let euid = probe.euid();
    let (layout, receipt) = crate::uninstall::find_install(probe, &args.root, args.mode)?;
    let receipt: Option<Receipt> = receipt.filter(|r| r.uninstalled_at.is_none());
    let current = current_version(&layout)?.ok_or_else(|| {
        Error::failed(
            format!(
                "outpost is not installed here ({} has no `current` link)",
                layout.base.display()
            ),
            "install it first: `sudo outpost install` or the install.sh one-liner",
        )
    })?;
    let config =
        outpost_agent::Config::load_trusted(&layout.root, &layout.host(&layout.config_file))?;
    let versions_dir = layout.host(&layout.versions_dir());
    let can_write = rustix::fs::access(&versions_dir, rustix::fs::Access::WRITE_OK).is_ok();
    let scope = crate::uninstall::scope(&layout, euid);
    let svc = host.service_manager(scope).ok();
    let unit_loaded = match &svc {
        Some(s) => s.status(crate::UNIT)?.is_loaded(),
        None => false,
    };
    let topo = decide::topology(
        receipt.as_ref().map(|r| r.mode),
        unit_loaded,
        euid,
        can_write,
        args.no_restart,
    );
    if let Topology::Refused { message, hint } = &topo {
        return Err(Error::usage(message.clone(), hint.clone()));
    }
    if let Some(r) = load_record(&layout)? {
        if record::upgrader_alive(&r) {
            return Err(Error::failed(
                format!(
                    "an upgrade from {} to {} is already running (pid {})",
                    r.from, r.to, r.upgrader_pid
                ),
                "wait for it to finish; `outpost events --follow` shows its progress",
            ));
        }
    }
    let channel = args
        .channel
        .clone()
        .unwrap_or_else(|| config.release.channel.clone());
    let newest = match &args.target {
        Some(_) => None,
        None => stager.newest(&channel)?,
    };
    let target = match decide::choose_target(&current, args.target.as_ref(), newest.as_ref()) {
        Target::Nothing { reason } => {
            writeln!(out, "nothing to do: {reason}").ok();
            return Ok(outpost_agent::exit::OK);
        }
        Target::Upgrade(v) | Target::Downgrade(v) => v,
    };
    let orchestrated = matches!(topo, Topology::Orchestrated);
    let how = match &topo {
        Topology::Orchestrated => {
            "stop → swap → start → health gate, rollback on failure".to_string()
        }
        Topology::PackageOnly { reason } => format!("package only ({reason})"),
        Topology::Refused { .. } => unreachable!("refused above"),
    };
    if args.dry_run {
        if args.json {
            writeln!(out, "{}", json!({"from": current.to_string(), "to": target.to_string(), "orchestrated": orchestrated, "how": how})).ok();
        } else {
            writeln!(
                out,
                "would upgrade outpost from {current} to {target} ({} mode; {how})",
                layout.mode
            )
            .ok();
        }
        return Ok(outpost_agent::exit::OK);
    }
    let to = target.clone();
    let from = current.clone();
    let mut t = Timings::default();
    let abort = |t: &mut Timings, reason: String, hint: String, out: &mut dyn Write| -> Error {
        event(
            &layout,
            "upgrade_aborted",
            json!({"from": from, "to": to, "reason": reason, "timings": t.json()}),
            out,
        );
        Error::failed(
            format!("upgrade to {to} aborted: {reason}; the service was not touched"),
            hint,
        )
    };

    // 1. download, verify, unpack — the service is untouched
    t.begin("fetch");
    writeln!(out, "fetching and verifying outpost {to}").ok();
    let vdir = match stager.stage(&target, &versions_dir) {
        Ok(d) => d,
        Err(e) => {
            let hint = e.hint();
            return Err(abort(&mut t, e.to_string(), hint, out));
        }
    };
    // 2. pre-swap smoke test with the live config
    t.begin("smoke");
    let service_ids = receipt
        .as_ref()
        .and_then(|r| host.user_ids(&r.service_user));
    if let Err(e) = smoke(&layout, &vdir, service_ids) {
        return Err(abort(&mut t, e, "the new version cannot run with this host's config; fix the config or pick another version".into(), out));
    }
    if !orchestrated {
        t.begin("swap");
        swap_current(&layout, &to)?;
        let data = json!({"from": from, "to": to, "reason": how, "timings": t.json()});
        event(&layout, "package_upgraded", data, out);
        sync_receipt(&layout)?;
        let restart = match layout.mode {
            Mode::System => "sudo systemctl restart outpost.service",
            Mode::User => "systemctl --user restart outpost.service",
        };
        writeln!(out, "upgraded the package from {from} to {to}; the running service was not restarted ({how})").ok();
        writeln!(out, "next: `{restart}` to run {to}").ok();
        return Ok(outpost_agent::exit::OK);
    }
    // Invariant: Orchestrated implies the service manager connected (unit_loaded was read through it).
    let svc = svc.expect("orchestrated upgrade has a service manager");
    let me = std::process::id();
    let mut rec = Record {
        from: from.clone(),
        to: to.clone(),
        step: Step::Pending,
        started_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        upgrader_pid: me,
        upgrader_start: record::process_start(me).unwrap_or(0),
        starts: 0,
        orchestrated: true,
    };
    let step = |rec: &mut Record, s: Step| -> Result<()> {
        rec.step = s;
        save_record(&layout, rec)?;
        // Test builds only: stop here so the suite can kill us at exactly this step.
        crate::fault::pause_at(&layout, s);
        Ok(())
    };
    // 3. record pending
    step(&mut rec, Step::Pending)?;
    // From here on the upgrade must not depend on this process staying alive: a guard in its
    // own transient unit (started once the record exists) resolves the record as soon as this
    // process is gone (Ctrl-C, SSH drop, OOM kill, panic), so the service is never left
    // stopped or running a version nobody confirmed.
    if let Err(e) = start_guard(svc.as_ref(), &layout) {
        record::clear(&layout.host(&layout.state_dir)).ok();
        return Err(abort(
            &mut t,
            format!("cannot start the upgrade guard unit {GUARD_UNIT}: {e}"),
            "the upgrade needs it to finish or revert if this command is interrupted; check `systemctl status` for the manager's state".into(),
            out,
        ));
    }
    // Bounded by Config::parse (MAX_SOAK_SECS), so the start timeout below cannot overflow.
    let soak = Duration::from_secs(
        config
            .upgrade
            .soak_secs
            .min(outpost_agent::config::MAX_SOAK_SECS),
    );
    let hub = config.hub.url.is_some();
    // 4. stop
    t.begin("stop");
    step(&mut rec, Step::Stopping)?;
    let down_since = Instant::now();
    let mut downtime_ms: u128 = 0;
    let attempt = (|| -> std::result::Result<UnitStatus, String> {
        svc.stop(crate::UNIT).map_err(|e| e.to_string())?;
        // 5. swap
        t.begin("swap");
        step(&mut rec, Step::Swapping).map_err(|e| e.to_string())?;
        swap_current(&layout, &to).map_err(|e| e.to_string())?;
        step(&mut rec, Step::Swapped).map_err(|e| e.to_string())?;
        // 6. start
        t.begin("start");
        step(&mut rec, Step::Starting).map_err(|e| e.to_string())?;
        let since = std::time::SystemTime::now();
        svc.reset_failed(crate::UNIT).map_err(|e| e.to_string())?;
        // Type=notify: the start job ends at READY; a version that never sends it fails here.
        svc.start_within(crate::UNIT, soak + Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        downtime_ms = down_since.elapsed().as_millis();
        // 7. health gate
        t.begin("health");
        step(&mut rec, Step::HealthCheck).map_err(|e| e.to_string())?;
        health_gate(svc.as_ref(), &layout, soak, hub, since)
    })();
    match attempt {
        Ok(_) => {
            step(&mut rec, Step::Confirmed)?;
            set_last_good(&layout, &to)?;
            let removed = prune(
                &layout,
                config.upgrade.keep_versions.max(1),
                &[&to.to_string(), &from.to_string()],
            );
            let data = json!({"from": from, "to": to, "downtime_ms": downtime_ms, "timings": t.json(), "removed_versions": removed});
            event(&layout, "service_upgraded", data, out);
            record::clear(&layout.host(&layout.state_dir)).map_err(|e| {
                Error::io("clear", &record::path(&layout.host(&layout.state_dir)), e)
            })?;
            sync_receipt(&layout)?;
            writeln!(
                out,
                "upgraded outpost from {from} to {to}: service healthy for {}s",
                soak.as_secs()
            )
            .ok();
            Ok(outpost_agent::exit::OK)
        }
        Err(reason) => {
            writeln!(
                out,
                "the new version {to} is not healthy: {reason}; rolling back to {from}"
            )
            .ok();
            t.begin("rollback");
            rec.step = Step::RollingBack;
            save_record(&layout, &rec)?;
            let failed_at = Instant::now();
            let mut restored_ms: u128 = 0;
            let back = (|| -> std::result::Result<(), String> {
                let _ = svc.stop(crate::UNIT);
                swap_current(&layout, &from).map_err(|e| e.to_string())?;
                svc.reset_failed(crate::UNIT).map_err(|e| e.to_string())?;
                svc.start(crate::UNIT).map_err(|e| e.to_string())?;
                restored_ms = failed_at.elapsed().as_millis();
                health_gate(
                    svc.as_ref(),
                    &layout,
                    Duration::from_secs(1).min(soak),
                    false,
                    std::time::SystemTime::now(),
                )
                .map(|_| ())
            })();
            match back {
                Ok(()) => {
                    // restored_ms: health failure → old version active and READY again.
                    let data = json!({"from": from, "to": to, "reason": reason, "restored_ms": restored_ms, "timings": t.json()});
                    event(&layout, "service_upgrade_rolled_back", data, out);
                    record::clear(&layout.host(&layout.state_dir)).ok();
                    sync_receipt(&layout)?;
                    Err(Error::failed(
                        format!("upgrade to {to} failed ({reason}); rolled back, {from} is running again"),
                        format!("see `journalctl {}-u outpost -n 50` for why {to} failed", if layout.mode == Mode::User { "--user " } else { "" }),
                    ))
                }
                Err(e2) => {
                    let data = json!({"from": from, "to": to, "reason": reason, "rollback_error": e2, "timings": t.json()});
                    event(&layout, "service_upgrade_rollback_failed", data, out);
                    let sudo = if layout.mode == Mode::System {
                        "sudo "
                    } else {
                        ""
                    };
                    let user = if layout.mode == Mode::User {
                        "--user "
                    } else {
                        ""
                    };
                    writeln!(out, "ROLLBACK FAILED: {e2}").ok();
                    writeln!(out, "recover by hand:").ok();
                    writeln!(
                        out,
                        "  {sudo}ln -sfn versions/{from} {}",
                        layout.current_link().display()
                    )
                    .ok();
                    writeln!(out, "  {sudo}systemctl {user}reset-failed outpost.service").ok();
                    writeln!(out, "  {sudo}systemctl {user}start outpost.service").ok();
                    writeln!(out, "  journalctl {user}-u outpost -n 100").ok();
                    Err(Error::Usage {
                        message: format!("upgrade to {to} failed ({reason}) and the rollback to {from} failed too ({e2})"),
                        hint: "the host has no working agent: run the commands printed above".into(),
                    })
                }
            }
        }
    }
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
    let rec = match record::load(&layout.root, &sd) {
        Ok(r) => r,
        Err(record::LoadError::Untrusted(t)) => return Err(Error::failed(t.to_string(), t.hint())),
        Err(e @ record::LoadError::Corrupt { .. }) => {
            return resolve_corrupt(layout, host, euid, ctx, &e.to_string(), out)
        }
    };
    let Some(mut rec) = rec else {
        return Ok(Resolution::Nothing);
    };
    let alive = record::upgrader_alive(&rec);
    let res = decide::resolve(Some(&rec), alive);
    match &res {
        Resolution::Nothing => {}
        Resolution::InProgress { .. } => {
            if ctx == ResolveContext::ServiceStart && rec.step >= Step::Swapped {
                // Boot counting: the upgrader is alive but the new version keeps being restarted.
                rec.starts += 1;
                if rec.starts > decide::MAX_UNCONFIRMED_STARTS {
                    swap_current(layout, &rec.from)?;
                    event(
                        layout,
                        "service_upgrade_rolled_back",
                        json!({"from": rec.from, "to": rec.to, "reason": format!("{} unconfirmed starts", rec.starts), "by": "start counter"}),
                        out,
                    );
                    rec.step = Step::RollingBack;
                }
                save_record(layout, &rec)?;
            }
        }
        Resolution::Abandon | Resolution::Drop => {
            record::clear(&sd).map_err(|e| Error::io("clear", &record::path(&sd), e))?;
            event(
                layout,
                "upgrade_aborted",
                json!({"from": rec.from, "to": rec.to, "reason": format!("upgrader interrupted at step {:?}", rec.step), "resolved_by": format!("{ctx:?}")}),
                out,
            );
        }
        Resolution::Revert => {
            swap_current(layout, &rec.from)?;
            record::clear(&sd).map_err(|e| Error::io("clear", &record::path(&sd), e))?;
            event(
                layout,
                "service_upgrade_rolled_back",
                json!({"from": rec.from, "to": rec.to, "reason": format!("upgrader interrupted at step {:?}, {} never confirmed healthy", rec.step, rec.to), "resolved_by": format!("{ctx:?}")}),
                out,
            );
            writeln!(
                out,
                "resolved an interrupted upgrade: {} was never confirmed healthy, back on {}",
                rec.to, rec.from
            )
            .ok();
        }
        Resolution::Finish => {
            set_last_good(layout, &rec.to)?;
            record::clear(&sd).map_err(|e| Error::io("clear", &record::path(&sd), e))?;
            event(
                layout,
                "service_upgraded",
                json!({"from": rec.from, "to": rec.to, "resolved_by": format!("{ctx:?}")}),
                out,
            );
        }
    }
    if matches!(res, Resolution::Revert | Resolution::Finish) {
        sync_receipt(layout)?;
    }
    if ctx == ResolveContext::Cli && matches!(res, Resolution::Revert | Resolution::Abandon) {
        bring_service_back(layout, host, euid, res == Resolution::Revert)?;
    }
    Ok(res)
}

/// Bring the service back after a resolution: it may have been stopped (or be running the
/// reverted version, `restart`).
fn bring_service_back(layout: &Layout, host: &dyn Host, euid: u32, restart: bool) -> Result<()> {
    if let Ok(svc) = host.service_manager(crate::uninstall::scope(layout, euid)) {
        let st = svc.status(crate::UNIT)?;
        if st.is_loaded() {
            svc.reset_failed(crate::UNIT)?;
            if restart || !st.is_active() {
                svc.restart(crate::UNIT)?;
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
        .join(outpost_agent::enroll::IDENTITY_FILE);
    let enrolled = matches!(
        outpost_agent::trust::read_untrusted(&identity, None, 64 << 10),
        Ok(Some(b)) if serde_json::from_slice::<serde_json::Value>(&b).is_ok_and(|v| v.get("agent_id").is_some())
    );
    if !enrolled {
        return;
    }
    let env_file = layout.host(&layout.env_file);
    if outpost_agent::trust::check_trusted(&layout.root, &env_file, 0).is_err() {
        return;
    }
    match outpost_agent::enroll::scrub_env_key(&env_file, outpost_agent::env::ENROLL_KEY) {
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
    let limit = Duration::from_secs(2 * outpost_agent::config::MAX_SOAK_SECS + 120);
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
