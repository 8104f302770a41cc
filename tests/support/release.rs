//! Test releases: signed release roots made with the real `outpost-release` packager from
//! the test builds of `ci/build-variants.sh` (versions 1.0.0, 1.1.0, 1.2.0 with the
//! `fault-injection` feature).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Target name the test builds are published under (they are glibc builds; the testbed runs
/// the same Debian as the build machine).
pub const TARGET: &str = "x86_64-unknown-linux-musl";

static VARIANTS: OnceLock<PathBuf> = OnceLock::new();

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Output dir of `ci/build-variants.sh` (`OUTPOST_E2E_VARIANTS`, or built now).
pub fn variants() -> PathBuf {
    VARIANTS
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("OUTPOST_E2E_VARIANTS") {
                return PathBuf::from(p);
            }
            let out = Command::new("bash")
                .arg(repo().join("ci/build-variants.sh"))
                .output()
                .expect("run ci/build-variants.sh");
            assert!(
                out.status.success(),
                "ci/build-variants.sh failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        })
        .clone()
}

pub fn bin(version: &str) -> PathBuf {
    variants().join(version).join("outpost")
}

fn tool() -> PathBuf {
    variants().join("outpost-release")
}

fn run(args: &[&str]) -> String {
    let out = Command::new(tool())
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run outpost-release");
    assert!(
        out.status.success(),
        "outpost-release {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A release root on the host, with its throwaway signing key.
pub struct Release {
    pub work: PathBuf,
    pub root: PathBuf,
    pub pubkey: String,
    key: PathBuf,
    build: PathBuf,
}

impl Release {
    /// A new key and an empty release under a fresh temp dir.
    pub fn new(name: &str) -> Release {
        let work =
            std::env::temp_dir().join(format!("outpost-e2e-rel-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let keys = work.join("keys");
        run(&["keygen", "--unencrypted", "--out", keys.to_str().unwrap()]);
        let pubfile = std::fs::read_to_string(keys.join("outpost-release.pub")).unwrap();
        let pubkey = pubfile
            .lines()
            .nth(1)
            .expect("minisign .pub has a key line")
            .trim()
            .to_string();
        Release {
            root: work.join("root"),
            key: keys.join("outpost-release.key"),
            build: work.join("build"),
            pubkey,
            work,
        }
    }

    /// Build, sign and publish `versions` (from the test builds); `channel` moves to the newest.
    pub fn publish(&self, versions: &[&str], channel: &str) -> &Release {
        self.publish_inner(versions, channel, None)
    }

    /// Like `publish`, with `--base-url url` baked into install.sh (e2e_release: the one-liner
    /// needs to know where it was served from).
    pub fn publish_with_base_url(&self, versions: &[&str], channel: &str, url: &str) -> &Release {
        self.publish_inner(versions, channel, Some(url))
    }

    fn publish_inner(&self, versions: &[&str], channel: &str, base_url: Option<&str>) -> &Release {
        let build = self.build.to_str().unwrap();
        let key = self.key.to_str().unwrap();
        for v in versions {
            let binary = bin(v);
            run(&[
                "build",
                "--version",
                v,
                "--target",
                TARGET,
                "--binary",
                binary.to_str().unwrap(),
                "--out",
                build,
            ]);
        }
        run(&["sign", "--key", key, build]);
        let mut args = vec![
            "publish",
            "--from",
            build,
            "--to",
            self.root.to_str().unwrap(),
            "--key",
            key,
            "--channel",
            channel,
        ];
        if let Some(url) = base_url {
            args.extend(["--base-url", url]);
        }
        run(&args);
        self
    }

    /// `outpost-release bundle` of `version` (TARGET) from the root into `out`, verified with
    /// this release's key as it is written.
    pub fn bundle(&self, version: &str, out: &std::path::Path) -> PathBuf {
        let pubkey = self.key.with_file_name("outpost-release.pub");
        run(&[
            "bundle",
            "--release",
            self.root.to_str().unwrap(),
            "--version",
            version,
            "--target",
            TARGET,
            "--out",
            out.to_str().unwrap(),
            "--pubkey",
            pubkey.to_str().unwrap(),
        ]);
        out.to_path_buf()
    }

    /// Path of a version's tarball in the root.
    pub fn tarball(&self, version: &str) -> PathBuf {
        self.root
            .join(format!("v{version}"))
            .join(format!("outpost-{version}-{TARGET}.tar.gz"))
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// The `[release]` + `[upgrade]` config for a release root at `url`.
pub fn config(url: &str, pubkey: &str, soak_secs: u64) -> String {
    format!("[release]\nurl = \"{url}\"\npublic_keys = [\"{pubkey}\"]\n\n[upgrade]\nsoak_secs = {soak_secs}\n")
}
