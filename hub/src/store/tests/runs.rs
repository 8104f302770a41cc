//! The runs contract: transitions, claims, event seqs, log offsets, results, leases. Each
//! case uses its own run ids; times are explicit (the store never reads a clock).

use std::collections::BTreeMap;

use outpost_proto::{FlatMap, RunEvent, RunOutcome, RunResult, RunState};

use super::{audit_count, entry, last_audit};
use crate::store::{retry_id, Lease, NewRuns, RunFilter, RunRefusal, RunRow, RunsCreated, Store};

const LEASE: i64 = 1_000;
const AGENT: &str = "a_runs";
/// Limits of runs in flight and queued that the cases below never reach.
const MANY: usize = 10_000;

fn at(now_ms: i64) -> Lease {
    Lease {
        now_ms,
        lease_ms: LEASE,
    }
}

fn row(id: &str, idempotent: bool) -> RunRow {
    RunRow::queued(
        id.into(),
        AGENT.into(),
        "web".into(),
        "a".repeat(64),
        "restart".into(),
        BTreeMap::from([("unit".to_string(), "nginx".to_string())]),
        idempotent,
        10,
    )
}

async fn queue(store: &dyn Store, id: &str, idempotent: bool) -> RunRow {
    let r = row(id, idempotent);
    let new = NewRuns {
        idempotency: None,
        runs: vec![r.clone()],
        now_ms: 10,
        max_queued: MANY,
        audit: None,
    };
    assert_eq!(
        store.create_runs(new).await.unwrap(),
        RunsCreated::New(vec![r.clone()])
    );
    r
}

async fn state(store: &dyn Store, id: &str) -> RunState {
    store.run(id).await.unwrap().unwrap().state
}

fn result(outcome: RunOutcome, code: i32) -> RunResult {
    RunResult {
        outcome,
        exit_code: Some(code),
        signal: None,
        reason: String::new(),
        finished_at: "2024-01-01T00:00:00Z".into(),
        log_bytes: 0,
    }
}

fn event(seq: u64, kind: &str) -> RunEvent {
    RunEvent {
        seq,
        kind: kind.into(),
        at: "2024-01-01T00:00:00Z".into(),
        data: FlatMap::new(),
    }
}

pub(crate) async fn conformance(store: &dyn Store) {
    create_and_idempotency(store).await;
    transitions_table(store).await;
    two_claimants(store).await;
    event_seqs_are_idempotent(store).await;
    log_offsets(store).await;
    results_first_wins_and_late(store).await;
    leases_unknown_lost_requeue(store).await;
    cancel_table(store).await;
    poll_offers_and_renews(store).await;
}

async fn create_and_idempotency(store: &dyn Store) {
    let a = row("r_idem_1", false);
    let b = row("r_idem_2", false);
    let new = |runs: Vec<RunRow>, hash: &str| NewRuns {
        idempotency: Some(("key-1".into(), hash.into())),
        runs,
        now_ms: 10,
        max_queued: MANY,
        audit: Some(entry(10, "run_start", "agent a_runs")),
    };
    // The audit entry is written with new runs only, never for a retry or a refusal.
    let before = audit_count(store).await;
    assert_eq!(
        store.create_runs(new(vec![a.clone()], "h1")).await.unwrap(),
        RunsCreated::New(vec![a.clone()])
    );
    assert_eq!(audit_count(store).await, before + 1);
    assert_eq!(
        last_audit(store).await,
        Some(entry(10, "run_start", "agent a_runs"))
    );
    // The same key and request: the first runs, nothing new.
    assert_eq!(
        store.create_runs(new(vec![b.clone()], "h1")).await.unwrap(),
        RunsCreated::Existing(vec![a.clone()])
    );
    assert_eq!(store.run("r_idem_2").await.unwrap(), None);
    assert_eq!(
        store.create_runs(new(vec![b], "h2")).await.unwrap(),
        RunsCreated::KeyConflict
    );
    assert_eq!(
        audit_count(store).await,
        before + 1,
        "a retry or conflict audited"
    );
    let f = RunFilter {
        agent: Some(AGENT.into()),
        state: Some(RunState::Queued),
        limit: 100,
    };
    assert!(store.runs(&f).await.unwrap().iter().any(|r| r.id == a.id));
    let none = RunFilter {
        agent: Some("a_other".into()),
        ..f
    };
    assert!(store.runs(&none).await.unwrap().is_empty());
}

