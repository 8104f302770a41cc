//! GitHub Releases as a release host: a loopback server shaped like github.com (one release
//! per tag holding the `vV/` files plus the root files, `latest/download/NAME` answered with a
//! 302 to the latest release's asset) serves a release made with the `tools` API, and
//! `fetch_manifest`/`fetch_release`/`verify_release` read it through `github:o/r`.
use outpost_release::fetch::GITHUB_URL_ENV;
use outpost_release::tools::{self, BuildInput, PublishOptions, Signer};
use outpost_release::{
    fetch_manifest, fetch_release, Error, ReplayState, Source, TrustedKeys, Want,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const X86: &str = "x86_64-unknown-linux-musl";
const TEMPLATE: &str = "#!/bin/sh\nOUTPOST_EMBEDDED_RELEASE_URL=\"\"\nOUTPOST_EMBEDDED_PUBKEYS=\"\"\nOUTPOST_EMBEDDED_SHA256S=\"\"\nOUTPOST_EMBEDDED_CHANNELS=\"\"\n";

/// Files at the release root and their GitHub asset names.
const ROOT_FILES: &[(&str, &str)] = &[
    ("manifest.json", "manifest.json"),
    ("manifest.json.minisig", "manifest.json.minisig"),
    ("channels/stable", "channel-stable"),
    ("channels/beta", "channel-beta"),
    ("install.sh", "install.sh"),
];

/// Build and publish `versions` (each to stable, in order) with the `tools` API. Returns the
/// trusted keys and `assets/` holding one directory per GitHub release (`assets/vV/NAME`):
/// the files of `vV/` plus the root files as they were right after that publish.
fn github_releases(work: &Path, versions: &[&str]) -> (TrustedKeys, PathBuf) {
    let (_, sk) = tools::keygen(&work.join("keys"), None).unwrap();
    let signer = Signer::load(&sk, || unreachable!("unencrypted key")).unwrap();
    std::fs::write(work.join("LICENSE"), "Apache-2.0\n").unwrap();
    std::fs::write(work.join("README.md"), "# outpost\n").unwrap();
    std::fs::write(work.join("install.sh.in"), TEMPLATE).unwrap();
    let (build, rel, assets) = (work.join("build"), work.join("rel"), work.join("assets"));
    for (i, v) in versions.iter().enumerate() {
        let _ = std::fs::remove_dir_all(&build);
        tools::build_tarball(&BuildInput {
            version: v.parse().unwrap(),
            target: X86.into(),
            binary: "/bin/true".into(),
            license: work.join("LICENSE"),
            readme: work.join("README.md"),
            out: build.clone(),
            mtime: 0,
        })
        .unwrap();
        tools::sign_dir(&signer, &build).unwrap();
        tools::publish(
            &signer,
            &PublishOptions {
                from: build.clone(),
                to: rel.clone(),
                channel: Some("stable".into()),
                install_template: Some(work.join("install.sh.in")),
                base_url: None,
                extra_pubkeys: Vec::new(),
                now: Some(1_700_000_000 + i as u64),
            },
        )
        .unwrap();
        // `gh release create vV vV/* manifest.json … channel-stable channel-beta install.sh`
        let tag = format!("v{v}");
        let release = assets.join(&tag);
        std::fs::create_dir_all(&release).unwrap();
        for e in std::fs::read_dir(rel.join(&tag)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), release.join(e.file_name())).unwrap();
        }
        for (from, name) in ROOT_FILES {
            std::fs::copy(rel.join(from), release.join(name)).unwrap();
        }
    }
    (signer.trusted_keys(), assets)
}

#[path = "../../tests/support/http_stub.rs"]
mod http_stub;
use http_stub::{safe_segment, Reply};

/// A github.com stand-in on 127.0.0.1 for repository `o/r`: `/o/r/releases/download/TAG/NAME`
/// serves `assets/TAG/NAME`; `/o/r/releases/latest/download/NAME` redirects (302) to the
/// `latest` release's asset, as GitHub does. Every request path is logged.
fn serve_github(assets: PathBuf, latest: &'static str, log: Arc<Mutex<Vec<String>>>) -> String {
    http_stub::serve(log, move |path, origin| {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["o", "r", "releases", "latest", "download", name] if safe_segment(name) => {
                Reply::Found(format!("{origin}/o/r/releases/download/{latest}/{name}"))
            }
            ["o", "r", "releases", "download", tag, name]
                if safe_segment(tag) && safe_segment(name) =>
            {
                std::fs::read(assets.join(tag).join(name)).map_or(Reply::NotFound, Reply::Ok)
            }
            _ => Reply::NotFound,
        }
    })
}

