//! The in-memory agent registry: every agent, indexed by token hash and by id.
//!
//! Heartbeats update this registry only; [`Registry::take_dirty`] hands the changed agents to
//! the writer task, which persists them in one transaction per flush interval.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use crate::packs::Catalog;
pub use outpost_proto::{
    AgentStatus as Status, AgentView, Capabilities, EnrollRequest, Enrolled, Facts, Heartbeat,
    JournalHead, LastUpgrade, MIN_NONCE,
};

/// Flag: the agent reported a journal sequence number lower than the one stored.
pub const FLAG_WENT_BACKWARDS: &str = "journal_went_backwards";
/// Flag: the agent reported the stored sequence number with another hash.
pub const FLAG_FORKED: &str = "journal_forked";

/// Agents with no heartbeat for this long are `offline` (below it and past two intervals:
/// `stale`).
pub const OFFLINE_AFTER_SECS: u64 = 120;

/// Current time in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 UTC (second precision) of unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    outpost_release::manifest::rfc3339_secs(ms.div_euclid(1000))
}

/// Everything the hub knows about one agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentState {
    pub hostname: String,
    pub machine_id: String,
    pub distro: String,
    pub arch: String,
    pub kernel: String,
    pub version: String,
    pub mode: String,
    pub group: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub enrolled_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub last_heartbeat_ms: Option<i64>,
    pub uptime_secs: Option<u64>,
    pub capabilities: Option<Capabilities>,
    pub journal_head: Option<JournalHead>,
    pub flags: Vec<String>,
    pub last_upgrade: Option<LastUpgrade>,
    /// The latest pack catalog the agent advertised; `None` before the first one. Shared, so
    /// snapshots for the writer task do not copy it.
    pub packs: Option<Arc<Catalog>>,
    /// Drained by an admin since then, by whom: no new runs are offered to it. Written
    /// through [`crate::store::Store::set_drained`], never by heartbeats.
    pub drained_at_ms: Option<i64>,
    pub drained_by: Option<String>,
}

impl AgentState {
    /// Applies a heartbeat received at `now_ms`, raising journal flags. Its catalog
    /// (`packs`) is not applied here: the handler persists a changed one first.
    pub fn apply(&mut self, hb: Heartbeat, now_ms: i64) {
        if let Some(v) = hb.version {
            self.version = v;
        }
        if let Some(v) = hb.distro {
            self.distro = v;
        }
        if let Some(v) = hb.kernel {
            self.kernel = v;
        }
        if let Some(v) = hb.arch {
            self.arch = v;
        }
        if let Some(v) = hb.mode {
            self.mode = v;
        }
        if hb.uptime_secs.is_some() {
            self.uptime_secs = hb.uptime_secs;
        }
        if hb.capabilities.is_some() {
            self.capabilities = hb.capabilities;
        }
        if hb.last_upgrade.is_some() {
            self.last_upgrade = hb.last_upgrade;
        }
        if let Some(new) = hb.journal_head {
            if let Some(old) = &self.journal_head {
                if new.seq < old.seq {
                    self.raise(FLAG_WENT_BACKWARDS);
                } else if new.seq == old.seq && new.hash != old.hash {
                    self.raise(FLAG_FORKED);
                }
            }
            self.journal_head = Some(new);
        }
        self.last_heartbeat_ms = Some(now_ms);
    }

    fn raise(&mut self, flag: &str) {
        if !self.flags.iter().any(|f| f == flag) {
            self.flags.push(flag.to_string());
        }
    }

    /// The agent's status at `now_ms` with heartbeat interval `interval_secs`. An agent that
    /// never sent a heartbeat is judged from its enrollment time.
    pub fn status(&self, now_ms: i64, interval_secs: u64) -> Status {
        if self.revoked_at_ms.is_some() {
            return Status::Revoked;
        }
        let last = self.last_heartbeat_ms.unwrap_or(self.enrolled_at_ms);
        let age_ms = u64::try_from(now_ms.saturating_sub(last)).unwrap_or(0);
        if age_ms < interval_secs.saturating_mul(2000) {
            Status::Online
        } else if age_ms < OFFLINE_AFTER_SECS * 1000 {
            Status::Stale
        } else {
            Status::Offline
        }
    }
}

