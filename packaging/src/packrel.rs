//! Signed pack releases: a pack (docs/PACKS.md) shipped in the release format, verified
//! exactly like outpost's own releases (docs/RELEASES.md, "Pack releases").
//!
//! The release root of pack `NAME` is `packs/NAME/` of a release site:
//!
//! ```text
//! manifest.json                    signed pack index (schema 1, kind "pack")
//! manifest.json.minisig            its signature: `timestamp:T file:packs/NAME/manifest.json`
//! vV/NAME-V.tar.gz                 the pack tree (regular files and directories only)
//! vV/NAME-V.tar.gz.minisig         its signature (`file:NAME-V.tar.gz`)
//! ```
//!
//! [`fetch_pack`] reads it from any [`Source`] but GitHub (an http(s) URL of `packs/NAME`, a
//! directory, or an offline bundle holding those four files) and checks, before anything is
//! installed: the manifest's signature by a trusted key and its signed file name and
//! timestamp (the replay guard, per pack), the tarball's size and sha256 from the signed
//! manifest and its own signature, then unpacks it with the release extraction rules and the
//! pack limits and loads it: its `pack.toml` must name the signed name and version, and its
//! tree hash must be the signed one.
use crate::error::{Error, Result};
use crate::extract::{extract_tree, ExtractLimits};
use crate::fetch::{download_verified, Reader, Source};
use crate::manifest::{is_sha256_hex, Artifact, MAX_MANIFEST_BYTES};
use crate::verify::{ReplayState, TrustedComment, TrustedKeys, MAX_SIG_BYTES};
use crate::MANIFEST;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The directory of a release site that holds the pack release roots.
pub const PACKS_DIR: &str = "packs";
/// The pack manifest format version this code reads and writes.
pub const SCHEMA: u32 = 1;
/// The `kind` of a pack manifest (an outpost release manifest has none).
pub const KIND: &str = "pack";
/// Largest pack tarball accepted: the largest pack tree plus room for the tar headers.
pub const MAX_PACK_TARBALL_BYTES: u64 = outpost_pack::MAX_TREE_BYTES + (8 << 20);

/// `packs/NAME`: the release root of a pack inside a release site.
pub fn pack_root(name: &str) -> String {
    format!("{PACKS_DIR}/{name}")
}

/// `packs/NAME/manifest.json`: the `file:` of the pack manifest's trusted comment. It binds
/// the signature to the pack's name, and tells it apart from outpost's own `manifest.json`.
pub fn signed_manifest_name(name: &str) -> String {
    format!("{}/{MANIFEST}", pack_root(name))
}

/// `NAME-V.tar.gz`.
pub fn tarball_file_name(name: &str, version: &semver::Version) -> String {
    format!("{name}-{version}.tar.gz")
}

/// `vV/NAME-V.tar.gz`: the only tarball name a pack manifest may carry.
pub fn tarball_name(name: &str, version: &semver::Version) -> String {
    format!("v{version}/{}", tarball_file_name(name, version))
}

/// The caps of a pack tarball's extraction: a pack's own limits (entries, bytes).
pub fn extract_limits() -> ExtractLimits {
    ExtractLimits {
        max_entries: outpost_pack::MAX_TREE_ENTRIES,
        max_entry_bytes: outpost_pack::MAX_TREE_BYTES,
        max_total_bytes: outpost_pack::MAX_TREE_BYTES,
    }
}

/// The signed index of one pack's releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackManifest {
    pub schema: u32,
    /// Always [`KIND`].
    pub kind: String,
    /// The pack's name (`[pack] name` of every version).
    pub name: String,
    /// When the manifest was published (RFC 3339).
    pub generated_at: String,
    /// Unix seconds, strictly increasing with every publish; also in the signature's
    /// trusted comment.
    pub timestamp: u64,
    /// The version installed when none is asked for.
    pub latest: semver::Version,
    pub versions: Vec<PackVersion>,
}

