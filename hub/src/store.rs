//! Storage behind one trait: handlers hold an `Arc<dyn Store>` and never see a database
//! driver. [`SqliteStore`] (WAL, versioned migrations) is the one backend today; the
//! conformance suite in `store/tests.rs` states the contract any other backend must meet.
//!
//! # Why the methods return boxed futures
//!
//! A PostgreSQL backend will come with an async driver (tokio-postgres): its operations are
//! futures on the hub's runtime, and a synchronous trait would make it block a thread per
//! call on its own runtime handle. A blocking backend adapts the other way at no cost to
//! callers: [`SqliteStore`] runs each statement on tokio's blocking pool
//! (`spawn_blocking`) inside the future it returns. So every method returns a
//! [`StoreFuture`], a boxed `Send` future (the trait stays object safe without an extra
//! crate), and handlers just `.await` it.
//!
//! # The contract, briefly
//!
//! * Identities, tokens, keys, revocations, deletions and diagnostics are durable when the
//!   future resolves `Ok`; heartbeat state is written in batches by the writer task
//!   ([`Store::flush_heartbeats`]).
//! * Each method is atomic, also when its future is dropped before it resolves (a client
//!   that disconnects cancels its handler): the operation happened entirely or not at all.
//! * "No such agent" is `Ok(false)` / `Ok(None)`, never an error; [`StoreError`] means the
//!   backend itself failed.
//! * Times are unix milliseconds; token, key and nonce hashes are sha256 lowercase hex.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use crate::state::{AgentState, Catalog, Facts};
use outpost_proto::{ActionAdvert, PackTrust, RunEvent, RunResult, RunState};

mod sqlite;
pub use sqlite::{SqliteStore, SCHEMA_VERSION};

#[cfg(test)]
pub(crate) mod tests;

/// What every [`Store`] method returns: a boxed `Send` future borrowing the store and the
/// arguments.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The hub's persistent state: agents, enrollment keys, diagnostics reports.
///
/// Async-friendly so that a backend with an async driver fits as well as a blocking one;
/// see the module documentation for why and for the contract. `store/tests.rs` has the
/// conformance suite every implementation must pass.
pub trait Store: Send + Sync {
    /// The schema version recorded in the store (1 or more once opened).
    fn schema_version(&self) -> StoreFuture<'_, i64>;

    /// Every agent, revoked ones included, in no particular order.
    fn load_agents(&self) -> StoreFuture<'_, Vec<StoredAgent>>;

    /// Stores a new, unused enrollment key with its `audit` entry, in one transaction; an
    /// existing id or hash is an error (and nothing is written).
    fn insert_key<'a>(&'a self, key: &'a KeyRow, audit: AuditRow) -> StoreFuture<'a, ()>;

    /// Enrolls an agent with the key whose hash is `e.key_hash`, atomically: marks the key
    /// used (only if still unused, recording `e.nonce_hash`) and inserts the agent with the
    /// key's group and labels. Exactly one of many concurrent callers with the same key
    /// creates an agent; a later caller with the same nonce hash, before the key expires,
    /// gets [`Enrolled::Retry`] and nothing changes (the caller decides whether to honour
    /// it); any other gets [`KeyRefusal::Used`]. [`judge_key`] is the rule.
    fn enroll<'a>(&'a self, e: NewAgent<'a>) -> StoreFuture<'a, Result<Enrolled, KeyRefusal>>;

