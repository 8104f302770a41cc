//! The run state machine, pure (deciding, not doing): every store backend asks [`step`] what
//! an event does to a run in its current state, and [`judge_result`] whether a result is the
//! first, the same again or a conflicting one. Handlers and the sweeper only call the store.
//!
//! ```text
//! queued ─claim→ claimed ─started→ running ─result→ succeeded|failed|canceled|timed_out|rejected
//!   │              │  └──────────result──────────┘
//!   cancel→ canceled  lease expired → unknown ─hold/started→ running
//!                                        └─ lost_after → lost ─late result→ (outcome, late)
//! ```

use std::collections::BTreeMap;

use outpost_proto::{ActionAdvert, FieldError, PackAdvert, RunOutcome, RunResult, RunState};

/// Something that happens to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A claimant asks for the run; `holder` is the claimant that has it, if any.
    Claim {
        by: &'a str,
        holder: Option<&'a str>,
    },
    /// The agent's `started` event.
    Started,
    /// A poll holding the run, or an upload for it: the agent still has it.
    Renew,
    /// Its lease ran out.
    LeaseExpired,
    /// It stayed `unknown` for `lost_after`.
    LostAfter,
    /// The agent's result (already judged the first one by [`judge_result`]).
    Result(RunOutcome),
    /// An admin's cancel.
    Cancel,
}

/// What [`step`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Move to this state (it may be the current one: nothing to change but the lease).
    To(RunState),
    /// Valid but changes nothing (a renew of a final run, a second cancel).
    Ignore,
    /// A claimed, running or unknown run: keep the state, flag `cancel_requested`.
    RequestCancel,
    /// Refused: another claimant holds the run.
    Taken,
    /// Refused: the event does not apply in this state.
    Refused(RunState),
    /// A result after `lost`: store it, flagged late, with the outcome's state.
    Late(RunState),
}

/// What `event` does to a run in state `s`.
pub fn step(s: RunState, event: Event<'_>) -> Step {
    use RunState as S;
    match (s, event) {
        (S::Queued, Event::Claim { .. }) => Step::To(S::Claimed),
        (S::Claimed | S::Running | S::Unknown, Event::Claim { by, holder }) => {
            if holder == Some(by) {
                Step::To(s)
            } else {
                Step::Taken
            }
        }
        (S::Claimed | S::Unknown, Event::Started) => Step::To(S::Running),
        (S::Running, Event::Started) => Step::To(S::Running),
        (S::Unknown, Event::Renew) => Step::To(S::Running),
        (S::Claimed | S::Running, Event::Renew) => Step::To(s),
        (S::Claimed | S::Running, Event::LeaseExpired) => Step::To(S::Unknown),
        (S::Unknown, Event::LostAfter) => Step::To(S::Lost),
        (S::Claimed | S::Running | S::Unknown, Event::Result(o)) => Step::To(o.state()),
        (S::Lost, Event::Result(o)) => Step::Late(o.state()),
        (S::Queued, Event::Cancel) => Step::To(S::Canceled),
        (S::Claimed | S::Running | S::Unknown, Event::Cancel) => Step::RequestCancel,
        (_, Event::Cancel | Event::Renew | Event::LeaseExpired | Event::LostAfter) => Step::Ignore,
        // A final run's `started` (a late duplicate) changes nothing either.
        (_, Event::Started) if s.is_final() => Step::Ignore,
        (_, _) => Step::Refused(s),
    }
}

/// What a result does given the one stored (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultVerdict {
    /// The first result: store it.
    First,
    /// The stored result again (a retry whose answer was lost): 200, nothing changes.
    Same,
    /// A different result: 409 `result_conflict`, the first one stays.
    Conflict,
}

/// The first result wins; an identical retry is accepted.
pub fn judge_result(stored: Option<&RunResult>, new: &RunResult) -> ResultVerdict {
    match stored {
        None => ResultVerdict::First,
        Some(s) if s == new => ResultVerdict::Same,
        Some(_) => ResultVerdict::Conflict,
    }
}

