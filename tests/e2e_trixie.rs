//! End-to-end on Debian 13 (trixie): the rendered cloud-init user-data passes trixie's
//! `cloud-init schema`, `sudo outpost install` / `uninstall --purge` work there, and install
//! and upgrade (with rollback) work in both modes.
//! (bookworm is covered by the other suites.)
mod support;

use outpost_cloudinit::{self as cloudinit, Mode, Params, Pinned};
use support::release::{Release, TARGET};
use support::Container;

/// System mode on trixie: install turned linger on for the service user, its manager runs,
/// and the agent reaches that manager's bus from inside its sandbox (mount namespace), also
/// after the manager and its /run/user/UID tmpfs were started again (linger off and on), while
/// /home and /root stay hidden from it.
fn assert_agent_reaches_its_user_manager(c: &Container, user: &str) {
    let linger = c.must_sh(&format!("loginctl show-user {user} -p Linger --value"));
    assert_eq!(linger.trim(), "yes", "linger for {user}");
    let uid = c.must_sh(&format!("id -u {user}")).trim().to_string();
    let gid = c.must_sh(&format!("id -g {user}")).trim().to_string();
    let sandbox = |cmd: &str| {
        let pid = c.must_sh("systemctl show -p MainPID --value outpost.service");
        c.sh(&format!(
            "nsenter --mount=/proc/{}/ns/mnt --setuid {uid} --setgid {gid} \
             env DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{uid}/bus {cmd}",
            pid.trim()
        ))
    };
    let reaches = || {
        let o = c.sh(&format!("systemctl is-active user@{uid}.service"));
        assert_eq!(o.out(), "active", "user@{uid}.service: {o:?}");
        let o = sandbox(
            "busctl --user get-property org.freedesktop.systemd1 /org/freedesktop/systemd1 \
             org.freedesktop.systemd1.Manager Version",
        );
        assert!(
            o.success() && o.stdout.starts_with("s \""),
            "the agent's sandbox cannot reach its user manager: {o:?}"
        );
    };
    reaches();
    for dir in ["/home", "/root"] {
        let o = sandbox(&format!("ls {dir}"));
        assert!(
            !o.success() && o.stderr.contains("Permission denied"),
            "{dir} is visible in the agent's sandbox: {o:?}"
        );
    }
    // loginctl from a unit: trixie's logind refuses SetUserLinger ("Protocol driver not
    // attached") from the test bed's nsenter'd shell, whose cgroup is outside the machine's.
    let loginctl = |verb: &str| {
        c.must_sh(&format!(
            "systemd-run -q --wait --pipe loginctl {verb}-linger {user}"
        ))
    };
    loginctl("disable");
    c.must_sh(&format!(
        "for i in $(seq 150); do mountpoint -q /run/user/{uid} || exit 0; sleep 0.2; done; exit 1"
    ));
    loginctl("enable");
    c.wait_user(user);
    reaches();
}

