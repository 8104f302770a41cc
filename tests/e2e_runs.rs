//! End-to-end: runs on real systemd (docs/RUNS.md). The hub dispatches an action of a
//! trusted pack; the agent runs it in its own transient unit in the service user's manager
//! (`outpost-runs.slice`), streams the log and reports one result. The run survives the
//! agent (kill -9, stop), a cancel leaves no process behind (even one that traps SIGTERM
//! and double-forks with setsid), a timeout fires with the agent stopped, and a limit this
//! host cannot enforce (no cgroup controllers in the container) rejects the run with that
//! reason. System mode (the service user's manager, lingering) and user mode.
mod support;

use std::time::{Duration, Instant};
use support::hub::Hub;
use support::runs::*;
use support::Container;

fn env_names(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .map(String::from)
        .collect()
}

/// The environment a run sees: the fixed baseline, what the service manager adds for every
/// unit (its user's identity and runtime dir, the invocation), the allowlisted variable and
/// the run's own; nothing of the agent's.
const ALLOWED_NAMES: &[&str] = &[
    "PATH",
    "LANG",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "XDG_RUNTIME_DIR",
    "INVOCATION_ID",
    "SYSTEMD_EXEC_PID",
    "PWD",
    "ALLOWED_VAR",
    "OUTPOST_RUN_ID",
    "OUTPOST_RUN_DIR",
    "OUTPOST_PARAM_TONE",
];

/// The hello action end to end: params as argv and env, the env allowlist, one result.
fn hello(s: &Setup, uid: &str) {
    let id = start(&s.hub, &s.agent, "e2e/hello", &["who=bob", "tone=loud"]);
    let r = wait_final(s, &id, 30);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["exit_code"], 0, "{r}");
    let log = hub_log(&s.hub, &id);
    assert!(log.contains("hello bob (loud)"), "{log}");
    assert!(log.contains("allowed=yes-allowed"), "{log}");
    assert!(
        log.lines().any(|l| l == uid),
        "runs as the service user {uid}: {log}"
    );
    let names = env_names(&log);
    for n in &names {
        assert!(
            ALLOWED_NAMES.contains(&n.as_str()),
            "{n} leaked into the run: {names:?}"
        );
    }
    assert!(names.iter().any(|n| n == "ALLOWED_VAR"), "{names:?}");
    assert!(names.iter().any(|n| n == "OUTPOST_RUN_ID"), "{names:?}");

    // a parameter out of bounds is the agent's rejection, naming it
    let id = start(&s.hub, &s.agent, "e2e/hello", &["who=B0B"]);
    let r = wait_final(s, &id, 30);
    assert_eq!(r["state"], "rejected", "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("parameter who"),
        "{r}"
    );
}

/// A limit without its controller (the container has none) rejects the run, with the reason.
fn unenforceable_limit(s: &Setup) {
    let id = start(&s.hub, &s.agent, "e2e/capped", &[]);
    let r = wait_final(s, &id, 30);
    assert_eq!(r["state"], "rejected", "{r}");
    let why = r["reason"].as_str().unwrap();
    assert!(
        why.contains("limits.cpu cannot be enforced") && why.contains("cpu controller"),
        "{why}"
    );
}

/// Cancel of a script that traps SIGTERM and double-forks: nothing of it is left.
fn cancel_stubborn(c: &Container, s: &Setup, run_dir: &str) {
    let id = start(&s.hub, &s.agent, "e2e/stubborn", &[]);
    wait_run(s, &id, 30, |r| {
        r["state"] == "running" && r["log_bytes"].as_u64() > Some(0)
    });
    let dir = format!("{run_dir}/{id}/work");
    let pids = c.must_sh(&format!("cat {dir}/main.pid {dir}/child.pid"));
    let pids: Vec<&str> = pids.split_whitespace().collect();
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(
        c.sh(&format!("kill -0 {}", pids[1])).code() == Some(0),
        "the grandchild runs"
    );
    let o = s.hub.cli(&["cancel", &id]);
    assert!(o.status.success(), "cancel: {o:?}");
    let r = wait_final(s, &id, 40);
    assert_eq!(r["state"], "canceled", "{r}");
    for p in pids {
        assert_ne!(
            c.sh(&format!("kill -0 {p}")).code(),
            Some(0),
            "pid {p} survived the cancel"
        );
    }
}