/// What a log upload of `len` bytes at `offset` does to a log of `have` bytes, capped at
/// `cap`: the bytes past `have` to append (overlap trimmed), a gap, or over the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStep {
    /// Append `data[skip..]` (possibly nothing: a full overlap).
    Append { skip: usize },
    /// The upload starts past the end: refuse, the next must start at `expected`.
    Gap { expected: u64 },
    /// The log would grow past the cap.
    TooLarge,
}

pub fn log_step(have: u64, offset: u64, len: usize, cap: u64) -> LogStep {
    if offset > have {
        return LogStep::Gap { expected: have };
    }
    let end = offset.saturating_add(len as u64);
    if end > cap {
        return LogStep::TooLarge;
    }
    // offset <= have, so the skip is at most have - offset, and within len when end > have.
    let skip = usize::try_from(have - offset)
        .unwrap_or(usize::MAX)
        .min(len);
    LogStep::Append { skip }
}

/// Why a queued run is not dispatched to its agent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Dispatch is stopped hub-wide (the kill switch).
    Stopped,
    /// The agent is drained.
    Drained,
    /// The agent holds `max` runs (claimed, running, unknown) already.
    InFlightFull { max: usize },
}

/// What decides whether an agent gets another run: the kill switch, its drain, the runs it
/// holds and the limit of runs in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dispatch {
    pub stopped: bool,
    pub drained: bool,
    pub held: usize,
    pub max_in_flight: usize,
}

/// How many more runs the agent may take now, or why none.
pub fn gate(d: Dispatch) -> Result<usize, Gate> {
    if d.stopped {
        return Err(Gate::Stopped);
    }
    if d.drained {
        return Err(Gate::Drained);
    }
    match d.max_in_flight.checked_sub(d.held) {
        Some(free) if free > 0 => Ok(free),
        _ => Err(Gate::InFlightFull {
            max: d.max_in_flight,
        }),
    }
}

/// How many of `queued` runs a poll offers: as many as [`gate`] leaves room for.
pub fn offer_count(d: Dispatch, queued: usize) -> usize {
    gate(d).map_or(0, |free| free.min(queued))
}

/// Would `adding` more queued runs pass `max` for an agent with `queued` already?
pub fn queue_full(queued: usize, adding: usize, max: usize) -> bool {
    queued.saturating_add(adding) > max
}

/// A per-run token bucket of log bytes: `tokens` at `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub tokens: u64,
    pub at_ms: i64,
}

/// Takes `n` bytes from a bucket refilled at `rate` bytes a second up to `burst` (a new
/// bucket starts full); `Err(seconds)` to wait when there are too few. An upload larger than
/// `burst` needs a full bucket.
pub fn take_bytes(
    b: Option<Bucket>,
    now_ms: i64,
    rate: u64,
    burst: u64,
    n: u64,
) -> Result<Bucket, u64> {
    let tokens = match b {
        None => burst,
        Some(b) => {
            let ms = u64::try_from(now_ms.saturating_sub(b.at_ms)).unwrap_or(0);
            let refill = rate.saturating_mul(ms) / 1000;
            b.tokens.saturating_add(refill).min(burst)
        }
    };
    let need = n.min(burst);
    if need <= tokens {
        return Ok(Bucket {
            tokens: tokens - need,
            at_ms: now_ms,
        });
    }
    Err((need - tokens).div_ceil(rate.max(1)).max(1))
}

/// The time before which finished runs are deleted, `None` when retention is off (0).
pub fn retention_cutoff(now_ms: i64, retention_secs: u64) -> Option<i64> {
    let ms = i64::try_from(retention_secs).ok()?.checked_mul(1000)?;
    (ms > 0).then(|| now_ms.saturating_sub(ms))
}

/// Why an action name does not resolve in a catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    Unknown,
    /// `ACTION` is in several packs: these.
    Ambiguous(Vec<String>),
}

/// The pack and action `name` (`PACK/ACTION`, or `ACTION` when one pack has it) names in
/// `packs`.
pub fn resolve_action<'a>(
    packs: &'a [PackAdvert],
    name: &str,
) -> Result<(&'a PackAdvert, &'a ActionAdvert), Unresolved> {
    let (pack, action) = match name.split_once('/') {
        Some((p, a)) => (Some(p), a),
        None => (None, name),
    };
    let hits: Vec<_> = packs
        .iter()
        .filter(|p| pack.is_none_or(|n| n == p.name))
        .filter_map(|p| p.actions.iter().find(|a| a.id == action).map(|a| (p, a)))
        .collect();
    match hits.as_slice() {
        [] => Err(Unresolved::Unknown),
        [one] => Ok(*one),
        many => Err(Unresolved::Ambiguous(
            many.iter().map(|(p, _)| p.name.clone()).collect(),
        )),
    }
}

