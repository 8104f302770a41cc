//! End-to-end release pipeline: the `outpost-release` CLI, the real `minisign` and
//! `sha256sum` tools, and the library's fetch/verify/extract over dir, bundle and http.
use outpost_release::extract::{staging_dir_for, BINARY};
use outpost_release::{
    extract_tarball, fetch_release, install_version, Error, ExtractLimits, ReplayState, Source,
    TrustedKeys, Want,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const X86: &str = "x86_64-unknown-linux-musl";
const ARM: &str = "aarch64-unknown-linux-musl";

/// A template shaped like scripts/install.sh's placeholder block.
const TEMPLATE: &str = "#!/bin/sh\nset -eu\n# Filled in by `outpost-release publish`.\nOUTPOST_EMBEDDED_RELEASE_URL=\"\"\nOUTPOST_EMBEDDED_PUBKEYS=\"\"\nOUTPOST_EMBEDDED_SHA256S=\"\"\nOUTPOST_EMBEDDED_CHANNELS=\"\"\nprintf '%s\\n' \"$OUTPOST_EMBEDDED_SHA256S\" | while read -r v t s; do echo \"$v $t $s\"; done\n";

/// True when the real minisign CLI is there. Missing: a loud skip locally, a failure in CI.
fn have_minisign() -> bool {
    if Command::new("minisign").arg("-v").output().is_ok() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("minisign is not installed but CI is set: ci/setup.sh must install it (apt-get install minisign)");
    }
    eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! SKIPPED: minisign CLI not installed (apt-get install minisign)         !!!");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
    false
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn release_tool() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_outpost-release"));
    c.env_remove("OUTPOST_RELEASE_PASSWORD");
    c
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    pubkey: PathBuf,
    seckey: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        ok(release_tool()
            .args(["keygen", "--unencrypted", "--out"])
            .arg(root.join("keys")));
        std::fs::write(root.join("LICENSE"), "Apache-2.0\n").unwrap();
        std::fs::write(root.join("README.md"), "# outpost\n").unwrap();
        std::fs::write(root.join("install.sh.in"), TEMPLATE).unwrap();
        Fixture {
            pubkey: root.join("keys/outpost-release.pub"),
            seckey: root.join("keys/outpost-release.key"),
            root,
            _dir: dir,
        }
    }

    fn keys(&self) -> TrustedKeys {
        let mut k = TrustedKeys::empty();
        k.add_file(&self.pubkey).unwrap();
        k
    }

    fn build(&self, version: &str, target: &str) {
        ok(release_tool().current_dir(&self.root).args([
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

    fn publish(&self, channel: &str) -> String {
        ok(release_tool().current_dir(&self.root).args([
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
            "install.sh.in",
            "--base-url",
            "https://releases.example.com/outpost",
        ]))
    }

    fn rel(&self) -> PathBuf {
        self.root.join("rel")
    }
}

fn minisign_verify(pubkey: &Path, file: &Path) -> String {
    ok(Command::new("minisign")
        .arg("-V")
        .arg("-p")
        .arg(pubkey)
        .arg("-m")
        .arg(file))
}

#[test]
fn pipeline_interoperates_with_minisign_and_sha256sum() {
    if !have_minisign() {
        return;
    }
    let f = Fixture::new();
    f.build("1.0.0", X86);
    f.build("1.0.0", ARM);
    let vdir = f.root.join("build/v1.0.0");
    ok(Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(&vdir));
    ok(release_tool()
        .arg("sign")
        .arg("--key")
        .arg(&f.seckey)
        .arg(f.root.join("build")));
    for name in [
        "outpost-1.0.0-x86_64-unknown-linux-musl.tar.gz",
        "outpost-1.0.0-aarch64-unknown-linux-musl.tar.gz",
        "SHA256SUMS",
    ] {
        minisign_verify(&f.pubkey, &vdir.join(name));
    }
    let out = f.publish("stable");
    assert!(out.contains("stable: 1.0.0"), "{out}");
    let rel = f.rel();
    // the manifest signature carries the timestamp, and minisign agrees
    let v = minisign_verify(&f.pubkey, &rel.join("manifest.json"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rel.join("manifest.json")).unwrap()).unwrap();
    let ts = manifest["timestamp"].as_u64().unwrap();
    assert!(
        v.contains(&format!("timestamp:{ts} file:manifest.json")),
        "{v}"
    );
    assert_eq!(manifest["channels"]["stable"], "1.0.0");
    assert_eq!(manifest["channels"]["beta"], "1.0.0");
    assert_eq!(
        manifest["releases"][0]["artifacts"][X86]["name"],
        "v1.0.0/outpost-1.0.0-x86_64-unknown-linux-musl.tar.gz"
    );
    ok(Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(rel.join("v1.0.0")));
    minisign_verify(&f.pubkey, &rel.join("v1.0.0/SHA256SUMS"));
    assert_eq!(
        std::fs::read_to_string(rel.join("channels/stable")).unwrap(),
        "1.0.0\n"
    );
    // install.sh: keys, checksums and URL embedded, valid sh
    let script = std::fs::read_to_string(rel.join("install.sh")).unwrap();
    let pk_line = std::fs::read_to_string(&f.pubkey)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    assert!(
        script.contains(&format!("OUTPOST_EMBEDDED_PUBKEYS=\"{pk_line}\"")),
        "{script}"
    );
    let sha = manifest["releases"][0]["artifacts"][X86]["sha256"]
        .as_str()
        .unwrap();
    assert!(script.contains(&format!("1.0.0 {X86} {sha}")), "{script}");
    assert!(
        script.contains("OUTPOST_EMBEDDED_RELEASE_URL=\"https://releases.example.com/outpost\"")
    );
    // the channel heads of the signed manifest, for install.sh's downgrade check
    assert!(
        script.contains("OUTPOST_EMBEDDED_CHANNELS=\"beta 1.0.0\nstable 1.0.0\"\n"),
        "{script}"
    );
    ok(Command::new("sh").arg("-n").arg(rel.join("install.sh")));
    let listed = ok(Command::new("sh").arg(rel.join("install.sh")));
    assert!(listed.contains(&format!("1.0.0 {ARM} ")), "{listed}");
    // the packager's own end-to-end check
    let out = ok(release_tool()
        .arg("verify")
        .arg(&rel)
        .arg("--pubkey")
        .arg(&f.pubkey));
    assert!(
        out.contains("ok v1.0.0/outpost-1.0.0-aarch64-unknown-linux-musl.tar.gz"),
        "{out}"
    );
    // ...which fails on a tampered tarball, and with a key that did not sign it
    let bad = f.root.join("bad");
    ok(Command::new("cp").arg("-a").arg(&rel).arg(&bad));
    let victim = bad.join("v1.0.0/outpost-1.0.0-aarch64-unknown-linux-musl.tar.gz");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    let out = run(release_tool()
        .arg("verify")
        .arg(&bad)
        .arg("--pubkey")
        .arg(&f.pubkey));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sha256 mismatch") && err.contains("hint:"),
        "{err}"
    );
    let other = f.root.join("other");
    ok(release_tool()
        .args(["keygen", "--unencrypted", "--out"])
        .arg(&other));
    let out = run(release_tool()
        .arg("verify")
        .arg(&rel)
        .arg("--pubkey")
        .arg(other.join("outpost-release.pub")));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not trusted"),
        "{out:?}"
    );
}

#[test]
fn minisign_cli_signatures_verify_in_outpost() {
    if !have_minisign() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (pk, sk) = (d.path().join("m.pub"), d.path().join("m.key"));
    ok(Command::new("minisign")
        .args(["-G", "-W", "-p"])
        .arg(&pk)
        .arg("-s")
        .arg(&sk));
    let keys = TrustedKeys::parse(&std::fs::read_to_string(&pk).unwrap(), "m.pub").unwrap();
    let file = d.path().join("payload");
    std::fs::write(&file, vec![42u8; 100_000]).unwrap();
    for (mode, extra) in [("prehashed", None), ("legacy", Some("-l"))] {
        let sig = d.path().join(format!("{mode}.minisig"));
        let mut c = Command::new("minisign");
        c.arg("-S")
            .arg("-s")
            .arg(&sk)
            .arg("-m")
            .arg(&file)
            .arg("-x")
            .arg(&sig)
            .args(["-t", "timestamp:7 file:payload"]);
        if let Some(x) = extra {
            c.arg(x);
        }
        ok(&mut c);
        assert_eq!(
            keys.verify_file(&file, &sig).unwrap(),
            "timestamp:7 file:payload",
            "{mode}"
        );
        let text = std::fs::read_to_string(&sig).unwrap();
        assert!(
            keys.verify(&std::fs::read(&file).unwrap(), &text, "payload")
                .is_ok(),
            "{mode}"
        );
        assert!(
            keys.verify(b"other", &text, "payload").is_err(),
            "{mode}: tampered data accepted"
        );
        assert!(matches!(
            TrustedKeys::empty().verify_file(&file, &sig),
            Err(Error::NoTrustedKeys { .. })
        ));
    }
    // a secret key made by the minisign CLI can publish with outpost-release
    let build = d.path().join("build");
    std::fs::write(d.path().join("LICENSE"), "l").unwrap();
    std::fs::write(d.path().join("README.md"), "r").unwrap();
    ok(release_tool().current_dir(d.path()).args([
        "build",
        "--version",
        "2.0.0-rc.1",
        "--target",
        X86,
        "--binary",
        "/bin/true",
        "--out",
        "build",
    ]));
    ok(release_tool()
        .current_dir(d.path())
        .arg("publish")
        .arg("--from")
        .arg(&build)
        .arg("--to")
        .arg("rel")
        .arg("--key")
        .arg(&sk)
        .args(["--channel", "beta"]));
    minisign_verify(&pk, &d.path().join("rel/manifest.json"));
    minisign_verify(
        &pk,
        &d.path()
            .join("rel/v2.0.0-rc.1/outpost-2.0.0-rc.1-x86_64-unknown-linux-musl.tar.gz"),
    );
    ok(release_tool()
        .arg("verify")
        .arg(d.path().join("rel"))
        .arg("--pubkey")
        .arg(&pk));
}

#[test]
fn encrypted_key_uses_env_password_and_refuses_without_one() {
    if !have_minisign() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let out = run(release_tool()
        .arg("keygen")
        .arg("--out")
        .arg(d.path().join("k"))
        .stdin(std::process::Stdio::null()));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("OUTPOST_RELEASE_PASSWORD"));
    ok(release_tool()
        .env("OUTPOST_RELEASE_PASSWORD", "s3cret")
        .arg("keygen")
        .arg("--out")
        .arg(d.path().join("k")));
    let key = std::fs::read_to_string(d.path().join("k/outpost-release.key")).unwrap();
    std::fs::write(d.path().join("LICENSE"), "l").unwrap();
    std::fs::write(d.path().join("README.md"), "r").unwrap();
    ok(release_tool().current_dir(d.path()).args([
        "build",
        "--version",
        "1.0.0",
        "--target",
        X86,
        "--binary",
        "/bin/true",
        "--out",
        "b",
    ]));
    let out = run(release_tool()
        .current_dir(d.path())
        .env("OUTPOST_RELEASE_PASSWORD", "wrong")
        .args(["sign", "--key", "k/outpost-release.key", "b"]));
    assert!(!out.status.success(), "signed with a wrong password");
    ok(release_tool()
        .current_dir(d.path())
        .env("OUTPOST_RELEASE_PASSWORD", "s3cret")
        .args(["sign", "--key", "k/outpost-release.key", "b"]));
    minisign_verify(
        &d.path().join("k/outpost-release.pub"),
        &d.path().join("b/v1.0.0/SHA256SUMS"),
    );
    assert!(!key.is_empty());
}

