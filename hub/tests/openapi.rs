//! Checks docs/openapi.yaml and the hub against each other:
//! * the document is a valid OpenAPI 3.0 document (parsed by `openapiv3`, every field
//!   known to it, every `$ref` resolving);
//! * every documented path + method exists (does not answer 404/405), and real responses of
//!   the running hub carry documented status codes and match the documented JSON Schemas
//!   (validated by `jsonschema`, `$ref`s resolved), including agents before their first
//!   heartbeat;
//! * the runs endpoints (module `runs`): every admin and agent reply, errors included, of a
//!   fake agent's runs (as in hub/tests/runs.rs), and the bodies that agent sends;
//! * real agent requests (outpost-agent's hub client and bodies, recorded on their way to
//!   the hub) match the request schemas;
//! * arbitrary outpost-proto values (proptest) that pass `validate()` match the schemas,
//!   runs requests and replies included.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use common::{csrf_of, heartbeat_body, pack, Hub, ADMIN};
use serde_json::{json, Value};

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::from_str(&text).unwrap()
}

/// The object a `$ref` (of a response or parameter) points at.
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

/// An OpenAPI 3.0 schema object as JSON Schema draft 4 (its base dialect): `nullable: true`
/// becomes `anyOf: [the schema, {type: null}]`.
fn to_json_schema(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let out: serde_json::Map<String, Value> = o
                .iter()
                .filter(|(k, _)| *k != "nullable")
                .map(|(k, v)| (k.clone(), to_json_schema(v)))
                .collect();
            if o.get("nullable") == Some(&Value::Bool(true)) {
                json!({"anyOf": [Value::Object(out), {"type": "null"}]})
            } else {
                Value::Object(out)
            }
        }
        Value::Array(a) => Value::Array(a.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

/// A validator for `schema` (a schema object of the spec), its `#/components/...` refs
/// resolved against the spec's components.
fn validator(spec: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = match to_json_schema(schema) {
        Value::Object(o) => o,
        other => panic!("schema {other} is not an object"),
    };
    root.insert("components".into(), to_json_schema(&spec["components"]));
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .build(&Value::Object(root))
        .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"))
}

/// The problems of `value` against `v`, one line each.
fn problems(v: &jsonschema::Validator, value: &Value) -> Vec<String> {
    v.iter_errors(value)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Validators for the component schemas, built once (proptest runs many cases).
fn components() -> &'static BTreeMap<String, jsonschema::Validator> {
    static V: OnceLock<BTreeMap<String, jsonschema::Validator>> = OnceLock::new();
    V.get_or_init(|| {
        let spec = spec();
        spec["components"]["schemas"]
            .as_object()
            .unwrap()
            .keys()
            .map(|name| {
                let r = json!({"$ref": format!("#/components/schemas/{name}")});
                (name.clone(), validator(&spec, &r))
            })
            .collect()
    })
}

/// Asserts that `value` matches component schema `name`.
fn assert_component(name: &str, value: &Value) {
    let v = components()
        .get(name)
        .unwrap_or_else(|| panic!("no schema {name}"));
    let errs = problems(v, value);
    assert!(errs.is_empty(), "{name}: {errs:#?}\nvalue: {value}");
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
            let errs = problems(&validator(self.spec, schema), body);
            assert!(
                errs.is_empty(),
                "{method} {path} {status}: {errs:#?}\nbody: {body}"
            );
        }
        self.covered.insert((path.to_string(), method.to_string()));
    }
}