/// kill -9 of the agent mid-run: the run goes on, one result, the hub's log is the run's
/// output byte for byte.
fn survives_kill9(c: &Container, s: &Setup, run_dir: &str, agent_pid: &dyn Fn() -> String) {
    let id = start(&s.hub, &s.agent, "e2e/count", &["n=60"]);
    wait_run(s, &id, 30, |r| {
        r["state"] == "running" && r["log_bytes"].as_u64() > Some(0)
    });
    let before = agent_pid();
    c.must_sh(&format!("kill -9 {before}"));
    let r = wait_final(s, &id, 60);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_ne!(agent_pid(), before, "systemd restarted the agent");
    let log = hub_log(&s.hub, &id);
    assert_eq!(log.lines().count(), 60, "{log}");
    let local = c.must_sh(&format!("sha256sum < {run_dir}/{id}/output.log"));
    let hub_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(log.as_bytes()))
    };
    assert!(local.starts_with(&hub_sha), "local {local} hub {hub_sha}");
    // the new agent reported that it took the run over
    let o = s.hub.cli(&["runs", "--json"]);
    assert!(o.status.success());
}

/// The timeout fires while the agent is stopped; the restarted agent reports it.
fn timeout_without_agent(c: &Container, s: &Setup, stop: &str, start_agent: &str) {
    let id = start(&s.hub, &s.agent, "e2e/sleepy", &[]);
    wait_run(s, &id, 30, |r| r["state"] == "running");
    c.must_sh(stop);
    std::thread::sleep(Duration::from_secs(6));
    c.must_sh(start_agent);
    let r = wait_final(s, &id, 40);
    assert_eq!(r["state"], "timed_out", "{r}");
    assert!(r["reason"].as_str().unwrap().starts_with("timeout"), "{r}");
}

#[test]
fn e2e_runs_user_mode() {
    let Some(c) = support::boot_with_binary("runs-user") else {
        return;
    };
    let hub = Hub::start("runs-user", 1);
    let journal = "journalctl --no-pager -o cat _SYSTEMD_USER_UNIT=outpost.service | tail -40";
    let s = enroll_and_trust(&c, hub, journal, &|key, url| {
        write_pack(&c, "/home/bob/src", "bob");
        UserInstall {
            installer: BIN,
            hub_url: url,
            config: None,
            pack_dir: "/home/bob/src",
        }
        .run(&c, key);
    });
    let uid = c.must_sh("id -u bob").trim().to_string();
    let env = "/home/bob/.config/outpost/outpost.env";
    c.must_sh(&format!(
        "printf 'ALLOWED_VAR=yes-allowed\\nSECRET_VAR=no\\n' >> {env}"
    ));
    let user = |cmd: &str| format!("runuser -u bob -- env XDG_RUNTIME_DIR=/run/user/{uid} {cmd}");
    c.must_sh(&user("systemctl --user restart outpost.service"));
    hello(&s, &uid);
    unenforceable_limit(&s);
    let run_dir = "/home/bob/.local/state/outpost/agent/runs";
    cancel_stubborn(&c, &s, run_dir);
    let pid = || {
        c.must_sh(&user(
            "systemctl --user show -p MainPID --value outpost.service",
        ))
        .trim()
        .to_string()
    };
    survives_kill9(&c, &s, run_dir, &pid);
    timeout_without_agent(
        &c,
        &s,
        &user("systemctl --user stop outpost.service"),
        &user("systemctl --user start outpost.service"),
    );
    host_cli(&c, "bob", "");
    isolation(&c, &s, "/home/bob/.local/state/outpost/agent/events.jsonl");
    let d = c.sh_as("bob", "~/.local/bin/outpost diagnostics");
    assert!(
        d.stdout.contains("ok   run_isolation runs are isolated"),
        "{d:?}"
    );
    // A host whose user manager cannot create user namespaces (filtered here with
    // RestrictNamespaces= on user@.service): the agent says so, and runs are not isolated.
    c.must_sh("mkdir -p /etc/systemd/system/user@.service.d && printf '[Service]\\nRestrictNamespaces=~user\\n' > /etc/systemd/system/user@.service.d/50-no-userns.conf && systemctl daemon-reload");
    c.must_sh(&format!("systemctl restart user@{uid}.service"));
    c.wait_user("bob");
    snoop(&s, false);
    let why = wait_isolation(
        &c,
        "/home/bob/.local/state/outpost/agent/events.jsonl",
        false,
    );
    assert!(why.contains("217/USER"), "{why}");
    let d = c.sh_as("bob", "~/.local/bin/outpost diagnostics");
    assert_eq!(d.code(), Some(1), "{d:?}");
    assert!(
        d.stdout
            .contains("FAIL run_isolation runs are NOT isolated")
            && d.stdout.contains("217/USER")
            && d.stdout
                .contains("hint: allow unprivileged user namespaces"),
        "{d:?}"
    );
    tampered_and_untrusted(
        &c,
        &s,
        "/home/bob/.config/outpost/packs/e2e/bin/count.sh",
        &|cmd: &str| c.must_sh_as("bob", cmd),
    );
}

