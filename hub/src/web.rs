//! Admin sessions for the HTML pages and CSRF protection for their forms.
//!
//! * Login (`GET /login`, `POST /login`) takes the hub's admin token and sets the session
//!   cookie `outpost_session`: a random 256-bit id, `HttpOnly; Secure; SameSite=Strict;
//!   Path=/`, valid [`SESSION_TTL`] from login. Sessions live in memory only (a hub restart
//!   logs everybody out) and are stored under the sha256 of their id.
//! * Every state-changing form carries a synchronizer token in the hidden field `csrf`:
//!   per session, and for the login form per pre-session (cookie `outpost_login`, valid
//!   [`LOGIN_TTL`]). A POST must bring the cookie, the matching token (compared in constant
//!   time) and an `Origin` (or, without one, a `Referer`) of this hub; anything else is 403.
//!
//! To add a button: render it with [`post_button`] (or put [`csrf_field`] into a form) and
//! take [`CsrfForm<T>`] in the handler; the handler then only runs for a logged-in admin
//! whose form came from this hub.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::api::Hub;
use crate::dashboard::escape;
use crate::error::HubError;
use crate::limits::{Body, SMALL_BODY};
use crate::token;

/// Name of the admin session cookie.
pub const SESSION_COOKIE: &str = "outpost_session";
/// Name of the login form's pre-session cookie.
pub const LOGIN_COOKIE: &str = "outpost_login";
/// Lifetime of an admin session (absolute, from login).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Lifetime of a login form.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Most sessions (and, separately, login forms) kept; past it the oldest is dropped.
pub const MAX_SESSIONS: usize = 10_000;
/// Name of the hidden CSRF form field.
pub const CSRF_FIELD: &str = "csrf";

struct Entry {
    csrf: [u8; 32],
    expires: Instant,
}

/// A server-side session store: sha256(id) → CSRF token and expiry.
pub struct Store {
    ttl: Duration,
    cap: usize,
    map: Mutex<HashMap<[u8; 32], Entry>>,
}

/// A live session: its id (the cookie value) and its CSRF token, both hex.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub csrf: String,
}

fn decode32(hex_str: &str) -> Option<[u8; 32]> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut b).ok()?;
    Some(b)
}

impl Store {
    pub fn new(ttl: Duration, cap: usize) -> Store {
        Store {
            ttl,
            cap: cap.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// A new session with a fresh id and CSRF token.
    pub fn create(&self) -> Result<Session, HubError> {
        let id = token::random_bytes::<32>()?;
        let csrf = token::random_bytes::<32>()?;
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= self.cap {
            map.retain(|_, e| e.expires > now);
            if map.len() >= self.cap {
                let oldest = map.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| *k);
                if let Some(k) = oldest {
                    map.remove(&k);
                }
            }
        }
        let id_hex = hex::encode(id);
        map.insert(
            token::hash(&id_hex),
            Entry {
                csrf,
                expires: now + self.ttl,
            },
        );
        Ok(Session {
            id: id_hex,
            csrf: hex::encode(csrf),
        })
    }

    /// The live session with cookie value `id`, if any (an expired one is removed).
    pub fn get(&self, id: &str) -> Option<Session> {
        decode32(id)?;
        let key = token::hash(id);
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let e = map.get(&key)?;
        if e.expires <= Instant::now() {
            map.remove(&key);
            return None;
        }
        Some(Session {
            id: id.to_string(),
            csrf: hex::encode(e.csrf),
        })
    }

    /// Ends the session `id`.
    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&token::hash(id));
    }

    /// Sessions currently stored (expired ones included until touched).
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The web state of the hub.
pub struct Web {
    /// Admin sessions.
    pub sessions: Store,
    /// Login forms (pre-sessions).
    pub logins: Store,
    /// Whether the hub serves TLS itself (the scheme expected in `Origin`).
    pub tls: bool,
}