/// Asserts that `body` matches the JSON request body schema of `method path`.
fn check_request(spec: &Value, path: &str, method: &str, body: &Value) {
    let schema = spec["paths"][path][method.to_lowercase()]
        .pointer("/requestBody/content/application~1json/schema")
        .unwrap_or_else(|| panic!("{method} {path} documents no json request body"));
    let errs = problems(&validator(spec, schema), body);
    assert!(
        errs.is_empty(),
        "request {method} {path}: {errs:#?}\nbody: {body}"
    );
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
        "/api/v1/packs",
        "/api/v1/packs/{name}/{sha256}/trust",
        "/healthz",
        "/",
        "/login",
        "/logout",
        "/packs",
        "/packs/{name}/{sha256}/trust",
        "/agents/{id}",
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
    std::fs::create_dir_all(r.join("packs/web/v1.2.0")).unwrap();
    std::fs::write(r.join("packs/web/manifest.json"), "{}").unwrap();
    std::fs::write(r.join("packs/web/manifest.json.minisig"), "sig\n").unwrap();
    std::fs::write(r.join("packs/web/v1.2.0/outpost"), "tar").unwrap();

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

    // Packs: a catalog makes pending records; trust; the agent's catalog with states.
    let mut hb = heartbeat_body(id, 3, "abc");
    hb["packs"] = json!([pack("web", "1.0.0", '1'), pack("db", "2.0.0", '2')]);
    check_request(&spec, "/api/v1/heartbeat", "POST", &hb);
    let (s, v) = hub.req("POST", "/api/v1/heartbeat", Some(token), Some(&hb));
    c.response("/api/v1/heartbeat", "POST", s, &v);
    assert_eq!(s, 200);
    let (s, v) = hub.admin("GET", "/api/v1/packs", None);
    c.response("/api/v1/packs", "GET", s, &v);
    assert_eq!(v.as_array().unwrap().len(), 2);
    let (s, v) = hub.req("GET", "/api/v1/packs", None, None);
    c.response("/api/v1/packs", "GET", s, &v);
    let trust = "/api/v1/packs/{name}/{sha256}/trust";
    let web = format!("/api/v1/packs/web/{}/trust", "1".repeat(64));
    let (s, v) = hub.admin("POST", &web, None);
    c.response(trust, "POST", s, &v);
    assert_eq!((s, v["state"].as_str()), (200, Some("trusted")));
    let (s, v) = hub.req("POST", &web, None, None);
    c.response(trust, "POST", s, &v);
    let (s, v) = hub.admin(
        "POST",
        &format!("/api/v1/packs/web/{}/trust", "9".repeat(64)),
        None,
    );
    c.response(trust, "POST", s, &v);
    assert_eq!(s, 404);
    let (s, v) = hub.admin("GET", &format!("/api/v1/agents/{id}"), None);
    c.response("/api/v1/agents/{id}", "GET", s, &v);
    assert_eq!(v["packs"][0]["state"], "trusted");
    assert_eq!(v["packs"][1]["state"], "pending");

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
    // Past the 512 KiB cap (raw: the hub answers before the body is all sent).
    big["kernel"] = json!("k".repeat(600 * 1024));
    let auth = format!("Bearer {t2}");
    let r = hub.raw(
        "POST",
        "/api/v1/heartbeat",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        big.to_string().as_bytes(),
    );
    let v = r.json();
    c.response("/api/v1/heartbeat", "POST", r.status, &v);
    assert_eq!(
        (r.status, v["error"].as_str()),
        (413, Some("payload_too_large"))
    );

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
            for p in ["/packs".to_string(), format!("/agents/{id}")] {
                let r = hub.raw("GET", &p, &[("Cookie", &sc)], b"");
                let documented = if p == "/packs" {
                    "/packs"
                } else {
                    "/agents/{id}"
                };
                c.response(documented, "GET", r.status, &Value::Null);
                assert_eq!(r.status, 200, "{p}");
            }
            let r = hub.raw("GET", "/agents/a_nope", &[("Cookie", &sc)], b"");
            c.response("/agents/{id}", "GET", r.status, &Value::Null);
            assert_eq!(r.status, 404);
            let form_trust = format!("/packs/db/{}/trust", "2".repeat(64));
            for (body, want) in [
                (format!("csrf={csrf}"), 403),
                (format!("csrf={token}"), 303),
            ] {
                let r = hub.raw("POST", &form_trust, &lh, body.as_bytes());
                c.response(
                    "/packs/{name}/{sha256}/trust",
                    "POST",
                    r.status,
                    &Value::Null,
                );
                assert_eq!(r.status, want, "{}", r.head);
            }
            let r = hub.raw(
                "POST",
                "/packs/db/00/trust",
                &lh,
                format!("csrf={token}").as_bytes(),
            );
            c.response(
                "/packs/{name}/{sha256}/trust",
                "POST",
                r.status,
                &Value::Null,
            );
            assert_eq!(r.status, 404);
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

    // A run of the trusted web pack on a fresh agent, for the runs paths (`{run}`).
    let (runner, runner_token) = hub.new_agent("runner");
    let (s, v) = hub.heartbeat_packs(&runner, &runner_token, json!([pack("web", "1.0.0", '1')]));
    assert_eq!(s, 200, "{v}");
    let (s, created) = hub.admin(
        "POST",
        "/api/v1/runs",
        Some(
            &json!({"target": {"agent": runner}, "action": "web/restart",
                     "params": {"unit": "nginx"}}),
        ),
    );
    assert_eq!(s, 201, "{created}");
    c.response("/api/v1/runs", "POST", s, &created);
    let run = created["runs"][0]["id"].as_str().unwrap().to_string();

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
                .replace("{run}", &run)
                .replace("{channel}", "stable")
                .replace("{version}", "1.2.0")
                .replace("{file}", "outpost")
                .replace("{name}", "web")
                .replace("{sha256}", &"1".repeat(64));
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

/// Every `$ref` in `v` resolves in `spec`; returns how many were seen.
fn check_refs(spec: &Value, v: &Value, at: &str) -> usize {
    match v {
        Value::Object(o) => {
            let mut n = 0;
            if let Some(r) = o.get("$ref") {
                let r = r
                    .as_str()
                    .unwrap_or_else(|| panic!("{at}: $ref is not a string"));
                let p = r
                    .strip_prefix('#')
                    .unwrap_or_else(|| panic!("{at}: $ref {r} is not local"));
                assert!(spec.pointer(p).is_some(), "{at}: dangling $ref {r}");
                n += 1;
            }
            n + o
                .iter()
                .map(|(k, v)| check_refs(spec, v, &format!("{at}/{k}")))
                .sum::<usize>()
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| check_refs(spec, v, &format!("{at}/{i}")))
            .sum(),
        _ => 0,
    }
}

/// Every member of `file` is in `parsed` with the same value (`parsed` may add defaults,
/// such as a parameter's `style`); returns the differences.
fn missing(file: &Value, parsed: &Value, at: &str, out: &mut Vec<String>) {
    match (file, parsed) {
        (Value::Object(f), Value::Object(p)) => {
            for (k, v) in f {
                match p.get(k) {
                    Some(pv) => missing(v, pv, &format!("{at}/{k}"), out),
                    None => out.push(format!("{at}/{k}: not part of the OpenAPI 3.0 model")),
                }
            }
        }
        (Value::Array(f), Value::Array(p)) if f.len() == p.len() => {
            for (i, (a, b)) in f.iter().zip(p).enumerate() {
                missing(a, b, &format!("{at}/{i}"), out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{at}: {a} read as {b}")),
    }
}

#[test]
fn spec_is_a_valid_openapi_3_0_document() {
    let s = spec();
    let api: openapiv3::OpenAPI = serde_json::from_value(s.clone())
        .unwrap_or_else(|e| panic!("docs/openapi.yaml is not a valid OpenAPI 3.0 document: {e}"));
    assert!(api.openapi.starts_with("3.0"), "{}", api.openapi);
    // Strict: written back, the parsed document says what the file says (no member that
    // the OpenAPI 3.0 model does not know, such as a 3.1 `type: [object, "null"]`, is lost).
    let back = serde_json::to_value(&api).unwrap();
    let mut lost = Vec::new();
    missing(&s, &back, "#", &mut lost);
    assert!(
        lost.is_empty(),
        "openapiv3 does not read docs/openapi.yaml as written: {lost:#?}"
    );
    assert!(check_refs(&s, &s, "#") > 20);
    // Every component schema compiles as JSON Schema.
    assert_eq!(
        components().len(),
        s["components"]["schemas"].as_object().unwrap().len()
    );
}

#[test]
fn error_codes_are_the_documented_ones() {
    let s = spec();
    let documented: BTreeSet<&str> = s["components"]["schemas"]["Error"]["properties"]["error"]
        ["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let ours: BTreeSet<&str> = outpost_proto::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(documented, ours);
}

#[test]
fn agents_before_their_first_heartbeat_match_openapi() {
    let spec = spec();
    let hub = Hub::start();
    let mut c = Checker {
        spec: &spec,
        covered: BTreeSet::new(),
    };
    let (_, key) = hub.admin("POST", "/api/v1/keys", Some(&json!({"ttl_secs": 600})));
    let (s, e) = hub.enroll(key["key"].as_str().unwrap(), "fresh-1");
    assert_eq!(s, 201, "{e}");
    let id = e["agent_id"].as_str().unwrap();

    let (s, v) = hub.admin("GET", "/api/v1/agents", None);
    let a = &v[0];
    for f in [
        "capabilities",
        "journal_head",
        "last_upgrade",
        "last_heartbeat_at",
        "last_heartbeat_age_secs",
        "uptime_secs",
        "revoked_at",
        "group",
    ] {
        assert!(
            a[f].is_null(),
            "{f} is null before the first heartbeat: {a}"
        );
    }
    c.response("/api/v1/agents", "GET", s, &v);
    let (s, v) = hub.admin("GET", &format!("/api/v1/agents/{id}"), None);
    assert!(
        v["diagnostics"].is_null() && v["capabilities"].is_null(),
        "{v}"
    );
    c.response("/api/v1/agents/{id}", "GET", s, &v);
    let (s, v) = hub.admin("POST", &format!("/api/v1/agents/{id}/revoke"), None);
    assert_eq!((s, v["status"].as_str()), (200, Some("revoked")), "{v}");
    assert!(v["capabilities"].is_null(), "{v}");
    c.response("/api/v1/agents/{id}/revoke", "POST", s, &v);
}

/// A loopback proxy in front of the hub that records each request's path and JSON body on
/// its way through (one request per connection: it asks both sides to close).
struct Recorder {
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
}

impl Recorder {
    fn start(hub_addr: String) -> Recorder {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { break };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i;
                    }
                    let n = c.read(&mut chunk).unwrap();
                    assert!(n > 0, "request head cut short");
                    buf.extend_from_slice(&chunk[..n]);
                };
                let head = String::from_utf8(buf[..end].to_vec()).unwrap();
                let mut body = buf[end + 4..].to_vec();
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                while body.len() < len {
                    let n = c.read(&mut chunk).unwrap();
                    assert!(n > 0, "request body cut short");
                    body.extend_from_slice(&chunk[..n]);
                }
                let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                if !body.is_empty() {
                    log.lock()
                        .unwrap()
                        .push((path, serde_json::from_slice(&body).unwrap()));
                }
                let head: Vec<&str> = head
                    .split("\r\n")
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .collect();
                let mut up = std::net::TcpStream::connect(&hub_addr).unwrap();
                up.write_all(
                    format!("{}\r\nconnection: close\r\n\r\n", head.join("\r\n")).as_bytes(),
                )
                .unwrap();
                up.write_all(&body).unwrap();
                let mut resp = Vec::new();
                up.read_to_end(&mut resp).unwrap();
                c.write_all(&resp).unwrap();
            }
        });
        Recorder { url, seen }
    }
}

#[test]
fn agent_requests_match_openapi() {
    use outpost_agent::facts::Facts;
    use outpost_agent::hub::{HubClient, JournalHead, LastUpgrade};
    use outpost_agent::run::{enroll_facts, heartbeat_body};
    let spec = spec();
    let hub = Hub::start();
    let rec = Recorder::start(hub.addr.clone());
    let client = HubClient::new(&rec.url, None).unwrap();
    let state = tempfile::tempdir().unwrap();
    let (_, key) = hub.admin("POST", "/api/v1/keys", Some(&json!({"ttl_secs": 600})));

    // Through the agent's own client and bodies; the hub's answers parse as the agent reads
    // them.
    let facts = enroll_facts(Facts::collect(state.path()), "system".into());
    let nonce = "0123456789abcdef".repeat(4);
    let (me, _) = client
        .enroll(key["key"].as_str().unwrap(), Some(&nonce), &facts)
        .unwrap();
    let beat = |head, last| {
        heartbeat_body(
            me.agent_id.clone(),
            "system".into(),
            Facts::collect(state.path()),
            head,
            last,
            None,
        )
    };
    // The first heartbeat (no journal entry, no upgrade yet), then one with both, as the run
    // loop fills them in from its journals.
    client.heartbeat(&me.token, &beat(None, None)).unwrap();
    let upgrade = LastUpgrade {
        from: None,
        to: Some("1.2.0".into()),
        result: Some("service_upgraded".into()),
        at: Some("2026-01-02T03:04:05Z".into()),
        extra: Default::default(),
    };
    let head = JournalHead {
        seq: 7,
        hash: "ab".repeat(32),
    };
    let (ack, _) = client
        .heartbeat(&me.token, &beat(Some(head), Some(upgrade)))
        .unwrap();
    assert!(ack.server_time.is_some());
    let config = outpost_core::config::Config::parse(
        &format!("[hub]\nurl = \"{}\"\n", rec.url),
        std::path::Path::new("test.toml"),
    )
    .unwrap();
    let report = outpost_agent::diagnostics::run_checks(&config, state.path());
    client
        .diagnostics(
            &me.token,
            &me.agent_id,
            &serde_json::to_value(&report).unwrap(),
        )
        .unwrap();

    let seen = rec.seen.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/enroll",
            "/api/v1/heartbeat",
            "/api/v1/heartbeat",
            "/api/v1/diagnostics"
        ]
    );
    for (path, body) in &seen {
        check_request(&spec, path, "POST", body);
    }
    assert!(seen[1].1["journal_head"].is_null() && seen[1].1["last_upgrade"].is_null());
    assert_eq!(seen[2].1["last_upgrade"]["from"], Value::Null);
    // And what the hub then shows of this agent.
    let (s, v) = hub.admin("GET", &format!("/api/v1/agents/{}", me.agent_id), None);
    assert_eq!(s, 200);
    assert_component("AgentDetail", &v);
    assert_eq!(
        v["last_upgrade"], seen[2].1["last_upgrade"],
        "stored as sent"
    );
    assert_eq!(
        v["capabilities"], seen[2].1["capabilities"],
        "stored as sent"
    );
}

