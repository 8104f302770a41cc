//! End-to-end: the agent and `outpost-hub` on real systemd — enrollment with a single-use key,
//! heartbeats, refusal of a used key, revocation (exit 10, no restart), hub outage and
//! return, identity across hub restarts, the journal audit, and an upgrade whose health gate
//! waits for the first accepted heartbeat.
mod support;

use std::time::{Duration, Instant};
use support::hub::Hub;
use support::release::{self, Release};
use support::{require_testbed, Container};

fn boot(name: &str) -> Option<Container> {
    let tb = require_testbed()?;
    let c = tb.boot(name);
    for v in ["1.0.0", "1.1.0"] {
        c.cp_in(release::bin(v), &format!("/srv/dist/{v}/outpost"));
    }
    Some(c)
}

/// The operator's way: the key only in the environment, never on a command line (the key
/// travels through a 0600 file here so not even the test harness's argv holds it).
fn install_with_key(c: &Container, hub: &Hub, key: &str) -> support::Output {
    c.exec_with_stdin(
        &[
            "bash",
            "-c",
            "umask 077; cat > /run/k && chown alice /run/k",
        ],
        key.as_bytes(),
    );
    let o = c.sh_as(
        "alice",
        &format!(
            "sudo OUTPOST_ENROLL_KEY_FILE=/run/k /srv/dist/1.0.0/outpost install --hub {}",
            hub.url
        ),
    );
    c.must_sh("rm -f /run/k");
    o
}

fn show(c: &Container, prop: &str) -> String {
    c.must_sh(&format!("systemctl show -p {prop} --value outpost.service"))
        .trim()
        .to_string()
}