    /// Replaces agent `id`'s token hash; false when there is no such agent.
    fn set_token<'a>(&'a self, id: &'a str, token_hash: &'a str) -> StoreFuture<'a, bool>;

    /// Marks agent `id` revoked at `audit.at_ms` (a second revocation keeps the first
    /// time) and writes `audit`, in one transaction; false (and no entry) when there is no
    /// such agent.
    fn revoke<'a>(&'a self, id: &'a str, audit: AuditRow) -> StoreFuture<'a, bool>;

    /// Deletes agent `id` and its diagnostics and writes `audit`, in one transaction; false
    /// (and no entry) when there is no such agent.
    fn delete<'a>(&'a self, id: &'a str, audit: AuditRow) -> StoreFuture<'a, bool>;

    /// Replaces agent `id`'s diagnostics report (JSON text) received at `now_ms`; false
    /// when there is no such agent.
    fn store_diagnostics<'a>(
        &'a self,
        id: &'a str,
        report: &'a str,
        now_ms: i64,
    ) -> StoreFuture<'a, bool>;

    /// Agent `id`'s latest diagnostics report; `None` before the first one or when there is
    /// no such agent.
    fn diagnostics<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<StoredDiagnostics>>;

    /// Persists a batch of heartbeat snapshots in one transaction: the facts a heartbeat
    /// carries (distro, arch, kernel, version, mode, uptime, capabilities, journal head,
    /// last upgrade), the heartbeat time and the flags. It never changes an agent's token,
    /// hostname, machine id, group, labels, enrollment or revocation (a snapshot taken
    /// before a revocation cannot undo it). Agents deleted since the snapshot are skipped.
    fn flush_heartbeats(&self, batch: Vec<(String, AgentState)>) -> StoreFuture<'_, ()>;

    /// Replaces agent `id`'s catalog (loaded back as [`AgentState::packs`]) and, in the same
    /// transaction, records every (name, sha256) of it not seen before as pending, first seen
    /// by `id` at `now_ms`; records already there are left alone. False (and nothing
    /// recorded) when there is no such agent. The hub calls it only when the catalog's hash
    /// changed, so it is rare; [`Store::flush_heartbeats`] never touches the catalog.
    fn store_catalog<'a>(
        &'a self,
        id: &'a str,
        catalog: Arc<Catalog>,
        now_ms: i64,
    ) -> StoreFuture<'a, bool>;

    /// Every trust record, ordered by name, then first sighting, then sha256.
    fn packs(&self) -> StoreFuture<'_, Vec<PackRow>>;

    /// Marks (name, sha256) trusted by `audit.who` at `audit.at_ms` and returns the record,
    /// writing `audit` (its detail replaced by [`trust_outcome`]) in the same transaction;
    /// trusting a trusted record again keeps the first time and who (and is audited again). Other hashes of the name are not touched
    /// (several may be trusted). `None` (and no entry) when the pair was never seen.
    fn trust_pack<'a>(
        &'a self,
        name: &'a str,
        sha256: &'a str,
        audit: AuditRow,
    ) -> StoreFuture<'a, Option<PackRow>>;

    // Runs (docs/PROTOCOL.md, Runs). Every transition is decided by `crate::runs::step`
    // inside the backend's transaction; `now_ms` is the caller's clock (the sweeper's and
    // the tests' too), so time is injected, never read by the store.

    /// Inserts `new.runs` (all queued) in one transaction. With an idempotency key already
    /// used for the same request hash: the runs created then ([`RunsCreated::Existing`]),
    /// nothing inserted; for another request hash: [`RunsCreated::KeyConflict`]. When one
    /// agent would have more than `new.max_queued` queued runs: nothing inserted,
    /// [`RunsCreated::QueueFull`] naming it.
    fn create_runs(&self, new: NewRuns) -> StoreFuture<'_, RunsCreated>;

    /// Run `id`; `None` when there is none.
    fn run<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<RunRow>>;

    /// Runs matching `filter`, newest first (then by id), at most `filter.limit`.
    fn runs<'a>(&'a self, filter: &'a RunFilter) -> StoreFuture<'a, Vec<RunRow>>;

    /// An agent's poll, atomically: renews the lease of each run of `holding` that is this
    /// agent's and held (an `unknown` one becomes `running`), then returns the agent's
    /// queued runs (oldest first) as far as [`crate::runs::offer_count`] allows (none while
    /// dispatch is stopped or the agent drained, at most `max_in_flight` minus the runs it
    /// holds) and its held runs with `cancel_requested`.
    fn poll_runs<'a>(
        &'a self,
        agent_id: &'a str,
        holding: &'a [String],
        lease: Lease,
        max_in_flight: usize,
    ) -> StoreFuture<'a, Polled>;

    /// Claims run `id` (of `agent_id`) for `claimant`: the first claimant of a queued run
    /// wins (the run is `claimed`, leased) unless [`crate::runs::gate`] refuses (dispatch
    /// stopped, agent drained, `max_in_flight` held), the same claimant again gets the run
    /// again, any other [`RunRefusal::Taken`].
    fn claim_run<'a>(
        &'a self,
        id: &'a str,
        agent_id: &'a str,
        claimant: &'a str,
        lease: Lease,
        max_in_flight: usize,
    ) -> StoreFuture<'a, Result<RunRow, RunRefusal>>;

    /// Stores `events` keyed by (id, seq): a seq already stored is left as it was. A
    /// `started` event makes a claimed (or unknown) run `running`, and gives a run without
    /// a start time one even when its result came first; the lease is renewed.
    /// Returns the highest seq stored.
    fn run_events<'a>(
        &'a self,
        id: &'a str,
        agent_id: &'a str,
        events: Vec<RunEvent>,
        lease: Lease,
    ) -> StoreFuture<'a, Result<u64, RunRefusal>>;

    /// The newest `limit` events of run `id` (by seq), oldest first.
    fn recent_events<'a>(&'a self, id: &'a str, limit: usize) -> StoreFuture<'a, Vec<RunEvent>>;

    /// Appends log bytes uploaded at `offset` (the overlap with what is stored is trimmed);
    /// [`RunRefusal::Gap`] past the end, [`RunRefusal::TooLarge`] past `cap` bytes. Returns
    /// the new log size.
    fn append_log<'a>(
        &'a self,
        id: &'a str,
        agent_id: &'a str,
        offset: u64,
        data: Vec<u8>,
        cap: u64,
        lease: Lease,
    ) -> StoreFuture<'a, Result<u64, RunRefusal>>;

    /// At most `max` log bytes of run `id` from `offset`, and the log's size; `None` when
    /// there is no such run.
    fn read_log<'a>(
        &'a self,
        id: &'a str,
        offset: u64,
        max: usize,
    ) -> StoreFuture<'a, Option<(Vec<u8>, u64)>>;

    /// Stores the result of run `id`: the first one wins (its outcome is the state; after
    /// `lost` it is stored with `late`), the same one again returns the run with `true`,
    /// a different one is [`RunRefusal::Conflict`].
    fn finish_run<'a>(
        &'a self,
        id: &'a str,
        agent_id: &'a str,
        result: RunResult,
        now_ms: i64,
    ) -> StoreFuture<'a, Result<(RunRow, bool), RunRefusal>>;

    /// An admin's cancel at `audit.at_ms`: a queued run is `canceled` at once, a held one
    /// gets `cancel_requested`, a final one is unchanged. `audit` is written in the same
    /// transaction, its detail replaced by [`cancel_outcome`]. `None` (and no entry) when
    /// there is no such run.
    fn cancel_run<'a>(&'a self, id: &'a str, audit: AuditRow) -> StoreFuture<'a, Option<RunRow>>;

    /// The lease sweep at `now_ms`: held runs whose lease ended become `unknown`; runs
    /// `unknown` for `lost_after_ms` become `lost`, and each lost idempotent one is queued
    /// again as a new run ([`retry_id`], `retry_of` the old one).
    fn sweep_runs(&self, now_ms: i64, lost_after_ms: i64) -> StoreFuture<'_, Swept>;

    /// Retention: deletes at most `max` final runs that finished before `before_ms`, with
    /// their events and logs, and the idempotency keys created before it. Returns the ids
    /// of the runs deleted.
    fn prune_runs(&self, before_ms: i64, max: usize) -> StoreFuture<'_, Vec<String>>;

    // Fleet controls (docs/PROTOCOL.md, Fleet controls). Each change is written with its
    // audit entry in one transaction.

    /// Drains (`drain`: at `audit.at_ms` by `audit.who`) or undrains the agents `ids`
    /// (a drained one keeps its first time); agents that do not exist are skipped. Returns
    /// the ids that exist.
    fn set_drained<'a>(
        &'a self,
        ids: &'a [String],
        drain: bool,
        audit: AuditRow,
    ) -> StoreFuture<'a, Vec<String>>;

    /// The kill switch: stops (keeping the first time and who) or starts dispatch. With
    /// `cancel_in_flight` (stop only), every queued run is canceled and every held one gets
    /// `cancel_requested`, in the same transaction.
    fn set_dispatch(
        &self,
        stop: bool,
        cancel_in_flight: bool,
        audit: AuditRow,
    ) -> StoreFuture<'_, DispatchChanged>;

    /// The kill switch as stored.
    fn dispatch(&self) -> StoreFuture<'_, DispatchRow>;

    /// Appends an entry to the audit log.
    fn audit<'a>(&'a self, entry: AuditRow) -> StoreFuture<'a, ()>;

    /// The newest `limit` audit entries, newest first.
    fn audit_log(&self, limit: usize) -> StoreFuture<'_, Vec<AuditRow>>;
}

