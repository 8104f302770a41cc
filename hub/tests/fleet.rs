//! Limits and fleet controls against a real hub process: runs in flight and queued per
//! agent, the per-run log rate, retention of finished runs and their log files, drain and
//! the kill switch through the API and the CLI, and the audit log that records them.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Hub, ADMIN};
use serde_json::{json, Value};

const SHA: char = 'e';

struct Agent {
    id: String,
    token: String,
}

fn agent(hub: &Hub, host: &str, group: &str) -> Agent {
    let (s, key) = hub.admin(
        "POST",
        "/api/v1/keys",
        Some(&json!({"ttl_secs": 600, "group": group})),
    );
    assert_eq!(s, 201, "{key}");
    let (s, e) = hub.enroll(key["key"].as_str().unwrap(), host);
    assert_eq!(s, 201, "{e}");
    let a = Agent {
        id: e["agent_id"].as_str().unwrap().into(),
        token: e["token"].as_str().unwrap().into(),
    };
    let catalog = json!([{
        "name": "web", "version": "1.0.0", "sha256": SHA.to_string().repeat(64),
        "actions": [{"id": "once", "params": [], "idempotent": false, "privileged": false}]
    }]);
    assert_eq!(hub.heartbeat_packs(&a.id, &a.token, catalog).0, 200);
    let path = format!("/api/v1/packs/web/{}/trust", SHA.to_string().repeat(64));
    assert_eq!(hub.admin("POST", &path, None).0, 200);
    a
}

impl Agent {
    fn post(&self, hub: &Hub, path: &str, body: Value) -> (u16, Value) {
        hub.req("POST", path, Some(&self.token), Some(&body))
    }

    fn offers(&self, hub: &Hub, holding: &[&str]) -> (Vec<String>, Value) {
        let body = json!({"agent_id": self.id, "wait_secs": 0, "holding": holding});
        let (s, v) = self.post(hub, "/api/v1/agent/poll", body);
        assert_eq!(s, 200, "{v}");
        let ids = v["offers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["run_id"].as_str().unwrap().to_string())
            .collect();
        (ids, v)
    }

    fn claim(&self, hub: &Hub, run: &str) -> (u16, Value) {
        self.post(
            hub,
            &format!("/api/v1/agent/runs/{run}/claim"),
            json!({"claimant": "proc"}),
        )
    }

    fn log(&self, hub: &Hub, run: &str, offset: u64, data: &[u8]) -> common::Raw {
        let auth = format!("Bearer {}", self.token);
        hub.raw(
            "POST",
            &format!("/api/v1/agent/runs/{run}/log?offset={offset}"),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/octet-stream"),
            ],
            data,
        )
    }

    fn finish(&self, hub: &Hub, run: &str) -> (u16, Value) {
        self.post(
            hub,
            &format!("/api/v1/agent/runs/{run}/result"),
            json!({"outcome": "succeeded", "exit_code": 0, "reason": "",
                   "finished_at": "2024-01-01T00:00:05Z", "log_bytes": 0}),
        )
    }
}

fn create(hub: &Hub, target: Value) -> (u16, Value) {
    let body = json!({"target": target, "action": "once", "params": {}});
    hub.admin("POST", "/api/v1/runs", Some(&body))
}

fn created_id(hub: &Hub, target: Value) -> String {
    let (s, v) = create(hub, target);
    assert_eq!(s, 201, "{v}");
    v["runs"][0]["id"].as_str().unwrap().to_string()
}

fn run(hub: &Hub, id: &str) -> (u16, Value) {
    hub.admin("GET", &format!("/api/v1/runs/{id}"), None)
}

fn code(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("")
}

