//! [`SqliteStore`]: SQLite in WAL mode with versioned migrations (`PRAGMA user_version`).
//! One connection behind a mutex; every operation runs on tokio's blocking pool, so the
//! future a [`Store`] method returns never blocks the runtime, and a dropped future still
//! lets its statement finish (each operation is one statement or one transaction).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use outpost_proto::{PackAdvert, PackTrust};

use super::trust_outcome;
use super::{
    judge_key, AuditRow, DispatchChanged, DispatchRow, Enrolled, KeyRefusal, KeyRow, KeyStatus,
    KeyVerdict, Lease, NewAgent, NewRuns, PackRow, Polled, RunFilter, RunRefusal, RunRow,
    RunsCreated, Store, StoreError, StoreFuture, StoredAgent, StoredDiagnostics, Swept,
};
use outpost_proto::{RunEvent, RunResult};

mod fleet;
mod logs;
mod runs;
use crate::state::{AgentState, Catalog, JournalHead};

/// Migrations, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: keys and agents.
    "CREATE TABLE enroll_keys (
        id TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER,
        used_by TEXT,
        grp TEXT,
        labels TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        key_id TEXT,
        hostname TEXT NOT NULL,
        machine_id TEXT NOT NULL DEFAULT '',
        distro TEXT NOT NULL DEFAULT '',
        arch TEXT NOT NULL DEFAULT '',
        kernel TEXT NOT NULL DEFAULT '',
        version TEXT NOT NULL DEFAULT '',
        mode TEXT NOT NULL DEFAULT '',
        grp TEXT,
        labels TEXT NOT NULL DEFAULT '{}',
        enrolled_at INTEGER NOT NULL,
        revoked_at INTEGER,
        last_heartbeat_at INTEGER,
        uptime_secs INTEGER,
        capabilities TEXT,
        journal_seq INTEGER,
        journal_hash TEXT,
        flags TEXT NOT NULL DEFAULT '[]',
        last_upgrade TEXT,
        diagnostics TEXT,
        diagnostics_at INTEGER
    );",
    // 2: idempotent enrollment: the sha256 of the nonce the key was used with.
    "ALTER TABLE enroll_keys ADD COLUMN nonce_hash TEXT;",
    // 3: pack catalogs (per agent, with their hash) and pack trust per (name, sha256).
    "ALTER TABLE agents ADD COLUMN packs TEXT;
    ALTER TABLE agents ADD COLUMN packs_hash TEXT;
    CREATE TABLE pack_trust (
        name TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        version TEXT NOT NULL,
        actions TEXT NOT NULL DEFAULT '[]',
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'trusted')),
        first_seen_at INTEGER NOT NULL,
        first_seen_by TEXT NOT NULL,
        trusted_at INTEGER,
        trusted_by TEXT,
        PRIMARY KEY (name, sha256)
    );",
    // 4: runs, their events and logs, and the idempotency keys of run requests.
    "CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        pack TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        action TEXT NOT NULL,
        params TEXT NOT NULL DEFAULT '{}',
        idempotent INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state IN ('queued', 'claimed', 'running', 'succeeded',
            'failed', 'canceled', 'timed_out', 'rejected', 'unknown', 'lost')),
        created_at INTEGER NOT NULL,
        claimed_at INTEGER,
        started_at INTEGER,
        finished_at INTEGER,
        lease_expires_at INTEGER,
        unknown_since INTEGER,
        claimant TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        result TEXT,
        late INTEGER NOT NULL DEFAULT 0,
        log_bytes INTEGER NOT NULL DEFAULT 0,
        retry_of TEXT
    );
    CREATE INDEX runs_by_agent ON runs (agent_id, state);
    CREATE INDEX runs_by_state ON runs (state, lease_expires_at);
    CREATE INDEX runs_by_time ON runs (created_at);
    CREATE TABLE run_events (
        run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        at TEXT NOT NULL,
        data TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (run_id, seq)
    );
    CREATE TABLE run_logs (
        run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        offset INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (run_id, offset)
    );
    CREATE TABLE run_requests (
        key TEXT PRIMARY KEY,
        request_hash TEXT NOT NULL,
        run_ids TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );",
    // 5: fleet controls (drained agents, the kill switch), the audit log, retention; run
    // logs move to files next to the database ([`move_logs_to_files`] empties `run_logs`,
    // then this drops it).
    "ALTER TABLE agents ADD COLUMN drained_at INTEGER;
    ALTER TABLE agents ADD COLUMN drained_by TEXT;
    CREATE TABLE hub_settings (
        key TEXT PRIMARY KEY,
        at INTEGER NOT NULL,
        by TEXT NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        who TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX runs_by_finish ON runs (finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX run_requests_by_time ON run_requests (created_at);",
];

/// The schema version whose migration moves the run logs out of `run_logs` into files.
const LOGS_TO_FILES: i64 = 5;

/// The directory of the run logs of the database at `db`: `run-logs/` next to it.
pub fn logs_dir(db: &Path) -> PathBuf {
    db.parent().unwrap_or(Path::new("")).join("run-logs")
}

/// The schema version this hub writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The hint of every SQLite failure.
const HINT: &str = "check the --db path (its directory must exist and be writable) and that no other program holds the database";

/// The SQLite backend of [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    /// `database PATH`, for messages.
    name: String,
    /// Where the run logs are, one file per run ([`logs_dir`]).
    logs: PathBuf,
}

