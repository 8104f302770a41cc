//! Checks the running hub against docs/openapi.yaml: every documented path + method exists
//! (does not answer 404/405), and the main calls' responses carry the documented status
//! codes and required properties (validated against the schemas, `$ref`/`allOf`/`nullable`
//! aware).

mod common;

use std::collections::BTreeSet;

use common::{csrf_of, heartbeat_body, Hub, ADMIN};
use serde_json::{json, Value};

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::from_str(&text).unwrap()
}

fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let p = r.strip_prefix('#').unwrap();
            resolve(
                spec,
                spec.pointer(p)
                    .unwrap_or_else(|| panic!("dangling $ref {r}")),
            )
        }
        None => v,
    }
}

/// Validates `value` against `schema`; returns the problems found.
fn check(spec: &Value, schema: &Value, value: &Value, at: &str, errs: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            check(spec, s, value, at, errs);
        }
        return;
    }
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) && schema.get("type").is_some() {
            errs.push(format!("{at}: null but not nullable"));
        }
        return;
    }
    if let Some(en) = schema.get("enum").and_then(Value::as_array) {
        if !en.contains(value) {
            errs.push(format!("{at}: {value} not in {en:?}"));
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(obj) = value.as_object() else {
                errs.push(format!("{at}: expected object, got {value}"));
                return;
            };
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let r = r.as_str().unwrap();
                if !obj.contains_key(r) {
                    errs.push(format!("{at}: missing required property {r:?}"));
                }
            }
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, s) in props {
                    if let Some(v) = obj.get(k) {
                        check(spec, s, v, &format!("{at}.{k}"), errs);
                    }
                }
            }
            if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, v) in obj {
                    check(spec, ap, v, &format!("{at}.{k}"), errs);
                }
            }
        }
        Some("array") => match value.as_array() {
            Some(items) => {
                for (i, v) in items.iter().enumerate() {
                    check(spec, &schema["items"], v, &format!("{at}[{i}]"), errs);
                }
            }
            None => errs.push(format!("{at}: expected array")),
        },
        Some("string") if !value.is_string() => {
            errs.push(format!("{at}: expected string, got {value}"))
        }
        Some("string") => {
            let len = value.as_str().map_or(0, str::len) as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if len > max {
                    errs.push(format!("{at}: {len} bytes, maxLength {max}"));
                }
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                if len < min {
                    errs.push(format!("{at}: {len} bytes, minLength {min}"));
                }
            }
        }
        Some("integer") if !value.is_u64() && !value.is_i64() => {
            errs.push(format!("{at}: expected integer, got {value}"))
        }
        Some("boolean") if !value.is_boolean() => errs.push(format!("{at}: expected boolean")),
        _ => {}
    }
}

struct Checker<'a> {
    spec: &'a Value,
    covered: BTreeSet<(String, String)>,
}

impl Checker<'_> {
    /// Asserts that `status` is documented for the operation and, for JSON bodies, that
    /// `body` matches the documented schema.
    fn response(&mut self, path: &str, method: &str, status: u16, body: &Value) {
        let op = &self.spec["paths"][path][method.to_lowercase()];
        assert!(op.is_object(), "{method} {path} is not in the spec");
        let resp = op["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| panic!("{method} {path}: status {status} not documented ({body})"));
        let resp = resolve(self.spec, resp);
        if let Some(schema) = resp.pointer("/content/application~1json/schema") {
            let mut errs = Vec::new();
            check(
                self.spec,
                schema,
                body,
                &format!("{method} {path} {status}"),
                &mut errs,
            );
            assert!(errs.is_empty(), "{errs:#?}\nbody: {body}");
        }
        self.covered.insert((path.to_string(), method.to_string()));
    }
}

#[test]
fn spec_parses_and_lists_the_protocol_endpoints() {
    let s = spec();
    assert_eq!(
        s["openapi"].as_str().map(|v| v.starts_with("3.0")),
        Some(true)
    );
    for p in [
        "/api/v1/keys",
        "/api/v1/enroll",
        "/api/v1/heartbeat",
        "/api/v1/diagnostics",
        "/api/v1/agents",
        "/api/v1/agents/{id}",
        "/api/v1/agents/{id}/revoke",
        "/healthz",
        "/",
        "/login",
        "/logout",
    ] {
        assert!(
            s["paths"].get(p).is_some(),
            "{p} missing from docs/openapi.yaml"
        );
    }
}