/// The runs endpoints (docs/PROTOCOL.md, Runs), driven by a fake agent as in
/// hub/tests/runs.rs: every reply, errors included, against the schema of its path and
/// status; every body the agent sends against the request schema.
mod runs {
    use super::{check_request, spec, Checker};
    use crate::common::{Hub, ADMIN};
    use serde_json::{json, Value};
    use std::collections::BTreeSet;

    const SHA: char = 'c';

    /// The pack `web` (sha256 `c…c`) with `restart` (param `unit`) and `once`.
    fn catalog(idempotent: bool) -> Value {
        json!([{
            "name": "web", "version": "1.0.0", "sha256": SHA.to_string().repeat(64),
            "actions": [
                {"id": "restart", "params": [{"name": "unit", "type": "string", "required": true}],
                 "idempotent": idempotent, "privileged": false},
                {"id": "once", "params": [], "idempotent": false, "privileged": false}
            ]
        }])
    }

    /// A fake agent: id and token.
    pub struct Agent {
        pub id: String,
        pub token: String,
    }

    pub fn agent_with(hub: &Hub, host: &str, labels: Value, idempotent: bool) -> Agent {
        let (s, key) = hub.admin(
            "POST",
            "/api/v1/keys",
            Some(&json!({"ttl_secs": 600, "group": "edge", "labels": labels})),
        );
        assert_eq!(s, 201, "{key}");
        let (s, e) = hub.enroll(key["key"].as_str().unwrap(), host);
        assert_eq!(s, 201, "{e}");
        let a = Agent {
            id: e["agent_id"].as_str().unwrap().into(),
            token: e["token"].as_str().unwrap().into(),
        };
        let (s, v) = hub.heartbeat_packs(&a.id, &a.token, catalog(idempotent));
        assert_eq!(s, 200, "{v}");
        a
    }

    pub fn trust(hub: &Hub) {
        let path = format!("/api/v1/packs/web/{}/trust", SHA.to_string().repeat(64));
        assert_eq!(hub.admin("POST", &path, None).0, 200);
    }