/// One published version of a pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackVersion {
    pub version: semver::Version,
    /// When this version was first published (RFC 3339).
    pub released_at: String,
    /// The pack's tree hash (docs/PACKS.md, "The tree hash").
    pub tree_sha256: String,
    /// `vV/NAME-V.tar.gz`, its sha256 and size.
    pub tarball: Artifact,
}

impl PackManifest {
    /// Parse and validate; `location` names the file or URL in errors.
    pub fn parse(bytes: &[u8], location: &str) -> Result<PackManifest> {
        let m: PackManifest = serde_json::from_slice(bytes).map_err(|e| Error::Manifest {
            location: location.to_string(),
            detail: format!("not a pack manifest (a pack release is the site's packs/NAME): {e}"),
        })?;
        m.validate(location)?;
        Ok(m)
    }

    /// Pretty JSON with a trailing newline; versions sorted newest first.
    pub fn to_json(&self) -> Vec<u8> {
        let mut m = self.clone();
        m.versions.sort_by(|a, b| b.version.cmp(&a.version));
        // Invariant: the types hold only strings, integers and lists of them.
        let mut out = serde_json::to_vec_pretty(&m).expect("pack manifest serializes");
        out.push(b'\n');
        out
    }

    /// The format's rules: schema 1, kind "pack", a valid pack name, unique versions whose
    /// tarball is exactly `vV/NAME-V.tar.gz` (never a path outside the pack's root), hashes
    /// of 64 lowercase hex digits, a size of 1 byte to [`MAX_PACK_TARBALL_BYTES`], and a
    /// `latest` that is listed.
    pub fn validate(&self, location: &str) -> Result<()> {
        let bad = |detail: String| Error::Manifest {
            location: location.to_string(),
            detail,
        };
        if self.schema != SCHEMA {
            return Err(bad(format!(
                "pack manifest schema {} is not supported (this outpost reads schema {SCHEMA}); upgrade outpost",
                self.schema
            )));
        }
        if self.kind != KIND {
            return Err(bad(format!("kind {:?} is not {KIND:?}", self.kind)));
        }
        if !outpost_pack::valid_name(&self.name) {
            return Err(bad(format!("invalid pack name {:?}", self.name)));
        }
        let mut seen = std::collections::BTreeSet::new();
        for v in &self.versions {
            if !seen.insert(&v.version) {
                return Err(bad(format!("version {} is listed twice", v.version)));
            }
            let want = tarball_name(&self.name, &v.version);
            if v.tarball.name != want {
                return Err(bad(format!(
                    "tarball {:?} of {} should be named {want:?}",
                    v.tarball.name, v.version
                )));
            }
            if !is_sha256_hex(&v.tarball.sha256) || !is_sha256_hex(&v.tree_sha256) {
                return Err(bad(format!(
                    "a sha256 of {} is not 64 lowercase hex digits",
                    v.version
                )));
            }
            if v.tarball.size == 0 || v.tarball.size > MAX_PACK_TARBALL_BYTES {
                return Err(bad(format!(
                    "size {} of {} is out of range (1 to {MAX_PACK_TARBALL_BYTES} bytes)",
                    v.tarball.size, v.tarball.name
                )));
            }
        }
        if !seen.contains(&self.latest) {
            return Err(bad(format!(
                "latest points at {}, which is not listed",
                self.latest
            )));
        }
        Ok(())
    }

    /// `version`, or the latest one.
    pub fn pick(&self, version: Option<&semver::Version>, location: &str) -> Result<&PackVersion> {
        let want = version.unwrap_or(&self.latest);
        self.versions
            .iter()
            .find(|v| &v.version == want)
            .ok_or_else(|| Error::NoSuchRelease {
                wanted: format!("pack {} {want}", self.name),
                location: location.to_string(),
            })
    }
}

/// A pack release source: any [`Source`] but GitHub, whose layout has no place for packs.
pub fn check_source(source: &Source) -> Result<()> {
    match source {
        Source::GitHub { owner, repo, .. } => Err(Error::Source {
            source_text: format!("github:{owner}/{repo}"),
            detail: "a pack release is read from an https:// URL of packs/NAME, a directory or a pack bundle, not from GitHub Releases".into(),
        }),
        _ => Ok(()),
    }
}

