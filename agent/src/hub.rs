//! Client for the hub API v1 (docs/PROTOCOL.md): enroll, heartbeat, diagnostics, healthz.
//!
//! Every call has a 5 s connect and a 15 s overall timeout, and returns the response's `Date`
//! header ([`Meta`]) so callers can check clock skew. 401 answers map to distinct variants
//! ([`HubError::KeyRefused`], [`HubError::TokenRevoked`], [`HubError::TokenInvalid`]).
//! Secrets (enrollment key, agent token) never appear in an error or a log line.
use outpost_core::time as clock;
use outpost_proto::{DiagnosticsUpload, EnrollRequest, ErrorBody, ErrorCode};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const OVERALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest response body read (the hub's answers are a few hundred bytes).
const BODY_LIMIT: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("hub url {url:?} is invalid: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("cannot use CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("cannot reach the hub at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("hub refused the enrollment key ({code})")]
    KeyRefused { code: String, message: String },
    #[error("hub revoked this agent's token")]
    TokenRevoked,
    #[error("hub does not accept this agent's token (token_invalid)")]
    TokenInvalid,
    #[error("hub answered {status} to {path} ({code})")]
    Status {
        path: &'static str,
        status: u16,
        code: String,
        message: String,
    },
    #[error("hub sent an unexpected answer to {path}: {reason}")]
    BadResponse { path: &'static str, reason: String },
}

impl HubError {
    pub fn hint(&self) -> String {
        match self {
            HubError::BadUrl { .. } => {
                "set `[hub] url` in the config to the hub's base URL, like https://hub.example.com"
                    .into()
            }
            HubError::CaFile { path, .. } => format!(
                "make {} a readable PEM file with the hub's CA certificate(s), or remove `[release] ca_file`",
                path.display()
            ),
            HubError::Unreachable { reason, .. } if looks_like_tls(reason) => {
                "the hub's certificate is not trusted: set `[release] ca_file` to its CA (PEM), \
                 and check the URL's host name matches the certificate"
                    .into()
            }
            HubError::Unreachable { .. } => {
                "check the hub URL, DNS, the network path and HTTPS_PROXY/NO_PROXY; the agent retries with backoff".into()
            }
            HubError::KeyRefused { code, .. } => format!(
                "the key is {}: create a new one on the hub (POST /api/v1/keys), put it in the \
                 secrets file as {}=..., then restart the service",
                match ErrorCode::parse(code) {
                    Some(ErrorCode::KeyExpired) => "expired",
                    Some(ErrorCode::KeyUsed) => "already used (keys are single use)",
                    _ => "unknown to the hub",
                },
                outpost_core::env::ENROLL_KEY
            ),
            HubError::TokenRevoked => {
                "an admin revoked this agent on the hub; to rejoin, delete identity.json from the \
                 state directory, add a new enrollment key to the secrets file and restart"
                    .into()
            }
            HubError::TokenInvalid => {
                "the hub does not know this agent (deleted, or another hub): delete identity.json \
                 from the state directory, add a new enrollment key to the secrets file and restart"
                    .into()
            }
            HubError::Status { message, .. } if !message.is_empty() => {
                format!("the hub says: {message}")
            }
            HubError::Status { .. } | HubError::BadResponse { .. } => {
                "check that the URL points at an outpost hub speaking API v1 and that it is healthy"
                    .into()
            }
        }
    }

    /// The hub rejected our credentials: retrying will not help.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            HubError::KeyRefused { .. } | HubError::TokenRevoked | HubError::TokenInvalid
        )
    }

    /// The machine-readable code (`token_revoked`, `key_used`, …), when the hub sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            HubError::KeyRefused { code, .. } | HubError::Status { code, .. } => Some(code),
            HubError::TokenRevoked => Some(ErrorCode::TokenRevoked.as_str()),
            HubError::TokenInvalid => Some(ErrorCode::TokenInvalid.as_str()),
            _ => None,
        }
    }
}

fn looks_like_tls(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    ["certificate", "tls", "handshake", "unknownissuer", "rustls"]
        .iter()
        .any(|w| r.contains(w))
}

/// About one response.
#[derive(Debug, Clone)]
pub struct Meta {
    pub status: u16,
    /// The response's `Date` header.
    pub date: Option<SystemTime>,
    /// When the response arrived, by the local clock.
    pub received_at: SystemTime,
}

impl Meta {
    /// `hub - local` in seconds (positive: the hub is ahead).
    pub fn skew_secs(&self) -> Option<i64> {
        self.date.map(|d| clock::skew_secs(self.received_at, d))
    }
}

/// The wire types (docs/PROTOCOL.md), shared with the hub. The hub refuses strings over
/// [`MAX_FIELD`] (`field_too_long`): the client cuts host facts with the types' `capped()`
/// at a character boundary before sending, so an odd host still enrolls.
pub use outpost_proto::{
    cap, Capabilities, Enrolled, Facts as EnrollFacts, Health, Heartbeat, HeartbeatAck,
    JournalHead, LastUpgrade, MAX_FIELD,
};

pub struct HubClient {
    base: String,
    agent: ureq::Agent,
}

