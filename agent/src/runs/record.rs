//! The agent's record of one run (`runs/<id>/run.json`): everything it must still deliver
//! (events, log bytes, the result) and how far the hub has acknowledged each, written
//! atomically before acting, so a restarted or upgraded agent resumes exactly where the
//! previous one stopped.
use outpost_proto::{RunEvent, RunResult};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Largest record read back.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;
/// Most undelivered events kept (older ones are dropped, oldest first).
pub const MAX_PENDING_EVENTS: usize = 256;

/// Where a run is in the agent's hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Written before the claim: if the agent stops here, it claims again with the same
    /// claimant (the hub answers 200 to a repeated claim).
    Claiming,
    /// Claimed; waits for a free slot (the action's `max_concurrency`) or the unit start.
    Claimed,
    /// Its unit was started (or the start was attempted: the unit's state says which).
    Started,
    /// Ended; the result is in `result` and is being delivered.
    Finished,
    /// The hub has the result and every byte of the log the agent sends.
    Delivered,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub pack: String,
    pub action: String,
    pub sha256: String,
    pub params: std::collections::BTreeMap<String, String>,
    pub unit: String,
    pub claimant: String,
    pub phase: Phase,
    /// The action's timeout, for the result's reason.
    pub timeout_secs: u64,
    pub log_cap: u64,
    pub max_concurrency: u32,
    /// When the agent claimed it (RFC 3339).
    pub claimed_at: String,
    #[serde(default)]
    pub started_at: Option<String>,
    /// Why the agent stopped it (an admin's cancel, the log cap).
    #[serde(default)]
    pub cancel: Option<String>,
    /// The next event's seq (the first is 1).
    pub next_seq: u64,
    /// Events not yet acknowledged.
    #[serde(default)]
    pub events: Vec<RunEvent>,
    /// Log bytes the hub acknowledged.
    pub log_sent: u64,
    #[serde(default)]
    pub result: Option<RunResult>,
    /// The hub's final state (`succeeded`, …) once the result is delivered.
    #[serde(default)]
    pub hub_state: Option<String>,
    /// A privileged action: its unit is root's (system manager), its log in root's state
    /// dir (`plan::PrivilegedHost::state_dir`).
    #[serde(default)]
    pub privileged: bool,
    /// A supervised workload's state (rounds, failures, back-off, upload place).
    #[serde(default)]
    pub supervise: Option<super::supervise::SupState>,
    /// A workload declared in the host's config: no hub knows it, nothing is delivered.
    #[serde(default)]
    pub local: bool,
}

/// What names a run when its record is made: the offer's (or a declared workload's) fields.
pub struct RunSpec<'a> {
    pub id: &'a str,
    pub pack: &'a str,
    pub action: &'a str,
    pub sha256: &'a str,
    pub params: &'a std::collections::BTreeMap<String, String>,
}

impl RunRecord {
    /// A fresh record of `claimant`'s for `spec`, in `phase`, claimed at `claimed_at`;
    /// everything else is learnt later (planning, the unit, the hub).
    pub fn new(spec: RunSpec<'_>, claimant: &str, phase: Phase, claimed_at: String) -> RunRecord {
        RunRecord {
            run_id: spec.id.to_string(),
            pack: spec.pack.to_string(),
            action: spec.action.to_string(),
            sha256: spec.sha256.to_string(),
            params: spec.params.clone(),
            unit: super::plan::unit_name(spec.id),
            claimant: claimant.to_string(),
            phase,
            timeout_secs: 0,
            log_cap: 0,
            max_concurrency: 1,
            claimed_at,
            started_at: None,
            cancel: None,
            next_seq: 1,
            events: Vec::new(),
            log_sent: 0,
            result: None,
            hub_state: None,
            privileged: false,
            supervise: None,
            local: false,
        }
    }

    /// Queue an event (seq assigned here).
    pub fn event(&mut self, kind: &str, at: String, data: outpost_proto::FlatMap) {
        let seq = self.next_seq.max(1);
        self.next_seq = seq + 1;
        self.events.push(RunEvent {
            seq,
            kind: kind.into(),
            at,
            data,
        });
        if self.events.len() > MAX_PENDING_EVENTS {
            self.events.remove(0);
        }
    }

    /// Drop the events the hub stored (`acked_seq` and below).
    pub fn acked(&mut self, acked_seq: u64) {
        self.events.retain(|e| e.seq > acked_seq);
    }