impl Inner {
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn error(&self, op: &'static str, e: rusqlite::Error) -> StoreError {
        StoreError::Backend {
            store: self.name.clone(),
            op,
            detail: e.to_string(),
            hint: HINT,
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `path`. Blocking: call it
    /// from a blocking thread ([`super::open`] does).
    pub fn open(path: &str) -> Result<SqliteStore, StoreError> {
        let name = format!("database {path}");
        let err = |e: rusqlite::Error| StoreError::Backend {
            store: name.clone(),
            op: "open",
            detail: e.to_string(),
            hint: HINT,
        };
        let logs = logs_dir(Path::new(path));
        logs::create_dir(&logs).map_err(err)?;
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                store: name,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        migrate(&mut conn, found, &logs).map_err(err)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                name,
                logs,
            }),
        })
    }

    /// Runs `f` on the connection on a blocking thread; `op` names it in errors.
    fn run<T, F>(&self, op: &'static str, f: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        Box::pin(async move {
            let task = inner.clone();
            match tokio::task::spawn_blocking(move || f(&mut task.conn())).await {
                Ok(r) => r.map_err(|e| inner.error(op, e)),
                Err(e) => Err(StoreError::Task {
                    store: inner.name.clone(),
                    op,
                    detail: e.to_string(),
                }),
            }
        })
    }
}

/// Applies the migrations after version `found`, each in its own transaction.
fn migrate(conn: &mut Connection, found: i64, logs: &Path) -> rusqlite::Result<()> {
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let version = i as i64 + 1;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        if version == LOGS_TO_FILES {
            move_logs_to_files(&tx, logs)?;
            tx.execute_batch("DROP TABLE run_logs;")?;
        }
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
    }
    Ok(())
}