/// One audit entry, as stored (time unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub at_ms: i64,
    /// `admin token`, `dashboard session <12 hex>`.
    pub who: String,
    /// One of [`crate::audit::kind`].
    pub action: String,
    /// `agent a_…`, `group edge`, `all`, `pack NAME SHA256`, `run r_…`, …
    pub target: String,
    pub detail: String,
}

/// The kill switch, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatchRow {
    /// Since when and by whom dispatch is stopped; `None` while it runs.
    pub stopped: Option<(i64, String)>,
}

/// What [`Store::set_dispatch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatchChanged {
    pub dispatch: DispatchRow,
    /// Queued runs canceled (`cancel_in_flight`), with their agents.
    pub canceled: Vec<(String, String)>,
    /// Held runs flagged `cancel_requested`, with their agents.
    pub cancel_requested: Vec<(String, String)>,
}

/// One run, as stored (times unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub id: String,
    pub agent_id: String,
    pub pack: String,
    pub sha256: String,
    pub action: String,
    pub params: BTreeMap<String, String>,
    pub idempotent: bool,
    pub state: RunState,
    pub created_ms: i64,
    pub claimed_ms: Option<i64>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub lease_expires_ms: Option<i64>,
    pub unknown_since_ms: Option<i64>,
    pub claimant: Option<String>,
    pub cancel_requested: bool,
    pub result: Option<RunResult>,
    pub late: bool,
    pub log_bytes: u64,
    pub retry_of: Option<String>,
}

