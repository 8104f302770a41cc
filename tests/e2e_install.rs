//! End-to-end: `outpost install` / `uninstall` on real systemd (nspawn testbed).
//!
//! Each test boots its own Debian bookworm container with systemd as PID 1 and drives the
//! binary the way an operator would: over sudo, as a user with a logind session, as root.
//! Skips loudly without root/nspawn; fails instead of skipping when CI is set.
mod support;

use support::{assert_same_files, LISTING};

use support::Container;

/// Where the binary under test is copied inside the container.
const BIN: &str = "/srv/dist/outpost";

fn boot(name: &str) -> Option<Container> {
    support::boot_with_binary(name)
}

fn active(c: &Container, unit_scope: &str) -> String {
    c.sh(&format!("systemctl {unit_scope} is-active outpost.service"))
        .out()
        .to_string()
}

fn main_pid(c: &Container) -> String {
    c.must_sh("systemctl show -p MainPID --value outpost.service")
        .trim()
        .to_string()
}

/// `id -u USER` and `id -g USER`.
fn ids(c: &Container, user: &str) -> (String, String) {
    let id = |flag: &str| c.must_sh(&format!("id {flag} {user}")).trim().to_string();
    (id("-u"), id("-g"))
}

/// A command as `user` in the running agent's mount namespace (its sandbox's file system
/// view: `ProtectSystem=`, `InaccessiblePaths=`, …), with the agent's user bus address.
fn in_agent_sandbox(c: &Container, user: &str, cmd: &str) -> support::Output {
    let (uid, gid) = ids(c, user);
    let pid = main_pid(c);
    c.sh(&format!(
        "nsenter --mount=/proc/{pid}/ns/mnt --setuid {uid} --setgid {gid} \
         env DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{uid}/bus {cmd}"
    ))
}

/// The ids of the mounts at /run/user/UID the agent sees (a new tmpfs gets a new id).
fn agent_run_user_mounts(c: &Container, uid: &str) -> String {
    let pid = main_pid(c);
    c.must_sh(&format!(
        "awk '$5 == \"/run/user/{uid}\" {{ print $1 }}' /proc/{pid}/mountinfo | sort"
    ))
}

/// System mode: install turned on linger for the service user, its own manager runs, and the
/// agent reaches that manager's bus from inside its sandbox (while /home and /root stay
/// hidden from it).
fn assert_agent_reaches_its_user_manager(c: &Container, user: &str) {
    let linger = c.must_sh(&format!("loginctl show-user {user} -p Linger --value"));
    assert_eq!(linger.trim(), "yes", "linger for {user}");
    let (uid, _) = ids(c, user);
    let o = c.sh(&format!("systemctl is-active user@{uid}.service"));
    assert_eq!(o.out(), "active", "user@{uid}.service: {o:?}");
    let o = in_agent_sandbox(c, user, &format!("test -S /run/user/{uid}/bus"));
    assert!(o.success(), "no bus socket in the agent's sandbox: {o:?}");
    // really talk to the user manager over that bus, as the agent will
    let o = in_agent_sandbox(
        c,
        user,
        "busctl --user get-property org.freedesktop.systemd1 /org/freedesktop/systemd1 \
         org.freedesktop.systemd1.Manager Version",
    );
    assert!(
        o.success() && o.stdout.starts_with("s \""),
        "the agent's sandbox cannot reach its user manager: {o:?}"
    );
    for dir in ["/home", "/root"] {
        let o = in_agent_sandbox(c, user, &format!("ls {dir}"));
        assert!(
            !o.success() && o.stderr.contains("Permission denied"),
            "{dir} is visible in the agent's sandbox: {o:?}"
        );
    }
}

/// Shell: wait until /run/user/UID is no longer a mount point (logind stops the user's
/// manager and unmounts it some time after linger is turned off).
fn wait_unmounted(uid: &str) -> String {
    format!(
        "for i in $(seq 150); do mountpoint -q /run/user/{uid} || exit 0; sleep 0.2; done; exit 1"
    )
}

