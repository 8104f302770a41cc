//! Property: an agent's deliveries for one run (event batches, log chunks, its result),
//! each duplicated and all reordered, reach the same final run as delivered in order. A
//! small deterministic PRNG (xorshift64*) draws the batches, chunks, duplicates and order
//! for 64 seeds; after the shuffled deliveries the fake agent does what the real one does
//! after a `log_gap`: it sends the rest of its log from the offset the hub has.

use std::collections::BTreeMap;

use outpost_proto::{FlatMap, RunEvent, RunOutcome, RunResult, RunState};

use crate::store::{Lease, NewRuns, RunRefusal, RunRow, RunsCreated, Store};

const AGENT: &str = "a_delivery";
const LOG: &[u8] = b"line one\nline two\nline three is longer\n\xe2\x9c\x93 done\n";
const EVENTS: u64 = 6;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Debug, Clone)]
enum Delivery {
    Events(Vec<u64>),
    Log { offset: usize, len: usize },
    Result,
}

fn event(seq: u64) -> RunEvent {
    RunEvent {
        seq,
        kind: if seq == 1 { "started" } else { "progress" }.into(),
        at: "2024-01-01T00:00:00Z".into(),
        data: FlatMap::new(),
    }
}

fn result() -> RunResult {
    RunResult {
        outcome: RunOutcome::Succeeded,
        exit_code: Some(0),
        signal: None,
        reason: String::new(),
        finished_at: "2024-01-01T00:00:09Z".into(),
        log_bytes: LOG.len() as u64,
    }
}

/// Consecutive pieces of `0..n` of random sizes (1 to `max`).
fn pieces(rng: &mut Rng, n: usize, max: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < n {
        let len = (1 + rng.below(max)).min(n - at);
        out.push((at, len));
        at += len;
    }
    out
}

/// The deliveries of one run: in order, then each one to three times, shuffled.
fn deliveries(rng: &mut Rng, shuffle: bool) -> Vec<Delivery> {
    let mut ds: Vec<Delivery> = pieces(rng, EVENTS as usize, 3)
        .into_iter()
        .map(|(from, len)| Delivery::Events((from..from + len).map(|s| s as u64 + 1).collect()))
        .collect();
    ds.extend(
        pieces(rng, LOG.len(), 16)
            .into_iter()
            .map(|(offset, len)| Delivery::Log { offset, len }),
    );
    ds.push(Delivery::Result);
    if !shuffle {
        return ds;
    }
    let mut all: Vec<Delivery> = ds
        .into_iter()
        .flat_map(|d| std::iter::repeat_n(d, 1 + rng.below(3)))
        .collect();
    for i in (1..all.len()).rev() {
        all.swap(i, rng.below(i + 1));
    }
    all
}

/// Delivers `ds` for a new run `id` (claimed first) at one time; returns the final run with
/// its id blanked, its log and the highest event seq stored.
async fn deliver(store: &dyn Store, id: &str, ds: &[Delivery]) -> (RunRow, Vec<u8>, u64) {
    let lease = Lease {
        now_ms: 30,
        lease_ms: 1_000,
    };
    let r = RunRow::queued(
        id.into(),
        AGENT.into(),
        "web".into(),
        "d".repeat(64),
        "deploy".into(),
        BTreeMap::new(),
        false,
        10,
    );
    let new = NewRuns {
        idempotency: None,
        runs: vec![r],
        now_ms: 10,
        max_queued: 10_000,
        audit: None,
    };
    assert!(matches!(
        store.create_runs(new).await.unwrap(),
        RunsCreated::New(_)
    ));
    let claim = Lease {
        now_ms: 20,
        ..lease
    };
    store
        .claim_run(id, AGENT, "p", claim, 10_000)
        .await
        .unwrap()
        .unwrap();
    for d in ds {
        match d {
            Delivery::Events(seqs) => {
                let evs = seqs.iter().copied().map(event).collect();
                store
                    .run_events(id, AGENT, evs, lease)
                    .await
                    .unwrap()
                    .unwrap();
            }
            Delivery::Log { offset, len } => {
                let bytes = LOG[*offset..offset + len].to_vec();
                match store
                    .append_log(id, AGENT, *offset as u64, bytes, 1 << 20, lease)
                    .await
                    .unwrap()
                {
                    Ok(_) | Err(RunRefusal::Gap { .. }) => {}
                    Err(e) => panic!("{id}: log at {offset}: {e:?}"),
                }
            }
            Delivery::Result => {
                store
                    .finish_run(id, AGENT, result(), 30)
                    .await
                    .unwrap()
                    .unwrap();
            }
        }
    }
    // The agent's resend after gaps: the rest of its log from what the hub has.
    loop {
        let have = store.run(id).await.unwrap().unwrap().log_bytes as usize;
        if have >= LOG.len() {
            break;
        }
        let rest = LOG[have..].to_vec();
        store
            .append_log(id, AGENT, have as u64, rest, 1 << 20, lease)
            .await
            .unwrap()
            .unwrap();
    }
    let acked = store
        .run_events(id, AGENT, Vec::new(), lease)
        .await
        .unwrap()
        .unwrap();
    let (log, _) = store.read_log(id, 0, 1 << 20).await.unwrap().unwrap();
    let mut run = store.run(id).await.unwrap().unwrap();
    run.id = String::new();
    (run, log, acked)
}

pub(crate) async fn conformance(store: &dyn Store) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let in_order = deliveries(&mut rng, false);
    let want = deliver(store, "r_dv_in_order", &in_order).await;
    assert_eq!(want.0.state, RunState::Succeeded);
    assert_eq!((want.1.as_slice(), want.2), (LOG, EVENTS));
    assert_eq!(want.0.started_ms, Some(30));
    for seed in 1..=64u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let ds = deliveries(&mut rng, true);
        let got = deliver(store, &format!("r_dv_{seed}"), &ds).await;
        assert_eq!(got, want, "seed {seed}: {ds:?}");
    }
}
