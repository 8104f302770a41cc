//! Runs against a real hub process: a fake agent written here enrolls, advertises a catalog,
//! polls, claims, reports events, uploads its log and its result.

mod common;

use std::time::{Duration, Instant};

use common::{Hub, ADMIN};
use serde_json::{json, Value};

const SHA: char = 'c';

/// A fake agent: id and token.
struct Agent {
    id: String,
    token: String,
}

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

fn agent_with(hub: &Hub, host: &str, labels: Value, idempotent: bool) -> Agent {
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

fn trust(hub: &Hub) {
    let path = format!("/api/v1/packs/web/{}/trust", SHA.to_string().repeat(64));
    assert_eq!(hub.admin("POST", &path, None).0, 200);
}

impl Agent {
    fn post(&self, hub: &Hub, path: &str, body: Value) -> (u16, Value) {
        hub.req("POST", path, Some(&self.token), Some(&body))
    }

    fn poll(&self, hub: &Hub, wait: u64, holding: &[&str]) -> Value {
        let body = json!({"agent_id": self.id, "wait_secs": wait, "holding": holding});
        let (s, v) = self.post(hub, "/api/v1/agent/poll", body);
        assert_eq!(s, 200, "{v}");
        v
    }

    fn claim(&self, hub: &Hub, run: &str, claimant: &str) -> (u16, Value) {
        let path = format!("/api/v1/agent/runs/{run}/claim");
        self.post(hub, &path, json!({"claimant": claimant}))
    }

    fn started(&self, hub: &Hub, run: &str) {
        let path = format!("/api/v1/agent/runs/{run}/events");
        let ev = json!({"events": [{"seq": 1, "kind": "started", "at": "2024-01-01T00:00:00Z"}]});
        let (s, v) = self.post(hub, &path, ev);
        assert_eq!((s, v["acked_seq"].as_u64()), (200, Some(1)), "{v}");
    }

    fn log(&self, hub: &Hub, run: &str, offset: u64, data: &[u8]) -> (u16, Value) {
        let path = format!("/api/v1/agent/runs/{run}/log?offset={offset}");
        let auth = format!("Bearer {}", self.token);
        let r = hub.raw(
            "POST",
            &path,
            &[
                ("Host", "x"),
                ("Authorization", &auth),
                ("Content-Type", "application/octet-stream"),
            ],
            data,
        );
        (r.status, r.json())
    }

    fn result(&self, hub: &Hub, run: &str, outcome: &str, code: i32) -> (u16, Value) {
        let path = format!("/api/v1/agent/runs/{run}/result");
        let body = json!({"outcome": outcome, "exit_code": code, "reason": "",
                          "finished_at": "2024-01-01T00:00:05Z", "log_bytes": 12});
        self.post(hub, &path, body)
    }
}

fn create(hub: &Hub, target: Value, action: &str, params: Value) -> (u16, Value) {
    let body = json!({"target": target, "action": action, "params": params});
    hub.admin("POST", "/api/v1/runs", Some(&body))
}

fn run_id(created: &Value) -> String {
    created["runs"][0]["id"].as_str().unwrap().to_string()
}

fn run(hub: &Hub, id: &str) -> Value {
    let (s, v) = hub.admin("GET", &format!("/api/v1/runs/{id}"), None);
    assert_eq!(s, 200, "{v}");
    v
}

fn wait_state(hub: &Hub, id: &str, want: &str, within: Duration) -> Value {
    let t = Instant::now();
    loop {
        let v = run(hub, id);
        if v["state"] == want {
            return v;
        }
        assert!(t.elapsed() < within, "run {id} never became {want}: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_full_run_through_a_fake_agent() {
    let hub = Hub::start();
    let a = agent_with(&hub, "web-1", json!({}), false);
    // Pending: refused, naming the state.
    let (s, v) = create(
        &hub,
        json!({"agent": a.id}),
        "web/restart",
        json!({"unit": "nginx"}),
    );
    assert_eq!(
        (s, v["error"].as_str()),
        (409, Some("pack_untrusted")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("pending"), "{v}");
    trust(&hub);
    let (s, v) = create(&hub, json!({"agent": a.id}), "restart", json!({}));
    assert_eq!((s, v["field"].as_str()), (400, Some("params.unit")), "{v}");
    let (s, v) = create(&hub, json!({"agent": a.id}), "web/nope", json!({}));
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("action_unknown")),
        "{v}"
    );
    let (s, created) = create(
        &hub,
        json!({"agent": a.id}),
        "restart",
        json!({"unit": "nginx"}),
    );
    assert_eq!(s, 201, "{created}");
    let id = run_id(&created);
    assert_eq!(created["runs"][0]["state"], "queued");

    let p = a.poll(&hub, 0, &[]);
    let offer = &p["offers"][0];
    assert_eq!(offer["run_id"], id.as_str());
    assert_eq!(offer["sha256"], SHA.to_string().repeat(64));
    assert_eq!(offer["params"], json!({"unit": "nginx"}));
    assert_eq!(a.claim(&hub, &id, "proc-1").0, 200);
    assert_eq!(
        a.claim(&hub, &id, "proc-1").0,
        200,
        "re-claim is idempotent"
    );
    assert_eq!(run(&hub, &id)["state"], "claimed");
    a.started(&hub, &id);
    assert_eq!(run(&hub, &id)["state"], "running");

    assert_eq!(a.log(&hub, &id, 0, b"hello ").1["next_offset"], 6);
    assert_eq!(a.log(&hub, &id, 3, b"lo world").1["next_offset"], 11);
    let (s, gap) = a.log(&hub, &id, 20, b"x");
    assert_eq!((s, gap["error"].as_str()), (409, Some("log_gap")), "{gap}");
    assert_eq!(gap["expected_offset"], 11);
    assert_eq!(a.log(&hub, &id, 11, b"!").1["next_offset"], 12);

    let (s, v) = a.result(&hub, &id, "succeeded", 0);
    assert_eq!(
        (s, v["state"].as_str(), v["late"].as_bool()),
        (200, Some("succeeded"), Some(false))
    );
    assert_eq!(
        a.result(&hub, &id, "succeeded", 0).0,
        200,
        "identical retry"
    );
    let (s, v) = a.result(&hub, &id, "failed", 1);
    assert_eq!(
        (s, v["error"].as_str()),
        (409, Some("result_conflict")),
        "{v}"
    );

    let v = run(&hub, &id);
    assert_eq!(
        (v["state"].as_str(), v["exit_code"].as_i64()),
        (Some("succeeded"), Some(0))
    );
    assert_eq!(
        (v["log_bytes"].as_u64(), v["result_log_bytes"].as_u64()),
        (Some(12), Some(12))
    );
    let r = hub.raw(
        "GET",
        &format!("/api/v1/runs/{id}/log?offset=6"),
        &[("Host", "x"), ("Authorization", &format!("Bearer {ADMIN}"))],
        b"",
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &b"world!"[..]));
    assert_eq!(r.header("x-log-size").as_deref(), Some("12"));
    let (s, list) = hub.admin(
        "GET",
        &format!("/api/v1/runs?agent={}&state=succeeded", a.id),
        None,
    );
    assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(1)), "{list}");
    // Another agent cannot touch the run.
    let b = agent_with(&hub, "web-2", json!({}), false);
    assert_eq!(b.claim(&hub, &id, "x").0, 404);
}

