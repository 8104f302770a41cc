//! API tests against a real hub process and a real SQLite file.

mod common;

use std::process::Command;
use std::sync::{Arc, Barrier};

use common::{bin, heartbeat_body, Hub, ADMIN};
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
    let hub = Arc::new(Hub::start());
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
    assert!(out.contains(&format!(
        "(umask 077; printf '%s' '{key}' > /tmp/outpost.key) && curl -sSL https://hub.example/install.sh | sudo OUTPOST_ENROLL_KEY_FILE=/tmp/outpost.key OUTPOST_HUB_URL=https://hub.example sh; rm -f /tmp/outpost.key"
    )), "{out}");
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
    let (code, out, _) = cli(&["agents", "--json"]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["group"], "g1");
    assert_eq!(v[0]["labels"]["env"], "prod");

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
