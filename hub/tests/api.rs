//! API tests against a real hub process and a real SQLite file.

mod common;

use std::process::Command;
use std::sync::{Arc, Barrier};

use common::{bin, heartbeat_body, pack, Hub, ADMIN};
use serde_json::{json, Value};

fn agent<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {list}"))
}

#[test]
fn enroll_heartbeat_list_and_single_use_key() {
    let hub = Hub::start();
    let (s, v) = hub.req("GET", "/healthz", None, None);
    assert_eq!((s, v["ok"].as_bool()), (200, Some(true)));

    let (s, key) = hub.admin(
        "POST",
        "/api/v1/keys",
        Some(&json!({"ttl_secs": 3600, "group": "edge", "labels": {"rack": "r1"}})),
    );
    assert_eq!(s, 201, "{key}");
    let secret = key["key"].as_str().unwrap();
    assert!(secret.starts_with("opk_") && secret.len() == 68);
    assert_eq!(key["group"], "edge");

    let (s, e) = hub.enroll(secret, "web-1");
    assert_eq!(s, 201, "{e}");
    assert_eq!(e["heartbeat_interval_secs"], 30);
    let (id, token) = (
        e["agent_id"].as_str().unwrap(),
        e["token"].as_str().unwrap(),
    );
    assert!(id.starts_with("a_"));

    let (s, hb) = hub.heartbeat(id, token, 1, "aa");
    assert_eq!(s, 200, "{hb}");
    assert_eq!(hb["interval_secs"], 30);
    assert!(hb["server_time"].as_str().unwrap().ends_with('Z'));

    let (s, list) = hub.admin("GET", "/api/v1/agents", None);
    assert_eq!(s, 200);
    let a = agent(&list, id);
    assert_eq!(a["status"], "online");
    assert_eq!(a["hostname"], "web-1");
    assert_eq!(a["kernel"], "6.1.0-test");
    assert_eq!(a["group"], "edge");
    assert_eq!(a["labels"]["rack"], "r1");
    assert_eq!(a["journal_head"], json!({"seq": 1, "hash": "aa"}));
    assert_eq!(a["flags"], json!([]));
    assert!(a["last_heartbeat_age_secs"].as_u64().unwrap() <= 1);

    // The same key again.
    let (s, v) = hub.enroll(secret, "web-2");
    assert_eq!((s, v["error"].as_str()), (401, Some("key_used")), "{v}");
    assert!(v["hint"].as_str().is_some_and(|h| !h.is_empty()));
    // A key that never existed.
    let (s, v) = hub.enroll("opk_nope", "web-3");
    assert_eq!((s, v["error"].as_str()), (401, Some("key_unknown")));
    // The secret never shows up in the database.
    let raw = std::fs::read(hub.db()).unwrap();
    assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()));
    assert!(!raw.windows(token.len()).any(|w| w == token.as_bytes()));
}

#[test]
fn expired_key_is_refused() {
    let hub = Hub::start();
    let key = hub.mint(1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (s, v) = hub.enroll(&key, "late");
    assert_eq!((s, v["error"].as_str()), (401, Some("key_expired")), "{v}");
}

#[test]
fn bad_requests_are_400_with_json_errors() {
    let hub = Hub::start();
    let (s, v) = hub.req("POST", "/api/v1/enroll", None, Some(&json!({"key": 1})));
    assert_eq!((s, v["error"].as_str()), (400, Some("bad_request")));
    let (s, _) = hub.admin("POST", "/api/v1/keys", Some(&json!({"ttl_secs": 0})));
    assert_eq!(s, 400);
    let (s, _) = hub.admin("POST", "/api/v1/keys", Some(&json!({"ttl": "1h"})));
    assert_eq!(s, 400);
    let key = hub.mint(60);
    let (s, _) = hub.req(
        "POST",
        "/api/v1/enroll",
        None,
        Some(&json!({"key": key, "facts": {"hostname": ""}})),
    );
    assert_eq!(s, 400);
    let (id, token) = hub.new_agent("h");
    let (s, v) = hub.req(
        "POST",
        "/api/v1/heartbeat",
        Some(&token),
        Some(&json!({"version": "x"})),
    );
    assert_eq!((s, v["error"].as_str()), (400, Some("bad_request")), "{v}");
    // A token used for another agent id.
    let (s, v) = hub.heartbeat("a_other", &token, 1, "x");
    assert_eq!((s, v["error"].as_str()), (401, Some("token_invalid")));
    let (s, v) = hub.heartbeat(&id, "opt_wrong", 1, "x");
    assert_eq!((s, v["error"].as_str()), (401, Some("token_invalid")));
    let (s, v) = hub.req(
        "POST",
        "/api/v1/heartbeat",
        None,
        Some(&heartbeat_body(&id, 1, "x")),
    );
    assert_eq!((s, v["error"].as_str()), (401, Some("token_invalid")));
    let (s, v) = hub.req("GET", "/api/v1/nope", None, None);
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")));
    let (s, _) = hub.req("PUT", "/api/v1/agents", Some(ADMIN), None);
    assert_eq!(s, 405);
}

#[test]
fn revoke_then_heartbeat_is_token_revoked() {
    let hub = Hub::start();
    let (id, token) = hub.new_agent("doomed");
    assert_eq!(hub.heartbeat(&id, &token, 1, "a").0, 200);
    let (s, v) = hub.admin("POST", &format!("/api/v1/agents/{id}/revoke"), None);
    assert_eq!((s, v["status"].as_str()), (200, Some("revoked")), "{v}");
    assert!(v["revoked_at"].is_string());
    let (s, v) = hub.heartbeat(&id, &token, 2, "b");
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("token_revoked")),
        "{v}"
    );
    let (s, v) = hub.req(
        "POST",
        "/api/v1/diagnostics",
        Some(&token),
        Some(&json!({"agent_id": id, "report": {}})),
    );
    assert_eq!((s, v["error"].as_str()), (401, Some("token_revoked")));
    let (s, list) = hub.admin("GET", "/api/v1/agents", None);
    assert_eq!(s, 200);
    assert_eq!(agent(&list, &id)["status"], "revoked");
    assert_eq!(
        hub.admin("POST", "/api/v1/agents/a_missing/revoke", None).0,
        404
    );
}

