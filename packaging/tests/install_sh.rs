//! The real `scripts/install.sh`, published by `outpost-release publish` into a release root
//! on disk and run with `OUTPOST_RELEASE_URL=file://…` and `--dry-run` (no testbed needed;
//! the tarballs hold `/bin/true` as `outpost`): the channel file is checked against the
//! channel heads embedded at publish time (a forged downgrade is refused), `--bundle` checks
//! the bundle's listing before extracting anything, and every run leaves its temp dir clean.
//! The real-systemd side (outpost verifying the signed manifest) is tests/e2e_release.rs.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const X86: &str = "x86_64-unknown-linux-musl";
const ARM: &str = "aarch64-unknown-linux-musl";

fn template() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install.sh")
}

fn this_target() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => ARM,
        _ => X86,
    }
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn release_tool(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_outpost-release"));
    c.env_remove("OUTPOST_RELEASE_PASSWORD").current_dir(dir);
    c
}

/// A release root `rel/` with both targets of each version, published with the real template.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        ok(release_tool(dir.path()).args(["keygen", "--unencrypted", "--out", "keys"]));
        std::fs::write(dir.path().join("LICENSE"), "Apache-2.0\n").unwrap();
        std::fs::write(dir.path().join("README.md"), "# outpost\n").unwrap();
        Site { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Build and publish `version` (both targets) and move `channel` to it.
    fn publish(&self, version: &str, channel: &str) {
        for target in [X86, ARM] {
            ok(release_tool(self.dir.path()).args([
                "build",
                "--version",
                version,
                "--target",
                target,
                "--binary",
                "/bin/true",
                "--out",
                "build",
            ]));
        }
        ok(release_tool(self.dir.path()).args([
            "sign",
            "--key",
            "keys/outpost-release.key",
            "build",
        ]));
        ok(release_tool(self.dir.path())
            .args([
                "publish",
                "--from",
                "build",
                "--to",
                "rel",
                "--key",
                "keys/outpost-release.key",
                "--channel",
                channel,
                "--install-template",
            ])
            .arg(template()));
    }

    fn bundle(&self, version: &str, out: &str) -> PathBuf {
        let out = self.path(out);
        ok(release_tool(self.dir.path())
            .args([
                "bundle",
                "--release",
                "rel",
                "--version",
                version,
                "--target",
            ])
            .arg(this_target())
            .arg("--out")
            .arg(&out)
            .args(["--pubkey", "keys/outpost-release.pub"]));
        out
    }

    /// `sh SCRIPT ARGS` in a clean environment pointed at `rel/`, with its own TMPDIR, which
    /// must be empty again afterwards (install.sh's mktemp dir is removed on every exit).
    fn run(&self, script: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
        let tmp = tempfile::tempdir().unwrap();
        let o = Command::new("sh")
            .arg(script)
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", self.dir.path())
            .env("TMPDIR", tmp.path())
            // no systemd as PID 1 here: install.sh's container mode (dry-run: copies nothing)
            .env("container", "outpost-test")
            .env(
                "OUTPOST_RELEASE_URL",
                format!("file://{}", self.path("rel").display()),
            )
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "install.sh left {left:?} in TMPDIR: {o:?}");
        Run(o)
    }
}

struct Run(Output);

impl Run {
    fn text(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.0.stdout),
            String::from_utf8_lossy(&self.0.stderr)
        )
    }

    fn assert_ok(&self, want: &str, what: &str) {
        assert!(self.0.status.success(), "{what}: failed:\n{}", self.text());
        assert!(
            self.text().contains(want),
            "{what}: no {want:?}:\n{}",
            self.text()
        );
    }

    /// Refused with exit `code`, one `error:` line naming `want` and a `hint:`, nothing verified.
    fn assert_refused(&self, code: i32, want: &str, what: &str) {
        let t = self.text();
        assert_eq!(self.0.status.code(), Some(code), "{what}:\n{t}");
        let error = t
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{what}: no error: line:\n{t}"));
        assert!(error.contains(want), "{what}: error lacks {want:?}:\n{t}");
        assert!(
            t.lines().any(|l| l.starts_with("hint: ")),
            "{what}: no hint:\n{t}"
        );
        assert!(
            !t.contains("verified outpost-"),
            "{what}: verified something:\n{t}"
        );
    }
}