/// Read the pack manifest and its signature, verify the signature with `keys`, check that
/// its trusted comment names `packs/NAME/manifest.json` and carries the manifest's
/// timestamp, and check that timestamp against `replay_dir/NAME` (read only: see
/// [`record_replay`]). `replay_dir` `None`: no memory (one-shot tools).
pub(crate) fn fetch_pack_manifest(
    reader: &Reader<'_>,
    keys: &TrustedKeys,
    replay_dir: Option<&Path>,
) -> Result<PackManifest> {
    let location = reader.location(MANIFEST);
    if keys.is_empty() {
        return Err(Error::NoTrustedKeys { location });
    }
    let body = reader.bytes(MANIFEST, MAX_MANIFEST_BYTES)?;
    let sig = reader.bytes(&format!("{MANIFEST}.minisig"), MAX_SIG_BYTES)?;
    let sig = String::from_utf8(sig).map_err(|_| Error::BadSignature {
        location: location.clone(),
        detail: "the .minisig is not text".into(),
    })?;
    let comment = TrustedComment::parse(&keys.verify(&body, &sig, &location)?);
    let manifest = PackManifest::parse(&body, &location)?;
    let bad = |detail: String| Error::BadSignature {
        location: location.clone(),
        detail,
    };
    let want_file = signed_manifest_name(&manifest.name);
    if comment.file.as_deref() != Some(want_file.as_str()) {
        return Err(bad(format!(
            "the signature is for {:?}, not {want_file:?} (sign it with `outpost-release pack build`)",
            comment.file.unwrap_or_default()
        )));
    }
    let ts = comment
        .timestamp
        .ok_or_else(|| bad("the trusted comment has no timestamp".into()))?;
    if manifest.timestamp != ts {
        return Err(bad(format!(
            "the signed timestamp {ts} differs from the manifest's {}",
            manifest.timestamp
        )));
    }
    replay_state(replay_dir, &manifest.name, true).check_and_record(ts, &location)?;
    Ok(manifest)
}

fn replay_state(replay_dir: Option<&Path>, name: &str, read_only: bool) -> ReplayState {
    match replay_dir {
        Some(d) if read_only => ReplayState::checking(d.join(name)),
        Some(d) => ReplayState::at(d.join(name)),
        None => ReplayState::none(),
    }
}

/// Remember `timestamp` as the newest manifest of pack `name` seen (in `replay_dir/NAME`,
/// the directory created 0755 if missing). Called once the pack is installed, so a refused
/// or failed install changes nothing on disk.
pub fn record_replay(replay_dir: &Path, name: &str, timestamp: u64) -> Result<()> {
    crate::fsx::create_dir_all(replay_dir)?;
    replay_state(Some(replay_dir), name, false)
        .check_and_record(timestamp, &signed_manifest_name(name))
}

/// A pack release downloaded, verified and unpacked into a private work directory.
#[derive(Debug, Clone)]
pub struct VerifiedPack {
    /// The pack, loaded from the unpacked tree (`pack.root` is inside the work directory).
    pub pack: outpost_pack::Pack,
    /// The tarball's sha256, as signed.
    pub tarball_sha256: String,
    /// The signed manifest's timestamp (not yet recorded: [`record_replay`]).
    pub manifest_timestamp: u64,
    /// Where the signed manifest was read from (for messages).
    pub manifest_location: String,
}

/// Fetch, verify and unpack a pack release into `work_dir` (which must exist and be private
/// to the caller; the tarball and the tree `tree/` go there). `version` `None`: the
/// manifest's latest. Every check is described in the module docs; on any failure nothing
/// outside `work_dir` is written.
pub fn fetch_pack(
    source: &Source,
    keys: &TrustedKeys,
    replay_dir: Option<&Path>,
    version: Option<&semver::Version>,
    work_dir: &Path,
) -> Result<VerifiedPack> {
    check_source(source)?;
    let reader = source.reader()?;
    let manifest = fetch_pack_manifest(&reader, keys, replay_dir)?;
    let location = reader.location(MANIFEST);
    let pv = manifest.pick(version, &location)?;
    verify_version(&reader, keys, &manifest, pv, work_dir)
}