fn published_fixture() -> Fixture {
    let f = Fixture::new();
    f.build("1.0.0", X86);
    f.publish("stable");
    f
}

#[test]
fn fetch_extract_install_from_dir_and_bundle() {
    let f = published_fixture();
    let keys = f.keys();
    let want: Want = "stable".parse().unwrap();
    let bundle = f.root.join("outpost-1.0.0.bundle.tar");
    ok(release_tool()
        .arg("bundle")
        .arg("--release")
        .arg(f.rel())
        .args(["--version", "1.0.0", "--target", X86, "--out"])
        .arg(&bundle));
    ok(release_tool()
        .arg("verify")
        .arg(&bundle)
        .arg("--pubkey")
        .arg(&f.pubkey));
    let file_url = format!("file://{}", f.rel().display());
    for (name, source) in [
        ("dir", Source::Dir(f.rel())),
        ("file url", Source::parse(&file_url).unwrap()),
        ("bundle", Source::parse(bundle.to_str().unwrap()).unwrap()),
    ] {
        let work = tempfile::tempdir().unwrap();
        let versions = work.path().join("versions");
        std::fs::create_dir(&versions).unwrap();
        let state = ReplayState::at(work.path().join("release-timestamp"));
        let v = fetch_release(
            &source,
            &keys,
            &state,
            &want,
            X86,
            &versions.join(".download"),
        )
        .unwrap();
        assert_eq!(v.version.to_string(), "1.0.0", "{name}");
        assert_eq!(
            v.sha256,
            outpost_release::fsx::sha256_file(&v.tarball_path).unwrap()
        );
        let staging = staging_dir_for(&versions, &v.version);
        extract_tarball(&v.tarball_path, &staging, &ExtractLimits::default()).unwrap();
        let dest = install_version(&staging, &versions, &v.version).unwrap();
        assert_eq!(
            std::fs::read(dest.join(BINARY)).unwrap(),
            std::fs::read("/bin/true").unwrap(),
            "{name}"
        );
        assert!(state.seen().unwrap() > 0);
        // arm64 is not built: clear error
        let err = fetch_release(
            &source,
            &keys,
            &state,
            &want,
            ARM,
            &versions.join(".download"),
        )
        .unwrap_err();
        assert!(matches!(err, Error::NoArtifact { .. }), "{name}: {err}");
    }
}