impl HubClient {
    /// A client for the hub at `url` (`https://…`, or `http://` for loopback tests), trusting
    /// `ca_file` in addition to the usual roots.
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<HubClient, HubError> {
        let base = url.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(HubError::BadUrl {
                url: url.into(),
                reason: "it must start with https:// (or http://)",
            });
        }
        if matches!(base.split_once("://"), Some((_, "")) | None) {
            return Err(HubError::BadUrl {
                url: url.into(),
                reason: "it has no host",
            });
        }
        // The same trust as the release reader: the host's CA bundle plus `ca_file`.
        let mut tls = ureq::tls::TlsConfig::builder();
        let roots =
            outpost_release::fetch::trust_roots(ca_file).map_err(|reason| HubError::CaFile {
                path: ca_file.map(Path::to_path_buf).unwrap_or_default(),
                reason,
            })?;
        if let Some(roots) = roots {
            tls = tls.root_certs(roots);
        }
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(OVERALL_TIMEOUT))
            .http_status_as_error(false)
            .user_agent(format!("outpost/{}", outpost_release::VERSION))
            .max_idle_connections(1)
            .tls_config(tls.build())
            .build();
        Ok(HubClient {
            base,
            agent: ureq::Agent::new_with_config(config),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn exchange(
        &self,
        path: &'static str,
        token: Option<&str>,
        body: Option<String>,
    ) -> Result<(u16, String, Meta), HubError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |e: ureq::Error| HubError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        };
        let result = match body {
            Some(b) => {
                let mut req = self.agent.post(&url).content_type("application/json");
                if let Some(t) = token {
                    req = req.header("Authorization", format!("Bearer {t}"));
                }
                req.send(b.as_bytes())
            }
            None => self.agent.get(&url).call(),
        };
        let mut resp = result.map_err(unreachable)?;
        let meta = Meta {
            status: resp.status().as_u16(),
            date: resp
                .headers()
                .get("date")
                .and_then(|v| v.to_str().ok())
                .and_then(clock::parse_http_date),
            received_at: SystemTime::now(),
        };
        let text = resp
            .body_mut()
            .with_config()
            .limit(BODY_LIMIT)
            .read_to_string()
            .map_err(unreachable)?;
        Ok((meta.status, text, meta))
    }

    fn parse<T: serde::de::DeserializeOwned>(
        path: &'static str,
        text: &str,
    ) -> Result<T, HubError> {
        serde_json::from_str(text).map_err(|e| HubError::BadResponse {
            path,
            reason: e.to_string(),
        })
    }

    fn error(path: &'static str, status: u16, text: &str) -> HubError {
        let b: ErrorBody = serde_json::from_str(text).unwrap_or_default();
        // A `key_*` code newer than this agent is a key refusal too.
        let key_refusal = b
            .code()
            .map_or(b.error.starts_with("key_"), |c| c.is_key_refusal());
        match (status, b.code()) {
            (401, Some(ErrorCode::TokenRevoked)) => HubError::TokenRevoked,
            (401, Some(ErrorCode::TokenInvalid)) => HubError::TokenInvalid,
            (401, _) if key_refusal => HubError::KeyRefused {
                code: b.error,
                message: b.message,
            },
            _ => HubError::Status {
                path,
                status,
                code: if b.error.is_empty() {
                    "no error code".into()
                } else {
                    b.error
                },
                message: b.message,
            },
        }
    }

    /// `POST /api/v1/enroll` with the idempotency `nonce` (200 or 201: the identity).
    pub fn enroll(
        &self,
        key: &str,
        nonce: Option<&str>,
        facts: &EnrollFacts,
    ) -> Result<(Enrolled, Meta), HubError> {
        const P: &str = "/api/v1/enroll";
        let req = EnrollRequest {
            key: key.to_string(),
            nonce: nonce.map(String::from),
            facts: facts.clone().capped(),
        };
        let body = serde_json::to_string(&req).map_err(|e| HubError::BadResponse {
            path: P,
            reason: e.to_string(),
        })?;
        let (status, text, meta) = self.exchange(P, None, Some(body))?;
        match status {
            200 | 201 => Ok((Self::parse(P, &text)?, meta)),
            s => Err(Self::error(P, s, &text)),
        }
    }

    /// `POST /api/v1/heartbeat`.
    pub fn heartbeat(&self, token: &str, hb: &Heartbeat) -> Result<(HeartbeatAck, Meta), HubError> {
        const P: &str = "/api/v1/heartbeat";
        let body =
            serde_json::to_string(&hb.clone().capped()).map_err(|e| HubError::BadResponse {
                path: P,
                reason: e.to_string(),
            })?;
        let (status, text, meta) = self.exchange(P, Some(token), Some(body))?;
        match status {
            200 => Ok((Self::parse(P, &text)?, meta)),
            s => Err(Self::error(P, s, &text)),
        }
    }

    /// `POST /api/v1/diagnostics`.
    pub fn diagnostics(
        &self,
        token: &str,
        agent_id: &str,
        report: &serde_json::Value,
    ) -> Result<Meta, HubError> {
        const P: &str = "/api/v1/diagnostics";
        let upload = DiagnosticsUpload {
            agent_id: agent_id.to_string(),
            report,
        };
        let body = serde_json::to_string(&upload).map_err(|e| HubError::BadResponse {
            path: P,
            reason: e.to_string(),
        })?;
        let (status, text, meta) = self.exchange(P, Some(token), Some(body))?;
        match status {
            200..=299 => Ok(meta),
            s => Err(Self::error(P, s, &text)),
        }
    }

    /// `POST` `body` to `path` with the agent's token, bounded by `timeout` (a long poll
    /// waits longer than [`OVERALL_TIMEOUT`]).
    pub fn post_bytes(
        &self,
        path: &str,
        token: &str,
        content_type: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(u16, String), HubError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |e: ureq::Error| HubError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        };
        let mut resp = self
            .agent
            .post(&url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .content_type(content_type)
            .header("Authorization", format!("Bearer {token}"))
            .send(body)
            .map_err(unreachable)?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(BODY_LIMIT)
            .read_to_string()
            .map_err(unreachable)?;
        Ok((status, text))
    }

    /// The typed body of a 2xx answer.
    pub fn parse_body<T: serde::de::DeserializeOwned>(
        label: &'static str,
        text: &str,
    ) -> Result<T, HubError> {
        Self::parse(label, text)
    }

    /// The error of a non-2xx answer.
    pub fn error_of(label: &'static str, status: u16, text: &str) -> HubError {
        Self::error(label, status, text)
    }

    /// `GET /healthz`.
    pub fn healthz(&self) -> Result<(Health, Meta), HubError> {
        const P: &str = "/healthz";
        let (status, text, meta) = self.exchange(P, None, None)?;
        match status {
            200 => Ok((Self::parse(P, &text)?, meta)),
            s => Err(Self::error(P, s, &text)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_mapping_table() {
        let cases: &[(u16, &str, &str)] = &[
            (
                401,
                r#"{"error":"token_revoked","message":"m"}"#,
                "TokenRevoked",
            ),
            (401, r#"{"error":"token_invalid"}"#, "TokenInvalid"),
            (
                401,
                r#"{"error":"key_used","message":"used"}"#,
                "KeyRefused(key_used)",
            ),
            (401, r#"{"error":"key_expired"}"#, "KeyRefused(key_expired)"),
            (401, "not json", "Status(401,no error code)"),
            (
                400,
                r#"{"error":"bad_request","message":"x"}"#,
                "Status(400,bad_request)",
            ),
            (503, "", "Status(503,no error code)"),
        ];
        for (status, body, want) in cases {
            let e = HubClient::error("/p", *status, body);
            let got = match &e {
                HubError::TokenRevoked => "TokenRevoked".to_string(),
                HubError::TokenInvalid => "TokenInvalid".to_string(),
                HubError::KeyRefused { code, .. } => format!("KeyRefused({code})"),
                HubError::Status { status, code, .. } => format!("Status({status},{code})"),
                other => format!("{other:?}"),
            };
            assert_eq!(&got, want, "{status} {body}");
            assert!(!e.to_string().contains('\n'));
            assert!(!e.hint().is_empty());
        }
    }

    #[test]
    fn long_facts_are_cut_at_char_boundaries() {
        let f = EnrollFacts {
            hostname: "é".repeat(200),
            machine_id: "m".into(),
            distro: "d".repeat(300),
            arch: String::new(),
            version: "1".into(),
            mode: "system".into(),
        }
        .capped();
        assert_eq!(f.hostname.len(), 254, "no half character");
        assert_eq!(f.distro.len(), 255);
        assert_eq!(f.machine_id, "m");
        let body = serde_json::to_value(EnrollRequest {
            key: "k".into(),
            nonce: None,
            facts: f,
        })
        .unwrap();
        assert!(body.get("nonce").is_none(), "no nonce, no field: {body}");
        assert_eq!(body["key"], "k");
    }

    #[test]
    fn url_and_ca_checks() {
        assert!(matches!(
            HubClient::new("hub.example.com", None),
            Err(HubError::BadUrl { .. })
        ));
        assert!(matches!(
            HubClient::new("https://", None),
            Err(HubError::BadUrl { .. })
        ));
        let c = HubClient::new("https://hub.example.com/", None).unwrap();
        assert_eq!(c.base_url(), "https://hub.example.com");
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("ca.pem");
        assert!(matches!(
            HubClient::new("https://h", Some(&missing)),
            Err(HubError::CaFile { .. })
        ));
        std::fs::write(&missing, "not a pem").unwrap();
        let e = HubClient::new("https://h", Some(&missing)).err().unwrap();
        assert!(e.to_string().contains("no PEM CERTIFICATE"), "{e}");
    }

    #[test]
    fn tls_failures_get_the_ca_hint() {
        let e = HubError::Unreachable {
            url: "https://h".into(),
            reason: "tls: invalid peer certificate: UnknownIssuer".into(),
        };
        assert!(e.hint().contains("ca_file"));
        let e = HubError::Unreachable {
            url: "https://h".into(),
            reason: "connection refused".into(),
        };
        assert!(!e.hint().contains("ca_file"));
    }
}