/// The agent proved its runs isolated (journaled), and a run cannot reach the agent's files.
fn isolation(c: &Container, s: &Setup, agent_journal: &str) {
    snoop(s, true);
    wait_isolation(c, agent_journal, true);
}

/// The latest `runs_isolation` event once it says `isolated`; its reason.
fn wait_isolation(c: &Container, agent_journal: &str, isolated: bool) -> String {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let last = c
            .sh(&format!(
                "grep '\"runs_isolation\"' {agent_journal} | tail -1"
            ))
            .stdout;
        if let Ok(e) = serde_json::from_str::<serde_json::Value>(last.trim()) {
            if e["data"]["isolated"] == isolated {
                return e["data"]["reason"].as_str().unwrap_or_default().to_string();
            }
        }
        assert!(
            Instant::now() < until,
            "no runs_isolation event with isolated={isolated}: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A pack changed on disk after the agent loaded it is refused (drifted), never run; once the
/// agent advertises the new hash, the hub refuses to dispatch it until it is trusted.
fn tampered_and_untrusted(
    c: &Container,
    s: &Setup,
    script: &str,
    as_owner: &dyn Fn(&str) -> String,
) {
    let marker = "/tmp/tampered-ran";
    as_owner(&format!(
        "cp {script} {script}.orig && echo 'touch {marker}' >> {script}"
    ));
    let id = start(&s.hub, &s.agent, "e2e/count", &["n=1"]);
    let r = wait_final(s, &id, 30);
    assert_eq!(r["state"], "rejected", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("drifted"), "{r}");
    assert!(
        c.sh(&format!("test -e {marker}")).code() == Some(1),
        "the tampered script ran"
    );
    // Reloaded, the agent advertises the new hash: pending at the hub, so no dispatch.
    c.sh("pkill -HUP -f 'outpost agent run'; pkill -USR1 -f 'outpost agent run'");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let o = s.hub.cli(&["run", &s.agent, "e2e/count", "--param", "n=1"]);
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("trust"), "{err}");
            break;
        }
        assert!(
            Instant::now() < until,
            "the hub kept dispatching the untrusted hash"
        );
        std::thread::sleep(Duration::from_millis(500));
        c.sh("pkill -USR1 -f 'outpost agent run'");
    }
    as_owner(&format!("mv {script}.orig {script}"));
    c.sh("pkill -HUP -f 'outpost agent run'");
}

/// `outpost runs`, `runs logs`, `action list` on the host.
fn host_cli(c: &Container, who: &str, sudo: &str) {
    let j = c.must_sh_as(who, &format!("{sudo}{BIN} runs --json"));
    let runs: Vec<serde_json::Value> = serde_json::from_str(&j).unwrap();
    let hello = runs
        .iter()
        .find(|r| r["action"] == "hello" && r["state"] == "succeeded")
        .unwrap_or_else(|| panic!("{j}"));
    assert_eq!(hello["hub_state"], "succeeded", "{j}");
    let id = hello["id"].as_str().unwrap();
    let log = c.must_sh_as(who, &format!("{sudo}{BIN} runs logs {id}"));
    assert!(log.contains("hello bob (loud)"), "{log}");
    let table = c.must_sh_as(who, &format!("{sudo}{BIN} runs"));
    assert!(
        table.contains("e2e/stubborn") && table.contains("canceled"),
        "{table}"
    );
    assert!(table.contains("timed_out"), "{table}");
    let a = c.must_sh_as(who, &format!("{sudo}{BIN} action list"));
    assert!(a.contains("e2e/hello(who, [tone])"), "{a}");
    let o = c.sh_as(who, &format!("{sudo}{BIN} runs logs ../x"));
    assert_eq!(o.code(), Some(2), "{o:?}");
}