#[test]
fn replayed_manifest_refused() {
    let f = published_fixture();
    let keys = f.keys();
    let old_manifest = std::fs::read(f.rel().join("manifest.json")).unwrap();
    let old_sig = std::fs::read(f.rel().join("manifest.json.minisig")).unwrap();
    f.build("1.1.0", X86);
    f.publish("stable");
    let work = tempfile::tempdir().unwrap();
    let state = ReplayState::at(work.path().join("ts"));
    let want: Want = "stable".parse().unwrap();
    let v = fetch_release(
        &Source::Dir(f.rel()),
        &keys,
        &state,
        &want,
        X86,
        work.path(),
    )
    .unwrap();
    assert_eq!(v.version.to_string(), "1.1.0");
    // an attacker (or stale mirror) serves the older, validly signed manifest
    std::fs::write(f.rel().join("manifest.json"), old_manifest).unwrap();
    std::fs::write(f.rel().join("manifest.json.minisig"), old_sig).unwrap();
    let err = fetch_release(
        &Source::Dir(f.rel()),
        &keys,
        &state,
        &want,
        X86,
        work.path(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Replay { .. }), "{err}");
    assert!(err.to_string().contains("older"), "{err}");
    // 1.0.0 is still installable from the new manifest (pinning is not rollback)
    f.publish("stable");
}