    /// Drives the runs endpoints, checking every request and reply.
    pub struct Runs<'a> {
        pub hub: &'a Hub,
        pub c: Checker<'a>,
    }

    impl Runs<'_> {
        /// An admin request to `template` (`{run}` filled with `run`), its reply checked.
        pub fn admin(
            &mut self,
            method: &str,
            template: &str,
            run: &str,
            query: &str,
            body: Option<&Value>,
        ) -> (u16, Value) {
            if let Some(b) = body {
                check_request(self.c.spec, template, method, b);
            }
            let path = format!("{}{query}", template.replace("{run}", run));
            let (s, v) = self.hub.admin(method, &path, body);
            self.c.response(template, method, s, &v);
            (s, v)
        }

        pub fn create(&mut self, body: Value) -> (u16, Value) {
            self.admin("POST", "/api/v1/runs", "", "", Some(&body))
        }

        /// An agent's JSON request (checked against the request schema unless `raw`, a body
        /// the schema refuses on purpose), its reply checked.
        pub fn agent(
            &mut self,
            a: &Agent,
            template: &str,
            run: &str,
            body: Value,
            raw: bool,
        ) -> (u16, Value) {
            if !raw {
                check_request(self.c.spec, template, "POST", &body);
            }
            let path = template.replace("{run}", run);
            let (s, v) = self.hub.req("POST", &path, Some(&a.token), Some(&body));
            self.c.response(template, "POST", s, &v);
            (s, v)
        }

        pub fn poll(&mut self, a: &Agent, wait: u64, holding: &[&str]) -> Value {
            let body = json!({"agent_id": a.id, "wait_secs": wait, "holding": holding});
            let (s, v) = self.agent(a, "/api/v1/agent/poll", "", body, false);
            assert_eq!(s, 200, "{v}");
            v
        }

        pub fn claim(&mut self, a: &Agent, run: &str, claimant: &str) -> (u16, Value) {
            let body = json!({"claimant": claimant});
            self.agent(a, "/api/v1/agent/runs/{run}/claim", run, body, false)
        }

        pub fn started(&mut self, a: &Agent, run: &str) {
            let ev = json!({"events": [
                {"seq": 1, "kind": "started", "at": "2024-01-01T00:00:00Z"},
                {"seq": 2, "kind": "progress", "at": "2024-01-01T00:00:01Z",
                 "data": {"pct": 50, "ratio": 0.5, "step": "pull", "ok": true, "none": null}}
            ]});
            let (s, v) = self.agent(a, "/api/v1/agent/runs/{run}/events", run, ev, false);
            assert_eq!((s, v["acked_seq"].as_u64()), (200, Some(2)), "{v}");
        }

        /// A raw log upload (`offset` None: without the query).
        pub fn log(
            &mut self,
            a: &Agent,
            run: &str,
            offset: Option<u64>,
            data: &[u8],
        ) -> (u16, Value) {
            let template = "/api/v1/agent/runs/{run}/log";
            let mut path = template.replace("{run}", run);
            if let Some(o) = offset {
                path.push_str(&format!("?offset={o}"));
            }
            let auth = format!("Bearer {}", a.token);
            let r = self.hub.raw(
                "POST",
                &path,
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/octet-stream"),
                ],
                data,
            );
            let v = r.json();
            self.c.response(template, "POST", r.status, &v);
            (r.status, v)
        }

        pub fn result(&mut self, a: &Agent, run: &str, outcome: &str, code: i32) -> (u16, Value) {
            let body = json!({"outcome": outcome, "exit_code": code, "signal": null, "reason": "",
                              "finished_at": "2024-01-01T00:00:05Z", "log_bytes": 12});
            self.agent(a, "/api/v1/agent/runs/{run}/result", run, body, false)
        }

        /// Polls `GET /api/v1/runs/{run}` until the run is in state `want`.
        pub fn wait(&mut self, run: &str, want: &str) -> Value {
            let t = std::time::Instant::now();
            loop {
                let v = self.run(run);
                if v["state"] == want {
                    return v;
                }
                assert!(
                    t.elapsed().as_secs() < 8,
                    "run {run} never became {want}: {v}"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }

        /// `GET /api/v1/runs/{run}`, 200.
        pub fn run(&mut self, run: &str) -> Value {
            let (s, v) = self.admin("GET", "/api/v1/runs/{run}", run, "", None);
            assert_eq!(s, 200, "{v}");
            v
        }
    }

    fn code(v: &Value) -> Option<&str> {
        v["error"].as_str()
    }

    #[test]
    fn runs_match_openapi() {
        let spec = spec();
        let hub = Hub::start();
        let mut r = Runs {
            hub: &hub,
            c: Checker {
                spec: &spec,
                covered: BTreeSet::new(),
            },
        };
        let a = agent_with(&hub, "web-1", json!({"role": "web"}), false);
        let b = agent_with(&hub, "web-2", json!({"role": "web"}), false);
        let target = json!({"agent": a.id});

        // Create: the refusals, then runs.
        let body = json!({"target": target, "action": "web/restart", "params": {"unit": "nginx"}});
        let (s, v) = r.create(body.clone());
        assert_eq!((s, code(&v)), (409, Some("pack_untrusted")), "{v}");
        trust(&hub);
        let (s, v) = r.create(json!({"target": target, "action": "restart", "params": {}}));
        assert_eq!((s, v["field"].as_str()), (400, Some("params.unit")), "{v}");
        let (s, v) = r.create(json!({"target": target, "action": "web/nope"}));
        assert_eq!((s, code(&v)), (400, Some("action_unknown")), "{v}");
        let (s, v) = r.create(json!({"target": {"labels": {"role": "none"}}, "action": "once"}));
        assert_eq!((s, code(&v)), (404, Some("not_found")), "{v}");
        let (s, v) = hub.req("POST", "/api/v1/runs", None, Some(&body));
        r.c.response("/api/v1/runs", "POST", s, &v);
        assert_eq!(s, 401, "{v}");
        let bad = json!({"target": {"agent": a.id, "group": "edge"}, "action": "once"});
        let (s, v) = hub.admin("POST", "/api/v1/runs", Some(&bad));
        r.c.response("/api/v1/runs", "POST", s, &v);
        assert_eq!((s, v["field"].as_str()), (400, Some("target")), "{v}");
        let (s, created) = r.create(body);
        assert_eq!(s, 201, "{created}");
        let id = created["runs"][0]["id"].as_str().unwrap().to_string();
        // A fan-out with an idempotency key: created, the same again, a conflict.
        let fan = json!({"target": {"labels": {"role": "web"}}, "action": "once",
                         "params": {}, "idempotency_key": "deploy-1"});
        let (s, v) = r.create(fan.clone());
        assert_eq!(
            (s, v["runs"].as_array().map(Vec::len)),
            (201, Some(2)),
            "{v}"
        );
        let (s, again) = r.create(fan.clone());
        assert_eq!((s, &again["runs"]), (200, &v["runs"]));
        let mut other = fan;
        other["action"] = json!("web/once");
        let (s, v) = r.create(other);
        assert_eq!((s, code(&v)), (409, Some("idempotency_conflict")), "{v}");

        // List, show: found, refused.
        let (s, v) = r.admin("GET", "/api/v1/runs", "", "", None);
        assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(3)), "{v}");
        let q = format!("?agent={}&state=queued&limit=10", a.id);
        let (s, v) = r.admin("GET", "/api/v1/runs", "", &q, None);
        assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(2)), "{v}");
        let (s, v) = r.admin("GET", "/api/v1/runs", "", "?state=done", None);
        assert_eq!((s, v["field"].as_str()), (400, Some("state")), "{v}");
        let (s, v) = hub.req("GET", "/api/v1/runs", None, None);
        r.c.response("/api/v1/runs", "GET", s, &v);
        assert_eq!(s, 401);
        assert_eq!(r.run(&id)["state"], "queued");
        let (s, v) = r.admin("GET", "/api/v1/runs/{run}", "r_nope", "", None);
        assert_eq!(s, 404, "{v}");
        let (s, v) = hub.req("GET", &format!("/api/v1/runs/{id}"), None, None);
        r.c.response("/api/v1/runs/{run}", "GET", s, &v);
        assert_eq!(s, 401);

        // Poll: offers; refusals.
        let p = r.poll(&a, 0, &[]);
        assert_eq!(p["offers"][0]["run_id"], id.as_str(), "{p}");
        let (s, v) = r.agent(
            &a,
            "/api/v1/agent/poll",
            "",
            json!({"agent_id": a.id, "wait_secs": 31}),
            true,
        );
        assert_eq!(s, 400, "{v}");
        let (s, v) = hub.req(
            "POST",
            "/api/v1/agent/poll",
            Some("opt_bad"),
            Some(&json!({"agent_id": a.id})),
        );
        r.c.response("/api/v1/agent/poll", "POST", s, &v);
        assert_eq!(s, 401, "{v}");
        // Payload too large, on every JSON body of the runs (raw: the hub may answer before
        // the body is all sent).
        let pad = "x".repeat(300 * 1024);
        for (template, token) in [
            ("/api/v1/runs", ADMIN),
            ("/api/v1/agent/poll", a.token.as_str()),
            ("/api/v1/agent/runs/{run}/claim", a.token.as_str()),
            ("/api/v1/agent/runs/{run}/events", a.token.as_str()),
            ("/api/v1/agent/runs/{run}/result", a.token.as_str()),
        ] {
            let auth = format!("Bearer {token}");
            let big = json!({"pad": pad}).to_string();
            let resp = hub.raw(
                "POST",
                &template.replace("{run}", &id),
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                big.as_bytes(),
            );
            let v = resp.json();
            r.c.response(template, "POST", resp.status, &v);
            assert_eq!(
                (resp.status, code(&v)),
                (413, Some("payload_too_large")),
                "{template}"
            );
        }

        // Claim: won, retried, lost to another claimant, not this agent's, malformed.
        let (s, v) = r.claim(&a, &id, "proc-1");
        assert_eq!((s, v["run_id"].as_str()), (200, Some(id.as_str())), "{v}");
        assert_eq!(r.claim(&a, &id, "proc-1").0, 200, "re-claim is idempotent");
        let (s, v) = r.claim(&a, &id, "proc-2");
        assert_eq!((s, code(&v)), (409, Some("run_claimed")), "{v}");
        let (s, v) = r.claim(&b, &id, "proc-1");
        assert_eq!((s, code(&v)), (404, Some("not_found")), "{v}");
        let claim = "/api/v1/agent/runs/{run}/claim";
        let (s, v) = r.agent(&a, claim, &id, json!({"claimant": ""}), true);
        assert_eq!(s, 400, "{v}");
        let (s, v) = hub.req(
            "POST",
            &claim.replace("{run}", &id),
            None,
            Some(&json!({"claimant": "p"})),
        );
        r.c.response(claim, "POST", s, &v);
        assert_eq!(s, 401, "{v}");
        assert_eq!(r.run(&id)["state"], "claimed");

        // Events: stored, retried, malformed, a queued run, not this agent's.
        r.started(&a, &id);
        r.started(&a, &id);
        let events = "/api/v1/agent/runs/{run}/events";
        let bad_kind = json!({"events": [{"seq": 3, "kind": "Bad-Kind", "at": "x"}]});
        let (s, v) = r.agent(&a, events, &id, bad_kind, true);
        assert_eq!((s, v["field"].as_str()), (400, Some("events.kind")), "{v}");
        let queued = p["offers"][1]["run_id"].as_str().unwrap().to_string();
        let ev = json!({"events": [{"seq": 1, "kind": "progress", "at": "2024-01-01T00:00:00Z"}]});
        let (s, v) = r.agent(&a, events, &queued, ev.clone(), false);
        assert_eq!((s, code(&v)), (409, Some("run_state")), "{v}");
        let (s, v) = r.agent(&b, events, &id, ev, false);
        assert_eq!(s, 404, "{v}");
        let run = r.run(&id);
        assert_eq!(run["state"], "running");
        assert!(run["lease_expires_at"].is_string() && run["started_at"].is_string());

        // Log: appended, overlapping, a gap, no offset, not this agent's, past the cap.
        assert_eq!(r.log(&a, &id, Some(0), b"hello ").1["next_offset"], 6);
        assert_eq!(r.log(&a, &id, Some(3), b"lo world").1["next_offset"], 11);
        let (s, gap) = r.log(&a, &id, Some(20), b"x");
        assert_eq!((s, code(&gap)), (409, Some("log_gap")), "{gap}");
        assert_eq!(gap["expected_offset"], 11);
        let (s, v) = r.log(&a, &id, None, b"x");
        assert_eq!(s, 400, "{v}");
        let (s, v) = r.log(&b, &id, Some(11), b"x");
        assert_eq!(s, 404, "{v}");
        let (s, v) = r.log(&a, &queued, Some(0), b"x");
        assert_eq!((s, code(&v)), (409, Some("run_state")), "{v}");
        assert_eq!(r.log(&a, &id, Some(11), b"!").1["next_offset"], 12);

        // The admin's log read (bytes, not JSON: status and headers).
        let read = |run: &str, token: Option<&str>| {
            let auth = token.map(|t| format!("Bearer {t}"));
            let h: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            hub.raw("GET", &format!("/api/v1/runs/{run}/log?offset=6"), &h, b"")
        };
        let resp = read(&id, Some(ADMIN));
        r.c.response("/api/v1/runs/{run}/log", "GET", resp.status, &Value::Null);
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"world!"[..]));
        assert_eq!(
            resp.header("content-type").as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(resp.header("x-log-size").as_deref(), Some("12"));
        assert_eq!(resp.header("x-next-offset").as_deref(), Some("12"));
        for (run, token, want) in [("r_nope", Some(ADMIN), 404), (id.as_str(), None, 401)] {
            let resp = read(run, token);
            r.c.response("/api/v1/runs/{run}/log", "GET", resp.status, &resp.json());
            assert_eq!(resp.status, want, "{}", resp.head);
        }

        // Result: stored, the same again, a different one, malformed, a queued run.
        let (s, v) = r.result(&a, &id, "succeeded", 0);
        assert_eq!(
            (s, v["state"].as_str(), v["late"].as_bool()),
            (200, Some("succeeded"), Some(false))
        );
        assert_eq!(r.result(&a, &id, "succeeded", 0).0, 200, "identical retry");
        let (s, v) = r.result(&a, &id, "failed", 1);
        assert_eq!((s, code(&v)), (409, Some("result_conflict")), "{v}");
        let result = "/api/v1/agent/runs/{run}/result";
        let (s, v) = r.agent(
            &a,
            result,
            &id,
            json!({"outcome": "exploded", "finished_at": "x"}),
            true,
        );
        assert_eq!(s, 400, "{v}");
        let (s, v) = r.result(&a, &queued, "succeeded", 0);
        assert_eq!((s, code(&v)), (409, Some("run_state")), "{v}");
        let (s, v) = r.result(&b, &id, "succeeded", 0);
        assert_eq!(s, 404, "{v}");
        let done = r.run(&id);
        assert_eq!(
            (
                done["exit_code"].as_i64(),
                done["result_log_bytes"].as_u64()
            ),
            (Some(0), Some(12))
        );
        assert!(
            done["finished_at"].is_string() && done["reason"].is_string(),
            "{done}"
        );

        // Cancel: queued at once (its claim is then run_state), running on request, final
        // unchanged, unknown ids, no token.
        let cancel = "/api/v1/runs/{run}/cancel";
        let (s, v) = r.admin("POST", cancel, &queued, "", None);
        assert_eq!((s, v["state"].as_str()), (200, Some("canceled")), "{v}");
        let (s, v) = r.claim(&a, &queued, "proc-1");
        assert_eq!((s, code(&v)), (409, Some("run_state")), "{v}");
        let (_, c2) = r.create(json!({"target": target, "action": "once"}));
        let running = c2["runs"][0]["id"].as_str().unwrap().to_string();
        assert_eq!(r.claim(&a, &running, "proc-1").0, 200);
        r.started(&a, &running);
        let (s, v) = r.admin("POST", cancel, &running, "", None);
        assert_eq!(
            (s, v["cancel_requested"].as_bool()),
            (200, Some(true)),
            "{v}"
        );
        let p = r.poll(&a, 0, &[&running]);
        assert_eq!(p["cancel"], json!([running]), "{p}");
        let (s, v) = r.result(&a, &running, "canceled", 143);
        assert_eq!((s, v["state"].as_str()), (200, Some("canceled")), "{v}");
        let (s, v) = r.admin("POST", cancel, &id, "", None);
        assert_eq!((s, v["state"].as_str()), (200, Some("succeeded")), "{v}");
        let (s, v) = r.admin("POST", cancel, "r_nope", "", None);
        assert_eq!(s, 404, "{v}");
        let (s, v) = hub.req("POST", &cancel.replace("{run}", &id), None, None);
        r.c.response(cancel, "POST", s, &v);
        assert_eq!(s, 401, "{v}");
        // A rejected run, with a reason and a signal.
        let (_, c3) = r.create(json!({"target": target, "action": "once"}));
        let rejected = c3["runs"][0]["id"].as_str().unwrap().to_string();
        assert_eq!(r.claim(&a, &rejected, "proc-1").0, 200);
        let body = json!({"outcome": "rejected", "signal": "SIGKILL",
                          "reason": "pack drifted", "finished_at": "2024-01-01T00:00:05Z"});
        let (s, v) = r.agent(&a, result, &rejected, body, false);
        assert_eq!((s, v["state"].as_str()), (200, Some("rejected")), "{v}");
        assert_eq!(r.run(&rejected)["signal"], "SIGKILL");

        // Every runs path and method was checked here.
        let documented: BTreeSet<(String, String)> = spec["paths"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.starts_with("/api/v1/runs") || p.starts_with("/api/v1/agent/"))
            .flat_map(|(p, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .filter(|m| *m != "parameters")
                    .map(move |m| (p.clone(), m.to_uppercase()))
            })
            .collect();
        assert_eq!(documented.len(), 10);
        assert_eq!(documented, r.c.covered);
    }

    /// The fleet controls and the run limits, their replies and refusals against the
    /// schemas: drain, dispatch stop/start, audit, queue_full, in_flight_full, the log rate.
    #[test]
    fn fleet_controls_match_openapi() {
        let spec = spec();
        let hub = Hub::start_with(&[
            "--max-runs-in-flight",
            "1",
            "--max-runs-queued",
            "2",
            "--run-log-rate",
            "1",
        ]);
        let mut r = Runs {
            hub: &hub,
            c: Checker {
                spec: &spec,
                covered: BTreeSet::new(),
            },
        };
        let a = agent_with(&hub, "web-1", json!({}), false);
        trust(&hub);
        let once = json!({"target": {"agent": a.id}, "action": "once"});
        let (_, c1) = r.create(once.clone());
        let (_, c2) = r.create(once.clone());
        let (s, v) = r.create(once.clone());
        assert_eq!((s, code(&v)), (429, Some("queue_full")), "{v}");
        let first = c1["runs"][0]["id"].as_str().unwrap().to_string();
        let second = c2["runs"][0]["id"].as_str().unwrap().to_string();
        assert_eq!(r.claim(&a, &first, "p").0, 200);
        let (s, v) = r.claim(&a, &second, "p");
        assert_eq!((s, code(&v)), (409, Some("in_flight_full")), "{v}");
        let (s, _) = r.log(&a, &first, Some(0), &vec![b'x'; 1 << 20]);
        assert_eq!(s, 200);
        let (s, v) = r.log(&a, &first, Some(1 << 20), b"x");
        assert_eq!((s, code(&v)), (429, Some("rate_limited")), "{v}");

        let drain = "/api/v1/drain";
        let body = json!({"agent": a.id});
        let (s, v) = r.admin("POST", drain, "", "", Some(&body));
        assert_eq!(
            (s, v["agents"][0]["drained"].as_bool()),
            (200, Some(true)),
            "{v}"
        );
        let (s, v) = r.create(once.clone());
        assert_eq!((s, code(&v)), (409, Some("agent_drained")), "{v}");
        let (s, v) = r.claim(&a, &second, "p");
        assert_eq!((s, code(&v)), (409, Some("agent_drained")), "{v}");
        let (s, _) = r.admin("POST", drain, "", "", Some(&json!({"agent": "a_nope"})));
        assert_eq!(s, 404);
        let (s, v) = hub.admin("POST", drain, Some(&json!({"agent": a.id, "group": "g"})));
        r.c.response(drain, "POST", s, &v);
        assert_eq!(s, 400);
        let (s, v) = hub.req("POST", drain, None, Some(&body));
        r.c.response(drain, "POST", s, &v);
        assert_eq!(s, 401);
        let (s, d) = r.admin("GET", "/api/v1/dispatch", "", "", None);
        assert_eq!(
            (s, d["drained"].as_array().map(Vec::len)),
            (200, Some(1)),
            "{d}"
        );
        let undo = json!({"agent": a.id, "undo": true});
        assert_eq!(r.admin("POST", drain, "", "", Some(&undo)).0, 200);

        let stop = "/api/v1/dispatch/stop";
        let cancel = json!({"cancel_in_flight": true});
        let (s, v) = r.admin("POST", stop, "", "", Some(&cancel));
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (&v["canceled"], &v["cancel_requested"]),
            (&json!([second]), &json!([first]))
        );
        let (s, v) = r.create(once.clone());
        assert_eq!((s, code(&v)), (409, Some("dispatch_stopped")), "{v}");
        let (s, d) = r.admin("GET", "/api/v1/dispatch", "", "", None);
        assert_eq!((s, d["stopped"].as_bool()), (200, Some(true)), "{d}");
        assert!(
            d["stopped_at"].is_string() && d["stopped_by"] == "admin token",
            "{d}"
        );
        let (s, v) = r.admin("POST", "/api/v1/dispatch/start", "", "", None);
        assert_eq!((s, v["stopped"].as_bool()), (200, Some(false)), "{v}");
        let (s, log) = r.admin("GET", "/api/v1/audit", "", "?limit=10", None);
        assert_eq!(s, 200, "{log}");
        let kinds: Vec<&str> = log
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        // Newest first; the refused creates, drain and claims wrote nothing.
        assert_eq!(
            kinds,
            [
                "dispatch_start",
                "dispatch_stop",
                "undrain",
                "drain",
                "run_start",
                "run_start",
                "pack_trust",
                "key_create"
            ],
            "{log}"
        );
        for (m, p) in [
            ("GET", "/api/v1/dispatch"),
            ("POST", "/api/v1/dispatch/start"),
            ("GET", "/api/v1/audit"),
        ] {
            let (s, v) = hub.req(m, p, None, None);
            r.c.response(p, m, s, &v);
            assert_eq!(s, 401, "{m} {p}");
        }
        let (s, v) = hub.admin("POST", stop, Some(&json!({"bogus": true})));
        r.c.response(stop, "POST", s, &v);
        assert_eq!(s, 400, "{v}");
    }

    /// Leases: expired (`unknown`), renewed by a poll, `lost`, retried (`retry_of`) and a
    /// late result, against the schemas.
    #[test]
    fn lost_and_late_runs_match_openapi() {
        let spec = spec();
        let hub = Hub::start_with(&["--run-lease", "1", "--lost-after", "2"]);
        let mut r = Runs {
            hub: &hub,
            c: Checker {
                spec: &spec,
                covered: BTreeSet::new(),
            },
        };
        let a = agent_with(&hub, "web-1", json!({}), true);
        trust(&hub);
        let target = json!({"agent": a.id});
        let (_, c1) = r.create(json!({"target": target, "action": "restart",
                                      "params": {"unit": "x"}}));
        let (_, c2) = r.create(json!({"target": target, "action": "once"}));
        let idem = c1["runs"][0]["id"].as_str().unwrap().to_string();
        let once = c2["runs"][0]["id"].as_str().unwrap().to_string();
        for id in [&idem, &once] {
            assert_eq!(r.claim(&a, id, "p").0, 200);
            r.started(&a, id);
        }
        r.wait(&once, "unknown");
        r.poll(&a, 0, &[&once]);
        assert_eq!(r.run(&once)["state"], "running");
        r.wait(&idem, "lost");
        r.wait(&once, "lost");
        let q = format!("?agent={}", a.id);
        let (s, all) = r.admin("GET", "/api/v1/runs", "", &q, None);
        assert_eq!(s, 200);
        let retry = all
            .as_array()
            .unwrap()
            .iter()
            .find(|v| !v["retry_of"].is_null())
            .unwrap_or_else(|| panic!("no retry in {all}"));
        assert_eq!(retry["retry_of"], idem.as_str());
        let (s, v) = r.result(&a, &once, "succeeded", 0);
        assert_eq!((s, v["late"].as_bool()), (200, Some(true)), "{v}");
        assert_eq!(r.run(&once)["late"], true);
    }
}

