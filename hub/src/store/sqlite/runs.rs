//! The runs half of [`super::SqliteStore`]: each operation reads the run, asks
//! `crate::runs::step` what the event does, and writes the run back, in one immediate
//! transaction.

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use outpost_proto::{RunEvent, RunResult, RunState};

use crate::runs::{judge_result, log_step, step, Event, LogStep, ResultVerdict, Step};
use crate::store::{
    retry_id, Lease, NewRuns, Polled, RunFilter, RunRefusal, RunRow, RunsCreated, Swept,
};

/// The columns [`run_row`] reads, in order.
const RUN_COLUMNS: &str = "id, agent_id, pack, sha256, action, params, idempotent, state,
    created_at, claimed_at, started_at, finished_at, lease_expires_at, unknown_since,
    claimant, cancel_requested, result, late, log_bytes, retry_of";

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    let params: String = r.get(5)?;
    let state: String = r.get(7)?;
    let result: Option<String> = r.get(16)?;
    let log_bytes: i64 = r.get(18)?;
    Ok(RunRow {
        id: r.get(0)?,
        agent_id: r.get(1)?,
        pack: r.get(2)?,
        sha256: r.get(3)?,
        action: r.get(4)?,
        params: serde_json::from_str(&params).unwrap_or_default(),
        idempotent: r.get(6)?,
        // The column's CHECK admits only the states' names.
        state: RunState::parse(&state).unwrap_or(RunState::Unknown),
        created_ms: r.get(8)?,
        claimed_ms: r.get(9)?,
        started_ms: r.get(10)?,
        finished_ms: r.get(11)?,
        lease_expires_ms: r.get(12)?,
        unknown_since_ms: r.get(13)?,
        claimant: r.get(14)?,
        cancel_requested: r.get(15)?,
        result: result.and_then(|t| serde_json::from_str(&t).ok()),
        late: r.get(17)?,
        log_bytes: u64::try_from(log_bytes).unwrap_or(0),
        retry_of: r.get(19)?,
    })
}

fn json<T: serde::Serialize>(v: &T) -> String {
    // Maps of strings and plain structs serialize without failing.
    serde_json::to_string(v).unwrap_or_default()
}

fn insert(tx: &Transaction, r: &RunRow) -> rusqlite::Result<()> {
    tx.execute(
        &format!("INSERT INTO runs ({RUN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"),
        params![
            r.id, r.agent_id, r.pack, r.sha256, r.action, json(&r.params), r.idempotent,
            r.state.as_str(), r.created_ms, r.claimed_ms, r.started_ms, r.finished_ms,
            r.lease_expires_ms, r.unknown_since_ms, r.claimant, r.cancel_requested,
            r.result.as_ref().map(json), r.late, i64::try_from(r.log_bytes).unwrap_or(i64::MAX),
            r.retry_of
        ],
    )?;
    Ok(())
}

/// Writes back the mutable columns of `r`.
fn save(tx: &Transaction, r: &RunRow) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE runs SET state = ?1, claimed_at = ?2, started_at = ?3, finished_at = ?4,
                lease_expires_at = ?5, unknown_since = ?6, claimant = ?7, cancel_requested = ?8,
                result = ?9, late = ?10, log_bytes = ?11
         WHERE id = ?12",
        params![
            r.state.as_str(),
            r.claimed_ms,
            r.started_ms,
            r.finished_ms,
            r.lease_expires_ms,
            r.unknown_since_ms,
            r.claimant,
            r.cancel_requested,
            r.result.as_ref().map(json),
            r.late,
            i64::try_from(r.log_bytes).unwrap_or(i64::MAX),
            r.id
        ],
    )?;
    Ok(())
}

fn load(tx: &Transaction, id: &str) -> rusqlite::Result<Option<RunRow>> {
    tx.query_row(
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
        [id],
        run_row,
    )
    .optional()
}