#[test]
fn tampering_is_caught_before_unpacking() {
    let f = published_fixture();
    let keys = f.keys();
    let want: Want = "1.0.0".parse().unwrap();
    const TARBALL: &str = "v1.0.0/outpost-1.0.0-x86_64-unknown-linux-musl.tar.gz";
    type Tamper = fn(&Path);
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "flipped byte",
            |rel| {
                let mut b = std::fs::read(rel.join(TARBALL)).unwrap();
                b[30] ^= 1;
                std::fs::write(rel.join(TARBALL), b).unwrap();
            },
            "sha256 mismatch",
        ),
        (
            "grown",
            |rel| {
                let mut b = std::fs::read(rel.join(TARBALL)).unwrap();
                b.extend_from_slice(&[0; 4096]);
                std::fs::write(rel.join(TARBALL), b).unwrap();
            },
            "larger than",
        ),
        (
            "manifest edited",
            |rel| {
                let m = std::fs::read_to_string(rel.join("manifest.json")).unwrap();
                std::fs::write(
                    rel.join("manifest.json"),
                    m.replace("\"1.0.0\"", "\"1.0.0\" "),
                )
                .unwrap()
            },
            "signature check failed",
        ),
        (
            "manifest sig removed",
            |rel| std::fs::remove_file(rel.join("manifest.json.minisig")).unwrap(),
            "not found",
        ),
        (
            "tarball sig swapped",
            |rel| {
                std::fs::copy(
                    rel.join("v1.0.0/SHA256SUMS.minisig"),
                    rel.join(format!("{TARBALL}.minisig")),
                )
                .unwrap();
            },
            "signature check failed",
        ),
    ];
    for (name, tamper, why) in cases {
        let copy = tempfile::tempdir().unwrap();
        let rel = copy.path().join("rel");
        ok(Command::new("cp").arg("-a").arg(f.rel()).arg(&rel));
        tamper(&rel);
        let work = tempfile::tempdir().unwrap();
        let staging = work.path().join("dl");
        let err = fetch_release(
            &Source::Dir(rel.clone()),
            &keys,
            &ReplayState::none(),
            &want,
            X86,
            &staging,
        )
        .expect_err(name);
        assert!(err.to_string().contains(why), "{name}: {err}");
        let left: Vec<_> = std::fs::read_dir(&staging)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{name}: left {left:?}");
    }
}

