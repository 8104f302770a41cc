//! End-to-end: a fresh host comes up enrolled from one cloud-init user-data file.
//!
//! A real `outpost-hub` serves a signed release over HTTPS (throwaway CA) and the API; the
//! user-data is made by `outpost-hub keys create --cloud-init` (and `outpost cloud-init
//! render`), written to the NoCloud seed of a testbed container (bookworm, cloud-init
//! installed), and cloud-init runs it on the next boot, as on a new VPS.
//! Skips loudly without root/nspawn; fails instead of skipping when CI is set.
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::release::Release;
use support::tls::{hub_bin, Hub, TestCa};
use support::{require_testbed, Container, Output};

/// The admin token `support::tls::Hub` starts the hub with.
use support::hub::ADMIN_TOKEN;
const SEED: &str = "/var/lib/cloud/seed/nocloud";

fn hub_cli(hub: &Hub, args: &[&str]) -> Output {
    hub_cli_env(hub, args, &[])
}

fn hub_cli_env(hub: &Hub, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(hub_bin())
        .args(args)
        .envs(env.iter().copied())
        .env("OUTPOST_HUB_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("OUTPOST_HUB_URL", &hub.url)
        .env_remove("OUTPOST_RELEASE_PUBKEYS")
        .output()
        .expect("run outpost-hub")
        .into()
}

/// Boot a container that trusts the test CA, with cloud-init armed to run from `user_data`
/// (NoCloud seed) on the next boot; checks the user-data with `cloud-init schema` first.
fn arm(name: &str, ca: &TestCa, user_data: &str) -> Option<Container> {
    let tb = require_testbed()?;
    let c = tb.boot(name);
    ca.trust_in(&c);
    let put = |path: &str, text: &str| {
        let o = c.exec_with_stdin(
            &["sh", "-c", &format!("umask 077; cat > {path}")],
            text.as_bytes(),
        );
        assert!(o.success(), "writing {path}: {o:?}");
    };
    c.must_sh(&format!("mkdir -p {SEED}"));
    put(&format!("{SEED}/user-data"), user_data);
    put(&format!("{SEED}/meta-data"), "instance-id: iid-test-1\n");
    // The container shares the host's network: cloud-init must not configure it; there is no
    // disk to grow, and the minimal image has no `locales` package (update-locale fails).
    put(
        "/etc/cloud/cloud.cfg.d/91-outpost-e2e.cfg",
        "network: {config: disabled}\ngrowpart: {mode: 'off'}\nresize_rootfs: false\nlocale: false\n",
    );
    let o = c.sh(&format!(
        "cloud-init schema --config-file {SEED}/user-data --annotate"
    ));
    assert!(
        o.success(),
        "cloud-init schema refuses the user-data:\n{o:?}"
    );
    c.must_sh("rm -f /etc/cloud/cloud-init.disabled");
    c.reboot();
    Some(c)
}

/// `cloud-init status --wait` (bounded by the testbed's command timeout).
fn cloud_init_wait(c: &Container) -> Output {
    c.sh("timeout 300 cloud-init status --wait >/dev/null; echo $?; cloud-init status --long")
}

fn agents(c: &Container, url: &str) -> Vec<serde_json::Value> {
    let o = c.must_sh(&format!(
        "curl -fsS -H 'Authorization: Bearer {ADMIN_TOKEN}' {url}/api/v1/agents"
    ));
    serde_json::from_str::<serde_json::Value>(&o)
        .unwrap_or_else(|e| panic!("agents JSON: {e}: {o}"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Poll the hub until exactly one agent is online (heartbeats arrive); returns it.
fn one_online_agent(c: &Container, url: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let a = agents(c, url);
        if a.len() == 1 && a[0]["status"] == "online" && !a[0]["last_heartbeat_at"].is_null() {
            return a[0].clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no single online agent at the hub: {a:?}\n{}",
            c.sh("journalctl -u outpost --no-pager | tail -n 40").stdout
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn sha256_file(path: &std::path::Path) -> String {
    let o = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn key_of(user_data: &str) -> String {
    user_data
        .lines()
        .find_map(|l| l.trim().strip_prefix("OUTPOST_ENROLL_KEY="))
        .expect("the user-data writes OUTPOST_ENROLL_KEY")
        .to_string()
}

/// The key is in none of cloud-init's files, nor left in /run or /tmp by the bootstrap (its
/// private key directory, /run/outpost-key.*, is gone) (and, with `etc`, not in /etc/outpost
/// either).
fn assert_key_gone(c: &Container, key: &str, when: &str, etc: bool) {
    let etc = if etc { "/etc/outpost" } else { "" };
    let o = c.sh(&format!(
        "grep -rlF -D skip -- '{key}' /var/lib/cloud /run /tmp /var/log/cloud-init.log \
         /var/log/cloud-init-output.log {etc}"
    ));
    assert_eq!(
        o.code(),
        Some(1),
        "{when}: the enrollment key is still on disk in:\n{o:?}"
    );
    let left = c.sh("ls -d /run/outpost-key.* 2>/dev/null");
    assert!(
        left.stdout.trim().is_empty(),
        "{when}: the bootstrap left its key directory: {}",
        left.stdout
    );
}

#[test]
fn e2e_cloud_init_enrolls_a_new_host_once() {
    let ca = TestCa::new("ci-enroll");
    let rel = Release::new("ci-enroll");
    rel.publish(&["1.0.0", "1.1.0"], "stable");
    let hub = Hub::start_tls(&ca, &rel.root);
    let ca_file = ca.ca_cert.to_str().unwrap();

    // the hub mints the key and pins the channel's version from the signed manifest
    let o = hub_cli(
        &hub,
        &[
            "keys",
            "create",
            "--ttl",
            "1h",
            "--cloud-init",
            "--release-pubkey",
            &rel.pubkey,
            "--ca-file",
            ca_file,
        ],
    );
    assert!(o.success(), "keys create --cloud-init: {o:?}");
    let user_data = o.stdout.clone();
    assert!(user_data.starts_with("#cloud-config\n"), "{o:?}");
    assert!(user_data.len() < 32 * 1024, "{} bytes", user_data.len());
    let sha = sha256_file(&rel.tarball("1.1.0"));
    assert!(user_data.contains(&format!("SHA256='{sha}'")));
    assert!(user_data.contains("VERSION='1.1.0'"));
    let key = key_of(&user_data);
    assert_eq!(
        user_data.matches(&key).count(),
        1,
        "the key is in write_files only"
    );
    assert!(!o.stderr.contains(&key), "the key was printed on stderr");

    let Some(c) = arm("ci-enroll", &ca, &user_data) else {
        return;
    };
    let st = cloud_init_wait(&c);
    let log = || c.sh("tail -n 60 /var/log/cloud-init-output.log").stdout;
    assert!(
        st.stdout.starts_with("0\n") && st.stdout.contains("status: done"),
        "cloud-init did not finish cleanly:\n{st:?}\n{}",
        log()
    );
    let out = c.must_sh("cat /var/log/cloud-init-output.log");
    assert!(
        out.contains("is installed and enrolled with"),
        "bootstrap did not report success:\n{out}"
    );
    assert!(!out.contains(&key), "the key is in cloud-init's output log");
    assert_eq!(c.sh("systemctl is-active outpost.service").out(), "active");
    assert!(c
        .must_sh("/usr/local/bin/outpost --version")
        .contains("1.1.0"));
    // the secrets file: 0600, root's (systemd reads it as root; the agent cannot rewrite it),
    // and the used key is gone from it
    let st = c.must_sh("stat -c '%a %U' /etc/outpost/outpost.env");
    assert_eq!(st.trim(), "600 root");
    assert!(
        !c.must_sh("cat /etc/outpost/outpost.env")
            .contains("OUTPOST_ENROLL_KEY"),
        "the key is still in the secrets file"
    );
    assert_eq!(
        c.must_sh("stat -c '%a %U:%G' /etc/outpost").trim(),
        "755 root:root"
    );
    assert_key_gone(&c, &key, "after enrollment", true);
    let agent = one_online_agent(&c, &hub.url);
    let id = agent["id"].as_str().unwrap().to_string();
    assert!(c
        .must_sh("cat /var/lib/outpost/agent/identity.json")
        .contains(&id));

    // a reboot neither runs the bootstrap again nor enrolls a second time
    c.reboot();
    let st = cloud_init_wait(&c);
    assert!(st.stdout.starts_with("0\n"), "after reboot:\n{st:?}");
    assert_eq!(c.sh("systemctl is-active outpost.service").out(), "active");
    let again = one_online_agent(&c, &hub.url);
    assert_eq!(again["id"].as_str(), Some(id.as_str()), "enrolled again");
    assert_eq!(
        c.must_sh("grep -c 'is installed and enrolled with' /var/log/cloud-init-output.log")
            .trim(),
        "1",
        "the bootstrap ran twice"
    );
    assert_key_gone(&c, &key, "after a reboot", true);
}

#[test]
fn e2e_cloud_init_wrong_sha256_fails_loudly_and_installs_nothing() {
    let ca = TestCa::new("ci-badsha");
    let rel = Release::new("ci-badsha");
    rel.publish(&["1.0.0", "1.1.0"], "stable");
    let hub = Hub::start_tls(&ca, &rel.root);
    let ca_file = ca.ca_cert.to_str().unwrap();
    let o = hub_cli(
        &hub,
        &["keys", "create", "--ttl", "1h", "--ca-file", ca_file],
    );
    assert!(o.success(), "{o:?}");
    let key = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .expect("key: line")
        .trim()
        .to_string();
    // the other way to get user-data: `outpost cloud-init render`, pinned to a version
    let o: Output = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args([
            "cloud-init",
            "render",
            "--hub",
            &hub.url,
            "--version",
            "1.0.0",
            "--release-pubkey",
            &rel.pubkey,
            "--ca-file",
            ca_file,
        ])
        .env("OUTPOST_ENROLL_KEY", &key)
        .env_remove("OUTPOST_RELEASE_URL")
        .env_remove("OUTPOST_HUB_URL")
        .env_remove("OUTPOST_RELEASE_PUBKEYS")
        .output()
        .expect("run outpost")
        .into();
    assert!(o.success(), "cloud-init render: {o:?}");
    let sha = sha256_file(&rel.tarball("1.0.0"));
    assert!(o.stdout.contains(&format!("SHA256='{sha}'")), "{o:?}");
    let wrong = "0".repeat(64);
    let user_data = o.stdout.replace(&sha, &wrong);

    let Some(c) = arm("ci-badsha", &ca, &user_data) else {
        return;
    };
    let st = cloud_init_wait(&c);
    let code = st.stdout.lines().next().unwrap_or_default().to_string();
    assert!(
        code == "1" || code == "2",
        "cloud-init status --wait should report an error, got {code}:\n{st:?}"
    );
    assert!(
        st.stdout.contains("status: error") || st.stdout.contains("runcmd"),
        "cloud-init status --long shows no error:\n{st:?}"
    );
    let out = c.must_sh("cat /var/log/cloud-init-output.log");
    for want in [
        "error: checksum mismatch",
        &format!("pins sha256 {wrong}"),
        "hint: nothing was installed",
        "FAILED",
    ] {
        assert!(out.contains(want), "output lacks {want:?}:\n{out}");
    }
    assert!(
        !c.sh("test -e /opt/outpost").success(),
        "/opt/outpost exists"
    );
    assert!(
        !c.sh("test -e /etc/systemd/system/outpost.service")
            .success(),
        "a unit was installed"
    );
    assert!(!c.sh("test -e /usr/local/bin/outpost").success());
    // the key is still where a re-run finds it, and nowhere else
    assert_eq!(
        c.must_sh("stat -c '%a %U' /etc/outpost/outpost.env").trim(),
        "600 root"
    );
    assert_key_gone(
        &c,
        &key,
        "after the failed bootstrap (outside /etc/outpost/outpost.env)",
        false,
    );
}

#[test]
fn e2e_cloud_init_user_mode() {
    let ca = TestCa::new("ci-user");
    let rel = Release::new("ci-user");
    rel.publish(&["1.0.0", "1.1.0"], "stable");
    let hub = Hub::start_tls(&ca, &rel.root);
    // the release comes from GitHub Releases (a stand-in on loopback, so the host is told its
    // base URL the way a GitHub Enterprise one would be)
    let gh = support::github::GitHub::serve(&rel.root);
    let o = hub_cli_env(
        &hub,
        &[
            "keys",
            "create",
            "--cloud-init",
            "--mode",
            "user",
            "--run-as",
            "alice",
            "--release-url",
            "github:o/r",
            "--release-pubkey",
            &rel.pubkey,
            "--ca-file",
            ca.ca_cert.to_str().unwrap(),
        ],
        &[("OUTPOST_GITHUB_URL", &gh.url)],
    );
    assert!(o.success(), "{o:?}");
    for want in [
        "RELEASE_URL='github:o/r'".to_string(),
        format!("GITHUB_URL='{}'", gh.url),
    ] {
        assert!(o.stdout.contains(&want), "user-data lacks {want}");
    }
    let before_boot = gh.requests().len();
    let key = key_of(&o.stdout);
    let Some(c) = arm("ci-user", &ca, &o.stdout) else {
        return;
    };
    let st = cloud_init_wait(&c);
    assert!(
        st.stdout.starts_with("0\n"),
        "{st:?}\n{}",
        c.sh("tail -n 60 /var/log/cloud-init-output.log").stdout
    );
    assert_eq!(
        c.sh_as("alice", "systemctl --user is-active outpost.service")
            .out(),
        "active"
    );
    one_online_agent(&c, &hub.url);
    // the host fetched the tarball as a release asset, and outpost checked the signed manifest
    // through the same source
    let host_requests = gh.requests()[before_boot..].to_vec();
    for want in [
        format!(
            "/o/r/releases/download/v1.1.0/outpost-1.1.0-{}.tar.gz",
            support::release::TARGET
        ),
        "/o/r/releases/latest/download/manifest.json".to_string(),
    ] {
        assert!(
            host_requests.contains(&want),
            "host did not fetch {want}: {host_requests:?}"
        );
    }
    let conf = c.must_sh("cat /home/alice/.config/outpost/config.toml");
    assert!(conf.contains("github:o/r"), "{conf}");
    assert_eq!(
        c.must_sh("stat -c '%a %U' /home/alice/.config/outpost/outpost.env")
            .trim(),
        "600 alice"
    );
    assert!(!c.sh("test -e /run/outpost-cloud-init/enroll.env").success());
    // only the CA (for curl and the user's outpost) went to /etc/outpost
    assert_eq!(c.must_sh("ls /etc/outpost").trim(), "ca.pem");
    assert_key_gone(&c, &key, "user mode", true);
    let o = c.sh(&format!("grep -rlF -- '{key}' /home/alice"));
    assert_eq!(o.code(), Some(1), "key left in alice's home: {o:?}");
}
