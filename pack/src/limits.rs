//! An action's limits: what systemd enforces on its run unit (`RuntimeMaxSec=`,
//! `MemoryMax=`, `CPUQuota=`, `TasksMax=`) and the cap on its log.
use serde::{Deserialize, Serialize};

/// Without `timeout`, a run may take this long.
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;
/// Longest timeout accepted (a supervised workload's rounds have their own).
pub const MAX_TIMEOUT_SECS: u64 = 7 * 86_400;
/// Without `log_size`, a run's log is capped here.
pub const DEFAULT_LOG_BYTES: u64 = 10 << 20;
pub const MAX_LOG_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// "30s", "5m", "1h" (default 1h).
    pub timeout: Option<String>,
    /// "256M", "1G" (bytes with K/M/G suffix, powers of 1024).
    pub memory: Option<String>,
    /// "50%" of one CPU, up to "400%".
    pub cpu: Option<String>,
    /// Most processes and threads.
    pub tasks: Option<u32>,
    /// Cap of the run's log (default 10M).
    pub log_size: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub timeout_secs: u64,
    pub memory_bytes: Option<u64>,
    pub cpu_percent: Option<u32>,
    pub tasks: Option<u32>,
    pub log_bytes: u64,
}

/// "512K", "256M", "1G", or plain bytes; `None` when malformed or zero.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        b if b.is_ascii_digit() => (s, 1),
        _ => return None,
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    n.checked_mul(mult).filter(|&b| b > 0)
}

impl RawLimits {
    pub fn check(&self) -> Result<Limits, String> {
        let timeout_secs = match &self.timeout {
            None => DEFAULT_TIMEOUT_SECS,
            Some(t) => outpost_core::duration::parse_secs(t)
                .filter(|&s| s <= MAX_TIMEOUT_SECS)
                .ok_or_else(|| format!("limits.timeout {t:?}: use 30s, 5m, 1h … up to 7d"))?,
        };
        let memory_bytes = match &self.memory {
            None => None,
            Some(m) => Some(
                parse_bytes(m)
                    .filter(|&b| b >= 1 << 20)
                    .ok_or_else(|| format!("limits.memory {m:?}: use 64M, 1G … (at least 1M)"))?,
            ),
        };
        let cpu_percent = match &self.cpu {
            None => None,
            Some(c) => Some(
                c.strip_suffix('%')
                    .and_then(|n| n.parse::<u32>().ok())
                    .filter(|&p| (1..=6400).contains(&p))
                    .ok_or_else(|| format!("limits.cpu {c:?}: use 50%, 200% … (100% = one CPU)"))?,
            ),
        };
        if self.tasks == Some(0) {
            return Err("limits.tasks: at least 1".into());
        }
        let log_bytes = match &self.log_size {
            None => DEFAULT_LOG_BYTES,
            Some(l) => parse_bytes(l)
                .filter(|&b| b <= MAX_LOG_BYTES)
                .ok_or_else(|| format!("limits.log_size {l:?}: use 1M, 100M … up to 1G"))?,
        };
        Ok(Limits {
            timeout_secs,
            memory_bytes,
            cpu_percent,
            tasks: self.tasks,
            log_bytes,
        })
    }
}
