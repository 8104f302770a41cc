//! End-to-end: `outpost upgrade` on real systemd — orchestrated upgrade and rollback in both
//! modes, broken versions rolled back automatically, refusals before the stop, package-only,
//! and crash safety (SIGKILL of the upgrader and power cuts at every step).
mod support;

use support::release::{self, Release};
use support::{require_testbed, Container};

const REL: &str = "/srv/release";

fn boot(name: &str) -> Option<Container> {
    let tb = require_testbed()?;
    let c = tb.boot(name);
    for v in ["1.0.0", "1.1.0", "1.2.0"] {
        c.cp_in(release::bin(v), &format!("/srv/dist/{v}/outpost"));
    }
    Some(c)
}

/// A release root with 1.0.0 and 1.1.0 on stable and 1.2.0 (the build with agent faults) on beta.
fn release(name: &str) -> Release {
    let r = Release::new(name);
    r.publish(&["1.0.0", "1.1.0"], "stable");
    r.publish(&["1.2.0"], "beta");
    r
}

fn current(c: &Container, base: &str) -> String {
    c.must_sh(&format!("readlink {base}/current"))
        .trim()
        .to_string()
}

fn main_pid(c: &Container) -> String {
    c.must_sh("systemctl show -p MainPID --value outpost.service")
        .trim()
        .to_string()
}

fn active(c: &Container) -> String {
    c.sh("systemctl is-active outpost.service")
        .out()
        .to_string()
}

fn events(c: &Container, sudo_user: &str) -> Vec<serde_json::Value> {
    let out = c.must_sh_as(sudo_user, "sudo outpost events --json");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Install 1.0.0 system-wide as alice, pointed at the release copied to /srv/release.
fn install_system(c: &Container, r: &Release, soak: u64) {
    c.cp_in(&r.root, REL);
    c.must_sh_as("alice", "sudo /srv/dist/1.0.0/outpost install");
    c.must_sh(&format!(
        "cat > /etc/outpost/config.toml <<'EOF'\n{}EOF",
        release::config(&format!("file://{REL}"), &r.pubkey, soak)
    ));
    assert_eq!(current(c, "/opt/outpost"), "versions/1.0.0");
}

#[test]
fn e2e_upgrade_and_rollback_system_mode() {
    let Some(c) = boot("upg-sys") else { return };
    let r = release("upg-sys");
    let before = c.must_sh("find /etc /opt /usr/local /var/lib/outpost -xdev 2>/dev/null | sort");
    install_system(&c, &r, 2);

    // dry-run names the change and does nothing
    let out = c.must_sh_as("alice", "sudo outpost upgrade --dry-run");
    assert!(
        out.contains("would upgrade outpost from 1.0.0 to 1.1.0"),
        "{out}"
    );
    assert_eq!(current(&c, "/opt/outpost"), "versions/1.0.0");

    // default: newest on stable
    let out = c.must_sh_as("alice", "sudo outpost upgrade");
    assert!(
        out.contains("upgraded outpost from 1.0.0 to 1.1.0"),
        "{out}"
    );
    assert_eq!(current(&c, "/opt/outpost"), "versions/1.1.0");
    assert_eq!(active(&c), "active");
    let st = c.must_sh("outpost status --json");
    assert!(st.contains("\"installed_version\": \"1.1.0\""), "{st}");
    let ev = events(&c, "alice");
    let up = ev
        .iter()
        .rev()
        .find(|e| e["kind"] == "service_upgraded")
        .expect("service_upgraded event");
    assert_eq!(up["data"]["to"], "1.1.0");
    for k in [
        "fetch_ms",
        "smoke_ms",
        "stop_ms",
        "swap_ms",
        "start_ms",
        "health_ms",
        "total_ms",
    ] {
        assert!(
            up["data"]["timings"][k].is_u64(),
            "timing {k} missing: {up}"
        );
    }
    assert!(
        c.sh("test -f /var/lib/outpost/upgrade.json").code() == Some(1),
        "pending record left"
    );
    assert_eq!(
        c.must_sh("readlink /opt/outpost/last-good").trim(),
        "versions/1.1.0"
    );

    // same version: nothing to do; older only with --target (the rollback command)
    let out = c.must_sh_as("alice", "sudo outpost upgrade");
    assert!(out.contains("nothing to do"), "{out}");
    let out = c.must_sh_as("alice", "sudo outpost upgrade --target 1.0.0");
    assert!(out.contains("from 1.1.0 to 1.0.0"), "{out}");
    assert_eq!(current(&c, "/opt/outpost"), "versions/1.0.0");
    assert_eq!(active(&c), "active");

    // not root: refused with the command that works
    let o = c.sh_as("alice", "outpost upgrade");
    assert_eq!(o.code(), Some(2), "{o:?}");
    assert!(o.stderr.contains("sudo outpost upgrade"), "{o:?}");

    // refused before the stop: tampered tarball, unreachable host — service never interrupted
    let pid = main_pid(&c);
    c.must_sh(&format!(
        // Flip every bit of one byte (writing a fixed byte is a no-op when it is already there).
        "cp -a {REL} /srv/tampered && perl -e 'open(F, \"+<\", $ARGV[0]) or die; seek(F, 4096, 0); read(F, $c, 1); seek(F, 4096, 0); print F chr(ord($c) ^ 0xff)' /srv/tampered/v1.2.0/outpost-1.2.0-{}.tar.gz && ! cmp -s {REL}/v1.2.0/outpost-1.2.0-{}.tar.gz /srv/tampered/v1.2.0/outpost-1.2.0-{}.tar.gz",
        release::TARGET,
        release::TARGET,
        release::TARGET
    ));
    let o = c.sh_as(
        "alice",
        "sudo outpost upgrade --from file:///srv/tampered --target 1.2.0",
    );
    assert_eq!(o.code(), Some(1), "{o:?}");
    assert!(
        o.stderr.contains("aborted") && o.stderr.contains("service was not touched"),
        "{o:?}"
    );
    assert!(
        o.stderr.to_lowercase().contains("sha256") || o.stderr.contains("size"),
        "{o:?}"
    );
    let o = c.sh_as(
        "alice",
        "sudo outpost upgrade --from http://127.0.0.1:9 --target 1.2.0",
    );
    assert_eq!(o.code(), Some(1), "{o:?}");
    assert!(o.stderr.contains("aborted"), "{o:?}");
    assert_eq!(
        main_pid(&c),
        pid,
        "service was interrupted by a refused upgrade"
    );
    assert!(
        c.sh("test -e /opt/outpost/versions/1.2.0").code() == Some(1),
        "refused version left on disk"
    );
    let kinds: Vec<String> = events(&c, "alice")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        kinds.iter().filter(|k| *k == "upgrade_aborted").count() >= 2,
        "{kinds:?}"
    );

    // --no-restart: package only, running service untouched, restart command printed
    let out = c.must_sh_as("alice", "sudo outpost upgrade --no-restart");
    assert!(out.contains("systemctl restart outpost.service"), "{out}");
    assert_eq!(current(&c, "/opt/outpost"), "versions/1.1.0");
    assert_eq!(main_pid(&c), pid);
    let kinds: Vec<String> = events(&c, "alice")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(kinds.last().map(String::as_str), Some("package_upgraded"));

    // the journal verifies, and purge still removes everything upgrades added
    c.must_sh_as("alice", "sudo outpost uninstall --purge");
    c.must_sh(&format!("rm -rf {REL} /srv/tampered"));
    let after = c.must_sh("find /etc /opt /usr/local /var/lib/outpost -xdev 2>/dev/null | sort");
    assert_eq!(after, before, "purge after upgrades left files");
}