/// Arbitrary outpost-proto values, within the caps `validate()` enforces (and the shapes the
/// hub guarantees for what it sends): they must match the schemas.
mod arbitrary {
    use std::collections::BTreeMap;

    use outpost_proto::{
        AgentDetail, AgentStatus, AgentView, Capabilities, DiagnosticsReport, DiagnosticsUpload,
        EnrollRequest, Enrolled, ErrorBody, ErrorCode, Facts, FlatValue, Heartbeat, HeartbeatAck,
        JournalHead, KeyCreated, LastUpgrade,
    };
    use outpost_proto::{
        ClaimRequest, Claimed, CreateRunRequest, EventsUpload, PollReply, PollRequest, ResultAck,
        RunEvent, RunOffer, RunOutcome, RunResult, RunState, RunTarget, RunView, RunsCreated,
        MAX_PARAM_VALUE, MAX_POLL_WAIT_SECS, MAX_REASON, MAX_RUN_PARAMS,
    };
    use proptest::collection::btree_map;
    use proptest::option;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// Any text, cut to the 255-byte cap as the agent cuts it.
    pub fn text() -> impl Strategy<Value = String> {
        any::<String>().prop_map(|mut s| {
            outpost_proto::cap(&mut s);
            s
        })
    }

    pub fn time() -> impl Strategy<Value = String> {
        (
            1970u32..2200,
            1u32..=12,
            1u32..=28,
            0u32..24,
            0u32..60,
            0u32..60,
        )
            .prop_map(|(y, mo, d, h, mi, s)| {
                format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
            })
    }