#[test]
fn delete_removes_agent_and_token() {
    let hub = Hub::start();
    let (id, token) = hub.new_agent("gone");
    let (keep, keep_token) = hub.new_agent("kept");
    let (s, v) = hub.admin("DELETE", &format!("/api/v1/agents/{id}"), None);
    assert_eq!(s, 204, "{v}");
    assert_eq!(
        hub.admin("GET", &format!("/api/v1/agents/{id}"), None).0,
        404
    );
    assert_eq!(
        hub.admin("DELETE", &format!("/api/v1/agents/{id}"), None).0,
        404
    );
    let (s, v) = hub.heartbeat(&id, &token, 1, "a");
    assert_eq!((s, v["error"].as_str()), (401, Some("token_invalid")));
    assert_eq!(hub.heartbeat(&keep, &keep_token, 1, "a").0, 200);
    let (_, list) = hub.admin("GET", "/api/v1/agents", None);
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[test]
fn diagnostics_are_stored_and_shown() {
    let hub = Hub::start();
    let (id, token) = hub.new_agent("diag");
    let (s, v) = hub.admin("GET", &format!("/api/v1/agents/{id}"), None);
    assert_eq!((s, &v["diagnostics"]), (200, &Value::Null));
    let (s, v) = hub.req(
        "POST",
        "/api/v1/diagnostics",
        Some(&token),
        Some(&json!({"agent_id": id, "report": {"disk": "ok"}})),
    );
    assert_eq!((s, v), (202, json!({})));
    let (_, v) = hub.admin("GET", &format!("/api/v1/agents/{id}"), None);
    assert_eq!(v["diagnostics"]["report"], json!({"disk": "ok"}));
}

#[test]
fn identity_survives_restart_and_crash() {
    let mut hub = Hub::start();
    let (id, token) = hub.new_agent("durable");
    assert_eq!(hub.heartbeat(&id, &token, 7, "h7").0, 200);
    let unused = hub.mint(3600);
    // Graceful stop flushes heartbeat state.
    hub.stop();
    hub.restart();
    let (s, v) = hub.admin("GET", &format!("/api/v1/agents/{id}"), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["journal_head"], json!({"seq": 7, "hash": "h7"}));
    assert_eq!(v["kernel"], "6.1.0-test");
    assert!(v["last_heartbeat_at"].is_string());
    assert_eq!(hub.heartbeat(&id, &token, 8, "h8").0, 200);
    // A crash (SIGKILL) right after enrollment keeps the identity and the token; the
    // minted key stays valid.
    let (id2, token2) = hub.new_agent("crashy");
    hub.crash();
    hub.restart();
    assert_eq!(hub.heartbeat(&id2, &token2, 1, "x").0, 200);
    assert_eq!(hub.heartbeat(&id, &token, 9, "h9").0, 200);
    assert_eq!(hub.enroll(&unused, "later").0, 201);
    // Revocation survives too.
    assert_eq!(
        hub.admin("POST", &format!("/api/v1/agents/{id2}/revoke"), None)
            .0,
        200
    );
    hub.crash();
    hub.restart();
    assert_eq!(
        hub.heartbeat(&id2, &token2, 2, "y").1["error"],
        "token_revoked"
    );
}

#[test]
fn one_key_used_by_100_agents_enrolls_exactly_one() {
    // 100 enrollments from one address at once: above the default per-IP burst.
    let hub = Arc::new(Hub::start_with(&["--enroll-burst", "200"]));
    let key = Arc::new(hub.mint(3600));
    let barrier = Arc::new(Barrier::new(100));
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let (hub, key, barrier) = (hub.clone(), key.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                hub.enroll(&key, &format!("racer-{i}"))
            })
        })
        .collect();
    let results: Vec<(u16, Value)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    let used = results
        .iter()
        .filter(|(s, v)| *s == 401 && v["error"] == "key_used")
        .count();
    assert_eq!((created, used), (1, 99), "{results:?}");
    let (_, list) = hub.admin("GET", "/api/v1/agents", None);
    assert_eq!(list.as_array().unwrap().len(), 1);
}