#[test]
fn e2e_broken_versions_are_rolled_back() {
    let Some(c) = boot("upg-broken") else { return };
    let r = release("upg-broken");
    install_system(&c, &r, 4);
    for fault in ["exit-at-start", "no-ready", "crash-after-3s"] {
        c.must_sh(&format!("sed -i '/^OUTPOST_FAULT=/d' /etc/outpost/outpost.env && echo 'OUTPOST_FAULT=1.2.0:{fault}' >> /etc/outpost/outpost.env"));
        c.must_sh("systemctl restart outpost.service");
        let o = c.sh_as("alice", "sudo outpost upgrade --target 1.2.0");
        assert_eq!(o.code(), Some(1), "{fault}: {o:?}");
        assert!(o.stderr.contains("rolled back"), "{fault}: {o:?}");
        assert_eq!(current(&c, "/opt/outpost"), "versions/1.0.0", "{fault}");
        assert_eq!(active(&c), "active", "{fault}");
        let st = c.must_sh("outpost status --json");
        assert!(
            st.contains("\"installed_version\": \"1.0.0\""),
            "{fault}: {st}"
        );
        let ev = events(&c, "alice");
        let last = ev.last().unwrap();
        assert_eq!(
            last["kind"], "service_upgrade_rolled_back",
            "{fault}: {last}"
        );
        assert!(last["data"]["restored_ms"].is_u64(), "{last}");
    }
}