#[test]
fn forged_channel_downgrade_is_refused() {
    let site = Site::new();
    site.publish("1.0.0", "stable");
    let old_script = site.path("install-1.0.0.sh");
    std::fs::copy(site.path("rel/install.sh"), &old_script).unwrap();
    site.publish("1.1.0", "stable");
    let script = site.path("rel/install.sh");
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(
        text.contains("OUTPOST_EMBEDDED_CHANNELS=\"beta 1.1.0\nstable 1.1.0\"\n"),
        "publish did not embed the channel heads"
    );
    let tarball = format!("outpost-1.1.0-{}.tar.gz", this_target());

    // the channel's head installs
    site.run(&script, &[], &["--dry-run"])
        .assert_ok(&format!("verified {tarball}"), "channel head");

    // a stale or forged channel file naming an older, genuinely signed version is refused
    for channel in ["stable", "beta"] {
        std::fs::write(site.path(&format!("rel/channels/{channel}")), "1.0.0\n").unwrap();
        let env = [("OUTPOST_CHANNEL", channel)];
        let r = site.run(&script, &env, &["--dry-run"]);
        r.assert_refused(1, "downgrade", &format!("forged {channel}"));
        assert!(
            r.text()
                .contains("names outpost 1.0.0, but its head was 1.1.0"),
            "{}",
            r.text()
        );
        // ...also without --dry-run: it stops before downloading the tarball
        site.run(&script, &env, &[]).assert_refused(
            1,
            "downgrade",
            &format!("forged {channel}, no dry-run"),
        );
    }

    // pinning an older version on purpose is not a downgrade attack
    site.run(&script, &[("OUTPOST_VERSION", "1.0.0")], &["--dry-run"])
        .assert_ok(
            &format!("verified outpost-1.0.0-{}", this_target()),
            "OUTPOST_VERSION=1.0.0",
        );
    site.run(&script, &[], &["--version", "1.0.0", "--dry-run"])
        .assert_ok("verified outpost-1.0.0-", "--version 1.0.0");

    // a version published after the script is not refused as a downgrade (outpost checks the
    // signed manifest's head itself); without minisign this older script has no checksum for it
    std::fs::write(site.path("rel/channels/stable"), "1.1.0\n").unwrap();
    let r = site.run(&old_script, &[], &["--dry-run"]);
    assert!(!r.text().contains("downgrade"), "{}", r.text());
    assert!(
        r.0.status.success() || r.text().contains("minisign is not installed"),
        "{}",
        r.text()
    );
    // the old script accepts its own head (1.0.0); the signed manifest says 1.1.0 by now, which
    // only outpost itself can check (Verified::check_channel_from_env)
    std::fs::write(site.path("rel/channels/stable"), "1.0.0\n").unwrap();
    site.run(&old_script, &[], &["--dry-run"])
        .assert_ok("verified outpost-1.0.0-", "old script, its own head");
}

/// Write `entries` (name, data) as a tar; names are written raw, so `..` can be tested.
fn write_tar(path: &Path, entries: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in entries {
        let mut h = tar::Header::new_ustar();
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

fn tar_entries(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut ar = tar::Archive::new(std::fs::File::open(path).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

#[test]
fn bundle_listing_is_checked_before_extracting() {
    let site = Site::new();
    site.publish("1.0.0", "stable");
    site.publish("1.1.0", "stable");
    let script = site.path("rel/install.sh");
    let bundle = site.bundle("1.1.0", "outpost-1.1.0.bundle.tar");
    let tarball = format!("outpost-1.1.0-{}.tar.gz", this_target());
    let b = bundle.to_str().unwrap();

    let r = site.run(&script, &[], &["--bundle", b, "--dry-run"]);
    r.assert_ok(&format!("verified {tarball}"), "good bundle");
    assert!(r.text().contains("from bundle"), "{}", r.text());
    // a relative path works too (it is made absolute for outpost)
    site.run(
        &script,
        &[],
        &["--bundle=outpost-1.1.0.bundle.tar", "--dry-run"],
    )
    .assert_ok(&format!("verified {tarball}"), "relative bundle path");

    let good = tar_entries(&bundle);
    let old = site.bundle("1.0.0", "outpost-1.0.0.bundle.tar");
    let old_tarball = tar_entries(&old)
        .into_iter()
        .find(|(n, _)| n.ends_with(".tar.gz"))
        .unwrap();
    type Edit = fn(&mut Vec<(String, Vec<u8>)>, &(String, Vec<u8>));
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "extra file",
            |e, _| e.push(("evil.sh".into(), b"#!/bin/sh\n".to_vec())),
            "unexpected entry 'evil.sh'",
        ),
        (
            "path out of the bundle",
            |e, _| e.push(("v1.1.0/../../etc/cron.d/x".into(), b"x".to_vec())),
            "leaves the bundle",
        ),
        (
            "two builds for this target",
            |e, old| e.push(old.clone()),
            "more than one build",
        ),
        (
            "tarball in another version's directory",
            |e, _| {
                for (n, _) in e.iter_mut() {
                    if n.ends_with(".tar.gz") {
                        *n = n.replacen("v1.1.0/", "v1.0.0/", 1);
                    }
                }
            },
            "wrong directory",
        ),
        (
            "tarball tampered",
            |e, _| {
                for (n, d) in e.iter_mut() {
                    if n.ends_with(".tar.gz") {
                        d[30] ^= 1;
                    }
                }
            },
            "checksum mismatch",
        ),
        (
            "no build",
            |e, _| e.retain(|(n, _)| !n.ends_with(".tar.gz")),
            "has no build",
        ),
    ];
    for (what, edit, want) in cases {
        let mut entries = good.clone();
        edit(&mut entries, &old_tarball);
        let bad = site.path("bad.bundle.tar");
        write_tar(&bad, &entries);
        site.run(
            &script,
            &[],
            &["--bundle", bad.to_str().unwrap(), "--dry-run"],
        )
        .assert_refused(1, want, what);
    }
    // not a tar, unreadable, or a path outpost cannot record: refused before anything else
    let junk = site.path("junk.tar");
    std::fs::write(&junk, b"not a tar file at all").unwrap();
    site.run(
        &script,
        &[],
        &["--bundle", junk.to_str().unwrap(), "--dry-run"],
    )
    .assert_refused(1, "not a valid tar file", "junk bundle");
    site.run(
        &script,
        &[],
        &["--bundle", "/nonexistent/b.tar", "--dry-run"],
    )
    .assert_refused(2, "cannot read bundle", "missing bundle");
    let spaced = site.path("my bundle.tar");
    std::fs::copy(&bundle, &spaced).unwrap();
    site.run(
        &script,
        &[],
        &["--bundle", spaced.to_str().unwrap(), "--dry-run"],
    )
    .assert_refused(2, "characters", "bundle path with a space");
}
