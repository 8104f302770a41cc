use super::*;
use serde_norway::Value;

const KEY: &str = "opk_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// minisign's documented example public key.
const PUBKEY: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
const SHA: &str = "3f0c1e1fd4b3e0a0a8b6d4f1c2e3d4c5b6a79887766554433221100ffeeddcc0";
const SIG: &str = "untrusted comment: signature from minisign secret key\nRUQf6LRCGA9i559r3g7V1qNyJDApGip8MfqcadIgT9CuhV3EMhHoN1mGTkUidF/z7SrlQgXdy8ofjb7bNJJylDOocrCo8KLzZwo=\ntrusted comment: timestamp:1740830400\tfile:outpost-1.2.0-x86_64-unknown-linux-musl.tar.gz\thashed\nH3Hy5jJmVpKbCnzDDmjQ1k47dvZuLfYhG2ZcXGN4r1wzkXWmbGEDNuH5lEg0zWbmDdtaY1DmpmJdCWJhBpO+Dg==\n";
const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBfzCCASWgAwIBAgIUQk9ZdGVzdGNhZm9yY2xvdWRpbml0MAoGCCqGSM49BAMC\nMB4xHDAaBgNVBAMME291dHBvc3QgZTJlIHRlc3QgQ0EwHhcNMjUwMTAxMDAwMDAw\n-----END CERTIFICATE-----\n";

fn params() -> Params {
    Params {
        hub_url: "https://hub.example.com:8443/".into(),
        enroll_key: KEY.into(),
        release_url: "https://releases.example.com/outpost".into(),
        release: Pinned {
            version: semver::Version::new(1, 2, 0),
            target: "x86_64-unknown-linux-musl".into(),
            sha256: SHA.into(),
            minisig: SIG.into(),
            pubkeys: vec![PUBKEY.into()],
        },
        mode: Mode::System,
        run_as: None,
        ca_pem: None,
    }
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
}

fn files(doc: &Value) -> Vec<Value> {
    doc["write_files"].as_sequence().unwrap().clone()
}

fn file<'a>(files: &'a [Value], path: &str) -> &'a Value {
    files
        .iter()
        .find(|f| f["path"].as_str() == Some(path))
        .unwrap_or_else(|| panic!("no write_files entry {path}"))
}

#[test]
fn renders_cloud_config_with_the_key_only_in_the_secrets_file() {
    let text = render(&params()).unwrap();
    assert!(text.starts_with("#cloud-config\n"), "{text}");
    assert!(text.len() < MAX_USER_DATA_BYTES);
    assert_eq!(text.matches(KEY).count(), 1, "the key appears once");
    let doc = yaml(&text);
    let fs = files(&doc);
    let secrets = file(&fs, SECRETS_FILE_SYSTEM);
    assert_eq!(
        secrets["content"].as_str(),
        Some(format!("OUTPOST_ENROLL_KEY={KEY}\n").as_str())
    );
    assert_eq!(secrets["permissions"].as_str(), Some("0600"));
    assert_eq!(secrets["owner"].as_str(), Some("root:root"));
    // no other entry and no runcmd carries the key
    for f in &fs {
        if f["path"].as_str() != Some(SECRETS_FILE_SYSTEM) {
            assert!(!f["content"].as_str().unwrap().contains(KEY));
        }
    }
    let runcmd = serde_json::to_string(&doc["runcmd"].clone()).unwrap();
    assert!(!runcmd.contains(KEY) && runcmd.contains("bootstrap.sh"));
    // the bootstrap is the rendered script, with the pinned release in it
    let script = file(&fs, &format!("{HOST_DIR}/bootstrap.sh"));
    assert_eq!(script["permissions"].as_str(), Some("0700"));
    let body = script["content"].as_str().unwrap();
    assert_eq!(body, render_bootstrap(&params()).unwrap());
    for want in [
        format!("SHA256='{SHA}'"),
        "HUB_URL='https://hub.example.com:8443'".into(),
        "RELEASE_URL='https://releases.example.com/outpost'".into(),
        "VERSION='1.2.0'".into(),
        "TARGET='x86_64-unknown-linux-musl'".into(),
        format!("PUBKEYS='{PUBKEY}'"),
        "MODE='system'".into(),
        format!("SECRETS_FILE='{SECRETS_FILE_SYSTEM}'"),
        "CA_FILE=''".into(),
        "TARBALL_URL='https://releases.example.com/outpost/v1.2.0/outpost-1.2.0-x86_64-unknown-linux-musl.tar.gz'".into(),
        "GITHUB_URL=''".into(),
    ] {
        assert!(body.lines().any(|l| l == want), "bootstrap lacks {want}");
    }
    assert!(!body.contains(KEY));
    // the signature arrives byte for byte (tabs of the trusted comment included)
    let sig = file(
        &fs,
        &format!("{HOST_DIR}/outpost-1.2.0-x86_64-unknown-linux-musl.tar.gz.minisig"),
    );
    assert_eq!(sig["content"].as_str(), Some(SIG));
    // no placeholder is left
    assert!(!text.contains("@ENROLL_KEY@") && !text.contains("@BOOTSTRAP@"));
}

