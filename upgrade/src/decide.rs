//! Pure decisions of the upgrader: which version, which topology, how to resolve an
//! interrupted upgrade, whether the new version is healthy. Table-tested below.
use super::record::{Record, Step};
use outpost_core::layout::Mode;
use outpost_systemd::UnitStatus;
use semver::Version;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Nothing {
        reason: String,
    },
    Upgrade(Version),
    /// Only when named with `--target`: the documented rollback command.
    Downgrade(Version),
}

/// `requested` is `--target`; `newest` the newest version on the channel.
pub fn choose_target(
    current: &Version,
    requested: Option<&Version>,
    newest: Option<&Version>,
) -> Target {
    match (requested, newest) {
        (Some(r), _) if r == current => Target::Nothing { reason: format!("{current} is already installed") },
        (Some(r), _) if r < current => Target::Downgrade(r.clone()),
        (Some(r), _) => Target::Upgrade(r.clone()),
        (None, Some(n)) if n > current => Target::Upgrade(n.clone()),
        (None, Some(n)) if n == current => Target::Nothing { reason: format!("{current} is the newest version on the channel") },
        (None, Some(n)) => Target::Nothing {
            reason: format!("{current} is newer than the channel's {n}; to go back to it run `outpost upgrade --target {n}`"),
        },
        (None, None) => Target::Nothing { reason: "the channel names no version".into() },
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// We own the unit: stop → swap → start → health gate, with rollback.
    Orchestrated,
    /// Swap the package only; the operator restarts (printed command).
    PackageOnly {
        reason: String,
    },
    Refused {
        message: String,
        hint: String,
    },
}

/// `receipt_mode`: the mode of the install receipt, if any; `unit_loaded`: systemd knows the
/// unit; `can_write`: the caller can write the versions dir.
pub fn topology(
    receipt_mode: Option<Mode>,
    unit_loaded: bool,
    euid: u32,
    can_write: bool,
    no_restart: bool,
) -> Topology {
    let sudo = matches!(receipt_mode, Some(Mode::System));
    if !can_write || (sudo && euid != 0) {
        return Topology::Refused {
            message: "this user cannot upgrade the installed outpost (its files belong to root)"
                .into(),
            hint: "run `sudo outpost upgrade`".into(),
        };
    }
    match (receipt_mode, unit_loaded, no_restart) {
        (_, _, true) => Topology::PackageOnly {
            reason: "--no-restart".into(),
        },
        (None, _, _) => Topology::PackageOnly {
            reason: "no install receipt: outpost does not manage a service here".into(),
        },
        (Some(_), false, _) => Topology::PackageOnly {
            reason: "outpost.service is not loaded in systemd".into(),
        },
        (Some(_), true, _) => Topology::Orchestrated,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// No record.
    Nothing,
    /// The upgrader is still running: leave it alone.
    InProgress { pid: u32 },
    /// Interrupted before the swap: `current` is still `from`; drop the record (and make sure
    /// the service runs).
    Abandon,
    /// Interrupted after the swap and never confirmed: point `current` back at `from`.
    Revert,
    /// Confirmed, only the bookkeeping was left: finish it.
    Finish,
    /// Package-only upgrade: nothing to check, drop the record.
    Drop,
}

/// How to resolve a record left by an upgrader (`alive`: that upgrader still runs).
pub fn resolve(record: Option<&Record>, alive: bool) -> Resolution {
    let Some(r) = record else {
        return Resolution::Nothing;
    };
    if alive {
        return Resolution::InProgress {
            pid: r.upgrader_pid,
        };
    }
    if !r.orchestrated {
        return Resolution::Drop;
    }
    match r.step {
        Step::Pending | Step::Stopping => Resolution::Abandon,
        Step::Confirmed => Resolution::Finish,
        Step::Swapping | Step::Swapped | Step::Starting | Step::HealthCheck | Step::RollingBack => {
            Resolution::Revert
        }
    }
}

/// Boot counting for a version started without its upgrader watching: after this many
/// unconfirmed starts it is reverted.
pub const MAX_UNCONFIRMED_STARTS: u32 = 3;

/// Health of the new version: `base` is the unit right after the start job finished, `now` a
/// later sample. Type=notify means `active` is only reached after READY.
pub fn health(base: &UnitStatus, now: &UnitStatus) -> Result<(), String> {
    if now.active_state != "active" {
        return Err(format!(
            "service is {} ({})",
            now.active_state, now.sub_state
        ));
    }
    if now.n_restarts > base.n_restarts {
        return Err(format!(
            "service restarted {} time(s)",
            now.n_restarts - base.n_restarts
        ));
    }
    if now.main_pid != base.main_pid {
        return Err(format!(
            "main process changed ({} → {})",
            base.main_pid, now.main_pid
        ));
    }
    if now.main_pid == 0 {
        return Err("service has no main process".into());
    }
    Ok(())
}

/// The health gate's view of the agent's heartbeat state: `Ok(true)` once a heartbeat that
/// ended at or after `since_ms` was accepted, `Err` when the hub refused it for good (revoked
/// token), `Ok(false)` while it may still come.
pub fn heartbeat_verdict(
    hb: &outpost_core::state::HeartbeatState,
    since_ms: u64,
) -> Result<bool, String> {
    if hb.at_ms < since_ms {
        return Ok(false);
    }
    match (hb.ok, hb.error.as_deref()) {
        (true, _) => Ok(true),
        (false, Some(e)) if e.contains("revoked") => {
            Err("the hub refused the heartbeat (token revoked)".into())
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn target_table() {
        let cur = v("1.1.0");
        let cases: Vec<(Option<&str>, Option<&str>, &str)> = vec![
            (Some("1.1.0"), None, "nothing"),
            (Some("1.0.0"), Some("1.2.0"), "down 1.0.0"),
            (Some("1.2.0"), Some("1.1.0"), "up 1.2.0"),
            (None, Some("1.2.0"), "up 1.2.0"),
            (None, Some("1.1.0"), "nothing"),
            (None, Some("1.0.0"), "nothing"),
            (None, None, "nothing"),
            (Some("1.2.0-rc.1"), None, "up 1.2.0-rc.1"),
            (Some("1.1.0-rc.1"), None, "down 1.1.0-rc.1"),
        ];
        for (req, newest, want) in cases {
            let r = req.map(v);
            let n = newest.map(v);
            let got = match choose_target(&cur, r.as_ref(), n.as_ref()) {
                Target::Nothing { .. } => "nothing".to_string(),
                Target::Upgrade(x) => format!("up {x}"),
                Target::Downgrade(x) => format!("down {x}"),
            };
            assert_eq!(got, want, "{req:?} {newest:?}");
        }
    }

    #[test]
    fn topology_table() {
        use Mode::*;
        let cases = [
            (Some(System), true, 0, true, false, "orch"),
            (Some(System), true, 1000, false, false, "refused"),
            (Some(System), true, 1000, true, false, "refused"),
            (Some(User), true, 1000, true, false, "orch"),
            (Some(User), true, 1000, true, true, "pkg"),
            (None, false, 0, true, false, "pkg"),
            (Some(System), false, 0, true, false, "pkg"),
            (Some(User), true, 1000, false, false, "refused"),
        ];
        for (mode, loaded, euid, write, nr, want) in cases {
            let got = match topology(mode, loaded, euid, write, nr) {
                Topology::Orchestrated => "orch",
                Topology::PackageOnly { .. } => "pkg",
                Topology::Refused { .. } => "refused",
            };
            assert_eq!(got, want, "{mode:?} {loaded} {euid} {write} {nr}");
        }
    }

    #[test]
    fn resolution_table() {
        let rec = |step, orchestrated| Record {
            from: "1.0.0".parse().unwrap(),
            to: "1.1.0".parse().unwrap(),
            step,
            started_at: String::new(),
            upgrader_pid: 4242,
            upgrader_start: 1,
            starts: 0,
            orchestrated,
        };
        let cases = [
            (Step::Pending, true, false, Resolution::Abandon),
            (Step::Stopping, true, false, Resolution::Abandon),
            (Step::Swapping, true, false, Resolution::Revert),
            (Step::Swapped, true, false, Resolution::Revert),
            (Step::Starting, true, false, Resolution::Revert),
            (Step::HealthCheck, true, false, Resolution::Revert),
            (Step::RollingBack, true, false, Resolution::Revert),
            (Step::Confirmed, true, false, Resolution::Finish),
            (Step::Swapped, false, false, Resolution::Drop),
            (
                Step::HealthCheck,
                true,
                true,
                Resolution::InProgress { pid: 4242 },
            ),
        ];
        for (step, orch, alive, want) in cases {
            assert_eq!(
                resolve(Some(&rec(step, orch)), alive),
                want,
                "{step:?} orch={orch} alive={alive}"
            );
        }
        assert_eq!(resolve(None, false), Resolution::Nothing);
    }

    #[test]
    fn health_table() {
        let st = |a: &str, pid, n| UnitStatus {
            active_state: a.into(),
            sub_state: "x".into(),
            main_pid: pid,
            n_restarts: n,
            ..Default::default()
        };
        let base = st("active", 10, 0);
        assert!(health(&base, &st("active", 10, 0)).is_ok());
        assert!(health(&base, &st("activating", 0, 0))
            .unwrap_err()
            .contains("activating"));
        assert!(health(&base, &st("active", 11, 1))
            .unwrap_err()
            .contains("restarted"));
        assert!(health(&base, &st("active", 12, 0))
            .unwrap_err()
            .contains("main process"));
        assert!(health(&base, &st("failed", 0, 0)).is_err());
    }

    #[test]
    fn heartbeat_verdict_table() {
        let hb = |at_ms, ok, error: Option<&str>| outpost_core::state::HeartbeatState {
            at: String::new(),
            at_ms,
            ok,
            error: error.map(String::from),
            interval_secs: 30,
            agent_id: None,
            hub_url: String::new(),
            clock_skew_secs: None,
            failures: 0,
        };
        // (state, since, verdict)
        let cases = [
            (hb(100, true, None), 100, Ok(true)),
            (hb(99, true, None), 100, Ok(false)),
            (hb(200, false, Some("connection refused")), 100, Ok(false)),
            (hb(200, false, Some("token revoked")), 100, Err(())),
            (hb(50, false, Some("token revoked")), 100, Ok(false)),
        ];
        for (h, since, want) in cases {
            assert_eq!(heartbeat_verdict(&h, since).map_err(|_| ()), want, "{h:?}");
        }
    }
}
