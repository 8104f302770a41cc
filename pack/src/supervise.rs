//! A supervised action (`[action.supervise]`): the action's command is one *round*, run over
//! and over by the agent until a stop condition (docs/WORKLOADS.md).
use serde::{Deserialize, Serialize};

/// Longest round accepted.
pub const MAX_ROUND_SECS: u64 = 7 * 86_400;
/// Without `round_timeout`.
pub const DEFAULT_ROUND_SECS: u64 = 3600;
/// Without `keep_logs`: the newest round logs kept.
pub const DEFAULT_KEEP_LOGS: u32 = 10;
pub const MAX_KEEP_LOGS: u32 = 1000;
/// Without `crash_loop`: consecutive short failed rounds that stop the workload.
pub const DEFAULT_CRASH_LOOP: u32 = 5;
/// Without `short_round`: a failed round shorter than this counts towards `crash_loop`.
pub const DEFAULT_SHORT_SECS: u64 = 10;
/// Without `backoff_max`: the longest back-off after transient failures.
pub const DEFAULT_BACKOFF_MAX_SECS: u64 = 300;
/// The first back-off after a transient failure (doubling from there, with jitter).
pub const BACKOFF_BASE_SECS: u64 = 1;
/// Default stop file, relative to the run's directory.
pub const DEFAULT_STOP_FILE: &str = "stop";
/// The sentinel a workload writes to end itself (its first line the reason).
pub const DONE_FILE: &str = ".done";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSupervise {
    /// Rounds at most (absent: no bound).
    pub max_rounds: Option<u32>,
    /// A round's own limit (`RuntimeMaxSec=` of its unit): "20s", "5m" (default 1h).
    pub round_timeout: Option<String>,
    /// Pause between two rounds: "0s", "5s", "1m" (default 0s).
    pub delay_between_rounds: Option<String>,
    /// A file (relative to `OUTPOST_RUN_DIR`) whose existence ends the workload after the
    /// current round (default `stop`).
    pub stop_file: Option<String>,
    /// Exit codes that mean "try again later": back off (1 s doubling to `backoff_max`,
    /// with jitter), then the next round.
    #[serde(default)]
    pub transient_exit_codes: Vec<i32>,
    /// Exit codes that mean the configuration is broken: stop (`config_broken`).
    #[serde(default)]
    pub fatal_exit_codes: Vec<i32>,
    /// Consecutive short failed rounds that stop the workload (`crash_loop`; default 5).
    pub crash_loop: Option<u32>,
    /// A failed round shorter than this is short (default 10s).
    pub short_round: Option<String>,
    /// Longest back-off (default 5m).
    pub backoff_max: Option<String>,
    /// Round logs kept, newest first (default 10).
    pub keep_logs: Option<u32>,
    /// A round whose main process exited while workers it started still run is extended
    /// (up to `round_timeout`) instead of ending: `round_grace_extended` names them.
    /// Default false: they are stopped with the round.
    #[serde(default)]
    pub grace_after_exit: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supervise {
    pub max_rounds: Option<u32>,
    pub round_timeout_secs: u64,
    pub delay_secs: u64,
    pub stop_file: String,
    pub transient_exit_codes: Vec<i32>,
    pub fatal_exit_codes: Vec<i32>,
    pub crash_loop: u32,
    pub short_round_secs: u64,
    pub backoff_max_secs: u64,
    pub keep_logs: u32,
    pub grace_after_exit: bool,
}

fn secs(name: &str, v: &Option<String>, default: u64, zero_ok: bool) -> Result<u64, String> {
    match v.as_deref() {
        None => Ok(default),
        Some(t) if zero_ok && matches!(t.trim(), "0" | "0s") => Ok(0),
        Some(t) => outpost_core::duration::parse_secs(t)
            .filter(|&s| s <= MAX_ROUND_SECS)
            .ok_or_else(|| format!("supervise.{name} {t:?}: use 30s, 5m, 1h … up to 7d")),
    }
}

impl RawSupervise {
    pub fn check(&self) -> Result<Supervise, String> {
        if self.max_rounds == Some(0) {
            return Err("supervise.max_rounds: at least 1 (leave it out for no bound)".into());
        }
        let stop_file = self
            .stop_file
            .clone()
            .unwrap_or_else(|| DEFAULT_STOP_FILE.into());
        let plain = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        if stop_file.is_empty()
            || stop_file.len() > 64
            || !stop_file.chars().all(plain)
            || stop_file.starts_with('.')
        {
            return Err(format!(
                "supervise.stop_file {stop_file:?}: a plain file name in the run's directory (1-64 of A-Za-z0-9 . _ -, not starting with a dot)"
            ));
        }
        for c in &self.transient_exit_codes {
            if self.fatal_exit_codes.contains(c) {
                return Err(format!(
                    "supervise: exit code {c} is both transient and fatal"
                ));
            }
        }
        for c in self
            .transient_exit_codes
            .iter()
            .chain(&self.fatal_exit_codes)
        {
            if !(1..=255).contains(c) {
                return Err(format!("supervise: exit code {c} is not 1-255"));
            }
        }
        let crash_loop = self.crash_loop.unwrap_or(DEFAULT_CRASH_LOOP);
        if crash_loop == 0 || crash_loop > 1000 {
            return Err("supervise.crash_loop: 1 to 1000".into());
        }
        let keep_logs = self.keep_logs.unwrap_or(DEFAULT_KEEP_LOGS);
        if keep_logs == 0 || keep_logs > MAX_KEEP_LOGS {
            return Err(format!("supervise.keep_logs: 1 to {MAX_KEEP_LOGS}"));
        }
        Ok(Supervise {
            max_rounds: self.max_rounds,
            round_timeout_secs: secs(
                "round_timeout",
                &self.round_timeout,
                DEFAULT_ROUND_SECS,
                false,
            )?,
            delay_secs: secs("delay_between_rounds", &self.delay_between_rounds, 0, true)?,
            stop_file,
            transient_exit_codes: self.transient_exit_codes.clone(),
            fatal_exit_codes: self.fatal_exit_codes.clone(),
            crash_loop,
            short_round_secs: secs("short_round", &self.short_round, DEFAULT_SHORT_SECS, false)?,
            backoff_max_secs: secs(
                "backoff_max",
                &self.backoff_max,
                DEFAULT_BACKOFF_MAX_SECS,
                false,
            )?,
            keep_logs,
            grace_after_exit: self.grace_after_exit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml: &str) -> RawSupervise {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn defaults_and_refusals() {
        let s = raw("").check().unwrap();
        assert_eq!(s.max_rounds, None);
        assert_eq!(s.round_timeout_secs, DEFAULT_ROUND_SECS);
        assert_eq!(s.delay_secs, 0);
        assert_eq!(s.stop_file, "stop");
        assert_eq!(s.crash_loop, 5);
        assert_eq!(s.keep_logs, 10);
        let s = raw("max_rounds = 3\nround_timeout = \"20s\"\ndelay_between_rounds = \"2s\"\ntransient_exit_codes = [75]\nfatal_exit_codes = [78]\nkeep_logs = 2")
            .check()
            .unwrap();
        assert_eq!(
            (
                s.max_rounds,
                s.round_timeout_secs,
                s.delay_secs,
                s.keep_logs
            ),
            (Some(3), 20, 2, 2)
        );
        // (toml, substring of the refusal)
        let bad = [
            ("max_rounds = 0", "max_rounds"),
            ("round_timeout = \"forever\"", "round_timeout"),
            ("round_timeout = \"0s\"", "round_timeout"),
            ("round_timeout = \"30d\"", "round_timeout"),
            ("stop_file = \"../x\"", "stop_file"),
            ("stop_file = \".done\"", "stop_file"),
            ("stop_file = \"a/b\"", "stop_file"),
            (
                "transient_exit_codes = [3]\nfatal_exit_codes = [3]",
                "both transient and fatal",
            ),
            ("fatal_exit_codes = [0]", "not 1-255"),
            ("crash_loop = 0", "crash_loop"),
            ("keep_logs = 0", "keep_logs"),
        ];
        for (t, want) in bad {
            let e = raw(t).check().unwrap_err();
            assert!(e.contains(want), "{t}: {e}");
        }
        assert!(
            toml::from_str::<RawSupervise>("rounds = 3").is_err(),
            "unknown field"
        );
    }
}
