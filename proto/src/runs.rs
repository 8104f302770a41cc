//! Runs: the hub dispatches actions of trusted packs to agents (docs/PROTOCOL.md, Runs).
//!
//! Pull is the truth, push is a hint: an agent long-polls `POST /api/v1/agent/poll` for
//! offers, claims one (`…/claim`, exactly one claimant wins), reports events keyed by
//! (run id, seq), uploads its log at offsets and reports one result (the first one wins).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{check_len, check_opt, FieldError, FlatMap, MAX_FIELD, MAX_ID};

/// Longest `wait_secs` of a poll.
pub const MAX_POLL_WAIT_SECS: u64 = 30;
/// Most run ids in a poll's `holding`.
pub const MAX_HOLDING: usize = 256;
/// Most events in one upload.
pub const MAX_EVENTS: usize = 256;
/// Most parameters of a run request.
pub const MAX_RUN_PARAMS: usize = 32;
/// Longest parameter value (docs/PACKS.md).
pub const MAX_PARAM_VALUE: usize = 4096;
/// Longest `reason` of a result.
pub const MAX_REASON: usize = 1024;
/// Most runs `GET /api/v1/runs` returns (and its default `limit`).
pub const MAX_LIST_RUNS: usize = 1000;
/// Most bytes of a run request's parameters, names and values added up (the create body
/// itself is capped at 16 KiB).
pub const MAX_RUN_PARAMS_BYTES: usize = 8 * 1024;
/// Most entries `GET /api/v1/audit` returns (and its default `limit`).
pub const MAX_LIST_AUDIT: usize = 1000;

/// The state of a run at the hub. `queued → claimed → running →` one of the final states
/// (`succeeded`, `failed`, `canceled`, `timed_out`, `rejected`); a claimed or running run
/// whose lease expired is `unknown` (a poll holding it makes it `running` again), and one
/// `unknown` for longer than `lost_after` is `lost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Claimed,
    Running,
    Succeeded,
    Failed,
    Canceled,
    TimedOut,
    Rejected,
    Unknown,
    Lost,
}

impl RunState {
    /// Every state.
    pub const ALL: [RunState; 10] = [
        RunState::Queued,
        RunState::Claimed,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Canceled,
        RunState::TimedOut,
        RunState::Rejected,
        RunState::Unknown,
        RunState::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Claimed => "claimed",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Canceled => "canceled",
            RunState::TimedOut => "timed_out",
            RunState::Rejected => "rejected",
            RunState::Unknown => "unknown",
            RunState::Lost => "lost",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<RunState> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// A state no transition leaves except a late result (`lost`).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            RunState::Queued | RunState::Claimed | RunState::Running | RunState::Unknown
        )
    }

    /// Claimed, running or unknown: an agent holds (or held) it under a lease.
    pub fn is_held(self) -> bool {
        matches!(
            self,
            RunState::Claimed | RunState::Running | RunState::Unknown
        )
    }
}

/// How a run ended, as the agent reports it in its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    Succeeded,
    Failed,
    Canceled,
    TimedOut,
    /// The agent refused to start it (drifted pack, a parameter out of bounds, a limit the
    /// host cannot enforce); `reason` says why.
    Rejected,
}

impl RunOutcome {
    pub fn state(self) -> RunState {
        match self {
            RunOutcome::Succeeded => RunState::Succeeded,
            RunOutcome::Failed => RunState::Failed,
            RunOutcome::Canceled => RunState::Canceled,
            RunOutcome::TimedOut => RunState::TimedOut,
            RunOutcome::Rejected => RunState::Rejected,
        }
    }
}