/// Writes each run's `run_logs` rows (in offset order) to its log file, synced, before the
/// table goes: a crash before the migration commits leaves the rows, and the next start
/// writes the files again.
fn move_logs_to_files(tx: &rusqlite::Transaction, dir: &Path) -> rusqlite::Result<()> {
    let ids: Vec<String> = {
        let mut st = tx.prepare("SELECT DISTINCT run_id FROM run_logs ORDER BY run_id")?;
        let rows = st.query_map([], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut st = tx.prepare("SELECT data FROM run_logs WHERE run_id = ?1 ORDER BY offset")?;
    for id in &ids {
        let mut bytes = Vec::new();
        let mut rows = st.query([id])?;
        while let Some(row) = rows.next()? {
            let chunk: Vec<u8> = row.get(0)?;
            bytes.extend_from_slice(&chunk);
        }
        logs::replace(dir, id, &bytes)?;
    }
    if !ids.is_empty() {
        logs::sync_dir(dir)?;
    }
    Ok(())
}

impl Store for SqliteStore {
    fn schema_version(&self) -> StoreFuture<'_, i64> {
        self.run("read the schema version", |c| {
            c.pragma_query_value(None, "user_version", |r| r.get(0))
        })
    }

    fn load_agents(&self) -> StoreFuture<'_, Vec<StoredAgent>> {
        self.run("load agents", load_agents)
    }

    fn insert_key<'a>(&'a self, key: &'a KeyRow, audit: AuditRow) -> StoreFuture<'a, ()> {
        let k = key.clone();
        self.run("store an enrollment key", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO enroll_keys (id, key_hash, created_at, expires_at, grp, labels)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    k.id,
                    k.key_hash,
                    k.created_at_ms,
                    k.expires_at_ms,
                    k.group,
                    serde_json::to_string(&k.labels).unwrap_or_else(|_| "{}".into())
                ],
            )?;
            fleet::insert_audit_tx(&tx, &audit)?;
            tx.commit()
        })
    }

    fn enroll<'a>(&'a self, e: NewAgent<'a>) -> StoreFuture<'a, Result<Enrolled, KeyRefusal>> {
        let e = OwnedEnrollment::from(e);
        self.run("enroll an agent", move |c| enroll(c, &e))
    }

    fn set_token<'a>(&'a self, id: &'a str, token_hash: &'a str) -> StoreFuture<'a, bool> {
        let (id, token_hash) = (id.to_string(), token_hash.to_string());
        self.run("replace an agent token", move |c| {
            let n = c.execute(
                "UPDATE agents SET token_hash = ?1 WHERE id = ?2",
                params![token_hash, id],
            )?;
            Ok(n == 1)
        })
    }

    fn revoke<'a>(&'a self, id: &'a str, audit: AuditRow) -> StoreFuture<'a, bool> {
        let id = id.to_string();
        self.run("revoke an agent", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE agents SET revoked_at = COALESCE(revoked_at, ?1) WHERE id = ?2",
                params![audit.at_ms, id],
            )?;
            if n != 1 {
                return Ok(false);
            }
            fleet::insert_audit_tx(&tx, &audit)?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn delete<'a>(&'a self, id: &'a str, audit: AuditRow) -> StoreFuture<'a, bool> {
        let id = id.to_string();
        self.run("delete an agent", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if tx.execute("DELETE FROM agents WHERE id = ?1", [id])? != 1 {
                return Ok(false);
            }
            fleet::insert_audit_tx(&tx, &audit)?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn store_diagnostics<'a>(
        &'a self,
        id: &'a str,
        report: &'a str,
        now_ms: i64,
    ) -> StoreFuture<'a, bool> {
        let (id, report) = (id.to_string(), report.to_string());
        self.run("store a diagnostics report", move |c| {
            let n = c.execute(
                "UPDATE agents SET diagnostics = ?1, diagnostics_at = ?2 WHERE id = ?3",
                params![report, now_ms, id],
            )?;
            Ok(n == 1)
        })
    }

    fn diagnostics<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<StoredDiagnostics>> {
        let id = id.to_string();
        self.run("read a diagnostics report", move |c| {
            c.query_row(
                "SELECT diagnostics, diagnostics_at FROM agents WHERE id = ?1 AND diagnostics IS NOT NULL",
                [id],
                |r| {
                    Ok(StoredDiagnostics {
                        report: r.get(0)?,
                        received_at_ms: r.get(1)?,
                    })
                },
            )
            .optional()
        })
    }

    fn flush_heartbeats(&self, batch: Vec<(String, AgentState)>) -> StoreFuture<'_, ()> {
        self.run("persist heartbeats", move |c| flush_heartbeats(c, &batch))
    }

    fn store_catalog<'a>(
        &'a self,
        id: &'a str,
        catalog: Arc<Catalog>,
        now_ms: i64,
    ) -> StoreFuture<'a, bool> {
        let id = id.to_string();
        self.run("store a pack catalog", move |c| {
            store_catalog(c, &id, &catalog, now_ms)
        })
    }

    fn packs(&self) -> StoreFuture<'_, Vec<PackRow>> {
        self.run("list packs", |c| {
            let mut st = c.prepare(&format!(
                "SELECT {PACK_COLUMNS} FROM pack_trust ORDER BY name, first_seen_at, sha256"
            ))?;
            let rows = st.query_map([], pack_row)?;
            rows.collect()
        })
    }

    fn trust_pack<'a>(
        &'a self,
        name: &'a str,
        sha256: &'a str,
        audit: AuditRow,
    ) -> StoreFuture<'a, Option<PackRow>> {
        let (name, sha256) = (name.to_string(), sha256.to_string());
        self.run("trust a pack", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (now_ms, by) = (audit.at_ms, &audit.who);
            tx.execute(
                "UPDATE pack_trust SET state = 'trusted', trusted_at = COALESCE(trusted_at, ?1),
                        trusted_by = COALESCE(trusted_by, ?2)
                 WHERE name = ?3 AND sha256 = ?4",
                params![now_ms, by, name, sha256],
            )?;
            let row = tx
                .query_row(
                    &format!(
                        "SELECT {PACK_COLUMNS} FROM pack_trust WHERE name = ?1 AND sha256 = ?2"
                    ),
                    params![name, sha256],
                    pack_row,
                )
                .optional()?;
            if let Some(r) = &row {
                let detail = trust_outcome(r, audit.at_ms, &audit.who);
                fleet::insert_audit_tx(&tx, &AuditRow { detail, ..audit })?;
            }
            tx.commit()?;
            Ok(row)
        })
    }

    fn create_runs(&self, new: NewRuns) -> StoreFuture<'_, RunsCreated> {
        self.run("create runs", move |c| runs::create_runs(c, &new))
    }

    fn run<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<RunRow>> {
        let id = id.to_string();
        self.run("read a run", move |c| runs::run(c, &id))
    }

    fn runs<'a>(&'a self, filter: &'a RunFilter) -> StoreFuture<'a, Vec<RunRow>> {
        let f = filter.clone();
        self.run("list runs", move |c| runs::runs(c, &f))
    }

    fn poll_runs<'a>(
        &'a self,
        agent_id: &'a str,
        holding: &'a [String],
        lease: Lease,
        max_in_flight: usize,
    ) -> StoreFuture<'a, Polled> {
        let (agent, holding) = (agent_id.to_string(), holding.to_vec());
        self.run("poll runs", move |c| {
            runs::poll_runs(c, &agent, &holding, lease, max_in_flight)
        })
    }

    fn claim_run<'a>(
        &'a self,
        id: &'a str,
        agent_id: &'a str,
        claimant: &'a str,
        lease: Lease,
        max_in_flight: usize,
    ) -> StoreFuture<'a, Result<RunRow, RunRefusal>> {
        let (id, agent, who) = (id.to_string(), agent_id.to_string(), claimant.to_string());
        self.run("claim a run", move |c| {
            runs::claim_run(c, &id, &agent, &who, lease, max_in_flight)
        })
    }

    fn run_events<'a>(
        &'a self,
        id: &'a str,
        agent_id: &'a str,
        events: Vec<RunEvent>,
        lease: Lease,
    ) -> StoreFuture<'a, Result<u64, RunRefusal>> {
        let (id, agent) = (id.to_string(), agent_id.to_string());
        self.run("store run events", move |c| {
            runs::run_events(c, &id, &agent, &events, lease)
        })
    }

    fn recent_events<'a>(&'a self, id: &'a str, limit: usize) -> StoreFuture<'a, Vec<RunEvent>> {
        let id = id.to_string();
        self.run("read run events", move |c| {
            runs::recent_events(c, &id, limit)
        })
    }

    fn append_log<'a>(
        &'a self,
        id: &'a str,
        agent_id: &'a str,
        offset: u64,
        data: Vec<u8>,
        cap: u64,
        lease: Lease,
    ) -> StoreFuture<'a, Result<u64, RunRefusal>> {
        let (id, agent) = (id.to_string(), agent_id.to_string());
        let logs = self.inner.logs.clone();
        self.run("append a run log", move |c| {
            runs::append_log(c, &logs, &id, &agent, offset, &data, cap, lease)
        })
    }

    fn read_log<'a>(
        &'a self,
        id: &'a str,
        offset: u64,
        max: usize,
    ) -> StoreFuture<'a, Option<(Vec<u8>, u64)>> {
        let id = id.to_string();
        let logs = self.inner.logs.clone();
        self.run("read a run log", move |c| {
            runs::read_log(c, &logs, &id, offset, max)
        })
    }

    fn finish_run<'a>(
        &'a self,
        id: &'a str,
        agent_id: &'a str,
        result: RunResult,
        now_ms: i64,
    ) -> StoreFuture<'a, Result<(RunRow, bool), RunRefusal>> {
        let (id, agent) = (id.to_string(), agent_id.to_string());
        self.run("store a run result", move |c| {
            runs::finish_run(c, &id, &agent, &result, now_ms)
        })
    }

    fn cancel_run<'a>(&'a self, id: &'a str, audit: AuditRow) -> StoreFuture<'a, Option<RunRow>> {
        let id = id.to_string();
        self.run("cancel a run", move |c| runs::cancel_run(c, &id, audit))
    }

    fn sweep_runs(&self, now_ms: i64, lost_after_ms: i64) -> StoreFuture<'_, Swept> {
        self.run("sweep run leases", move |c| {
            runs::sweep_runs(c, now_ms, lost_after_ms)
        })
    }

    fn prune_runs(&self, before_ms: i64, max: usize) -> StoreFuture<'_, Vec<String>> {
        let logs = self.inner.logs.clone();
        self.run("delete old runs", move |c| {
            runs::prune_runs(c, &logs, before_ms, max)
        })
    }

    fn set_drained<'a>(
        &'a self,
        ids: &'a [String],
        drain: bool,
        audit: AuditRow,
    ) -> StoreFuture<'a, Vec<String>> {
        let ids = ids.to_vec();
        self.run("drain agents", move |c| {
            fleet::set_drained(c, &ids, drain, &audit)
        })
    }

    fn set_dispatch(
        &self,
        stop: bool,
        cancel_in_flight: bool,
        audit: AuditRow,
    ) -> StoreFuture<'_, DispatchChanged> {
        self.run("switch dispatch", move |c| {
            runs::set_dispatch(c, stop, cancel_in_flight, &audit)
        })
    }

    fn dispatch(&self) -> StoreFuture<'_, DispatchRow> {
        self.run("read the dispatch state", fleet::dispatch)
    }

    fn audit<'a>(&'a self, entry: AuditRow) -> StoreFuture<'a, ()> {
        self.run("write the audit log", move |c| {
            fleet::insert_audit(c, &entry)
        })
    }

    fn audit_log(&self, limit: usize) -> StoreFuture<'_, Vec<AuditRow>> {
        self.run("read the audit log", move |c| fleet::audit_log(c, limit))
    }
}

