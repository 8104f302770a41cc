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
    let (_, log) = hub.admin("GET", "/api/v1/audit?limit=2", None);
    assert_eq!(log[0]["action"], "dispatch_start");
    assert_eq!(log[1]["action"], "dispatch_stop");
    assert_eq!(log[1]["detail"], "and cancel every run in flight");
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
    let (_, audit, _) = cli(&["audit"]);
    let lines: Vec<&str> = audit.lines().collect();
    assert_eq!(lines.len(), 5, "{audit}");
    assert!(
        lines[1].contains("dispatch_start") && lines[4].contains("drain"),
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
    assert_eq!(cli(&["audit"]).1.lines().count(), 5);
}
