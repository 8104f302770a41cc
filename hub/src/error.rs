//! Errors: [`HubError`] for the process (one lowercase line plus a hint, an exit code) and
//! [`ApiError`] for HTTP responses (`{"error", "message", "hint"}`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use outpost_proto::{ErrorBody, ErrorCode, FieldError};

use crate::store::StoreError;

/// A failure of the hub process or of a CLI command.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Bad command-line input (exit 2).
    #[error("{msg}")]
    Usage { msg: String, hint: String },
    /// No admin token configured.
    #[error("no admin token: set OUTPOST_HUB_ADMIN_TOKEN or pass --admin-token-file")]
    NoAdminToken,
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The store (database) failed or is too new.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// TLS configuration is unusable.
    #[error("tls: {0}")]
    Tls(String),
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The OS random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),
    /// An internal failure (a task panicked).
    #[error("internal error: {0}")]
    Internal(String),
    /// The hub could not be reached (CLI).
    #[error("cannot reach the hub at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The release to pin in cloud-init user-data could not be resolved or verified (CLI).
    #[error("{msg}")]
    Release { msg: String, hint: String },
    /// The hub's reply is not the wire type the request expects (CLI).
    #[error("the hub at {url} sent an unexpected reply: {detail}")]
    BadReply { url: String, detail: String },
    /// Some runs did not succeed (CLI `run --follow`; exit 1).
    #[error("{failed} of {total} runs did not succeed")]
    RunsFailed { failed: usize, total: usize },
    /// The hub answered with an error (CLI).
    #[error("hub refused: {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        hint: String,
    },
}

/// Exit code of a CLI command the hub refused for now (429 rate or queue limit, 503 not
/// ready): `EX_TEMPFAIL` of sysexits.h, so a script can tell "retry later" from "refused".
pub const RETRY_LATER: i32 = 75;

impl HubError {
    /// A usage error.
    pub fn usage(msg: impl Into<String>, hint: impl Into<String>) -> Self {
        HubError::Usage {
            msg: msg.into(),
            hint: hint.into(),
        }
    }

    /// The process exit code (docs/EXIT-CODES.md): 2 for bad input, [`RETRY_LATER`] when the
    /// hub is busy or limiting the caller (429, 503: the same command may succeed later), 1
    /// otherwise (a refusal, 409 among them, or a failure).
    pub fn exit_code(&self) -> i32 {
        match self {
            HubError::Usage { .. } | HubError::NoAdminToken | HubError::Tls(_) => 2,
            HubError::Api { status, .. } if *status == 400 || *status == 401 || *status == 404 => 2,
            HubError::Api { status, .. } if *status == 429 || *status == 503 => RETRY_LATER,
            _ => 1,
        }
    }

    /// What the operator should do about it.
    pub fn hint(&self) -> String {
        match self {
            HubError::Usage { hint, .. } => hint.clone(),
            HubError::NoAdminToken => "generate one with `head -c 32 /dev/urandom | base64`, then export OUTPOST_HUB_ADMIN_TOKEN=<token> or put it in a 0600 file passed with --admin-token-file".into(),
            HubError::Io { .. } => "check that the path exists and is accessible to this user".into(),
            HubError::Store(e) => e.hint(),
            HubError::Tls(_) => "pass a PEM certificate chain with --tls-cert and its PEM private key with --tls-key".into(),
            HubError::Listen { .. } => "choose another --listen address or stop the program using that port".into(),
            HubError::Random(_) => "the kernel random source is unavailable; check /dev/urandom".into(),
            HubError::Internal(_) => "this is a bug; please report it with the log".into(),
            HubError::Unreachable { .. } => "start it with `outpost-hub serve`, or point --hub / OUTPOST_HUB_URL at it".into(),
            HubError::BadReply { .. } => "check that --hub points at an outpost-hub of this version (`outpost-hub --version`)".into(),
            HubError::RunsFailed { .. } => "read a run's log with `outpost-hub logs RUN` and its state with `outpost-hub runs`".into(),
            HubError::Api { hint, .. } | HubError::Release { hint, .. } => hint.clone(),
        }
    }
}

/// An API error response.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub hint: &'static str,
    /// The request field at fault (`field_too_long`, `field_invalid`).
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
    /// `log_gap`: where the next log upload must start.
    pub expected_offset: Option<u64>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: ErrorCode,
        message: impl Into<String>,
        hint: &'static str,
    ) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            hint,
            field: None,
            retry_after: None,
            expected_offset: None,
        }
    }

    /// The same error with another code.
    pub fn with_code(mut self, code: ErrorCode) -> Self {
        self.code = code;
        self
    }

    /// The same error naming the request field at fault.
    pub fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_string());
        self
    }

    /// The same error with a `Retry-After` header.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            message,
            "fix the request body; see docs/PROTOCOL.md",
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing or wrong admin token",
            "send Authorization: Bearer <admin token> (OUTPOST_HUB_ADMIN_TOKEN)",
        )
    }

    pub fn token_invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::TokenInvalid,
            message,
            "re-enroll the agent with a new enrollment key",
        )
    }

    pub fn token_revoked() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::TokenRevoked,
            "this agent's token was revoked",
            "the agent must stop; enroll it again with a new key if it should come back",
        )
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            what,
            "check the id or path",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            message,
            "see the hub's log",
        )
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        let mut a = ApiError::bad_request(e.message).with_code(e.code);
        a.field = e.field;
        a
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        eprintln!("outpost-hub: {e}");
        ApiError::internal("database error")
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        eprintln!("outpost-hub: {e}");
        ApiError::internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            field: self.field,
            expected_offset: self.expected_offset,
            ..ErrorBody::new(self.code, self.message, self.hint)
        };
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_by_kind() {
        let api = |status: u16| HubError::Api {
            status,
            code: "x".into(),
            message: "m".into(),
            hint: "h".into(),
        };
        // (error, exit code)
        let cases = [
            (HubError::usage("bad", "fix it"), 2),
            (HubError::NoAdminToken, 2),
            (api(400), 2),
            (api(401), 2),
            (api(404), 2),
            (api(409), 1),
            (api(429), RETRY_LATER),
            (api(503), RETRY_LATER),
            (api(500), 1),
            (
                HubError::RunsFailed {
                    failed: 1,
                    total: 2,
                },
                1,
            ),
            (
                HubError::Unreachable {
                    url: "u".into(),
                    detail: "d".into(),
                },
                1,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code(), code, "{e:?}");
        }
    }
}