/// The user manager started again after the agent: a restarted user@UID, and a new
/// /run/user/UID tmpfs (linger off and on again: logind stops user@UID and unmounts its
/// runtime dir, then mounts a new one), both reach the running agent's sandbox (mount
/// propagation), without restarting the agent.
fn assert_user_manager_restarts_reach_the_agent(c: &Container, user: &str) {
    let (uid, _) = ids(c, user);
    let agent = main_pid(c);
    c.must_sh(&format!("systemctl restart user@{uid}.service"));
    c.wait_user(user);
    assert_agent_reaches_its_user_manager(c, user);
    let before = agent_run_user_mounts(c, &uid);
    c.must_sh(&format!("loginctl disable-linger {user}"));
    c.must_sh(&wait_unmounted(&uid));
    assert!(
        agent_run_user_mounts(c, &uid).trim().is_empty(),
        "/run/user/{uid} still mounted in the agent's sandbox"
    );
    c.must_sh(&format!("loginctl enable-linger {user}"));
    c.wait_user(user);
    let after = agent_run_user_mounts(c, &uid);
    assert!(
        !after.trim().is_empty() && after != before,
        "the new /run/user/{uid} did not reach the agent: {before:?} -> {after:?}"
    );
    assert_agent_reaches_its_user_manager(c, user);
    assert_eq!(main_pid(c), agent, "the agent was restarted");
}

