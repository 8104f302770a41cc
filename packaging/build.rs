//! Bakes the version and the trusted release public keys into the binary.
//!
//! * `OUTPOST_BUILD_VERSION` overrides the Cargo.toml version (release pipelines use it for
//!   pre-releases, tests to build several versions).
//! * Trusted keys: every `keys/*.pub` (minisign public key files) plus the newline-separated
//!   `OUTPOST_RELEASE_PUBKEYS` (bare base64 key lines or key file text), so CI can build a
//!   binary that trusts a throwaway test key. None at all is allowed: the binary then trusts
//!   only keys given at run time and refuses every release otherwise.
#[path = "src/b64.rs"]
mod b64;

use std::fmt::Write as _;

fn main() {
    println!("cargo:rerun-if-env-changed=OUTPOST_BUILD_VERSION");
    println!("cargo:rerun-if-env-changed=OUTPOST_RELEASE_PUBKEYS");
    println!("cargo:rerun-if-changed=keys");
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

    let mut keys: Vec<String> = Vec::new();
    let mut files: Vec<_> = match std::fs::read_dir("keys") {
        Ok(rd) => rd
            .map(|e| e.expect("cannot read packaging/keys").path())
            .filter(|p| p.extension().is_some_and(|x| x == "pub"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let text = std::fs::read_to_string(f)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display()));
        collect(&text, &f.display().to_string(), &mut keys);
    }
    if let Ok(text) = std::env::var("OUTPOST_RELEASE_PUBKEYS") {
        collect(&text, "OUTPOST_RELEASE_PUBKEYS", &mut keys);
    }
    let mut src = String::from(
        "/// Compiled-in trusted release keys (base64).\npub const BUILTIN_KEYS: &[&str] = &[\n",
    );
    for k in &keys {
        writeln!(src, "    {k:?},").expect("writing to a String cannot fail");
    }
    src.push_str("];\n");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("builtin_keys.rs"), src).expect("cannot write builtin_keys.rs");
}

fn collect(text: &str, origin: &str, keys: &mut Vec<String>) {
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("untrusted comment:") || line.starts_with('#') {
            continue;
        }
        if !b64::is_minisign_pubkey(line) {
            panic!("{origin}: {line:?} is not a minisign public key (expected a base64 line like RWQ...)");
        }
        if !keys.iter().any(|k| k == line) {
            keys.push(line.to_string());
        }
    }
}