impl Web {
    pub fn new(tls: bool) -> Web {
        Web {
            sessions: Store::new(SESSION_TTL, MAX_SESSIONS),
            logins: Store::new(LOGIN_TTL, MAX_SESSIONS),
            tls,
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// `Set-Cookie` value for cookie `name` = `value` living `max_age` (0 deletes it).
pub fn set_cookie(name: &str, value: &str, max_age: Duration) -> HeaderValue {
    let v = format!(
        "{name}={value}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        max_age.as_secs()
    );
    // Invariant: name and value are ASCII (constants and hex).
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// Does the request come from a page of this hub? `Origin` must be this hub's scheme and
/// `Host`; without an `Origin`, the `Referer` must start with it. A plain-HTTP hub also
/// accepts `https://` (a TLS-terminating proxy in front). Neither header: refused.
pub fn same_origin(headers: &HeaderMap, tls: bool) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    let fits = |o: &str| {
        let o = o.to_ascii_lowercase();
        let rest = o
            .strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://").filter(|_| !tls));
        rest.is_some_and(|r| r == host)
    };
    if let Some(o) = headers.get(header::ORIGIN) {
        return o.to_str().is_ok_and(fits);
    }
    match headers.get(header::REFERER).and_then(|r| r.to_str().ok()) {
        Some(r) => {
            let end = r
                .find("://")
                .and_then(|i| r[i + 3..].find('/').map(|j| i + 3 + j))
                .unwrap_or(r.len());
            fits(&r[..end])
        }
        None => false,
    }
}

/// Constant-time check of a submitted CSRF token against the session's.
pub fn csrf_matches(session: &Session, submitted: &str) -> bool {
    match (decode32(&session.csrf), decode32(submitted)) {
        (Some(a), Some(b)) => token::ct_eq(&a, &b),
        _ => false,
    }
}

/// Who a dashboard session is in audit records: `dashboard session <12 hex of the sha256 of
/// its id>`, which names it without revealing it.
pub fn session_label(session: &Session) -> String {
    let hash = token::hash_hex(&session.id);
    format!("dashboard session {}", hash.get(..12).unwrap_or(&hash))
}

/// The hidden form field carrying the session's CSRF token.
pub fn csrf_field(session: &Session) -> String {
    format!(
        "<input type=\"hidden\" name=\"{CSRF_FIELD}\" value=\"{}\">",
        escape(&session.csrf)
    )
}

/// A one-button POST form to `action` (a path of this hub) carrying the CSRF token.
pub fn post_button(session: &Session, action: &str, label: &str, class: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"{}\">{}<button type=\"submit\">{}</button></form>",
        escape(action),
        escape(class),
        csrf_field(session),
        escape(label)
    )
}

/// Headers of every HTML page: no caching, no framing, no scripts, forms only to this hub.
pub fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, axum::response::Html(body)).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// A 303 redirect to `to` (a path of this hub).
pub fn see_other(to: &'static str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A 303 redirect to `to`, a path of this hub built from ids (`/`, should it not be a
/// valid header value).
pub fn see_other_to(to: &str) -> Response {
    let mut r = see_other("/");
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// An HTML error page with `status`.
pub fn error_page(status: StatusCode, message: &str, hint: &str) -> Response {
    html(status, crate::dashboard::render_message(message, hint))
}

/// 403 for a form that failed the CSRF or origin check.
pub fn forbidden() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "request refused: the form expired or did not come from this hub",
        "go back, reload the page and submit the form again",
    )
}

/// A logged-in admin (an HTML page extractor): without a live session the request is
/// redirected (303) to `/login`.
#[derive(Debug, Clone)]
pub struct AdminPage(pub Session);

impl FromRequestParts<Arc<Hub>> for AdminPage {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> Result<Self, Response> {
        cookie(&parts.headers, SESSION_COOKIE)
            .and_then(|id| hub.web.sessions.get(id))
            .map(AdminPage)
            .ok_or_else(|| see_other("/login"))
    }
}

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// Checks a form POST against `store`'s session in cookie `cookie_name`: origin, session,
/// token. Returns the session and the parsed form.
pub async fn verify_form<T: DeserializeOwned>(
    req: Request,
    hub: &Hub,
    store: &Store,
    cookie_name: &str,
) -> Result<(Session, T), Response> {
    if !same_origin(req.headers(), hub.web.tls) {
        return Err(forbidden());
    }
    let Some(session) = cookie(req.headers(), cookie_name).and_then(|id| store.get(id)) else {
        return Err(forbidden());
    };
    let Body(bytes) = Body::<SMALL_BODY>::from_request(req, &())
        .await
        .map_err(IntoResponse::into_response)?;
    let submitted: CsrfOnly = serde_urlencoded::from_bytes(&bytes).map_err(|_| forbidden())?;
    if !csrf_matches(&session, &submitted.csrf) {
        return Err(forbidden());
    }
    let form: T = serde_urlencoded::from_bytes(&bytes).map_err(|e| {
        error_page(
            StatusCode::BAD_REQUEST,
            &format!("invalid form: {e}"),
            "reload the page and submit the form again",
        )
    })?;
    Ok((session, form))
}

/// A form POST by a logged-in admin that passed the CSRF and origin checks (else 403).
pub struct CsrfForm<T> {
    pub session: Session,
    pub form: T,
}

impl<T: DeserializeOwned> FromRequest<Arc<Hub>> for CsrfForm<T> {
    type Rejection = Response;

