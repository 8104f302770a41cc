//! Supervised workloads, deciding: after each round (and before the next) what the
//! supervisor does — another round now, one after a delay or a back-off, or stop with a
//! reason. Pure over the round's end, what the workload left in its run directory and the
//! clock; [`super::engine`] applies it. The state is part of the run's record, so a
//! restarted (or upgraded) agent resumes exactly where its predecessor was.
use outpost_pack::Supervise;
use outpost_proto::RunOutcome;
use serde::{Deserialize, Serialize};

/// The supervisor's state (in the run's record).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupState {
    /// The last round started (1-based; 0 before the first).
    pub round: u32,
    /// The round in flight: its unit and when it started (unix ms).
    #[serde(default)]
    pub in_flight: Option<InFlight>,
    /// When the next round is due (unix ms), while none is in flight.
    #[serde(default)]
    pub next_at_ms: Option<u64>,
    /// Short failed rounds in a row (crash-loop defence).
    #[serde(default)]
    pub short_failures: u32,
    /// Transient failures in a row (back-off).
    #[serde(default)]
    pub transient: u32,
    #[serde(default)]
    pub last: Option<RoundEnd>,
    /// The log upload's place: round and offset in its log.
    #[serde(default)]
    pub upload_round: u32,
    #[serde(default)]
    pub upload_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub round: u32,
    pub unit: String,
    pub started_ms: u64,
    /// Its main process exited while workers it started still ran, and `grace_after_exit`
    /// extended the round until then (unix ms; the round's `round_timeout`).
    #[serde(default)]
    pub grace_until_ms: Option<u64>,
}

/// How a round ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundEnd {
    pub round: u32,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    /// systemd's `Result` (`success`, `exit-code`, `timeout`, `oom-kill`, …).
    pub result: String,
    pub duration_ms: u64,
}

impl RoundEnd {
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0) && self.signal.is_none() && self.result == "success"
    }
}

/// What the workload left in its run directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub stop_file: bool,
    /// The first line of `.done`, when it exists.
    pub done: Option<String>,
    /// The host's admin ran `outpost workload stop` (after the current round).
    pub stop_requested: bool,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Start round `round` at `at_ms`; `backoff_secs` when it is a back-off.
    Round {
        round: u32,
        at_ms: u64,
        backoff_secs: Option<u64>,
    },
    /// End the workload: the run's outcome, the event kind (`max_rounds_reached`, …) and
    /// the reason.
    Stop {
        outcome: RunOutcome,
        event: &'static str,
        reason: String,
    },
}

/// Before a round starts: a stop condition the workload set meanwhile.
pub fn before_round(cfg: &Supervise, seen: &Seen) -> Option<Next> {
    if let Some(why) = &seen.done {
        return Some(self_terminated(why));
    }
    if seen.stop_file {
        return Some(stop_file(cfg));
    }
    if seen.stop_requested {
        return Some(Next::Stop {
            outcome: RunOutcome::Succeeded,
            event: "workload_stopped",
            reason: "workload_stopped: `outpost workload stop` on the host".into(),
        });
    }
    None
}

fn self_terminated(why: &str) -> Next {
    Next::Stop {
        outcome: RunOutcome::Succeeded,
        event: "self_terminated",
        reason: format!(
            "self_terminated: {}",
            if why.is_empty() {
                "(no reason given)"
            } else {
                why
            }
        ),
    }
}

fn stop_file(cfg: &Supervise) -> Next {
    Next::Stop {
        outcome: RunOutcome::Succeeded,
        event: "stop_file_detected",
        reason: format!(
            "stop_file_detected: $OUTPOST_RUN_DIR/{} exists",
            cfg.stop_file
        ),
    }
}