    /// Claimed, started or finished but not delivered: the hub should renew its lease.
    pub fn held(&self) -> bool {
        !matches!(self.phase, Phase::Claiming | Phase::Delivered)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot write run record {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run record {path} is unreadable: {why}")]
    Read { path: PathBuf, why: String },
}

impl outpost_core::Hint for RecordError {
    fn hint(&self) -> String {
        match self {
            RecordError::Write { .. } => {
                "check free space and that the agent's state directory is writable by it".into()
            }
            RecordError::Read { .. } => {
                "the agent skips it; `outpost runs --json` lists the runs it knows".into()
            }
        }
    }
}

/// Write `r` to `path` atomically (0600).
pub fn save(path: &Path, r: &RunRecord) -> Result<(), RecordError> {
    let err = |source| RecordError::Write {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_vec_pretty(r).map_err(|e| err(std::io::Error::other(e)))?;
    outpost_core::atomic::write_atomic(path, &text, 0o600, None).map_err(err)
}

/// Read a record (no link followed, a regular file, bounded).
pub fn load(path: &Path) -> Result<Option<RunRecord>, RecordError> {
    let read = |why: String| RecordError::Read {
        path: path.to_path_buf(),
        why,
    };
    let Some(bytes) = outpost_core::trust::read_untrusted(path, None, MAX_RECORD_BYTES)
        .map_err(|e| read(e.to_string()))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| read(e.to_string()))
}

/// Every record under `state_dir/runs`, oldest claim first; unreadable ones with their error.
pub fn all(state_dir: &Path) -> Vec<Result<RunRecord, RecordError>> {
    let dir = state_dir.join("runs");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<Result<RunRecord, RecordError>> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| load(&e.path().join("run.json")).transpose())
        .collect();
    out.sort_by(|a, b| match (a, b) {
        (Ok(a), Ok(b)) => (&a.claimed_at, &a.run_id).cmp(&(&b.claimed_at, &b.run_id)),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => std::cmp::Ordering::Equal,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample(id: &str) -> RunRecord {
        let spec = RunSpec {
            id,
            pack: "demo",
            action: "hello",
            sha256: &"0".repeat(64),
            params: &Default::default(),
        };
        RunRecord {
            timeout_secs: 60,
            log_cap: 1024,
            ..RunRecord::new(spec, "c1", Phase::Claiming, "2026-12-02T00:00:00Z".into())
        }
    }

    #[test]
    fn events_get_increasing_seqs_and_acks_drop_them() {
        let mut r = sample("r_1");
        r.event("started", "t".into(), Default::default());
        r.event("progress", "t".into(), Default::default());
        r.event("progress", "t".into(), Default::default());
        let seqs: Vec<u64> = r.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        r.acked(2);
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.events[0].seq, 3);
        r.acked(1); // an older ack changes nothing
        assert_eq!(r.events.len(), 1);
        for _ in 0..MAX_PENDING_EVENTS + 5 {
            r.event("progress", "t".into(), Default::default());
        }
        assert_eq!(r.events.len(), MAX_PENDING_EVENTS);
        assert_eq!(r.next_seq, 4 + MAX_PENDING_EVENTS as u64 + 5);
    }

    #[test]
    fn records_round_trip_and_list_in_claim_order() {
        let d = tempfile::tempdir().unwrap();
        for (id, at) in [
            ("r_b", "2026-12-02T00:00:02Z"),
            ("r_a", "2026-12-02T00:00:01Z"),
        ] {
            let mut r = sample(id);
            r.claimed_at = at.into();
            let dir = d.path().join("runs").join(id);
            std::fs::create_dir_all(&dir).unwrap();
            save(&dir.join("run.json"), &r).unwrap();
            assert_eq!(load(&dir.join("run.json")).unwrap(), Some(r));
        }
        std::fs::create_dir_all(d.path().join("runs/r_bad")).unwrap();
        std::fs::write(d.path().join("runs/r_bad/run.json"), "{").unwrap();
        let all = all(d.path());
        let ids: Vec<String> = all
            .iter()
            .map(|r| match r {
                Ok(r) => r.run_id.clone(),
                Err(e) => format!("err: {e}"),
            })
            .collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(&ids[..2], ["r_a", "r_b"]);
        assert!(ids[2].contains("unreadable"), "{ids:?}");
        // A link is not followed.
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link.json")).unwrap();
        assert!(load(&d.path().join("link.json")).is_err());
        assert_eq!(load(&d.path().join("none.json")).unwrap(), None);
    }
}