    async fn from_request(req: Request, hub: &Arc<Hub>) -> Result<Self, Response> {
        let (session, form) = verify_form(req, hub, &hub.web.sessions, SESSION_COOKIE).await?;
        Ok(CsrfForm { session, form })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn store_creates_finds_expires_and_removes() {
        let s = Store::new(Duration::from_millis(50), 3);
        let a = s.create().unwrap();
        assert_eq!(a.id.len(), 64);
        assert_eq!(a.csrf.len(), 64);
        assert_ne!(a.id, a.csrf);
        assert_eq!(s.get(&a.id).unwrap().csrf, a.csrf);
        assert!(s.get("nope").is_none());
        assert!(s.get(&"0".repeat(64)).is_none());
        s.remove(&a.id);
        assert!(s.get(&a.id).is_none());
        let b = s.create().unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.get(&b.id).is_none(), "expired");
        // Bounded: the fourth session pushes out the oldest.
        let s = Store::new(Duration::from_secs(60), 3);
        let first = s.create().unwrap();
        for _ in 0..3 {
            s.create().unwrap();
        }
        assert_eq!(s.len(), 3);
        assert!(s.get(&first.id).is_none());
    }

    #[test]
    fn csrf_is_checked() {
        let s = Store::new(Duration::from_secs(60), 10).create().unwrap();
        assert!(csrf_matches(&s, &s.csrf));
        assert!(csrf_matches(&s, &s.csrf.to_uppercase()));
        let mut wrong = s.csrf.clone().into_bytes();
        wrong[63] = if wrong[63] == b'0' { b'1' } else { b'0' };
        assert!(!csrf_matches(&s, std::str::from_utf8(&wrong).unwrap()));
        assert!(!csrf_matches(&s, ""));
        assert!(!csrf_matches(&s, "zz"));
        assert!(csrf_field(&s).contains(&s.csrf));
    }

    #[test]
    fn origin_checks() {
        let h = |o: &[(&'static str, &str)]| {
            let mut v = vec![("host", "127.0.0.1:8443")];
            v.extend_from_slice(o);
            headers(&v)
        };
        assert!(same_origin(
            &h(&[("origin", "http://127.0.0.1:8443")]),
            false
        ));
        assert!(same_origin(
            &h(&[("origin", "https://127.0.0.1:8443")]),
            false
        ));
        assert!(same_origin(
            &h(&[("origin", "https://127.0.0.1:8443")]),
            true
        ));
        assert!(!same_origin(
            &h(&[("origin", "http://127.0.0.1:8443")]),
            true
        ));
        assert!(!same_origin(
            &h(&[("origin", "http://evil.example")]),
            false
        ));
        assert!(!same_origin(
            &h(&[("origin", "http://127.0.0.1:8444")]),
            false
        ));
        assert!(!same_origin(&h(&[("origin", "null")]), false));
        assert!(!same_origin(&h(&[]), false));
        assert!(same_origin(
            &h(&[("referer", "http://127.0.0.1:8443/login?x")]),
            false
        ));
        assert!(same_origin(
            &h(&[("referer", "http://127.0.0.1:8443")]),
            false
        ));
        assert!(!same_origin(
            &h(&[("referer", "http://127.0.0.1:8443.evil.example/")]),
            false
        ));
        // An Origin wins over a Referer.
        assert!(!same_origin(
            &h(&[
                ("origin", "http://evil.example"),
                ("referer", "http://127.0.0.1:8443/")
            ]),
            false
        ));
        assert!(
            !same_origin(&headers(&[("origin", "http://x")]), false),
            "no host"
        );
    }

    #[test]
    fn cookies() {
        let h = headers(&[
            ("cookie", "a=1; outpost_session=abc ; b=2"),
            ("cookie", "c=3"),
        ]);
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), Some("3"));
        assert_eq!(cookie(&h, "outpost"), None);
        let v = set_cookie(SESSION_COOKIE, "abc", SESSION_TTL);
        assert_eq!(
            v.to_str().unwrap(),
            "outpost_session=abc; Path=/; Max-Age=43200; HttpOnly; Secure; SameSite=Strict"
        );
    }
}