const NONCE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn lost_enrollment_response_retried_gives_the_same_agent() {
    let hub = Hub::start();
    let key = hub.mint(3600);
    // The first answer is lost: the request goes out, the client hangs up before reading.
    let facts = json!({"hostname": "flaky-net", "machine_id": "m", "distro": "d", "arch": "a",
                       "version": "1", "mode": "system"});
    let body = json!({"key": key, "nonce": NONCE, "facts": facts}).to_string();
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&hub.addr).unwrap();
        write!(
            s,
            "POST /api/v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        s.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // The retry (same key, same nonce): one agent, a usable token.
    let (s1, first) = hub.enroll_nonce(&key, Some(NONCE), "flaky-net");
    assert!(s1 == 200 || s1 == 201, "{s1} {first}");
    let (s2, again) = hub.enroll_nonce(&key, Some(NONCE), "flaky-net");
    assert_eq!(s2, 200, "{again}");
    assert_eq!(again["agent_id"], first["agent_id"]);
    assert_eq!(again["heartbeat_interval_secs"], 30);
    let id = first["agent_id"].as_str().unwrap();
    let (old, token) = (
        first["token"].as_str().unwrap(),
        again["token"].as_str().unwrap(),
    );
    assert_ne!(old, token, "a retry issues a fresh token");
    let (_, list) = hub.admin("GET", "/api/v1/agents", None);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    // Only the newest token works.
    assert_eq!(hub.heartbeat(id, old, 1, "a").1["error"], "token_invalid");
    assert_eq!(hub.heartbeat(id, token, 1, "a").0, 200);
    // Once the agent has used its token, the nonce opens nothing any more.
    let (s, v) = hub.enroll_nonce(&key, Some(NONCE), "flaky-net");
    assert_eq!((s, v["error"].as_str()), (401, Some("key_used")), "{v}");
    assert_eq!(hub.heartbeat(id, token, 2, "b").0, 200, "token unharmed");

    // Another nonce, or none, for a used key: key_used as before.
    let key2 = hub.mint(3600);
    let (s, e) = hub.enroll_nonce(&key2, Some(NONCE), "host-2");
    assert_eq!(s, 201, "{e}");
    for n in [Some("fedcba9876543210fedcba9876543210"), None] {
        let (s, v) = hub.enroll_nonce(&key2, n, "host-2");
        assert_eq!(
            (s, v["error"].as_str()),
            (401, Some("key_used")),
            "{n:?}: {v}"
        );
    }
    // A revoked agent cannot be re-issued either.
    let id2 = e["agent_id"].as_str().unwrap();
    assert_eq!(
        hub.admin("POST", &format!("/api/v1/agents/{id2}/revoke"), None)
            .0,
        200
    );
    let (s, v) = hub.enroll_nonce(&key2, Some(NONCE), "host-2");
    assert_eq!((s, v["error"].as_str()), (401, Some("key_used")), "{v}");

    // Past the key's TTL the retry window is closed.
    let key3 = hub.mint(1);
    let (s, _) = hub.enroll_nonce(&key3, Some(NONCE), "host-3");
    assert_eq!(s, 201);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (s, v) = hub.enroll_nonce(&key3, Some(NONCE), "host-3");
    assert_eq!((s, v["error"].as_str()), (401, Some("key_used")), "{v}");

    // Malformed nonces are a 400 naming the field.
    let key4 = hub.mint(60);
    for bad in ["short", "has spaces in it, sixteen+", &"x".repeat(129)] {
        let (s, v) = hub.enroll_nonce(&key4, Some(bad), "host-4");
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(v["field"], "nonce", "{v}");
    }
    // The retry survives a hub restart (the nonce is stored hashed with the key).
    let mut hub = hub;
    let key5 = hub.mint(3600);
    let (_, a) = hub.enroll_nonce(&key5, Some(NONCE), "host-5");
    hub.crash();
    hub.restart();
    let (s, b) = hub.enroll_nonce(&key5, Some(NONCE), "host-5");
    assert_eq!((s, &b["agent_id"]), (200, &a["agent_id"]), "{b}");
    assert_eq!(
        hub.heartbeat(
            b["agent_id"].as_str().unwrap(),
            b["token"].as_str().unwrap(),
            1,
            "x"
        )
        .0,
        200
    );
    let raw = std::fs::read(hub.db()).unwrap();
    assert!(
        !raw.windows(NONCE.len()).any(|w| w == NONCE.as_bytes()),
        "the nonce is stored hashed only"
    );
}

#[test]
fn oversized_fields_are_refused_while_heartbeats_keep_working() {
    let hub = Arc::new(Hub::start());
    let (id, token) = hub.new_agent("steady");
    assert_eq!(hub.heartbeat(&id, &token, 1, "a").0, 200);
    let ten_mb = "x".repeat(10 * 1024 * 1024);
    // Heartbeats go on while 10 MB bodies are being refused.
    let beat = {
        let (hub, id, token) = (hub.clone(), id.clone(), token.clone());
        std::thread::spawn(move || {
            (2..40u64)
                .map(|seq| hub.heartbeat(&id, &token, seq, "h").0)
                .collect::<Vec<_>>()
        })
    };
    let key = hub.mint(600);
    let huge_enroll = json!({"key": key, "facts": {"hostname": ten_mb}}).to_string();
    let r = hub.raw(
        "POST",
        "/api/v1/enroll",
        &[("Content-Type", "application/json")],
        huge_enroll.as_bytes(),
    );
    assert_eq!(r.status, 413, "{}", r.head);
    assert_eq!(r.json()["error"], "payload_too_large");
    let mut hb = heartbeat_body(&id, 50, "z");
    hb["kernel"] = json!(ten_mb);
    let auth = format!("Bearer {token}");
    let r = hub.raw(
        "POST",
        "/api/v1/heartbeat",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        hb.to_string().as_bytes(),
    );
    assert_eq!(r.status, 413, "{}", r.head);
    let diag = json!({"agent_id": id, "report": {"blob": ten_mb}}).to_string();
    let r = hub.raw(
        "POST",
        "/api/v1/diagnostics",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        diag.as_bytes(),
    );
    assert_eq!(r.status, 413, "diagnostics are capped at 2 MiB: {}", r.head);
    assert!(beat.join().unwrap().iter().all(|s| *s == 200));

    // Within the body limit, each over-long field is a 400 naming it.
    let (s, v) = hub.enroll(&key, &"h".repeat(256));
    assert_eq!(
        (s, v["error"].as_str(), v["field"].as_str()),
        (400, Some("field_too_long"), Some("facts.hostname")),
        "{v}"
    );
    let long = "v".repeat(256);
    for (field, body) in [
        ("kernel", json!({"agent_id": id, "kernel": long})),
        ("distro", json!({"agent_id": id, "distro": long})),
        ("version", json!({"agent_id": id, "version": long})),
        ("arch", json!({"agent_id": id, "arch": long})),
        ("mode", json!({"agent_id": id, "mode": long})),
        (
            "capabilities.docker_version",
            json!({"agent_id": id, "capabilities": {"docker_version": long}}),
        ),
        (
            "journal_head.hash",
            json!({"agent_id": id, "journal_head": {"seq": 1, "hash": long}}),
        ),
        (
            "last_upgrade.to",
            json!({"agent_id": id, "last_upgrade": {"to": long}}),
        ),
    ] {
        let (s, v) = hub.req("POST", "/api/v1/heartbeat", Some(&token), Some(&body));
        assert_eq!((s, v["field"].as_str()), (400, Some(field)), "{v}");
        assert!(v["message"].as_str().unwrap().contains(field), "{v}");
    }
    let many: serde_json::Map<String, Value> =
        (0..100).map(|i| (format!("k{i}"), json!(i))).collect();
    let (s, v) = hub.req(
        "POST",
        "/api/v1/heartbeat",
        Some(&token),
        Some(&json!({"agent_id": id, "capabilities": many})),
    );
    assert_eq!((s, v["field"].as_str()), (400, Some("capabilities")), "{v}");
    for f in ["machine_id", "distro", "arch", "version", "mode"] {
        let body = json!({"key": key, "facts": {"hostname": "ok", f: long}});
        let (s, v) = hub.req("POST", "/api/v1/enroll", None, Some(&body));
        assert_eq!(
            v["field"].as_str(),
            Some(format!("facts.{f}").as_str()),
            "{s} {v}"
        );
    }
    // Nothing of it was stored, and the agent is fine.
    let (_, v) = hub.admin("GET", &format!("/api/v1/agents/{id}"), None);
    assert_eq!(v["kernel"], "6.1.0-test");
    assert_eq!(hub.heartbeat(&id, &token, 60, "q").0, 200);
    assert_eq!(hub.enroll(&key, "fits").0, 201, "the key was not used up");
}