/// Partitions between agent and hub (a relay the test cuts): 30 s → `unknown`, then
/// `running` again and one result; 150 s (past `lost_after`, 120 s) → `lost`, then the late
/// result is stored and nothing is dispatched again.
#[test]
fn e2e_runs_partitions() {
    let Some(c) = support::boot_with_binary("runs-part") else {
        return;
    };
    let hub = Hub::start_args("runs-part", 1, &["--run-lease", "10"]);
    let proxy = support::proxy::Proxy::start(&hub.addr());
    let journal = "journalctl --no-pager -o cat _SYSTEMD_USER_UNIT=outpost.service | tail -60";
    let purl = proxy.url.clone();
    let s = enroll_and_trust(&c, hub, journal, &|key, _| {
        write_pack(&c, "/home/bob/src", "bob");
        UserInstall {
            installer: BIN,
            hub_url: &purl,
            config: None,
            pack_dir: "/home/bob/src",
        }
        .run(&c, key);
    });
    let run_dir = "/home/bob/.local/state/outpost/agent/runs";

    // 30 s: the lease (10 s) ends → unknown; after the heal → running, then one result
    let id = start(&s.hub, &s.agent, "e2e/count", &["n=500"]);
    wait_run(&s, &id, 30, |r| {
        r["state"] == "running" && r["log_bytes"].as_u64() > Some(0)
    });
    proxy.cut();
    let cut_at = Instant::now();
    wait_run(&s, &id, 30, |r| r["state"] == "unknown");
    let left = Duration::from_secs(30).saturating_sub(cut_at.elapsed());
    std::thread::sleep(left);
    proxy.heal();
    wait_run(&s, &id, 30, |r| r["state"] == "running");
    let r = wait_final(&s, &id, 90);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["late"], false, "{r}");
    let log = hub_log(&s.hub, &id);
    assert_eq!(log.lines().count(), 500, "every line once");
    let local = c.must_sh(&format!("cat {run_dir}/{id}/output.log"));
    assert_eq!(log, local, "the hub's log is the run's output");

    // 150 s: lost while cut; the run ends meanwhile; the late result is stored
    let id = start(&s.hub, &s.agent, "e2e/count", &["n=100"]);
    wait_run(&s, &id, 30, |r| r["state"] == "running");
    proxy.cut();
    let cut_at = Instant::now();
    wait_run(&s, &id, 150, |r| r["state"] == "lost");
    let left = Duration::from_secs(150).saturating_sub(cut_at.elapsed());
    std::thread::sleep(left);
    proxy.heal();
    let r = wait_run(&s, &id, 60, |r| r["state"] == "succeeded");
    assert_eq!(r["late"], true, "{r}");
    assert_eq!(r["exit_code"], 0, "{r}");
    let all = run_views(&s.hub);
    assert!(
        !all.iter().any(|x| x["retry_of"] == id.as_str()),
        "a non-idempotent run is never dispatched again: {all:?}"
    );
}