#[test]
fn e2e_agent_and_hub() {
    let Some(c) = boot("hub") else { return };
    let mut hub = Hub::start("agent", 3);
    let key = hub.mint_key();

    // install with a fresh key → online at the hub within 2 s of the service starting
    let o = install_with_key(&c, &hub, &key);
    assert!(o.success(), "{o:?}");
    let started = Instant::now();
    let agents = hub
        .wait_agents(2, |a| a.len() == 1 && a[0]["status"] == "online")
        .unwrap_or_else(|| {
            panic!(
                "agent not online within 2 s: {:?}\n{}",
                hub.agents(),
                c.sh("journalctl -u outpost --no-pager -n 30").stdout
            )
        });
    eprintln!(
        "agent online {} ms after install returned",
        started.elapsed().as_millis()
    );
    let id = agents[0]["id"].as_str().unwrap().to_string();
    assert_eq!(agents[0]["version"], "1.0.0");
    assert!(
        agents[0]["hostname"].as_str().unwrap().starts_with("otb-"),
        "{:?}",
        agents[0]
    );

    // the secrets file is root's, so the agent cannot scrub the used key itself: the root
    // resolver removes it at the next start. The token is 0600, owned by the service user;
    // neither key nor token shows up in argv, logs or the journal
    assert_eq!(
        c.must_sh("stat -c '%U %a' /etc/outpost/outpost.env").trim(),
        "root 600"
    );
    c.must_sh("systemctl restart outpost.service");
    let env = c.must_sh("cat /etc/outpost/outpost.env");
    assert!(!env.contains(&key), "key still in outpost.env:\n{env}");
    assert_eq!(
        c.must_sh("stat -c '%U %a' /var/lib/outpost/agent/identity.json")
            .trim(),
        "alice 600"
    );
    let token = c
        .must_sh("sed -n 's/.*\"token\": *\"\\([^\"]*\\)\".*/\\1/p' /var/lib/outpost/agent/identity.json")
        .trim()
        .to_string();
    assert!(token.starts_with("opt_"), "{token}");
    let logs = c.must_sh(
        "journalctl --no-pager -o cat; cat /var/lib/outpost/agent/events.jsonl; ps -eo args",
    );
    let leaks: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(&key) || l.contains(&token))
        .collect();
    assert!(
        leaks.is_empty(),
        "a secret leaked into logs/journal/argv: {leaks:?}"
    );

    // status and diagnostics see the hub
    let st = c.must_sh_as("alice", "outpost status");
    assert!(
        st.contains(&format!("enrolled as {id}")) && st.contains("accepted"),
        "{st}"
    );
    let d = c.sh_as("alice", "sudo outpost diagnostics --send");
    assert!(d.success(), "{d:?}");
    let hb = c.must_sh_as("alice", "sudo outpost heartbeat --now");
    assert!(hb.contains("heartbeat accepted"), "{hb}");

    // the same key again → refused with a clear message (fresh install after purge)
    c.must_sh_as("alice", "sudo outpost uninstall --purge");
    let o = install_with_key(&c, &hub, &key);
    assert_eq!(o.code(), Some(1), "{o:?}");
    assert!(
        o.stderr.contains("key_used") || o.stderr.contains("already been used"),
        "{o:?}"
    );
    assert_eq!(hub.agents().len(), 1);
    c.must_sh_as("alice", "sudo /srv/dist/1.0.0/outpost uninstall --purge");

    // enroll again with a new key; then hub outage: the agent backs off, and is online again
    // within one interval of the hub's return; the hub restart keeps its identity
    let key2 = hub.mint_key();
    assert!(install_with_key(&c, &hub, &key2).success());
    // The purged first agent stays "online" for up to two intervals: pick the new one.
    let agents = hub
        .wait_agents(5, |a| {
            a.iter()
                .any(|x| x["id"] != id.as_str() && x["status"] == "online")
        })
        .expect("re-enrolled agent online");
    let id2 = agents
        .iter()
        .find(|x| x["id"] != id.as_str() && x["status"] == "online")
        .and_then(|x| x["id"].as_str())
        .expect("agent id")
        .to_string();
    hub.stop();
    std::thread::sleep(Duration::from_secs(8));
    let hbs = c.must_sh("cat /var/lib/outpost/agent/heartbeat.json");
    assert!(
        hbs.contains("\"ok\": false"),
        "agent did not notice the outage: {hbs}"
    );
    assert_eq!(
        show(&c, "ActiveState"),
        "active",
        "agent must keep running while the hub is away"
    );
    hub.start_again();
    let back = Instant::now();
    // One interval, measured by the agent: from just before the hub process was spawned to
    // the agent's "hub reachable again" line (journal wall-clock time; the container shares
    // the kernel's clock), so neither hub start-up nor this test's polling is excused.
    let interval = Duration::from_secs(3);
    let line = c
        .sh("for i in $(seq 1 200); do journalctl -u outpost -o short-unix --no-pager | grep 'hub reachable again' | tail -1 | grep . && exit 0; sleep 0.1; done; exit 1")
        .stdout;
    let agent_back: f64 = line
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "agent never reached the returned hub: {line:?}\n{}",
                c.sh("cat /var/lib/outpost/agent/heartbeat.json; journalctl -u outpost --no-pager -n 60 -o short-unix | grep -v hint:").stdout
            )
        });
    let hub_back = hub
        .spawned_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let delay = Duration::from_secs_f64((agent_back - hub_back).max(0.0));
    eprintln!(
        "agent reached the hub {} ms after the hub process was started",
        delay.as_millis()
    );
    assert!(
        delay <= interval,
        "agent reached the returned hub after {delay:?}, more than one interval ({interval:?}):\n{}",
        c.sh("journalctl -u outpost --no-pager -n 30 -o short-unix | grep -v hint:").stdout
    );
    // ... and the hub lists it online again, with the same identity (the bound adds this
    // test's polling of the hub CLI to the agent's one interval)
    hub.wait_agents(interval.as_secs() + 2, |a| {
        a.iter()
            .any(|x| x["id"] == id2.as_str() && x["status"] == "online")
    })
    .unwrap_or_else(|| panic!("agent not listed online again: {:?}", hub.agents()));
    eprintln!(
        "hub lists the agent online {} ms after it returned",
        back.elapsed().as_millis()
    );

    // revoke → the agent exits with 10, the unit stays down (no restart), journal says why
    let restarts = show(&c, "NRestarts");
    hub.revoke(&id2);
    let ok = c.sh("for i in $(seq 1 100); do s=$(systemctl show -p ActiveState --value outpost.service); [ \"$s\" = failed ] || [ \"$s\" = inactive ] && exit 0; sleep 0.1; done; exit 1");
    assert!(ok.success(), "agent kept running after revocation");
    assert_eq!(show(&c, "ExecMainStatus"), "10");
    std::thread::sleep(Duration::from_secs(7)); // longer than RestartSec=5
    let state = show(&c, "ActiveState");
    assert!(
        state == "failed" || state == "inactive",
        "restarted after revocation: {state}"
    );
    assert_eq!(
        show(&c, "NRestarts"),
        restarts,
        "systemd restarted a revoked agent"
    );
    let ev = c.must_sh("outpost events");
    assert!(ev.contains("token_revoked"), "{ev}");

    // audit verify: intact, then a hand-edited line is named
    let v = c.must_sh("outpost audit verify");
    assert!(v.contains("intact"), "{v}");
    c.must_sh(
        "sed -i '1s/\"kind\":\"[a-z_]*\"/\"kind\":\"forged\"/' /var/lib/outpost/agent/events.jsonl",
    );
    let o = c.sh("outpost audit verify");
    assert_eq!(o.code(), Some(1), "{o:?}");
    assert!(
        o.stderr.contains("line 1") || o.stderr.contains("seq 1") || o.stderr.contains("record 1"),
        "{o:?}"
    );
}

#[test]
fn e2e_upgrade_waits_for_an_accepted_heartbeat() {
    let Some(c) = boot("hub-upg") else { return };
    let hub = Hub::start("upg", 2);
    let r = Release::new("hub-upg");
    r.publish(&["1.0.0", "1.1.0"], "stable");
    c.cp_in(&r.root, "/srv/release");
    let key = hub.mint_key();
    assert!(install_with_key(&c, &hub, &key).success());
    // hub + release + a 1 s soak: the health gate then also waits for the first heartbeat
    c.must_sh(&format!(
        "printf '[hub]\\nurl = \"{}\"\\n\\n' > /tmp/c && cat >> /tmp/c <<'EOF'\n{}EOF\nmv /tmp/c /etc/outpost/config.toml",
        hub.url,
        release::config("file:///srv/release", &r.pubkey, 1)
    ));
    let out = c.must_sh_as("alice", "sudo outpost upgrade");
    assert!(
        out.contains("upgraded outpost from 1.0.0 to 1.1.0"),
        "{out}"
    );
    // the next heartbeats carry the new version and the upgrade's result
    let a = hub
        .wait_agents(8, |a| {
            a.iter()
                .any(|x| x["version"] == "1.1.0" && x["last_upgrade"]["to"] == "1.1.0")
        })
        .unwrap_or_else(|| panic!("hub never saw the upgrade: {:?}", hub.agents()));
    assert_eq!(a.len(), 1, "the upgrade must not enroll again");
    assert_eq!(
        a[0]["last_upgrade"]["result"], "service_upgraded",
        "{:?}",
        a[0]
    );
}
