//! The fleet controls contract: runs in flight and queued per agent, drain, the kill switch,
//! the audit log and retention. Runs after the runs suite (the kill switch and retention
//! reach every run of the store, so these cases assert only about their own runs).

use std::collections::BTreeMap;

use outpost_proto::{RunOutcome, RunResult, RunState};

use super::new_agent;
use crate::runs::Gate;
use crate::store::{AuditRow, Lease, NewRuns, RunRefusal, RunRow, RunsCreated, Store};

const MANY: usize = 10_000;

fn at(now_ms: i64) -> Lease {
    Lease {
        now_ms,
        lease_ms: 1_000_000,
    }
}

fn row(id: &str, agent: &str) -> RunRow {
    RunRow::queued(
        id.into(),
        agent.into(),
        "web".into(),
        "b".repeat(64),
        "restart".into(),
        BTreeMap::new(),
        false,
        10,
    )
}

fn new(runs: Vec<RunRow>, max_queued: usize, key: Option<&str>) -> NewRuns {
    NewRuns {
        idempotency: key.map(|k| (k.to_string(), "h".to_string())),
        runs,
        now_ms: 10,
        max_queued,
        audit: None,
    }
}

async fn queue(store: &dyn Store, ids: &[&str], agent: &str) {
    let runs: Vec<RunRow> = ids.iter().map(|id| row(id, agent)).collect();
    let got = store
        .create_runs(new(runs.clone(), MANY, None))
        .await
        .unwrap();
    assert_eq!(got, RunsCreated::New(runs));
}

fn ok(code: i32) -> RunResult {
    RunResult {
        outcome: RunOutcome::Succeeded,
        exit_code: Some(code),
        signal: None,
        reason: String::new(),
        finished_at: "2024-01-01T00:00:00Z".into(),
        log_bytes: 0,
    }
}

fn audit(at_ms: i64, who: &str, action: &str, target: &str) -> AuditRow {
    AuditRow {
        at_ms,
        who: who.into(),
        action: action.into(),
        target: target.into(),
        detail: String::new(),
    }
}

/// Agent `id`'s drain as stored.
async fn loaded(store: &dyn Store, id: String) -> (Option<i64>, Option<String>) {
    let all = store.load_agents().await.unwrap();
    let st = all.into_iter().find(|x| x.id == id).unwrap().state;
    (st.drained_at_ms, st.drained_by)
}

async fn offered(store: &dyn Store, agent: &str, max: usize) -> Vec<String> {
    let p = store.poll_runs(agent, &[], at(50), max).await.unwrap();
    p.queued.into_iter().map(|r| r.id).collect()
}

pub(crate) async fn conformance(store: &dyn Store) {
    in_flight_limit(store).await;
    queued_limit_is_all_or_none(store).await;
    drain_and_undrain(store).await;
    kill_switch(store).await;
    retention(store).await;
}

async fn in_flight_limit(store: &dyn Store) {
    let a = new_agent(store, "fl_1").await;
    queue(store, &["r_fl_1", "r_fl_2", "r_fl_3"], &a).await;
    assert_eq!(offered(store, &a, 2).await, ["r_fl_1", "r_fl_2"]);
    assert_eq!(offered(store, &a, 1).await, ["r_fl_1"]);
    for id in ["r_fl_1", "r_fl_2"] {
        store
            .claim_run(id, &a, "p", at(60), 2)
            .await
            .unwrap()
            .unwrap();
    }
    // Two held: no offer, and a claim of the third is refused (it stays queued).
    assert!(offered(store, &a, 2).await.is_empty());
    assert_eq!(
        store.claim_run("r_fl_3", &a, "p", at(60), 2).await.unwrap(),
        Err(RunRefusal::Gated(Gate::InFlightFull { max: 2 }))
    );
    assert_eq!(
        store.run("r_fl_3").await.unwrap().unwrap().state,
        RunState::Queued
    );
    // A claimant claiming its own held run again is a retry, not a new run in flight.
    assert!(store
        .claim_run("r_fl_1", &a, "p", at(61), 2)
        .await
        .unwrap()
        .is_ok());
    // One finishes: room for one again.
    store
        .finish_run("r_fl_1", &a, ok(0), 70)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(offered(store, &a, 2).await, ["r_fl_3"]);
    assert!(store
        .claim_run("r_fl_3", &a, "p", at(80), 2)
        .await
        .unwrap()
        .is_ok());
}