/// An upgrade of the agent during a run: the run keeps its process and output, the new
/// agent takes it over and reports one result.
#[test]
fn e2e_runs_survive_an_upgrade() {
    use support::release::{self, Release};
    let Some(tb) = support::require_testbed() else {
        return;
    };
    let c = tb.boot("runs-upg");
    for v in ["1.0.0", "1.1.0"] {
        c.cp_in(release::bin(v), &format!("/srv/dist/{v}/outpost"));
    }
    let r = Release::new("runs-upg");
    r.publish(&["1.0.0", "1.1.0"], "stable");
    c.cp_in(&r.root, "/srv/release");
    c.must_sh("chmod -R a+rX /srv/release /srv/dist");
    let hub = Hub::start("runs-upg", 1);
    let journal = "journalctl --no-pager -o cat _SYSTEMD_USER_UNIT=outpost.service | tail -60";
    let s = enroll_and_trust(&c, hub, journal, &|key, url| {
        write_pack(&c, "/home/bob/src", "bob");
        UserInstall {
            installer: "/srv/dist/1.0.0/outpost",
            hub_url: url,
            config: Some(release::config("file:///srv/release", &r.pubkey, 2)),
            pack_dir: "/home/bob/src",
        }
        .run(&c, key);
    });
    let uid = c.must_sh("id -u bob").trim().to_string();
    let user = |cmd: &str| format!("runuser -u bob -- env XDG_RUNTIME_DIR=/run/user/{uid} {cmd}");
    let id = start(&s.hub, &s.agent, "e2e/count", &["n=150"]);
    wait_run(&s, &id, 30, |r| {
        r["state"] == "running" && r["log_bytes"].as_u64() > Some(0)
    });
    let unit = format!("outpost-run-{id}.service");
    let pid = c.must_sh(&user(&format!(
        "systemctl --user show -p MainPID --value {unit}"
    )));
    let out = c.must_sh_as("bob", "~/.local/bin/outpost upgrade --target 1.1.0");
    assert!(
        out.contains("upgraded outpost from 1.0.0 to 1.1.0"),
        "{out}"
    );
    let after = c.must_sh(&user(&format!(
        "systemctl --user show -p MainPID --value {unit}"
    )));
    assert_eq!(
        pid.trim(),
        after.trim(),
        "the run kept its process through the upgrade"
    );
    let r = wait_final(&s, &id, 60);
    assert_eq!(r["state"], "succeeded", "{r}");
    let log = hub_log(&s.hub, &id);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 150, "every line once: {log}");
    assert_eq!(lines[149], "line 150 of 150");
    let j = c.sh(journal).stdout;
    assert!(
        j.contains("outpost agent 1.1.0 started") && j.contains("took over 1 run(s)"),
        "{j}"
    );
}

/// A system-mode install enrolled at a fresh hub, the e2e pack installed (root's) and
/// trusted, and the runner env file with one allowed and one secret variable.
fn system_setup<'a>(c: &'a Container, name: &str) -> Setup<'a> {
    let hub = Hub::start(name, 1);
    let journal = "journalctl -u outpost.service --no-pager -o cat | tail -40";
    let s = enroll_and_trust(c, hub, journal, &|key, url| {
        c.exec_with_stdin(&["bash", "-c", "umask 077; cat > /run/k"], key.as_bytes());
        c.must_sh(&format!(
            "OUTPOST_ENROLL_KEY_FILE=/run/k {BIN} install --hub {url} && rm /run/k"
        ));
        write_pack(c, "/root/src", "root");
        c.must_sh(&format!("{BIN} pack install /root/src"));
    });
    // The runner env file is root's; systemd loads it into the agent.
    c.must_sh("printf 'ALLOWED_VAR=yes-allowed\\nSECRET_VAR=no\\n' >> /etc/outpost/outpost.env && systemctl restart outpost.service");
    s
}

#[test]
fn e2e_runs_system_mode() {
    let Some(c) = support::boot_with_binary("runs-sys") else {
        return;
    };
    let s = system_setup(&c, "runs-sys");
    let uid = c.must_sh("id -u outpost").trim().to_string();
    hello(&s, &uid);
    isolation(&c, &s, "/var/lib/outpost/agent/events.jsonl");
    // the run is the service user's, in its own manager, outside the agent's cgroup
    unenforceable_limit(&s);
    let run_dir = "/var/lib/outpost/agent/runs";
    cancel_stubborn(&c, &s, run_dir);
    let pid = || {
        c.must_sh("systemctl show -p MainPID --value outpost.service")
            .trim()
            .to_string()
    };
    survives_kill9(&c, &s, run_dir, &pid);
    timeout_without_agent(
        &c,
        &s,
        "systemctl stop outpost.service",
        "systemctl start outpost.service",
    );
    // reading the runs needs root (they are the service user's); alice has sudo
    let o = c.sh_as("alice", &format!("{BIN} runs"));
    assert_eq!(o.code(), Some(2), "{o:?}");
    assert!(o.stderr.contains("run it with sudo"), "{o:?}");
    host_cli(&c, "alice", "sudo ");
}

/// Run `script` as the service user, as a compromised agent would.
fn as_agent(c: &Container, script: &str) -> support::Output {
    c.sh(&format!(
        "runuser -u outpost -- /bin/sh -c {}",
        support::shell_quote(script)
    ))
}

