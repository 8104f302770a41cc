//! Resource limits: request body size and read time, field length caps for agent-supplied
//! data, and a per-IP token bucket (enroll, login).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use outpost_proto::ErrorCode;

use crate::error::ApiError;

// The field caps of agent-supplied data (`MAX_FIELD`, …) live with the wire types in
// outpost-proto, checked by their `validate()`; a `FieldError` converts into an `ApiError`.

/// Body limit of enroll, key creation and the login form.
pub const SMALL_BODY: usize = 16 * 1024;
/// Body limit of heartbeats: room for a catalog of 64 packs and 1024 actions
/// (`outpost_proto::MAX_PACKS`, `MAX_CATALOG_ACTIONS`) with descriptions.
pub const HEARTBEAT_BODY: usize = 512 * 1024;
/// Body limit of diagnostics reports.
pub const DIAGNOSTICS_BODY: usize = 2 * 1024 * 1024;

/// How long reading one request's body may take (set at start from `--request-timeout`).
static BODY_TIMEOUT_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(10_000);

/// Sets the body read timeout for every [`Body`] extractor.
pub fn set_body_timeout(d: Duration) {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
    BODY_TIMEOUT_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

fn body_timeout() -> Duration {
    Duration::from_millis(BODY_TIMEOUT_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// A request body of at most `LIMIT` bytes, read within the body timeout: 413
/// `payload_too_large` past the limit (checked against `Content-Length` before reading),
/// 408 `request_timeout` when the client is too slow.
pub struct Body<const LIMIT: usize>(pub Bytes);

impl<S: Send + Sync, const LIMIT: usize> FromRequest<S> for Body<LIMIT> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > LIMIT as u64) {
            return Err(too_large(LIMIT));
        }
        let read = axum::body::to_bytes(req.into_body(), LIMIT);
        match tokio::time::timeout(body_timeout(), read).await {
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::RequestTimeout,
                "the request body did not arrive in time",
                "send the whole body at once; see docs/PROTOCOL.md",
            )),
            Ok(Ok(b)) => Ok(Body(b)),
            Ok(Err(e)) => {
                let limit = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                if limit {
                    Err(too_large(LIMIT))
                } else {
                    Err(ApiError::bad_request(format!(
                        "cannot read the request body: {e}"
                    )))
                }
            }
        }
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        format!("request body is larger than {limit} bytes"),
        "send a smaller body; see the limits in docs/PROTOCOL.md",
    )
}

/// The TCP peer's address (set per connection by the server; `X-Forwarded-For` is not
/// trusted). Unspecified when the request did not come through [`crate::server`].
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip())
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        ))
    }
}

/// The address a bucket is kept for: IPv4 (also IPv4-mapped IPv6) as is, other IPv6 by
/// its /64 (one host usually owns a whole /64 and could rotate through it).
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A per-IP token bucket: `burst` requests at once, refilled at `per_min` a minute.
/// `per_min == 0` turns it off. The table is bounded: past [`RateLimiter::MAX_TRACKED`]
/// addresses, full buckets (clients idle long enough to have refilled) are dropped first,
/// then the table is cleared (a flood of distinct addresses then costs at most one burst
/// each, which the connection cap bounds anyway).
pub struct RateLimiter {
    per_min: u32,
    burst: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    /// Addresses tracked at most.
    pub const MAX_TRACKED: usize = 10_000;

    pub fn new(per_min: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_min,
            burst: burst.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip` at `now`; `Err(retry_after)` when the bucket is empty.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_min == 0 {
            return Ok(());
        }
        let ip = bucket_key(ip);
        let rate = f64::from(self.per_min) / 60.0; // tokens per second
        let burst = f64::from(self.burst);
        let mut map = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= Self::MAX_TRACKED && !map.contains_key(&ip) {
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if map.len() >= Self::MAX_TRACKED {
                map.clear();
            }
        }
        let b = map.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / rate;
            Err(Duration::from_secs_f64(wait.max(0.001)))
        }
    }

    /// Like [`RateLimiter::check`], as a 429 `rate_limited` with `Retry-After`.
    pub fn admit(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.check(ip, Instant::now()).map_err(|wait| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "too many requests from this address",
                "wait for the number of seconds in Retry-After, then try again",
            )
            .with_retry_after(wait.as_secs().saturating_add(1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let rl = RateLimiter::new(10, 20);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..20 {
            assert!(rl.check(ip, t0).is_ok(), "request {i}");
        }
        let wait = rl.check(ip, t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(5) && wait <= Duration::from_secs(6),
            "{wait:?}"
        );
        // Another address has its own bucket.
        assert!(rl.check(other, t0).is_ok());
        // 10/min: one token every 6 s.
        assert!(rl.check(ip, t0 + Duration::from_secs(5)).is_err());
        assert!(rl.check(ip, t0 + Duration::from_secs(7)).is_ok());
        assert!(rl.check(ip, t0 + Duration::from_secs(8)).is_err());
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..20 {
            assert!(rl.check(ip, later).is_ok());
        }
        assert!(rl.check(ip, later).is_err());
    }

    #[test]
    fn ipv6_shares_a_bucket_per_64() {
        let rl = RateLimiter::new(10, 1);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(rl.check(a, t0).is_ok());
        assert!(rl.check(b, t0).is_err(), "same /64");
        assert!(rl.check(c, t0).is_ok(), "another /64");
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(rl.check(v4, t0).is_ok());
        assert!(rl.check(mapped, t0).is_err(), "mapped is the same address");
    }

    #[test]
    fn zero_rate_is_unlimited_and_table_is_bounded() {
        let off = RateLimiter::new(0, 1);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..100 {
            assert!(off.check(ip, Instant::now()).is_ok());
        }
        let rl = RateLimiter::new(10, 1);
        let t0 = Instant::now();
        for i in 0..(RateLimiter::MAX_TRACKED as u32 + 50) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(rl.check(ip, t0).is_ok());
        }
        assert!(rl.buckets.lock().unwrap().len() <= RateLimiter::MAX_TRACKED);
    }

    #[test]
    fn field_errors_name_the_field() {
        // The flat-object caps moved with the wire types (outpost-proto's `flat_objects`).
        use outpost_proto::{check_len, FieldError, MAX_FIELD};
        assert!(check_len("facts.hostname", &"h".repeat(255), MAX_FIELD).is_ok());
        let e =
            ApiError::from(check_len("facts.hostname", &"h".repeat(256), MAX_FIELD).unwrap_err());
        assert_eq!(
            (e.code, e.field.as_deref(), e.status),
            (
                ErrorCode::FieldTooLong,
                Some("facts.hostname"),
                StatusCode::BAD_REQUEST
            )
        );
        let e = ApiError::from(FieldError::invalid("c", "x"));
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::FieldInvalid, "c x")
        );
    }
}