#[test]
fn runs_in_flight_and_queued_per_agent_are_capped() {
    let hub = Hub::start_with(&["--max-runs-in-flight", "2", "--max-runs-queued", "3"]);
    let a = agent(&hub, "web-1", "edge");
    let b = agent(&hub, "web-2", "edge");
    let ids: Vec<String> = (0..3)
        .map(|_| created_id(&hub, json!({"agent": a.id})))
        .collect();
    // A fourth queued run for a is refused, and a fan-out including a creates nothing.
    let (s, v) = create(&hub, json!({"agent": a.id}));
    assert_eq!((s, code(&v)), (429, "queue_full"), "{v}");
    assert!(v["message"].as_str().unwrap().contains(&a.id), "{v}");
    let (s, v) = create(&hub, json!({"group": "edge"}));
    assert_eq!((s, code(&v)), (429, "queue_full"), "{v}");
    assert!(b.offers(&hub, &[]).0.is_empty(), "all or none");
    // Two offered (the oldest; runs of one millisecond are ordered by id), two claimed;
    // then nothing until one finishes.
    let (offered, _) = a.offers(&hub, &[]);
    assert_eq!(offered.len(), 2, "{offered:?}");
    assert!(offered.iter().all(|o| ids.contains(o)), "{offered:?}");
    let rest: Vec<&String> = ids.iter().filter(|i| !offered.contains(i)).collect();
    let (first, second, third) = (&offered[0], &offered[1], rest[0]);
    for id in [first, second] {
        assert_eq!(a.claim(&hub, id).0, 200);
    }
    assert!(a.offers(&hub, &[first, second]).0.is_empty());
    let (s, v) = a.claim(&hub, third);
    assert_eq!((s, code(&v)), (409, "in_flight_full"), "{v}");
    assert_eq!(run(&hub, third).1["state"], "queued");
    assert_eq!(a.finish(&hub, first).0, 200);
    assert_eq!(a.offers(&hub, &[second]).0, std::slice::from_ref(third));
    // A queued slot freed by the claims: one more create fits again.
    assert_eq!(create(&hub, json!({"agent": a.id})).0, 201);
}

#[test]
fn logs_live_in_files_capped_by_rate_and_retention_deletes_them() {
    let hub = Hub::start_with(&["--run-log-rate", "1", "--run-retention", "2s"]);
    let a = agent(&hub, "web-1", "edge");
    let id = created_id(&hub, json!({"agent": a.id}));
    assert_eq!(a.claim(&hub, &id).0, 200);
    // The burst is one upload's worth (1 MiB); the next upload waits for the bucket.
    let chunk = vec![b'x'; 1024 * 1024];
    let r = a.log(&hub, &id, 0, &chunk);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = a.log(&hub, &id, 1024 * 1024, b"more");
    assert_eq!(
        (r.status, code(&r.json())),
        (429, "rate_limited"),
        "{}",
        r.text()
    );
    assert!(r.header("retry-after").is_some(), "{}", r.head);
    let file = hub.dir.path().join("run-logs").join(format!("{id}.log"));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 1024 * 1024);
    assert_eq!(a.finish(&hub, &id).0, 200);
    let open = created_id(&hub, json!({"agent": a.id}));
    // Retention: finished runs go, with their log file; a queued one stays.
    let t = Instant::now();
    while run(&hub, &id).0 != 404 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "run {id} never deleted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!file.exists(), "{} still there", file.display());
    assert_eq!(run(&hub, &open).0, 200);
}