/// Which agents a run request fans out to: exactly one of `agent` (an id), `group` or
/// `labels` (every label must match).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The body of `POST /api/v1/runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRunRequest {
    pub target: RunTarget,
    /// `PACK/ACTION`, or `ACTION` when one pack of each agent's catalog has it.
    pub action: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// A retried create with the same key and the same request returns the same runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl CreateRunRequest {
    /// Shape and caps: one target kind, an action, bounded params.
    pub fn validate(&self) -> Result<(), FieldError> {
        let t = &self.target;
        let kinds = usize::from(t.agent.is_some())
            + usize::from(t.group.is_some())
            + usize::from(!t.labels.is_empty());
        if kinds != 1 {
            return Err(FieldError::invalid(
                "target",
                "must name exactly one of agent, group or labels",
            ));
        }
        check_opt("target.agent", t.agent.as_deref(), MAX_ID)?;
        check_opt("target.group", t.group.as_deref(), MAX_FIELD)?;
        // An agent's labels come from its key, capped the same way: more can never match.
        if t.labels.len() > crate::MAX_MAP_ENTRIES {
            return Err(FieldError::invalid(
                "target.labels",
                "has more than 32 entries",
            ));
        }
        for (k, v) in &t.labels {
            check_len("target.labels key", k, crate::MAX_MAP_KEY)?;
            check_len(&format!("target.labels.{k}"), v, MAX_FIELD)?;
        }
        if self.action.is_empty() {
            return Err(FieldError::invalid("action", "must not be empty"));
        }
        check_len("action", &self.action, 2 * crate::MAX_MAP_KEY + 1)?;
        check_opt("idempotency_key", self.idempotency_key.as_deref(), MAX_ID)?;
        if self.params.len() > MAX_RUN_PARAMS {
            return Err(FieldError::invalid("params", "has more than 32 entries"));
        }
        let total: usize = self.params.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total > MAX_RUN_PARAMS_BYTES {
            return Err(FieldError::invalid(
                "params",
                "has more than 8192 bytes of names and values",
            ));
        }
        for (k, v) in &self.params {
            check_len("params key", k, crate::MAX_MAP_KEY)?;
            check_len(&format!("params.{k}"), v, MAX_PARAM_VALUE)?;
            if v.contains('\0') {
                return Err(FieldError::invalid(&format!("params.{k}"), "contains NUL"));
            }
        }
        Ok(())
    }
}

/// One run as the admin API shows it. Times are RFC 3339; `null` until they happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunView {
    pub id: String,
    pub agent_id: String,
    pub pack: String,
    /// The pack's tree hash the run was dispatched at (the agent refuses another).
    pub sha256: String,
    pub action: String,
    pub params: BTreeMap<String, String>,
    pub idempotent: bool,
    pub state: RunState,
    pub created_at: String,
    pub claimed_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// When the lease of a claimed or running run ends (`null` otherwise).
    pub lease_expires_at: Option<String>,
    pub cancel_requested: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub reason: Option<String>,
    /// The result arrived after the run was `lost`.
    pub late: bool,
    /// Log bytes received so far.
    pub log_bytes: u64,
    /// The log size the agent's result reported (`null` before the result).
    pub result_log_bytes: Option<u64>,
    /// The run this one re-dispatches (an idempotent action after a lost run).
    pub retry_of: Option<String>,
}

/// The reply to `POST /api/v1/runs`: 201 created, 200 the same runs again (idempotency key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunsCreated {
    pub runs: Vec<RunView>,
}

/// The body of `POST /api/v1/agent/poll`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollRequest {
    pub agent_id: String,
    /// How long the hub may hold the request open waiting for an offer (0 to 30).
    #[serde(default)]
    pub wait_secs: u64,
    /// The runs this agent has claimed and not finished: their leases are renewed and an
    /// `unknown` one is `running` again.
    #[serde(default)]
    pub holding: Vec<String>,
}

impl PollRequest {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_len("agent_id", &self.agent_id, MAX_ID)?;
        if self.wait_secs > MAX_POLL_WAIT_SECS {
            return Err(FieldError::invalid("wait_secs", "must be 0 to 30"));
        }
        if self.holding.len() > MAX_HOLDING {
            return Err(FieldError::invalid("holding", "has more than 256 run ids"));
        }
        for h in &self.holding {
            check_len("holding", h, MAX_ID)?;
        }
        Ok(())
    }
}