#[test]
fn enroll_is_rate_limited_per_address() {
    let hub = Hub::start();
    let (id, token) = hub.new_agent("beating");
    // The default: a burst of 20 (new_agent took one), then 429 with Retry-After.
    for i in 0..19 {
        let (s, v) = hub.enroll("opk_nope", &format!("h{i}"));
        assert_eq!(
            (s, v["error"].as_str()),
            (401, Some("key_unknown")),
            "attempt {i}"
        );
    }
    let facts = json!({"key": "opk_nope", "facts": {"hostname": "h"}}).to_string();
    let r = hub.raw(
        "POST",
        "/api/v1/enroll",
        &[("Content-Type", "application/json")],
        facts.as_bytes(),
    );
    assert_eq!(r.status, 429, "{}", r.head);
    let v = r.json();
    assert_eq!(v["error"], "rate_limited", "{v}");
    assert!(v["hint"]
        .as_str()
        .is_some_and(|h| h.contains("Retry-After")));
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=7).contains(&wait),
        "10/min: a token every 6 s, got {wait}"
    );
    // A valid key is limited too, and heartbeats are not.
    let key = hub.mint(600);
    assert_eq!(hub.enroll(&key, "later").0, 429);
    assert_eq!(hub.heartbeat(&id, &token, 1, "a").0, 200);
    // Off with --enroll-rate 0.
    let free = Hub::start_with(&["--enroll-rate", "0"]);
    for i in 0..40 {
        assert_eq!(free.enroll("opk_nope", "x").0, 401, "attempt {i}");
    }
}

#[test]
fn journal_backwards_and_fork_are_flagged() {
    let hub = Hub::start();
    let (id, token) = hub.new_agent("journal");
    let flags =
        |hub: &Hub| hub.admin("GET", &format!("/api/v1/agents/{id}"), None).1["flags"].clone();
    assert_eq!(hub.heartbeat(&id, &token, 10, "h10").0, 200);
    assert_eq!(hub.heartbeat(&id, &token, 11, "h11").0, 200);
    assert_eq!(hub.heartbeat(&id, &token, 11, "h11").0, 200);
    assert_eq!(flags(&hub), json!([]));
    assert_eq!(hub.heartbeat(&id, &token, 11, "other").0, 200);
    assert_eq!(flags(&hub), json!(["journal_forked"]));
    assert_eq!(hub.heartbeat(&id, &token, 3, "h3").0, 200);
    assert_eq!(
        flags(&hub),
        json!(["journal_forked", "journal_went_backwards"])
    );

    let (id2, token2) = hub.new_agent("rewound");
    assert_eq!(hub.heartbeat(&id2, &token2, 5, "a").0, 200);
    assert_eq!(hub.heartbeat(&id2, &token2, 4, "b").0, 200);
    let (_, v) = hub.admin("GET", &format!("/api/v1/agents/{id2}"), None);
    assert_eq!(v["flags"], json!(["journal_went_backwards"]));
    assert_eq!(v["journal_head"], json!({"seq": 4, "hash": "b"}));
}

#[test]
fn status_goes_stale_after_two_intervals() {
    let hub = Hub::start_with(&["--heartbeat-interval", "1"]);
    let (id, token) = hub.new_agent("sleepy");
    let (_, hb) = hub.heartbeat(&id, &token, 1, "a");
    assert_eq!(hb["interval_secs"], 1);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (_, v) = hub.admin("GET", &format!("/api/v1/agents/{id}"), None);
    assert_eq!(v["status"], "stale");
}