#[test]
fn e2e_upgrade_user_mode() {
    let Some(c) = boot("upg-user") else { return };
    let r = release("upg-user");
    c.cp_in(&r.root, REL);
    c.must_sh(&format!("chmod -R a+rX {REL} /srv/dist"));
    c.must_sh_as("bob", "/srv/dist/1.0.0/outpost install --user");
    c.must_sh_as(
        "bob",
        &format!(
            "cat > ~/.config/outpost/config.toml <<'EOF'\n{}EOF",
            release::config(&format!("file://{REL}"), &r.pubkey, 2)
        ),
    );
    let out = c.must_sh_as("bob", "~/.local/bin/outpost upgrade");
    assert!(
        out.contains("upgraded outpost from 1.0.0 to 1.1.0"),
        "{out}"
    );
    assert_eq!(
        current(&c, "/home/bob/.local/share/outpost"),
        "versions/1.1.0"
    );
    assert_eq!(
        c.must_sh_as("bob", "systemctl --user is-active outpost.service")
            .trim(),
        "active"
    );
    let out = c.must_sh_as("bob", "~/.local/bin/outpost upgrade --target 1.0.0");
    assert!(out.contains("from 1.1.0 to 1.0.0"), "{out}");
    assert_eq!(
        current(&c, "/home/bob/.local/share/outpost"),
        "versions/1.0.0"
    );
}

const STEPS: [&str; 7] = [
    "pending",
    "stopping",
    "swapping",
    "swapped",
    "starting",
    "health-check",
    "confirmed",
];

/// Start an upgrade that stops itself at `step`, as a transient unit, and wait until it is there.
fn paused_upgrade(c: &Container, step: &str, target: &str, n: usize) -> String {
    let unit = format!("upg-{n}");
    c.must_sh(&format!(
        "systemd-run --unit={unit} --setenv=OUTPOST_FAULT_PAUSE_AT={step} /usr/local/bin/outpost upgrade --target {target}"
    ));
    let o = c.sh("for i in $(seq 1 200); do test -f /var/lib/outpost/fault-paused && exit 0; sleep 0.05; done; exit 1");
    assert!(
        o.success(),
        "upgrader never reached step {step}: {}",
        c.sh(&format!("journalctl -u {unit} --no-pager")).stdout
    );
    c.must_sh("rm -f /var/lib/outpost/fault-paused");
    unit
}

#[test]
fn e2e_upgrade_crash_safety() {
    let Some(c) = boot("upg-crash") else { return };
    let r = release("upg-crash");
    install_system(&c, &r, 1);
    let mut n = 0;
    for how in ["sigkill", "powercut"] {
        for step in STEPS {
            n += 1;
            let cur = current(&c, "/opt/outpost");
            let from = cur.trim_start_matches("versions/").to_string();
            let to = if from == "1.0.0" { "1.1.0" } else { "1.0.0" };
            let unit = paused_upgrade(&c, step, to, n);
            match how {
                "sigkill" => {
                    c.must_sh(&format!("systemctl kill -s KILL {unit}"));
                    c.reboot();
                }
                _ => c.powercut_and_boot(),
            }
            let ctx = format!("{how} at {step} ({from} → {to})");
            let o = c.sh("for i in $(seq 1 100); do systemctl is-active --quiet outpost.service && exit 0; sleep 0.1; done; exit 1");
            assert!(
                o.success(),
                "{ctx}: service not active after boot: {}",
                c.sh("systemctl status outpost --no-pager; journalctl -u outpost -n 30 --no-pager")
                    .stdout
            );
            let now = current(&c, "/opt/outpost");
            assert!(
                now == format!("versions/{from}") || now == format!("versions/{to}"),
                "{ctx}: current is {now}"
            );
            if step != "confirmed" {
                assert_eq!(
                    now,
                    format!("versions/{from}"),
                    "{ctx}: a version never confirmed healthy must be reverted"
                );
            }
            let ver = c.must_sh("/usr/local/bin/outpost --version");
            assert!(
                ver.contains(now.trim_start_matches("versions/")),
                "{ctx}: {ver}"
            );
            assert!(
                c.sh("test -e /var/lib/outpost/upgrade.json").code() == Some(1),
                "{ctx}: pending record not resolved"
            );
            let partial =
                c.must_sh("find /opt/outpost /var/lib/outpost /etc/outpost -name '.*' 2>/dev/null");
            assert!(partial.trim().is_empty(), "{ctx}: partial files: {partial}");
            let receipt = c.must_sh("cat /var/lib/outpost/receipt.json");
            assert!(
                receipt.contains(&format!(
                    "\"version\": \"{}\"",
                    now.trim_start_matches("versions/")
                )),
                "{ctx}: receipt not synced: {receipt}"
            );
        }
    }
}