/// A queued run offered to its agent; the agent claims it before starting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOffer {
    pub run_id: String,
    pub pack: String,
    /// The trusted tree hash: an agent whose pack has another hash rejects the run.
    pub sha256: String,
    /// The action id within the pack.
    pub action: String,
    pub params: BTreeMap<String, String>,
    /// The lease a claim gets; renewed by polls holding the run and by uploads.
    pub lease_secs: u64,
}

/// The reply to a poll: offers (queued runs, oldest first) and the held runs an admin asked
/// to cancel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollReply {
    pub offers: Vec<RunOffer>,
    pub cancel: Vec<String>,
}

/// The body of `POST /api/v1/agent/runs/{id}/claim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// Who claims: a random id of the agent process (so a second process of the same agent,
    /// or a retry, is told apart). The same claimant claiming again gets 200.
    pub claimant: String,
}

impl ClaimRequest {
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.claimant.is_empty() {
            return Err(FieldError::invalid("claimant", "must not be empty"));
        }
        check_len("claimant", &self.claimant, MAX_ID)
    }
}

/// The reply to a winning claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claimed {
    pub run_id: String,
    pub lease_secs: u64,
}

/// One event of a run, keyed by (run id, `seq`): a seq already stored is ignored. `kind` is
/// `started` (moves `claimed` to `running`), `progress`, …; `data` is a flat object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEvent {
    pub seq: u64,
    pub kind: String,
    /// RFC 3339, the agent's clock.
    pub at: String,
    #[serde(default)]
    pub data: FlatMap,
}

/// The body of `POST /api/v1/agent/runs/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsUpload {
    pub events: Vec<RunEvent>,
}

impl EventsUpload {
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.events.len() > MAX_EVENTS {
            return Err(FieldError::invalid("events", "has more than 256 entries"));
        }
        for e in &self.events {
            if e.kind.is_empty()
                || e.kind.len() > crate::MAX_MAP_KEY
                || !e
                    .kind
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(FieldError::invalid(
                    "events.kind",
                    "must be 1 to 64 of a-z 0-9 _",
                ));
            }
            check_len("events.at", &e.at, crate::MAX_MAP_KEY)?;
            crate::check_flat("events.data", &[], &e.data)?;
        }
        Ok(())
    }
}

/// The reply to an events upload: the highest seq stored for the run (0 before any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsAck {
    pub acked_seq: u64,
}

/// The reply to a log upload: where the next one starts (the bytes received).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogAck {
    pub next_offset: u64,
}

/// The body of `POST /api/v1/agent/runs/{id}/result`. The first result wins; the same one
/// again is 200, a different one 409 `result_conflict`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResult {
    pub outcome: RunOutcome,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that ended the process (`SIGKILL`, …), reported apart from the exit code.
    #[serde(default)]
    pub signal: Option<String>,
    /// One line: why (a rejection's reason, `canceled by admin`, …); may be empty.
    #[serde(default)]
    pub reason: String,
    /// RFC 3339, the agent's clock.
    pub finished_at: String,
    /// Log bytes the agent produced (so a reader knows whether the upload is complete).
    #[serde(default)]
    pub log_bytes: u64,
}

impl RunResult {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_opt("signal", self.signal.as_deref(), crate::MAX_MAP_KEY)?;
        check_len("reason", &self.reason, MAX_REASON)?;
        check_len("finished_at", &self.finished_at, crate::MAX_MAP_KEY)
    }
}

/// The reply to a result: the run's state and whether the result came after `lost`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultAck {
    pub state: RunState,
    pub late: bool,
}

/// The body of `POST /api/v1/drain`: drain one agent or every agent of a group (`undo`:
/// undrain). A drained agent is offered no new run; the runs it holds finish and deliver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default)]
    pub undo: bool,
}

impl DrainRequest {
    /// Exactly one of `agent` or `group`, within the caps.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.agent.is_some() == self.group.is_some() {
            return Err(FieldError::invalid(
                "agent",
                "or group: name exactly one of them",
            ));
        }
        check_opt("agent", self.agent.as_deref(), MAX_ID)?;
        check_opt("group", self.group.as_deref(), MAX_FIELD)
    }
}

