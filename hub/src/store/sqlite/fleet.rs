//! The fleet controls half of [`super::SqliteStore`]: drained agents, the kill switch
//! (`hub_settings` row `dispatch_stopped`) and the audit log.

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::store::{AuditRow, DispatchRow};

/// The `hub_settings` key of the kill switch.
pub(super) const STOPPED: &str = "dispatch_stopped";

pub(super) fn insert_audit_tx(tx: &Transaction, a: &AuditRow) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO audit (at, who, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![a.at_ms, a.who, a.action, a.target, a.detail],
    )?;
    Ok(())
}

pub(super) fn insert_audit(conn: &mut Connection, a: &AuditRow) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    insert_audit_tx(&tx, a)?;
    tx.commit()
}

pub(super) fn audit_log(conn: &mut Connection, limit: usize) -> rusqlite::Result<Vec<AuditRow>> {
    let mut st = conn
        .prepare("SELECT at, who, action, target, detail FROM audit ORDER BY id DESC LIMIT ?1")?;
    let rows = st.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
        Ok(AuditRow {
            at_ms: r.get(0)?,
            who: r.get(1)?,
            action: r.get(2)?,
            target: r.get(3)?,
            detail: r.get(4)?,
        })
    })?;
    rows.collect()
}

pub(super) fn set_drained(
    conn: &mut Connection,
    ids: &[String],
    drain: bool,
    audit: &AuditRow,
) -> rusqlite::Result<Vec<String>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut found = Vec::new();
    for id in ids {
        let n = if drain {
            tx.execute(
                "UPDATE agents SET drained_at = COALESCE(drained_at, ?1),
                        drained_by = COALESCE(drained_by, ?2)
                 WHERE id = ?3",
                params![audit.at_ms, audit.who, id],
            )?
        } else {
            tx.execute(
                "UPDATE agents SET drained_at = NULL, drained_by = NULL WHERE id = ?1",
                [id],
            )?
        };
        if n == 1 {
            found.push(id.clone());
        }
    }
    insert_audit_tx(&tx, audit)?;
    tx.commit()?;
    Ok(found)
}

/// The kill switch inside a transaction.
pub(super) fn stopped_tx(tx: &Transaction) -> rusqlite::Result<bool> {
    Ok(tx
        .query_row(
            "SELECT 1 FROM hub_settings WHERE key = ?1",
            [STOPPED],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Is agent `id` drained (inside a transaction)? An agent not stored is not.
pub(super) fn drained_tx(tx: &Transaction, id: &str) -> rusqlite::Result<bool> {
    Ok(tx
        .query_row(
            "SELECT drained_at IS NOT NULL FROM agents WHERE id = ?1",
            [id],
            |r| r.get::<_, bool>(0),
        )
        .optional()?
        .unwrap_or(false))
}

pub(super) fn dispatch_tx(tx: &Transaction) -> rusqlite::Result<DispatchRow> {
    let stopped = tx
        .query_row(
            "SELECT at, by FROM hub_settings WHERE key = ?1",
            [STOPPED],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(DispatchRow { stopped })
}

pub(super) fn dispatch(conn: &mut Connection) -> rusqlite::Result<DispatchRow> {
    let tx = conn.transaction()?;
    dispatch_tx(&tx)
}