/// One step of a transitions case.
#[derive(Debug, Clone, Copy)]
enum Op {
    Claim(&'static str),
    Started,
    Result(RunOutcome),
}

async fn transitions_table(store: &dyn Store) {
    use RunOutcome as O;
    use RunState as S;
    #[rustfmt::skip]
    let cases: [(&str, &[Op], S); 6] = [
        ("r_t_claim",   &[Op::Claim("p1")], S::Claimed),
        ("r_t_run",     &[Op::Claim("p1"), Op::Started], S::Running),
        ("r_t_ok",      &[Op::Claim("p1"), Op::Started, Op::Result(O::Succeeded)], S::Succeeded),
        ("r_t_fail",    &[Op::Claim("p1"), Op::Started, Op::Result(O::Failed)], S::Failed),
        ("r_t_reject",  &[Op::Claim("p1"), Op::Result(O::Rejected)], S::Rejected),
        ("r_t_timeout", &[Op::Claim("p1"), Op::Started, Op::Result(O::TimedOut)], S::TimedOut),
    ];
    for (id, ops, want) in cases {
        queue(store, id, false).await;
        for op in ops {
            match op {
                Op::Claim(who) => {
                    store
                        .claim_run(id, AGENT, who, at(20), MANY)
                        .await
                        .unwrap()
                        .unwrap();
                }
                Op::Started => {
                    store
                        .run_events(id, AGENT, vec![event(1, "started")], at(30))
                        .await
                        .unwrap()
                        .unwrap();
                }
                Op::Result(o) => {
                    store
                        .finish_run(id, AGENT, result(*o, 0), 40)
                        .await
                        .unwrap()
                        .unwrap();
                }
            }
        }
        let r = store.run(id).await.unwrap().unwrap();
        assert_eq!(r.state, want, "{id}");
        assert_eq!(r.claimed_ms, Some(20), "{id}");
        if want.is_final() {
            assert_eq!(
                (r.finished_ms, r.lease_expires_ms),
                (Some(40), None),
                "{id}"
            );
        } else {
            assert!(r.lease_expires_ms.is_some(), "{id}");
        }
    }
    // A result for a queued run, events for a queued run, another agent's run.
    queue(store, "r_t_queued", false).await;
    let r = store
        .finish_run("r_t_queued", AGENT, result(O::Succeeded, 0), 40)
        .await
        .unwrap();
    assert_eq!(r, Err(RunRefusal::State(S::Queued)));
    let r = store
        .run_events("r_t_queued", AGENT, vec![event(1, "started")], at(30))
        .await
        .unwrap();
    assert_eq!(r, Err(RunRefusal::State(S::Queued)));
    let r = store
        .claim_run("r_t_queued", "a_other", "p1", at(20), MANY)
        .await
        .unwrap();
    assert_eq!(r, Err(RunRefusal::NotFound));
    let r = store
        .claim_run("r_nope", AGENT, "p1", at(20), MANY)
        .await
        .unwrap();
    assert_eq!(r, Err(RunRefusal::NotFound));
}

async fn two_claimants(store: &dyn Store) {
    queue(store, "r_claim", false).await;
    let (a, b) = tokio::join!(
        store.claim_run("r_claim", AGENT, "first", at(20), MANY),
        store.claim_run("r_claim", AGENT, "second", at(20), MANY),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    let loser = if a.is_ok() { b } else { a };
    assert_eq!(loser, Err(RunRefusal::Taken));
    let winner = store
        .run("r_claim")
        .await
        .unwrap()
        .unwrap()
        .claimant
        .unwrap();
    // The winner again: the run again (idempotent); the loser again: still taken.
    let again = store
        .claim_run("r_claim", AGENT, &winner, at(25), MANY)
        .await
        .unwrap();
    assert_eq!(again.map(|r| r.state), Ok(RunState::Claimed));
    let other = if winner == "first" { "second" } else { "first" };
    let r = store
        .claim_run("r_claim", AGENT, other, at(25), MANY)
        .await
        .unwrap();
    assert_eq!(r, Err(RunRefusal::Taken));
}

async fn event_seqs_are_idempotent(store: &dyn Store) {
    queue(store, "r_ev", false).await;
    store
        .claim_run("r_ev", AGENT, "p", at(20), MANY)
        .await
        .unwrap()
        .unwrap();
    #[rustfmt::skip]
    let cases: [(Vec<RunEvent>, u64, RunState); 4] = [
        (vec![event(1, "progress")],                      1, RunState::Claimed),
        (vec![event(2, "started"), event(3, "progress")], 3, RunState::Running),
        (vec![event(2, "started"), event(1, "progress")], 3, RunState::Running),
        (vec![],                                          3, RunState::Running),
    ];
    for (events, acked, want) in cases {
        let got = store
            .run_events("r_ev", AGENT, events, at(30))
            .await
            .unwrap();
        assert_eq!(got, Ok(acked));
        assert_eq!(state(store, "r_ev").await, want);
    }
}

async fn log_offsets(store: &dyn Store) {
    queue(store, "r_log", false).await;
    let r = store
        .append_log("r_log", AGENT, 0, b"x".to_vec(), 100, at(15))
        .await;
    assert_eq!(r.unwrap(), Err(RunRefusal::State(RunState::Queued)));
    store
        .claim_run("r_log", AGENT, "p", at(20), MANY)
        .await
        .unwrap()
        .unwrap();
    #[rustfmt::skip]
    let cases: [(u64, &[u8], Result<u64, RunRefusal>); 7] = [
        (0, b"hello",      Ok(5)),
        (5, b" world",     Ok(11)),
        (3, b"lo wor",     Ok(11)),   // entirely overlapping: trimmed to nothing
        (8, b"rld!",       Ok(12)),   // partly overlapping: only "!" is new
        (20, b"late",      Err(RunRefusal::Gap { expected: 12 })),
        (12, &[b'z'; 89],  Err(RunRefusal::TooLarge)),
        (12, &[b'z'; 88],  Ok(100)),
    ];
    for (offset, data, want) in cases {
        let got = store
            .append_log("r_log", AGENT, offset, data.to_vec(), 100, at(30))
            .await
            .unwrap();
        assert_eq!(got, want, "offset {offset}");
    }
    let (bytes, size) = store.read_log("r_log", 0, 12).await.unwrap().unwrap();
    assert_eq!((bytes.as_slice(), size), (&b"hello world!"[..], 100));
    let (bytes, _) = store.read_log("r_log", 4, 5).await.unwrap().unwrap();
    assert_eq!(bytes, b"o wor");
    let (bytes, _) = store.read_log("r_log", 100, 5).await.unwrap().unwrap();
    assert!(bytes.is_empty());
    assert_eq!(store.read_log("r_nope", 0, 5).await.unwrap(), None);
    assert_eq!(store.run("r_log").await.unwrap().unwrap().log_bytes, 100);
}

async fn results_first_wins_and_late(store: &dyn Store) {
    use RunOutcome as O;
    queue(store, "r_res", false).await;
    store
        .claim_run("r_res", AGENT, "p", at(20), MANY)
        .await
        .unwrap()
        .unwrap();
    let first = result(O::Failed, 3);
    #[rustfmt::skip]
    let cases: [(RunResult, Result<bool, RunRefusal>); 3] = [
        (first.clone(),          Ok(false)),
        (first.clone(),          Ok(true)),
        (result(O::Succeeded, 0), Err(RunRefusal::Conflict)),
    ];
    for (res, want) in cases {
        let got = store.finish_run("r_res", AGENT, res, 40).await.unwrap();
        assert_eq!(got.map(|(_, same)| same), want);
    }
    let r = store.run("r_res").await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.result, r.late),
        (RunState::Failed, Some(first), false)
    );
}

