//! SQLite persistence: WAL, versioned migrations (`PRAGMA user_version`), and the few
//! statements the hub needs. Identities, tokens and keys are written synchronously;
//! heartbeat state arrives in batches from the writer task.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::error::HubError;
use crate::state::{AgentState, JournalHead};

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
];

/// The schema version this hub writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A minted enrollment key, as stored (times in unix ms).
#[derive(Debug, Clone)]
pub struct KeyRow {
    pub id: String,
    pub key_hash: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub group: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// `(id, expires_at, used_at, grp, labels, used_by, nonce_hash)` of an enrollment key.
type KeyLookup = (
    String,
    i64,
    Option<i64>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
);

/// What an accepted enrollment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolled {
    /// A new agent was created with the given id.
    Created,
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

/// The database (one connection; callers run on blocking threads).
pub struct Db {
    conn: Mutex<Connection>,
    path: String,
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &str) -> Result<Db, HubError> {
        let err = |source| HubError::Db {
            path: path.to_string(),
            source,
        };
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
            return Err(HubError::SchemaTooNew {
                path: path.to_string(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(found).unwrap_or(0))
        {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(Db {
            conn: Mutex::new(conn),
            path: path.to_string(),
        })
    }

    /// The database path.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> rusqlite::Result<i64> {
        self.conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
    }

    /// Every agent: `(id, token hash hex, state)`.
    pub fn load_agents(&self) -> rusqlite::Result<Vec<(String, String, AgentState)>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT id, token_hash, hostname, machine_id, distro, arch, kernel, version, mode, grp,
                    labels, enrolled_at, revoked_at, last_heartbeat_at, uptime_secs, capabilities,
                    journal_seq, journal_hash, flags, last_upgrade
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
            Ok((
                r.get(0)?,
                r.get(1)?,
                AgentState {
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
                },
            ))
        })?;
        rows.collect()
    }

    /// Stores a new enrollment key.
    pub fn insert_key(&self, k: &KeyRow) -> rusqlite::Result<()> {
        self.conn().execute(
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
        Ok(())
    }

    /// Enrolls an agent with the key whose hash is `key_hash`: in one transaction, marks the
    /// key used (only if still unused, recording `nonce_hash`) and inserts the agent. `state`
    /// gets the key's group and labels. Exactly one of many concurrent callers with the same
    /// key creates an agent; a later caller with the same nonce hash, before the key
    /// expires, gets [`Enrolled::Retry`] (the caller decides whether to honour it), any other
    /// gets [`KeyRefusal::Used`].
    pub fn enroll(
        &self,
        key_hash: &str,
        nonce_hash: Option<&str>,
        agent_id: &str,
        token_hash: &str,
        state: &mut AgentState,
        now_ms: i64,
    ) -> rusqlite::Result<Result<Enrolled, KeyRefusal>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let key: Option<KeyLookup> = tx
            .query_row(
                "SELECT id, expires_at, used_at, grp, labels, used_by, nonce_hash
                 FROM enroll_keys WHERE key_hash = ?1",
                [key_hash],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                },
            )
            .optional()?;
        let Some((key_id, expires_at, used_at, grp, labels, used_by, stored_nonce)) = key else {
            return Ok(Err(KeyRefusal::Unknown));
        };
        if used_at.is_some() {
            let same_nonce = match (nonce_hash, stored_nonce.as_deref()) {
                (Some(a), Some(b)) => crate::token::ct_eq_hex(a, b),
                _ => false,
            };
            return Ok(match used_by {
                Some(agent_id) if same_nonce && expires_at > now_ms => {
                    Ok(Enrolled::Retry { agent_id })
                }
                _ => Err(KeyRefusal::Used),
            });
        }
        if expires_at <= now_ms {
            return Ok(Err(KeyRefusal::Expired));
        }
        let marked = tx.execute(
            "UPDATE enroll_keys SET used_at = ?1, used_by = ?2, nonce_hash = ?3
             WHERE id = ?4 AND used_at IS NULL",
            params![now_ms, agent_id, nonce_hash, key_id],
        )?;
        if marked != 1 {
            return Ok(Err(KeyRefusal::Used));
        }
        state.group = grp;
        state.labels = serde_json::from_str(&labels).unwrap_or_default();
        tx.execute(
            "INSERT INTO agents (id, token_hash, key_id, hostname, machine_id, distro, arch, version,
                                 mode, grp, labels, enrolled_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                agent_id,
                token_hash,
                key_id,
                state.hostname,
                state.machine_id,
                state.distro,
                state.arch,
                state.version,
                state.mode,
                state.group,
                labels,
                now_ms
            ],
        )?;
        tx.commit()?;
        Ok(Ok(Enrolled::Created))
    }

    /// Replaces agent `id`'s token hash; false when there is no such agent.
    pub fn set_token(&self, id: &str, token_hash: &str) -> rusqlite::Result<bool> {
        let n = self.conn().execute(
            "UPDATE agents SET token_hash = ?1 WHERE id = ?2",
            params![token_hash, id],
        )?;
        Ok(n == 1)
    }

    /// Marks an agent revoked; false when there is no such agent.
    pub fn revoke(&self, id: &str, now_ms: i64) -> rusqlite::Result<bool> {
        let n = self.conn().execute(
            "UPDATE agents SET revoked_at = COALESCE(revoked_at, ?1) WHERE id = ?2",
            params![now_ms, id],
        )?;
        Ok(n == 1)
    }

    /// Deletes an agent; false when there is no such agent.
    pub fn delete(&self, id: &str) -> rusqlite::Result<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM agents WHERE id = ?1", [id])?
            == 1)
    }

    /// Stores an agent's latest diagnostics report (JSON text).
    pub fn store_diagnostics(&self, id: &str, report: &str, now_ms: i64) -> rusqlite::Result<bool> {
        let n = self.conn().execute(
            "UPDATE agents SET diagnostics = ?1, diagnostics_at = ?2 WHERE id = ?3",
            params![report, now_ms, id],
        )?;
        Ok(n == 1)
    }

    /// An agent's latest diagnostics report and when it arrived.
    pub fn diagnostics(&self, id: &str) -> rusqlite::Result<Option<(String, i64)>> {
        self.conn()
            .query_row(
                "SELECT diagnostics, diagnostics_at FROM agents WHERE id = ?1 AND diagnostics IS NOT NULL",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
    }

    /// Persists a batch of heartbeat states in one transaction. Rows of agents deleted since
    /// the snapshot match nothing and are skipped.
    pub fn flush_heartbeats(&self, batch: &[(String, AgentState)]) -> rusqlite::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut st = tx.prepare(
                "UPDATE agents SET distro = ?1, arch = ?2, kernel = ?3, version = ?4, mode = ?5,
                        last_heartbeat_at = ?6, uptime_secs = ?7, capabilities = ?8,
                        journal_seq = ?9, journal_hash = ?10, flags = ?11, last_upgrade = ?12
                 WHERE id = ?13",
            )?;
            for (id, s) in batch {
                // Serializing these types cannot fail (string keys, no foreign types).
                fn json<T: serde::Serialize>(v: &Option<T>) -> Option<String> {
                    v.as_ref().and_then(|v| serde_json::to_string(v).ok())
                }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hub.db");
        let p = p.to_str().unwrap();
        let db = Db::open(p).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        drop(db);
        let db = Db::open(p).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        db.conn().pragma_update(None, "user_version", 99).unwrap();
        drop(db);
        assert!(matches!(
            Db::open(p),
            Err(HubError::SchemaTooNew { found: 99, .. })
        ));
    }

    #[test]
    fn key_is_single_use() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("hub.db").to_str().unwrap()).unwrap();
        let k = KeyRow {
            id: "k_1".into(),
            key_hash: "h".into(),
            created_at_ms: 0,
            expires_at_ms: 10_000,
            group: Some("edge".into()),
            labels: BTreeMap::from([("a".into(), "b".into())]),
        };
        db.insert_key(&k).unwrap();
        let mut st = AgentState {
            hostname: "x".into(),
            ..Default::default()
        };
        assert_eq!(
            db.enroll("nope", None, "a_1", "t1", &mut st, 1).unwrap(),
            Err(KeyRefusal::Unknown)
        );
        let n1 = crate::token::hash_hex("nonce-1");
        let n2 = crate::token::hash_hex("nonce-2");
        assert_eq!(
            db.enroll("h", Some(&n1), "a_1", "t1", &mut st, 1).unwrap(),
            Ok(Enrolled::Created)
        );
        assert_eq!(st.group.as_deref(), Some("edge"));
        assert_eq!(
            db.enroll("h", None, "a_2", "t2", &mut st, 2).unwrap(),
            Err(KeyRefusal::Used)
        );
        assert_eq!(
            db.enroll("h", Some(&n2), "a_2", "t2", &mut st, 2).unwrap(),
            Err(KeyRefusal::Used)
        );
        // The same nonce before expiry: a retry of a_1, nothing created.
        assert_eq!(
            db.enroll("h", Some(&n1), "a_2", "t2", &mut st, 3).unwrap(),
            Ok(Enrolled::Retry {
                agent_id: "a_1".into()
            })
        );
        // After expiry: used.
        assert_eq!(
            db.enroll("h", Some(&n1), "a_2", "t2", &mut st, 10_000)
                .unwrap(),
            Err(KeyRefusal::Used)
        );
        assert!(db.set_token("a_1", "t9").unwrap());
        assert!(!db.set_token("a_x", "t9").unwrap());
        let k2 = KeyRow {
            id: "k_2".into(),
            key_hash: "h2".into(),
            ..k
        };
        db.insert_key(&k2).unwrap();
        assert_eq!(
            db.enroll("h2", None, "a_3", "t3", &mut st, 10_000).unwrap(),
            Err(KeyRefusal::Expired)
        );
        let agents = db.load_agents().unwrap();
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].1, "t9");
        assert_eq!(agents[0].2.labels.get("a").map(String::as_str), Some("b"));
    }
}