/// The columns [`pack_row`] reads, in order.
const PACK_COLUMNS: &str =
    "name, sha256, version, actions, state, first_seen_at, first_seen_by, trusted_at, trusted_by";

fn pack_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PackRow> {
    let actions: String = r.get(3)?;
    let state: String = r.get(4)?;
    Ok(PackRow {
        name: r.get(0)?,
        sha256: r.get(1)?,
        version: r.get(2)?,
        actions: serde_json::from_str(&actions).unwrap_or_default(),
        // The column's CHECK admits only these two.
        state: if state == "trusted" {
            PackTrust::Trusted
        } else {
            PackTrust::Pending
        },
        first_seen_ms: r.get(5)?,
        first_seen_by: r.get(6)?,
        trusted_at_ms: r.get(7)?,
        trusted_by: r.get(8)?,
    })
}

/// [`Store::store_catalog`] in one immediate transaction.
fn store_catalog(
    conn: &mut Connection,
    id: &str,
    catalog: &Catalog,
    now_ms: i64,
) -> rusqlite::Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Serializing plain structs of strings, bools and vectors cannot fail.
    let text = serde_json::to_string(&catalog.packs).unwrap_or_else(|_| "[]".into());
    let n = tx.execute(
        "UPDATE agents SET packs = ?1, packs_hash = ?2 WHERE id = ?3",
        params![text, catalog.hash, id],
    )?;
    if n != 1 {
        return Ok(false);
    }
    {
        let mut st = tx.prepare(
            "INSERT OR IGNORE INTO pack_trust (name, sha256, version, actions, first_seen_at, first_seen_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for p in &catalog.packs {
            let actions = serde_json::to_string(&p.actions).unwrap_or_else(|_| "[]".into());
            st.execute(params![p.name, p.sha256, p.version, actions, now_ms, id])?;
        }
    }
    tx.commit()?;
    Ok(true)
}