#[test]
fn e2e_system_install_via_sudo_lifecycle() {
    let Some(c) = boot("sys-sudo") else { return };
    let before = c.must_sh(LISTING);

    // (g) detect --json inside the container
    let det = c.must_sh_as("alice", &format!("{BIN} detect --json"));
    let v: serde_json::Value = serde_json::from_str(&det).unwrap_or_else(|e| panic!("{e}: {det}"));
    assert_eq!(v["topology"]["init"]["kind"], "systemd", "{det}");
    assert!(
        v["topology"]["init"]["version"].as_u64().unwrap_or(0) >= 252,
        "{det}"
    );
    assert_eq!(
        v["topology"]["target_user"]["account"]["name"], "alice",
        "{det}"
    );
    assert_eq!(v["topology"]["target_user"]["linger"], false, "{det}");
    assert_eq!(v["topology"]["container"], "systemd-nspawn", "{det}");
    assert_eq!(v["recommendation"]["mode"], "user", "{det}");
    assert_eq!(v["recommendation"]["enable_linger"], true, "{det}");
    let det_root = c.must_sh_as("alice", &format!("sudo {BIN} detect --json"));
    let v: serde_json::Value = serde_json::from_str(&det_root).unwrap();
    assert_eq!(v["recommendation"]["mode"], "system", "{det_root}");
    assert_eq!(v["topology"]["sudo_user"]["name"], "alice", "{det_root}");

    // dry-run changes nothing and names every change
    let o = c.sh_as("alice", &format!("sudo {BIN} install --dry-run"));
    let plan = o.stdout.clone();
    assert!(o.success(), "{o:?}");
    for want in [
        "/opt/outpost/versions/",
        "/etc/systemd/system/outpost.service",
        "10-hardening.conf",
        "50-outpost.rules",
        "create    linger   alice (user@1000.service runs without a login)",
        "wait      alice's user manager and its bus",
        "start     outpost.service",
    ] {
        assert!(plan.contains(want), "dry-run lacks {want}:\n{o:?}");
    }
    assert_same_files(&before, &c.must_sh(LISTING), "dry-run changed files");

    // (a) sudo outpost install by a normal user
    let out = c.must_sh_as("alice", &format!("sudo {BIN} install"));
    assert!(out.contains("installed outpost"), "{out}");
    assert!(out.contains("enabled linger for alice"), "{out}");
    assert!(out.contains("next:"), "{out}");
    assert_eq!(active(&c, ""), "active");
    assert_eq!(
        c.must_sh("systemctl show -p User --value outpost.service")
            .trim(),
        "alice"
    );
    assert_agent_reaches_its_user_manager(&c, "alice");
    let receipt: serde_json::Value =
        serde_json::from_str(&c.must_sh("cat /var/lib/outpost/receipt.json")).unwrap();
    assert_eq!(receipt["linger_enabled_for"], "alice", "{receipt}");
    let pid = main_pid(&c);
    assert_eq!(c.must_sh(&format!("ps -o user= -p {pid}")).trim(), "alice");
    let verify = c.sh("systemd-analyze verify /etc/systemd/system/outpost.service");
    assert!(
        verify.success() && !verify.stderr.contains("outpost"),
        "systemd-analyze verify: {verify:?}"
    );
    let sec = c.must_sh("systemd-analyze security outpost.service --no-pager | tail -1");
    eprintln!("systemd-analyze security: {}", sec.trim());
    assert_eq!(
        c.must_sh("stat -c %a /etc/outpost/outpost.env").trim(),
        "600"
    );
    assert_eq!(
        c.must_sh("stat -c %a /etc/systemd/system/outpost.service")
            .trim(),
        "644"
    );
    assert_eq!(
        c.must_sh("readlink /usr/local/bin/outpost").trim(),
        "/opt/outpost/current/outpost"
    );
    let receipt = c.must_sh("cat /var/lib/outpost/receipt.json");
    assert!(receipt.contains("\"sha256\""), "{receipt}");
    // the agent sent READY: systemd considers it started, and it logs
    let journal = c.must_sh("journalctl -u outpost.service --no-pager -o cat");
    assert!(
        journal.contains("outpost agent") && journal.contains("started"),
        "{journal}"
    );

    // status over D-Bus, human and JSON, as the service user and as root
    let st = c.must_sh_as("alice", "outpost status");
    assert!(
        st.contains("system mode") && st.contains("active (running)"),
        "{st}"
    );
    let stj = c.must_sh("outpost status --json");
    let v: serde_json::Value = serde_json::from_str(&stj).unwrap();
    assert_eq!(v["unit"]["active_state"], "active", "{stj}");
    assert_eq!(v["installed"], true);

    // (f) polkit: alice may restart outpost.service without sudo, and nothing else
    c.must_sh_as("alice", "systemctl restart outpost.service");
    assert_ne!(main_pid(&c), pid, "restart did not restart");
    let out = c.must_sh_as("alice", "outpost restart");
    assert!(out.contains("active"), "{out}");
    let denied = c.sh_as(
        "alice",
        "systemctl --no-ask-password restart systemd-journald.service",
    );
    assert!(
        !denied.success(),
        "alice restarted another unit: {denied:?}"
    );
    let denied = c.sh_as(
        "alice",
        "systemctl --no-ask-password start systemd-tmpfiles-clean.service",
    );
    assert!(!denied.success(), "alice started another unit: {denied:?}");
    let bob = c.sh_as("bob", "systemctl --no-ask-password restart outpost.service");
    assert!(
        !bob.success(),
        "bob (not the service user) restarted outpost: {bob:?}"
    );

    // (c) re-install keeps an edited config and does not restart when nothing changed
    c.must_sh("printf '[agent]\\nlog_interval_secs = 5\\n' > /etc/outpost/config.toml");
    let pid = main_pid(&c);
    let out = c.must_sh_as("alice", &format!("sudo {BIN} install"));
    assert!(out.contains("no change"), "{out}");
    assert_eq!(main_pid(&c), pid, "re-install restarted the service");
    assert_eq!(
        c.must_sh("cat /etc/outpost/config.toml"),
        "[agent]\nlog_interval_secs = 5\n"
    );

    // reboot → active again, and the agent (started by the boot, racing logind's start of
    // alice's manager) reaches alice's user manager
    c.reboot();
    assert_eq!(
        active(&c, ""),
        "active",
        "{}",
        c.sh("systemctl status outpost --no-pager").stdout
    );
    c.wait_user("alice");
    assert_agent_reaches_its_user_manager(&c, "alice");

    // (d) uninstall keeps config, secrets and state
    c.must_sh("echo precious > /var/lib/outpost/data.txt");
    let out = c.must_sh_as("alice", "sudo outpost uninstall");
    assert!(out.contains("kept /etc/outpost/config.toml"), "{out}");
    assert!(
        out.contains("disabled linger for alice (install had enabled it)"),
        "{out}"
    );
    assert!(!c.sh("test -e /var/lib/systemd/linger/alice").success());
    assert_ne!(active(&c, ""), "active");
    assert!(!c
        .sh("test -e /etc/systemd/system/outpost.service")
        .success());
    assert!(
        !c.sh("test -e /opt/outpost").success(),
        "{}",
        c.sh("find /opt/outpost").stdout
    );
    assert!(!c
        .sh("test -e /etc/polkit-1/rules.d/50-outpost.rules")
        .success());
    assert_eq!(
        c.must_sh("cat /etc/outpost/config.toml"),
        "[agent]\nlog_interval_secs = 5\n"
    );
    assert_eq!(
        c.must_sh("cat /var/lib/outpost/data.txt").trim(),
        "precious"
    );
    assert!(c.sh("test -f /etc/outpost/outpost.env").success());

    // install again on top of the kept config (linger on again), then (e) purge leaves nothing
    let out = c.must_sh_as("alice", &format!("sudo {BIN} install"));
    assert!(out.contains("enabled linger for alice"), "{out}");
    assert_eq!(active(&c, ""), "active");
    assert_eq!(
        c.must_sh("cat /etc/outpost/config.toml"),
        "[agent]\nlog_interval_secs = 5\n"
    );
    let dry = c.must_sh_as("alice", "sudo outpost uninstall --purge --dry-run");
    assert!(dry.contains("would purge"), "{dry}");
    c.must_sh_as("alice", "sudo outpost uninstall --purge");
    assert!(c.sh("systemctl cat outpost.service").code() != Some(0));
    assert_same_files(&before, &c.must_sh(LISTING), "purge left files behind");
}

