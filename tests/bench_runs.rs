//! Benchmark (not a timed test; run with `bash ci/bench-runs.sh`): runs on real systemd, a
//! user-mode agent in the testbed and a hub on host loopback.
//! * dispatch latency: the instant before the create request is written to the hub's socket
//!   → the action's process has started, by the process's own clock (`date +%s%N` is its
//!   first act; the container shares the host's kernel clock). Sequential runs.
//! * log streaming: one run printing 100 MiB → all of it stored at the hub, and the largest
//!   gap between the agent's heartbeats meanwhile (interval 1 s).
//! * agent RSS with 4 runs in flight.
//!
//! Figures go to stdout and target/bench/runs.json; docs/PERFORMANCE.md records them.
mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::hub::{Hub, ADMIN_TOKEN};
use support::runs::*;
use support::Container;

fn runs() -> usize {
    std::env::var("OUTPOST_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// `POST /api/v1/runs` over a fresh connection; the run id and the instant (ns) just before
/// the request was written.
fn create(hub: &Hub, agent: &str, action: &str) -> (String, u128) {
    let body = serde_json::json!({"target": {"agent": agent}, "action": action}).to_string();
    let mut s = std::net::TcpStream::connect(hub.addr()).unwrap();
    s.set_nodelay(true).unwrap();
    let req = format!(
        "POST /api/v1/runs HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        hub.addr(),
        body.len()
    );
    let t0 = now_ns();
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let json = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {resp}"));
    (v["runs"][0]["id"].as_str().unwrap().to_string(), t0)
}

fn stats(name: &str, unit: &str, mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name}: n={} p50={:.1}{unit} p90={:.1}{unit} p99={:.1}{unit} min={:.1}{unit} max={:.1}{unit}",
        v.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        v[0],
        v[v.len() - 1]
    );
    serde_json::json!({"n": v.len(), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
        "min": v[0], "max": v[v.len() - 1], "unit": unit})
}

fn setup<'a>(c: &'a Container, name: &str) -> Setup<'a> {
    let hub = Hub::start(name, 1);
    let journal = "journalctl --no-pager -o cat _SYSTEMD_USER_UNIT=outpost.service | tail -40";
    enroll_and_trust(c, hub, journal, &|key, url| {
        write_pack(c, "/home/bob/src", "bob");
        UserInstall {
            installer: BIN,
            hub_url: url,
            config: None,
            pack_dir: "/home/bob/src",
        }
        .run(c, key);
    })
}

fn write_json(name: &str, v: &serde_json::Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), serde_json::to_string_pretty(v).unwrap()).unwrap();
}

#[test]
#[ignore = "benchmark: bash ci/bench-runs.sh"]
fn bench_runs() {
    let Some(c) = support::boot_with_binary("bench-runs") else {
        return;
    };
    let s = setup(&c, "bench-runs");
    let run_dir = "/home/bob/.local/state/outpost/agent/runs";

    // dispatch latency
    let mut lat = Vec::new();
    for _ in 0..runs() {
        let (id, t0) = create(&s.hub, &s.agent, "e2e/stamp");
        let r = wait_final(&s, &id, 30);
        assert_eq!(r["state"], "succeeded", "{r}");
        let started: u128 = c
            .must_sh(&format!("head -n1 {run_dir}/{id}/output.log"))
            .trim()
            .parse()
            .unwrap();
        lat.push((started.saturating_sub(t0)) as f64 / 1e6);
    }
    let dispatch = stats("dispatch latency", "ms", lat);

    // 100 MiB log, heartbeats meanwhile
    let hb = "/home/bob/.local/state/outpost/agent/heartbeat.json";
    c.must_sh(&format!(
        "nohup sh -c 'while :; do grep -o \"\\\"at_ms\\\": *[0-9]*\" {hb}; sleep 0.1; done' > /tmp/hb.txt 2>/dev/null &"
    ));
    let (id, _) = create(&s.hub, &s.agent, "e2e/flood");
    let first = wait_run(&s, &id, 30, |r| r["log_bytes"].as_u64() > Some(0));
    let t_first = Instant::now();
    let _ = first;
    let total = 104_857_600u64;
    let r = wait_run(&s, &id, 120, |r| r["log_bytes"].as_u64() >= Some(total));
    let secs = t_first.elapsed().as_secs_f64();
    assert_eq!(r["log_bytes"].as_u64(), Some(total), "{r}");
    std::thread::sleep(Duration::from_millis(300));
    c.sh("pkill -f 'grep -o' ; pkill -f 'while :; do grep'");
    let samples = c.must_sh("cat /tmp/hb.txt");
    let mut ats: Vec<u64> = samples
        .lines()
        .filter_map(|l| {
            l.rsplit(|ch: char| !ch.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    ats.dedup();
    let gaps: Vec<u64> = ats.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
    let max_gap = gaps.iter().copied().max().unwrap_or(0);
    let mb_s = total as f64 / 1_048_576.0 / secs;
    println!(
        "log streaming: 100 MiB in {secs:.2}s = {mb_s:.1} MiB/s; heartbeats meanwhile: {} with the largest gap {max_gap} ms (interval 1000 ms ±10 %)",
        ats.len()
    );
    let r = wait_final(&s, &id, 60);
    assert_eq!(r["state"], "succeeded", "{r}");

    // RSS with 4 runs in flight
    let ids: Vec<String> = (0..4)
        .map(|_| create(&s.hub, &s.agent, "e2e/idle").0)
        .collect();
    for id in &ids {
        wait_run(&s, id, 30, |r| r["state"] == "running");
    }
    let uid = c.must_sh("id -u bob").trim().to_string();
    let pid = c.must_sh(&format!(
        "runuser -u bob -- env XDG_RUNTIME_DIR=/run/user/{uid} systemctl --user show -p MainPID --value outpost.service"
    ));
    let rss_kb: u64 = c
        .must_sh(&format!("grep VmRSS /proc/{}/status", pid.trim()))
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    println!("agent RSS with 4 runs in flight: {rss_kb} kB");
    for id in &ids {
        let _ = s.hub.cli(&["cancel", id]);
    }

    write_json(
        "runs.json",
        &serde_json::json!({
            "dispatch_latency": dispatch,
            "log_streaming": {"bytes": total, "secs": secs, "mib_per_s": mb_s,
                "heartbeats": ats.len(), "max_heartbeat_gap_ms": max_gap},
            "agent_rss_kb_4_runs": rss_kb,
        }),
    );
}