/// A stored catalog: `None` before the first one (or when unreadable).
fn load_catalog(text: Option<String>, hash: Option<String>) -> Option<Arc<Catalog>> {
    let packs: Vec<PackAdvert> = serde_json::from_str(&text?).ok()?;
    let hash = hash.unwrap_or_else(|| crate::packs::catalog_hash(&packs));
    Some(Arc::new(Catalog { packs, hash }))
}

fn load_agents(conn: &mut Connection) -> rusqlite::Result<Vec<StoredAgent>> {
    let mut st = conn.prepare(
        "SELECT id, token_hash, hostname, machine_id, distro, arch, kernel, version, mode, grp,
                labels, enrolled_at, revoked_at, last_heartbeat_at, uptime_secs, capabilities,
                journal_seq, journal_hash, flags, last_upgrade, packs, packs_hash, drained_at,
                drained_by
         FROM agents",
    )?;
    let rows = st.query_map([], |r| {
        let labels: String = r.get(10)?;
        let caps: Option<String> = r.get(15)?;
        let seq: Option<i64> = r.get(16)?;
        let hash: Option<String> = r.get(17)?;
        let flags: String = r.get(18)?;
        let upgrade: Option<String> = r.get(19)?;
        let uptime: Option<i64> = r.get(14)?;
        Ok(StoredAgent {
            id: r.get(0)?,
            token_hash: r.get(1)?,
            state: AgentState {
                hostname: r.get(2)?,
                machine_id: r.get(3)?,
                distro: r.get(4)?,
                arch: r.get(5)?,
                kernel: r.get(6)?,
                version: r.get(7)?,
                mode: r.get(8)?,
                group: r.get(9)?,
                labels: serde_json::from_str(&labels).unwrap_or_default(),
                enrolled_at_ms: r.get(11)?,
                revoked_at_ms: r.get(12)?,
                last_heartbeat_ms: r.get(13)?,
                uptime_secs: uptime.and_then(|u| u64::try_from(u).ok()),
                capabilities: caps.and_then(|c| serde_json::from_str(&c).ok()),
                journal_head: match (seq, hash) {
                    (Some(seq), Some(hash)) => {
                        u64::try_from(seq).ok().map(|seq| JournalHead { seq, hash })
                    }
                    _ => None,
                },
                flags: serde_json::from_str(&flags).unwrap_or_default(),
                last_upgrade: upgrade.and_then(|u| serde_json::from_str(&u).ok()),
                packs: load_catalog(r.get(20)?, r.get(21)?),
                drained_at_ms: r.get(22)?,
                drained_by: r.get(23)?,
            },
        })
    })?;
    rows.collect()
}

/// [`NewAgent`] with owned fields, to move onto a blocking thread.
struct OwnedEnrollment {
    key_hash: String,
    nonce_hash: Option<String>,
    agent_id: String,
    token_hash: String,
    facts: crate::state::Facts,
    now_ms: i64,
}

impl From<NewAgent<'_>> for OwnedEnrollment {
    fn from(e: NewAgent<'_>) -> Self {
        OwnedEnrollment {
            key_hash: e.key_hash.to_string(),
            nonce_hash: e.nonce_hash.map(str::to_string),
            agent_id: e.agent_id.to_string(),
            token_hash: e.token_hash.to_string(),
            facts: e.facts.clone(),
            now_ms: e.now_ms,
        }
    }
}

/// An enrollment key as [`enroll`] reads it.
struct KeyLookup {
    id: String,
    status: KeyStatus,
    group: Option<String>,
    /// JSON text, copied to the agent row as is.
    labels: String,
}

fn lookup_key(tx: &rusqlite::Transaction, key_hash: &str) -> rusqlite::Result<Option<KeyLookup>> {
    tx.query_row(
        "SELECT id, expires_at, used_at, grp, labels, used_by, nonce_hash
         FROM enroll_keys WHERE key_hash = ?1",
        [key_hash],
        |r| {
            let used_at: Option<i64> = r.get(2)?;
            Ok(KeyLookup {
                id: r.get(0)?,
                status: KeyStatus {
                    expires_at_ms: r.get(1)?,
                    used: used_at.is_some(),
                    used_by: r.get(5)?,
                    nonce_hash: r.get(6)?,
                },
                group: r.get(3)?,
                labels: r.get(4)?,
            })
        },
    )
    .optional()
}