/// Download, verify and unpack one version of a verified manifest.
pub(crate) fn verify_version(
    reader: &Reader<'_>,
    keys: &TrustedKeys,
    manifest: &PackManifest,
    pv: &PackVersion,
    work_dir: &Path,
) -> Result<VerifiedPack> {
    let file_name = tarball_file_name(&manifest.name, &pv.version);
    let tarball = work_dir.join(&file_name);
    let downloaded = download_verified(reader, keys, &pv.tarball, &file_name, &tarball, true)?;
    let tree = work_dir.join("tree");
    extract_tree(&tarball, &tree, &extract_limits())?;
    let pack = check_tree(&tree, manifest, pv, &reader.location(&pv.tarball.name))?;
    Ok(VerifiedPack {
        pack,
        tarball_sha256: downloaded.sha256,
        manifest_timestamp: manifest.timestamp,
        manifest_location: reader.location(MANIFEST),
    })
}

/// Load the unpacked `tree` as a pack (every rule of `outpost pack validate`) and check it
/// is the signed one: name, version and tree hash.
pub fn check_tree(
    tree: &Path,
    manifest: &PackManifest,
    pv: &PackVersion,
    location: &str,
) -> Result<outpost_pack::Pack> {
    let pack = outpost_pack::load(tree, None).map_err(|e| Error::InvalidPack {
        location: location.to_string(),
        detail: e.to_string(),
    })?;
    if pack.name != manifest.name || pack.version != pv.version {
        return Err(Error::InvalidPack {
            location: location.to_string(),
            detail: format!(
                "its pack.toml is {} {}, the signed manifest says {} {}",
                pack.name, pack.version, manifest.name, pv.version
            ),
        });
    }
    if pack.sha256 != pv.tree_sha256 {
        return Err(Error::ShaMismatch {
            location: format!("the tree of {location}"),
            expected: pv.tree_sha256.clone(),
            actual: pack.sha256,
        });
    }
    Ok(pack)
}

/// The four files of a pack bundle for `version`, in order (paths in the pack's root).
pub fn bundle_members(name: &str, version: &semver::Version) -> Vec<String> {
    let tarball = tarball_name(name, version);
    vec![
        MANIFEST.to_string(),
        format!("{MANIFEST}.minisig"),
        format!("{tarball}.minisig"),
        tarball,
    ]
}

/// Where a pack release's work files go: a fresh private directory under the system temp
/// dir, removed on drop.
pub fn work_dir() -> Result<crate::fsx::PrivateTempDir> {
    crate::fsx::private_temp_dir("pack-release")
}

/// The file kinds a pack release source may name: what `outpost pack install` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackSource {
    /// A pack directory (with `pack.toml`): installed as it is, unsigned.
    Dir(PathBuf),
    /// A signed pack release: URL, release directory or bundle.
    Release(Source),
}

impl PackSource {
    /// `https://…`, `http://…`, `file://…` → a release; a file → a bundle; a directory with
    /// `pack.toml` → a pack directory; a directory with `manifest.json` (and no `pack.toml`)
    /// → a pack release root; anything else → a pack directory (whose load says what is
    /// missing). `github:` is refused.
    pub fn parse(s: &str) -> Result<PackSource> {
        let t = s.trim();
        if t.contains("://") || t.starts_with("github:") {
            let src = Source::parse_with_github_url(t, None)?;
            check_source(&src)?;
            return Ok(PackSource::Release(src));
        }
        let p = PathBuf::from(t);
        if p.is_file() {
            return Ok(PackSource::Release(Source::Bundle(p)));
        }
        if p.is_dir() && !p.join(outpost_pack::MANIFEST).exists() && p.join(MANIFEST).is_file() {
            return Ok(PackSource::Release(Source::Dir(p)));
        }
        Ok(PackSource::Dir(p))
    }
}
