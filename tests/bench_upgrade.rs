//! Benchmark (not a timed test; run with `bash ci/bench-upgrade.sh`): in the real-systemd
//! testbed, over N runs, measure
//! * downtime: the unit leaving `active` (stop begins) → `active` again on the new version
//!   (Type=notify: after READY), from systemd's own monotonic timestamps;
//! * total upgrade time (the upgrader's `total_ms`, without the configured soak);
//! * rollback time: health failure → old version active and READY (`restored_ms`).
//!
//! Figures go to stdout and target/bench/upgrade.json; docs/PERFORMANCE.md records them.
mod support;

use support::release::{self, Release};
use support::{require_testbed, Container};

fn runs() -> usize {
    std::env::var("OUTPOST_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

fn show_u64(c: &Container, prop: &str) -> u64 {
    c.must_sh(&format!("systemctl show -p {prop} --value outpost.service"))
        .trim()
        .parse()
        .unwrap_or(0)
}

fn last_event(c: &Container, kind: &str) -> serde_json::Value {
    let out = c.must_sh("outpost events --json");
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|e| e["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event"))
}

fn stats(name: &str, mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    let median = pct(0.5);
    println!(
        "{name:<28} n={:<3} median {median:>7.1} ms   p90 {:>7.1} ms   min {:>7.1} ms   max {:>7.1} ms",
        v.len(),
        pct(0.9),
        v[0],
        v[v.len() - 1]
    );
    serde_json::json!({"n": v.len(), "median_ms": median, "p90_ms": pct(0.9), "min_ms": v[0], "max_ms": v[v.len() - 1]})
}

#[test]
#[ignore = "benchmark: run with ci/bench-upgrade.sh"]
fn bench_upgrade() {
    let Some(tb) = require_testbed() else { return };
    let c = tb.boot("bench-upgrade");
    let r = Release::new("bench");
    r.publish(&["1.0.0", "1.1.0"], "stable");
    r.publish(&["1.2.0"], "beta");
    c.cp_in(release::bin("1.0.0"), "/srv/dist/outpost");
    c.cp_in(&r.root, "/srv/release");
    c.must_sh("/srv/dist/outpost install --run-as alice >/dev/null");
    // soak 1 s: excluded from the figures below (it is configuration, not work)
    c.must_sh(&format!(
        "cat > /etc/outpost/config.toml <<'EOF'\n{}EOF",
        release::config("file:///srv/release", &r.pubkey, 1)
    ));

    let n = runs();
    let (mut downtime_unit, mut downtime_upgrader, mut total) = (vec![], vec![], vec![]);
    for i in 0..n {
        let to = if i % 2 == 0 { "1.1.0" } else { "1.0.0" };
        c.must_sh(&format!("outpost upgrade --target {to} >/dev/null"));
        let exit = show_u64(&c, "ActiveExitTimestampMonotonic");
        let enter = show_u64(&c, "ActiveEnterTimestampMonotonic");
        downtime_unit.push(enter.saturating_sub(exit) as f64 / 1000.0);
        let ev = last_event(&c, "service_upgraded");
        downtime_upgrader.push(ev["data"]["downtime_ms"].as_f64().unwrap_or(0.0));
        let t = &ev["data"]["timings"];
        total.push(t["total_ms"].as_f64().unwrap_or(0.0) - t["health_ms"].as_f64().unwrap_or(0.0));
    }
    if c.must_sh("readlink /opt/outpost/current").trim() != "versions/1.0.0" {
        c.must_sh("outpost upgrade --target 1.0.0 >/dev/null");
    }
    c.must_sh("echo 'OUTPOST_FAULT=1.2.0:exit-at-start' >> /etc/outpost/outpost.env && systemctl restart outpost");
    let mut rollback = vec![];
    for _ in 0..n {
        let o = c.sh("outpost upgrade --target 1.2.0");
        assert_eq!(o.code(), Some(1), "{o:?}");
        let ev = last_event(&c, "service_upgrade_rolled_back");
        rollback.push(ev["data"]["restored_ms"].as_f64().unwrap_or(0.0));
    }
    println!("\noutpost upgrade benchmark ({n} runs each, Debian 12 nspawn testbed, systemd 252)");
    let report = serde_json::json!({
        "runs": n,
        "downtime_unit_timestamps": stats("downtime (systemd)", downtime_unit),
        "downtime_upgrader": stats("downtime (upgrader clock)", downtime_upgrader),
        "upgrade_total_without_soak": stats("upgrade total (no soak)", total),
        "rollback_restored": stats("rollback (failure → old up)", rollback),
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("upgrade.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
}
