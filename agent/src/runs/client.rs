//! The agent's side of the runs protocol (docs/PROTOCOL.md, Runs): poll, claim, events, log,
//! result, each answer mapped to what the engine does next.
use crate::hub::{HubClient, HubError, OVERALL_TIMEOUT};
use outpost_proto::{
    ClaimRequest, Claimed, ErrorBody, ErrorCode, EventsAck, EventsUpload, LogAck, PollReply,
    PollRequest, ResultAck, RunEvent, RunResult,
};
use std::time::Duration;

/// How the hub answered a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Won {
        lease_secs: u64,
    },
    /// Another claimant has it, it was canceled, or it is not ours: drop it.
    Lost(String),
}

/// How the hub answered an upload for a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery<T> {
    Acked(T),
    /// The hub will never take it (the run is unknown to it, or it has another result):
    /// stop sending, keep the local copy.
    Refused(String),
}

/// A log upload's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogReply {
    /// The bytes the hub has; the next upload starts there.
    Next(u64),
    /// The upload started past the hub's end: resend from `expected`.
    Gap(u64),
}

pub struct RunsClient {
    pub hub: HubClient,
    pub token: String,
    pub agent_id: String,
}

const JSON: &str = "application/json";

fn encode<T: serde::Serialize>(label: &'static str, v: &T) -> Result<Vec<u8>, HubError> {
    serde_json::to_vec(v).map_err(|e| HubError::BadResponse {
        path: label,
        reason: e.to_string(),
    })
}

impl RunsClient {
    fn post(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(u16, String), HubError> {
        self.hub
            .post_bytes(path, &self.token, content_type, body, timeout)
    }

    /// `POST /api/v1/agent/poll`, waiting up to `wait_secs` for an offer.
    pub fn poll(&self, wait_secs: u64, holding: Vec<String>) -> Result<PollReply, HubError> {
        const P: &str = "/api/v1/agent/poll";
        let req = PollRequest {
            agent_id: self.agent_id.clone(),
            wait_secs,
            holding,
        };
        let timeout = Duration::from_secs(wait_secs) + OVERALL_TIMEOUT;
        let (status, text) = self.post(P, JSON, &encode(P, &req)?, timeout)?;
        match status {
            200 => HubClient::parse_body(P, &text),
            s => Err(HubClient::error_of(P, s, &text)),
        }
    }

    /// `POST /api/v1/agent/runs/{id}/claim`.
    pub fn claim(&self, id: &str, claimant: &str) -> Result<Claim, HubError> {
        const P: &str = "/api/v1/agent/runs/{id}/claim";
        let req = ClaimRequest {
            claimant: claimant.into(),
        };
        let path = format!("/api/v1/agent/runs/{id}/claim");
        let (status, text) = self.post(&path, JSON, &encode(P, &req)?, OVERALL_TIMEOUT)?;
        match status {
            200 => Ok(Claim::Won {
                lease_secs: HubClient::parse_body::<Claimed>(P, &text)?.lease_secs,
            }),
            404 | 409 => Ok(Claim::Lost(refusal(status, &text))),
            s => Err(HubClient::error_of(P, s, &text)),
        }
    }

    /// `POST /api/v1/agent/runs/{id}/events`.
    pub fn events(&self, id: &str, events: &[RunEvent]) -> Result<Delivery<u64>, HubError> {
        const P: &str = "/api/v1/agent/runs/{id}/events";
        let req = EventsUpload {
            events: events.to_vec(),
        };
        let path = format!("/api/v1/agent/runs/{id}/events");
        let (status, text) = self.post(&path, JSON, &encode(P, &req)?, OVERALL_TIMEOUT)?;
        match status {
            200 => Ok(Delivery::Acked(
                HubClient::parse_body::<EventsAck>(P, &text)?.acked_seq,
            )),
            404 | 409 => Ok(Delivery::Refused(refusal(status, &text))),
            s => Err(HubClient::error_of(P, s, &text)),
        }
    }

    /// `POST /api/v1/agent/runs/{id}/log?offset=N`.
    pub fn log(&self, id: &str, offset: u64, bytes: &[u8]) -> Result<Delivery<LogReply>, HubError> {
        const P: &str = "/api/v1/agent/runs/{id}/log";
        let path = format!("/api/v1/agent/runs/{id}/log?offset={offset}");
        let (status, text) =
            self.post(&path, "application/octet-stream", bytes, OVERALL_TIMEOUT)?;
        match status {
            200 => Ok(Delivery::Acked(LogReply::Next(
                HubClient::parse_body::<LogAck>(P, &text)?.next_offset,
            ))),
            409 => {
                let b: ErrorBody = serde_json::from_str(&text).unwrap_or_default();
                match (b.code(), b.expected_offset) {
                    (Some(ErrorCode::LogGap), Some(at)) => Ok(Delivery::Acked(LogReply::Gap(at))),
                    _ => Ok(Delivery::Refused(refusal(status, &text))),
                }
            }
            404 | 413 => Ok(Delivery::Refused(refusal(status, &text))),
            s => Err(HubClient::error_of(P, s, &text)),
        }
    }

    /// `POST /api/v1/agent/runs/{id}/result`.
    pub fn result(&self, id: &str, r: &RunResult) -> Result<Delivery<ResultAck>, HubError> {
        const P: &str = "/api/v1/agent/runs/{id}/result";
        let path = format!("/api/v1/agent/runs/{id}/result");
        let (status, text) = self.post(&path, JSON, &encode(P, r)?, OVERALL_TIMEOUT)?;
        match status {
            200 => Ok(Delivery::Acked(HubClient::parse_body(P, &text)?)),
            404 | 409 => Ok(Delivery::Refused(refusal(status, &text))),
            s => Err(HubClient::error_of(P, s, &text)),
        }
    }
}

/// `409 run_claimed: …` from an error answer.
fn refusal(status: u16, text: &str) -> String {
    let b: ErrorBody = serde_json::from_str(text).unwrap_or_default();
    let code = if b.error.is_empty() {
        "no error code"
    } else {
        b.error.as_str()
    };
    if b.message.is_empty() {
        format!("{status} {code}")
    } else {
        format!("{status} {code}: {}", b.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_status_and_code() {
        assert_eq!(
            refusal(
                409,
                r#"{"error":"run_claimed","message":"claimed by another"}"#
            ),
            "409 run_claimed: claimed by another"
        );
        assert_eq!(refusal(404, "not json"), "404 no error code");
    }
}
