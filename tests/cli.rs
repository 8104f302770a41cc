//! CLI contract tests: exit codes, the `error:` + `hint:` shape, and commands that need no
//! systemd (detect on a fixture root, completions, man, self-test).
use assert_cmd::Command;
use std::path::{Path, PathBuf};

fn outpost() -> Command {
    let mut c = Command::cargo_bin("outpost").unwrap();
    c.env_remove("SUDO_USER")
        .env_remove("OUTPOST_ROOT")
        .env_remove("OUTPOST_CONFIG")
        .env_remove("OUTPOST_STATE_DIR");
    c
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/os-release")
        .join(name)
}

/// A fake host root: os-release, PID 1 name, passwd.
fn fake_root(os_release: &str, pid1: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    std::fs::create_dir_all(r.join("proc/1")).unwrap();
    std::fs::copy(fixture(os_release), r.join("etc/os-release")).unwrap();
    std::fs::write(r.join("proc/1/comm"), format!("{pid1}\n")).unwrap();
    if pid1 == "systemd" {
        std::fs::create_dir_all(r.join("run/systemd/system")).unwrap();
    }
    let uid = rustix_uid();
    std::fs::write(
        r.join("etc/passwd"),
        format!("root:x:0:0:root:/root:/bin/sh\nme:x:{uid}:{uid}::/home/me:/bin/sh\n"),
    )
    .unwrap();
    std::fs::write(r.join("etc/group"), "root:x:0:\n").unwrap();
    d
}

fn rustix_uid() -> u32 {
    // the test process's uid, read without extra crates
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

fn listing(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walk(root);
    v.sort();
    v
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap().flatten() {
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

fn assert_error_shape(stderr: &[u8]) {
    let s = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 2, "want `error:` + `hint:`, got:\n{s}");
    assert!(
        lines[0].starts_with("error: ") && lines[1].starts_with("hint: "),
        "{s}"
    );
    assert!(!lines[0].ends_with('.'), "no trailing period: {s}");
}

#[test]
fn version_comes_from_the_build() {
    let out = outpost()
        .arg("--version")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(
        String::from_utf8(out).unwrap().trim(),
        format!("outpost {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2_with_one_line_and_a_hint() {
    let cases: &[&[&str]] = &[
        &["install", "--bogus"],
        &["install", "--user", "--system"],
        &["frobnicate"],
        &["completions", "tcsh"],
        &["agent", "run", "--mode", "sideways"],
    ];
    for args in cases {
        let a = outpost().args(*args).assert().code(2);
        assert_error_shape(&a.get_output().stderr);
    }
}

#[test]
fn detect_on_fixture_roots() {
    // (fixture, pid1, expected exit, fragment of the JSON)
    let cases = [
        ("debian-12", "systemd", 0, "\"family\": \"debian\""),
        ("ubuntu-24.04", "systemd", 0, "\"family\": \"ubuntu\""),
        ("fedora-40", "systemd", 0, "untested"),
        ("alpine-3.20", "init", 1, "OpenRC"),
        ("debian-12", "init", 1, "needs systemd as PID 1"),
    ];
    for (os, pid1, code, want) in cases {
        let root = fake_root(os, pid1);
        let a = outpost()
            .args(["detect", "--json", "--root"])
            .arg(root.path())
            .assert()
            .code(code);
        let out = String::from_utf8_lossy(&a.get_output().stdout).to_string();
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{os}: {e}: {out}"));
        assert!(out.contains(want), "{os}/{pid1}: want {want:?} in {out}");
        if code == 0 {
            assert_eq!(v["topology"]["init"]["kind"], "systemd");
        }
    }
}

#[test]
fn install_on_an_unsupported_host_changes_nothing() {
    let root = fake_root("alpine-3.20", "init");
    let before = listing(root.path());
    let a = outpost()
        .args(["install", "--user", "--root"])
        .arg(root.path())
        .assert()
        .code(1);
    assert_error_shape(&a.get_output().stderr);
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(err.contains("OpenRC") || err.contains("systemd"), "{err}");
    assert_eq!(listing(root.path()), before);
}

#[test]
fn status_without_an_install_says_so() {
    let root = fake_root("debian-12", "systemd");
    let a = outpost()
        .env("HOME", "/home/me")
        .args(["status", "--root"])
        .arg(root.path())
        .assert()
        .code(3);
    let out = String::from_utf8_lossy(&a.get_output().stdout).to_string();
    assert!(out.contains("not installed"), "{out}");
}

#[test]
fn completions_and_man() {
    for shell in ["bash", "zsh", "fish"] {
        let out = outpost()
            .args(["completions", shell])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        assert!(String::from_utf8_lossy(&out).contains("outpost"), "{shell}");
    }
    let man = outpost()
        .arg("man")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let man = String::from_utf8_lossy(&man);
    assert!(
        man.starts_with(".ie") || man.contains(".TH outpost"),
        "{}",
        &man[..200.min(man.len())]
    );
}

#[test]
fn self_test_loads_the_config() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("config.toml");
    let self_test = |state: &std::path::Path| {
        outpost()
            .args(["self-test", "--config"])
            .arg(&cfg)
            .arg("--state-dir")
            .arg(state)
            .assert()
    };
    std::fs::write(&cfg, "[agent]\nlog_interval_secs = 9\n").unwrap();
    let out = self_test(d.path()).success().get_output().stdout.clone();
    assert!(String::from_utf8_lossy(&out).contains("self-test ok"));
    std::fs::write(&cfg, "[agent]\nlog_interval_secs = \"nine\"\n").unwrap();
    let a = self_test(d.path()).code(2);
    assert_error_shape(&a.get_output().stderr);
    // missing state dir: a failure (1), named
    std::fs::write(&cfg, "").unwrap();
    let a = self_test(&d.path().join("nope")).code(1);
    assert!(String::from_utf8_lossy(&a.get_output().stderr).contains("nope"));
}

#[test]
fn agent_run_refuses_a_bad_config_with_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("config.toml");
    std::fs::write(&cfg, "[nonsense]\n").unwrap();
    let a = outpost()
        .args(["agent", "run", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(d.path())
        .assert()
        .code(2);
    assert_error_shape(&a.get_output().stderr);
}

#[test]
fn pack_install_refuses_bad_release_sources_before_looking_for_an_install() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("missing.tar");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--bundle".into(), missing.display().to_string()],
            "is not a file",
        ),
        (vec!["github:o/r".into()], "not from github releases"),
        (vec!["ftp://h/packs/demo".into()], "only https://"),
        (vec![], "required"),
    ];
    for (args, want) in cases {
        let before = listing(d.path());
        let a = outpost()
            .env("OUTPOST_ROOT", d.path())
            .args(["pack", "install"])
            .args(&args)
            .assert()
            .code(2);
        let err = String::from_utf8_lossy(&a.get_output().stderr).to_lowercase();
        assert!(err.contains(want), "{args:?}: {err}");
        if !args.is_empty() {
            assert_error_shape(&a.get_output().stderr);
        }
        assert_eq!(listing(d.path()), before, "{args:?} changed nothing");
    }
}