/// Parameter names against the action's advertised ones: every required one present, no
/// unknown one. Values are the agent's to check (against its root-owned pack).
pub fn check_params(
    action: &ActionAdvert,
    params: &BTreeMap<String, String>,
) -> Result<(), FieldError> {
    if let Some(k) = params
        .keys()
        .find(|k| !action.params.iter().any(|p| &p.name == *k))
    {
        return Err(FieldError::invalid(
            &format!("params.{k}"),
            &format!("is not a parameter of {}", action.id),
        ));
    }
    if let Some(p) = action
        .params
        .iter()
        .find(|p| p.required && !params.contains_key(&p.name))
    {
        return Err(FieldError::invalid(
            &format!("params.{}", p.name),
            "is required",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunState as S;

    fn pack(name: &str, actions: &[&str]) -> PackAdvert {
        PackAdvert {
            name: name.into(),
            version: "1.0.0".into(),
            sha256: "a".repeat(64),
            actions: actions
                .iter()
                .map(|id| ActionAdvert {
                    id: (*id).into(),
                    description: String::new(),
                    params: vec![
                        outpost_proto::ParamAdvert {
                            name: "unit".into(),
                            kind: "string".into(),
                            required: true,
                        },
                        outpost_proto::ParamAdvert {
                            name: "force".into(),
                            kind: "bool".into(),
                            required: false,
                        },
                    ],
                    idempotent: false,
                    privileged: false,
                })
                .collect(),
        }
    }

    type Resolved<'a> = Result<(&'a str, &'a str), Unresolved>;

    #[test]
    fn actions_resolve() {
        let packs = [
            pack("web", &["restart", "reload"]),
            pack("db", &["restart", "vacuum"]),
        ];
        #[rustfmt::skip]
        let cases: [(&str, Resolved); 6] = [
            ("web/restart", Ok(("web", "restart"))),
            ("db/restart",  Ok(("db", "restart"))),
            ("vacuum",      Ok(("db", "vacuum"))),
            ("restart",     Err(Unresolved::Ambiguous(vec!["web".into(), "db".into()]))),
            ("web/vacuum",  Err(Unresolved::Unknown)),
            ("nope",        Err(Unresolved::Unknown)),
        ];
        for (name, want) in cases {
            let got = resolve_action(&packs, name).map(|(p, a)| (p.name.as_str(), a.id.as_str()));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn params_are_checked_by_name() {
        let p = pack("web", &["restart"]);
        let a = &p.actions[0];
        let m = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        #[rustfmt::skip]
        let cases: [(BTreeMap<String, String>, Option<&str>); 4] = [
            (m(&[("unit", "nginx")]),                   None),
            (m(&[("unit", "nginx"), ("force", "true")]), None),
            (m(&[("force", "true")]),                   Some("params.unit")),
            (m(&[("unit", "x"), ("colour", "red")]),    Some("params.colour")),
        ];
        for (params, want) in cases {
            let got = check_params(a, &params).err().and_then(|e| e.field);
            assert_eq!(got.as_deref(), want, "{params:?}");
        }
    }

    const FINAL: [RunState; 6] = [
        S::Succeeded,
        S::Failed,
        S::Canceled,
        S::TimedOut,
        S::Rejected,
        S::Lost,
    ];

    #[test]
    fn every_transition() {
        let claim_a = Event::Claim {
            by: "a",
            holder: None,
        };
        let again = Event::Claim {
            by: "a",
            holder: Some("a"),
        };
        let other = Event::Claim {
            by: "b",
            holder: Some("a"),
        };
        let ok = Event::Result(RunOutcome::Succeeded);
        let rej = Event::Result(RunOutcome::Rejected);
        #[rustfmt::skip]
        let cases = [
            (S::Queued,   claim_a,             Step::To(S::Claimed)),
            (S::Claimed,  again,               Step::To(S::Claimed)),
            (S::Running,  again,               Step::To(S::Running)),
            (S::Unknown,  again,               Step::To(S::Unknown)),
            (S::Claimed,  other,               Step::Taken),
            (S::Running,  other,               Step::Taken),
            (S::Succeeded, claim_a,            Step::Refused(S::Succeeded)),
            (S::Canceled, claim_a,             Step::Refused(S::Canceled)),
            (S::Lost,     claim_a,             Step::Refused(S::Lost)),
            (S::Claimed,  Event::Started,      Step::To(S::Running)),
            (S::Running,  Event::Started,      Step::To(S::Running)),
            (S::Unknown,  Event::Started,      Step::To(S::Running)),
            (S::Queued,   Event::Started,      Step::Refused(S::Queued)),
            (S::Failed,   Event::Started,      Step::Ignore),
            (S::Claimed,  Event::Renew,        Step::To(S::Claimed)),
            (S::Running,  Event::Renew,        Step::To(S::Running)),
            (S::Unknown,  Event::Renew,        Step::To(S::Running)),
            (S::Lost,     Event::Renew,        Step::Ignore),
            (S::Queued,   Event::Renew,        Step::Ignore),
            (S::Claimed,  Event::LeaseExpired, Step::To(S::Unknown)),
            (S::Running,  Event::LeaseExpired, Step::To(S::Unknown)),
            (S::Unknown,  Event::LeaseExpired, Step::Ignore),
            (S::Queued,   Event::LeaseExpired, Step::Ignore),
            (S::Unknown,  Event::LostAfter,    Step::To(S::Lost)),
            (S::Running,  Event::LostAfter,    Step::Ignore),
            (S::Claimed,  ok,                  Step::To(S::Succeeded)),
            (S::Running,  ok,                  Step::To(S::Succeeded)),
            (S::Unknown,  ok,                  Step::To(S::Succeeded)),
            (S::Running,  rej,                 Step::To(S::Rejected)),
            (S::Lost,     ok,                  Step::Late(S::Succeeded)),
            (S::Queued,   ok,                  Step::Refused(S::Queued)),
            (S::Canceled, ok,                  Step::Refused(S::Canceled)),
            (S::Queued,   Event::Cancel,       Step::To(S::Canceled)),
            (S::Claimed,  Event::Cancel,       Step::RequestCancel),
            (S::Running,  Event::Cancel,       Step::RequestCancel),
            (S::Unknown,  Event::Cancel,       Step::RequestCancel),
            (S::Succeeded, Event::Cancel,      Step::Ignore),
        ];
        for (s, e, want) in cases {
            assert_eq!(step(s, e), want, "{s:?} {e:?}");
        }
        for s in FINAL {
            assert!(s.is_final());
            for e in [
                Event::Renew,
                Event::LeaseExpired,
                Event::LostAfter,
                Event::Cancel,
            ] {
                assert_eq!(step(s, e), Step::Ignore, "{s:?} {e:?}");
            }
        }
    }

    #[test]
    fn results_first_wins() {
        let r = |outcome, code| RunResult {
            outcome,
            exit_code: Some(code),
            signal: None,
            reason: String::new(),
            finished_at: "2024-01-01T00:00:00Z".into(),
            log_bytes: 3,
        };
        let first = r(RunOutcome::Succeeded, 0);
        #[rustfmt::skip]
        let cases = [
            (None,         r(RunOutcome::Succeeded, 0), ResultVerdict::First),
            (Some(&first), r(RunOutcome::Succeeded, 0), ResultVerdict::Same),
            (Some(&first), r(RunOutcome::Failed, 1),    ResultVerdict::Conflict),
            (Some(&first), r(RunOutcome::Succeeded, 1), ResultVerdict::Conflict),
        ];
        for (stored, new, want) in cases {
            assert_eq!(judge_result(stored, &new), want, "{new:?}");
        }
    }

    #[test]
    fn dispatch_gates() {
        let d = |stopped, drained, held, max_in_flight| Dispatch {
            stopped,
            drained,
            held,
            max_in_flight,
        };
        #[rustfmt::skip]
        let cases = [
            // stopped, drained, held, max, queued → gate, offers
            (d(false, false, 0, 4), 10, Ok(4), 4),
            (d(false, false, 1, 4), 2,  Ok(3), 2),
            (d(false, false, 3, 4), 5,  Ok(1), 1),
            (d(false, false, 4, 4), 5,  Err(Gate::InFlightFull { max: 4 }), 0),
            (d(false, false, 6, 4), 5,  Err(Gate::InFlightFull { max: 4 }), 0),
            (d(false, false, 0, 0), 5,  Err(Gate::InFlightFull { max: 0 }), 0),
            (d(false, true,  0, 4), 5,  Err(Gate::Drained), 0),
            (d(true,  false, 0, 4), 5,  Err(Gate::Stopped), 0),
            (d(true,  true,  9, 4), 5,  Err(Gate::Stopped), 0),
        ];
        for (dispatch, queued, want_gate, want_offers) in cases {
            assert_eq!(gate(dispatch), want_gate, "{dispatch:?}");
            assert_eq!(offer_count(dispatch, queued), want_offers, "{dispatch:?}");
        }
    }

    #[test]
    fn queue_limits() {
        #[rustfmt::skip]
        let cases = [
            (0, 1, 100, false), (99, 1, 100, false), (100, 1, 100, true),
            (98, 3, 100, true), (0, 0, 0, false), (0, 1, 0, true),
        ];
        for (queued, adding, max, want) in cases {
            assert_eq!(
                queue_full(queued, adding, max),
                want,
                "{queued} {adding} {max}"
            );
        }
    }

    #[test]
    fn log_rate_buckets() {
        let b = |tokens, at_ms| Some(Bucket { tokens, at_ms });
        #[rustfmt::skip]
        let cases = [
            // bucket, now, rate, burst, n → result
            (None,        0,    100, 400, 400, Ok(Bucket { tokens: 0, at_ms: 0 })),
            (None,        0,    100, 400, 900, Ok(Bucket { tokens: 0, at_ms: 0 })),
            (b(0, 0),     0,    100, 400, 1,   Err(1)),
            (b(0, 0),     500,  100, 400, 50,  Ok(Bucket { tokens: 0, at_ms: 500 })),
            (b(0, 0),     500,  100, 400, 51,  Err(1)),
            (b(0, 0),     1000, 100, 400, 350, Err(3)),
            (b(0, 0),     9000, 100, 400, 400, Ok(Bucket { tokens: 0, at_ms: 9000 })),
            (b(100, 0),   0,    100, 400, 60,  Ok(Bucket { tokens: 40, at_ms: 0 })),
            (b(0, 1000),  0,    100, 400, 1,   Err(1)),
        ];
        for (bucket, now, rate, burst, n, want) in cases {
            assert_eq!(
                take_bytes(bucket, now, rate, burst, n),
                want,
                "{bucket:?} {now} {n}"
            );
        }
    }

    #[test]
    fn retention() {
        assert_eq!(retention_cutoff(100_000, 30), Some(70_000));
        assert_eq!(retention_cutoff(100_000, 0), None);
        assert_eq!(retention_cutoff(0, 86_400), Some(-86_400_000));
        assert_eq!(retention_cutoff(i64::MIN, 1), Some(i64::MIN));
    }

    #[test]
    fn log_offsets() {
        #[rustfmt::skip]
        let cases = [
            // have, offset, len, cap
            (0,  0,  5, 100, LogStep::Append { skip: 0 }),
            (5,  5,  5, 100, LogStep::Append { skip: 0 }),
            (5,  3,  5, 100, LogStep::Append { skip: 2 }),
            (5,  0,  5, 100, LogStep::Append { skip: 5 }),
            (5,  1,  2, 100, LogStep::Append { skip: 2 }),
            (5,  6,  1, 100, LogStep::Gap { expected: 5 }),
            (5,  5, 96, 100, LogStep::TooLarge),
            (5,  5, 95, 100, LogStep::Append { skip: 0 }),
            (5,  5,  0, 100, LogStep::Append { skip: 0 }),
        ];
        for (have, offset, len, cap, want) in cases {
            assert_eq!(
                log_step(have, offset, len, cap),
                want,
                "{have} {offset} {len}"
            );
        }
    }
}