async fn queued_limit_is_all_or_none(store: &dyn Store) {
    let (a, b) = (
        new_agent(store, "fq_1").await,
        new_agent(store, "fq_2").await,
    );
    let two = vec![row("r_fq_1", &a), row("r_fq_2", &a)];
    assert_eq!(
        store.create_runs(new(two.clone(), 2, None)).await.unwrap(),
        RunsCreated::New(two)
    );
    // A fan-out to both: a_fq_1 is full, so neither gets a run; the key is not used up.
    let fan = vec![row("r_fq_3", &a), row("r_fq_4", &b)];
    assert_eq!(
        store
            .create_runs(new(fan.clone(), 2, Some("fq-key")))
            .await
            .unwrap(),
        RunsCreated::QueueFull {
            agent_id: a.clone(),
            queued: 2
        }
    );
    assert_eq!(store.run("r_fq_4").await.unwrap(), None);
    // One agent's runs counted together: two new ones for an agent with one free slot.
    let c = new_agent(store, "fq_3").await;
    queue(store, &["r_fq_5"], &c).await;
    let pair = vec![row("r_fq_6", &c), row("r_fq_7", &c)];
    assert!(matches!(
        store.create_runs(new(pair, 2, None)).await.unwrap(),
        RunsCreated::QueueFull { queued: 1, .. }
    ));
    // Room again once a queued run is claimed: the same key creates now.
    store
        .claim_run("r_fq_1", &a, "p", at(20), MANY)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .create_runs(new(fan.clone(), 2, Some("fq-key")))
            .await
            .unwrap(),
        RunsCreated::New(fan)
    );
}

async fn drain_and_undrain(store: &dyn Store) {
    let a = new_agent(store, "fd_1").await;
    queue(store, &["r_fd_held", "r_fd_queued"], &a).await;
    store
        .claim_run("r_fd_held", &a, "p", at(20), MANY)
        .await
        .unwrap()
        .unwrap();
    let ids = vec![a.clone(), "a_fd_missing".to_string()];
    let got = store
        .set_drained(
            &ids,
            true,
            audit(100, "admin token", "drain", "agent a_fd_1"),
        )
        .await
        .unwrap();
    assert_eq!(got, std::slice::from_ref(&a));
    assert_eq!(
        loaded(store, a.clone()).await,
        (Some(100), Some("admin token".into()))
    );
    // Drained again by someone else: the first time and who stay.
    store
        .set_drained(
            &ids,
            true,
            audit(200, "dashboard session x", "drain", "agent a_fd_1"),
        )
        .await
        .unwrap();
    assert_eq!(
        loaded(store, a.clone()).await,
        (Some(100), Some("admin token".into()))
    );
    // No offer and no claim of the queued run; the held one still delivers and cancels.
    assert!(offered(store, &a, MANY).await.is_empty());
    assert_eq!(
        store
            .claim_run("r_fd_queued", &a, "p", at(210), MANY)
            .await
            .unwrap(),
        Err(RunRefusal::Gated(Gate::Drained))
    );
    store
        .cancel_run(
            "r_fd_held",
            audit(220, "admin token", "run_cancel", "run r_fd_held"),
        )
        .await
        .unwrap();
    let p = store.poll_runs(&a, &[], at(230), MANY).await.unwrap();
    assert_eq!(p.cancel, ["r_fd_held"]);
    assert!(store
        .append_log("r_fd_held", &a, 0, b"bye".to_vec(), 100, at(240))
        .await
        .unwrap()
        .is_ok());
    let (done, _) = store
        .finish_run("r_fd_held", &a, ok(0), 250)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.state, RunState::Succeeded);
    // Undrained: offered again.
    let got = store
        .set_drained(
            &ids,
            false,
            audit(300, "admin token", "undrain", "agent a_fd_1"),
        )
        .await
        .unwrap();
    assert_eq!(got, std::slice::from_ref(&a));
    assert_eq!(loaded(store, a.clone()).await, (None, None));
    assert_eq!(offered(store, &a, MANY).await, ["r_fd_queued"]);
    let log = store.audit_log(4).await.unwrap();
    let actions: Vec<(i64, &str, &str)> = log
        .iter()
        .map(|e| (e.at_ms, e.who.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            (300, "admin token", "undrain"),
            (220, "admin token", "run_cancel"),
            (200, "dashboard session x", "drain"),
            (100, "admin token", "drain")
        ]
    );
    assert_eq!(log[0].target, "agent a_fd_1");
}

