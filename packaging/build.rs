//! Bakes the version into the binary. `OUTPOST_BUILD_VERSION` overrides the Cargo.toml
//! version (release pipelines use it for pre-releases, tests to build several versions).
fn main() {
    println!("cargo:rerun-if-env-changed=OUTPOST_BUILD_VERSION");
    let version = match std::env::var("OUTPOST_BUILD_VERSION") {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => std::env::var("CARGO_PKG_VERSION").expect("cargo always sets CARGO_PKG_VERSION"),
    };
    if semver::Version::parse(&version).is_err() {
        panic!(
            "OUTPOST_BUILD_VERSION={version:?} is not a semantic version (expected X.Y.Z[-pre])"
        );
    }
    println!("cargo:rustc-env=OUTPOST_VERSION={version}");
}