/// [`Store::enroll`] in one immediate transaction: look the key up, judge it, mark it used
/// (only if still unused), insert the agent.
fn enroll(
    conn: &mut Connection,
    e: &OwnedEnrollment,
) -> rusqlite::Result<Result<Enrolled, KeyRefusal>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some(key) = lookup_key(&tx, &e.key_hash)? else {
        return Ok(Err(KeyRefusal::Unknown));
    };
    match judge_key(&key.status, e.nonce_hash.as_deref(), e.now_ms) {
        KeyVerdict::Enroll => {}
        KeyVerdict::Retry { agent_id } => return Ok(Ok(Enrolled::Retry { agent_id })),
        KeyVerdict::Refused(r) => return Ok(Err(r)),
    }
    let marked = tx.execute(
        "UPDATE enroll_keys SET used_at = ?1, used_by = ?2, nonce_hash = ?3
         WHERE id = ?4 AND used_at IS NULL",
        params![e.now_ms, e.agent_id, e.nonce_hash, key.id],
    )?;
    if marked != 1 {
        return Ok(Err(KeyRefusal::Used));
    }
    let f = &e.facts;
    tx.execute(
        "INSERT INTO agents (id, token_hash, key_id, hostname, machine_id, distro, arch, version,
                             mode, grp, labels, enrolled_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            e.agent_id,
            e.token_hash,
            key.id,
            f.hostname,
            f.machine_id,
            f.distro,
            f.arch,
            f.version,
            f.mode,
            key.group,
            key.labels,
            e.now_ms
        ],
    )?;
    tx.commit()?;
    let labels: BTreeMap<String, String> = serde_json::from_str(&key.labels).unwrap_or_default();
    Ok(Ok(Enrolled::Created {
        group: key.group,
        labels,
    }))
}