/// Run `id` of `agent_id` in an immediate transaction, or `NotFound`.
fn begin<'c>(
    conn: &'c mut Connection,
    id: &str,
    agent_id: &str,
) -> rusqlite::Result<Result<(Transaction<'c>, RunRow), RunRefusal>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    match load(&tx, id)? {
        Some(r) if r.agent_id == agent_id => Ok(Ok((tx, r))),
        _ => Ok(Err(RunRefusal::NotFound)),
    }
}

/// Moves `r` to `to` at `now`, stamping the times and the lease of the new state.
fn enter(r: &mut RunRow, to: RunState, lease: Lease) {
    let held = to.is_held() && to != RunState::Unknown;
    if to == RunState::Claimed && r.claimed_ms.is_none() {
        r.claimed_ms = Some(lease.now_ms);
    }
    if to == RunState::Running && r.started_ms.is_none() {
        r.started_ms = Some(lease.now_ms);
    }
    if held {
        r.lease_expires_ms = Some(lease.now_ms.saturating_add(lease.lease_ms));
        r.unknown_since_ms = None;
    } else if to == RunState::Unknown {
        r.unknown_since_ms.get_or_insert(lease.now_ms);
    } else if to.is_final() {
        r.lease_expires_ms = None;
        r.finished_ms.get_or_insert(lease.now_ms);
    }
    r.state = to;
}

/// Renews the lease of a held run (an `unknown` one is `running` again).
fn renew(r: &mut RunRow, lease: Lease) {
    if let Step::To(to) = step(r.state, Event::Renew) {
        enter(r, to, lease);
    }
}

pub(super) fn create_runs(conn: &mut Connection, new: &NewRuns) -> rusqlite::Result<RunsCreated> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some((key, hash)) = &new.idempotency {
        let seen: Option<(String, String)> = tx
            .query_row(
                "SELECT request_hash, run_ids FROM run_requests WHERE key = ?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((seen_hash, ids)) = seen {
            if &seen_hash != hash {
                return Ok(RunsCreated::KeyConflict);
            }
            let ids: Vec<String> = serde_json::from_str(&ids).unwrap_or_default();
            let mut runs = Vec::new();
            for id in ids {
                runs.extend(load(&tx, &id)?);
            }
            return Ok(RunsCreated::Existing(runs));
        }
        let ids: Vec<&str> = new.runs.iter().map(|r| r.id.as_str()).collect();
        tx.execute(
            "INSERT INTO run_requests (key, request_hash, run_ids, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![key, hash, json(&ids), new.now_ms],
        )?;
    }
    for r in &new.runs {
        insert(&tx, r)?;
    }
    tx.commit()?;
    Ok(RunsCreated::New(new.runs.clone()))
}

pub(super) fn run(conn: &mut Connection, id: &str) -> rusqlite::Result<Option<RunRow>> {
    conn.query_row(
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
        [id],
        run_row,
    )
    .optional()
}

pub(super) fn runs(conn: &mut Connection, f: &RunFilter) -> rusqlite::Result<Vec<RunRow>> {
    let mut st = conn.prepare(&format!(
        "SELECT {RUN_COLUMNS} FROM runs
         WHERE (?1 IS NULL OR agent_id = ?1) AND (?2 IS NULL OR state = ?2)
         ORDER BY created_at DESC, id LIMIT ?3"
    ))?;
    let limit = i64::try_from(f.limit).unwrap_or(i64::MAX);
    let rows = st.query_map(
        params![f.agent, f.state.map(RunState::as_str), limit],
        run_row,
    )?;
    rows.collect()
}

pub(super) fn poll_runs(
    conn: &mut Connection,
    agent_id: &str,
    holding: &[String],
    lease: Lease,
) -> rusqlite::Result<Polled> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for id in holding {
        if let Some(mut r) = load(&tx, id)?.filter(|r| r.agent_id == agent_id) {
            renew(&mut r, lease);
            save(&tx, &r)?;
        }
    }
    let mut polled = Polled::default();
    {
        let mut st = tx.prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE agent_id = ?1
               AND (state = 'queued' OR (cancel_requested AND state IN ('claimed', 'running', 'unknown')))
             ORDER BY created_at, id"
        ))?;
        for r in st.query_map([agent_id], run_row)? {
            let r = r?;
            if r.state == RunState::Queued {
                polled.queued.push(r);
            } else {
                polled.cancel.push(r.id);
            }
        }
    }
    tx.commit()?;
    Ok(polled)
}