/// A minimal HTTP/1.1 file server on 127.0.0.1 for `root`, serving up to `max` requests.
fn serve(root: PathBuf, max: usize) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max) {
            let Ok(mut s) = stream else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let path = line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string();
            let body = if path.contains("..") {
                None
            } else {
                std::fs::read(root.join(&path)).ok()
            };
            let resp = match body {
                Some(b) => {
                    let mut v = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        b.len()
                    )
                    .into_bytes();
                    v.extend(b);
                    v
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = s.write_all(&resp);
            let _ = s.flush();
            let mut sink = Vec::new();
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = r.read_to_end(&mut sink);
        }
    });
    format!("http://{addr}")
}

#[test]
fn fetch_over_http_with_size_cap() {
    // Loopback only, never through a proxy from the environment.
    std::env::set_var("NO_PROXY", "127.0.0.1,localhost");
    std::env::set_var("no_proxy", "127.0.0.1,localhost");
    let f = published_fixture();
    let keys = f.keys();
    let url = serve(f.rel(), 40);
    let source = Source::parse(&format!("{url}/")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let want: Want = "stable".parse().unwrap();
    let v = fetch_release(
        &source,
        &keys,
        &ReplayState::at(work.path().join("ts")),
        &want,
        X86,
        work.path(),
    )
    .unwrap();
    assert_eq!(v.version.to_string(), "1.0.0");
    let out = ok(release_tool()
        .arg("verify")
        .arg(&url)
        .arg("--pubkey")
        .arg(&f.pubkey));
    assert!(out.contains("channels/stable: 1.0.0 ok"), "{out}");
    // a host serving a bigger tarball than the manifest declares is cut off
    let t = f
        .rel()
        .join("v1.0.0/outpost-1.0.0-x86_64-unknown-linux-musl.tar.gz");
    std::fs::write(&t, vec![0u8; 3 << 20]).unwrap();
    let err = fetch_release(
        &source,
        &keys,
        &ReplayState::none(),
        &want,
        X86,
        &work.path().join("x"),
    )
    .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    // 404 names the URL
    let err = fetch_release(
        &Source::parse(&format!("{url}/nope")).unwrap(),
        &keys,
        &ReplayState::none(),
        &want,
        X86,
        work.path(),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::NotFound { .. }) && err.to_string().contains("/nope/manifest.json"),
        "{err}"
    );
}

/// The entries of a tar (bundle), in order.
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

/// Write `entries` as a tar (regular files, mode 0644).
fn write_tar(path: &Path, entries: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

fn entry<'a>(entries: &'a mut [(String, Vec<u8>)], name: &str) -> &'a mut Vec<u8> {
    &mut entries
        .iter_mut()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in the bundle"))
        .1
}

/// Flip one base64 character of a `.minisig`'s signature line.
fn damage_signature(sig: &mut [u8]) {
    let text = String::from_utf8(sig.to_vec()).unwrap();
    let at = text.find('\n').unwrap() + 40;
    sig[at] = if sig[at] == b'A' { b'B' } else { b'A' };
}

