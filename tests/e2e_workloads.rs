//! Supervised workloads on the real-systemd testbed (docs/WORKLOADS.md): rounds and every
//! stop condition, back-off, the crash-loop defence with a redacted tail, log retention, and
//! kill -9 of the agent mid-round. User mode (the agent and its rounds in bob's lingering
//! manager).
mod support;

use std::time::{Duration, Instant};
use support::hub::Hub;
use support::runs::*;
use support::Container;

const PACK: &str = r#"[pack]
name = "wl"
version = "1.0.0"
description = "workloads e2e"

[[action]]
id = "three"
command = ["bin/echo.sh"]
[action.supervise]
max_rounds = 3
keep_logs = 2

[[action]]
id = "stopper"
command = ["bin/stopper.sh"]
[action.supervise]
round_timeout = "30s"

[[action]]
id = "doner"
command = ["bin/doner.sh"]
[action.supervise]

[[action]]
id = "crasher"
command = ["bin/crasher.sh"]
[action.supervise]
crash_loop = 5

[[action]]
id = "flaky"
command = ["bin/flaky.sh"]
[action.supervise]
max_rounds = 2
transient_exit_codes = [75]

[[action]]
id = "fatal"
command = ["bin/fatal.sh"]
[action.supervise]
fatal_exit_codes = [78]

[[action]]
id = "slow"
command = ["bin/slow.sh"]
[action.supervise]
max_rounds = 4
round_timeout = "20s"

[[action]]
id = "forever"
command = ["bin/forever.sh"]
[action.supervise]
round_timeout = "60s"

[[action]]
id = "bg"
command = ["bin/bg.sh"]
[action.supervise]
max_rounds = 1
round_timeout = "4s"
grace_after_exit = true

[[action]]
id = "bgreap"
command = ["bin/bg.sh"]
[action.supervise]
max_rounds = 1
round_timeout = "20s"

[[action]]
id = "hang"
command = ["/bin/sleep", "60"]
[action.supervise]
round_timeout = "2s"
crash_loop = 2
short_round = "10s"
"#;

const SCRIPTS: &[(&str, &str)] = &[
    ("echo.sh", "echo \"round $OUTPOST_ROUND\"\n"),
    (
        "stopper.sh",
        "echo \"round $OUTPOST_ROUND\"\nif [ \"$OUTPOST_ROUND\" = 2 ]; then touch \"$OUTPOST_RUN_DIR/stop\"; sleep 1; echo \"round 2 finished after the stop file\"; fi\n",
    ),
    (
        "doner.sh",
        "echo \"round $OUTPOST_ROUND\"\nif [ \"$OUTPOST_ROUND\" = 2 ]; then printf 'all caught up\\nmore\\n' > \"$OUTPOST_RUN_DIR/.done\"; fi\n",
    ),
    ("crasher.sh", "echo \"round $OUTPOST_ROUND token=sekrit123 crashing\"\nexit 3\n"),
    (
        "flaky.sh",
        "if [ \"$OUTPOST_ROUND\" = 1 ]; then echo 'upstream busy'; exit 75; fi\necho \"round $OUTPOST_ROUND ok\"\n",
    ),
    ("fatal.sh", "echo 'bad config'\nexit 78\n"),
    (
        "bg.sh",
        "echo \"round $OUTPOST_ROUND\"\nsetsid sleep 30 >/dev/null 2>&1 &\necho $! > \"$OUTPOST_RUN_DIR/worker.pid\"\nexit 0\n",
    ),
    ("forever.sh", "echo \"round $OUTPOST_ROUND\"\nsleep 2\n"),
    (
        "slow.sh",
        "echo \"round $OUTPOST_ROUND start $$\"\nsleep 3\necho \"round $OUTPOST_ROUND end $$\"\n",
    ),
];

fn write_wl_pack(c: &Container, dir: &str, owner: &str) {
    c.must_sh(&format!("rm -rf {dir}; mkdir -p {dir}/bin"));
    c.exec_with_stdin(
        &["sh", "-c", &format!("cat > {dir}/pack.toml")],
        PACK.as_bytes(),
    );
    for (name, body) in SCRIPTS {
        let text = format!("#!/bin/sh\n{body}");
        c.exec_with_stdin(
            &["sh", "-c", &format!("cat > {dir}/bin/{name}")],
            text.as_bytes(),
        );
    }
    c.must_sh(&format!(
        "chmod 0755 {dir}/bin/*.sh && chown -R {owner} {dir}"
    ));
}