impl RunRow {
    /// A queued run created at `now_ms`.
    #[allow(clippy::too_many_arguments)]
    pub fn queued(
        id: String,
        agent_id: String,
        pack: String,
        sha256: String,
        action: String,
        params: BTreeMap<String, String>,
        idempotent: bool,
        now_ms: i64,
    ) -> RunRow {
        RunRow {
            id,
            agent_id,
            pack,
            sha256,
            action,
            params,
            idempotent,
            state: RunState::Queued,
            created_ms: now_ms,
            claimed_ms: None,
            started_ms: None,
            finished_ms: None,
            lease_expires_ms: None,
            unknown_since_ms: None,
            claimant: None,
            cancel_requested: false,
            result: None,
            late: false,
            log_bytes: 0,
            retry_of: None,
        }
    }
}

/// The detail of a cancel's audit entry, shared by every backend: run `after`'s agent and
/// what the cancel did to a run that was `before`.
pub fn cancel_outcome(before: RunState, after: &RunRow) -> String {
    let did = if after.state != before {
        format!("{} -> {}", before.as_str(), after.state.as_str())
    } else if after.cancel_requested && !after.state.is_final() {
        format!("{}, cancel requested", after.state.as_str())
    } else {
        format!("{}, unchanged", after.state.as_str())
    };
    format!("agent {}: {did}", after.agent_id)
}