#[test]
fn e2e_user_mode_with_linger() {
    let Some(c) = boot("user-linger") else { return };
    assert!(!c.sh("test -e /var/lib/systemd/linger/bob").success());
    let before = c.must_sh(LISTING);
    // (b) a user without sudo, linger off
    let out = c.must_sh_as("bob", &format!("{BIN} install --user"));
    assert!(out.contains("enabled linger for bob"), "{out}");
    assert!(out.contains("user mode"), "{out}");
    assert!(c.sh("test -e /var/lib/systemd/linger/bob").success());
    let is_active = "systemctl --user is-active outpost.service";
    assert_eq!(c.must_sh_as("bob", is_active).trim(), "active");
    assert!(c.sh("test -L /home/bob/.local/bin/outpost").success());
    assert_eq!(
        c.must_sh("stat -c '%U %a' /home/bob/.config/outpost/outpost.env")
            .trim(),
        "bob 600"
    );
    let st = c.must_sh_as("bob", "~/.local/bin/outpost status");
    assert!(
        st.contains("user mode") && st.contains("active (running)"),
        "{st}"
    );

    // still active after a reboot, with nobody logged in
    c.reboot();
    c.wait_user("bob");
    let o = c.sh("runuser -u bob -- env XDG_RUNTIME_DIR=/run/user/1001 systemctl --user is-active outpost.service");
    assert_eq!(o.out(), "active", "{o:?}");

    // second install: no change
    let out = c.must_sh_as("bob", &format!("{BIN} install --user"));
    assert!(out.contains("no change"), "{out}");

    // purge: linger back off (install turned it on), nothing left
    let out = c.must_sh_as("bob", "~/.local/bin/outpost uninstall --purge");
    assert!(out.contains("disabled linger for bob"), "{out}");
    assert!(!c.sh("test -e /var/lib/systemd/linger/bob").success());
    assert_same_files(&before, &c.must_sh(LISTING), "purge left files behind");
}