/// One agent in the registry.
#[derive(Debug)]
pub struct AgentEntry {
    pub id: String,
    pub token_hash: [u8; 32],
    state: Mutex<AgentState>,
    dirty: AtomicBool,
}

impl AgentEntry {
    pub fn new(id: String, token_hash: [u8; 32], state: AgentState) -> Self {
        AgentEntry {
            id,
            token_hash,
            state: Mutex::new(state),
            dirty: AtomicBool::new(false),
        }
    }

    /// The agent's state, locked.
    pub fn lock(&self) -> MutexGuard<'_, AgentState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The API view at `now_ms`.
    pub fn view(&self, now_ms: i64, interval_secs: u64) -> AgentView {
        let st = self.lock();
        AgentView {
            id: self.id.clone(),
            hostname: st.hostname.clone(),
            status: st.status(now_ms, interval_secs),
            version: st.version.clone(),
            distro: st.distro.clone(),
            arch: st.arch.clone(),
            kernel: st.kernel.clone(),
            mode: st.mode.clone(),
            group: st.group.clone(),
            labels: st.labels.clone(),
            machine_id: st.machine_id.clone(),
            enrolled_at: rfc3339(st.enrolled_at_ms),
            revoked_at: st.revoked_at_ms.map(rfc3339),
            last_heartbeat_at: st.last_heartbeat_ms.map(rfc3339),
            last_heartbeat_age_secs: st
                .last_heartbeat_ms
                .map(|t| u64::try_from(now_ms.saturating_sub(t) / 1000).unwrap_or(0)),
            uptime_secs: st.uptime_secs,
            capabilities: st.capabilities.clone(),
            journal_head: st.journal_head.clone(),
            last_upgrade: st.last_upgrade.clone(),
            flags: st.flags.clone(),
            drained: st.drained_at_ms.is_some(),
        }
    }
}

#[derive(Default)]
struct Maps {
    by_token: HashMap<[u8; 32], Arc<AgentEntry>>,
    by_id: BTreeMap<String, Arc<AgentEntry>>,
}

/// All agents, in memory.
#[derive(Default)]
pub struct Registry {
    maps: RwLock<Maps>,
    dirty: Mutex<Vec<Arc<AgentEntry>>>,
}