async fn leases_unknown_lost_requeue(store: &dyn Store) {
    const LOST_AFTER: i64 = 5_000;
    for (id, idem) in [("r_lease_idem", true), ("r_lease_once", false)] {
        queue(store, id, idem).await;
        store
            .claim_run(id, AGENT, "p", at(100), MANY)
            .await
            .unwrap()
            .unwrap();
    }
    // Lease ends at 1100: not yet at 1099.
    let s = store.sweep_runs(1_099, LOST_AFTER).await.unwrap();
    assert!(!s.unknown.iter().any(|i| i.starts_with("r_lease")));
    let s = store.sweep_runs(1_100, LOST_AFTER).await.unwrap();
    for id in ["r_lease_idem", "r_lease_once"] {
        assert!(s.unknown.contains(&id.to_string()), "{s:?}");
        assert_eq!(state(store, id).await, RunState::Unknown);
    }
    // A poll holding one makes it running again, with a new lease.
    let holding = vec!["r_lease_once".to_string()];
    store
        .poll_runs(AGENT, &holding, at(2_000), MANY)
        .await
        .unwrap();
    assert_eq!(state(store, "r_lease_once").await, RunState::Running);
    let r = store.run("r_lease_once").await.unwrap().unwrap();
    assert_eq!(
        (r.lease_expires_ms, r.unknown_since_ms),
        (Some(3_000), None)
    );
    // Both unknown again; lost after LOST_AFTER of being unknown.
    store.sweep_runs(3_000, LOST_AFTER).await.unwrap();
    let s = store.sweep_runs(6_100, LOST_AFTER).await.unwrap();
    assert!(s.lost.contains(&"r_lease_idem".to_string()), "{s:?}");
    assert!(!s.lost.contains(&"r_lease_once".to_string()), "{s:?}");
    let s = store.sweep_runs(8_000, LOST_AFTER).await.unwrap();
    assert!(s.lost.contains(&"r_lease_once".to_string()), "{s:?}");
    assert!(!s
        .requeued
        .iter()
        .any(|r| r.retry_of.as_deref() == Some("r_lease_once")));
    // The idempotent one was queued again as a new run; the other was not.
    let again = store.run(&retry_id("r_lease_idem")).await.unwrap().unwrap();
    assert_eq!(
        (again.state, again.retry_of.as_deref(), again.params.len()),
        (RunState::Queued, Some("r_lease_idem"), 1)
    );
    assert_eq!(store.run(&retry_id("r_lease_once")).await.unwrap(), None);
    // A second sweep changes nothing.
    let s = store.sweep_runs(9_000, LOST_AFTER).await.unwrap();
    assert!(!s.lost.iter().any(|i| i.starts_with("r_lease")));
    // A late result is stored, flagged.
    let (r, same) = store
        .finish_run(
            "r_lease_once",
            AGENT,
            result(RunOutcome::Succeeded, 0),
            9_500,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.state, r.late, same), (RunState::Succeeded, true, false));
}

