//! `outpost-release pack build|bundle|verify`: the CLI contract (output, exit codes, the
//! `error:` + `hint:` shape) over a release site on disk. The library's refusals are
//! table-tested in `packaging/src/packtools.rs`.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn tool(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpost-release"))
        .args(args)
        .current_dir(cwd)
        .env_remove("OUTPOST_RELEASE_PASSWORD")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .expect("run outpost-release")
}

fn ok(args: &[&str], cwd: &Path) -> String {
    let o = tool(args, cwd);
    assert!(o.status.success(), "{args:?}: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exit `code`, and stderr is exactly one `error:` line and one `hint:` line.
fn refused(args: &[&str], cwd: &Path, code: i32) -> String {
    let o = tool(args, cwd);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {o:?}");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{args:?}: {err}");
    assert!(
        lines[0].starts_with("error: ") && lines[1].starts_with("hint: "),
        "{err}"
    );
    err
}

fn write_pack(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(
        dir.join("pack.toml"),
        format!("[pack]\nname = \"demo\"\nversion = \"{version}\"\n[[action]]\nid = \"hello\"\ncommand = [\"bin/hello.sh\"]\n"),
    )
    .unwrap();
    std::fs::write(dir.join("bin/hello.sh"), "#!/bin/sh\necho hello\n").unwrap();
    std::fs::set_permissions(
        dir.join("bin/hello.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

#[test]
fn pack_build_bundle_verify_and_refusals() {
    let d = tempfile::tempdir().unwrap();
    let w = d.path();
    ok(&["keygen", "--unencrypted", "--out", "keys"], w);
    ok(&["keygen", "--unencrypted", "--out", "other"], w);
    write_pack(&w.join("demo"), "1.0.0");

    let out = ok(
        &[
            "pack",
            "build",
            "demo",
            "--key",
            "keys/outpost-release.key",
            "--out",
            "site",
            "--bundle",
            "demo.tar",
        ],
        w,
    );
    assert!(
        out.contains("pack demo 1.0.0 published: tree sha256 "),
        "{out}"
    );
    for f in [
        "site/packs/demo/manifest.json",
        "site/packs/demo/manifest.json.minisig",
        "site/packs/demo/v1.0.0/demo-1.0.0.tar.gz",
        "site/packs/demo/v1.0.0/demo-1.0.0.tar.gz.minisig",
        "demo.tar",
    ] {
        assert!(w.join(f).is_file(), "{f}");
    }
    let tree = |s: &str| {
        s.split("tree sha256 ")
            .nth(1)
            .and_then(|r| r.get(..64))
            .unwrap()
            .to_string()
    };
    let built_tree = tree(&out);
    let v = ok(
        &[
            "pack",
            "verify",
            "site/packs/demo",
            "--pubkey",
            "keys/outpost-release.pub",
        ],
        w,
    );
    assert_eq!(tree(&v), built_tree, "{v}");
    let v = ok(
        &[
            "pack",
            "verify",
            "demo.tar",
            "--pubkey",
            "keys/outpost-release.pub",
        ],
        w,
    );
    assert_eq!(tree(&v), built_tree, "{v}");
    let b = ok(
        &[
            "pack",
            "bundle",
            "site/packs/demo",
            "--out",
            "again.tar",
            "--pubkey",
            "keys/outpost-release.pub",
        ],
        w,
    );
    assert!(b.contains("again.tar (1.0.0)"), "{b}");
    assert_eq!(
        std::fs::read(w.join("again.tar")).unwrap(),
        std::fs::read(w.join("demo.tar")).unwrap(),
        "bundles are deterministic"
    );

    // the same pack again: nothing changes but the manifest's timestamp
    let again = ok(
        &[
            "pack",
            "build",
            "demo",
            "--key",
            "keys/outpost-release.key",
            "--out",
            "site",
        ],
        w,
    );
    assert!(again.contains("already published"), "{again}");

    // refusals: a wrong key and a tampered tarball are failures (1), bad input is 2
    let e = refused(
        &[
            "pack",
            "verify",
            "site/packs/demo",
            "--pubkey",
            "other/outpost-release.pub",
        ],
        w,
        1,
    );
    assert!(e.contains("not trusted"), "{e}");
    std::fs::write(w.join("demo/README"), "changed\n").unwrap();
    let e = refused(
        &[
            "pack",
            "build",
            "demo",
            "--key",
            "keys/outpost-release.key",
            "--out",
            "site",
        ],
        w,
        2,
    );
    assert!(e.contains("already published"), "{e}");
    std::fs::write(w.join("demo/pack.toml"), "[pack]\nname = \"Demo\"\n").unwrap();
    refused(
        &[
            "pack",
            "build",
            "demo",
            "--key",
            "keys/outpost-release.key",
            "--out",
            "site2",
        ],
        w,
        2,
    );
    assert!(
        !w.join("site2").exists(),
        "an invalid pack publishes nothing"
    );
    let tarball = w.join("site/packs/demo/v1.0.0/demo-1.0.0.tar.gz");
    let mut bytes = std::fs::read(&tarball).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0x55;
    std::fs::write(&tarball, bytes).unwrap();
    let e = refused(
        &[
            "pack",
            "verify",
            "site/packs/demo",
            "--pubkey",
            "keys/outpost-release.pub",
        ],
        w,
        1,
    );
    assert!(e.contains("sha256 mismatch"), "{e}");
    let e = refused(
        &[
            "pack",
            "bundle",
            "site/packs/demo",
            "--out",
            "bad.tar",
            "--pubkey",
            "keys/outpost-release.pub",
        ],
        w,
        1,
    );
    assert!(e.contains("sha256 mismatch"), "{e}");
    assert!(!w.join("bad.tar").exists());
    refused(
        &[
            "pack",
            "verify",
            "github:o/r",
            "--pubkey",
            "keys/outpost-release.pub",
        ],
        w,
        2,
    );
}
