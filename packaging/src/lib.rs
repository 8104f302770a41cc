//! Release format, build identity, fetch and verify.
//!
//! For now this crate carries the build identity; the release pipeline lands here.

/// The version this binary was built as (Cargo.toml, or `OUTPOST_BUILD_VERSION` at build time).
pub const VERSION: &str = env!("OUTPOST_VERSION");

/// The target triple this binary was built for.
pub const TARGET_ARCH: &str = std::env::consts::ARCH;

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