async fn cancel_table(store: &dyn Store) {
    use RunState as S;
    #[rustfmt::skip]
    let cases: [(&str, u8, S, bool); 4] = [
        // id, how far it got (0 queued, 1 claimed, 2 running, 3 succeeded), state, requested
        ("r_c_queued",  0, S::Canceled,  false),
        ("r_c_claimed", 1, S::Claimed,   true),
        ("r_c_running", 2, S::Running,   true),
        ("r_c_done",    3, S::Succeeded, false),
    ];
    for (id, far, want, requested) in cases {
        queue(store, id, false).await;
        if far >= 1 {
            store
                .claim_run(id, AGENT, "p", at(20), MANY)
                .await
                .unwrap()
                .unwrap();
        }
        if far >= 2 {
            let ev = vec![event(1, "started")];
            store
                .run_events(id, AGENT, ev, at(30))
                .await
                .unwrap()
                .unwrap();
        }
        if far >= 3 {
            let res = result(RunOutcome::Succeeded, 0);
            store.finish_run(id, AGENT, res, 40).await.unwrap().unwrap();
        }
        let before = state(store, id).await;
        let r = store
            .cancel_run(id, entry(50, "run_cancel", id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.state, r.cancel_requested), (want, requested), "{id}");
        // Audited with the change, the detail replaced by what the cancel did.
        let e = last_audit(store).await.unwrap();
        assert_eq!((e.at_ms, e.target.as_str()), (50, id), "{id}");
        assert_eq!(e.detail, crate::store::cancel_outcome(before, &r), "{id}");
    }
    let before = audit_count(store).await;
    assert_eq!(
        store
            .cancel_run("r_nope", entry(50, "run_cancel", "r_nope"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        audit_count(store).await,
        before,
        "an unknown run's cancel audited"
    );
    // A canceled queued run cannot be claimed; a requested one ends canceled by its result.
    let r = store
        .claim_run("r_c_queued", AGENT, "p", at(60), MANY)
        .await
        .unwrap();
    assert_eq!(r, Err(RunRefusal::State(S::Canceled)));
    let res = result(RunOutcome::Canceled, 143);
    let (r, _) = store
        .finish_run("r_c_running", AGENT, res, 70)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.state, S::Canceled);
}

async fn poll_offers_and_renews(store: &dyn Store) {
    let agent = "a_poll";
    let mk = |id: &str| RunRow {
        agent_id: agent.into(),
        ..row(id, false)
    };
    let (a, b) = (mk("r_p_1"), mk("r_p_2"));
    let new = NewRuns {
        idempotency: None,
        runs: vec![a.clone(), b.clone()],
        now_ms: 10,
        max_queued: MANY,
        audit: None,
    };
    store.create_runs(new).await.unwrap();
    let p = store.poll_runs(agent, &[], at(20), MANY).await.unwrap();
    assert_eq!(p.queued, vec![a, b]);
    assert!(p.cancel.is_empty());
    store
        .claim_run("r_p_1", agent, "p", at(20), MANY)
        .await
        .unwrap()
        .unwrap();
    store
        .cancel_run("r_p_1", entry(30, "run_cancel", "r_p_1"))
        .await
        .unwrap();
    // Someone else's id in holding is ignored.
    let holding = vec!["r_p_1".to_string(), "r_res".to_string()];
    let p = store
        .poll_runs(agent, &holding, at(500), MANY)
        .await
        .unwrap();
    assert_eq!(
        p.queued.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["r_p_2"]
    );
    assert_eq!(p.cancel, ["r_p_1"]);
    let r = store.run("r_p_1").await.unwrap().unwrap();
    assert_eq!(r.lease_expires_ms, Some(1_500));
    assert_eq!(
        store.run("r_res").await.unwrap().unwrap().lease_expires_ms,
        None
    );
}