#[test]
fn drain_keeps_runs_in_flight_and_offers_nothing_new() {
    let hub = Hub::start();
    let a = agent(&hub, "web-1", "edge");
    let b = agent(&hub, "web-2", "edge");
    let held = created_id(&hub, json!({"agent": a.id}));
    assert_eq!(a.claim(&hub, &held).0, 200);
    let queued = created_id(&hub, json!({"agent": a.id}));
    let (s, v) = hub.admin("POST", "/api/v1/drain", Some(&json!({"agent": a.id})));
    assert_eq!((s, v["drained"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(v["agents"][0]["drained"], true);
    // No offer, a claim of the queued run refused; the held run delivers.
    assert!(a.offers(&hub, &[&held]).0.is_empty());
    let (s, v) = a.claim(&hub, &queued);
    assert_eq!((s, code(&v)), (409, "agent_drained"), "{v}");
    assert_eq!(a.log(&hub, &held, 0, b"still here\n").status, 200);
    assert_eq!(a.finish(&hub, &held).0, 200);
    // A create naming only drained agents is refused; a fan-out skips them.
    let (s, v) = create(&hub, json!({"agent": a.id}));
    assert_eq!((s, code(&v)), (409, "agent_drained"), "{v}");
    let (s, v) = create(&hub, json!({"group": "edge"}));
    assert_eq!(s, 201, "{v}");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!((runs.len(), &runs[0]["agent_id"]), (1, &json!(b.id)));
    let (_, agents) = hub.admin("GET", "/api/v1/agents", None);
    let drained: Vec<&Value> = agents
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["drained"] == true)
        .collect();
    assert_eq!((drained.len(), &drained[0]["id"]), (1, &json!(a.id)));
    let (_, d) = hub.admin("GET", "/api/v1/dispatch", None);
    assert_eq!(d["drained"][0]["agent_id"], a.id.as_str());
    assert_eq!(d["drained"][0]["by"], "admin token");
    // Undrain the whole group: offered again.
    let (s, v) = hub.admin(
        "POST",
        "/api/v1/drain",
        Some(&json!({"group": "edge", "undo": true})),
    );
    assert_eq!(
        (s, v["agents"].as_array().map(Vec::len)),
        (200, Some(2)),
        "{v}"
    );
    assert_eq!(a.offers(&hub, &[]).0, [queued]);
    for (body, want) in [
        (json!({"agent": "a_nope"}), 404),
        (json!({"group": "nope"}), 404),
        (json!({}), 400),
        (json!({"agent": a.id, "group": "edge"}), 400),
        (json!({"agent": a.id, "bogus": 1}), 400),
    ] {
        let (s, v) = hub.admin("POST", "/api/v1/drain", Some(&body));
        assert_eq!(s, want, "{body} {v}");
    }
    assert_eq!(
        hub.req("POST", "/api/v1/drain", None, Some(&json!({"agent": a.id})))
            .0,
        401
    );
    let (_, log) = hub.admin("GET", "/api/v1/audit", None);
    let actions: Vec<(&str, &str)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["target"].as_str().unwrap()))
        .filter(|(a, _)| a.ends_with("drain"))
        .collect();
    let agent_target = format!("agent {}", a.id);
    assert_eq!(
        actions,
        [("undrain", "group edge"), ("drain", agent_target.as_str())]
    );
}

#[test]
fn the_kill_switch_stops_everything_and_can_cancel_in_flight() {
    let hub = Hub::start();
    let a = agent(&hub, "web-1", "edge");
    let held = created_id(&hub, json!({"agent": a.id}));
    assert_eq!(a.claim(&hub, &held).0, 200);
    let queued = created_id(&hub, json!({"agent": a.id}));
    let (s, v) = hub.admin("POST", "/api/v1/dispatch/stop", None);
    assert_eq!(
        (s, v["dispatch"]["stopped"].as_bool()),
        (200, Some(true)),
        "{v}"
    );
    assert!(a.offers(&hub, &[&held]).0.is_empty());
    let (s, v) = a.claim(&hub, &queued);
    assert_eq!((s, code(&v)), (409, "dispatch_stopped"), "{v}");
    let (s, v) = create(&hub, json!({"agent": a.id}));
    assert_eq!((s, code(&v)), (409, "dispatch_stopped"), "{v}");
    // Stop again, cancelling everything: the queued run is canceled, the held one asked.
    let (s, v) = hub.admin(
        "POST",
        "/api/v1/dispatch/stop",
        Some(&json!({"cancel_in_flight": true})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["canceled"], &v["cancel_requested"]),
        (&json!([queued]), &json!([held]))
    );
    let (_, p) = a.offers(&hub, &[&held]);
    assert_eq!(p["cancel"], json!([held]));
    assert_eq!(run(&hub, &queued).1["state"], "canceled");
    let (s, v) = hub.admin("POST", "/api/v1/dispatch/start", None);
    assert_eq!((s, v["stopped"].as_bool()), (200, Some(false)), "{v}");
    let again = created_id(&hub, json!({"agent": a.id}));
    assert_eq!(a.offers(&hub, &[&held]).0, [again]);
    let (_, log) = hub.admin("GET", "/api/v1/audit?limit=3", None);
    assert_eq!(log[0]["action"], "run_start", "{log}");
    assert_eq!(log[1]["action"], "dispatch_start", "{log}");
    assert_eq!(log[2]["action"], "dispatch_stop", "{log}");
    assert_eq!(log[2]["detail"], "and cancel every run in flight");
    // The creates refused while stopped wrote nothing: two starts before the stop.
    let (_, log) = hub.admin("GET", "/api/v1/audit", None);
    let starts = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "run_start")
        .count();
    assert_eq!(starts, 3, "{log}");
    assert_eq!(hub.req("POST", "/api/v1/dispatch/stop", None, None).0, 401);
    assert_eq!(hub.req("GET", "/api/v1/audit", None, None).0, 401);
}