/// Write a request into the agent's run dir (as the agent) and start the template for it.
fn forge(c: &Container, id: &str, request: &str) -> (support::Output, String) {
    let dir = format!("/var/lib/outpost/agent/runs/{id}");
    let o = as_agent(
        c,
        &format!(
            "mkdir -p {dir} && printf '%s' {} > {dir}/privileged.json && systemctl --no-ask-password start outpost-run-privileged@{id}.service",
            support::shell_quote(request)
        ),
    );
    let refused = c
        .sh(&format!("cat /var/lib/outpost/runs/{id}/refused"))
        .stdout;
    (o, refused)
}

fn unit_gone(c: &Container, id: &str) -> bool {
    c.must_sh(&format!(
        "systemctl show -p LoadState --value outpost-run-{id}.service"
    ))
    .trim()
        == "not-found"
}

/// Privileged actions: root only after the host's trust, through the root-owned template
/// that re-validates every request; the service user gains nothing else from it.
#[test]
fn e2e_runs_privileged() {
    let Some(c) = support::boot_with_binary("runs-priv") else {
        return;
    };
    let s = system_setup(&c, "runs-priv");
    let t = c.must_sh("stat -c '%U %a' /etc/systemd/system/outpost-run-privileged@.service");
    assert_eq!(t.trim(), "root 644", "the template is root's");

    // 1. Before the host's admin trusts it: rejected with what to do.
    let id = start(&s.hub, &s.agent, "e2e/whoami", &["tag=before"]);
    let r = wait_final(&s, &id, 30);
    assert_eq!(r["state"], "rejected", "{r}");
    let why = r["reason"].as_str().unwrap();
    assert!(
        why.contains("sudo outpost pack trust e2e --privileged"),
        "{why}"
    );

    // 2. After `pack trust --privileged`: root, with the clean environment.
    c.must_sh(&format!("{BIN} pack trust e2e --privileged"));
    let id = start(&s.hub, &s.agent, "e2e/whoami", &["tag=after"]);
    let r = wait_final(&s, &id, 30);
    assert_eq!(r["state"], "succeeded", "{r}");
    let log = hub_log(&s.hub, &id);
    assert!(
        log.contains(&format!(
            "uid=0 tag=after dir=/var/lib/outpost/runs/{id}/work allowed=yes-allowed"
        )),
        "{log}"
    );
    for n in env_names(&log) {
        assert!(ALLOWED_NAMES.contains(&n.as_str()), "{n} leaked: {log}");
    }
    let st = c.must_sh(&format!("stat -c '%U %G %a' /var/lib/outpost/runs/{id}"));
    assert_eq!(st.trim(), "root outpost 750", "root's run dir");
    let local = c.must_sh(&format!("{BIN} runs logs {id}"));
    assert!(local.contains("uid=0 tag=after"), "{local}");
    let j = c.must_sh("grep -c privileged_run_started /var/lib/outpost/events.jsonl");
    assert_eq!(j.trim(), "1", "root's journal has the admission");

    // 3. Cancel of a root run: the agent may stop the run's unit (polkit), and does.
    let nap = start(&s.hub, &s.agent, "e2e/rootnap", &[]);
    wait_run(&s, &nap, 30, |r| r["state"] == "running");
    let pid = c.must_sh(&format!(
        "systemctl show -p MainPID --value outpost-run-{nap}.service"
    ));
    let owner = c.must_sh(&format!("ps -o user= -p {}", pid.trim()));
    assert_eq!(owner.trim(), "root", "{pid}");
    assert!(s.hub.cli(&["cancel", &nap]).status.success());
    let r = wait_final(&s, &nap, 40);
    assert_eq!(r["state"], "canceled", "{r}");

    // 4. What a compromised agent (the service user) can make root do: nothing else.
    let packs: Vec<serde_json::Value> =
        serde_json::from_slice(&s.hub.cli(&["packs", "--json"]).stdout).unwrap();
    let sha = packs
        .iter()
        .find(|p| p["name"] == "e2e")
        .and_then(|p| p["sha256"].as_str())
        .map(String::from)
        .expect("the pack's hash");
    let req = |id: &str, action: &str, params: &str| {
        format!(
            r#"{{"run_id":"{id}","pack":"e2e","sha256":"{sha}","action":"{action}","params":{params}}}"#
        )
    };
    // a valid request runs (the path itself works for the service user) ...
    let (o, refused) = forge(&c, "forge0", &req("forge0", "whoami", r#"{"tag":"ok"}"#));
    assert!(o.success(), "{o:?} {refused}");
    // ... an unprivileged action through root's path does not
    let (o, refused) = forge(&c, "forge1", &req("forge1", "hello", r#"{"who":"x"}"#));
    assert!(!o.success(), "{o:?}");
    assert!(refused.contains("is not privileged"), "{refused}");
    assert!(unit_gone(&c, "forge1"));
    // a parameter outside the action's schema
    let (o, refused) = forge(&c, "forge2", &req("forge2", "whoami", r#"{"tag":"x; id"}"#));
    assert!(!o.success(), "{o:?}");
    assert!(refused.contains("parameter tag"), "{refused}");
    assert!(unit_gone(&c, "forge2"));
    // another hash than the granted one
    let bad = req("forge3", "whoami", r#"{"tag":"x"}"#).replace(&sha, &"0".repeat(64));
    let (o, refused) = forge(&c, "forge3", &bad);
    assert!(!o.success(), "{o:?}");
    assert!(refused.contains("drifted"), "{refused}");
    // unit properties smuggled into the request
    let valid = req("forge4", "whoami", r#"{"tag":"x"}"#);
    let smuggled = format!(
        r#"{},"props":{{"ExecStart":"/bin/sh"}}}}"#,
        valid.strip_suffix('}').unwrap()
    );
    let (o, refused) = forge(&c, "forge4", &smuggled);
    assert!(!o.success(), "{o:?}");
    assert!(refused.contains("unknown field"), "{refused}");
    // a request that is a link to a root-owned file with a valid request in it
    c.must_sh(&format!(
        "printf '%s' {} > /etc/outpost/planted.json",
        support::shell_quote(&req("forge5", "whoami", r#"{"tag":"x"}"#))
    ));
    let o = as_agent(
        &c,
        "mkdir -p /var/lib/outpost/agent/runs/forge5 && ln -s /etc/outpost/planted.json /var/lib/outpost/agent/runs/forge5/privileged.json && systemctl --no-ask-password start outpost-run-privileged@forge5.service",
    );
    assert!(!o.success(), "{o:?}");
    assert!(unit_gone(&c, "forge5"));
    let refused = c.must_sh("cat /var/lib/outpost/runs/forge5/refused");
    assert!(
        refused.contains("link") || refused.contains("symbolic"),
        "{refused}"
    );
    // a run id admitted twice
    let o = as_agent(
        &c,
        &format!("systemctl --no-ask-password start outpost-run-privileged@{id}.service"),
    );
    assert!(!o.success(), "replayed: {o:?}");
    // no transient unit of its own, no other unit's stop, no other instance name
    c.must_sh("printf '[Service]\\nExecStart=/bin/sleep infinity\\n' > /etc/systemd/system/victim.service && systemctl daemon-reload && systemctl start victim.service");
    for attack in [
        "systemd-run --no-ask-password --unit=evil /bin/touch /evil",
        "systemd-run --no-ask-password --unit=outpost-run-evil /bin/touch /evil",
        "systemctl --no-ask-password stop victim.service",
        "systemctl --no-ask-password start outpost-run-forge1.service",
        "systemctl --no-ask-password start 'outpost-run-privileged@a\\x2fb.service'",
        "systemctl --no-ask-password restart outpost-run-privileged@forge6.service",
        "systemctl --no-ask-password kill victim.service",
        "systemctl --no-ask-password disable outpost.service",
        "systemctl --no-ask-password daemon-reload",
    ] {
        let o = as_agent(&c, attack);
        assert!(!o.success(), "{attack}: {o:?}");
        assert!(
            o.stderr.contains("Interactive authentication required"),
            "{attack}: polkit said no: {o:?}"
        );
    }
    assert!(c.sh("test -e /evil").code() == Some(1), "/evil was created");
    c.must_sh("systemctl is-active victim.service");
    let j = c.must_sh("grep -c privileged_run_refused /var/lib/outpost/events.jsonl");
    assert!(j.trim().parse::<u32>().unwrap() >= 5, "{j}");
}