/// The detail of a trust's audit entry, shared by every backend: the version trusted, and
/// who trusted it first when that was not this request (`who` at `at_ms`).
pub fn trust_outcome(row: &PackRow, at_ms: i64, who: &str) -> String {
    let this = row.trusted_at_ms == Some(at_ms) && row.trusted_by.as_deref() == Some(who);
    match &row.trusted_by {
        Some(first) if !this => format!("version {}, already trusted by {first}", row.version),
        _ => format!("version {}", row.version),
    }
}

/// The id of the run that re-queues lost run `old_id`: derived from it, so a sweep that runs
/// twice cannot queue two retries.
pub fn retry_id(old_id: &str) -> String {
    let h = crate::token::hash_hex(&format!("retry of {old_id}"));
    format!("r_{}", h.get(..16).unwrap_or(&h))
}

/// Runs to create ([`Store::create_runs`]).
#[derive(Debug, Clone)]
pub struct NewRuns {
    /// The idempotency key and the sha256 of the request it came with.
    pub idempotency: Option<(String, String)>,
    pub runs: Vec<RunRow>,
    pub now_ms: i64,
    /// Queued runs an agent may have (`--max-runs-queued`).
    pub max_queued: usize,
    /// Written in the same transaction when the runs are created ([`RunsCreated::New`]),
    /// not for a retry or a refusal.
    pub audit: Option<AuditRow>,
}

/// What [`Store::create_runs`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunsCreated {
    New(Vec<RunRow>),
    Existing(Vec<RunRow>),
    KeyConflict,
    /// Agent `agent_id` already has `queued` queued runs: nothing was created.
    QueueFull {
        agent_id: String,
        queued: usize,
    },
}

/// Which runs [`Store::runs`] lists.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub agent: Option<String>,
    pub state: Option<RunState>,
    pub limit: usize,
}

/// The clock and lease of an agent's request.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    pub now_ms: i64,
    pub lease_ms: i64,
}

/// What [`Store::poll_runs`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Polled {
    pub queued: Vec<RunRow>,
    pub cancel: Vec<String>,
}

/// What [`Store::sweep_runs`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    pub unknown: Vec<String>,
    pub lost: Vec<String>,
    /// New runs queued for lost idempotent ones.
    pub requeued: Vec<RunRow>,
}

/// Why a run operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunRefusal {
    /// No such run, or not this agent's.
    NotFound,
    /// Another claimant holds it.
    Taken,
    /// Not in a state that allows it.
    State(RunState),
    /// A log upload past the end; the next must start at `expected`.
    Gap { expected: u64 },
    /// The log would grow past its cap.
    TooLarge,
    /// Another result is stored.
    Conflict,
    /// A claim of a queued run that [`crate::runs::gate`] refuses.
    Gated(crate::runs::Gate),
}

/// The hub's trust in one (pack name, sha256), as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRow {
    pub name: String,
    pub sha256: String,
    /// Version and actions as first seen.
    pub version: String,
    pub actions: Vec<ActionAdvert>,
    pub state: PackTrust,
    pub first_seen_ms: i64,
    /// The agent whose catalog carried it first.
    pub first_seen_by: String,
    pub trusted_at_ms: Option<i64>,
    /// `admin token`, `dashboard session …`.
    pub trusted_by: Option<String>,
}

/// Opens the store configured by `--db` (today always SQLite at that path), creating and
/// migrating it as needed.
pub async fn open(db: &Path) -> Result<Arc<dyn Store>, StoreError> {
    let path = db.display().to_string();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
        .await
        .map_err(|e| StoreError::Task {
            store: format!("database {}", db.display()),
            op: "open",
            detail: e.to_string(),
        })??;
    Ok(Arc::new(store))
}

/// A failure of the storage backend. The message is one lowercase line naming the store;
/// [`StoreError::hint`] says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed: cannot open, I/O, corruption, busy too long, a constraint.
    #[error("{store}: cannot {op}: {detail}")]
    Backend {
        /// The store, e.g. `database /var/lib/outpost-hub/hub.db`.
        store: String,
        /// What was being done, e.g. `load agents`.
        op: &'static str,
        detail: String,
        /// What the operator should check, as the backend knows it.
        hint: &'static str,
    },
    /// The store was written by a newer hub.
    #[error("{store} has schema version {found}, newer than the {supported} this hub knows")]
    SchemaTooNew {
        store: String,
        found: i64,
        supported: i64,
    },
    /// The task running the operation panicked or was cancelled.
    #[error("{store}: cannot {op}: storage task failed: {detail}")]
    Task {
        store: String,
        op: &'static str,
        detail: String,
    },
}

