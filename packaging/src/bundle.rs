//! Offline bundles: one uncompressed tar holding the release-root layout for one version
//! and target, usable as a [`crate::Source`] (and by install.sh `--bundle`):
//!
//! ```text
//! manifest.json  manifest.json.minisig
//! vV/outpost-V-T.tar.gz  vV/outpost-V-T.tar.gz.minisig  vV/SHA256SUMS  vV/SHA256SUMS.minisig
//! ```
//!
//! A bundle is verified exactly like a release host, by whoever reads it through
//! [`Source::Bundle`]: the manifest's signature with the trusted keys (and the replay guard),
//! the artifact's size and sha256 from the signed manifest, the tarball's signature and the
//! file name in its trusted comment ([`crate::fetch_release`]). The reader refuses a bundle
//! that holds a wanted name twice or as anything but a regular file (`tar -x` would take the
//! last copy, the reader the first). install.sh `--bundle` hands the bundle to `outpost
//! install` as its release source, so the installed binary is checked the same way.
use crate::error::{Error, Result};
use crate::fetch::{Reader, Source, MAX_TARBALL_BYTES};
use crate::manifest::{artifact_name, MAX_MANIFEST_BYTES};
use crate::{fsx, MANIFEST, SHA256SUMS};
use std::path::Path;

/// The paths a bundle for `version`/`target` holds, in order.
pub fn bundle_members(version: &semver::Version, target: &str) -> Vec<String> {
    let tarball = artifact_name(version, target);
    vec![
        MANIFEST.to_string(),
        format!("{MANIFEST}.minisig"),
        format!("v{version}/{SHA256SUMS}"),
        format!("v{version}/{SHA256SUMS}.minisig"),
        format!("{tarball}.minisig"),
        tarball,
    ]
}

/// Write a bundle for `version`/`target` from `release` (a release directory or URL) to
/// `out`, atomically. Entries get fixed metadata (mode 0644, mtime 0, owner 0) so the same
/// release gives the same bundle. Nothing is verified here: the reader verifies, and
/// `outpost-release bundle` runs `tools::verify_release` on the result.
pub fn write_bundle(
    release: &Source,
    version: &semver::Version,
    target: &str,
    out: &Path,
) -> Result<()> {
    let reader = release.reader()?;
    let members = bundle_members(version, target);
    write_members(&reader, &members, MAX_TARBALL_BYTES, out)
}

/// Read `members` (relative paths) from `reader`, tarballs up to `max_tarball` bytes and
/// everything else up to [`MAX_MANIFEST_BYTES`], and write them to the bundle `out`
/// (atomically, fixed metadata). Shared by outpost's and packs' bundles.
pub(crate) fn write_members(
    reader: &Reader<'_>,
    members: &[String],
    max_tarball: u64,
    out: &Path,
) -> Result<()> {
    let mut parts = Vec::new();
    for rel in members {
        let limit = if rel.ends_with(".tar.gz") {
            max_tarball
        } else {
            MAX_MANIFEST_BYTES
        };
        parts.push((rel.clone(), reader.bytes(rel, limit)?));
    }
    fsx::write_atomic_with(out, 0o644, |f| {
        let mut b = tar::Builder::new(f);
        for (rel, data) in &parts {
            let mut h = tar::Header::new_ustar();
            h.set_path(rel)?;
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append(&h, &data[..])?;
        }
        b.finish()
    })
    .map_err(|e| match e {
        Error::Io { source, .. } => Error::io("write bundle", out, source),
        e => e,
    })
}
