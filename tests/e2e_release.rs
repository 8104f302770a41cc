//! End-to-end: the one-liner `curl -sSL https://HOST/install.sh | sudo bash` against a real
//! `outpost-hub` serving signed release roots over HTTPS (throwaway CA, trusted inside the
//! container), on real systemd (nspawn testbed).
//!
//! Release roots are made with the real packager from the test builds of
//! `ci/build-variants.sh` (1.0.0, 1.1.0, 1.2.0; `OUTPOST_E2E_VARIANTS` reuses a build).
//! Every refusal must leave the host exactly as it was (same file listing, no unit), exit
//! non-zero and say `error:` + `hint:`.
//! Skips loudly without root/nspawn; fails instead of skipping when CI is set.
mod support;

use support::{assert_same_files, LISTING};

use std::path::{Path, PathBuf};
use std::process::Command;

use support::release::{Release, TARGET};
use support::tls::{Hub, TestCa};
use support::{require_testbed, Container, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A booted container that trusts the test CA.
fn boot(name: &str, ca: &TestCa) -> Option<Container> {
    let tb = require_testbed()?;
    let c = tb.boot(name);
    ca.trust_in(&c);
    Some(c)
}

/// `curl -fsSL URL/install.sh | sudo [env ENV] bash -s -- ARGS` as alice.
fn one_liner(c: &Container, url: &str, env: &str, args: &str) -> Output {
    let sudo = if env.is_empty() {
        "sudo".to_string()
    } else {
        format!("sudo env {env}")
    };
    c.sh_as(
        "alice",
        &format!("set -o pipefail; curl -fsSL {url}/install.sh | {sudo} bash -s -- {args}"),
    )
}

fn all_output(o: &Output) -> String {
    format!("{}\n{}", o.stdout, o.stderr)
}

fn unit_exists(c: &Container) -> bool {
    c.sh("systemctl cat outpost.service >/dev/null 2>&1")
        .success()
        || c.sh("test -e /etc/systemd/system/outpost.service")
            .success()
}

/// Refused: non-zero, `error:` + `hint:`, every `want` (case-insensitive) in the output,
/// and nothing on disk changed.
fn assert_refused(c: &Container, o: &Output, before: &str, want: &[&str], what: &str) {
    let text = all_output(o);
    assert!(!o.success(), "{what}: was not refused:\n{o:?}");
    eprintln!(
        "refused ({what}), exit {:?}:\n{}",
        o.code(),
        o.stderr.trim_end()
    );
    assert!(
        text.contains("error:") && text.contains("hint:"),
        "{what}: no error:/hint: lines:\n{o:?}"
    );
    let lower = text.to_lowercase();
    for w in want {
        assert!(
            lower.contains(&w.to_lowercase()),
            "{what}: output lacks {w:?}:\n{o:?}"
        );
    }
    assert!(!unit_exists(c), "{what}: a unit was installed:\n{o:?}");
    assert!(
        !c.sh("test -e /opt/outpost").success(),
        "{what}: /opt/outpost exists:\n{o:?}"
    );
    assert_same_files(before, &c.must_sh(LISTING), what);
}

fn main_pid(c: &Container) -> String {
    c.must_sh("systemctl show -p MainPID --value outpost.service")
        .trim()
        .to_string()
}

fn installed_version(c: &Container) -> String {
    c.must_sh("/usr/local/bin/outpost --version")
        .trim()
        .to_string()
}

fn copy_tree(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// Replace the contents of the served dir `to` with `from` (the hub reads files per request).
fn serve_copy(from: &Path, to: &Path) {
    for e in std::fs::read_dir(to).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("outpost-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// a, b, c, h, i: the happy path, idempotence, uninstall, truncated downloads, pinning and
/// dry-run, in one container.
#[test]
fn e2e_one_liner_lifecycle() {
    let ca = TestCa::new("lifecycle");
    let Some(c) = boot("rel-lifecycle", &ca) else {
        return;
    };
    let rel = Release::new("lifecycle");
    std::fs::create_dir_all(&rel.root).unwrap();
    let hub = Hub::start_tls(&ca, &rel.root);
    rel.publish_with_base_url(&["1.0.0", "1.1.0"], "stable", &hub.url);
    let url = hub.url.clone();
    let script = std::fs::read(rel.root.join("install.sh")).unwrap();
    let before = c.must_sh(LISTING);
    // the CA is trusted: curl reaches the hub over https
    c.must_sh_as(
        "alice",
        &format!("curl -fsS {url}/channels/stable | grep -qx 1.1.0"),
    );

    // (h) truncated downloads run nothing: cut in the header, inside a function, and inside
    // the last line (right after `main`, which would otherwise run it without its arguments)
    let text = String::from_utf8_lossy(&script).into_owned();
    let in_fn = text
        .find("run_install() {")
        .expect("run_install in install.sh")
        + 200;
    let last = text.trim_end().rfind('\n').unwrap() + 1;
    let main_at = last + text[last..].find("main").expect("main on the last line") + 4;
    for (cut, what) in [
        (3000, "first 3000 bytes"),
        (in_fn, "cut inside run_install"),
        (main_at, "cut right after `main`"),
        (text.trim_end().len() - 1, "last byte missing"),
    ] {
        let o = c.sh_as(
            "alice",
            &format!(
                "curl -fsSL {url}/install.sh | head -c {cut} | sudo bash -s -- --uninstall --purge; \
                 curl -fsSL {url}/install.sh | head -c {cut} | sudo bash"
            ),
        );
        assert!(
            !unit_exists(&c),
            "truncated ({what}) installed a unit:\n{o:?}"
        );
        assert_same_files(
            &before,
            &c.must_sh(LISTING),
            &format!("truncated install.sh ({what})"),
        );
    }

    // (i) --dry-run changes nothing
    let o = one_liner(&c, &url, "", "--dry-run");
    assert!(o.success(), "dry-run failed:\n{o:?}");
    assert!(
        all_output(&o).contains("/opt/outpost/versions/1.1.0"),
        "dry-run does not name the version dir:\n{o:?}"
    );
    assert_same_files(&before, &c.must_sh(LISTING), "--dry-run changed files");
    assert!(!unit_exists(&c));

    // (a) the one-liner installs the channel's version as a system service
    let o = one_liner(&c, &url, "", "");
    assert!(
        o.success(),
        "install failed:\n{o:?}\nhub log:\n{}",
        hub.log()
    );
    let out = all_output(&o);
    eprintln!("one-liner install:\n{}", out.trim_end());
    assert!(out.contains("verified outpost-1.1.0-"), "{out}");
    assert_eq!(
        c.sh("systemctl is-active outpost.service").out(),
        "active",
        "{}",
        c.sh("systemctl status outpost --no-pager").stdout
    );
    assert!(
        installed_version(&c).contains("1.1.0"),
        "{}",
        installed_version(&c)
    );
    let st = c.must_sh_as("alice", "outpost status");
    assert!(st.contains("system mode") && st.contains("1.1.0"), "{st}");
    assert_eq!(
        c.must_sh("systemctl show -p User --value outpost.service")
            .trim(),
        "alice"
    );

    // (b) again: no change, no restart
    let pid = main_pid(&c);
    let o = one_liner(&c, &url, "", "");
    assert!(o.success(), "re-install failed:\n{o:?}");
    assert!(all_output(&o).contains("no change"), "{o:?}");
    assert_eq!(main_pid(&c), pid, "re-install restarted the service");

    // (c) uninstall --purge through the one-liner leaves nothing
    let o = one_liner(&c, &url, "", "--uninstall --purge");
    assert!(o.success(), "uninstall --purge failed:\n{o:?}");
    for p in [
        "/opt/outpost",
        "/etc/outpost",
        "/var/lib/outpost",
        "/usr/local/bin/outpost",
    ] {
        assert!(!c.sh(&format!("test -e {p}")).success(), "{p} left behind");
    }
    assert!(!unit_exists(&c), "unit left behind");
    assert_same_files(&before, &c.must_sh(LISTING), "uninstall --purge left files");

    // (i) OUTPOST_VERSION pins an older version; --version does the same
    let o = one_liner(&c, &url, "OUTPOST_VERSION=1.0.0", "");
    assert!(o.success(), "pinned install failed:\n{o:?}");
    assert!(
        installed_version(&c).contains("1.0.0"),
        "{}",
        installed_version(&c)
    );
    assert_eq!(c.sh("systemctl is-active outpost.service").out(), "active");
    // a dry-run of the channel's version on top changes nothing
    let listing = c.must_sh(LISTING);
    let pid = main_pid(&c);
    let o = one_liner(&c, &url, "", "--dry-run");
    assert!(o.success(), "dry-run over 1.0.0 failed:\n{o:?}");
    assert_same_files(
        &listing,
        &c.must_sh(LISTING),
        "--dry-run over 1.0.0 changed files",
    );
    assert_eq!(main_pid(&c), pid, "dry-run restarted the service");
    assert!(installed_version(&c).contains("1.0.0"));
    let o = one_liner(&c, &url, "", "--uninstall --purge");
    assert!(o.success(), "{o:?}");
    let o = one_liner(&c, &url, "", "--version 1.0.0 --dry-run");
    assert!(o.success(), "{o:?}");
    assert_same_files(&before, &c.must_sh(LISTING), "pinned dry-run after purge");
}

/// d, e, f, g: tampered tarball, tarball signature, manifest, and a manifest signed by an
/// unknown key are refused before anything is installed; the untampered root then installs.
#[test]
fn e2e_one_liner_refuses_tampered_releases() {
    let ca = TestCa::new("tamper");
    let Some(c) = boot("rel-tamper", &ca) else {
        return;
    };
    let served = tmp_dir("served");
    let hub = Hub::start_tls(&ca, &served);
    let url = hub.url.clone();
    let rel = Release::new("tamper");
    rel.publish_with_base_url(&["1.0.0", "1.1.0"], "stable", &url);
    // the same versions (same bytes), published later with a key nobody trusts
    let other = Release::new("otherkey");
    other.publish_with_base_url(&["1.0.0", "1.1.0"], "stable", &url);
    assert_ne!(rel.pubkey, other.pubkey);
    let good = tmp_dir("good-root");
    copy_tree(&rel.root, &good);
    let before = c.must_sh(LISTING);
    let tarball_rel = format!("v1.1.0/outpost-1.1.0-{TARGET}.tar.gz");

    // (d) one byte appended to the tarball: install.sh's embedded sha256 catches it
    serve_copy(&good, &served);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(served.join(&tarball_rel))
        .unwrap();
    std::io::Write::write_all(&mut f, b"\0").unwrap();
    drop(f);
    let o = one_liner(&c, &url, "", "");
    assert_refused(&c, &o, &before, &["checksum mismatch"], "tampered tarball");

    // (e) tarball signature damaged (the tarball itself is intact)
    serve_copy(&good, &served);
    let sig = served.join(format!("{tarball_rel}.minisig"));
    let text = std::fs::read_to_string(&sig).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // line 2 is the base64 signature: flip one character well inside it
    let mut b: Vec<u8> = lines[1].clone().into_bytes();
    b[40] = if b[40] == b'A' { b'B' } else { b'A' };
    lines[1] = String::from_utf8(b).unwrap();
    std::fs::write(&sig, lines.join("\n") + "\n").unwrap();
    let o = one_liner(&c, &url, "", "");
    assert_refused(
        &c,
        &o,
        &before,
        &["signature"],
        "tampered tarball signature",
    );

    // (f) manifest edited after signing
    serve_copy(&good, &served);
    let mpath = served.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    m["generated_at"] = serde_json::Value::String("2000-01-01T00:00:00Z".into());
    std::fs::write(&mpath, serde_json::to_string_pretty(&m).unwrap() + "\n").unwrap();
    let o = one_liner(&c, &url, "", "");
    assert_refused(
        &c,
        &o,
        &before,
        &["signature", "manifest"],
        "tampered manifest",
    );

    // (g) a valid manifest, signed by a key install.sh does not embed
    serve_copy(&good, &served);
    for f in ["manifest.json", "manifest.json.minisig"] {
        std::fs::copy(other.root.join(f), served.join(f)).unwrap();
    }
    let o = one_liner(&c, &url, "", "");
    assert_refused(
        &c,
        &o,
        &before,
        &["not trusted"],
        "manifest signed by an unknown key",
    );

    // control: the untampered root installs (so the refusals above were for the tampering)
    serve_copy(&good, &served);
    let o = one_liner(&c, &url, "", "");
    assert!(
        o.success(),
        "untampered install failed:\n{o:?}\nhub log:\n{}",
        hub.log()
    );
    assert_eq!(c.sh("systemctl is-active outpost.service").out(), "active");
    assert!(installed_version(&c).contains("1.1.0"));
    let o = one_liner(&c, &url, "", "--uninstall --purge");
    assert!(o.success(), "{o:?}");
    assert_same_files(
        &before,
        &c.must_sh(LISTING),
        "purge after the control install",
    );
    let _ = std::fs::remove_dir_all(&served);
    let _ = std::fs::remove_dir_all(&good);
}

/// The README's key-file one-liner: the lines after `# on the host` in its code block.
fn readme_key_line() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = &readme[readme
        .find("## Installing on a host")
        .expect("README has the one-liner section")..];
    let from = &section[section
        .find("# on the host")
        .expect("README: # on the host")..];
    let body = &from[from.find('\n').unwrap() + 1..from.find("```").unwrap()];
    assert!(
        body.contains("mktemp")
            && body.contains("OUTPOST_ENROLL_KEY_FILE")
            && !body.contains("/tmp/"),
        "README one-liner is not the key-file way:\n{body}"
    );
    body.to_string()
}

/// Rewrite bundle `from` into `to` (same entries, same order) after `edit` changed the
/// extracted files.
fn rebundle(from: &Path, to: &Path, edit: &dyn Fn(&Path)) {
    let d = tmp_dir("rebundle");
    let list = Command::new("tar").arg("-tf").arg(from).output().unwrap();
    assert!(list.status.success());
    let names: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(from)
        .arg("-C")
        .arg(&d)
        .status()
        .unwrap();
    assert!(st.success());
    edit(&d);
    let st = Command::new("tar")
        .args(["--owner=0", "--group=0", "--mtime=@0", "-cf"])
        .arg(to)
        .arg("-C")
        .arg(&d)
        .args(&names)
        .status()
        .unwrap();
    assert!(st.success());
    let _ = std::fs::remove_dir_all(&d);
}

/// Flip one character well inside a `.minisig`'s signature line.
fn damage_minisig(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut b: Vec<u8> = lines[1].clone().into_bytes();
    b[40] = if b[40] == b'A' { b'B' } else { b'A' };
    lines[1] = String::from_utf8(b).unwrap();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// j, k, l: a forged channel file (a downgrade to the older, genuinely signed 1.0.0) is
/// refused by install.sh, and through a stale install.sh (whose own head is 1.0.0) by the
/// downloaded outpost against the signed manifest; bundles with a tampered manifest, tarball
/// or tarball signature are refused with nothing changed; a good bundle installs (outpost verified it like a release host); and the README's
/// key-file line, with a real single-use key typed into it, installs and enrolls without the
/// key showing up in the journal (sudo's log) or in a file left behind.
#[test]
fn e2e_one_liner_refuses_forged_channel_and_tampered_bundles() {
    let ca = TestCa::new("forged");
    let Some(c) = boot("rel-forged", &ca) else {
        return;
    };
    let served = tmp_dir("forged-served");
    let hub = Hub::start_tls(&ca, &served);
    let url = hub.url.clone();
    let rel = Release::new("forged");
    // an install.sh saved when 1.0.0 was stable (a stale copy: its head is 1.0.0)
    rel.publish_with_base_url(&["1.0.0"], "stable", &url);
    let stale_script = rel.work.join("install-1.0.0.sh");
    std::fs::copy(rel.root.join("install.sh"), &stale_script).unwrap();
    rel.publish_with_base_url(&["1.0.0", "1.1.0"], "stable", &url);
    let good = tmp_dir("forged-good");
    copy_tree(&rel.root, &good);
    c.cp_in(&stale_script, "/srv/install-1.0.0.sh");
    let before = c.must_sh(LISTING);

    // (j) the unsigned channel file says 1.0.0; install.sh was published with stable = 1.1.0
    serve_copy(&good, &served);
    std::fs::write(served.join("channels/stable"), "1.0.0\n").unwrap();
    let o = one_liner(&c, &url, "", "");
    assert_refused(
        &c,
        &o,
        &before,
        &["downgrade", "channel stable names outpost 1.0.0"],
        "forged channel file",
    );
    // ...and through the stale install.sh, which takes 1.0.0 (its own head) for the answer:
    // the downloaded outpost then refuses, since the signed manifest's stable is 1.1.0
    let stale = |env: &str| {
        c.sh_as(
            "alice",
            &format!("sudo env {env} bash /srv/install-1.0.0.sh"),
        )
    };
    let o = stale("OUTPOST_CHANNEL=stable");
    assert_refused(
        &c,
        &o,
        &before,
        &[
            "downgrade",
            "channel stable of the signed manifest",
            "is 1.1.0, not 1.0.0",
        ],
        "forged channel file through a stale install.sh",
    );
    // control: pinning 1.0.0 on purpose through the same script installs it
    let o = stale("OUTPOST_VERSION=1.0.0");
    assert!(
        o.success(),
        "pinned install with the stale script failed:\n{o:?}"
    );
    assert!(installed_version(&c).contains("1.0.0"));
    let o = one_liner(&c, &url, "", "--uninstall --purge");
    assert!(o.success(), "{o:?}");
    assert_same_files(
        &before,
        &c.must_sh(LISTING),
        "purge after the pinned install",
    );
    serve_copy(&good, &served);

    // (k) offline bundles, verified by outpost against the signed manifest like a host
    let work = tmp_dir("forged-bundles");
    let bundle = rel.bundle("1.1.0", &work.join("good.tar"));
    let tarball = format!("v1.1.0/outpost-1.1.0-{TARGET}.tar.gz");
    let t1 = tarball.clone();
    let t2 = tarball.clone();
    type Edit = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Edit, &[&str])> = vec![
        (
            "bundle with a tampered manifest",
            Box::new(|d: &Path| {
                let m = d.join("manifest.json");
                let mut v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
                v["generated_at"] = serde_json::Value::String("2000-01-01T00:00:00Z".into());
                std::fs::write(&m, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
            }),
            &["signature", "manifest"],
        ),
        (
            "bundle with a tampered tarball",
            Box::new(move |d: &Path| {
                let p = d.join(&t1);
                let mut b = std::fs::read(&p).unwrap();
                let last = b.len() - 1;
                b[last] ^= 0xff;
                std::fs::write(&p, b).unwrap();
            }),
            &["checksum mismatch"],
        ),
        (
            "bundle with a tampered tarball signature",
            Box::new(move |d: &Path| damage_minisig(&d.join(format!("{t2}.minisig")))),
            &["signature"],
        ),
    ];
    for (what, edit, want) in &cases {
        let bad = work.join("bad.tar");
        rebundle(&bundle, &bad, edit.as_ref());
        c.cp_in(&bad, "/srv/bundle.tar");
        let o = one_liner(&c, &url, "", "--bundle /srv/bundle.tar");
        assert_refused(&c, &o, &before, want, what);
    }
    // control: the good bundle installs, and is recorded as the release source
    c.cp_in(&bundle, "/srv/bundle.tar");
    let o = one_liner(&c, &url, "", "--bundle /srv/bundle.tar");
    assert!(o.success(), "good bundle install failed:\n{o:?}");
    assert!(installed_version(&c).contains("1.1.0"));
    assert_eq!(c.sh("systemctl is-active outpost.service").out(), "active");
    let conf = c.must_sh("cat /etc/outpost/config.toml");
    assert!(conf.contains("url = \"/srv/bundle.tar\""), "{conf}");
    let o = one_liner(&c, &url, "", "--uninstall --purge");
    assert!(o.success(), "{o:?}");
    assert_same_files(
        &before,
        &c.must_sh(LISTING),
        "purge after the bundle install",
    );
    c.must_sh("rm -f /srv/bundle.tar");

    // (l) the README's line, the key typed at its prompt (stdin here): enrolls
    let o = hub.cli(&[
        "keys",
        "create",
        "--ttl",
        "1h",
        "--ca-file",
        ca.ca_cert.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "keys create: {o:?}");
    let key = String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .expect("keys create prints key:")
        .trim()
        .to_string();
    let line = readme_key_line().replace("https://HUB", &url);
    let put = |path: &str, text: &str| {
        let o = c.exec_with_stdin(
            &[
                "sh",
                "-c",
                &format!("umask 077; cat > {path}; chown alice {path}"),
            ],
            text.as_bytes(),
        );
        assert!(o.success(), "writing {path}: {o:?}");
    };
    put("/srv/oneliner.sh", &line);
    put("/srv/key.in", &format!("{key}\n"));
    let tmp_before = c.must_sh("ls -A /tmp | grep -v ^systemd-private-");
    let o = c.sh_as("alice", "bash /srv/oneliner.sh < /srv/key.in");
    c.must_sh("rm -f /srv/oneliner.sh /srv/key.in");
    assert!(
        o.success(),
        "README one-liner failed:\n{o:?}\nhub log:\n{}",
        hub.log()
    );
    assert_eq!(c.sh("systemctl is-active outpost.service").out(), "active");
    let enrolled = c.sh(
        "for i in $(seq 60); do journalctl -u outpost --no-pager -o cat | grep -q '^enrolled with' && exit 0; sleep 1; done; exit 1",
    );
    assert!(
        enrolled.success(),
        "the host did not enroll:\n{}\nhub log:\n{}",
        c.sh("journalctl -u outpost --no-pager | tail -20").stdout,
        hub.log()
    );
    assert_eq!(
        c.must_sh("ls -A /tmp | grep -v ^systemd-private-"),
        tmp_before,
        "the one-liner left a file in /tmp"
    );
    let sudo_log = c.must_sh("journalctl -b --no-pager -o cat _COMM=sudo");
    assert!(
        sudo_log.contains("COMMAND="),
        "no sudo entry in the journal to check:\n{sudo_log}"
    );
    let journal = c.must_sh("journalctl -b --no-pager -o cat");
    assert!(!journal.contains(&key), "the key is in the journal");
    // the used key stays only in the root-owned 0600 secrets file (until the next start)
    assert_eq!(
        c.must_sh("stat -c '%a %U' /etc/outpost/outpost.env").trim(),
        "600 root"
    );
    let o = c.sh(&format!(
        "grep -rlF -- {key} /etc /home /tmp /var/tmp /var/log 2>/dev/null | grep -vx /etc/outpost/outpost.env"
    ));
    assert!(
        o.stdout.trim().is_empty(),
        "the key is left in {}",
        o.stdout
    );
    let o = one_liner(&c, &url, "", "--uninstall --purge");
    assert!(o.success(), "{o:?}");
    assert_same_files(
        &before,
        &c.must_sh(LISTING),
        "purge after the README install",
    );
    let _ = std::fs::remove_dir_all(&served);
    let _ = std::fs::remove_dir_all(&good);
    let _ = std::fs::remove_dir_all(&work);
}

/// GitHub Releases as the release host: install.sh published with `--base-url github:o/r`,
/// fetched from `…/releases/latest/download/install.sh`, downloads every file as a release
/// asset (through GitHub's redirects), and `outpost install` verifies the signed manifest from
/// there too. Bad `github:` sources and a tampered asset are refused with nothing changed.
#[test]
fn e2e_one_liner_from_github_releases() {
    let Some(tb) = support::require_testbed() else {
        return;
    };
    let c = tb.boot("rel-github");
    let rel = Release::new("github");
    rel.publish_with_base_url(&["1.0.0", "1.1.0"], "stable", "github:o/r");
    let gh = support::github::GitHub::serve(&rel.root);
    let env = format!("OUTPOST_GITHUB_URL={}", gh.url);
    let latest = format!("{}/o/r/releases/latest/download", gh.url);
    let before = c.must_sh(LISTING);

    // bad sources: one line each, exit 2, nothing changed
    for (bad_env, want) in [
        ("OUTPOST_RELEASE_URL=github:o", "github:OWNER/REPO"),
        ("OUTPOST_RELEASE_URL=github:o/r/x", "github:OWNER/REPO"),
        ("OUTPOST_RELEASE_URL=github:../r", "github:OWNER/REPO"),
        ("OUTPOST_RELEASE_URL=ftp://x", "github:OWNER/REPO"),
        (
            "OUTPOST_GITHUB_URL=http://example.com",
            "OUTPOST_GITHUB_URL",
        ),
    ] {
        let o = one_liner(&c, &latest, bad_env, "");
        assert_eq!(o.code(), Some(2), "{bad_env}: {o:?}");
        assert_refused(&c, &o, &before, &[want], bad_env);
    }

    // a tampered tarball (same size) is refused by the embedded sha256
    let tarball = rel.tarball("1.1.0");
    let good = std::fs::read(&tarball).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(&tarball, &bad).unwrap();
    let o = one_liner(&c, &latest, &env, "");
    assert_refused(
        &c,
        &o,
        &before,
        &["checksum mismatch"],
        "tampered GitHub asset",
    );
    std::fs::write(&tarball, &good).unwrap();

    // the one-liner installs the stable channel's version from the release assets
    let o = one_liner(&c, &latest, &env, "");
    assert!(o.success(), "install from GitHub Releases failed:\n{o:?}");
    assert!(
        all_output(&o).contains("from github:o/r"),
        "{}",
        all_output(&o)
    );
    assert_eq!(c.sh("systemctl is-active outpost.service").out(), "active");
    assert!(installed_version(&c).contains("1.1.0"));
    let conf = c.must_sh("cat /etc/outpost/config.toml");
    assert!(conf.contains("github:o/r"), "{conf}");
    let requests = gh.requests();
    let name = format!("outpost-1.1.0-{TARGET}.tar.gz");
    for want in [
        "/o/r/releases/latest/download/install.sh".to_string(),
        "/o/r/releases/latest/download/channel-stable".to_string(),
        format!("/o/r/releases/download/v1.1.0/{name}"),
        // outpost install checks the signed manifest itself, through the same source
        "/o/r/releases/latest/download/manifest.json".to_string(),
        "/o/r/releases/download/v1.1.0/manifest.json.minisig".to_string(),
    ] {
        assert!(
            requests.contains(&want),
            "no request for {want}: {requests:?}"
        );
    }

    // pinning an older release reads that release's assets
    let o = one_liner(&c, &latest, &env, "--uninstall --purge");
    assert!(o.success(), "{o:?}");
    let o = one_liner(&c, &latest, &env, "--version 1.0.0");
    assert!(o.success(), "pinned install from GitHub failed:\n{o:?}");
    assert!(installed_version(&c).contains("1.0.0"));
    assert!(gh.requests().contains(&format!(
        "/o/r/releases/download/v1.0.0/outpost-1.0.0-{TARGET}.tar.gz"
    )));
    let o = one_liner(&c, &latest, &env, "--uninstall --purge");
    assert!(o.success(), "{o:?}");
    assert_same_files(
        &before,
        &c.must_sh(LISTING),
        "uninstall --purge after GitHub install",
    );
}

/// No testbed: the template parses in every shell it may be piped into and is shellcheck-clean.
#[test]
fn install_sh_is_portable_sh() {
    let script = repo().join("scripts/install.sh");
    let mut ran = 0;
    for (tool, args) in [
        ("shellcheck", vec!["-s", "sh"]),
        ("dash", vec!["-n"]),
        ("bash", vec!["-n"]),
        ("busybox", vec!["sh", "-n"]),
    ] {
        let o = match Command::new(tool).args(&args).arg(&script).output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let must = tool != "busybox" || std::env::var_os("CI").is_some();
                assert!(!must, "{tool} is not installed (run ci/setup.sh)");
                eprintln!("SKIPPED: {tool} not installed (apt-get install {tool})");
                continue;
            }
            Err(e) => panic!("running {tool}: {e}"),
        };
        assert!(
            o.status.success(),
            "{tool} {args:?} scripts/install.sh:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 3);
}

/// No testbed: no prefix of install.sh runs `main` (every cut at a line end, and every cut in
/// the last three lines). A stub `uname` (main's first external command) records any run.
#[test]
fn truncated_install_sh_runs_nothing() {
    let text = std::fs::read_to_string(repo().join("scripts/install.sh")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("bin");
    std::fs::create_dir(&stub).unwrap();
    let marker = dir.path().join("ran");
    let uname = stub.join("uname");
    std::fs::write(
        &uname,
        format!("#!/bin/sh\ntouch {}\necho Linux\n", marker.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&uname, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:/usr/bin:/bin", stub.display());
    let tail_from = text
        .trim_end()
        .rmatch_indices('\n')
        .nth(2)
        .map(|(i, _)| i)
        .unwrap();
    let mut cuts: Vec<usize> = text.match_indices('\n').map(|(i, _)| i + 1).collect();
    cuts.extend(tail_from..text.len() - 1);
    cuts.retain(|&n| n < text.trim_end().len());
    cuts.sort_unstable();
    cuts.dedup();
    for shell in ["bash", "dash"] {
        for &n in &cuts {
            let body = &text.as_bytes()[..n];
            let mut child = Command::new(shell)
                .args(["-s", "--", "--dry-run"])
                .env("PATH", &path)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let _ = std::io::Write::write_all(child.stdin.as_mut().unwrap(), body);
            drop(child.stdin.take());
            child.wait().unwrap();
            assert!(
                !marker.exists(),
                "{shell}: install.sh cut after {n} bytes ran main; the cut ends with {:?}",
                String::from_utf8_lossy(&body[n.saturating_sub(40)..])
            );
        }
    }
    // and the whole script does reach main (the stub works)
    let o = Command::new("bash")
        .args([
            "-c",
            &format!(
                "bash -s -- --dry-run < {}",
                repo().join("scripts/install.sh").display()
            ),
        ])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(marker.exists(), "the full script did not run main: {o:?}");
}