/// User-data for a real signed release (the host would check this sha256 and signature).
fn user_data(r: &Release) -> String {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.root.join("manifest.json")).unwrap()).unwrap();
    let sha = manifest["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["version"] == "1.1.0")
        .map(|x| {
            x["artifacts"][TARGET]["sha256"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .expect("1.1.0 in the manifest");
    let minisig = std::fs::read_to_string(
        r.root
            .join(format!("v1.1.0/outpost-1.1.0-{TARGET}.tar.gz.minisig")),
    )
    .unwrap();
    let p = Params {
        hub_url: "https://hub.example.net".into(),
        enroll_key: "opk_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
        release_url: "https://releases.example.net/outpost".into(),
        release: Pinned {
            version: semver::Version::new(1, 1, 0),
            target: TARGET.into(),
            sha256: sha,
            minisig,
            pubkeys: vec![r.pubkey.clone()],
        },
        mode: Mode::System,
        run_as: None,
        ca_pem: None,
    };
    cloudinit::render(&p).expect("render user-data")
}

#[test]
fn e2e_trixie_cloud_init_schema_and_install() {
    let Some(tb) = support::require_testbed_suite("trixie") else {
        return;
    };
    let c = tb.boot("trixie");
    assert!(c
        .must_sh("cat /etc/os-release")
        .contains("VERSION_ID=\"13\""));

    let r = Release::new("trixie");
    r.publish(&["1.0.0", "1.1.0"], "stable");
    let ud = user_data(&r);
    assert!(ud.len() < 32 * 1024, "user-data is {} bytes", ud.len());
    let f = r.work.join("user-data");
    std::fs::write(&f, &ud).unwrap();
    c.cp_in(&f, "/root/user-data");
    let o =
        c.sh("cloud-init --version; cloud-init schema --config-file /root/user-data --annotate");
    assert!(
        o.success() && o.stdout.contains("Valid schema"),
        "trixie's cloud-init schema refuses the user-data:\n{o:?}"
    );

    // install and purge on Debian 13
    c.cp_in(support::binary_under_test(), "/srv/dist/outpost");
    let before = c.must_sh("find /etc /opt /usr/local /var/lib/outpost -xdev 2>/dev/null | sort");
    let det = c.must_sh_as("alice", "sudo /srv/dist/outpost detect --json");
    let v: serde_json::Value = serde_json::from_str(&det).unwrap();
    assert_eq!(v["distro"]["family"], "debian", "{det}");
    assert_eq!(v["distro"]["version"], "13", "{det}");
    assert!(
        v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| !w.as_str().unwrap().contains("untested")),
        "{det}"
    );
    let out = c.must_sh_as("alice", "sudo /srv/dist/outpost install");
    assert!(out.contains("installed outpost"), "{out}");
    assert!(out.contains("enabled linger for alice"), "{out}");
    assert_eq!(c.sh("systemctl is-active outpost.service").out(), "active");
    assert_agent_reaches_its_user_manager(&c, "alice");
    let verify = c.sh("systemd-analyze verify /etc/systemd/system/outpost.service");
    assert!(
        verify.success() && !verify.stderr.contains("outpost"),
        "{verify:?}"
    );
    c.must_sh_as("alice", "outpost restart");
    let out = c.must_sh_as("alice", "sudo outpost uninstall --purge");
    assert!(out.contains("disabled linger for alice"), "{out}");
    assert!(!c.sh("test -e /var/lib/systemd/linger/alice").success());
    let after = c.must_sh("find /etc /opt /usr/local /var/lib/outpost -xdev 2>/dev/null | sort");
    let b: std::collections::BTreeSet<&str> = before.lines().collect();
    let a: std::collections::BTreeSet<&str> = after.lines().collect();
    assert_eq!(
        a.difference(&b).count() + b.difference(&a).count(),
        0,
        "purge changed the file set: +{:?} -{:?}",
        a.difference(&b).collect::<Vec<_>>(),
        b.difference(&a).collect::<Vec<_>>()
    );
}

/// Install and upgrade on Debian 13 in both modes: system (sudo user) and user (linger),
/// each upgraded to the channel's newest and rolled back with `--target`, on the privilege
/// split layout.
#[test]
fn e2e_trixie_install_and_upgrade_both_modes() {
    let Some(tb) = support::require_testbed_suite("trixie") else {
        return;
    };
    let c = tb.boot("trixie-upg");
    for v in ["1.0.0", "1.1.0"] {
        c.cp_in(support::release::bin(v), &format!("/srv/dist/{v}/outpost"));
    }
    let r = Release::new("trixie-upg");
    r.publish(&["1.0.0", "1.1.0"], "stable");
    c.cp_in(&r.root, "/srv/release");
    c.must_sh("chmod -R a+rX /srv/release /srv/dist");
    let config = support::release::config("file:///srv/release", &r.pubkey, 1);

    // system mode
    c.must_sh_as("alice", "sudo /srv/dist/1.0.0/outpost install");
    c.must_sh(&format!(
        "cat > /etc/outpost/config.toml <<'EOF'\n{config}EOF"
    ));
    assert_eq!(
        c.must_sh("stat -c '%U %a' /var/lib/outpost /var/lib/outpost/agent /etc/outpost")
            .trim(),
        "root 755\nalice 700\nroot 755"
    );
    let out = c.must_sh_as("alice", "sudo outpost upgrade");
    assert!(
        out.contains("upgraded outpost from 1.0.0 to 1.1.0"),
        "{out}"
    );
    assert_eq!(c.sh("systemctl is-active outpost.service").out(), "active");
    assert_eq!(
        c.must_sh("readlink /opt/outpost/current /opt/outpost/last-good")
            .trim(),
        "versions/1.1.0\nversions/1.1.0"
    );
    let out = c.must_sh_as("alice", "sudo outpost upgrade --target 1.0.0");
    assert!(out.contains("from 1.1.0 to 1.0.0"), "{out}");
    assert_eq!(c.sh("systemctl is-active outpost.service").out(), "active");
    c.must_sh_as("alice", "sudo outpost uninstall --purge");

    // user mode
    c.must_sh_as("bob", "/srv/dist/1.0.0/outpost install --user");
    c.must_sh_as(
        "bob",
        &format!("cat > ~/.config/outpost/config.toml <<'EOF'\n{config}EOF"),
    );
    let out = c.must_sh_as("bob", "~/.local/bin/outpost upgrade");
    assert!(
        out.contains("upgraded outpost from 1.0.0 to 1.1.0"),
        "{out}"
    );
    assert_eq!(
        c.must_sh_as("bob", "systemctl --user is-active outpost.service")
            .trim(),
        "active"
    );
    let out = c.must_sh_as("bob", "~/.local/bin/outpost upgrade --target 1.0.0");
    assert!(out.contains("from 1.1.0 to 1.0.0"), "{out}");
    assert_eq!(
        c.must_sh_as("bob", "readlink ~/.local/share/outpost/current")
            .trim(),
        "versions/1.0.0"
    );
    isolated_on_trixie(&c);
    c.must_sh_as("bob", "~/.local/bin/outpost uninstall --purge");
}

/// A pack of one supervised action, one round of [`support::runs::SNOOP_SH`].
const ISO_PACK: &str = r#"[pack]
name = "iso"
version = "1.0.0"
description = "run isolation on trixie"

[[action]]
id = "snoop"
command = ["bin/snoop.sh"]
[action.supervise]
max_rounds = 1
"#;

/// Runs are isolated from the agent's files on trixie's systemd too (user mode, no hub): a
/// workload declared in the config runs one round of the snoop script, which can reach
/// nothing of the agent's but its own work dir; the agent journals that it proved it.
fn isolated_on_trixie(c: &Container) {
    c.must_sh("rm -rf /home/bob/iso && mkdir -p /home/bob/iso/bin");
    c.exec_with_stdin(
        &["sh", "-c", "cat > /home/bob/iso/pack.toml"],
        ISO_PACK.as_bytes(),
    );
    c.exec_with_stdin(
        &["sh", "-c", "cat > /home/bob/iso/bin/snoop.sh"],
        support::runs::SNOOP_SH.as_bytes(),
    );
    c.must_sh("chmod 0755 /home/bob/iso/bin/snoop.sh && chown -R bob /home/bob/iso");
    c.must_sh_as(
        "bob",
        "~/.local/bin/outpost pack install --user /home/bob/iso",
    );
    c.must_sh_as(
        "bob",
        "printf '\\n[[workload]]\\nname = \"snoop\"\\naction = \"iso/snoop\"\\n' >> ~/.config/outpost/config.toml && systemctl --user restart outpost.service",
    );
    let agent = "/home/bob/.local/state/outpost/agent";
    let log = format!("{agent}/runs/w-snoop/round-1.log");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let out = loop {
        let out = c.sh(&format!("cat {log}")).stdout;
        if out.contains("runs-seen:") {
            break out;
        }
        assert!(
            std::time::Instant::now() < until,
            "the workload's round never ran: {}",
            c.sh("journalctl --no-pager -o cat _SYSTEMD_USER_UNIT=outpost.service | tail -30")
                .stdout
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    support::runs::snoop_verdict(&out, "w-snoop", true);
    let ev = c.must_sh(&format!(
        "grep '\"runs_isolation\"' {agent}/events.jsonl | tail -1"
    ));
    let ev: serde_json::Value = serde_json::from_str(ev.trim()).expect("a runs_isolation event");
    assert_eq!(ev["data"]["isolated"], true, "{ev}");
}