impl Registry {
    fn read(&self) -> RwLockReadGuard<'_, Maps> {
        self.maps.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Maps> {
        self.maps.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds (or replaces) an agent.
    pub fn insert(&self, entry: AgentEntry) -> Arc<AgentEntry> {
        let entry = Arc::new(entry);
        let mut m = self.write();
        m.by_token.insert(entry.token_hash, entry.clone());
        m.by_id.insert(entry.id.clone(), entry.clone());
        entry
    }

    /// Removes an agent; its token stops working at once.
    pub fn remove(&self, id: &str) -> Option<Arc<AgentEntry>> {
        let mut m = self.write();
        let e = m.by_id.remove(id)?;
        m.by_token.remove(&e.token_hash);
        Some(e)
    }

    /// Gives agent `id` a new token hash: the old token stops working at once. Returns the
    /// new entry, `None` when there is no such agent.
    pub fn replace_token(&self, id: &str, token_hash: [u8; 32]) -> Option<Arc<AgentEntry>> {
        let mut m = self.write();
        let old = m.by_id.get(id)?.clone();
        let entry = Arc::new(AgentEntry::new(
            old.id.clone(),
            token_hash,
            old.lock().clone(),
        ));
        m.by_token.remove(&old.token_hash);
        m.by_token.insert(token_hash, entry.clone());
        m.by_id.insert(entry.id.clone(), entry.clone());
        Some(entry)
    }

    pub fn by_token(&self, token_hash: &[u8; 32]) -> Option<Arc<AgentEntry>> {
        self.read().by_token.get(token_hash).cloned()
    }

    pub fn by_id(&self, id: &str) -> Option<Arc<AgentEntry>> {
        self.read().by_id.get(id).cloned()
    }

    /// All agents, ordered by id.
    pub fn all(&self) -> Vec<Arc<AgentEntry>> {
        self.read().by_id.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `entry` for the writer task (once per flush).
    pub fn mark_dirty(&self, entry: &Arc<AgentEntry>) {
        if !entry.dirty.swap(true, Ordering::AcqRel) {
            self.dirty
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(entry.clone());
        }
    }

    /// Takes the queued agents and snapshots their state for persisting. A heartbeat that
    /// lands after its agent's snapshot queues the agent again.
    pub fn take_dirty(&self) -> Vec<(String, AgentState)> {
        let batch = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner));
        batch
            .into_iter()
            .map(|e| {
                e.dirty.store(false, Ordering::Release);
                let st = e.lock().clone();
                (e.id.clone(), st)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(seq: u64, hash: &str) -> Heartbeat {
        serde_json::from_value(serde_json::json!({
            "agent_id": "a", "journal_head": {"seq": seq, "hash": hash}
        }))
        .unwrap()
    }

    #[test]
    fn journal_flags() {
        let mut st = AgentState::default();
        st.apply(hb(5, "aa"), 1);
        st.apply(hb(6, "bb"), 2);
        assert!(st.flags.is_empty());
        st.apply(hb(6, "cc"), 3);
        assert_eq!(st.flags, vec![FLAG_FORKED]);
        st.apply(hb(2, "dd"), 4);
        st.apply(hb(1, "ee"), 5);
        assert_eq!(st.flags, vec![FLAG_FORKED, FLAG_WENT_BACKWARDS]);
        assert_eq!(
            st.journal_head,
            Some(JournalHead {
                seq: 1,
                hash: "ee".into()
            })
        );
    }

    #[test]
    fn status_thresholds() {
        let st = AgentState {
            last_heartbeat_ms: Some(0),
            ..Default::default()
        };
        assert_eq!(st.status(59_999, 30), Status::Online);
        assert_eq!(st.status(60_000, 30), Status::Stale);
        assert_eq!(st.status(119_999, 30), Status::Stale);
        assert_eq!(st.status(120_000, 30), Status::Offline);
        let r = AgentState {
            revoked_at_ms: Some(1),
            ..st
        };
        assert_eq!(r.status(0, 30), Status::Revoked);
    }

    #[test]
    fn replace_token_moves_the_agent() {
        let reg = Registry::default();
        reg.insert(AgentEntry::new(
            "a_1".into(),
            [1; 32],
            AgentState {
                hostname: "h".into(),
                ..Default::default()
            },
        ));
        let e = reg.replace_token("a_1", [2; 32]).unwrap();
        assert_eq!(e.lock().hostname, "h");
        assert!(reg.by_token(&[1; 32]).is_none());
        assert_eq!(reg.by_token(&[2; 32]).unwrap().id, "a_1");
        assert_eq!(reg.len(), 1);
        assert!(reg.replace_token("a_2", [3; 32]).is_none());
    }

    #[test]
    fn heartbeat_fields_are_capped() {
        let ok: Heartbeat = serde_json::from_value(serde_json::json!({
            "agent_id": "a_1", "kernel": "k".repeat(255),
            "capabilities": {"cpus": 2, "docker_version": null}
        }))
        .unwrap();
        assert!(ok.validate().is_ok());
        let long: Heartbeat = serde_json::from_value(serde_json::json!({
            "agent_id": "a_1", "kernel": "k".repeat(256)
        }))
        .unwrap();
        let e = long.validate().unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            (outpost_proto::ErrorCode::FieldTooLong, Some("kernel"))
        );
        let f = Facts {
            hostname: "h".repeat(256),
            ..Default::default()
        };
        assert_eq!(
            f.validate().unwrap_err().field.as_deref(),
            Some("facts.hostname")
        );
    }

    #[test]
    fn dirty_queue_dedups() {
        let reg = Registry::default();
        let e = reg.insert(AgentEntry::new(
            "a_1".into(),
            [1; 32],
            AgentState::default(),
        ));
        reg.mark_dirty(&e);
        reg.mark_dirty(&e);
        assert_eq!(reg.take_dirty().len(), 1);
        assert!(reg.take_dirty().is_empty());
        reg.mark_dirty(&e);
        assert_eq!(reg.take_dirty().len(), 1);
    }
}