/// The reply to a drain: whether the agents are now drained, and the agents it named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainReply {
    pub drained: bool,
    pub agents: Vec<crate::AgentView>,
}

/// One drained agent in [`DispatchView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainedAgent {
    pub agent_id: String,
    /// When it was drained (RFC 3339) and by whom (`admin token`, `dashboard session …`).
    pub since: String,
    pub by: String,
}

/// `GET /api/v1/dispatch`: the kill switch, the drained agents and the per-agent limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchView {
    /// Dispatch is stopped hub-wide: no run is offered, claimed or created.
    pub stopped: bool,
    /// Since when and by whom it is stopped (`null` while running).
    pub stopped_at: Option<String>,
    pub stopped_by: Option<String>,
    pub drained: Vec<DrainedAgent>,
    /// `--max-runs-in-flight`: runs an agent may hold (claimed, running, unknown) at once.
    pub max_runs_in_flight: u64,
    /// `--max-runs-queued`: queued runs an agent may have.
    pub max_runs_queued: u64,
}

/// The body of `POST /api/v1/dispatch/stop`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopDispatchRequest {
    /// Also cancel everything: queued runs at once, held runs at their agent's next poll.
    #[serde(default)]
    pub cancel_in_flight: bool,
}

/// The reply to a stop: the dispatch state, and the runs `cancel_in_flight` canceled
/// (queued ones) or asked to cancel (held ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopDispatchReply {
    pub dispatch: DispatchView,
    pub canceled: Vec<String>,
    pub cancel_requested: Vec<String>,
}

/// One entry of the hub's audit log (`GET /api/v1/audit`, newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// RFC 3339.
    pub at: String,
    /// `admin token` (the API and CLI) or `dashboard session <12 hex>`.
    pub who: String,
    /// `drain`, `undrain`, `dispatch_stop`, `dispatch_start`, …
    pub action: String,
    /// What it acted on: `agent a_…`, `group edge`, `all`.
    pub target: String,
    /// One line: what it changed.
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_bounded_in_total() {
        let req = |params: Vec<(String, String)>| CreateRunRequest {
            target: RunTarget {
                agent: Some("a_1".into()),
                ..Default::default()
            },
            action: "restart".into(),
            params: params.into_iter().collect(),
            idempotency_key: None,
        };
        let kv = |n: usize, len: usize| -> Vec<(String, String)> {
            (0..n)
                .map(|i| (format!("p{i:02}"), "v".repeat(len)))
                .collect()
        };
        // 2 × (3 + 4093) = 8192: at the cap; one byte more is refused, naming `params`.
        assert!(req(kv(2, 4093)).validate().is_ok());
        let e = req(kv(2, 4094)).validate().unwrap_err();
        assert_eq!(e.field.as_deref(), Some("params"), "{e}");
        assert!(req(kv(32, 200)).validate().is_ok());
        assert_eq!(
            req(kv(32, 254)).validate().unwrap_err().field.as_deref(),
            Some("params")
        );
    }

    #[test]
    fn drain_requests_name_one_target() {
        let d = |agent: Option<&str>, group: Option<&str>| DrainRequest {
            agent: agent.map(str::to_string),
            group: group.map(str::to_string),
            undo: false,
        };
        assert!(d(Some("a_1"), None).validate().is_ok());
        assert!(d(None, Some("edge")).validate().is_ok());
        assert!(d(None, None).validate().is_err());
        assert!(d(Some("a_1"), Some("edge")).validate().is_err());
        let long = "g".repeat(256);
        assert_eq!(
            d(None, Some(&long)).validate().unwrap_err().code,
            crate::ErrorCode::FieldTooLong
        );
        let back: DrainRequest =
            serde_json::from_str(r#"{"group": "edge", "undo": true}"#).unwrap();
        assert!(back.undo);
        assert!(serde_json::from_str::<DrainRequest>(r#"{"agent": "a", "x": 1}"#).is_err());
    }
}