/// After round `end.round` ended at `now_ms`: update `st` and say what comes next.
/// `jitter` in [0, 1) spreads back-offs (0.5 to 1 times the doubled delay).
pub fn after_round(
    cfg: &Supervise,
    st: &mut SupState,
    end: &RoundEnd,
    seen: &Seen,
    now_ms: u64,
    jitter: f64,
) -> Next {
    st.in_flight = None;
    st.last = Some(end.clone());
    if let Some(stop) = before_round(cfg, seen) {
        return stop;
    }
    let mut backoff = None;
    if end.result == "gone" {
        // The round's unit vanished (the host rebooted, the manager restarted): not the
        // workload's failure; the next round starts now.
        return next_round(cfg, st, end, now_ms, None, 0);
    }
    if end.ok() {
        st.short_failures = 0;
        st.transient = 0;
    } else if let Some(code) = end.exit_code.filter(|c| cfg.fatal_exit_codes.contains(c)) {
        return Next::Stop {
            outcome: RunOutcome::Failed,
            event: "config_broken",
            reason: format!(
                "config_broken: round {} exited with {code}, one of fatal_exit_codes",
                end.round
            ),
        };
    } else if end
        .exit_code
        .is_some_and(|c| cfg.transient_exit_codes.contains(&c))
    {
        st.short_failures = 0;
        st.transient = st.transient.saturating_add(1);
        let doubled = doubling(st.transient, cfg.backoff_max_secs);
        let secs = ((doubled as f64) * (0.5 + jitter.clamp(0.0, 1.0) / 2.0)).ceil() as u64;
        backoff = Some(secs.max(1));
    } else {
        st.transient = 0;
        if end.duration_ms < cfg.short_round_secs * 1000 {
            st.short_failures = st.short_failures.saturating_add(1);
        } else {
            st.short_failures = 0;
        }
        if st.short_failures >= cfg.crash_loop {
            return Next::Stop {
                outcome: RunOutcome::Failed,
                event: "crash_loop",
                reason: format!(
                    "crash_loop: {} consecutive rounds failed within {}s each (last: round {}, {})",
                    st.short_failures,
                    cfg.short_round_secs,
                    end.round,
                    describe(end)
                ),
            };
        }
    }
    let wait = backoff.unwrap_or(cfg.delay_secs);
    next_round(cfg, st, end, now_ms, backoff, wait)
}

fn next_round(
    cfg: &Supervise,
    st: &mut SupState,
    end: &RoundEnd,
    now_ms: u64,
    backoff: Option<u64>,
    wait_secs: u64,
) -> Next {
    if cfg.max_rounds.is_some_and(|m| end.round >= m) {
        return Next::Stop {
            outcome: RunOutcome::Succeeded,
            event: "max_rounds_reached",
            reason: format!("max_rounds_reached: {} rounds", end.round),
        };
    }
    let at_ms = now_ms + wait_secs * 1000;
    st.next_at_ms = Some(at_ms);
    Next::Round {
        round: end.round + 1,
        at_ms,
        backoff_secs: backoff,
    }
}

/// 1 s, 2 s, 4 s … up to `max` for the `n`th transient failure in a row.
pub fn doubling(n: u32, max: u64) -> u64 {
    let exp = n.saturating_sub(1).min(30);
    (BASE << exp).min(max.max(1))
}

const BASE: u64 = outpost_pack::supervise::BACKOFF_BASE_SECS;

/// `exit 3`, `signal SIGKILL`, `timeout`.
pub fn describe(end: &RoundEnd) -> String {
    match (&end.exit_code, &end.signal, end.result.as_str()) {
        (_, _, "timeout") => "killed at round_timeout".into(),
        (_, _, "oom-kill") => "oom-kill".into(),
        (_, Some(s), _) => format!("killed by {s}"),
        (Some(c), _, _) => format!("exit {c}"),
        _ => end.result.clone(),
    }
}