    fn flat_value() -> impl Strategy<Value = FlatValue> {
        prop_oneof![
            Just(FlatValue::Null),
            any::<bool>().prop_map(FlatValue::Bool),
            any::<u64>().prop_map(FlatValue::UInt),
            (i64::MIN..0).prop_map(FlatValue::Int),
            any::<f64>()
                .prop_filter("json numbers are finite", |f| f.is_finite())
                .prop_map(FlatValue::Float),
            text().prop_map(FlatValue::String),
        ]
    }

    /// Extra entries of a flat object: keys of at most 64 bytes other than the named ones.
    fn extra(
        known: &'static [&'static str],
        max: usize,
    ) -> impl Strategy<Value = BTreeMap<String, FlatValue>> {
        btree_map(
            "[a-z_]{1,64}".prop_filter("not a named field", move |k| !known.contains(&k.as_str())),
            flat_value(),
            0..=max,
        )
    }

    pub fn capabilities() -> impl Strategy<Value = Capabilities> {
        (
            option::of(any::<u64>()),
            option::of(any::<u64>()),
            option::of(any::<u64>()),
            option::of(any::<u64>()),
            option::of(text()),
            extra(
                &[
                    "cpus",
                    "mem_total_bytes",
                    "mem_available_bytes",
                    "disk_free_bytes",
                    "docker_version",
                ],
                27,
            ),
        )
            .prop_map(
                |(
                    cpus,
                    mem_total_bytes,
                    mem_available_bytes,
                    disk_free_bytes,
                    docker_version,
                    extra,
                )| {
                    Capabilities {
                        cpus,
                        mem_total_bytes,
                        mem_available_bytes,
                        disk_free_bytes,
                        docker_version,
                        extra,
                    }
                },
            )
    }

    pub fn last_upgrade() -> impl Strategy<Value = LastUpgrade> {
        (
            option::of(text()),
            option::of(text()),
            option::of(text()),
            option::of(time()),
            extra(&["from", "to", "result", "at"], 28),
        )
            .prop_map(|(from, to, result, at, extra)| LastUpgrade {
                from,
                to,
                result,
                at,
                extra,
            })
    }

    pub fn journal_head() -> impl Strategy<Value = JournalHead> {
        (any::<u64>(), "[0-9a-f]{64}").prop_map(|(seq, hash)| JournalHead { seq, hash })
    }

    pub fn agent_id() -> impl Strategy<Value = String> {
        "a_[0-9a-f]{16}"
    }

    pub fn heartbeat() -> impl Strategy<Value = Heartbeat> {
        (
            agent_id(),
            (
                option::of(text()),
                option::of(text()),
                option::of(text()),
                option::of(text()),
            ),
            option::of(any::<u64>()),
            option::of(text()),
            option::of(capabilities()),
            option::of(journal_head()),
            option::of(last_upgrade()),
            option::of(proptest::collection::vec(pack_advert(), 0..3)),
        )
            .prop_map(
                |(
                    agent_id,
                    (version, distro, kernel, arch),
                    uptime_secs,
                    mode,
                    capabilities,
                    journal_head,
                    last_upgrade,
                    packs,
                )| {
                    Heartbeat {
                        agent_id,
                        version,
                        distro,
                        kernel,
                        arch,
                        uptime_secs,
                        mode,
                        capabilities,
                        journal_head,
                        last_upgrade,
                        packs,
                    }
                },
            )
    }

    pub fn pack_advert() -> impl Strategy<Value = outpost_proto::PackAdvert> {
        let param = (
            "[a-z_]{1,12}",
            prop_oneof![Just("string"), Just("int"), Just("bool"), Just("enum")],
            any::<bool>(),
        )
            .prop_map(|(name, kind, required)| outpost_proto::ParamAdvert {
                name,
                kind: kind.into(),
                required,
            });
        let action = (
            "[a-z0-9][a-z0-9._-]{0,20}",
            text(),
            proptest::collection::vec(param, 0..3),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(id, description, params, idempotent, privileged)| {
                outpost_proto::ActionAdvert {
                    id,
                    description,
                    params,
                    idempotent,
                    privileged,
                }
            });
        (
            "[a-z0-9][a-z0-9._-]{0,20}",
            text(),
            "[0-9a-f]{64}",
            proptest::collection::vec(action, 0..3),
        )
            .prop_map(
                |(name, version, sha256, actions)| outpost_proto::PackAdvert {
                    name,
                    version,
                    sha256,
                    actions,
                },
            )
    }

    pub fn enroll_request() -> impl Strategy<Value = EnrollRequest> {
        (
            "opk_[0-9a-f]{64}",
            option::of("[A-Za-z0-9_-]{16,128}"),
            (
                text().prop_filter("hostname is required", |h| !h.trim().is_empty()),
                text(),
                text(),
                text(),
                text(),
                text(),
            ),
        )
            .prop_map(
                |(key, nonce, (hostname, machine_id, distro, arch, version, mode))| EnrollRequest {
                    key,
                    nonce,
                    facts: Facts {
                        hostname,
                        machine_id,
                        distro,
                        arch,
                        version,
                        mode,
                    },
                },
            )
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,20}".prop_map(Value::String),
        ]
    }

    /// A free-form report: a JSON object.
    pub fn report() -> impl Strategy<Value = Value> {
        btree_map(".{0,10}", json_leaf(), 0..5).prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    pub fn diagnostics_upload() -> impl Strategy<Value = DiagnosticsUpload<Value>> {
        (agent_id(), report()).prop_map(|(agent_id, report)| DiagnosticsUpload { agent_id, report })
    }

    pub fn status() -> impl Strategy<Value = AgentStatus> {
        prop_oneof![
            Just(AgentStatus::Online),
            Just(AgentStatus::Stale),
            Just(AgentStatus::Offline),
            Just(AgentStatus::Revoked),
        ]
    }

    pub fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
        btree_map("[a-z0-9_.-]{1,64}", text(), 0..=32)
    }

    fn flags() -> impl Strategy<Value = Vec<String>> {
        proptest::sample::subsequence(vec!["journal_went_backwards", "journal_forked"], 0..=2)
            .prop_map(|f| f.into_iter().map(String::from).collect())
    }

    /// What the hub knows from a heartbeat: nothing before the first one.
    type Beat = Option<(
        String,
        u64,
        Option<u64>,
        Option<Capabilities>,
        Option<JournalHead>,
        Option<LastUpgrade>,
    )>;

    fn beat() -> impl Strategy<Value = Beat> {
        option::of((
            time(),
            any::<u64>(),
            option::of(any::<u64>()),
            option::of(capabilities()),
            option::of(journal_head()),
            option::of(last_upgrade()),
        ))
    }

    pub fn agent_view() -> impl Strategy<Value = AgentView> {
        (
            (
                agent_id(),
                text(),
                status(),
                text(),
                text(),
                text(),
                text(),
                text(),
            ),
            (
                option::of(text()),
                labels(),
                text(),
                time(),
                option::of(time()),
            ),
            beat(),
            flags(),
            any::<bool>(),
        )
            .prop_map(
                |(
                    (id, hostname, status, version, distro, arch, kernel, mode),
                    (group, labels, machine_id, enrolled_at, revoked_at),
                    beat,
                    flags,
                    drained,
                )| {
                    let (
                        last_heartbeat_at,
                        last_heartbeat_age_secs,
                        uptime_secs,
                        capabilities,
                        journal_head,
                        last_upgrade,
                    ) = match beat {
                        Some((at, age, up, c, j, u)) => (Some(at), Some(age), up, c, j, u),
                        None => (None, None, None, None, None, None),
                    };
                    AgentView {
                        id,
                        hostname,
                        status,
                        version,
                        distro,
                        arch,
                        kernel,
                        mode,
                        group,
                        labels,
                        machine_id,
                        enrolled_at,
                        revoked_at,
                        last_heartbeat_at,
                        last_heartbeat_age_secs,
                        uptime_secs,
                        capabilities,
                        journal_head,
                        last_upgrade,
                        flags,
                        drained,
                    }
                },
            )
    }

    pub fn catalog_state() -> impl Strategy<Value = outpost_proto::CatalogState> {
        use outpost_proto::CatalogState::*;
        prop_oneof![Just(Trusted), Just(Pending), Just(Drifted)]
    }

    pub fn agent_pack() -> impl Strategy<Value = outpost_proto::AgentPack> {
        (pack_advert(), catalog_state())
            .prop_map(|(pack, state)| outpost_proto::AgentPack { pack, state })
    }

    /// A trust record as the hub sends it: trusted ones say when and by whom.
    pub fn pack_view() -> impl Strategy<Value = outpost_proto::PackView> {
        (
            pack_advert(),
            time(),
            agent_id(),
            option::of((time(), text())),
            any::<u32>(),
        )
            .prop_map(|(p, first_seen, first_seen_by, trusted, agents)| {
                let state = if trusted.is_some() {
                    outpost_proto::PackTrust::Trusted
                } else {
                    outpost_proto::PackTrust::Pending
                };
                let (trusted_at, trusted_by) = trusted.unzip();
                outpost_proto::PackView {
                    name: p.name,
                    sha256: p.sha256,
                    version: p.version,
                    state,
                    actions: p.actions,
                    first_seen,
                    first_seen_by,
                    trusted_at,
                    trusted_by,
                    agents: u64::from(agents),
                }
            })
    }

    pub fn agent_detail() -> impl Strategy<Value = AgentDetail<Value>> {
        (
            agent_view(),
            option::of((time(), report())),
            option::of(proptest::collection::vec(agent_pack(), 0..3)),
        )
            .prop_map(|(agent, d, packs)| AgentDetail {
                agent,
                diagnostics: d.map(|(received_at, report)| DiagnosticsReport {
                    received_at,
                    report,
                }),
                packs,
            })
    }

    pub fn enrolled() -> impl Strategy<Value = Enrolled> {
        (agent_id(), "opt_[0-9a-f]{64}", 1u64..=86_400).prop_map(|(agent_id, token, i)| Enrolled {
            agent_id,
            token,
            heartbeat_interval_secs: Some(i),
        })
    }

    pub fn heartbeat_ack() -> impl Strategy<Value = HeartbeatAck> {
        (1u64..=86_400, time()).prop_map(|(interval_secs, t)| HeartbeatAck {
            interval_secs,
            server_time: Some(t),
        })
    }

    pub fn key_created() -> impl Strategy<Value = KeyCreated> {
        (
            "k_[0-9a-f]{16}",
            "opk_[0-9a-f]{64}",
            time(),
            option::of(text()),
            labels(),
        )
            .prop_map(|(id, key, expires_at, group, labels)| KeyCreated {
                id,
                key,
                expires_at,
                group,
                labels,
            })
    }

    pub fn error_body() -> impl Strategy<Value = ErrorBody> {
        (
            proptest::sample::select(ErrorCode::ALL.to_vec()),
            text(),
            text(),
            option::of("[a-z_.]{1,40}"),
            option::of(any::<u64>()),
        )
            .prop_map(|(code, message, hint, field, expected_offset)| ErrorBody {
                field,
                expected_offset,
                ..ErrorBody::new(code, message, hint)
            })
    }

    /// Text without NUL of at most `max` bytes (cut at a char boundary).
    fn long_text(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[^\\x00]{{0,{max}}}"))
            .unwrap()
            .prop_map(move |mut s| {
                while s.len() > max {
                    s.pop();
                }
                s
            })
    }

    /// Run ids as the hub mints them.
    pub fn run_id() -> impl Strategy<Value = String> {
        "r_[0-9a-f]{16}"
    }

    /// A run's parameters: at most 32, names of at most 64 bytes, values of at most 4096.
    /// Entries past `MAX_RUN_PARAMS_BYTES` (names and values added up) are dropped.
    pub fn params() -> impl Strategy<Value = BTreeMap<String, String>> {
        btree_map(
            "[a-z_]{1,64}",
            prop_oneof![text(), long_text(MAX_PARAM_VALUE)],
            0..=MAX_RUN_PARAMS,
        )
        .prop_map(|all| {
            let mut total = 0;
            all.into_iter()
                .filter(|(k, v)| {
                    total += k.len() + v.len();
                    total <= outpost_proto::MAX_RUN_PARAMS_BYTES
                })
                .collect()
        })
    }

    pub fn run_state() -> impl Strategy<Value = RunState> {
        proptest::sample::select(RunState::ALL.to_vec())
    }

    pub fn run_outcome() -> impl Strategy<Value = RunOutcome> {
        use RunOutcome::*;
        prop_oneof![
            Just(Succeeded),
            Just(Failed),
            Just(Canceled),
            Just(TimedOut),
            Just(Rejected),
        ]
    }

    /// Exactly one of agent, group, labels.
    pub fn run_target() -> impl Strategy<Value = RunTarget> {
        prop_oneof![
            "[ -~]{0,128}".prop_map(|a| RunTarget {
                agent: Some(a),
                ..RunTarget::default()
            }),
            text().prop_map(|g| RunTarget {
                group: Some(g),
                ..RunTarget::default()
            }),
            btree_map("[a-z0-9_.-]{1,64}", text(), 1..=32).prop_map(|labels| RunTarget {
                labels,
                ..RunTarget::default()
            }),
        ]
    }

    pub fn create_run_request() -> impl Strategy<Value = CreateRunRequest> {
        (
            run_target(),
            "[a-z0-9._-]{1,64}(/[a-z0-9._-]{1,64})?",
            params(),
            option::of("[ -~]{0,128}"),
        )
            .prop_map(
                |(target, action, params, idempotency_key)| CreateRunRequest {
                    target,
                    action,
                    params,
                    idempotency_key,
                },
            )
    }

    /// A run as the hub shows it: times set as its state has them, a result only once
    /// finished.
    pub fn run_view() -> impl Strategy<Value = RunView> {
        (
            (
                run_id(),
                agent_id(),
                "[a-z0-9][a-z0-9._-]{0,20}",
                "[0-9a-f]{64}",
                "[a-z0-9][a-z0-9._-]{0,20}",
                params(),
                any::<bool>(),
                run_state(),
            ),
            (
                time(),
                option::of(time()),
                option::of(time()),
                option::of(time()),
                option::of(time()),
            ),
            (
                any::<bool>(),
                option::of((
                    option::of(any::<i32>()),
                    option::of("SIG[A-Z]{1,8}"),
                    text(),
                    any::<u64>(),
                )),
                any::<bool>(),
                any::<u64>(),
                option::of(run_id()),
            ),
        )
            .prop_map(
                |(
                    (id, agent_id, pack, sha256, action, params, idempotent, state),
                    (created_at, claimed_at, started_at, finished_at, lease_expires_at),
                    (cancel_requested, result, late, log_bytes, retry_of),
                )| {
                    let (exit_code, signal, reason, result_log_bytes) = match result {
                        Some((c, s, r, b)) => (c, s, Some(r), Some(b)),
                        None => (None, None, None, None),
                    };
                    RunView {
                        id,
                        agent_id,
                        pack,
                        sha256,
                        action,
                        params,
                        idempotent,
                        state,
                        created_at,
                        claimed_at,
                        started_at,
                        finished_at,
                        lease_expires_at,
                        cancel_requested,
                        exit_code,
                        signal,
                        reason,
                        late,
                        log_bytes,
                        result_log_bytes,
                        retry_of,
                    }
                },
            )
    }

    pub fn runs_created() -> impl Strategy<Value = RunsCreated> {
        proptest::collection::vec(run_view(), 0..4).prop_map(|runs| RunsCreated { runs })
    }

    pub fn poll_request() -> impl Strategy<Value = PollRequest> {
        (
            agent_id(),
            0..=MAX_POLL_WAIT_SECS,
            proptest::collection::vec("[ -~]{0,128}", 0..8),
        )
            .prop_map(|(agent_id, wait_secs, holding)| PollRequest {
                agent_id,
                wait_secs,
                holding,
            })
    }

    pub fn run_offer() -> impl Strategy<Value = RunOffer> {
        (
            run_id(),
            "[a-z0-9][a-z0-9._-]{0,20}",
            "[0-9a-f]{64}",
            "[a-z0-9][a-z0-9._-]{0,20}",
            params(),
            1u64..=86_400,
        )
            .prop_map(
                |(run_id, pack, sha256, action, params, lease_secs)| RunOffer {
                    run_id,
                    pack,
                    sha256,
                    action,
                    params,
                    lease_secs,
                },
            )
    }

    pub fn poll_reply() -> impl Strategy<Value = PollReply> {
        (
            proptest::collection::vec(run_offer(), 0..3),
            proptest::collection::vec(run_id(), 0..3),
        )
            .prop_map(|(offers, cancel)| PollReply { offers, cancel })
    }

    pub fn claim_request() -> impl Strategy<Value = ClaimRequest> {
        "[ -~]{1,128}".prop_map(|claimant| ClaimRequest { claimant })
    }

    pub fn claimed() -> impl Strategy<Value = Claimed> {
        (run_id(), 1u64..=86_400).prop_map(|(run_id, lease_secs)| Claimed { run_id, lease_secs })
    }

    pub fn run_event() -> impl Strategy<Value = RunEvent> {
        (
            any::<u64>(),
            "[a-z0-9_]{1,64}",
            prop_oneof![time(), "[ -~]{0,64}"],
            extra(&[], 32),
        )
            .prop_map(|(seq, kind, at, data)| RunEvent {
                seq,
                kind,
                at,
                data,
            })
    }

    pub fn events_upload() -> impl Strategy<Value = EventsUpload> {
        proptest::collection::vec(run_event(), 0..4).prop_map(|events| EventsUpload { events })
    }

    pub fn run_result() -> impl Strategy<Value = RunResult> {
        (
            run_outcome(),
            option::of(any::<i32>()),
            option::of("[A-Z0-9]{1,64}"),
            prop_oneof![text(), long_text(MAX_REASON)],
            prop_oneof![time(), "[ -~]{0,64}"],
            any::<u64>(),
        )
            .prop_map(
                |(outcome, exit_code, signal, reason, finished_at, log_bytes)| RunResult {
                    outcome,
                    exit_code,
                    signal,
                    reason,
                    finished_at,
                    log_bytes,
                },
            )
    }

    pub fn result_ack() -> impl Strategy<Value = ResultAck> {
        (run_state(), any::<bool>()).prop_map(|(state, late)| ResultAck { state, late })
    }
}