#[test]
fn server_matches_openapi() {
    let spec = spec();
    let hub = Hub::start();
    let r = hub.releases();
    std::fs::write(r.join("install.sh"), "#!/bin/sh\n").unwrap();
    std::fs::write(r.join("manifest.json"), "{}").unwrap();
    std::fs::write(r.join("manifest.json.minisig"), "sig\n").unwrap();
    std::fs::create_dir_all(r.join("channels")).unwrap();
    std::fs::write(r.join("channels/stable"), "1.2.0\n").unwrap();
    std::fs::create_dir_all(r.join("v1.2.0")).unwrap();
    std::fs::write(r.join("v1.2.0/outpost"), "bin").unwrap();

    let mut c = Checker {
        spec: &spec,
        covered: BTreeSet::new(),
    };

    // The main flow, validated against the schemas.
    let (s, key) = hub.admin(
        "POST",
        "/api/v1/keys",
        Some(&json!({"ttl_secs": 600, "group": "edge", "labels": {"a": "b"}})),
    );
    c.response("/api/v1/keys", "POST", s, &key);
    let (s, v) = hub.req(
        "POST",
        "/api/v1/keys",
        None,
        Some(&json!({"ttl_secs": 600})),
    );
    c.response("/api/v1/keys", "POST", s, &v);
    let (s, v) = hub.admin("POST", "/api/v1/keys", Some(&json!({"ttl_secs": "x"})));
    c.response("/api/v1/keys", "POST", s, &v);

    let facts = json!({"hostname": "spec-1", "machine_id": "m", "distro": "debian 12", "arch": "x86_64", "version": "1.2.0", "mode": "system"});
    let (s, e) = hub.req(
        "POST",
        "/api/v1/enroll",
        None,
        Some(&json!({"key": key["key"], "facts": facts})),
    );
    c.response("/api/v1/enroll", "POST", s, &e);
    assert_eq!(s, 201);
    let (s, v) = hub.req(
        "POST",
        "/api/v1/enroll",
        None,
        Some(&json!({"key": key["key"], "facts": facts})),
    );
    c.response("/api/v1/enroll", "POST", s, &v);
    let id = e["agent_id"].as_str().unwrap();
    let token = e["token"].as_str().unwrap();

    let (s, v) = hub.heartbeat(id, token, 3, "abc");
    c.response("/api/v1/heartbeat", "POST", s, &v);
    assert_eq!(s, 200);
    let (s, v) = hub.heartbeat(id, "opt_bad", 3, "abc");
    c.response("/api/v1/heartbeat", "POST", s, &v);
    let (s, v) = hub.req("POST", "/api/v1/heartbeat", Some(token), Some(&json!({})));
    c.response("/api/v1/heartbeat", "POST", s, &v);
    // A minimal heartbeat (only agent_id) is valid.
    let (s, v) = hub.req(
        "POST",
        "/api/v1/heartbeat",
        Some(token),
        Some(&json!({"agent_id": id})),
    );
    c.response("/api/v1/heartbeat", "POST", s, &v);
    assert_eq!(s, 200);

    let (s, v) = hub.req(
        "POST",
        "/api/v1/diagnostics",
        Some(token),
        Some(&json!({"agent_id": id, "report": {"ok": true}})),
    );
    c.response("/api/v1/diagnostics", "POST", s, &v);
    assert_eq!(s, 202);

    let (s, v) = hub.admin("GET", "/api/v1/agents", None);
    c.response("/api/v1/agents", "GET", s, &v);
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (s, v) = hub.req("GET", "/api/v1/agents", None, None);
    c.response("/api/v1/agents", "GET", s, &v);

    let (s, v) = hub.admin("GET", &format!("/api/v1/agents/{id}"), None);
    c.response("/api/v1/agents/{id}", "GET", s, &v);
    assert_eq!(v["diagnostics"]["report"], json!({"ok": true}));
    let (s, v) = hub.admin("GET", "/api/v1/agents/a_nope", None);
    c.response("/api/v1/agents/{id}", "GET", s, &v);

    let (s, v) = hub.admin("POST", &format!("/api/v1/agents/{id}/revoke"), None);
    c.response("/api/v1/agents/{id}/revoke", "POST", s, &v);
    let (s, v) = hub.heartbeat(id, token, 4, "abd");
    c.response("/api/v1/heartbeat", "POST", s, &v);
    assert_eq!(v["error"], "token_revoked");

    let (s, v) = hub.req("GET", "/healthz", None, None);
    c.response("/healthz", "GET", s, &v);

    // Idempotent enrollment: a retry with the same nonce is a documented 200.
    let (_, k2) = hub.admin("POST", "/api/v1/keys", Some(&json!({"ttl_secs": 600})));
    let nonce = "n0nce-0123456789abcdef";
    let body = json!({"key": k2["key"], "nonce": nonce, "facts": facts});
    let (s, first) = hub.req("POST", "/api/v1/enroll", None, Some(&body));
    c.response("/api/v1/enroll", "POST", s, &first);
    assert_eq!(s, 201);
    let (s, again) = hub.req("POST", "/api/v1/enroll", None, Some(&body));
    c.response("/api/v1/enroll", "POST", s, &again);
    assert_eq!((s, &again["agent_id"]), (200, &first["agent_id"]));
    // Field caps and body limits, with the field named.
    let long = json!({"key": k2["key"], "facts": {"hostname": "h".repeat(300)}});
    let (s, v) = hub.req("POST", "/api/v1/enroll", None, Some(&long));
    c.response("/api/v1/enroll", "POST", s, &v);
    assert_eq!((s, v["field"].as_str()), (400, Some("facts.hostname")));
    let t2 = again["token"].as_str().unwrap();
    let a2 = again["agent_id"].as_str().unwrap();
    let mut big = heartbeat_body(a2, 1, "x");
    big["kernel"] = json!("k".repeat(100 * 1024));
    let (s, v) = hub.req("POST", "/api/v1/heartbeat", Some(t2), Some(&big));
    c.response("/api/v1/heartbeat", "POST", s, &v);
    assert_eq!((s, v["error"].as_str()), (413, Some("payload_too_large")));

    // The HTML pages: anonymous, login, logout (raw HTTP: no redirects followed).
    let r = hub.raw("GET", "/", &[], b"");
    c.response("/", "GET", r.status, &Value::Null);
    assert_eq!(r.status, 303);
    let page = hub.raw("GET", "/login", &[], b"");
    c.response("/login", "GET", page.status, &Value::Null);
    let (pre, _) = page.cookie("outpost_login").unwrap();
    let csrf = csrf_of(&page.text());
    let form = |csrf: &str, token: &str| format!("csrf={csrf}&token={token}");
    let login_headers = |cookie: &str| {
        vec![
            (
                "Content-Type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("Origin".to_string(), hub.url.clone()),
            ("Cookie".to_string(), cookie.to_string()),
        ]
    };
    let pre_cookie = format!("outpost_login={pre}");
    let h = login_headers(&pre_cookie);
    let h: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    for (body, want) in [
        (form("0", ADMIN), 403),
        (form(&csrf, "wrong-token-wrong-token"), 401),
        (form(&csrf, ADMIN), 303),
    ] {
        let r = hub.raw("POST", "/login", &h, body.as_bytes());
        c.response("/login", "POST", r.status, &Value::Null);
        assert_eq!(r.status, want, "{body}: {}", r.head);
        if want == 303 {
            let session = r.cookie("outpost_session").unwrap().0;
            let sc = format!("outpost_session={session}");
            let r = hub.raw("GET", "/login", &[("Cookie", &sc)], b"");
            c.response("/login", "GET", r.status, &Value::Null);
            let dash = hub.raw("GET", "/", &[("Cookie", &sc)], b"");
            c.response("/", "GET", dash.status, &Value::Null);
            assert_eq!(dash.status, 200);
            let lh = login_headers(&sc);
            let lh: Vec<(&str, &str)> = lh.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            let token = csrf_of(&dash.text());
            for (body, want) in [
                (format!("csrf={csrf}"), 403),
                (format!("csrf={token}"), 303),
            ] {
                let r = hub.raw("POST", "/logout", &lh, body.as_bytes());
                c.response("/logout", "POST", r.status, &Value::Null);
                assert_eq!(r.status, want, "{}", r.head);
            }
        }
    }

    // Every documented path + method exists: it answers neither 404 nor 405.
    let paths = spec["paths"].as_object().unwrap();
    let mut deletes = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "post", "put", "delete", "patch", "head"].contains(&method.as_str()) {
                continue;
            }
            let method = method.to_uppercase();
            let concrete = path
                .replace("{id}", id)
                .replace("{channel}", "stable")
                .replace("{version}", "1.2.0")
                .replace("{file}", "outpost");
            let token = match op
                .pointer("/security/0")
                .and_then(Value::as_object)
                .and_then(|o| o.keys().next().cloned())
            {
                Some(s) if s == "adminToken" => Some(ADMIN.to_string()),
                Some(s) if s == "agentToken" => Some(token.to_string()),
                _ => None,
            };
            if method == "DELETE" {
                deletes.push((path.clone(), concrete, token));
                continue;
            }
            let body = if method == "POST" {
                Some(heartbeat_body(id, 5, "x"))
            } else {
                None
            };
            let (s, v) = hub.req(&method, &concrete, token.as_deref(), body.as_ref());
            assert!(
                s != 404 && s != 405,
                "{method} {concrete} (documented as {path}) answered {s}: {v}"
            );
            let documented = op["responses"].get(s.to_string()).is_some();
            assert!(
                documented,
                "{method} {path} answered undocumented status {s}: {v}"
            );
            c.covered.insert((path.clone(), method));
        }
    }
    for (path, concrete, token) in deletes {
        let (s, v) = hub.req("DELETE", &concrete, token.as_deref(), None);
        c.response(&path, "DELETE", s, &v);
        assert_eq!(s, 204);
    }

    // And nothing the spec lists was skipped.
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| *m != "parameters")
                .map(move |m| (p.clone(), m.to_uppercase()))
        })
        .collect();
    assert_eq!(documented, c.covered);

    // Last (it locks this address out of enrollment): the rate limit's 429.
    let mut limited = None;
    for _ in 0..30 {
        let (s, v) = hub.enroll("opk_nope", "x");
        if s == 429 {
            limited = Some(v);
            break;
        }
    }
    let v = limited.expect("no 429 within 30 enrollments");
    c.response("/api/v1/enroll", "POST", 429, &v);
}