/// One test: the environment is set once, before any request (no env races).
#[test]
fn github_releases_as_release_host() {
    let work = tempfile::tempdir().unwrap();
    let (keys, assets) = github_releases(work.path(), &["1.0.0", "1.1.0"]);
    let log = Arc::new(Mutex::new(Vec::new()));
    let url = serve_github(assets.clone(), "v1.1.0", log.clone());
    std::env::set_var("NO_PROXY", "127.0.0.1,localhost");
    std::env::set_var("no_proxy", "127.0.0.1,localhost");
    std::env::set_var(GITHUB_URL_ENV, &url);
    let source = Source::parse("github:o/r").unwrap();
    assert_eq!(
        source,
        Source::GitHub {
            owner: "o".into(),
            repo: "r".into(),
            base: url.clone(),
            ca_file: None,
        }
    );
    assert_eq!(source.to_string(), "github:o/r");

    // manifest.json through latest/download (302) → the latest release's asset
    let state = ReplayState::at(work.path().join("replay"));
    let m = fetch_manifest(&source, &keys, &state).unwrap();
    assert_eq!(m.releases.len(), 2);
    assert_eq!(m.channels["stable"].to_string(), "1.1.0");
    {
        let log = log.lock().unwrap();
        let i = log
            .iter()
            .position(|p| p == "/o/r/releases/latest/download/manifest.json")
            .unwrap_or_else(|| panic!("{log:?}"));
        assert_eq!(
            log[i + 1],
            "/o/r/releases/download/v1.1.0/manifest.json",
            "{log:?}"
        );
    }

    // the stable channel and a pinned older version, each from its own release
    for (want, version) in [("stable", "1.1.0"), ("1.0.0", "1.0.0")] {
        let staging = work.path().join(format!("staging-{want}"));
        let want: Want = want.parse().unwrap();
        let v = fetch_release(&source, &keys, &state, &want, X86, &staging).unwrap();
        assert_eq!(v.version.to_string(), version);
        let name = format!("outpost-{version}-{X86}.tar.gz");
        assert_eq!(v.tarball_path, staging.join(&name));
        assert_eq!(
            std::fs::read(&v.tarball_path).unwrap(),
            std::fs::read(assets.join(format!("v{version}")).join(&name)).unwrap()
        );
        let path = format!("/o/r/releases/download/v{version}/{name}");
        assert!(log.lock().unwrap().contains(&path), "{path}");
    }

    // the packager's full check: SHA256SUMS of every release and channel-* assets too
    let checked = tools::verify_release(&source, &keys).unwrap();
    assert!(
        checked.iter().any(|l| l == "channels/stable: 1.1.0 ok"),
        "{checked:?}"
    );
    assert!(
        checked
            .iter()
            .any(|l| l == "v1.0.0/SHA256SUMS: signature ok"),
        "{checked:?}"
    );
    assert!(log
        .lock()
        .unwrap()
        .contains(&"/o/r/releases/latest/download/channel-stable".to_string()));

    // a tampered asset (same size) is refused and nothing is left in staging
    let tarball = assets.join(format!("v1.1.0/outpost-1.1.0-{X86}.tar.gz"));
    let good = std::fs::read(&tarball).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(&tarball, &bad).unwrap();
    let staging = work.path().join("staging-tampered");
    let want: Want = "stable".parse().unwrap();
    let err = fetch_release(&source, &keys, &state, &want, X86, &staging).unwrap_err();
    assert!(matches!(err, Error::ShaMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!(
            "{url}/o/r/releases/download/v1.1.0/outpost-1.1.0-"
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    std::fs::write(&tarball, &good).unwrap();

    // a tampered manifest asset is refused
    let manifest = assets.join("v1.1.0/manifest.json");
    let good = std::fs::read(&manifest).unwrap();
    std::fs::write(
        &manifest,
        String::from_utf8(good.clone()).unwrap().replacen(
            "\"stable\": \"1.1.0\"",
            "\"stable\": \"1.0.0\"",
            1,
        ),
    )
    .unwrap();
    assert_ne!(std::fs::read(&manifest).unwrap(), good, "edit took effect");
    let err = fetch_manifest(&source, &keys, &state).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    std::fs::write(&manifest, &good).unwrap();

    // the older release's root files are an older manifest: refused as a replay
    let old = Source::GitHub {
        owner: "o".into(),
        repo: "r".into(),
        base: serve_github(assets.clone(), "v1.0.0", log.clone()),
        ca_file: None,
    };
    let err = fetch_manifest(&old, &keys, &state).unwrap_err();
    assert!(matches!(err, Error::Replay { .. }), "{err}");

    // another repository: not found, naming the GitHub URL
    let err = fetch_manifest(&Source::parse("github:o/nope").unwrap(), &keys, &state).unwrap_err();
    assert!(
        matches!(err, Error::NotFound { .. })
            && err.to_string().contains(&format!(
                "{url}/o/nope/releases/latest/download/manifest.json"
            )),
        "{err}"
    );
}
