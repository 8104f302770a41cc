//! The runs half of [`super::SqliteStore`]: each operation reads the run, asks
//! `crate::runs::step` what the event does, and writes the run back, in one immediate
//! transaction.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use outpost_proto::{RunEvent, RunResult, RunState};

use super::{fleet, logs};
use crate::runs::{
    gate, judge_result, log_step, offer_count, queue_full, step, Dispatch, Event, LogStep,
    ResultVerdict, Step,
};
use crate::store::{
    cancel_outcome, retry_id, AuditRow, DispatchChanged, Lease, NewRuns, Polled, RunFilter,
    RunRefusal, RunRow, RunsCreated, Swept,
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
        if let Some(full) = queue_check(&tx, new)? {
            return Ok(full);
        }
        let ids: Vec<&str> = new.runs.iter().map(|r| r.id.as_str()).collect();
        tx.execute(
            "INSERT INTO run_requests (key, request_hash, run_ids, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![key, hash, json(&ids), new.now_ms],
        )?;
    } else if let Some(full) = queue_check(&tx, new)? {
        return Ok(full);
    }
    for r in &new.runs {
        insert(&tx, r)?;
    }
    if let Some(a) = &new.audit {
        fleet::insert_audit_tx(&tx, a)?;
    }
    tx.commit()?;
    Ok(RunsCreated::New(new.runs.clone()))
}

