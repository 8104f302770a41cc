//! Schemas of the state files the agent writes and root reads (never trusting them: read
//! without following links, bounded, parsed). The file names are in [`crate::layout::files`].
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `heartbeat.json`: the last heartbeat attempt, for `outpost status` and `heartbeat --now`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatState {
    /// RFC 3339 time of the attempt's end.
    pub at: String,
    /// The same instant in Unix milliseconds (changes on every attempt: wait on this).
    pub at_ms: u64,
    pub ok: bool,
    pub error: Option<String>,
    pub interval_secs: u64,
    pub agent_id: Option<String>,
    pub hub_url: String,
    /// Hub clock minus ours, from the response's Date header.
    pub clock_skew_secs: Option<i64>,
    /// Consecutive failures so far (0 after a success).
    pub failures: u32,
}

pub use crate::layout::files::HEARTBEAT as HEARTBEAT_FILE;

pub fn read_heartbeat_state(state_dir: &Path) -> Option<HeartbeatState> {
    // Root reads it too (`heartbeat --now`, status): never through a link, bounded.
    let bytes =
        crate::trust::read_untrusted(&state_dir.join(HEARTBEAT_FILE), None, 64 << 10).ok()??;
    serde_json::from_slice(&bytes).ok()
}
