//! The dashboard behind admin login: anonymous access, login, session cookie flags, logout
//! and CSRF/origin refusals, over raw HTTP against a real hub process.

mod common;

use common::{csrf_of, pack, Hub, ADMIN};
use serde_json::json;

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// A fresh login form: (pre-session cookie value, csrf token).
fn login_form(hub: &Hub) -> (String, String) {
    let page = hub.raw("GET", "/login", &[], b"");
    assert_eq!(page.status, 200, "{}", page.head);
    let (pre, attrs) = page.cookie("outpost_login").expect("pre-session cookie");
    assert_eq!(pre.len(), 64, "256-bit id in hex: {pre}");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(attrs.contains(flag), "login cookie lacks {flag}: {attrs}");
    }
    assert_eq!(page.header("cache-control").as_deref(), Some("no-store"));
    assert!(page
        .header("content-security-policy")
        .is_some_and(|c| c.contains("form-action 'self'") && c.contains("frame-ancestors 'none'")));
    (pre, csrf_of(&page.text()))
}

fn post_login(
    hub: &Hub,
    pre: &str,
    csrf: Option<&str>,
    token: &str,
    origin: Option<&str>,
) -> common::Raw {
    let cookie = format!("outpost_login={pre}");
    let mut headers = vec![FORM, ("Cookie", cookie.as_str())];
    if let Some(o) = origin {
        headers.push(("Origin", o));
    }
    let body = match csrf {
        Some(c) => format!("csrf={c}&token={token}"),
        None => format!("token={token}"),
    };
    hub.raw("POST", "/login", &headers, body.as_bytes())
}

#[test]
fn anonymous_dashboard_redirects_and_api_reads_are_401() {
    let hub = Hub::start();
    let (id, _) = hub.new_agent("secret-host");
    let r = hub.raw("GET", "/", &[], b"");
    assert_eq!(r.status, 303, "{}", r.head);
    assert_eq!(r.header("location").as_deref(), Some("/login"));
    assert!(!r.text().contains("secret-host"));
    // A made-up or malformed session cookie is no better.
    for c in [
        format!("outpost_session={}", "ab".repeat(32)),
        "outpost_session=x".into(),
        "outpost_session=".into(),
    ] {
        let r = hub.raw("GET", "/", &[("Cookie", &c)], b"");
        assert_eq!(r.status, 303, "{c}: {}", r.head);
        assert!(!r.text().contains("secret-host"));
    }
    // Every fleet read of the API needs the admin token (a session cookie is not enough).
    let session = hub.login();
    for path in ["/api/v1/agents".to_string(), format!("/api/v1/agents/{id}")] {
        for cookie in [None, Some(format!("outpost_session={session}"))] {
            let headers: Vec<(&str, &str)> =
                cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
            let r = hub.raw("GET", &path, &headers, b"");
            assert_eq!(r.status, 401, "{path}: {}", r.head);
            let v = r.json();
            assert_eq!(v["error"], "unauthorized", "{v}");
            assert!(v["hint"].as_str().is_some_and(|h| !h.is_empty()));
            assert!(!r.text().contains("secret-host"));
        }
    }
}

