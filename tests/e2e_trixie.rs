//! End-to-end on Debian 13 (trixie): the rendered cloud-init user-data passes trixie's
//! `cloud-init schema`, `sudo outpost install` / `uninstall --purge` work there, and install
//! and upgrade (with rollback) work in both modes.
//! (bookworm is covered by the other suites.)
mod support;

use outpost_cloudinit::{self as cloudinit, Mode, Params, Pinned};
use support::release::{Release, TARGET};

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
    assert_eq!(c.sh("systemctl is-active outpost.service").out(), "active");
    let verify = c.sh("systemd-analyze verify /etc/systemd/system/outpost.service");
    assert!(
        verify.success() && !verify.stderr.contains("outpost"),
        "{verify:?}"
    );
    c.must_sh_as("alice", "outpost restart");
    c.must_sh_as("alice", "sudo outpost uninstall --purge");
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
    c.must_sh_as("bob", "~/.local/bin/outpost uninstall --purge");
}