#[test]
fn bootstrap_is_valid_sh() {
    let p = params();
    let script = render_bootstrap(&p).unwrap();
    for shell in ["sh", "dash", "bash"] {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("b.sh");
        std::fs::write(&f, &script).unwrap();
        match std::process::Command::new(shell).arg("-n").arg(&f).output() {
            Ok(o) => assert!(o.status.success(), "{shell} -n: {o:?}"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{shell}: {e}"),
        }
    }
}

#[test]
fn ca_and_several_keys_stay_under_the_limit() {
    let mut p = params();
    p.ca_pem = Some(CA.replace('\n', "\r\n"));
    p.release.pubkeys.push(PUBKEY.into());
    p.run_as = Some("deploy".into());
    let text = render(&p).unwrap();
    assert!(text.len() < MAX_USER_DATA_BYTES, "{} bytes", text.len());
    let doc = yaml(&text);
    let fs = files(&doc);
    assert_eq!(file(&fs, CA_FILE)["content"].as_str(), Some(CA));
    let body = file(&fs, &format!("{HOST_DIR}/bootstrap.sh"))["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(body.contains(&format!("PUBKEYS='{PUBKEY}\n{PUBKEY}'")));
    assert!(body.contains(&format!("CA_FILE='{CA_FILE}'")));
    assert!(body.contains("RUN_AS='deploy'"));
    // a CA bundle that would push it over 32 KiB is refused, not truncated
    p.ca_pem = Some(CA.repeat(130));
    let Err(e) = render(&p) else {
        panic!("a 24 KiB CA renders over 32 KiB")
    };
    assert!(e.to_string().contains("32768 bytes"), "{e}");
    p.ca_pem = Some(CA.repeat(400));
    let Err(e) = render(&p) else {
        panic!("a 70 KiB CA is refused")
    };
    assert!(e.to_string().contains("CA file"), "{e}");
}

#[test]
fn user_mode_stages_the_key_on_tmpfs_and_needs_a_user() {
    let mut p = params();
    p.mode = Mode::User;
    assert!(render(&p).is_err(), "user mode without --run-as");
    p.run_as = Some("alice".into());
    let text = render(&p).unwrap();
    let doc = yaml(&text);
    let fs = files(&doc);
    assert!(file(&fs, SECRETS_FILE_USER)["content"]
        .as_str()
        .unwrap()
        .contains(KEY));
    assert!(!text.contains(SECRETS_FILE_SYSTEM));
    assert_eq!(text.matches(KEY).count(), 1);
}

#[test]
fn hostile_values_are_refused_or_inert() {
    type Mutate = Box<dyn Fn(&mut Params)>;
    let bad: Vec<(&str, Mutate)> = vec![
        (
            "quote in hub",
            Box::new(|p| p.hub_url = "https://h'; rm -rf /".into()),
        ),
        (
            "space in hub",
            Box::new(|p| p.hub_url = "https://h x".into()),
        ),
        (
            "newline in hub",
            Box::new(|p| p.hub_url = "https://h\n- x".into()),
        ),
        (
            "$ in release",
            Box::new(|p| p.release_url = "https://h/$(id)".into()),
        ),
        (
            "ftp release",
            Box::new(|p| p.release_url = "ftp://h".into()),
        ),
        (
            "github without repo",
            Box::new(|p| p.release_url = "github:o".into()),
        ),
        (
            "github with $",
            Box::new(|p| p.release_url = "github:o/$(id)".into()),
        ),
        ("empty host", Box::new(|p| p.hub_url = "https://".into())),
        (
            "plain http to a remote hub (the token would cross unencrypted)",
            Box::new(|p| p.hub_url = "http://hub.example.com".into()),
        ),
        (
            "key with quote",
            Box::new(|p| p.enroll_key = "opk_'x".into()),
        ),
        (
            "key with newline",
            Box::new(|p| p.enroll_key = "opk_x\nruncmd:".into()),
        ),
        ("empty key", Box::new(|p| p.enroll_key = String::new())),
        (
            "run-as injection",
            Box::new(|p| p.run_as = Some("root; id".into())),
        ),
        (
            "upper sha",
            Box::new(|p| p.release.sha256 = SHA.to_uppercase()),
        ),
        ("short sha", Box::new(|p| p.release.sha256 = "abc".into())),
        ("no keys", Box::new(|p| p.release.pubkeys.clear())),
        (
            "bad key",
            Box::new(|p| p.release.pubkeys = vec!["RWQ'x".into()]),
        ),
        ("bad target", Box::new(|p| p.release.target = "mips".into())),
        (
            "not a minisig",
            Box::new(|p| p.release.minisig = "hello\n".into()),
        ),
        (
            "control char in sig",
            Box::new(|p| p.release.minisig = format!("{SIG}\u{1b}[0m")),
        ),
        (
            "ca without cert",
            Box::new(|p| p.ca_pem = Some("hello\n".into())),
        ),
    ];
    for (what, f) in bad {
        let mut p = params();
        f(&mut p);
        let e = render(&p).expect_err(what);
        assert!(!e.hint().is_empty(), "{what}");
        assert!(!e.to_string().contains(KEY), "{what}: error shows the key");
    }
    // a placeholder-looking value is copied literally, never expanded
    let mut p = params();
    p.hub_url = "https://hub.example.com/@ENROLL_KEY@".into();
    let text = render(&p).unwrap();
    assert_eq!(text.matches(KEY).count(), 1);
    assert!(text.contains("https://hub.example.com/@ENROLL_KEY@"));
    yaml(&text);
    assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    assert!(
        !format!("{:?}", params()).contains(KEY),
        "Debug shows the key"
    );
}

#[test]
fn github_release_source_maps_onto_release_assets() {
    let mut p = params();
    p.release_url = " github:My-Org/out.post/ ".into();
    let body = render_bootstrap(&p).unwrap();
    for want in [
        "RELEASE_URL='github:My-Org/out.post'",
        "TARBALL_URL='https://github.com/My-Org/out.post/releases/download/v1.2.0/outpost-1.2.0-x86_64-unknown-linux-musl.tar.gz'",
        // github.com is the default: the host needs no OUTPOST_GITHUB_URL
        "GITHUB_URL=''",
    ] {
        assert!(body.lines().any(|l| l == want), "bootstrap lacks {want}");
    }
    yaml(&render(&p).unwrap());
}

#[test]
fn resolve_pins_a_channel_or_a_version_from_the_signed_release() {
    use outpost_release::tools;
    let d = tempfile::tempdir().unwrap();
    let (pk, sk) = tools::keygen(&d.path().join("keys"), None).unwrap();
    let signer = tools::Signer::load(&sk, || Ok(String::new())).unwrap();
    for (n, f) in ["bin", "LICENSE", "README.md"].iter().enumerate() {
        std::fs::write(d.path().join(f), format!("file {n}\n")).unwrap();
    }
    let build = d.path().join("build");
    let target = "x86_64-unknown-linux-musl";
    for v in ["1.0.0", "1.1.0"] {
        std::fs::write(d.path().join("bin"), format!("\x7fELF outpost {v}\n")).unwrap();
        tools::build_tarball(&tools::BuildInput {
            version: v.parse().unwrap(),
            target: target.into(),
            binary: d.path().join("bin"),
            license: d.path().join("LICENSE"),
            readme: d.path().join("README.md"),
            out: build.clone(),
            mtime: 0,
        })
        .unwrap();
    }
    let root = d.path().join("root");
    let m = tools::publish(
        &signer,
        &tools::PublishOptions {
            from: build,
            to: root.clone(),
            channel: Some("stable".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let keys = TrustedKeys::parse(&std::fs::read_to_string(&pk).unwrap(), "test").unwrap();
    let src = root.display().to_string();
    let p = resolve(&src, &keys, None, &Want::Channel("stable".into()), target).unwrap();
    assert_eq!(p.version.to_string(), "1.1.0");
    let want = &m.release(&p.version).unwrap().artifacts[target];
    assert_eq!(p.sha256, want.sha256);
    let sig_file = root.join(format!("{}.minisig", want.name));
    assert_eq!(p.minisig, std::fs::read_to_string(&sig_file).unwrap());
    assert_eq!(p.pubkeys, keys.base64_keys());
    let p0 = resolve(
        &src,
        &keys,
        None,
        &Want::Exact("1.0.0".parse().unwrap()),
        target,
    )
    .unwrap();
    assert_eq!(p0.version.to_string(), "1.0.0");
    assert_ne!(p0.sha256, p.sha256);
    // rendering works with what resolve returns
    let mut params = params();
    params.release = p;
    render(&params).unwrap();
    // an untrusted key, an unknown version and a tampered signature are refused
    let other = TrustedKeys::parse(PUBKEY, "other").unwrap();
    assert!(resolve(&src, &other, None, &Want::Channel("stable".into()), target).is_err());
    assert!(resolve(
        &src,
        &keys,
        None,
        &Want::Exact("9.9.9".parse().unwrap()),
        target
    )
    .is_err());
    let text = std::fs::read_to_string(&sig_file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut b = lines[1].clone().into_bytes();
    b[40] = if b[40] == b'A' { b'B' } else { b'A' };
    lines[1] = String::from_utf8(b).unwrap();
    std::fs::write(&sig_file, lines.join("\n") + "\n").unwrap();
    assert!(resolve(&src, &keys, None, &Want::Channel("stable".into()), target).is_err());
}