async fn kill_switch(store: &dyn Store) {
    let a = new_agent(store, "fk_1").await;
    queue(store, &["r_fk_held", "r_fk_queued", "r_fk_done"], &a).await;
    store
        .claim_run("r_fk_held", &a, "p", at(20), MANY)
        .await
        .unwrap()
        .unwrap();
    store
        .claim_run("r_fk_done", &a, "p", at(20), MANY)
        .await
        .unwrap()
        .unwrap();
    store
        .finish_run("r_fk_done", &a, ok(0), 30)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.dispatch().await.unwrap().stopped, None);
    let c = store
        .set_dispatch(
            true,
            false,
            audit(400, "admin token", "dispatch_stop", "all"),
        )
        .await
        .unwrap();
    assert_eq!(c.dispatch.stopped, Some((400, "admin token".into())));
    assert!(c.canceled.is_empty() && c.cancel_requested.is_empty());
    // Stopped again by another: the first time and who stay.
    store
        .set_dispatch(true, false, audit(410, "other", "dispatch_stop", "all"))
        .await
        .unwrap();
    assert_eq!(
        store.dispatch().await.unwrap().stopped,
        Some((400, "admin token".into()))
    );
    assert!(offered(store, &a, MANY).await.is_empty());
    assert_eq!(
        store
            .claim_run("r_fk_queued", &a, "p", at(420), MANY)
            .await
            .unwrap(),
        Err(RunRefusal::Gated(Gate::Stopped))
    );
    let c = store
        .set_dispatch(
            false,
            false,
            audit(430, "admin token", "dispatch_start", "all"),
        )
        .await
        .unwrap();
    assert_eq!(c.dispatch.stopped, None);
    assert!(offered(store, &a, MANY)
        .await
        .contains(&"r_fk_queued".to_string()));
    // Stop and cancel everything in flight: queued → canceled, held → cancel_requested,
    // final → untouched.
    let c = store
        .set_dispatch(
            true,
            true,
            audit(440, "admin token", "dispatch_stop", "all"),
        )
        .await
        .unwrap();
    let mine = |v: &[(String, String)]| -> Vec<String> {
        v.iter()
            .filter(|(_, ag)| *ag == a)
            .map(|(id, _)| id.clone())
            .collect()
    };
    assert_eq!(mine(&c.canceled), ["r_fk_queued"]);
    assert_eq!(mine(&c.cancel_requested), ["r_fk_held"]);
    let r = |id: &'static str| async move { store.run(id).await.unwrap().unwrap() };
    assert_eq!(r("r_fk_queued").await.state, RunState::Canceled);
    let held = r("r_fk_held").await;
    assert!(
        held.cancel_requested && held.state == RunState::Claimed,
        "{held:?}"
    );
    assert_eq!(r("r_fk_done").await.state, RunState::Succeeded);
    // Polls still deliver cancels while stopped.
    let p = store.poll_runs(&a, &[], at(450), MANY).await.unwrap();
    assert_eq!(p.cancel, ["r_fk_held"]);
    store
        .set_dispatch(
            false,
            false,
            audit(460, "admin token", "dispatch_start", "all"),
        )
        .await
        .unwrap();
    let log = store.audit_log(2).await.unwrap();
    assert_eq!(
        log.iter()
            .map(|e| (e.at_ms, e.action.as_str()))
            .collect::<Vec<_>>(),
        [(460, "dispatch_start"), (440, "dispatch_stop")]
    );
}

async fn retention(store: &dyn Store) {
    let a = new_agent(store, "fr_1").await;
    queue(store, &["r_fr_old", "r_fr_young", "r_fr_open"], &a).await;
    for id in ["r_fr_old", "r_fr_young", "r_fr_open"] {
        store
            .claim_run(id, &a, "p", at(20), MANY)
            .await
            .unwrap()
            .unwrap();
        store
            .append_log(id, &a, 0, b"some log".to_vec(), 100, at(20))
            .await
            .unwrap()
            .unwrap();
    }
    store
        .finish_run("r_fr_old", &a, ok(0), 5_000_000)
        .await
        .unwrap()
        .unwrap();
    store
        .finish_run("r_fr_young", &a, ok(0), 9_000_000)
        .await
        .unwrap()
        .unwrap();
    let gone = store.prune_runs(8_000_000, MANY).await.unwrap();
    assert!(gone.contains(&"r_fr_old".to_string()), "{gone:?}");
    assert!(!gone.contains(&"r_fr_young".to_string()) && !gone.contains(&"r_fr_open".to_string()));
    assert_eq!(store.run("r_fr_old").await.unwrap(), None);
    assert_eq!(store.read_log("r_fr_old", 0, 100).await.unwrap(), None);
    assert_eq!(
        store.read_log("r_fr_young", 0, 100).await.unwrap(),
        Some((b"some log".to_vec(), 8))
    );
    // An unfinished run is never deleted, however old.
    assert!(store.run("r_fr_open").await.unwrap().is_some());
    // Bounded batches: one at a time.
    store
        .finish_run("r_fr_young", &a, ok(0), 9_000_000)
        .await
        .unwrap()
        .unwrap();
    let one = store.prune_runs(i64::MAX, 1).await.unwrap();
    assert_eq!(one.len(), 1);
}