#[test]
fn two_claimants_one_wins_and_poll_wakes_at_once() {
    let hub = Hub::start();
    let a = agent_with(&hub, "web-1", json!({}), false);
    trust(&hub);
    let hub = std::sync::Arc::new(hub);
    let a = std::sync::Arc::new(a);
    let (h2, a2) = (hub.clone(), a.clone());
    let waiter = std::thread::spawn(move || {
        let v = a2.poll(&h2, 10, &[]);
        (Instant::now(), v)
    });
    std::thread::sleep(Duration::from_millis(300));
    let created_at = Instant::now();
    let (s, created) = create(
        &hub,
        json!({"agent": a.id}),
        "restart",
        json!({"unit": "x"}),
    );
    assert_eq!(s, 201);
    let (woke_at, v) = waiter.join().unwrap();
    let latency = woke_at.saturating_duration_since(created_at);
    assert!(
        latency < Duration::from_millis(100),
        "woke after {latency:?}"
    );
    let id = run_id(&created);
    assert_eq!(v["offers"][0]["run_id"], id.as_str());
    let claims: Vec<_> = (0..2)
        .map(|i| {
            let (h, a, id) = (hub.clone(), a.clone(), id.clone());
            std::thread::spawn(move || a.claim(&h, &id, &format!("proc-{i}")))
        })
        .collect();
    let mut codes: Vec<u16> = claims.into_iter().map(|t| t.join().unwrap().0).collect();
    codes.sort();
    assert_eq!(codes, [200, 409]);
}

