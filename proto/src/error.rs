//! Error codes and the error body of every API error response.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The machine-readable `error` of an API error response (docs/PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: malformed body or a bad value.
    BadRequest,
    /// 400: a string over its cap (the body names the `field`).
    FieldTooLong,
    /// 400: a map too big or of the wrong shape, or a malformed value (`field` named).
    FieldInvalid,
    /// 401: missing or wrong admin token.
    Unauthorized,
    /// 401: the agent token is unknown, or belongs to another agent.
    TokenInvalid,
    /// 401: the agent token was revoked (the agent exits with code 10).
    TokenRevoked,
    /// 401: the enrollment key is unknown.
    KeyUnknown,
    /// 401: the enrollment key expired.
    KeyExpired,
    /// 401: the enrollment key was already used.
    KeyUsed,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 408: the body did not arrive in time.
    RequestTimeout,
    /// 413: the body is over the endpoint's limit.
    PayloadTooLarge,
    /// 429: too many enrollments from one address (`Retry-After`).
    RateLimited,
    /// 500.
    Internal,
    /// 409: another claimant holds the run (the loser drops it).
    RunClaimed,
    /// 409: a log upload starts past the bytes received (`expected_offset` says where).
    LogGap,
    /// 409: a different result was already stored for the run (the first one wins).
    ResultConflict,
    /// 409: the run is not in a state that allows this (a result for a queued run, …).
    RunState,
    /// 409: the action's pack is not trusted on that agent (pending or drifted).
    PackUntrusted,
    /// 400: no such action in the agent's catalog, or `ACTION` names several packs.
    ActionUnknown,
    /// 409: the idempotency key was used for a different request.
    IdempotencyConflict,
    /// 409: dispatch is stopped hub-wide (the kill switch): no run is created or claimed.
    DispatchStopped,
    /// 409: the agent is drained: it takes no new runs (a create naming only drained
    /// agents, a claim by a drained agent).
    AgentDrained,
    /// 429: the agent already has its limit of queued runs (`--max-runs-queued`).
    QueueFull,
    /// 409: the agent already holds its limit of runs in flight (`--max-runs-in-flight`).
    InFlightFull,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 26] = [
        ErrorCode::BadRequest,
        ErrorCode::FieldTooLong,
        ErrorCode::FieldInvalid,
        ErrorCode::Unauthorized,
        ErrorCode::TokenInvalid,
        ErrorCode::TokenRevoked,
        ErrorCode::KeyUnknown,
        ErrorCode::KeyExpired,
        ErrorCode::KeyUsed,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RequestTimeout,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::RunClaimed,
        ErrorCode::LogGap,
        ErrorCode::ResultConflict,
        ErrorCode::RunState,
        ErrorCode::PackUntrusted,
        ErrorCode::ActionUnknown,
        ErrorCode::IdempotencyConflict,
        ErrorCode::DispatchStopped,
        ErrorCode::AgentDrained,
        ErrorCode::QueueFull,
        ErrorCode::InFlightFull,
    ];

    /// The code as sent (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::FieldTooLong => "field_too_long",
            ErrorCode::FieldInvalid => "field_invalid",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::TokenRevoked => "token_revoked",
            ErrorCode::KeyUnknown => "key_unknown",
            ErrorCode::KeyExpired => "key_expired",
            ErrorCode::KeyUsed => "key_used",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::RunClaimed => "run_claimed",
            ErrorCode::LogGap => "log_gap",
            ErrorCode::ResultConflict => "result_conflict",
            ErrorCode::RunState => "run_state",
            ErrorCode::PackUntrusted => "pack_untrusted",
            ErrorCode::ActionUnknown => "action_unknown",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::DispatchStopped => "dispatch_stopped",
            ErrorCode::AgentDrained => "agent_drained",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::InFlightFull => "in_flight_full",
        }
    }

    /// The code named `s`, `None` for a code this version does not know.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// A refusal of the enrollment key (`key_*`).
    pub fn is_key_refusal(self) -> bool {
        matches!(
            self,
            ErrorCode::KeyUnknown | ErrorCode::KeyExpired | ErrorCode::KeyUsed
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every API error response: `{"error", "message", "hint"}`, plus `"field"` for
/// `field_too_long` / `field_invalid`. `error` is kept as sent so that a reader still shows
/// a code newer than itself; [`ErrorBody::code`] is its [`ErrorCode`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub hint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `log_gap`: the offset the next log upload must start at (the bytes received).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_offset: Option<u64>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>, hint: impl Into<String>) -> Self {
        ErrorBody {
            error: code.as_str().to_string(),
            message: message.into(),
            hint: hint.into(),
            field: None,
            expected_offset: None,
        }
    }

    /// The error code, `None` when absent or unknown to this version.
    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::parse(&self.error)
    }
}

/// A request field over its cap or of the wrong shape: the hub answers it as 400 with
/// `code` and `field`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub code: ErrorCode,
    /// The field at fault (`facts.hostname`, `capabilities.docker_version`, …).
    pub field: Option<String>,
    /// One lowercase line.
    pub message: String,
}

impl FieldError {
    /// `field_too_long` naming `field`.
    pub fn too_long(field: &str, max: usize) -> Self {
        FieldError {
            code: ErrorCode::FieldTooLong,
            field: Some(field.to_string()),
            message: format!("{field} is longer than {max} bytes"),
        }
    }

    /// `field_invalid` naming `field`.
    pub fn invalid(field: &str, why: &str) -> Self {
        FieldError {
            code: ErrorCode::FieldInvalid,
            field: Some(field.to_string()),
            message: format!("{field} {why}"),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for FieldError {}