#[test]
fn e2e_root_install_creates_system_user_and_purge_removes_it() {
    let Some(c) = boot("sys-root") else { return };
    let before = c.must_sh(LISTING);
    let passwd = c.must_sh("getent passwd outpost || true");
    assert!(passwd.trim().is_empty());
    let out = c.must_sh(&format!("{BIN} install --admin-group sudo"));
    assert!(out.contains("created system user outpost"), "{out}");
    assert!(out.contains("enabled linger for outpost"), "{out}");
    assert_eq!(active(&c, ""), "active");
    assert_eq!(
        c.must_sh("systemctl show -p User --value outpost.service")
            .trim(),
        "outpost"
    );
    // the new user's own manager, reachable from the agent's sandbox, also once restarted
    assert_agent_reaches_its_user_manager(&c, "outpost");
    assert_user_manager_restarts_reach_the_agent(&c, "outpost");
    // another user's manager started after the agent: its /run/user dir shows up, closed
    c.must_sh("loginctl enable-linger bob");
    c.wait_user("bob");
    let o = in_agent_sandbox(&c, "outpost", "ls /run/user/1001");
    assert!(
        !o.success() && o.stderr.contains("Permission denied"),
        "bob's runtime dir is open to the agent: {o:?}"
    );
    c.must_sh("loginctl disable-linger bob");
    // an update (re-install) turns linger back on when someone turned it off
    c.must_sh("loginctl disable-linger outpost");
    let out = c.must_sh(&format!("{BIN} install --admin-group sudo"));
    assert!(out.contains("enabled linger for outpost"), "{out}");
    assert_agent_reaches_its_user_manager(&c, "outpost");
    assert_eq!(
        c.must_sh("stat -c %U /var/lib/outpost/agent").trim(),
        "outpost"
    );
    // the admin group (alice is in sudo) may restart outpost without sudo; bob may not
    c.must_sh_as(
        "alice",
        "systemctl --no-ask-password restart outpost.service",
    );
    assert!(!c
        .sh_as("bob", "systemctl --no-ask-password restart outpost.service")
        .success());
    // the hardened service really runs (ProtectSystem=strict etc. did not break it)
    let o = c.must_sh("systemctl show -p NRestarts --value outpost.service");
    assert_eq!(o.trim(), "0");
    let out = c.must_sh("outpost uninstall --purge");
    assert!(out.contains("disabled linger for outpost"), "{out}");
    assert!(out.contains("deleted system user outpost"), "{out}");
    assert!(!c.sh("test -e /var/lib/systemd/linger/outpost").success());
    assert!(
        c.must_sh("getent passwd outpost || true").trim().is_empty(),
        "system user not deleted"
    );
    assert_same_files(&before, &c.must_sh(LISTING), "purge left files behind");
}

#[test]
fn e2e_bad_input_changes_nothing() {
    let Some(c) = boot("bad-input") else { return };
    let before = c.must_sh(LISTING);
    // (h) bad flags → exit 2, one line + hint
    for cmd in [
        format!("{BIN} install --bogus"),
        format!("{BIN} install --user --system"),
        format!("{BIN} install --hub not-a-url"),
        format!("{BIN} install --run-as nosuchuser"),
        format!("{BIN} frobnicate"),
    ] {
        let o = c.sh(&cmd);
        assert_eq!(o.code(), Some(2), "{cmd}: {o:?}");
        let lines: Vec<&str> = o.stderr.lines().collect();
        assert_eq!(lines.len(), 2, "{cmd}: want error + hint, got {o:?}");
        assert!(
            lines[0].starts_with("error: ") && lines[1].starts_with("hint: "),
            "{cmd}: {o:?}"
        );
    }
    // not root, asking for the system service
    let o = c.sh_as("bob", &format!("{BIN} install --system"));
    assert_eq!(o.code(), Some(2), "{o:?}");
    assert!(
        o.stderr
            .contains("hint: run `sudo outpost install --system`"),
        "{o:?}"
    );
    assert_same_files(&before, &c.must_sh(LISTING), "bad input changed files");

    // an unreadable (invalid) config → exit 2, nothing changed, not even the binary
    c.must_sh("mkdir -p /etc/outpost && printf '[agent\\n' > /etc/outpost/config.toml");
    let before = c.must_sh(&format!("{LISTING}; sha256sum /etc/outpost/config.toml"));
    let o = c.sh(&format!("{BIN} install"));
    assert_eq!(o.code(), Some(2), "{o:?}");
    assert!(
        o.stderr
            .starts_with("error: config file /etc/outpost/config.toml is invalid"),
        "{o:?}"
    );
    assert_eq!(o.stderr.lines().count(), 2, "{o:?}");
    assert_eq!(
        c.must_sh(&format!("{LISTING}; sha256sum /etc/outpost/config.toml")),
        before
    );
    // a config the service user cannot read → self-test says so, exit 2
    c.must_sh(
        "printf '[agent]\\n' > /etc/outpost/config.toml && chmod 000 /etc/outpost/config.toml",
    );
    let o = c.sh_as(
        "bob",
        &format!("{BIN} self-test --config /etc/outpost/config.toml --state-dir /tmp"),
    );
    assert_eq!(o.code(), Some(2), "{o:?}");
    assert!(
        o.stderr
            .contains("cannot read config file /etc/outpost/config.toml"),
        "{o:?}"
    );
    // uninstall when nothing is installed: clear error, exit 1
    let o = c.sh(&format!("{BIN} uninstall"));
    assert_eq!(o.code(), Some(1), "{o:?}");
    assert!(o.stderr.contains("not installed"), "{o:?}");
}