#[test]
fn cancel_queued_and_running() {
    let hub = Hub::start();
    let a = agent_with(&hub, "web-1", json!({}), false);
    trust(&hub);
    let (_, c1) = create(&hub, json!({"agent": a.id}), "once", json!({}));
    let queued = run_id(&c1);
    let (s, v) = hub.admin("POST", &format!("/api/v1/runs/{queued}/cancel"), None);
    assert_eq!((s, v["state"].as_str()), (200, Some("canceled")), "{v}");
    assert_eq!(a.claim(&hub, &queued, "p").0, 409);
    let (_, c2) = create(&hub, json!({"agent": a.id}), "once", json!({}));
    let running = run_id(&c2);
    assert_eq!(a.claim(&hub, &running, "p").0, 200);
    a.started(&hub, &running);
    let (s, v) = hub.admin("POST", &format!("/api/v1/runs/{running}/cancel"), None);
    assert_eq!(
        (s, v["state"].as_str(), v["cancel_requested"].as_bool()),
        (200, Some("running"), Some(true))
    );
    let p = a.poll(&hub, 0, &[&running]);
    assert_eq!(p["cancel"], json!([running]));
    assert_eq!(
        a.result(&hub, &running, "canceled", 143).1["state"],
        "canceled"
    );
}

#[test]
fn lease_expiry_unknown_renew_lost_late_and_requeue() {
    let hub = Hub::start_with(&["--run-lease", "1", "--lost-after", "2"]);
    let a = agent_with(&hub, "web-1", json!({}), true);
    trust(&hub);
    let (_, c1) = create(
        &hub,
        json!({"agent": a.id}),
        "restart",
        json!({"unit": "x"}),
    );
    let (_, c2) = create(&hub, json!({"agent": a.id}), "once", json!({}));
    let (idem, once) = (run_id(&c1), run_id(&c2));
    for id in [&idem, &once] {
        assert_eq!(a.claim(&hub, id, "p").0, 200);
        a.started(&hub, id);
    }
    wait_state(&hub, &once, "unknown", Duration::from_secs(5));
    a.poll(&hub, 0, &[&once]);
    assert_eq!(run(&hub, &once)["state"], "running");
    // Stop renewing: both go unknown, then lost.
    let lost = wait_state(&hub, &idem, "lost", Duration::from_secs(8));
    wait_state(&hub, &once, "lost", Duration::from_secs(8));
    assert!(lost["finished_at"].is_string());
    let (_, all) = hub.admin("GET", &format!("/api/v1/runs?agent={}", a.id), None);
    let retries: Vec<&Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["retry_of"].is_null())
        .collect();
    assert_eq!(retries.len(), 1, "{all}");
    assert_eq!(retries[0]["retry_of"], idem.as_str());
    assert_eq!(retries[0]["state"], "queued");
    // A late result is stored, flagged.
    let (s, v) = a.result(&hub, &once, "succeeded", 0);
    assert_eq!((s, v["late"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(run(&hub, &once)["late"], true);
}

#[test]
fn fan_out_by_label_and_idempotent_create() {
    let hub = Hub::start();
    let agents: Vec<Agent> = (0..3)
        .map(|i| agent_with(&hub, &format!("web-{i}"), json!({"role": "web"}), false))
        .collect();
    agent_with(&hub, "db-1", json!({"role": "db"}), false);
    trust(&hub);
    let body = json!({"target": {"labels": {"role": "web"}}, "action": "once",
                      "params": {}, "idempotency_key": "deploy-1"});
    let (s, created) = hub.admin("POST", "/api/v1/runs", Some(&body));
    assert_eq!(s, 201, "{created}");
    let runs = created["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    let (s, again) = hub.admin("POST", "/api/v1/runs", Some(&body));
    assert_eq!((s, &again["runs"]), (200, &created["runs"]));
    let mut other = body.clone();
    other["action"] = json!("web/once");
    let (s, v) = hub.admin("POST", "/api/v1/runs", Some(&other));
    assert_eq!(
        (s, v["error"].as_str()),
        (409, Some("idempotency_conflict"))
    );
    for a in &agents {
        let p = a.poll(&hub, 0, &[]);
        let id = p["offers"][0]["run_id"].as_str().unwrap().to_string();
        assert_eq!(a.claim(&hub, &id, "p").0, 200);
        assert_eq!(a.result(&hub, &id, "succeeded", 0).0, 200);
    }
    let (_, all) = hub.admin("GET", "/api/v1/runs?state=succeeded", None);
    assert_eq!(all.as_array().unwrap().len(), 3);
    let (s, v) = create(&hub, json!({"labels": {"role": "none"}}), "once", json!({}));
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")));
}

/// A create the hub refuses for good (an untrusted pack: 409) exits 1; one it refuses for now
/// (the agent's queue is full: 429) exits 75, "retry later", with the hub's reason and hint.
#[test]
fn cli_exit_codes_tell_retry_later_from_refused() {
    use std::process::Command;
    let hub = Hub::start_with(&["--max-runs-queued", "1"]);
    let a = agent_with(&hub, "web-1", json!({}), false);
    let cli = |args: &[&str]| {
        Command::new(common::bin())
            .args(args)
            .args(["--hub", &hub.url])
            .env("OUTPOST_HUB_ADMIN_TOKEN", ADMIN)
            .output()
            .unwrap()
    };
    let run = ["run", &a.id, "web/restart", "--param", "unit=nginx"];
    // The pack is not trusted yet: refused for good (409), exit 1.
    let untrusted = cli(&run);
    let err = String::from_utf8_lossy(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(1), "{err}");
    assert!(err.contains("pack_untrusted"), "{err}");
    trust(&hub);
    let first = cli(&run);
    assert!(first.status.success(), "{first:?}");
    let id = String::from_utf8_lossy(&first.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let full = cli(&run);
    let err = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(75), "{err}");
    assert!(err.contains("queue_full") && err.contains("hint:"), "{err}");
    // Once the queued run is gone, the same command goes through.
    assert!(cli(&["cancel", &id]).status.success());
    assert!(cli(&run).status.success());
}

#[test]
fn cli_run_follow_runs_logs_cancel() {
    use std::process::{Command, Stdio};
    let hub = Hub::start();
    let a = agent_with(&hub, "web-1", json!({}), false);
    trust(&hub);
    let cli = |args: &[&str]| {
        let mut c = Command::new(common::bin());
        c.args(args)
            .args(["--hub", &hub.url])
            .env("OUTPOST_HUB_ADMIN_TOKEN", ADMIN);
        c
    };
    let child = cli(&[
        "run",
        &a.id,
        "web/restart",
        "--param",
        "unit=nginx",
        "--follow",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let p = a.poll(&hub, 10, &[]);
    let id = p["offers"][0]["run_id"].as_str().unwrap().to_string();
    assert_eq!(a.claim(&hub, &id, "p").0, 200);
    a.started(&hub, &id);
    a.log(&hub, &id, 0, b"restarting nginx\ndone\n");
    let (s, _) = a.result(&hub, &id, "succeeded", 0);
    assert_eq!(s, 200);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with(&format!("{id} {}\n", a.id)), "{stdout}");
    assert!(stdout.contains("restarting nginx\ndone\n"), "{stdout}");
    assert!(
        stdout.contains(&format!("{} {id} succeeded exit 0", a.id)),
        "{stdout}"
    );

    let out = cli(&["runs", "--agent", &a.id]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && table.contains(&id) && table.contains("succeeded"),
        "{table}"
    );
    let out = cli(&["logs", &id]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "restarting nginx\ndone\n"
    );

    let out = cli(&["run", &a.id, "once"]).output().unwrap();
    let queued = String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let out = cli(&["cancel", &queued]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{queued} is canceled\n")
    );
    // A failed run makes --follow exit 1.
    let child = cli(&["run", &a.id, "once", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let p = a.poll(&hub, 10, &[]);
    let id = p["offers"][0]["run_id"].as_str().unwrap().to_string();
    assert_eq!(a.claim(&hub, &id, "p").0, 200);
    assert_eq!(a.result(&hub, &id, "failed", 3).0, 200);
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(1));

    for bad in [
        &["run", "once"][..],
        &["runs", "--state", "done"],
        &["run", &a.id, "web/restart"],
    ] {
        let out = cli(bad).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?} {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert!(
            lines.len() == 2 && lines[0].starts_with("error: ") && lines[1].starts_with("hint: "),
            "{err}"
        );
    }
}