pub(super) fn claim_run(
    conn: &mut Connection,
    id: &str,
    agent_id: &str,
    claimant: &str,
    lease: Lease,
) -> rusqlite::Result<Result<RunRow, RunRefusal>> {
    let (tx, mut r) = match begin(conn, id, agent_id)? {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    let ev = Event::Claim {
        by: claimant,
        holder: r.claimant.as_deref(),
    };
    match step(r.state, ev) {
        Step::To(to) => {
            r.claimant = Some(claimant.to_string());
            enter(&mut r, to, lease);
            renew(&mut r, lease);
        }
        Step::Taken => return Ok(Err(RunRefusal::Taken)),
        other => return Ok(Err(RunRefusal::State(refused_state(other, r.state)))),
    }
    save(&tx, &r)?;
    tx.commit()?;
    Ok(Ok(r))
}

fn refused_state(s: Step, current: RunState) -> RunState {
    match s {
        Step::Refused(s) => s,
        _ => current,
    }
}

pub(super) fn run_events(
    conn: &mut Connection,
    id: &str,
    agent_id: &str,
    events: &[RunEvent],
    lease: Lease,
) -> rusqlite::Result<Result<u64, RunRefusal>> {
    let (tx, mut r) = match begin(conn, id, agent_id)? {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    if r.state == RunState::Queued {
        return Ok(Err(RunRefusal::State(r.state)));
    }
    {
        let mut st = tx.prepare(
            "INSERT OR IGNORE INTO run_events (run_id, seq, kind, at, data) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for e in events {
            let seq = i64::try_from(e.seq).unwrap_or(i64::MAX);
            st.execute(params![id, seq, e.kind, e.at, json(&e.data)])?;
            if e.kind == "started" {
                if let Step::To(to) = step(r.state, Event::Started) {
                    enter(&mut r, to, lease);
                }
            }
        }
    }
    renew(&mut r, lease);
    save(&tx, &r)?;
    let acked: Option<i64> = tx.query_row(
        "SELECT MAX(seq) FROM run_events WHERE run_id = ?1",
        [id],
        |row| row.get(0),
    )?;
    tx.commit()?;
    Ok(Ok(acked.and_then(|s| u64::try_from(s).ok()).unwrap_or(0)))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn append_log(
    conn: &mut Connection,
    id: &str,
    agent_id: &str,
    offset: u64,
    data: &[u8],
    cap: u64,
    lease: Lease,
) -> rusqlite::Result<Result<u64, RunRefusal>> {
    let (tx, mut r) = match begin(conn, id, agent_id)? {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    if r.state == RunState::Queued || r.state == RunState::Canceled && r.claimed_ms.is_none() {
        return Ok(Err(RunRefusal::State(r.state)));
    }
    match log_step(r.log_bytes, offset, data.len(), cap) {
        LogStep::Gap { expected } => return Ok(Err(RunRefusal::Gap { expected })),
        LogStep::TooLarge => return Ok(Err(RunRefusal::TooLarge)),
        LogStep::Append { skip } => {
            let fresh = data.get(skip..).unwrap_or_default();
            if !fresh.is_empty() {
                tx.execute(
                    "INSERT INTO run_logs (run_id, offset, data) VALUES (?1, ?2, ?3)",
                    params![id, i64::try_from(r.log_bytes).unwrap_or(i64::MAX), fresh],
                )?;
                r.log_bytes += fresh.len() as u64;
            }
        }
    }
    renew(&mut r, lease);
    save(&tx, &r)?;
    tx.commit()?;
    Ok(Ok(r.log_bytes))
}

pub(super) fn read_log(
    conn: &mut Connection,
    id: &str,
    offset: u64,
    max: usize,
) -> rusqlite::Result<Option<(Vec<u8>, u64)>> {
    let tx = conn.transaction()?;
    let Some(r) = load(&tx, id)? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    {
        let from = i64::try_from(offset).unwrap_or(i64::MAX);
        let mut st = tx.prepare(
            "SELECT offset, data FROM run_logs WHERE run_id = ?1 AND offset + length(data) > ?2
             ORDER BY offset",
        )?;
        let mut rows = st.query(params![id, from])?;
        while let Some(row) = rows.next()? {
            let at: i64 = row.get(0)?;
            let data: Vec<u8> = row.get(1)?;
            let skip = usize::try_from(from.saturating_sub(at)).unwrap_or(0);
            out.extend_from_slice(data.get(skip..).unwrap_or_default());
            if out.len() >= max {
                out.truncate(max);
                break;
            }
        }
    }
    Ok(Some((out, r.log_bytes)))
}

pub(super) fn finish_run(
    conn: &mut Connection,
    id: &str,
    agent_id: &str,
    result: &RunResult,
    now_ms: i64,
) -> rusqlite::Result<Result<(RunRow, bool), RunRefusal>> {
    let (tx, mut r) = match begin(conn, id, agent_id)? {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    match judge_result(r.result.as_ref(), result) {
        ResultVerdict::Same => return Ok(Ok((r, true))),
        ResultVerdict::Conflict => return Ok(Err(RunRefusal::Conflict)),
        ResultVerdict::First => {}
    }
    let lease = Lease {
        now_ms,
        lease_ms: 0,
    };
    match step(r.state, Event::Result(result.outcome)) {
        Step::To(to) => enter(&mut r, to, lease),
        Step::Late(to) => {
            r.late = true;
            r.finished_ms = Some(now_ms);
            enter(&mut r, to, lease);
        }
        other => return Ok(Err(RunRefusal::State(refused_state(other, r.state)))),
    }
    r.result = Some(result.clone());
    save(&tx, &r)?;
    tx.commit()?;
    Ok(Ok((r, false)))
}

pub(super) fn cancel_run(
    conn: &mut Connection,
    id: &str,
    now_ms: i64,
) -> rusqlite::Result<Option<RunRow>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some(mut r) = load(&tx, id)? else {
        return Ok(None);
    };
    let lease = Lease {
        now_ms,
        lease_ms: 0,
    };
    match step(r.state, Event::Cancel) {
        Step::To(to) => enter(&mut r, to, lease),
        Step::RequestCancel => r.cancel_requested = true,
        _ => {}
    }
    save(&tx, &r)?;
    tx.commit()?;
    Ok(Some(r))
}

pub(super) fn sweep_runs(
    conn: &mut Connection,
    now_ms: i64,
    lost_after_ms: i64,
) -> rusqlite::Result<Swept> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let due: Vec<RunRow> = {
        let mut st = tx.prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM runs
             WHERE (state IN ('claimed', 'running') AND lease_expires_at <= ?1)
                OR (state = 'unknown' AND unknown_since <= ?2)
             ORDER BY created_at, id"
        ))?;
        let rows = st.query_map(
            params![now_ms, now_ms.saturating_sub(lost_after_ms)],
            run_row,
        )?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let lease = Lease {
        now_ms,
        lease_ms: 0,
    };
    let mut swept = Swept::default();
    for mut r in due {
        let ev = if r.state == RunState::Unknown {
            Event::LostAfter
        } else {
            Event::LeaseExpired
        };
        let Step::To(to) = step(r.state, ev) else {
            continue;
        };
        enter(&mut r, to, lease);
        save(&tx, &r)?;
        if to == RunState::Unknown {
            swept.unknown.push(r.id.clone());
            continue;
        }
        swept.lost.push(r.id.clone());
        if r.idempotent {
            let mut again = RunRow::queued(
                retry_id(&r.id),
                r.agent_id.clone(),
                r.pack.clone(),
                r.sha256.clone(),
                r.action.clone(),
                r.params.clone(),
                true,
                now_ms,
            );
            again.retry_of = Some(r.id.clone());
            insert(&tx, &again)?;
            swept.requeued.push(again);
        }
    }
    tx.commit()?;
    Ok(swept)
}
