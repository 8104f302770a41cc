//! `outpost diagnose`: checks of the agent's side, each `{name, ok, detail, hint}`, and
//! [`send`] to upload the report to the hub. `outpost diagnose` adds the checks that need the
//! host's view ([`check_unit`] over the systemd seam, [`check_upgrade`], linger) to
//! [`Report::checks`] before printing or sending.
use crate::enroll::{self, Identity};
use crate::hub::{HubClient, HubError};
use outpost_core::config::Config;
use outpost_core::journal::Journal;
use outpost_systemd::ServiceManager;
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

/// Below this much free space in the state directory, the disk check fails.
pub const MIN_DISK_FREE: u64 = 100 * 1024 * 1024;
/// Below this much available memory, the memory check fails.
pub const MIN_MEM_AVAILABLE: u64 = 64 * 1024 * 1024;
/// Larger clock skew with the hub fails the clock check.
pub const MAX_SKEW_SECS: i64 = 60;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    pub hint: Option<String>,
}

impl Check {
    fn pass(name: &str, detail: String) -> Check {
        Check {
            name: name.into(),
            ok: true,
            detail,
            hint: None,
        }
    }
    fn fail(name: &str, detail: String, hint: String) -> Check {
        Check {
            name: name.into(),
            ok: false,
            detail,
            hint: Some(hint),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: String,
    pub at: String,
    pub agent_id: Option<String>,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

fn mib(b: u64) -> String {
    format!("{} MiB", b / (1024 * 1024))
}

pub fn check_disk(free: u64, state_dir: &Path) -> Check {
    let detail = format!(
        "{} free on the filesystem of {}",
        mib(free),
        state_dir.display()
    );
    if free < MIN_DISK_FREE {
        Check::fail(
            "disk_free",
            detail,
            format!(
                "free at least {} there: the journal and upgrades need room",
                mib(MIN_DISK_FREE)
            ),
        )
    } else {
        Check::pass("disk_free", detail)
    }
}

pub fn check_memory(total: u64, available: u64) -> Check {
    let detail = format!("{} available of {}", mib(available), mib(total));
    if available < MIN_MEM_AVAILABLE {
        Check::fail(
            "memory_available",
            detail,
            "the host is short of memory; look for runaway processes (`top -o RES`)".into(),
        )
    } else {
        Check::pass("memory_available", detail)
    }
}

pub fn check_skew(skew: Option<i64>) -> Check {
    match skew {
        None => Check::fail(
            "clock_skew",
            "the hub's answer had no usable Date header".into(),
            "check that the URL points at the outpost hub (a proxy may strip Date)".into(),
        ),
        Some(s) if s.abs() > MAX_SKEW_SECS => Check::fail(
            "clock_skew",
            format!(
                "this host's clock is {}s {} the hub's",
                s.abs(),
                if s > 0 { "behind" } else { "ahead of" }
            ),
            "enable time synchronisation (systemd-timesyncd or chrony) on this host".into(),
        ),
        Some(s) => Check::pass("clock_skew", format!("{s}s from the hub's clock")),
    }
}

/// The identity file must be mode 0600 and owned by the user running the agent: the owner
/// of the state directory (the service user), whoever runs this check.
pub fn check_identity_meta(path: &Path, mode: u32, uid: u32, my_uid: u32) -> Check {
    let mode = mode & 0o7777;
    let detail = format!("{} mode {mode:04o} owner uid {uid}", path.display());
    if mode != 0o600 {
        Check::fail(
            "identity_file",
            detail,
            format!("chmod 600 {} (it holds the agent token)", path.display()),
        )
    } else if uid != my_uid {
        Check::fail(
            "identity_file",
            detail,
            format!(
                "chown it to the service user (uid {my_uid}, the owner of the state directory)"
            ),
        )
    } else {
        Check::pass("identity_file", detail)
    }
}

fn check_identity(config: &Config, state_dir: &Path) -> (Check, Option<Identity>) {
    let path = enroll::identity_path(state_dir);
    let meta = match fs_err::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if config.hub.url().is_some() {
                let e = enroll::EnrollError::NoKey;
                (
                    Check::fail(
                        "identity_file",
                        format!("{} does not exist: not enrolled", path.display()),
                        e.hint(),
                    ),
                    None,
                )
            } else {
                (
                    Check::pass(
                        "identity_file",
                        "no hub configured, no identity needed".into(),
                    ),
                    None,
                )
            };
        }
        Err(e) => {
            return (
                Check::fail(
                    "identity_file",
                    format!("cannot read {}: {}", path.display(), e.kind()),
                    "run diagnostics as the service user (or with sudo)".into(),
                ),
                None,
            )
        }
    };
    // The agent runs as the state directory's owner; the check may run as root.
    let agent_uid = std::fs::metadata(state_dir)
        .map(|m| m.uid())
        .unwrap_or_else(|_| rustix::process::getuid().as_raw());
    let check = check_identity_meta(&path, meta.mode(), meta.uid(), agent_uid);
    match enroll::load_identity(state_dir) {
        Ok(id) => (check, id),
        Err(e) => (Check::fail("identity_file", e.to_string(), e.hint()), None),
    }
}

fn check_journal(state_dir: &Path) -> Check {
    match Journal::open(state_dir).verify() {
        Ok(r) => Check::pass(
            "journal",
            match r.head {
                Some((seq, _)) => format!(
                    "{} records, chain intact up to seq {seq}{}",
                    r.records,
                    if r.torn_tail {
                        " (incomplete last line, repaired on next append)"
                    } else {
                        ""
                    }
                ),
                None => "empty".into(),
            },
        ),
        Err(e) => Check::fail("journal", e.to_string(), e.hint()),
    }
}

/// How much of the end of the agent's journal the isolation check reads.
const ISOLATION_WINDOW: u64 = 16 << 20;

/// Whether runs are isolated from the agent's files: the agent's last `runs_isolation`
/// verdict (docs/RUNS.md, *Isolation from the agent*).
pub fn check_isolation(last: Option<&outpost_core::journal::Record>) -> Check {
    const NAME: &str = "run_isolation";
    let Some(r) = last else {
        return Check::pass(
            NAME,
            "not proved yet: the agent checks it when it first connects to the manager that runs actions".into(),
        );
    };
    let reason = r.data.get("reason").and_then(|v| v.as_str()).unwrap_or("");
    if r.data.get("isolated").and_then(|v| v.as_bool()) == Some(true) {
        Check::pass(
            NAME,
            format!(
                "runs are isolated from the agent's files (proved {})",
                r.time
            ),
        )
    } else {
        Check::fail(
            NAME,
            format!("runs are NOT isolated from the agent's files (a run can read its token): {reason} (at {})", r.time),
            "allow unprivileged user namespaces (sysctl user.max_user_namespaces > 0; on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0), then restart the agent".into(),
        )
    }
}

fn check_run_isolation(state_dir: &Path) -> Check {
    let recent = Journal::open(state_dir)
        .read_recent(ISOLATION_WINDOW)
        .unwrap_or_default();
    check_isolation(
        recent
            .iter()
            .rev()
            .find(|r| r.kind == outpost_core::journal::kind::RUNS_ISOLATION),
    )
}

fn check_hub(config: &Config) -> Vec<Check> {
    let Some(url) = config.hub.url() else {
        return vec![Check::pass("hub_reachable", "no hub configured".into())];
    };
    let client = match HubClient::new(url, config.release.ca_file.as_deref()) {
        Ok(c) => c,
        Err(e) => return vec![Check::fail("hub_reachable", e.to_string(), e.hint())],
    };
    let t = Instant::now();
    match client.healthz() {
        Ok((h, meta)) if h.ok => vec![
            Check::pass(
                "hub_reachable",
                format!(
                    "{url} answered in {} ms (hub {}){}",
                    t.elapsed().as_millis(),
                    h.version.as_deref().unwrap_or("version unknown"),
                    if url.starts_with("https://") {
                        ", TLS certificate valid"
                    } else {
                        ""
                    }
                ),
            ),
            check_skew(meta.skew_secs()),
        ],
        Ok((_, meta)) => vec![
            Check::fail(
                "hub_reachable",
                format!("{url}/healthz says the hub is not ok"),
                "look at the hub's own logs".into(),
            ),
            check_skew(meta.skew_secs()),
        ],
        Err(e) => vec![Check::fail("hub_reachable", e.to_string(), e.hint())],
    }
}

/// The service's unit as its manager reports it (the systemd seam): active, how often
/// systemd restarted it.
pub fn check_unit(svc: &dyn ServiceManager, unit: &str) -> Check {
    match svc.status(unit) {
        Ok(u) if u.is_active() => Check::pass(
            "unit",
            format!(
                "{unit} active ({}), {} restart(s)",
                u.sub_state, u.n_restarts
            ),
        ),
        Ok(u) => Check::fail(
            "unit",
            format!("{unit} is {} ({})", u.active_state, u.sub_state),
            "see `journalctl -u outpost -n 50`; `outpost start` starts it".into(),
        ),
        Err(e) => Check::fail("unit", e.to_string(), e.hint()),
    }
}

/// An upgrade in flight (root's upgrade record in `state_dir`, read like root reads it:
/// StrictModes from `root` down, bounded, parsed). A record that cannot be trusted or
/// parsed fails the check; none, or one in progress, passes with what it says.
pub fn check_upgrade(root: &Path, state_dir: &Path) -> Check {
    use outpost_upgrade::record::{self, LoadError};
    match record::load(root, state_dir) {
        Ok(None) => Check::pass("upgrade", "none in flight".into()),
        Ok(Some(r)) => Check::pass(
            "upgrade",
            format!(
                "{} → {} in flight since {} (step {:?})",
                r.from, r.to, r.started_at, r.step
            ),
        ),
        Err(LoadError::Untrusted(t)) => Check::fail("upgrade", t.to_string(), t.hint()),
        Err(e @ LoadError::Corrupt { .. }) => Check::fail(
            "upgrade",
            e.to_string(),
            "any `sudo outpost` command moves it aside and puts `current` back on `last-good`"
                .into(),
        ),
    }
}

/// Run every agent-side check.
pub fn run_checks(config: &Config, state_dir: &Path) -> Report {
    let mut checks = check_hub(config);
    let (id_check, identity) = check_identity(config, state_dir);
    checks.push(id_check);
    checks.push(check_disk(
        crate::facts::disk_free(state_dir).unwrap_or(0),
        state_dir,
    ));
    let mem =
        crate::facts::parse_meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
    checks.push(check_memory(mem.total, mem.available));
    checks.push(check_journal(state_dir));
    checks.push(check_run_isolation(state_dir));
    Report {
        version: outpost_release::VERSION.to_string(),
        at: outpost_core::time::now_rfc3339(),
        agent_id: identity.map(|i| i.agent_id),
        checks,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no hub is configured")]
    NoHub,
    #[error("this agent is not enrolled")]
    NotEnrolled,
    #[error(transparent)]
    Identity(#[from] enroll::EnrollError),
    #[error(transparent)]
    Hub(#[from] HubError),
}

impl SendError {
    pub fn hint(&self) -> String {
        match self {
            SendError::NoHub => "set `[hub] url` in the config".into(),
            SendError::NotEnrolled => enroll::EnrollError::NoKey.hint(),
            SendError::Identity(e) => e.hint(),
            SendError::Hub(e) => e.hint(),
        }
    }
}

/// Upload `report` with the agent's identity (`POST /api/v1/diagnostics`).
pub fn send(report: &Report, config: &Config, state_dir: &Path) -> Result<(), SendError> {
    let url = config.hub.url().ok_or(SendError::NoHub)?;
    let id = enroll::load_identity(state_dir)?.ok_or(SendError::NotEnrolled)?;
    let client = HubClient::new(url, config.release.ca_file.as_deref())?;
    let value = serde_json::to_value(report).unwrap_or_default();
    client.diagnostics(&id.token, &id.agent_id, &value)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_check_reports_the_last_verdict() {
        let j = tempfile::tempdir().unwrap();
        let journal = Journal::open(j.path());
        assert!(
            check_run_isolation(j.path()).ok,
            "nothing proved yet is no failure"
        );
        journal
            .append(
                "runs_isolation",
                serde_json::json!({"isolated": true, "reason": ""}),
            )
            .unwrap();
        let c = check_run_isolation(j.path());
        assert!(c.ok && c.detail.contains("isolated"), "{c:?}");
        journal
            .append(
                "runs_isolation",
                serde_json::json!({"isolated": false, "reason": "217/USER"}),
            )
            .unwrap();
        journal
            .append("run_started", serde_json::json!({}))
            .unwrap();
        let c = check_run_isolation(j.path());
        assert!(!c.ok && c.detail.contains("217/USER"), "{c:?}");
        assert!(c.hint.unwrap().contains("user namespaces"));
    }

    #[test]
    fn threshold_table() {
        let p = Path::new("/var/lib/outpost");
        let cases: Vec<(Check, bool)> = vec![
            (check_disk(MIN_DISK_FREE - 1, p), false),
            (check_disk(MIN_DISK_FREE, p), true),
            (check_memory(1 << 30, MIN_MEM_AVAILABLE - 1), false),
            (check_memory(1 << 30, 512 << 20), true),
            (check_skew(Some(61)), false),
            (check_skew(Some(-61)), false),
            (check_skew(Some(60)), true),
            (check_skew(Some(-3)), true),
            (check_skew(None), false),
            (check_identity_meta(p, 0o100600, 1000, 1000), true),
            (check_identity_meta(p, 0o100644, 1000, 1000), false),
            (check_identity_meta(p, 0o100600, 0, 1000), false),
        ];
        for (i, (c, ok)) in cases.into_iter().enumerate() {
            assert_eq!(c.ok, ok, "case {i}: {c:?}");
            assert_eq!(
                c.hint.is_some(),
                !ok,
                "case {i}: failing checks carry a hint"
            );
            assert!(!c.detail.contains('\n'));
        }
    }

    #[test]
    fn checks_without_hub_on_a_fresh_state_dir() {
        let d = tempfile::tempdir().unwrap();
        let r = run_checks(&Config::default(), d.path());
        let names: Vec<&str> = r.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "hub_reachable",
                "identity_file",
                "disk_free",
                "memory_available",
                "journal",
                "run_isolation"
            ]
        );
        let journal = &r.checks[4];
        assert!(journal.ok, "{journal:?}");
        std::fs::write(d.path().join(outpost_core::journal::FILE), "garbage\n").unwrap();
        let r = run_checks(&Config::default(), d.path());
        assert!(!r.checks[4].ok && r.checks[4].detail.contains("line 1"));
        assert!(!r.ok());
        assert!(matches!(
            send(&r, &Config::default(), d.path()),
            Err(SendError::NoHub)
        ));
    }

    #[test]
    fn unit_check_over_the_systemd_seam() {
        let fake = outpost_installer::testing::Fake::default();
        let c = check_unit(&fake, "outpost.service");
        assert!(!c.ok, "{c:?}");
        assert_eq!(c.detail, "outpost.service is inactive (dead)");
        assert!(c.hint.unwrap().contains("journalctl -u outpost"));
        fake.0.borrow_mut().active = true;
        let c = check_unit(&fake, "outpost.service");
        assert!(c.ok, "{c:?}");
        assert_eq!(c.detail, "outpost.service active (running), 0 restart(s)");
    }

    #[test]
    fn upgrade_check_reads_the_record_like_root() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let (root, sd) = (d.path(), d.path());
        let rec = sd.join(outpost_core::layout::files::UPGRADE_RECORD);
        let cases: &[(Option<&str>, u32, bool, &str)] = &[
            (None, 0o644, true, "none in flight"),
            (
                Some(
                    r#"{"from":"1.0.0","to":"1.1.0","step":"swapped","started_at":"2026-01-01T00:00:00Z","upgrader_pid":1,"upgrader_start":2}"#,
                ),
                0o644,
                true,
                "1.0.0 → 1.1.0 in flight since 2026-01-01T00:00:00Z (step Swapped)",
            ),
            (Some("{"), 0o644, false, "upgrade.json"),
            (Some("{}"), 0o666, false, "upgrade.json"),
        ];
        for (body, mode, ok, detail) in cases {
            let _ = std::fs::remove_file(&rec);
            if let Some(b) = body {
                std::fs::write(&rec, b).unwrap();
                std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(*mode)).unwrap();
            }
            let c = check_upgrade(root, sd);
            assert_eq!(c.ok, *ok, "{body:?}: {c:?}");
            assert!(c.detail.contains(detail), "{body:?}: {c:?}");
            assert_eq!(c.hint.is_some(), !ok, "{c:?}");
        }
    }
}