#[test]
fn login_sets_a_strict_session_cookie_and_logout_ends_it() {
    let hub = Hub::start();
    hub.new_agent("fleet-host-1");
    let (pre, csrf) = login_form(&hub);
    let origin = hub.url.clone();

    // Wrong token: refused, no session, the form again.
    let r = post_login(
        &hub,
        &pre,
        Some(&csrf),
        "wrong-admin-token-xxxxxxxx",
        Some(&origin),
    );
    assert_eq!(r.status, 401, "{}", r.head);
    assert!(r.cookie("outpost_session").is_none());
    assert!(r.text().contains("wrong admin token"));
    assert!(!r.text().contains("fleet-host-1"));

    // Right token: 303 to / with the session cookie.
    let r = post_login(&hub, &pre, Some(&csrf), ADMIN, Some(&origin));
    assert_eq!(r.status, 303, "{}\n{}", r.head, r.text());
    assert_eq!(r.header("location").as_deref(), Some("/"));
    let (session, attrs) = r.cookie("outpost_session").expect("session cookie");
    assert_eq!(session.len(), 64);
    assert!(session.bytes().all(|b| b.is_ascii_hexdigit()));
    for flag in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=43200",
    ] {
        assert!(attrs.contains(flag), "session cookie lacks {flag}: {attrs}");
    }
    // The pre-session is used up.
    let (_, attrs) = r.cookie("outpost_login").expect("login cookie cleared");
    assert!(attrs.contains("Max-Age=0"), "{attrs}");
    let again = post_login(&hub, &pre, Some(&csrf), ADMIN, Some(&origin));
    assert_eq!(again.status, 403, "a login form works once");

    // The session shows the fleet; /login sends a logged-in admin home.
    let cookie = format!("outpost_session={session}");
    let dash = hub.raw("GET", "/", &[("Cookie", &cookie)], b"");
    assert_eq!(dash.status, 200, "{}", dash.head);
    assert!(dash.text().contains("fleet-host-1"));
    assert_eq!(dash.header("cache-control").as_deref(), Some("no-store"));
    let r = hub.raw("GET", "/login", &[("Cookie", &cookie)], b"");
    assert_eq!(
        (r.status, r.header("location").as_deref()),
        (303, Some("/"))
    );
    let token = csrf_of(&dash.text());
    assert_ne!(token, csrf, "the session has its own csrf token");

    // Logout without, with a wrong, and with another session's token: 403, still logged in.
    let other = hub.login();
    let other_csrf = csrf_of(
        &hub.raw(
            "GET",
            "/",
            &[("Cookie", &format!("outpost_session={other}"))],
            b"",
        )
        .text(),
    );
    let mut wrong = token.clone().into_bytes();
    wrong[0] = if wrong[0] == b'a' { b'b' } else { b'a' };
    let wrong = String::from_utf8(wrong).unwrap();
    for body in [
        String::new(),
        "csrf=".into(),
        format!("csrf={wrong}"),
        format!("csrf={other_csrf}"),
    ] {
        let r = hub.raw(
            "POST",
            "/logout",
            &[FORM, ("Cookie", &cookie), ("Origin", &origin)],
            body.as_bytes(),
        );
        assert_eq!(r.status, 403, "logout with {body:?}: {}", r.head);
        assert!(r.text().contains("request refused"));
    }
    // The right token from another origin, or with no Origin/Referer at all: 403.
    let body = format!("csrf={token}");
    for headers in [
        vec![
            FORM,
            ("Cookie", cookie.as_str()),
            ("Origin", "http://evil.example"),
        ],
        vec![FORM, ("Cookie", cookie.as_str()), ("Origin", "null")],
        vec![FORM, ("Cookie", cookie.as_str())],
        vec![
            FORM,
            ("Cookie", cookie.as_str()),
            ("Referer", "http://evil.example/x"),
        ],
    ] {
        let r = hub.raw("POST", "/logout", &headers, body.as_bytes());
        assert_eq!(r.status, 403, "{headers:?}: {}", r.head);
    }
    assert_eq!(hub.raw("GET", "/", &[("Cookie", &cookie)], b"").status, 200);

    // A same-origin Referer is accepted without Origin; logout clears the cookie.
    let referer = format!("{origin}/");
    let r = hub.raw(
        "POST",
        "/logout",
        &[FORM, ("Cookie", &cookie), ("Referer", &referer)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 303, "{}", r.head);
    assert_eq!(r.header("location").as_deref(), Some("/login"));
    let (v, attrs) = r.cookie("outpost_session").expect("cleared");
    assert!(v.is_empty() && attrs.contains("Max-Age=0"), "{attrs}");
    let r = hub.raw("GET", "/", &[("Cookie", &cookie)], b"");
    assert_eq!(r.status, 303, "the session is gone server-side");
    // The other session is untouched.
    let r = hub.raw(
        "GET",
        "/",
        &[("Cookie", &format!("outpost_session={other}"))],
        b"",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn login_post_without_valid_csrf_or_origin_is_403() {
    let hub = Hub::start();
    let (pre, csrf) = login_form(&hub);
    let origin = hub.url.clone();
    // No csrf field, a wrong one, a token from another form.
    let (_, other_csrf) = login_form(&hub);
    for c in [None, Some("00"), Some(other_csrf.as_str())] {
        let r = post_login(&hub, &pre, c, ADMIN, Some(&origin));
        assert_eq!(r.status, 403, "csrf {c:?}: {}", r.head);
        assert!(r.cookie("outpost_session").is_none());
    }
    // No pre-session cookie at all.
    let r = hub.raw(
        "POST",
        "/login",
        &[FORM, ("Origin", &origin)],
        format!("csrf={csrf}&token={ADMIN}").as_bytes(),
    );
    assert_eq!(r.status, 403);
    // Cross-origin or origin-less.
    for o in [
        None,
        Some("http://evil.example"),
        Some("http://127.0.0.1:1"),
    ] {
        let r = post_login(&hub, &pre, Some(&csrf), ADMIN, o);
        assert_eq!(r.status, 403, "origin {o:?}: {}", r.head);
        assert!(r.cookie("outpost_session").is_none());
    }
    // After all that the form still works.
    let r = post_login(&hub, &pre, Some(&csrf), ADMIN, Some(&origin));
    assert_eq!(r.status, 303, "{}", r.head);
}

#[test]
fn login_attempts_are_rate_limited() {
    let hub = Hub::start();
    let (pre, csrf) = login_form(&hub);
    let origin = hub.url.clone();
    let mut limited = None;
    for i in 0..30 {
        let r = post_login(
            &hub,
            &pre,
            Some(&csrf),
            "guess-guess-guess-guess",
            Some(&origin),
        );
        if r.status == 429 {
            limited = Some((i, r));
            break;
        }
        assert_eq!(r.status, 401, "attempt {i}");
    }
    let (i, r) = limited.expect("no 429 after 30 wrong logins");
    assert_eq!(i, 10, "burst of 10");
    assert!(r
        .header("retry-after")
        .is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
}

/// The Trust button's form: refused without a session, without or with a wrong CSRF token,
/// or from another origin (nothing trusted); accepted with all three right.
#[test]
fn trust_form_needs_session_csrf_and_origin() {
    let hub = Hub::start();
    let (id, token) = hub.new_agent("trust-form");
    assert_eq!(
        hub.heartbeat_packs(&id, &token, json!([pack("web", "1", 'a')]))
            .0,
        200
    );
    let session = hub.login();
    let cookie = format!("outpost_session={session}");
    let page = hub.raw("GET", "/packs", &[("Cookie", &cookie)], b"");
    assert_eq!(page.status, 200, "{}", page.head);
    let csrf = csrf_of(&page.text());
    let path = format!("/packs/web/{}/trust", "a".repeat(64));
    assert!(
        page.text().contains(&format!("action=\"{path}\"")),
        "{}",
        page.text()
    );
    let origin = hub.url.clone();
    let mut wrong = csrf.clone().into_bytes();
    wrong[0] = if wrong[0] == b'a' { b'b' } else { b'a' };
    let wrong = String::from_utf8(wrong).unwrap();
    let good = format!("csrf={csrf}");
    for (what, headers, body) in [
        (
            "no session",
            vec![FORM, ("Origin", origin.as_str())],
            good.clone(),
        ),
        (
            "no csrf",
            vec![
                FORM,
                ("Cookie", cookie.as_str()),
                ("Origin", origin.as_str()),
            ],
            String::new(),
        ),
        (
            "wrong csrf",
            vec![
                FORM,
                ("Cookie", cookie.as_str()),
                ("Origin", origin.as_str()),
            ],
            format!("csrf={wrong}"),
        ),
        (
            "foreign origin",
            vec![
                FORM,
                ("Cookie", cookie.as_str()),
                ("Origin", "http://evil.example"),
            ],
            good.clone(),
        ),
        (
            "no origin",
            vec![FORM, ("Cookie", cookie.as_str())],
            good.clone(),
        ),
    ] {
        let r = hub.raw("POST", &path, &headers, body.as_bytes());
        assert_eq!(r.status, 403, "{what}: {}", r.head);
        assert!(r.text().contains("request refused"), "{what}");
        let (_, list) = hub.admin("GET", "/api/v1/packs", None);
        assert_eq!(list[0]["state"], "pending", "{what}: trusted anyway");
    }
    let r = hub.raw(
        "POST",
        &path,
        &[FORM, ("Cookie", &cookie), ("Origin", &origin)],
        good.as_bytes(),
    );
    assert_eq!(
        (r.status, r.header("location").as_deref()),
        (303, Some("/packs")),
        "{}",
        r.head
    );
    let (_, list) = hub.admin("GET", "/api/v1/packs", None);
    assert_eq!(list[0]["state"], "trusted");
    assert!(
        list[0]["trusted_by"]
            .as_str()
            .unwrap()
            .starts_with("dashboard session "),
        "{list}"
    );
    // Audited once, as the session; the refused posts above wrote nothing.
    let (_, log) = hub.admin("GET", "/api/v1/audit", None);
    let trusts: Vec<_> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "pack_trust")
        .collect();
    assert_eq!(trusts.len(), 1, "{log}");
    assert_eq!(trusts[0]["who"], list[0]["trusted_by"], "{log}");
    assert_eq!(
        trusts[0]["target"],
        format!("pack web {}", "a".repeat(64)),
        "{log}"
    );
    // The pages need a session.
    for p in ["/packs".to_string(), format!("/agents/{id}")] {
        let r = hub.raw("GET", &p, &[], b"");
        assert_eq!(
            (r.status, r.header("location").as_deref()),
            (303, Some("/login")),
            "{p}"
        );
    }
}