#[test]
fn cli_drain_dispatch_audit() {
    let hub = Hub::start();
    let a = agent(&hub, "web-1", "edge");
    let cli = |args: &[&str]| {
        let out = Command::new(common::bin())
            .args(args)
            .args(["--hub", &hub.url])
            .env("OUTPOST_HUB_ADMIN_TOKEN", ADMIN)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = cli(&["drain", &a.id]);
    assert_eq!(
        (code, out),
        (Some(0), format!("drained {} (web-1)\n", a.id)),
        "{err}"
    );
    let (_, table, _) = cli(&["agents"]);
    assert!(table.contains("online, drained"), "{table}");
    let (_, json_out, _) = cli(&["agents", "--json"]);
    let v: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(v[0]["drained"], true);
    let (code, _, err) = cli(&["run", &a.id, "once"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("agent_drained") && err.contains("hint: "),
        "{err}"
    );
    let (code, out, _) = cli(&["drain", "--group", "edge", "--undo"]);
    assert_eq!(
        (code, out),
        (Some(0), format!("undrained {} (web-1)\n", a.id))
    );
    let (code, out, _) = cli(&["dispatch", "stop", "--cancel-in-flight"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("canceled 0 queued runs"), "{out}");
    let (_, status, _) = cli(&["dispatch"]);
    assert!(status.starts_with("dispatch: stopped since "), "{status}");
    assert!(
        status.contains("limits: 4 runs in flight, 100 queued per agent"),
        "{status}"
    );
    assert_eq!(cli(&["dispatch", "start"]).1, "dispatch started\n");
    // The header, then newest first: the four fleet controls, the trust and the key of
    // `agent` (the run refused while drained wrote nothing).
    let (_, audit, _) = cli(&["audit"]);
    let lines: Vec<&str> = audit.lines().collect();
    assert_eq!(lines.len(), 7, "{audit}");
    assert!(
        lines[1].contains("dispatch_start")
            && lines[4].contains("drain")
            && lines[5].contains("pack_trust")
            && lines[6].contains("key_create"),
        "{audit}"
    );
    // Bad input: exit 2 with an error and a hint, nothing changed.
    let (code, _, err) = cli(&["drain", "a_nope"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("\nhint: "),
        "{err}"
    );
    let (code, _, _) = cli(&["drain"]);
    assert_eq!(code, Some(2));
    assert_eq!(cli(&["audit"]).1.lines().count(), 7);
}

/// The audit log, oldest first.
fn audit_log(hub: &Hub) -> Vec<Value> {
    let (s, log) = hub.admin("GET", "/api/v1/audit?limit=1000", None);
    assert_eq!(s, 200, "{log}");
    let mut log = log.as_array().unwrap().clone();
    log.reverse();
    log
}

/// Runs `f` and returns what it returned with the audit entries it added, oldest first.
fn audited<T>(hub: &Hub, f: impl FnOnce() -> T) -> (T, Vec<Value>) {
    let before = audit_log(hub).len();
    let out = f();
    let log = audit_log(hub);
    assert!(log.len() >= before, "audit entries disappeared");
    (out, log[before..].to_vec())
}

/// `f` adds exactly one entry, of `action` on `target` by the admin token; returns it.
fn one_entry<T>(hub: &Hub, action: &str, target: &str, f: impl FnOnce() -> T) -> (T, Value) {
    let (out, added) = audited(hub, f);
    assert_eq!(added.len(), 1, "{action} {target}: {added:?}");
    let e = added.into_iter().next().unwrap();
    assert_eq!(
        (
            e["action"].as_str(),
            e["target"].as_str(),
            e["who"].as_str()
        ),
        (Some(action), Some(target), Some("admin token")),
        "{e}"
    );
    assert!(e["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
    (out, e)
}

/// `f` adds no entry.
fn no_entry<T>(hub: &Hub, what: &str, f: impl FnOnce() -> T) -> T {
    let (out, added) = audited(hub, f);
    assert!(added.is_empty(), "{what}: {added:?}");
    out
}

#[test]
fn every_admin_action_is_audited_once_and_refusals_never() {
    let hub = Hub::start();
    let sha = SHA.to_string().repeat(64);
    // Key create: the id, expiry, group and labels, never the key.
    let body = json!({"ttl_secs": 600, "group": "edge", "labels": {"role": "web"}});
    let ((s, key), added) = audited(&hub, || hub.admin("POST", "/api/v1/keys", Some(&body)));
    assert_eq!((s, added.len()), (201, 1), "{key} {added:?}");
    let e = &added[0];
    assert_eq!(
        (
            e["action"].as_str(),
            e["target"].as_str(),
            e["who"].as_str()
        ),
        (
            Some("key_create"),
            Some(format!("key {}", key["id"].as_str().unwrap()).as_str()),
            Some("admin token")
        ),
        "{e}"
    );
    let secret = key["key"].as_str().unwrap();
    let detail = e["detail"].as_str().unwrap();
    assert!(
        detail.contains("group edge") && detail.contains("labels role=web"),
        "{e}"
    );
    assert!(detail.starts_with("expires "), "{e}");
    assert!(
        !e.to_string().contains(secret),
        "the key is in the audit log: {e}"
    );
    for bad in [json!({"ttl_secs": 0}), json!({"ttl_secs": 60, "bogus": 1})] {
        let (s, _) = no_entry(&hub, "bad key", || {
            hub.admin("POST", "/api/v1/keys", Some(&bad))
        });
        assert_eq!(s, 400, "{bad}");
    }
    no_entry(&hub, "no token", || {
        hub.req("POST", "/api/v1/keys", None, Some(&json!({"ttl_secs": 60})))
    });
    // Agents' own requests are not admin actions.
    let (s, enrolled) = no_entry(&hub, "enroll", || hub.enroll(secret, "web-1"));
    assert_eq!(s, 201, "{enrolled}");
    let id = enrolled["agent_id"].as_str().unwrap().to_string();
    let token = enrolled["token"].as_str().unwrap().to_string();
    let catalog = json!([{
        "name": "web", "version": "1.0.0", "sha256": sha,
        "actions": [{"id": "deploy", "params": [
            {"name": "password", "type": "string", "required": true},
            {"name": "unit", "type": "string", "required": false}],
            "idempotent": false, "privileged": false}]
    }]);
    let s = no_entry(&hub, "heartbeat", || {
        hub.heartbeat_packs(&id, &token, catalog).0
    });
    assert_eq!(s, 200);

    // A run of an untrusted pack is refused: nothing audited.
    let start = json!({"target": {"agent": id}, "action": "deploy",
                       "params": {"password": "hunter2-secret", "unit": "nginx"}});
    let (s, v) = no_entry(&hub, "untrusted run", || {
        hub.admin("POST", "/api/v1/runs", Some(&start))
    });
    assert_eq!((s, code(&v)), (409, "pack_untrusted"), "{v}");

    // Pack trust: unknown hash and unknown name refused; trusting twice is two entries.
    let unknown = format!("/api/v1/packs/web/{}/trust", "f".repeat(64));
    let s = no_entry(&hub, "unknown hash", || hub.admin("POST", &unknown, None).0);
    assert_eq!(s, 404);
    let nameless = format!("/api/v1/packs/nope/{sha}/trust");
    assert_eq!(
        no_entry(&hub, "unknown pack", || hub
            .admin("POST", &nameless, None)
            .0),
        404
    );
    let trust = format!("/api/v1/packs/web/{sha}/trust");
    let pack_target = format!("pack web {sha}");
    let ((s, _), e) = one_entry(&hub, "pack_trust", &pack_target, || {
        hub.admin("POST", &trust, None)
    });
    assert_eq!(
        (s, e["detail"].as_str()),
        (200, Some("version 1.0.0")),
        "{e}"
    );
    let (_, e) = one_entry(&hub, "pack_trust", &pack_target, || {
        hub.admin("POST", &trust, None)
    });
    assert_eq!(
        e["detail"], "version 1.0.0, already trusted by admin token",
        "{e}"
    );

    // Run start: the action, the param names and the run, never a param's value.
    let agent_target = format!("agent {id}");
    let ((s, v), e) = one_entry(&hub, "run_start", &agent_target, || {
        hub.admin("POST", "/api/v1/runs", Some(&start))
    });
    assert_eq!(s, 201, "{v}");
    let run_id = v["runs"][0]["id"].as_str().unwrap().to_string();
    let detail = e["detail"].as_str().unwrap();
    assert_eq!(
        detail,
        format!(
            "action web/deploy {}; params: password, unit; 1 runs: {run_id} ({id})",
            &sha[..12]
        )
    );
    assert!(
        !e.to_string().contains("hunter2") && !e.to_string().contains("nginx"),
        "{e}"
    );
    // Refused starts: unknown action, bad params, no matching agent, no token.
    for (bad, want) in [
        (json!({"target": {"agent": id}, "action": "nope"}), 400),
        (
            json!({"target": {"agent": id}, "action": "deploy", "params": {"unit": "x"}}),
            400,
        ),
        (
            json!({"target": {"agent": "a_nope"}, "action": "deploy"}),
            404,
        ),
        (
            json!({"target": {"group": "nope"}, "action": "deploy"}),
            404,
        ),
    ] {
        let (s, v) = no_entry(&hub, "bad run", || {
            hub.admin("POST", "/api/v1/runs", Some(&bad))
        });
        assert_eq!(s, want, "{bad} {v}");
    }
    no_entry(&hub, "no token", || {
        hub.req("POST", "/api/v1/runs", None, Some(&start))
    });
    // An idempotent create: one entry for the runs, none for the retry that returns them.
    let mut keyed = start.clone();
    keyed["idempotency_key"] = json!("audit-key-1");
    keyed["target"] = json!({"group": "edge"});
    let ((s, v), e) = one_entry(&hub, "run_start", "group edge", || {
        hub.admin("POST", "/api/v1/runs", Some(&keyed))
    });
    assert_eq!(s, 201, "{v}");
    let keyed_id = v["runs"][0]["id"].as_str().unwrap().to_string();
    assert!(e["detail"].as_str().unwrap().contains(&keyed_id), "{e}");
    let (s, v) = no_entry(&hub, "retry", || {
        hub.admin("POST", "/api/v1/runs", Some(&keyed))
    });
    assert_eq!(
        (s, v["runs"][0]["id"].as_str()),
        (200, Some(keyed_id.as_str())),
        "{v}"
    );

    // Run cancel: what it did; an unknown run refused.
    let cancel = format!("/api/v1/runs/{run_id}/cancel");
    let ((s, _), e) = one_entry(&hub, "run_cancel", &format!("run {run_id}"), || {
        hub.admin("POST", &cancel, None)
    });
    assert_eq!(s, 200);
    assert_eq!(
        e["detail"],
        format!("agent {id}: queued -> canceled"),
        "{e}"
    );
    let (s, _) = no_entry(&hub, "unknown run", || {
        hub.admin("POST", "/api/v1/runs/r_nope/cancel", None)
    });
    assert_eq!(s, 404);
    no_entry(&hub, "no token", || hub.req("POST", &cancel, None, None));

    // Revoke and delete; unknown agents refused.
    let ((s, _), e) = one_entry(&hub, "agent_revoke", &agent_target, || {
        hub.admin("POST", &format!("/api/v1/agents/{id}/revoke"), None)
    });
    assert_eq!(
        (s, e["detail"].as_str()),
        (200, Some("hostname web-1")),
        "{e}"
    );
    let s = no_entry(&hub, "unknown revoke", || {
        hub.admin("POST", "/api/v1/agents/a_nope/revoke", None).0
    });
    assert_eq!(s, 404);
    let s = no_entry(&hub, "unknown delete", || {
        hub.admin("DELETE", "/api/v1/agents/a_nope", None).0
    });
    assert_eq!(s, 404);
    no_entry(&hub, "no token", || {
        hub.req("DELETE", &format!("/api/v1/agents/{id}"), None, None)
    });
    let ((s, _), _) = one_entry(&hub, "agent_delete", &agent_target, || {
        hub.admin("DELETE", &format!("/api/v1/agents/{id}"), None)
    });
    assert_eq!(s, 204);
    let s = no_entry(&hub, "deleted twice", || {
        hub.admin("DELETE", &format!("/api/v1/agents/{id}"), None).0
    });
    assert_eq!(s, 404);

    // The entries survive a restart, in order.
    let kinds: Vec<String> = audit_log(&hub)
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    let mut hub = hub;
    hub.stop();
    hub.restart();
    let again: Vec<String> = audit_log(&hub)
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(again, kinds);
    assert_eq!(
        kinds,
        [
            "key_create",
            "pack_trust",
            "pack_trust",
            "run_start",
            "run_start",
            "run_cancel",
            "agent_revoke",
            "agent_delete"
        ]
    );
}

#[test]
fn dashboard_starts_and_cancels_are_audited_as_the_session() {
    let hub = Hub::start();
    let a = agent(&hub, "web-1", "edge");
    let session = hub.login();
    let cookie = format!("outpost_session={session}");
    let page = hub.raw(
        "GET",
        &format!("/agents/{}", a.id),
        &[("Cookie", &cookie)],
        b"",
    );
    assert_eq!(page.status, 200, "{}", page.head);
    let csrf = common::csrf_of(&page.text());
    let origin = hub.url.clone();
    let form = |path: &str, body: &str| {
        hub.raw(
            "POST",
            path,
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Cookie", &cookie),
                ("Origin", &origin),
            ],
            body.as_bytes(),
        )
    };
    let start = format!("/agents/{}/runs", a.id);
    // A refused start (unknown action) and a post without the CSRF token write nothing.
    let r = no_entry(&hub, "unknown action", || {
        form(&start, &format!("csrf={csrf}&action=nope"))
    });
    assert_eq!(r.status, 400, "{}", r.head);
    let r = no_entry(&hub, "no csrf", || form(&start, "action=once"));
    assert_eq!(r.status, 403, "{}", r.head);
    let (r, added) = audited(&hub, || form(&start, &format!("csrf={csrf}&action=once")));
    assert_eq!(r.status, 303, "{}", r.head);
    let run_id = r
        .header("location")
        .unwrap()
        .trim_start_matches("/runs/")
        .to_string();
    assert_eq!(added.len(), 1, "{added:?}");
    let who = added[0]["who"].as_str().unwrap().to_string();
    assert!(who.starts_with("dashboard session "), "{who}");
    assert_eq!(
        (added[0]["action"].as_str(), added[0]["target"].as_str()),
        (Some("run_start"), Some(format!("agent {}", a.id).as_str()))
    );
    let cancel = format!("/runs/{run_id}/cancel");
    let (r, added) = audited(&hub, || form(&cancel, &format!("csrf={csrf}")));
    assert_eq!(r.status, 303, "{}", r.head);
    assert_eq!(added.len(), 1, "{added:?}");
    assert_eq!(
        (
            added[0]["action"].as_str(),
            added[0]["target"].as_str(),
            added[0]["who"].as_str()
        ),
        (
            Some("run_cancel"),
            Some(format!("run {run_id}").as_str()),
            Some(who.as_str())
        )
    );
    let r = no_entry(&hub, "unknown run", || {
        form("/runs/r_nope/cancel", &format!("csrf={csrf}"))
    });
    assert_eq!(r.status, 404, "{}", r.head);
}