impl StoreError {
    /// What the operator should do about it.
    pub fn hint(&self) -> String {
        match self {
            StoreError::Backend { hint, .. } => (*hint).to_string(),
            StoreError::SchemaTooNew { .. } => {
                "run a newer outpost-hub, or restore a backup made by this version".into()
            }
            StoreError::Task { .. } => "this is a bug; please report it with the log".into(),
        }
    }
}

/// A minted enrollment key, as stored (times in unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub id: String,
    /// sha256 hex of the key; the key itself is never stored.
    pub key_hash: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub group: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// An enrollment to record ([`Store::enroll`]).
#[derive(Debug, Clone, Copy)]
pub struct NewAgent<'a> {
    /// sha256 hex of the enrollment key presented.
    pub key_hash: &'a str,
    /// sha256 hex of the request's nonce, if it had one.
    pub nonce_hash: Option<&'a str>,
    /// The id the new agent gets.
    pub agent_id: &'a str,
    /// sha256 hex of the new agent's token.
    pub token_hash: &'a str,
    /// The host facts sent with the request.
    pub facts: &'a Facts,
    pub now_ms: i64,
}

/// What an accepted enrollment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolled {
    /// A new agent was created; it got the key's group and labels.
    Created {
        group: Option<String>,
        labels: BTreeMap<String, String>,
    },
    /// The key was used before with the same nonce and is not expired: this is a retry of
    /// agent `agent_id`'s enrollment. Nothing was changed.
    Retry { agent_id: String },
}

/// Why an enrollment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    Unknown,
    Expired,
    Used,
}

/// An agent as loaded at start.
#[derive(Debug, Clone)]
pub struct StoredAgent {
    pub id: String,
    /// sha256 hex of its token.
    pub token_hash: String,
    pub state: AgentState,
}

/// An agent's latest diagnostics report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDiagnostics {
    /// The report, JSON text as uploaded.
    pub report: String,
    pub received_at_ms: i64,
}

/// The stored state of an enrollment key, as [`judge_key`] needs it.
#[derive(Debug, Clone)]
pub struct KeyStatus {
    pub expires_at_ms: i64,
    /// The key was used.
    pub used: bool,
    /// The agent it enrolled.
    pub used_by: Option<String>,
    /// sha256 hex of the nonce it was used with.
    pub nonce_hash: Option<String>,
}

/// What a key's stored state says about an enrollment attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVerdict {
    /// Unused and unexpired: enroll (if the key can still be marked used).
    Enroll,
    /// A retry of agent `agent_id`'s enrollment (same nonce, before expiry).
    Retry {
        agent_id: String,
    },
    Refused(KeyRefusal),
}

/// The enrollment rule, shared by every backend: a used key admits only a retry with the
/// same nonce (compared in constant time) before it expires; an unused one admits one
/// enrollment before it expires.
pub fn judge_key(key: &KeyStatus, nonce_hash: Option<&str>, now_ms: i64) -> KeyVerdict {
    if key.used {
        let same_nonce = match (nonce_hash, key.nonce_hash.as_deref()) {
            (Some(a), Some(b)) => crate::token::ct_eq_hex(a, b),
            _ => false,
        };
        return match &key.used_by {
            Some(agent_id) if same_nonce && key.expires_at_ms > now_ms => KeyVerdict::Retry {
                agent_id: agent_id.clone(),
            },
            _ => KeyVerdict::Refused(KeyRefusal::Used),
        };
    }
    if key.expires_at_ms <= now_ms {
        return KeyVerdict::Refused(KeyRefusal::Expired);
    }
    KeyVerdict::Enroll
}