/// A bundle is verified exactly like a release host: a tampered manifest, manifest
/// signature, tarball or tarball signature, a signature made for another file, and a bundle
/// holding a file twice are all refused by `fetch_release` and by `outpost-release verify`,
/// and nothing is left in the staging directory.
#[test]
fn tampered_bundles_are_refused() {
    let f = Fixture::new();
    // 1.0.0 and 1.1.0 of the same binary: byte-identical tarballs, signed under their own names
    f.build("1.0.0", X86);
    f.build("1.1.0", X86);
    f.publish("stable");
    let keys = f.keys();
    let bundle = f.root.join("outpost-1.1.0.bundle.tar");
    let out = ok(release_tool()
        .arg("bundle")
        .arg("--release")
        .arg(f.rel())
        .args(["--version", "1.1.0", "--target", X86, "--out"])
        .arg(&bundle)
        .arg("--pubkey")
        .arg(&f.pubkey));
    assert!(!out.contains("warning"), "{out}");
    let good = tar_entries(&bundle);
    let names: Vec<&str> = good.iter().map(|(n, _)| n.as_str()).collect();
    let tarball = format!("v1.1.0/outpost-1.1.0-{X86}.tar.gz");
    let tarball_sig = format!("{tarball}.minisig");
    assert_eq!(
        names,
        [
            "manifest.json",
            "manifest.json.minisig",
            "v1.1.0/SHA256SUMS",
            "v1.1.0/SHA256SUMS.minisig",
            tarball_sig.as_str(),
            tarball.as_str(),
        ]
    );
    // a valid manifest signature by a key nobody trusts
    let other = f.root.join("other");
    ok(release_tool()
        .args(["keygen", "--unencrypted", "--out"])
        .arg(&other));
    let stranger = outpost_release::tools::Signer::load(&other.join("outpost-release.key"), || {
        unreachable!("unencrypted key")
    })
    .unwrap();
    let manifest = good[0].1.clone();
    let ts = serde_json::from_slice::<serde_json::Value>(&manifest).unwrap()["timestamp"]
        .as_u64()
        .unwrap();
    let stranger_sig = stranger
        .sign_bytes(
            &manifest,
            &outpost_release::TrustedComment::for_manifest(ts),
        )
        .unwrap();
    let old_sig = std::fs::read(
        f.rel()
            .join(format!("v1.0.0/outpost-1.0.0-{X86}.tar.gz.minisig")),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(f.rel().join(format!("v1.0.0/outpost-1.0.0-{X86}.tar.gz"))).unwrap(),
        *entry(&mut good.clone(), &tarball),
        "the two versions' tarballs should be the same bytes"
    );
    type Tamper = Box<dyn Fn(&mut Vec<(String, Vec<u8>)>)>;
    let t = tarball.clone();
    let ts_ = tarball_sig.clone();
    let ts2 = tarball_sig.clone();
    let t2 = tarball.clone();
    let t3 = tarball.clone();
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "manifest edited",
            Box::new(|e| {
                let m = entry(e, "manifest.json");
                let text = String::from_utf8(m.clone()).unwrap();
                *m = text.replacen("\"stable\"", " \"stable\"", 1).into_bytes();
            }),
            "signature check failed",
        ),
        (
            "manifest signed by an untrusted key",
            Box::new(move |e| *entry(e, "manifest.json.minisig") = stranger_sig.clone().into()),
            "not trusted",
        ),
        (
            "manifest signature damaged",
            Box::new(|e| damage_signature(entry(e, "manifest.json.minisig"))),
            "signature check failed",
        ),
        (
            "tarball byte flipped",
            Box::new(move |e| entry(e, &t)[30] ^= 1),
            "sha256 mismatch",
        ),
        (
            "tarball signature damaged",
            Box::new(move |e| damage_signature(entry(e, &ts_))),
            "signature check failed",
        ),
        (
            "tarball signature made for another file name",
            Box::new(move |e| *entry(e, &ts2) = old_sig.clone()),
            "the signature is for",
        ),
        (
            "manifest twice",
            Box::new(|e| {
                let m = e[0].clone();
                e.push(m);
            }),
            "twice",
        ),
        (
            "tarball twice",
            Box::new(move |e| {
                let data = entry(e, &t2).clone();
                e.insert(0, (t2.clone(), data));
            }),
            "twice",
        ),
        (
            "tarball missing",
            Box::new(move |e| e.retain(|(n, _)| *n != t3)),
            "not found",
        ),
    ];
    let want = Want::Exact("1.1.0".parse().unwrap());
    for (name, tamper, why) in cases {
        let mut entries = good.clone();
        tamper(&mut entries);
        let bad = f.root.join("bad.bundle.tar");
        write_tar(&bad, &entries);
        let work = tempfile::tempdir().unwrap();
        let staging = work.path().join("dl");
        let err = fetch_release(
            &Source::parse(bad.to_str().unwrap()).unwrap(),
            &keys,
            &ReplayState::none(),
            &want,
            X86,
            &staging,
        )
        .expect_err(name);
        assert!(err.to_string().contains(why), "{name}: {err}");
        let left: Vec<_> = std::fs::read_dir(&staging)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{name}: left {left:?}");
        let out = run(release_tool()
            .arg("verify")
            .arg(&bad)
            .arg("--pubkey")
            .arg(&f.pubkey));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        assert!(
            err.contains("error:") && err.contains("hint:") && err.contains(why),
            "{name}: {err}"
        );
    }
    // control: the untampered entries, rewritten the same way, verify
    let copy = f.root.join("copy.bundle.tar");
    write_tar(&copy, &good);
    ok(release_tool()
        .arg("verify")
        .arg(&copy)
        .arg("--pubkey")
        .arg(&f.pubkey));
    // `outpost-release bundle` verifies what it wrote: from a tampered root it fails and
    // leaves no bundle behind
    let m = f.rel().join("manifest.json");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replacen("\"stable\"", " \"stable\"", 1)).unwrap();
    let refused = f.root.join("refused.bundle.tar");
    let out = run(release_tool()
        .arg("bundle")
        .arg("--release")
        .arg(f.rel())
        .args(["--version", "1.1.0", "--target", X86, "--out"])
        .arg(&refused)
        .arg("--pubkey")
        .arg(&f.pubkey));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signature check failed"),
        "{out:?}"
    );
    assert!(
        !refused.exists(),
        "a bundle that fails verification was left"
    );
}