fn flush_heartbeats(conn: &mut Connection, batch: &[(String, AgentState)]) -> rusqlite::Result<()> {
    // Serializing these types cannot fail (string keys, no foreign types).
    fn json<T: serde::Serialize>(v: &Option<T>) -> Option<String> {
        v.as_ref().and_then(|v| serde_json::to_string(v).ok())
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut st = tx.prepare(
            "UPDATE agents SET distro = ?1, arch = ?2, kernel = ?3, version = ?4, mode = ?5,
                    last_heartbeat_at = ?6, uptime_secs = ?7, capabilities = ?8,
                    journal_seq = ?9, journal_hash = ?10, flags = ?11, last_upgrade = ?12
             WHERE id = ?13",
        )?;
        for (id, s) in batch {
            st.execute(params![
                s.distro,
                s.arch,
                s.kernel,
                s.version,
                s.mode,
                s.last_heartbeat_ms,
                s.uptime_secs.and_then(|u| i64::try_from(u).ok()),
                json(&s.capabilities),
                s.journal_head
                    .as_ref()
                    .and_then(|j| i64::try_from(j.seq).ok()),
                s.journal_head.as_ref().map(|j| j.hash.as_str()),
                serde_json::to_string(&s.flags).unwrap_or_else(|_| "[]".into()),
                json(&s.last_upgrade),
                id
            ])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("hub.db").to_str().unwrap()).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let (_dir, store) = fresh();
        crate::store::tests::conformance(&store).await;
    }

    #[tokio::test]
    async fn migrates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hub.db");
        let p = p.to_str().unwrap();
        let db = SqliteStore::open(p).unwrap();
        assert_eq!(db.schema_version().await.unwrap(), SCHEMA_VERSION);
        drop(db);
        let db = SqliteStore::open(p).unwrap();
        assert_eq!(db.schema_version().await.unwrap(), SCHEMA_VERSION);
        db.inner
            .conn()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        drop(db);
        let e = SqliteStore::open(p).err().unwrap();
        assert!(
            matches!(e, StoreError::SchemaTooNew { found: 99, .. }),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            format!("database {p} has schema version 99, newer than the {SCHEMA_VERSION} this hub knows")
        );
        assert!(e.hint().contains("newer outpost-hub"), "{}", e.hint());
    }

    #[tokio::test]
    async fn migrates_a_version_1_database() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hub.db");
        let p = p.to_str().unwrap();
        {
            let c = Connection::open(p).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO enroll_keys (id, key_hash, created_at, expires_at) VALUES ('k_1', 'h', 0, 10)",
                [],
            )
            .unwrap();
        }
        let db = SqliteStore::open(p).unwrap();
        assert_eq!(db.schema_version().await.unwrap(), SCHEMA_VERSION);
        let nonce: Option<String> = db
            .inner
            .conn()
            .query_row(
                "SELECT nonce_hash FROM enroll_keys WHERE id = 'k_1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(nonce, None);
    }

    #[tokio::test]
    async fn migrates_a_version_2_database() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hub.db");
        let p = p.to_str().unwrap();
        {
            let c = Connection::open(p).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(MIGRATIONS[1]).unwrap();
            c.pragma_update(None, "user_version", 2).unwrap();
            c.execute(
                "INSERT INTO agents (id, token_hash, hostname, enrolled_at) VALUES ('a_1', 't', 'h', 5)",
                [],
            )
            .unwrap();
        }
        let db = SqliteStore::open(p).unwrap();
        assert_eq!(db.schema_version().await.unwrap(), SCHEMA_VERSION);
        let agents = db.load_agents().await.unwrap();
        assert_eq!((agents.len(), agents[0].state.packs.clone()), (1, None));
        assert!(db.packs().await.unwrap().is_empty());
        let c = Arc::new(Catalog::new(Vec::new()));
        assert!(db.store_catalog("a_1", c.clone(), 6).await.unwrap());
        drop(db);
        let db = SqliteStore::open(p).unwrap();
        assert_eq!(db.load_agents().await.unwrap()[0].state.packs, Some(c));
    }

    #[tokio::test]
    async fn migrates_a_version_3_database() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hub.db");
        let p = p.to_str().unwrap();
        {
            let c = Connection::open(p).unwrap();
            for m in &MIGRATIONS[..3] {
                c.execute_batch(m).unwrap();
            }
            c.pragma_update(None, "user_version", 3).unwrap();
            c.execute(
                "INSERT INTO agents (id, token_hash, hostname, enrolled_at) VALUES ('a_1', 't', 'h', 5)",
                [],
            )
            .unwrap();
        }
        let db = SqliteStore::open(p).unwrap();
        assert_eq!(db.schema_version().await.unwrap(), SCHEMA_VERSION);
        assert_eq!(db.load_agents().await.unwrap().len(), 1);
        let all = RunFilter {
            limit: 10,
            ..Default::default()
        };
        assert!(db.runs(&all).await.unwrap().is_empty());
        let r = RunRow::queued(
            "r_1".into(),
            "a_1".into(),
            "web".into(),
            "a".repeat(64),
            "restart".into(),
            BTreeMap::new(),
            false,
            6,
        );
        let new = NewRuns {
            idempotency: None,
            runs: vec![r.clone()],
            now_ms: 6,
            max_queued: 100,
            audit: None,
        };
        assert_eq!(
            db.create_runs(new).await.unwrap(),
            RunsCreated::New(vec![r.clone()])
        );
        drop(db);
        let db = SqliteStore::open(p).unwrap();
        assert_eq!(Store::run(&db, "r_1").await.unwrap(), Some(r));
    }

    #[tokio::test]
    async fn migrates_a_version_4_database_moving_log_rows_to_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hub.db");
        let p = p.to_str().unwrap();
        {
            let c = Connection::open(p).unwrap();
            for m in &MIGRATIONS[..4] {
                c.execute_batch(m).unwrap();
            }
            c.pragma_update(None, "user_version", 4).unwrap();
            c.execute(
                "INSERT INTO agents (id, token_hash, hostname, enrolled_at) VALUES ('a_1', 't', 'h', 5)",
                [],
            )
            .unwrap();
            for (id, bytes) in [("r_1", 11), ("r_2", 3), ("r_3", 0)] {
                c.execute(
                    "INSERT INTO runs (id, agent_id, pack, sha256, action, state, created_at, log_bytes)
                     VALUES (?1, 'a_1', 'web', 'x', 'restart', 'running', 6, ?2)",
                    params![id, bytes],
                )
                .unwrap();
            }
            // Chunks inserted out of order: the migration writes them in offset order.
            for (id, offset, data) in [
                ("r_1", 6, &b"world"[..]),
                ("r_1", 0, b"hello "),
                ("r_2", 0, b"abc"),
            ] {
                c.execute(
                    "INSERT INTO run_logs (run_id, offset, data) VALUES (?1, ?2, ?3)",
                    params![id, offset, data],
                )
                .unwrap();
            }
        }
        let db = SqliteStore::open(p).unwrap();
        assert_eq!(db.schema_version().await.unwrap(), SCHEMA_VERSION);
        let logs = dir.path().join("run-logs");
        assert_eq!(std::fs::read(logs.join("r_1.log")).unwrap(), b"hello world");
        assert_eq!(std::fs::read(logs.join("r_2.log")).unwrap(), b"abc");
        assert!(!logs.join("r_3.log").exists());
        let gone: Option<String> = db
            .inner
            .conn()
            .query_row(
                "SELECT name FROM sqlite_master WHERE name = 'run_logs'",
                [],
                |r| r.get(0),
            )
            .optional()
            .unwrap();
        assert_eq!(gone, None);
        // Reads and appends go on from the files, at the same offsets.
        assert_eq!(
            db.read_log("r_1", 6, 100).await.unwrap(),
            Some((b"world".to_vec(), 11))
        );
        let lease = Lease {
            now_ms: 7,
            lease_ms: 1000,
        };
        assert_eq!(
            db.append_log("r_1", "a_1", 11, b"!".to_vec(), 100, lease)
                .await
                .unwrap(),
            Ok(12)
        );
        assert_eq!(
            db.append_log("r_3", "a_1", 0, b"new".to_vec(), 100, lease)
                .await
                .unwrap(),
            Ok(3)
        );
        drop(db);
        let db = SqliteStore::open(p).unwrap();
        assert_eq!(
            db.read_log("r_1", 0, 100).await.unwrap(),
            Some((b"hello world!".to_vec(), 12))
        );
        assert_eq!(
            db.read_log("r_3", 0, 100).await.unwrap(),
            Some((b"new".to_vec(), 3))
        );
        assert_eq!(db.dispatch().await.unwrap(), DispatchRow::default());
        assert_eq!(db.load_agents().await.unwrap()[0].state.drained_at_ms, None);
    }

    #[tokio::test]
    async fn logs_are_files_and_retention_deletes_them() {
        let (dir, db) = fresh();
        let mut r = RunRow::queued(
            "r_f".into(),
            "a_1".into(),
            "web".into(),
            "a".repeat(64),
            "restart".into(),
            BTreeMap::new(),
            false,
            1,
        );
        r.state = outpost_proto::RunState::Running;
        let new = NewRuns {
            idempotency: None,
            runs: vec![r],
            now_ms: 1,
            max_queued: 100,
            audit: None,
        };
        db.create_runs(new).await.unwrap();
        let lease = Lease {
            now_ms: 2,
            lease_ms: 1000,
        };
        db.append_log("r_f", "a_1", 0, b"abc".to_vec(), 100, lease)
            .await
            .unwrap()
            .unwrap();
        let file = dir.path().join("run-logs/r_f.log");
        assert_eq!(std::fs::read(&file).unwrap(), b"abc");
        // Bytes past the committed size (a crashed upload) are never read, and are cut off.
        std::fs::write(&file, b"abcGARBAGE").unwrap();
        assert_eq!(
            db.read_log("r_f", 0, 100).await.unwrap(),
            Some((b"abc".to_vec(), 3))
        );
        db.append_log("r_f", "a_1", 3, b"d".to_vec(), 100, lease)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"abcd");
        let done = RunResult {
            outcome: outpost_proto::RunOutcome::Failed,
            exit_code: Some(1),
            signal: None,
            reason: String::new(),
            finished_at: "2024-01-01T00:00:00Z".into(),
            log_bytes: 4,
        };
        db.finish_run("r_f", "a_1", done, 10)
            .await
            .unwrap()
            .unwrap();
        assert!(db.prune_runs(10, 10).await.unwrap().is_empty());
        assert_eq!(db.prune_runs(11, 10).await.unwrap(), ["r_f"]);
        assert!(!file.exists());
        assert_eq!(Store::run(&db, "r_f").await.unwrap(), None);
    }

    #[test]
    fn open_errors_name_the_database_and_hint() {
        let e = SqliteStore::open("/nonexistent/dir/hub.db").err().unwrap();
        let msg = e.to_string();
        assert!(
            msg.starts_with("database /nonexistent/dir/hub.db: cannot open: "),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
        assert!(e.hint().starts_with("check the --db path"), "{}", e.hint());
    }

    #[tokio::test]
    async fn key_is_single_use() {
        let (_dir, db) = fresh();
        let k = KeyRow {
            id: "k_1".into(),
            key_hash: "h".into(),
            created_at_ms: 0,
            expires_at_ms: 10_000,
            group: Some("edge".into()),
            labels: BTreeMap::from([("a".into(), "b".into())]),
        };
        db.insert_key(&k, crate::store::tests::entry(1, "key_create", &k.id))
            .await
            .unwrap();
        let facts = crate::state::Facts {
            hostname: "x".into(),
            ..Default::default()
        };
        let enroll = |key_hash: &'static str,
                      nonce: Option<&str>,
                      id: &'static str,
                      th: &'static str,
                      now| {
            let nonce = nonce.map(str::to_string);
            let (db, facts) = (db.clone(), facts.clone());
            async move {
                db.enroll(NewAgent {
                    key_hash,
                    nonce_hash: nonce.as_deref(),
                    agent_id: id,
                    token_hash: th,
                    facts: &facts,
                    now_ms: now,
                })
                .await
                .unwrap()
            }
        };
        assert_eq!(
            enroll("nope", None, "a_1", "t1", 1).await,
            Err(KeyRefusal::Unknown)
        );
        let n1 = crate::token::hash_hex("nonce-1");
        let n2 = crate::token::hash_hex("nonce-2");
        let Ok(Enrolled::Created { group, .. }) = enroll("h", Some(&n1), "a_1", "t1", 1).await
        else {
            panic!("not created");
        };
        assert_eq!(group.as_deref(), Some("edge"));
        assert_eq!(
            enroll("h", None, "a_2", "t2", 2).await,
            Err(KeyRefusal::Used)
        );
        assert_eq!(
            enroll("h", Some(&n2), "a_2", "t2", 2).await,
            Err(KeyRefusal::Used)
        );
        // The same nonce before expiry: a retry of a_1, nothing created.
        assert_eq!(
            enroll("h", Some(&n1), "a_2", "t2", 3).await,
            Ok(Enrolled::Retry {
                agent_id: "a_1".into()
            })
        );
        // After expiry: used.
        assert_eq!(
            enroll("h", Some(&n1), "a_2", "t2", 10_000).await,
            Err(KeyRefusal::Used)
        );
        assert!(db.set_token("a_1", "t9").await.unwrap());
        assert!(!db.set_token("a_x", "t9").await.unwrap());
        let k2 = KeyRow {
            id: "k_2".into(),
            key_hash: "h2".into(),
            ..k
        };
        db.insert_key(&k2, crate::store::tests::entry(1, "key_create", &k2.id))
            .await
            .unwrap();
        assert_eq!(
            enroll("h2", None, "a_3", "t3", 10_000).await,
            Err(KeyRefusal::Expired)
        );
        let agents = db.load_agents().await.unwrap();
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].token_hash, "t9");
        assert_eq!(
            agents[0].state.labels.get("a").map(String::as_str),
            Some("b")
        );
    }
}