/// Agent `agent_id`'s runs in flight (claimed, running, unknown).
fn held(tx: &Transaction, agent_id: &str) -> rusqlite::Result<usize> {
    let n: i64 = tx.query_row(
        "SELECT COUNT(*) FROM runs WHERE agent_id = ?1 AND state IN ('claimed', 'running', 'unknown')",
        [agent_id],
        |r| r.get(0),
    )?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// What decides dispatch to `agent_id` now, read inside the transaction.
fn dispatch_of(
    tx: &Transaction,
    agent_id: &str,
    max_in_flight: usize,
) -> rusqlite::Result<Dispatch> {
    Ok(Dispatch {
        stopped: fleet::stopped_tx(tx)?,
        drained: fleet::drained_tx(tx, agent_id)?,
        held: held(tx, agent_id)?,
        max_in_flight,
    })
}

/// [`RunsCreated::QueueFull`] for the first agent that `new` would take past its limit.
fn queue_check(tx: &Transaction, new: &NewRuns) -> rusqlite::Result<Option<RunsCreated>> {
    let mut adding: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &new.runs {
        *adding.entry(r.agent_id.as_str()).or_default() += 1;
    }
    for (agent, n) in adding {
        let queued: i64 = tx.query_row(
            "SELECT COUNT(*) FROM runs WHERE agent_id = ?1 AND state = 'queued'",
            [agent],
            |r| r.get(0),
        )?;
        let queued = usize::try_from(queued).unwrap_or(usize::MAX);
        if queue_full(queued, n, new.max_queued) {
            return Ok(Some(RunsCreated::QueueFull {
                agent_id: agent.to_string(),
                queued,
            }));
        }
    }
    Ok(None)
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
    max_in_flight: usize,
) -> rusqlite::Result<Polled> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for id in holding {
        if let Some(mut r) = load(&tx, id)?.filter(|r| r.agent_id == agent_id) {
            renew(&mut r, lease);
            save(&tx, &r)?;
        }
    }
    let mut polled = Polled::default();
    let d = dispatch_of(&tx, agent_id, max_in_flight)?;
    // At most every queued run: the count only bounds the query.
    let offers = offer_count(d, usize::MAX);
    if offers > 0 {
        let mut st = tx.prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE agent_id = ?1 AND state = 'queued'
             ORDER BY created_at, id LIMIT ?2"
        ))?;
        let limit = i64::try_from(offers).unwrap_or(i64::MAX);
        for r in st.query_map(params![agent_id, limit], run_row)? {
            polled.queued.push(r?);
        }
    }
    {
        let mut st = tx.prepare(
            "SELECT id FROM runs WHERE agent_id = ?1
               AND cancel_requested AND state IN ('claimed', 'running', 'unknown')
             ORDER BY created_at, id",
        )?;
        for id in st.query_map([agent_id], |r| r.get(0))? {
            polled.cancel.push(id?);
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
    max_in_flight: usize,
) -> rusqlite::Result<Result<RunRow, RunRefusal>> {
    let (tx, mut r) = match begin(conn, id, agent_id)? {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    if r.state == RunState::Queued {
        if let Err(g) = gate(dispatch_of(&tx, agent_id, max_in_flight)?) {
            return Ok(Err(RunRefusal::Gated(g)));
        }
    }
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
                match step(r.state, Event::Started) {
                    Step::To(to) => enter(&mut r, to, lease),
                    // A `started` that arrives after the result (uploads are retried and
                    // reordered) still says when the hub learned the run started.
                    _ => {
                        r.started_ms.get_or_insert(lease.now_ms);
                    }
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

pub(super) fn recent_events(
    conn: &mut Connection,
    id: &str,
    limit: usize,
) -> rusqlite::Result<Vec<RunEvent>> {
    let mut st = conn.prepare(
        "SELECT seq, kind, at, data FROM run_events WHERE run_id = ?1 ORDER BY seq DESC LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = st.query_map(params![id, limit], |row| {
        let seq: i64 = row.get(0)?;
        let data: String = row.get(3)?;
        Ok(RunEvent {
            seq: u64::try_from(seq).unwrap_or(0),
            kind: row.get(1)?,
            at: row.get(2)?,
            // Stored by `run_events` from a parsed FlatMap: it parses back.
            data: serde_json::from_str(&data).unwrap_or_default(),
        })
    })?;
    let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    out.reverse();
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn append_log(
    conn: &mut Connection,
    dir: &Path,
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
                // Written and synced before the new size commits (see `logs`).
                logs::write_at(dir, id, r.log_bytes, fresh)?;
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
    dir: &Path,
    id: &str,
    offset: u64,
    max: usize,
) -> rusqlite::Result<Option<(Vec<u8>, u64)>> {
    let tx = conn.transaction()?;
    let Some(r) = load(&tx, id)? else {
        return Ok(None);
    };
    // Only committed bytes: the file may hold more (an upload whose transaction failed).
    let len = r.log_bytes.saturating_sub(offset).min(max as u64);
    let out = if len == 0 {
        Vec::new()
    } else {
        logs::read(dir, id, offset, len)?
    };
    Ok(Some((out, r.log_bytes)))
}

pub(super) fn prune_runs(
    conn: &mut Connection,
    dir: &Path,
    before_ms: i64,
    max: usize,
) -> rusqlite::Result<Vec<String>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let ids: Vec<String> = {
        let mut st = tx.prepare(
            "SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < ?1
               AND state NOT IN ('queued', 'claimed', 'running', 'unknown')
             ORDER BY finished_at, id LIMIT ?2",
        )?;
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = st.query_map(params![before_ms, limit], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for id in &ids {
        // Events go with their run (ON DELETE CASCADE).
        tx.execute("DELETE FROM runs WHERE id = ?1", [id])?;
    }
    tx.execute(
        "DELETE FROM run_requests WHERE created_at < ?1",
        [before_ms],
    )?;
    tx.commit()?;
    // After the commit: a crash in between leaves a file without a run, never a run
    // without its log.
    for id in &ids {
        if let Err(e) = logs::remove(dir, id) {
            eprintln!("outpost-hub: cannot delete the log of deleted run {id}: {e}");
        }
    }
    Ok(ids)
}

pub(super) fn set_dispatch(
    conn: &mut Connection,
    stop: bool,
    cancel_in_flight: bool,
    audit: &AuditRow,
) -> rusqlite::Result<DispatchChanged> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if stop {
        tx.execute(
            "INSERT OR IGNORE INTO hub_settings (key, at, by) VALUES (?1, ?2, ?3)",
            params![fleet::STOPPED, audit.at_ms, audit.who],
        )?;
    } else {
        tx.execute("DELETE FROM hub_settings WHERE key = ?1", [fleet::STOPPED])?;
    }
    let mut changed = DispatchChanged::default();
    if stop && cancel_in_flight {
        let open: Vec<RunRow> = {
            let mut st = tx.prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM runs
                 WHERE state IN ('queued', 'claimed', 'running', 'unknown')
                 ORDER BY created_at, id"
            ))?;
            let rows = st.query_map([], run_row)?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let lease = Lease {
            now_ms: audit.at_ms,
            lease_ms: 0,
        };
        for mut r in open {
            match step(r.state, Event::Cancel) {
                Step::To(to) => {
                    enter(&mut r, to, lease);
                    changed.canceled.push((r.id.clone(), r.agent_id.clone()));
                }
                Step::RequestCancel => {
                    r.cancel_requested = true;
                    changed
                        .cancel_requested
                        .push((r.id.clone(), r.agent_id.clone()));
                }
                _ => continue,
            }
            save(&tx, &r)?;
        }
    }
    fleet::insert_audit_tx(&tx, audit)?;
    changed.dispatch = fleet::dispatch_tx(&tx)?;
    tx.commit()?;
    Ok(changed)
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
    mut audit: AuditRow,
) -> rusqlite::Result<Option<RunRow>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some(mut r) = load(&tx, id)? else {
        return Ok(None);
    };
    let before = r.state;
    let lease = Lease {
        now_ms: audit.at_ms,
        lease_ms: 0,
    };
    match step(r.state, Event::Cancel) {
        Step::To(to) => enter(&mut r, to, lease),
        Step::RequestCancel => r.cancel_requested = true,
        _ => {}
    }
    save(&tx, &r)?;
    audit.detail = cancel_outcome(before, &r);
    fleet::insert_audit_tx(&tx, &audit)?;
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