/// The channel file is not signed; the signed manifest's channel heads are. A version that a
/// forged (or stale) channel file names is fetched fine (pinning is allowed), but
/// `check_channel_head` refuses it as the channel's answer: from a release root and from a
/// bundle, and through `OUTPOST_RELEASE_CHANNEL` as install.sh sets it.
#[test]
fn signed_channel_head_refuses_a_forged_channel() {
    let f = Fixture::new();
    f.build("1.0.0", X86);
    f.publish("stable");
    f.build("1.1.0", X86);
    f.publish("stable");
    let keys = f.keys();
    // the attacker serves the old channel answer next to the current signed manifest
    std::fs::write(f.rel().join("channels/stable"), "1.0.0\n").unwrap();
    let out = run(release_tool()
        .arg("verify")
        .arg(f.rel())
        .arg("--pubkey")
        .arg(&f.pubkey));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("channels/stable"),
        "{out:?}"
    );
    let bundle = f.root.join("old.bundle.tar");
    ok(release_tool()
        .arg("bundle")
        .arg("--release")
        .arg(f.rel())
        .args(["--version", "1.0.0", "--target", X86, "--out"])
        .arg(&bundle)
        .arg("--pubkey")
        .arg(&f.pubkey));
    for (name, source) in [
        ("dir", Source::Dir(f.rel())),
        ("bundle", Source::Bundle(bundle.clone())),
    ] {
        let work = tempfile::tempdir().unwrap();
        let fetch = |v: &str| {
            fetch_release(
                &source,
                &keys,
                &ReplayState::none(),
                &Want::Exact(v.parse().unwrap()),
                X86,
                work.path(),
            )
            .unwrap()
        };
        let old = fetch("1.0.0");
        let err = old.check_channel_head("stable").unwrap_err();
        assert!(
            matches!(err, Error::ChannelMismatch { .. }),
            "{name}: {err}"
        );
        let m = err.to_string();
        assert!(
            m.contains("downgrade") && m.contains("1.1.0") && m.contains("manifest.json"),
            "{name}: {m}"
        );
        assert!(err.hint().contains("OUTPOST_VERSION=1.1.0"), "{name}");
        // beta moved with stable: 1.0.0 is no head at all
        assert!(old.check_channel_head("beta").is_err(), "{name}");
        if name == "dir" {
            // the head itself is accepted
            fetch("1.1.0").check_channel_head("stable").unwrap();
        }
        // install.sh hands the channel it resolved to outpost in OUTPOST_RELEASE_CHANNEL
        std::env::set_var(outpost_release::fetch::CHANNEL_ENV, "stable");
        let from_env = old.check_channel_from_env();
        std::env::remove_var(outpost_release::fetch::CHANNEL_ENV);
        assert!(from_env.is_err(), "{name}: {from_env:?}");
        old.check_channel_from_env().unwrap(); // unset: a pinned version, nothing to check
    }
}