#[test]
fn release_files_are_served_and_traversal_refused() {
    let hub = Hub::start();
    let r = hub.releases();
    std::fs::write(r.join("install.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(r.join("manifest.json"), "{\"format\":1}").unwrap();
    std::fs::write(r.join("manifest.json.minisig"), "untrusted comment: x\n").unwrap();
    std::fs::create_dir_all(r.join("channels")).unwrap();
    std::fs::write(r.join("channels/stable"), "1.2.0\n").unwrap();
    std::fs::create_dir_all(r.join("v1.2.0")).unwrap();
    std::fs::write(
        r.join("v1.2.0/outpost-x86_64-linux-musl.tar.gz"),
        [0x1f, 0x8b, 0, 1],
    )
    .unwrap();
    std::fs::create_dir_all(r.join("packs/demo/v1.0.0")).unwrap();
    std::fs::write(r.join("packs/demo/manifest.json"), "{\"kind\":\"pack\"}").unwrap();
    std::fs::write(
        r.join("packs/demo/v1.0.0/demo-1.0.0.tar.gz"),
        [0x1f, 0x8b, 0, 2],
    )
    .unwrap();
    std::fs::write(r.join("packs/demo/secret.txt"), "secret").unwrap();
    std::fs::write(r.join(".secret"), "no").unwrap();
    std::fs::write(hub.dir.path().join("outside.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(
        hub.dir.path().join("outside.txt"),
        r.join("v1.2.0/link.txt"),
    )
    .unwrap();

    for (path, ct, body) in [
        (
            "/install.sh",
            "text/x-shellscript",
            &b"#!/bin/sh\necho hi\n"[..],
        ),
        ("/manifest.json", "application/json", b"{\"format\":1}"),
        (
            "/manifest.json.minisig",
            "text/plain",
            b"untrusted comment: x\n",
        ),
        ("/channels/stable", "text/plain", b"1.2.0\n"),
        (
            "/packs/demo/manifest.json",
            "application/json",
            b"{\"kind\":\"pack\"}",
        ),
        (
            "/packs/demo/v1.0.0/demo-1.0.0.tar.gz",
            "application/gzip",
            &[0x1f, 0x8b, 0, 2],
        ),
        (
            "/v1.2.0/outpost-x86_64-linux-musl.tar.gz",
            "application/gzip",
            &[0x1f, 0x8b, 0, 1],
        ),
    ] {
        let (s, head, got) = hub.raw_get(path);
        assert_eq!(s, 200, "{path}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-type: {ct}")),
            "{path}: {head}"
        );
        assert_eq!(got, body, "{path}");
    }
    // A large file arrives whole (streamed, with its length).
    let big: Vec<u8> = (0..9 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(r.join("v1.2.0/big.bin"), &big).unwrap();
    let (s, head, got) = hub.raw_get("/v1.2.0/big.bin");
    assert_eq!(s, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", big.len())),
        "{head}"
    );
    assert!(got == big, "big file differs ({} bytes)", got.len());
    for path in [
        "/channels/beta",
        "/channels/nightly",
        "/v1.2.0/missing",
        "/v1.2.0/../../outside.txt",
        "/v1.2.0/..%2f..%2foutside.txt",
        "/v1.2.0/%2e%2e",
        "/v..%2f..%2f/outside.txt",
        "/channels/..%2f..%2foutside.txt",
        "/v1.2.0/link.txt",
        "/v1.2.0/.secret",
        "/x1.2.0/outpost-x86_64-linux-musl.tar.gz",
        "/.secret",
        "/../outside.txt",
        "/releases/install.sh",
        "/v1.2.0",
        "/packs/demo/secret.txt",
        "/packs/demo/v1.0.0/..%2f..%2f..%2foutside.txt",
        "/packs/..%2f..%2f/manifest.json",
        "/packs/.demo/manifest.json",
        "/packs/demo/1.0.0/demo-1.0.0.tar.gz",
    ] {
        let (s, _, body) = hub.raw_get(path);
        assert!(s == 404 || s == 400, "{path}: {s}");
        assert!(
            !String::from_utf8_lossy(&body).contains("secret"),
            "{path} leaked"
        );
    }
}

#[test]
fn admin_endpoints_reject_missing_and_wrong_tokens() {
    let hub = Hub::start();
    let (id, token) = hub.new_agent("x");
    let calls = [
        (
            "POST",
            "/api/v1/keys".to_string(),
            Some(json!({"ttl_secs": 60})),
        ),
        ("GET", "/api/v1/agents".to_string(), None),
        ("GET", format!("/api/v1/agents/{id}"), None),
        ("POST", format!("/api/v1/agents/{id}/revoke"), None),
        ("DELETE", format!("/api/v1/agents/{id}"), None),
    ];
    for (m, p, b) in &calls {
        for tok in [
            None,
            Some("wrong-admin-token-xxxxxxxxxxxx"),
            Some(token.as_str()),
        ] {
            let (s, v) = hub.req(m, p, tok, b.as_ref());
            assert_eq!(
                (s, v["error"].as_str()),
                (401, Some("unauthorized")),
                "{m} {p} with {tok:?}"
            );
        }
    }
    // Nothing changed.
    let (_, v) = hub.admin("GET", &format!("/api/v1/agents/{id}"), None);
    assert_eq!(v["status"], "online");
}

#[test]
fn serve_refuses_to_start_without_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("hub.db"))
        .arg("--releases")
        .arg(dir.path())
        .env_remove("OUTPOST_HUB_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: no admin token"), "{err}");
    assert!(err.contains("\nhint: "), "{err}");

    let out = Command::new(bin())
        .args(["serve", "--db", "/nonexistent/dir/hub.db", "--releases"])
        .arg(dir.path())
        .env("OUTPOST_HUB_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hint: "));
    // The limits' flags are checked too.
    for bad in [
        ["--max-connections", "0"],
        ["--request-timeout", "0"],
        ["--request-timeout", "3601"],
        ["--enroll-burst", "0"],
    ] {
        let out = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(dir.path().join("hub.db"))
            .arg("--releases")
            .arg(dir.path())
            .args(bad)
            .env("OUTPOST_HUB_ADMIN_TOKEN", ADMIN)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert!(
            err.starts_with("error: --") && err.contains("\nhint: "),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn cli_manages_keys_and_agents() {
    let hub = Hub::start();
    let cli = |args: &[&str]| {
        let out = Command::new(bin())
            .args(args)
            .env("OUTPOST_HUB_URL", &hub.url)
            .env("OUTPOST_HUB_ADMIN_TOKEN", ADMIN)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = cli(&[
        "keys",
        "create",
        "--ttl",
        "30m",
        "--group",
        "g1",
        "--label",
        "env=prod",
        "--public-url",
        "https://hub.example",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap()
        .trim()
        .to_string();
    assert!(out.contains(
        "f=$(mktemp) && printf 'enrollment key: ' && read -rs k && printf '%s\\n' \"$k\" >\"$f\" && unset k && echo && curl -sSL https://hub.example/install.sh | sudo OUTPOST_ENROLL_KEY_FILE=\"$f\" OUTPOST_HUB_URL=https://hub.example sh; rm -f \"$f\""
    ), "{out}");
    // the key itself is printed once, never inside the command line
    assert_eq!(out.matches(key.as_str()).count(), 1, "{out}");
    let (s, e) = hub.enroll(&key, "cli-host");
    assert_eq!(s, 201);
    let id = e["agent_id"].as_str().unwrap();

    let (code, out, _) = cli(&["agents"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("ID "), "{out}");
    assert!(
        out.contains(id) && out.contains("cli-host") && out.contains("online"),
        "{out}"
    );
    // Agent-supplied control characters reach the terminal escaped, never raw.
    let evil = hub.mint(600);
    let (s, _) = hub.enroll(
        &evil,
        "evil\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31m\nfake-line",
    );
    assert_eq!(s, 201);
    let (code, out, _) = cli(&["agents"]);
    assert_eq!(code, Some(0));
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\u{9b}'),
        "{out:?}"
    );
    assert!(
        out.contains("evil\\x1b]0;owned\\x07\\x1b[2J\\u{9b}31m\\nfake-line"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 3, "{out}");
    let (code, out, _) = cli(&["agents", "--json"]);
    assert!(
        !out.chars().any(|c| c.is_control() && c != '\n'),
        "json escapes too: {out:?}"
    );
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).unwrap();
    let cli_agent = v
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .unwrap();
    assert_eq!(cli_agent["group"], "g1");
    assert_eq!(cli_agent["labels"]["env"], "prod");

    assert_eq!(cli(&["revoke", id]).0, Some(0));
    assert_eq!(
        hub.admin("GET", &format!("/api/v1/agents/{id}"), None).1["status"],
        "revoked"
    );
    assert_eq!(cli(&["delete", id]).0, Some(0));
    let (code, _, err) = cli(&["delete", id]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not_found") && err.contains("hint: "), "{err}");
    let (code, _, err) = cli(&["keys", "create", "--ttl", "soon"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("hint: use e.g. 90s"), "{err}");
}

#[test]
fn serves_https_with_rustls() {
    let have = |t: &str| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("curl") || Command::new("openssl").arg("version").output().is_err() {
        if std::env::var_os("CI").is_some() {
            panic!("openssl or curl is missing and CI is set: ci/setup.sh must install both");
        }
        eprintln!("\n!!!!! SKIPPED serves_https_with_rustls: needs openssl and curl !!!!!\n");
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let (crt, key) = (certs.path().join("hub.crt"), certs.path().join("hub.key"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let hub = Hub::start_with(&[
        "--tls-cert",
        crt.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(hub.url.starts_with("https://127.0.0.1:"), "{}", hub.url);
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10"])
        .arg(format!("{}/healthz", hub.url))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
    assert_eq!(v["ok"], true);

    // Login over TLS: the Origin must be https://<host>; http:// is refused.
    let curl = |args: &[&str]| -> String {
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "10", "-i"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let status = |resp: &str| -> u16 { resp.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0) };
    assert_eq!(status(&curl(&[&format!("{}/", hub.url)])), 303);
    let page = curl(&[&format!("{}/login", hub.url)]);
    let pre = page
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: outpost_login="))
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("{page}"))
        .to_string();
    let csrf = common::csrf_of(&page);
    let form = format!("csrf={csrf}&token={ADMIN}");
    let post = |origin: &str| {
        curl(&[
            "-H",
            &format!("Origin: {origin}"),
            "-H",
            &format!("Cookie: outpost_login={pre}"),
            "--data",
            &form,
            &format!("{}/login", hub.url),
        ])
    };
    let plain = hub.url.replacen("https://", "http://", 1);
    assert_eq!(status(&post(&plain)), 403, "http origin on a TLS hub");
    let ok = post(&hub.url);
    assert_eq!(status(&ok), 303, "{ok}");
    assert!(ok.contains("set-cookie: outpost_session="), "{ok}");

    // A key file that is not a key: exit 2 with a hint.
    let bad = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(certs.path().join("x.db"))
        .arg("--releases")
        .arg(certs.path())
        .args([
            "--tls-cert",
            crt.to_str().unwrap(),
            "--tls-key",
            crt.to_str().unwrap(),
        ])
        .env("OUTPOST_HUB_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("hint: "));
}

/// The (state, agents) of (name, sha digit) in `GET /api/v1/packs`.
fn pack_state(hub: &Hub, name: &str, d: char) -> Option<(String, u64)> {
    let (s, v) = hub.admin("GET", "/api/v1/packs", None);
    assert_eq!(s, 200, "{v}");
    let sha = d.to_string().repeat(64);
    v.as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name && p["sha256"] == sha)
        .map(|p| {
            (
                p["state"].as_str().unwrap().to_string(),
                p["agents"].as_u64().unwrap(),
            )
        })
}

/// The states of agent `id`'s catalog, by pack name; `None` before any catalog.
fn catalog_states(hub: &Hub, id: &str) -> Option<Vec<(String, String)>> {
    let (s, v) = hub.admin("GET", &format!("/api/v1/agents/{id}"), None);
    assert_eq!(s, 200, "{v}");
    v["packs"].as_array().map(|a| {
        a.iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().into(),
                    p["state"].as_str().unwrap().into(),
                )
            })
            .collect()
    })
}

fn states(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
    Some(
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    )
}

#[test]
fn pack_catalogs_pending_trust_drift_clear_and_keep() {
    let mut hub = Hub::start();
    let (a, ta) = hub.new_agent("packs-a");
    let (b, tb) = hub.new_agent("packs-b");
    assert_eq!(catalog_states(&hub, &a), None, "no catalog yet");
    assert_eq!(hub.heartbeat(&a, &ta, 1, "x").0, 200);
    assert_eq!(catalog_states(&hub, &a), None, "a heartbeat without packs");

    // A new (name, sha256) is pending, counted per advertising agent.
    let cat = json!([pack("web", "1.0.0", '1'), pack("db", "2.0.0", '2')]);
    assert_eq!(hub.heartbeat_packs(&a, &ta, cat.clone()).0, 200);
    assert_eq!(
        hub.heartbeat_packs(&b, &tb, json!([pack("web", "1.0.0", '1')]))
            .0,
        200
    );
    assert_eq!(pack_state(&hub, "web", '1'), Some(("pending".into(), 2)));
    assert_eq!(pack_state(&hub, "db", '2'), Some(("pending".into(), 1)));
    assert_eq!(
        catalog_states(&hub, &a),
        states(&[("web", "pending"), ("db", "pending")])
    );
    let (_, list) = hub.admin("GET", "/api/v1/packs", None);
    let web = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "web")
        .unwrap();
    assert_eq!(
        (web["first_seen_by"].as_str(), web["trusted_at"].is_null()),
        (Some(a.as_str()), true)
    );
    assert_eq!(web["actions"][0]["params"][0]["type"], "string");

    // Trust: idempotent, the first time and who are kept.
    let path = format!("/api/v1/packs/web/{}/trust", "1".repeat(64));
    let (s, first) = hub.admin("POST", &path, None);
    assert_eq!(
        (s, first["state"].as_str(), first["agents"].as_u64()),
        (200, Some("trusted"), Some(2)),
        "{first}"
    );
    assert_eq!(first["trusted_by"], "admin token");
    let (s, again) = hub.admin("POST", &path, None);
    assert_eq!((s, &again["trusted_at"]), (200, &first["trusted_at"]));
    assert_eq!(
        catalog_states(&hub, &a),
        states(&[("web", "trusted"), ("db", "pending")])
    );

    // A changed hash of web on b: a new pending record, and b shows web drifted.
    assert_eq!(
        hub.heartbeat_packs(&b, &tb, json!([pack("web", "1.1.0", '3')]))
            .0,
        200
    );
    assert_eq!(pack_state(&hub, "web", '3'), Some(("pending".into(), 1)));
    assert_eq!(pack_state(&hub, "web", '1'), Some(("trusted".into(), 1)));
    assert_eq!(catalog_states(&hub, &b), states(&[("web", "drifted")]));
    // Trusting the new hash keeps the old one trusted.
    let (s, _) = hub.admin(
        "POST",
        &format!("/api/v1/packs/web/{}/trust", "3".repeat(64)),
        None,
    );
    assert_eq!(s, 200);
    assert_eq!(pack_state(&hub, "web", '1').unwrap().0, "trusted");
    assert_eq!(catalog_states(&hub, &b), states(&[("web", "trusted")]));

    // Absent and null keep the catalog; [] clears it (the records stay).
    let mut plain = heartbeat_body(&a, 2, "y");
    plain.as_object_mut().unwrap().remove("packs");
    assert_eq!(
        hub.req("POST", "/api/v1/heartbeat", Some(&ta), Some(&plain))
            .0,
        200
    );
    assert_eq!(hub.heartbeat_packs(&a, &ta, Value::Null).0, 200);
    assert_eq!(
        catalog_states(&hub, &a),
        states(&[("web", "trusted"), ("db", "pending")])
    );
    assert_eq!(hub.heartbeat_packs(&a, &ta, json!([])).0, 200);
    assert_eq!(catalog_states(&hub, &a), Some(vec![]));
    assert_eq!(pack_state(&hub, "db", '2'), Some(("pending".into(), 0)));

    // Catalogs and trust survive a restart.
    assert_eq!(hub.heartbeat_packs(&a, &ta, cat).0, 200);
    hub.stop();
    hub.restart();
    assert_eq!(
        catalog_states(&hub, &a),
        states(&[("web", "trusted"), ("db", "pending")])
    );
    assert_eq!(catalog_states(&hub, &b), states(&[("web", "trusted")]));
    assert_eq!(pack_state(&hub, "web", '3'), Some(("trusted".into(), 1)));
}

#[test]
fn pack_catalog_errors_unknown_pairs_and_auth() {
    let hub = Hub::start();
    let (id, token) = hub.new_agent("packs-bad");
    // A catalog validate_catalog refuses: 400 field_invalid naming packs…, nothing stored.
    let mut upper = pack("web", "1", 'a');
    upper["sha256"] = json!("A".repeat(64));
    let many: Vec<Value> = (0..65).map(|i| pack(&format!("p{i}"), "1", 'b')).collect();
    for (what, bad, field) in [
        ("bad name", json!([pack("Web", "1", 'a')]), "packs.name"),
        (
            "twice",
            json!([pack("web", "1", 'a'), pack("web", "1", 'b')]),
            "packs.name",
        ),
        ("upper hex", json!([upper]), "packs.sha256"),
        ("65 packs", json!(many), "packs"),
    ] {
        let (s, v) = hub.heartbeat_packs(&id, &token, bad);
        assert_eq!(
            (s, v["error"].as_str(), v["field"].as_str()),
            (400, Some("field_invalid"), Some(field)),
            "{what}: {v}"
        );
        assert!(v["hint"].as_str().is_some_and(|h| !h.is_empty()), "{v}");
    }
    let (_, list) = hub.admin("GET", "/api/v1/packs", None);
    assert_eq!(list, json!([]), "nothing recorded");
    // Unknown pairs are 404 with the error body.
    assert_eq!(
        hub.heartbeat_packs(&id, &token, json!([pack("web", "1", 'a')]))
            .0,
        200
    );
    for path in [
        format!("/api/v1/packs/web/{}/trust", "b".repeat(64)),
        format!("/api/v1/packs/nope/{}/trust", "a".repeat(64)),
        "/api/v1/packs/web/aaaa/trust".to_string(),
    ] {
        let (s, v) = hub.admin("POST", &path, None);
        assert_eq!(
            (s, v["error"].as_str()),
            (404, Some("not_found")),
            "{path}: {v}"
        );
        assert!(
            v["message"].as_str().unwrap().starts_with("no pack "),
            "{v}"
        );
        assert!(
            v["hint"].as_str().unwrap().contains("outpost-hub packs"),
            "{v}"
        );
    }
    // Without the admin token: 401, and nothing trusted.
    let trust = format!("/api/v1/packs/web/{}/trust", "a".repeat(64));
    for (m, p) in [("GET", "/api/v1/packs"), ("POST", trust.as_str())] {
        for tok in [
            None,
            Some("wrong-admin-token-xxxxxxxxxxxx"),
            Some(token.as_str()),
        ] {
            let (s, v) = hub.req(m, p, tok, None);
            assert_eq!(
                (s, v["error"].as_str()),
                (401, Some("unauthorized")),
                "{m} {p} {tok:?}"
            );
        }
    }
    assert_eq!(pack_state(&hub, "web", 'a'), Some(("pending".into(), 1)));
}

/// A catalog at the protocol's bounds (64 packs, 1024 actions, long descriptions) fits the
/// 512 KiB heartbeat body, which the old 64 KiB cap refused; past 512 KiB is 413.
#[test]
fn a_full_catalog_fits_the_heartbeat_cap() {
    let hub = Hub::start();
    let (id, token) = hub.new_agent("packs-full");
    let full: Vec<Value> = (0..64)
        .map(|i| {
            let actions: Vec<Value> = (0..16)
                .map(|j| {
                    json!({"id": format!("action-{j}"), "description": "d".repeat(200),
                                "params": [{"name": "unit", "type": "string", "required": true},
                                           {"name": "force", "type": "bool"}],
                                "idempotent": true, "privileged": j == 0})
                })
                .collect();
            json!({"name": format!("pack-{i}"), "version": "1.0.0",
                   "sha256": format!("{i:064x}"), "actions": actions})
        })
        .collect();
    let mut body = heartbeat_body(&id, 1, "a");
    body["packs"] = json!(full);
    let len = body.to_string().len();
    assert!(len > 256 * 1024 && len < 512 * 1024, "{len} bytes");
    let (s, v) = hub.req("POST", "/api/v1/heartbeat", Some(&token), Some(&body));
    assert_eq!(s, 200, "{v}");
    let (_, list) = hub.admin("GET", "/api/v1/packs", None);
    assert_eq!(list.as_array().unwrap().len(), 64);
    // Past the cap: 413 before parsing.
    body["kernel"] = json!("k".repeat(512 * 1024 - len + 100));
    let auth = format!("Bearer {token}");
    let r = hub.raw(
        "POST",
        "/api/v1/heartbeat",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 413, "{}", r.head);
    assert_eq!(r.json()["error"], "payload_too_large");
}

#[test]
fn cli_lists_and_trusts_packs_by_prefix() {
    let hub = Hub::start();
    let cli = |args: &[&str]| {
        let out = Command::new(bin())
            .args(args)
            .env("OUTPOST_HUB_URL", &hub.url)
            .env("OUTPOST_HUB_ADMIN_TOKEN", ADMIN)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (id, token) = hub.new_agent("packs-cli");
    let mut web2 = pack("web", "1.1.0", '0');
    web2["sha256"] = json!(format!("{}{}", "0".repeat(12), "1".repeat(52)));
    let other = hub.new_agent("packs-cli-2");
    let catalog = json!([pack("web", "1.0.0", '0'), pack("db", "2.0.0", 'd')]);
    assert_eq!(hub.heartbeat_packs(&id, &token, catalog).0, 200);
    let (s, _) = hub.req(
        "POST",
        "/api/v1/heartbeat",
        Some(&other.1),
        Some(&json!({"agent_id": other.0, "packs": [web2]})),
    );
    assert_eq!(s, 200);

    let (code, out, err) = cli(&["packs"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.lines().next().unwrap(),
        "NAME  VERSION  SHA256        STATE    AGENTS",
        "{out}"
    );
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(
        out.contains("db    2.0.0    dddddddddddd  pending  1"),
        "{out}"
    );

    // Ambiguous, unknown, too short: exit 2, one error line and one hint line, nothing trusted.
    for (args, msg) in [
        (
            ["packs", "trust", "web", "000000000000"],
            "error: sha256 prefix 000000000000 of pack web matches 2 hashes",
        ),
        (
            ["packs", "trust", "web", "ffffffffffff"],
            "error: no pack web with a sha256 starting ffffffffffff",
        ),
        (
            ["packs", "trust", "web", "00000"],
            "error: sha256 \"00000\" is not 12 to 64 hex digits",
        ),
    ] {
        let (code, out, err) = cli(&args);
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert_eq!(lines[0], msg);
        assert!(lines[1].starts_with("hint: "), "{err}");
    }
    let (code, out, _) = cli(&["packs", "--pending", "--json"]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);

    // A unique prefix trusts exactly that hash (any case).
    let (code, out, err) = cli(&["packs", "trust", "web", "0000000000000"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with(&format!("trusted web 1.0.0 ({})", "0".repeat(64))),
        "{out}"
    );
    let (code, _, err) = cli(&["packs", "trust", "db", "DDDDDDDDDDDD"]);
    assert_eq!(code, Some(0), "{err}");
    let (_, out, _) = cli(&["packs", "--pending"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.contains("web   1.1.0    000000000000  pending  1"),
        "{out}"
    );
    let (_, out, _) = cli(&["packs"]);
    assert_eq!(out.matches("trusted").count(), 2, "{out}");
}