/// The last `lines` lines of a log, with what looks like a secret's value masked
/// (`token=…`, `password: …`, `Authorization: Bearer …`), each line capped at 200 bytes.
pub fn redacted_tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..]
        .iter()
        .map(|l| {
            let mut l = redact_line(l);
            if l.len() > 200 {
                let mut end = 200;
                while !l.is_char_boundary(end) {
                    end -= 1;
                }
                l.truncate(end);
            }
            l
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn redact_line(line: &str) -> String {
    const KEYS: [&str; 6] = ["token", "password", "secret", "passwd", "api_key", "bearer"];
    let lower = line.to_ascii_lowercase();
    for k in KEYS {
        if let Some(i) = lower.find(k) {
            let after = i + k.len();
            let rest = &line[after..];
            let sep = rest
                .char_indices()
                .find(|(_, c)| *c == '=' || *c == ':' || *c == ' ')
                .map(|(j, c)| after + j + c.len_utf8());
            if let Some(at) = sep {
                return format!("{}***", &line[..at]);
            }
        }
    }
    line.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Supervise {
        outpost_pack::RawSupervise {
            max_rounds: Some(3),
            transient_exit_codes: vec![75],
            fatal_exit_codes: vec![78],
            crash_loop: Some(3),
            short_round: Some("10s".into()),
            delay_between_rounds: Some("2s".into()),
            backoff_max: Some("8s".into()),
            ..Default::default()
        }
        .check()
        .unwrap()
    }

    /// `code` -1: the unit vanished.
    fn end(round: u32, code: i32, ms: u64) -> RoundEnd {
        RoundEnd {
            round,
            exit_code: (code >= 0).then_some(code),
            signal: None,
            result: match code {
                0 => "success",
                -1 => "gone",
                _ => "exit-code",
            }
            .into(),
            duration_ms: ms,
        }
    }

    fn kind(n: &Next) -> String {
        match n {
            Next::Round {
                round,
                backoff_secs,
                ..
            } => format!(
                "round {round}{}",
                if backoff_secs.is_some() {
                    " backoff"
                } else {
                    ""
                }
            ),
            Next::Stop { event, .. } => event.to_string(),
        }
    }

    #[test]
    fn sequences() {
        let done = Seen {
            done: Some("all caught up".into()),
            ..Default::default()
        };
        let stop = Seen {
            stop_file: true,
            ..Default::default()
        };
        let none = Seen::default();
        let asked = Seen {
            stop_requested: true,
            ..Default::default()
        };
        // (what, rounds' (exit, ms, seen), expected decisions)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(&str, Vec<(i32, u64, &Seen)>, Vec<&str>)> = vec![
            (
                "max_rounds",
                vec![(0, 100, &none), (0, 100, &none), (0, 100, &none)],
                vec!["round 2", "round 3", "max_rounds_reached"],
            ),
            (
                "done sentinel wins over everything",
                vec![(78, 100, &done)],
                vec!["self_terminated"],
            ),
            (
                "stop file",
                vec![(0, 100, &none), (0, 100, &stop)],
                vec!["round 2", "stop_file_detected"],
            ),
            ("fatal", vec![(78, 100, &none)], vec!["config_broken"]),
            (
                "workload stop on the host",
                vec![(0, 100, &none), (1, 100, &asked)],
                vec!["round 2", "workload_stopped"],
            ),
            (
                "crash loop: 3 short failures",
                vec![(1, 100, &none), (1, 100, &none), (1, 100, &none)],
                vec!["round 2", "round 3", "crash_loop"],
            ),
            (
                "a long failure resets the count",
                vec![(1, 100, &none), (1, 60_000, &none), (1, 100, &none)],
                vec!["round 2", "round 3", "max_rounds_reached"],
            ),
            (
                "a vanished round (reboot) is no failure",
                vec![(-1, 100, &none), (-1, 100, &none), (1, 100, &none)],
                vec!["round 2", "round 3", "max_rounds_reached"],
            ),
            (
                "transient backs off, not a crash",
                vec![(75, 100, &none), (75, 100, &none), (0, 100, &none)],
                vec!["round 2 backoff", "round 3 backoff", "max_rounds_reached"],
            ),
        ];
        for (what, rounds, want) in cases {
            let c = cfg();
            let mut st = SupState::default();
            let got: Vec<String> = rounds
                .iter()
                .enumerate()
                .map(|(i, (code, ms, seen))| {
                    kind(&after_round(
                        &c,
                        &mut st,
                        &end(i as u32 + 1, *code, *ms),
                        seen,
                        0,
                        0.0,
                    ))
                })
                .collect();
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn delays_backoff_and_reasons() {
        let c = cfg();
        let mut st = SupState::default();
        let n = after_round(&c, &mut st, &end(1, 0, 5), &Seen::default(), 1000, 0.0);
        assert_eq!(
            n,
            Next::Round {
                round: 2,
                at_ms: 3000,
                backoff_secs: None
            }
        );
        assert_eq!(st.next_at_ms, Some(3000));
        // back-off doubles to backoff_max, jitter keeps it in [half, full]
        let secs: Vec<u64> = (1..=5).map(|n| doubling(n, 8)).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 8]);
        let mut st = SupState::default();
        for (i, want) in [(1u32, 1u64), (2, 1), (3, 2), (4, 4)] {
            let Next::Round { backoff_secs, .. } =
                after_round(&c, &mut st, &end(i.min(2), 75, 5), &Seen::default(), 0, 0.0)
            else {
                panic!("round")
            };
            assert_eq!(backoff_secs, Some(want), "transient #{i}");
        }
        let mut st = SupState {
            short_failures: 2,
            ..Default::default()
        };
        let Next::Stop {
            reason, outcome, ..
        } = after_round(&c, &mut st, &end(2, 3, 5), &Seen::default(), 0, 0.0)
        else {
            panic!("stop")
        };
        assert_eq!(outcome, RunOutcome::Failed);
        assert!(
            reason.contains("3 consecutive rounds failed within 10s each (last: round 2, exit 3)"),
            "{reason}"
        );
        let mut timeout = end(1, 0, 5);
        timeout.exit_code = None;
        timeout.signal = Some("SIGTERM".into());
        timeout.result = "timeout".into();
        assert_eq!(describe(&timeout), "killed at round_timeout");
    }

    #[test]
    fn tails_are_redacted() {
        let log = "start\nusing token=abc123\nPassword: hunter2\nAuthorization: Bearer xyz\nboom";
        let t = redacted_tail(log, 4);
        assert_eq!(
            t,
            "using token=*** | Password:*** | Authorization: Bearer *** | boom"
        );
        assert!(!t.contains("abc123") && !t.contains("hunter2") && !t.contains("xyz"));
    }
}