fn run(s: &Setup, action: &str, secs: u64) -> (String, serde_json::Value, String) {
    let id = start(&s.hub, &s.agent, &format!("wl/{action}"), &[]);
    let r = wait_final(s, &id, secs);
    let log = hub_log(&s.hub, &id);
    (id, r, log)
}

fn rounds_in(log: &str) -> Vec<u32> {
    log.lines()
        .filter_map(|l| l.strip_prefix("round "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn e2e_workloads_user_mode() {
    let Some(c) = support::boot_with_binary("wl-user") else {
        return;
    };
    let hub = Hub::start("wl-user", 1);
    let journal = "journalctl --no-pager -o cat _SYSTEMD_USER_UNIT=outpost.service | tail -40";
    let s = enroll_and_trust_pack(&c, hub, journal, "wl", &|key, url| {
        write_wl_pack(&c, "/home/bob/wl", "bob");
        UserInstall {
            installer: BIN,
            hub_url: url,
            config: None,
            pack_dir: "/home/bob/wl",
        }
        .run(&c, key);
    });
    let runs = "/home/bob/.local/state/outpost/agent/runs";
    suite(&c, &s, "bob", runs, &|cmd: &str| c.sh_as("bob", cmd));
}

/// The same workloads in system mode: the service user's lingering manager runs the rounds.
#[test]
fn e2e_workloads_system_mode() {
    let Some(c) = support::boot_with_binary("wl-sys") else {
        return;
    };
    let hub = Hub::start("wl-sys", 1);
    let journal = "journalctl -u outpost.service --no-pager -o cat | tail -40";
    let s = enroll_and_trust_pack(&c, hub, journal, "wl", &|key, url| {
        c.exec_with_stdin(&["bash", "-c", "umask 077; cat > /run/k"], key.as_bytes());
        c.must_sh(&format!(
            "OUTPOST_ENROLL_KEY_FILE=/run/k {BIN} install --hub {url} && rm /run/k"
        ));
        write_wl_pack(&c, "/root/wl", "root");
        c.must_sh(&format!("{BIN} pack install /root/wl"));
    });
    suite(
        &c,
        &s,
        "outpost",
        "/var/lib/outpost/agent/runs",
        &|cmd: &str| c.sh(cmd),
    );
}

/// Every stop condition, back-off, retention, grace, workload stop and kill -9, for the
/// agent whose service user is `user` and whose runs are in `runs`; `cli` runs a host
/// command with the rights it needs (the user in user mode, root in system mode).
fn suite(c: &Container, s: &Setup, user: &str, runs: &str, cli: &dyn Fn(&str) -> support::Output) {
    // max_rounds = 3: exactly three rounds, then max_rounds_reached; keep_logs = 2.
    let (id, r, log) = run(s, "three", 60);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("max_rounds_reached: 3 rounds"),
        "{r}"
    );
    assert_eq!(rounds_in(&log), vec![1, 2, 3], "{log}");
    let kept = c.must_sh(&format!("cd {runs}/{id} && ls round-[0-9]*.log | sort"));
    assert_eq!(
        kept.split_whitespace().collect::<Vec<_>>(),
        vec!["round-2.log", "round-3.log"]
    );
    let cur = c.must_sh(&format!("readlink {runs}/{id}/round-current.log"));
    assert_eq!(cur.trim(), "round-3.log");

    // The stop file: the round that wrote it finishes, then the workload stops.
    let (_, r, log) = run(s, "stopper", 60);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("stop_file_detected"),
        "{r}"
    );
    assert_eq!(rounds_in(&log), vec![1, 2, 2], "{log}");
    assert!(
        log.contains("round 2 finished after the stop file"),
        "{log}"
    );

    // The .done sentinel: self_terminated with its first line.
    let (_, r, log) = run(s, "doner", 60);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["reason"], "self_terminated: all caught up", "{r}");
    assert_eq!(rounds_in(&log), vec![1, 2], "{log}");

    // Five short crashes in a row: crash_loop, the tail redacted, no sixth round.
    let (id, r, log) = run(s, "crasher", 60);
    assert_eq!(r["state"], "failed", "{r}");
    let why = r["reason"].as_str().unwrap();
    assert!(
        why.starts_with("crash_loop: 5 consecutive rounds failed"),
        "{why}"
    );
    assert!(
        why.contains("token=***") && !why.contains("sekrit123"),
        "{why}"
    );
    assert_eq!(rounds_in(&log), vec![1, 2, 3, 4, 5], "{log}");
    std::thread::sleep(Duration::from_secs(2));
    let units = c.must_sh(&format!(
        "runuser -u {user} -- env XDG_RUNTIME_DIR=/run/user/$(id -u {user}) systemctl --user list-units --all --no-legend 'outpost-run-{id}*' | wc -l"
    ));
    assert_eq!(units.trim(), "0", "no respawn after crash_loop");

    // A transient exit code: back off, then the next round.
    let (_, r, log) = run(s, "flaky", 60);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert!(
        log.contains("upstream busy") && log.contains("round 2 ok"),
        "{log}"
    );
    let j = c.must_sh(&format!(
        "grep -c '\"round_backoff\"' {runs}/../events.jsonl"
    ));
    assert_eq!(j.trim(), "1", "one back-off");

    // A fatal exit code: config_broken after that round.
    let (_, r, _) = run(s, "fatal", 60);
    assert_eq!(r["state"], "failed", "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("config_broken: round 1 exited with 78"),
        "{r}"
    );

    // round_timeout kills a hanging round (twice: a crash loop of timeouts).
    let (_, r, _) = run(s, "hang", 60);
    assert_eq!(r["state"], "failed", "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("killed at round_timeout"),
        "{r}"
    );
    let j = c.must_sh(&format!(
        "grep -c '\"round_timeout_kill\"' {runs}/../events.jsonl"
    ));
    assert_eq!(j.trim(), "2", "two rounds killed at round_timeout");

    // A round that leaves a worker behind: with grace_after_exit it is extended (the event
    // names the worker) until round_timeout kills it; without, the worker is reaped at once.
    let (id, r, _) = run(s, "bg", 60);
    assert_eq!(r["state"], "succeeded", "{r}");
    let g = c.must_sh(&format!(
        "grep '\"round_grace_extended\"' {runs}/../events.jsonl"
    ));
    assert!(g.contains("sleep") && g.contains(&id), "{g}");
    let j = c.must_sh(&format!(
        "grep -c '\"round_timeout_kill\".*{id}' {runs}/../events.jsonl"
    ));
    assert_eq!(j.trim(), "1", "killed at round_timeout");
    let pid = c.must_sh(&format!("cat {runs}/{id}/work/worker.pid"));
    assert!(
        !c.sh(&format!("kill -0 {}", pid.trim())).success(),
        "the worker is gone"
    );
    let t = Instant::now();
    let (id, r, _) = run(s, "bgreap", 60);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    let pid = c.must_sh(&format!("cat {runs}/{id}/work/worker.pid"));
    assert!(
        !c.sh(&format!("kill -0 {}", pid.trim())).success(),
        "the worker was reaped"
    );

    // `outpost workload stop`: the round in flight finishes, then the workload stops;
    // `--now` cancels the round too. `runs peek` shows the round in flight.
    let id = start(&s.hub, &s.agent, "wl/forever", &[]);
    wait_run(s, &id, 30, |r| {
        r["state"] == "running" && r["log_bytes"].as_u64() > Some(0)
    });
    let peek = cli(&format!("{BIN} runs peek {id}"));
    assert!(peek.success(), "{peek:?}");
    assert!(peek.stdout.contains("in flight"), "{}", peek.stdout);
    let pj: serde_json::Value =
        serde_json::from_str(&cli(&format!("{BIN} runs peek {id} --json")).stdout).unwrap();
    let in_flight = pj["supervise"]["in_flight"]["round"]
        .as_u64()
        .expect("a round in flight");
    let o = cli(&format!("{BIN} workload stop {id}"));
    assert!(
        o.success() && o.stdout.contains("stops after round"),
        "{o:?}"
    );
    let r = wait_final(s, &id, 30);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("workload_stopped"),
        "{r}"
    );
    let last = *rounds_in(&hub_log(&s.hub, &id)).last().unwrap() as u64;
    assert!(
        last == in_flight || last == in_flight + 1,
        "stopped after the round in flight: {last} vs {in_flight}"
    );
    let id = start(&s.hub, &s.agent, "wl/forever", &[]);
    wait_run(s, &id, 30, |r| {
        r["state"] == "running" && r["log_bytes"].as_u64() > Some(0)
    });
    let t = Instant::now();
    assert!(cli(&format!("{BIN} workload stop --now {id}")).success());
    let r = wait_final(s, &id, 30);
    assert_eq!(r["state"], "canceled", "{r}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    let o = cli(&format!("{BIN} workload stop {id}"));
    assert!(
        o.success() && o.stdout.contains("has ended already"),
        "{o:?}"
    );
    let o = cli(&format!("{BIN} workload stop r_nosuchrun"));
    assert_eq!(o.code(), Some(2), "{o:?}");
    assert!(o.stderr.contains("no run r_nosuchrun"), "{o:?}");
    let logs = cli(&format!("{BIN} runs logs {id}"));
    assert!(logs.stdout.contains("round 1"), "{logs:?}");

    // kill -9 of the agent mid-round: the round keeps running in its own unit and the new
    // agent resumes the count: rounds 1-4 each once, each complete.
    let id = start(&s.hub, &s.agent, "wl/slow", &[]);
    let until = Instant::now() + Duration::from_secs(30);
    while !c
        .sh(&format!("grep -q 'round 2 start' {runs}/{id}/round-2.log"))
        .success()
    {
        assert!(Instant::now() < until, "round 2 never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    c.must_sh("pkill -9 -f 'outpost agent run'");
    let r = wait_final(s, &id, 90);
    assert_eq!(r["state"], "succeeded", "{r}");
    let log = hub_log(&s.hub, &id);
    let starts: Vec<&str> = log.lines().filter(|l| l.contains(" start ")).collect();
    let ends: Vec<&str> = log.lines().filter(|l| l.contains(" end ")).collect();
    assert_eq!(starts.len(), 4, "{log}");
    assert_eq!(ends.len(), 4, "every round completed: {log}");
    assert_eq!(
        rounds_in(&log).iter().filter(|&&n| n == 2).count(),
        2,
        "round 2 once: {log}"
    );
    let j = c.must_sh(&format!(
        "grep -c '\"runs_reattached\"' {runs}/../events.jsonl"
    ));
    assert!(j.trim().parse::<u32>().unwrap() >= 1, "{j}");
}

/// A workload declared in the host's config (`[[workload]]`), with no hub at all: it starts
/// with the agent, keeps its rounds going, and after a reboot resumes at the next round.
/// System mode (the service user lingers; its manager runs the rounds).
#[test]
fn e2e_workloads_declared_survive_a_reboot() {
    let Some(c) = support::boot_with_binary("wl-decl") else {
        return;
    };
    c.must_sh(&format!("{BIN} install"));
    write_wl_pack(&c, "/root/wl", "root");
    c.must_sh(&format!("{BIN} pack install /root/wl"));
    c.must_sh(
        "printf '\\n[[workload]]\\nname = \"crawl\"\\naction = \"wl/forever\"\\n' >> /etc/outpost/config.toml && systemctl restart outpost.service",
    );
    let runs = "/var/lib/outpost/agent/runs/w-crawl";
    let peek = |c: &Container| -> serde_json::Value {
        let o = c.sh("outpost runs peek w-crawl --json");
        serde_json::from_str(&o.stdout).unwrap_or_else(|_| panic!("peek: {o:?}"))
    };
    let wait_round = |c: &Container, n: u64, secs: u64| {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            if c.sh(&format!("test -s {runs}/round-{n}.log")).success() {
                return;
            }
            assert!(
                Instant::now() < until,
                "round {n} never started: {}\n{}",
                c.sh("outpost runs peek w-crawl").stdout,
                c.sh("journalctl -u outpost.service --no-pager -o cat | tail -30")
                    .stdout
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    wait_round(&c, 2, 60);
    let p = peek(&c);
    assert_eq!(p["run"]["state"], "running", "{p}");
    let owner = c.must_sh(&format!("stat -c %U {runs}/round-2.log"));
    assert_eq!(owner.trim(), "outpost", "rounds run as the service user");
    let before = c.must_sh("ls /var/lib/outpost/agent/runs/w-crawl | grep -c '^round-[0-9]*.log$'");
    let before: u64 = before.trim().parse().unwrap();
    c.reboot();
    // After the reboot: the same run, the next round, no failure counted for the one the
    // reboot cut short.
    wait_round(&c, before + 2, 90);
    let p = peek(&c);
    assert_eq!(p["run"]["state"], "running", "{p}");
    assert_eq!(p["supervise"]["short_failures"], 0, "{p}");
    let j = c.must_sh("grep -c '\"round_start\"' /var/lib/outpost/agent/events.jsonl");
    assert!(j.trim().parse::<u64>().unwrap() >= before + 2, "{j}");
    // Stopped on the host: after the round in flight, reason recorded locally.
    c.must_sh("outpost workload stop crawl");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let p = peek(&c);
        if p["run"]["result"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("workload_stopped"))
        {
            assert_eq!(p["run"]["hub_state"], "local", "{p}");
            break;
        }
        assert!(Instant::now() < until, "the workload did not stop: {p}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // A later agent start does not start an ended workload again.
    c.must_sh("systemctl restart outpost.service");
    std::thread::sleep(Duration::from_secs(3));
    let p = peek(&c);
    assert!(p["supervise"]["in_flight"].is_null(), "{p}");
}
