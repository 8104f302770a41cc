//! Release format, build identity, fetch and verify.
//!
//! The agent links [`manifest`], [`verify`], [`fetch`], [`extract`] and [`bundle`] (reading
//! side only). Signing, key generation, building and publishing live in [`tools`], behind
//! the `tools` feature that only the `outpost-release` packager enables.
//! The format is a public contract: docs/RELEASES.md.

mod b64;
pub mod bundle;
pub mod error;
pub mod extract;
pub mod fetch;
pub mod fsx;
pub mod manifest;
pub mod packrel;
#[cfg(feature = "tools")]
pub mod packtools;
#[cfg(feature = "tools")]
pub mod tools;
pub mod verify;

pub use error::{Error, Result};
pub use extract::{extract_tarball, install_version, ExtractLimits};
pub use fetch::{fetch_manifest, fetch_release, Source, Verified, MAX_TARBALL_BYTES};
pub use manifest::{Artifact, Manifest, Release, Want, TARGETS};
pub use verify::{ReplayState, TrustedComment, TrustedKeys};

/// File name of the signed release index at the release root.
pub const MANIFEST: &str = "manifest.json";
/// File name of the checksum list in each `vV/` directory.
pub const SHA256SUMS: &str = "SHA256SUMS";

/// The version this binary was built as (Cargo.toml, or `OUTPOST_BUILD_VERSION` at build time).
pub const VERSION: &str = env!("OUTPOST_VERSION");

/// Parsed form of [`VERSION`].
pub fn version() -> semver::Version {
    // Invariant: build.rs refuses to build with a VERSION that does not parse.
    semver::Version::parse(VERSION).expect("build.rs validated OUTPOST_VERSION")
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_semver() {
        assert_eq!(super::version().to_string(), super::VERSION);
    }
}