mod properties {
    use super::{arbitrary::*, assert_component};
    use proptest::prelude::*;

    fn json(v: &impl serde::Serialize) -> serde_json::Value {
        serde_json::to_value(v).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn heartbeats_match_the_schema(hb in heartbeat()) {
            prop_assert!(hb.validate().is_ok(), "{:?}", hb.validate());
            assert_component("Heartbeat", &json(&hb));
        }

        #[test]
        fn enroll_requests_match_the_schema(r in enroll_request()) {
            prop_assert!(r.validate().is_ok(), "{:?}", r.validate());
            assert_component("EnrollRequest", &json(&r));
        }

        #[test]
        fn diagnostics_uploads_match_the_schema(d in diagnostics_upload()) {
            prop_assert!(d.validate().is_ok());
            assert_component("DiagnosticsRequest", &json(&d));
        }

        #[test]
        fn agent_views_match_the_schema(v in agent_view()) {
            assert_component("AgentView", &json(&v));
        }

        #[test]
        fn agent_details_match_the_schema(d in agent_detail()) {
            assert_component("AgentDetail", &json(&d));
        }

        #[test]
        fn pack_views_match_the_schema(v in pack_view(), p in agent_pack()) {
            assert_component("PackView", &json(&v));
            assert_component("AgentPack", &json(&p));
            let back: outpost_proto::PackView = serde_json::from_value(json(&v)).unwrap();
            prop_assert_eq!(back, v);
        }

        #[test]
        fn other_replies_match_the_schema(
            e in enrolled(), a in heartbeat_ack(), k in key_created(), err in error_body()
        ) {
            assert_component("Enrolled", &json(&e));
            assert_component("HeartbeatReply", &json(&a));
            assert_component("Key", &json(&k));
            assert_component("Error", &json(&err));
        }

        #[test]
        fn run_requests_match_the_schema(
            c in create_run_request(), p in poll_request(), cl in claim_request(),
            e in events_upload(), r in run_result()
        ) {
            prop_assert!(c.validate().is_ok(), "{:?}", c.validate());
            prop_assert!(p.validate().is_ok(), "{:?}", p.validate());
            prop_assert!(cl.validate().is_ok(), "{:?}", cl.validate());
            prop_assert!(e.validate().is_ok(), "{:?}", e.validate());
            prop_assert!(r.validate().is_ok(), "{:?}", r.validate());
            assert_component("CreateRunRequest", &json(&c));
            assert_component("RunTarget", &json(&c.target));
            assert_component("PollRequest", &json(&p));
            assert_component("ClaimRequest", &json(&cl));
            assert_component("EventsUpload", &json(&e));
            for ev in &e.events {
                assert_component("RunEvent", &json(ev));
            }
            assert_component("RunResult", &json(&r));
            // And the hub reads back what the schema allows.
            let back: outpost_proto::CreateRunRequest = serde_json::from_value(json(&c)).unwrap();
            prop_assert_eq!(back, c);
            let back: outpost_proto::RunResult = serde_json::from_value(json(&r)).unwrap();
            prop_assert_eq!(back, r);
            let back: outpost_proto::PollRequest = serde_json::from_value(json(&p)).unwrap();
            prop_assert_eq!(back, p);
        }

        #[test]
        fn run_replies_match_the_schema(
            v in run_view(), c in runs_created(), p in poll_reply(), cl in claimed(),
            acked in any::<u64>(), next in any::<u64>(), r in result_ack()
        ) {
            assert_component("RunView", &json(&v));
            let back: outpost_proto::RunView = serde_json::from_value(json(&v)).unwrap();
            prop_assert_eq!(back, v);
            assert_component("RunsCreated", &json(&c));
            assert_component("PollReply", &json(&p));
            for o in &p.offers {
                assert_component("RunOffer", &json(o));
            }
            assert_component("Claimed", &json(&cl));
            assert_component("EventsAck", &json(&outpost_proto::EventsAck { acked_seq: acked }));
            assert_component("LogAck", &json(&outpost_proto::LogAck { next_offset: next }));
            assert_component("ResultAck", &json(&r));
            assert_component("RunState", &json(&r.state));
        }

        /// What the hub stores from a heartbeat and shows again is what the schema allows.
        #[test]
        fn capabilities_and_upgrades_round_trip(c in capabilities(), u in last_upgrade()) {
            prop_assert!(c.validate().is_ok() && u.validate().is_ok());
            let back: outpost_proto::Capabilities = serde_json::from_value(json(&c)).unwrap();
            prop_assert_eq!(&back, &c);
            let back: outpost_proto::LastUpgrade = serde_json::from_value(json(&u)).unwrap();
            prop_assert_eq!(&back, &u);
            assert_component("Capabilities", &json(&c));
            assert_component("LastUpgrade", &json(&u));
        }
    }
}
