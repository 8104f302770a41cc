//! The packager side of signed pack releases (feature `tools`): build a pack's deterministic
//! tarball, sign it, publish it into a release site (`packs/NAME/`), bundle it, verify it.
//! The format: [`crate::packrel`], docs/RELEASES.md ("Pack releases").
use crate::error::{Error, Result};
use crate::fetch::Source;
use crate::manifest::{rfc3339, Artifact, MAX_MANIFEST_BYTES};
use crate::packrel::{
    self, bundle_members, pack_root, signed_manifest_name, tarball_name, PackManifest, PackVersion, KIND, MAX_PACK_TARBALL_BYTES, SCHEMA,
};
use crate::tools::Signer;
use crate::verify::TrustedKeys;
use crate::{fsx, MANIFEST};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A pack that `outpost pack validate` refuses, as a packaging error.
fn pack_err(e: outpost_pack::PackError) -> Error {
    Error::usage(e.to_string(), outpost_core::Hint::hint(&e))
}

/// Read `path` without following a link swapped in after the walk, capped.
fn read_nofollow(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    let mut buf = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(buf)
}

/// The pack's tree as a deterministic `.tar.gz`: its directories (0755) and regular files
/// (0755 when executable, else 0644) in path order, owner 0:0, mtime `mtime`, gzip mtime 0.
/// Every file is hashed again as it is read: a tree that changes under the build (or is not
/// the one `pack` was loaded from) is refused.
pub fn pack_tarball(pack: &outpost_pack::Pack, mtime: u64) -> Result<Vec<u8>> {
    let entries = outpost_pack::walk(&pack.root, None).map_err(pack_err)?;
    if outpost_pack::tree_hash(&entries) != pack.sha256 {
        return Err(changed(&pack.root));
    }
    let mut tar = tar::Builder::new(Vec::new());
    let add_err = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| Error::io("add to the tarball", &p, e)
    };
    for e in &entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        if e.dir {
            h.set_path(&e.path).map_err(add_err(&e.path))?;
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_cksum();
            tar.append(&h, std::io::empty())
                .map_err(add_err(&e.path))?;
            continue;
        }
        let src = pack.root.join(&e.path);
        let data = read_nofollow(&src, outpost_pack::MAX_TREE_BYTES)?;
        if fsx::sha256_bytes(&data) != e.sha256 {
            return Err(changed(&pack.root));
        }
        h.set_path(&e.path).map_err(add_err(&e.path))?;
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(if e.executable { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.set_cksum();
        tar.append(&h, &data[..]).map_err(add_err(&e.path))?;
    }
    // Invariant: writing to a Vec cannot fail.
    let tar = tar.into_inner().expect("tar into Vec");
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    // Invariant: compressing into a Vec cannot fail.
    gz.write_all(&tar).expect("gzip into Vec");
    let gz = gz.finish().expect("gzip into Vec");
    if gz.len() as u64 > MAX_PACK_TARBALL_BYTES {
        return Err(Error::TooLarge {
            location: pack.root.display().to_string(),
            limit: MAX_PACK_TARBALL_BYTES,
        });
    }
    Ok(gz)
}

fn changed(root: &Path) -> Error {
    Error::usage(
        format!("pack {} changed while it was being built", root.display()),
        "build it again once nothing writes to the pack directory",
    )
}

/// Inputs of [`build_pack`].
#[derive(Debug, Clone)]
pub struct PackBuildOptions {
    /// The pack directory (with `pack.toml`).
    pub dir: PathBuf,
    /// The release site: the pack goes to `site/packs/NAME/`.
    pub site: PathBuf,
    /// mtime of every tar entry (SOURCE_DATE_EPOCH, or 0).
    pub mtime: u64,
    /// Publish time (unix seconds); `None`: now. The manifest's timestamp is this or one
    /// past the previous manifest's, whichever is later.
    pub now: Option<u64>,
}

/// What [`build_pack`] published.
#[derive(Debug, Clone)]
pub struct PackBuilt {
    pub name: String,
    pub version: semver::Version,
    pub tree_sha256: String,
    pub tarball_sha256: String,
    pub size: u64,
    /// `site/packs/NAME`: the pack's release root (what `outpost pack install` is given).
    pub root: PathBuf,
    /// `site/packs/NAME/vV/NAME-V.tar.gz`.
    pub tarball: PathBuf,
    /// The new manifest's timestamp.
    pub timestamp: u64,
    /// The version was already published with the same tarball (nothing was rebuilt).
    pub unchanged: bool,
}

/// Validate the pack in `opts.dir` (everything `outpost pack validate` refuses is refused),
/// build its tarball, sign it, and publish it into `opts.site/packs/NAME/`: the tarball and
/// its `.minisig` under `vV/`, then `manifest.json` merged (a version already published
/// must have the same tarball: releases are immutable), `latest` moved to the newest
/// non-prerelease version (or the newest when all are prereleases), the timestamp bumped,
/// and its `.minisig`. The result is verified as `outpost pack install` would, with the
/// signer's public key.
pub fn build_pack(signer: &Signer, opts: &PackBuildOptions) -> Result<PackBuilt> {
    let pack = outpost_pack::load(&opts.dir, None).map_err(pack_err)?;
    let gz = pack_tarball(&pack, opts.mtime)?;
    let sha = fsx::sha256_bytes(&gz);
    let root = opts.site.join(pack_root(&pack.name));
    let rel = tarball_name(&pack.name, &pack.version);
    let tarball = root.join(&rel);
    let manifest_path = root.join(MANIFEST);
    let old = read_site_manifest(&manifest_path)?;
    if let Some(m) = &old {
        if m.name != pack.name {
            return Err(Error::usage(
                format!("{} is the manifest of pack {}, not {}", manifest_path.display(), m.name, pack.name),
                "each pack has its own packs/NAME/ directory: check the site directory",
            ));
        }
    }
    let published = old
        .as_ref()
        .and_then(|m| m.versions.iter().find(|v| v.version == pack.version));
    let unchanged = match published {
        Some(v) if v.tarball.sha256 == sha && v.tree_sha256 == pack.sha256 => true,
        Some(v) => {
            return Err(Error::usage(
                format!(
                    "pack {} {} is already published with tarball sha256 {}; this build is {sha}",
                    pack.name, pack.version, v.tarball.sha256
                ),
                "published versions never change: bump [pack] version in pack.toml",
            ))
        }
        None => false,
    };
    if !unchanged || !tarball.is_file() {
        fsx::create_dir_all(fsx::parent(&tarball))?;
        fsx::write_atomic(&tarball, &gz, 0o644)?;
        signer.sign_file(&tarball)?;
    }
    let now = opts.now.unwrap_or_else(now);
    let timestamp = old.as_ref().map_or(now, |m| now.max(m.timestamp + 1));
    let mut versions: Vec<PackVersion> = old.map(|m| m.versions).unwrap_or_default();
    if !unchanged {
        versions.push(PackVersion {
            version: pack.version.clone(),
            released_at: rfc3339(now),
            tree_sha256: pack.sha256.clone(),
            tarball: Artifact {
                name: rel,
                sha256: sha.clone(),
                size: gz.len() as u64,
            },
        });
    }
    let latest = newest(&versions);
    let manifest = PackManifest {
        schema: SCHEMA,
        kind: KIND.to_string(),
        name: pack.name.clone(),
        generated_at: rfc3339(timestamp),
        timestamp,
        latest,
        versions,
    };
    manifest.validate(&manifest_path.display().to_string())?;
    let body = manifest.to_json();
    let sig = signer.sign_bytes(&body, &manifest_comment(&pack.name, timestamp))?;
    fsx::write_atomic(&manifest_path, &body, 0o644)?;
    fsx::write_atomic(&root.join(format!("{MANIFEST}.minisig")), sig.as_bytes(), 0o644)?;
    let work = packrel::work_dir()?;
    let v = packrel::fetch_pack(
        &Source::Dir(root.clone()),
        &signer.trusted_keys(),
        None,
        Some(&pack.version),
        work.path(),
    )?;
    if v.pack.sha256 != pack.sha256 {
        return Err(changed(&opts.dir));
    }
    Ok(PackBuilt {
        name: pack.name,
        version: pack.version,
        tree_sha256: pack.sha256,
        tarball_sha256: sha,
        size: gz.len() as u64,
        root,
        tarball,
        timestamp,
        unchanged,
    })
}

/// The newest non-prerelease version, or the newest when all are prereleases.
fn newest(versions: &[PackVersion]) -> semver::Version {
    let stable = versions
        .iter()
        .map(|v| &v.version)
        .filter(|v| v.pre.is_empty())
        .max();
    stable
        .or_else(|| versions.iter().map(|v| &v.version).max())
        .cloned()
        .unwrap_or_else(|| semver::Version::new(0, 0, 0))
}

/// The site's current manifest of a pack, if any (it is the packager's own file: parsed and
/// validated, its signature is not needed to merge into it).
fn read_site_manifest(path: &Path) -> Result<Option<PackManifest>> {
    match fs_err::metadata(path) {
        Ok(_) => {
            let body = crate::verify::read_small(path, MAX_MANIFEST_BYTES)?;
            PackManifest::parse(body.as_bytes(), &path.display().to_string()).map(Some)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Write a pack bundle (one uncompressed tar: `manifest.json`, its `.minisig`, the tarball's
/// `.minisig`, the tarball; entries 0644, owner 0, mtime 0) of `version` (`None`: latest)
/// from the pack release root `release` to `out`, atomically, then verify it as `outpost
/// pack install --bundle` would when `keys` is not empty (and remove it if that fails).
/// Returns the version bundled.
pub fn write_pack_bundle(
    release: &Source,
    version: Option<&semver::Version>,
    out: &Path,
    keys: &TrustedKeys,
) -> Result<semver::Version> {
    packrel::check_source(release)?;
    let reader = release.reader()?;
    let location = reader.location(MANIFEST);
    let body = reader.bytes(MANIFEST, MAX_MANIFEST_BYTES)?;
    let manifest = PackManifest::parse(&body, &location)?;
    let pv = manifest.pick(version, &location)?.clone();
    let mut parts = Vec::new();
    for rel in bundle_members(&manifest.name, &pv.version) {
        let limit = if rel.ends_with(".tar.gz") {
            MAX_PACK_TARBALL_BYTES
        } else {
            MAX_MANIFEST_BYTES
        };
        parts.push((rel.clone(), reader.bytes(&rel, limit)?));
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
    })?;
    if !keys.is_empty() {
        let work = packrel::work_dir()?;
        let r = packrel::fetch_pack(
            &Source::Bundle(out.to_path_buf()),
            keys,
            None,
            Some(&pv.version),
            work.path(),
        );
        if let Err(e) = r {
            let _ = fs_err::remove_file(out); // best effort: never leave a bad bundle
            return Err(e);
        }
    }
    Ok(pv.version)
}

/// Check a pack release root, URL or bundle end to end with `keys`: the manifest's signature
/// and signed name, and for every version the bundle or site holds, the tarball's size,
/// sha256 and signature, its extraction, `pack.toml` and tree hash. One line per version.
pub fn verify_pack(source: &Source, keys: &TrustedKeys) -> Result<Vec<String>> {
    packrel::check_source(source)?;
    let reader = source.reader()?;
    let manifest = packrel::fetch_pack_manifest(&reader, keys, None)?;
    let mut lines = vec![format!(
        "{} signed by a trusted key (pack {}, timestamp {}, latest {})",
        reader.location(MANIFEST),
        manifest.name,
        manifest.timestamp,
        manifest.latest
    )];
    let bundle = matches!(source, Source::Bundle(_));
    for pv in &manifest.versions {
        let work = packrel::work_dir()?;
        match packrel::verify_version(&reader, keys, &manifest, pv, work.path()) {
            Ok(v) => lines.push(format!(
                "pack {} {}: tarball sha256 {}, tree sha256 {}",
                manifest.name, pv.version, v.tarball_sha256, v.pack.sha256
            )),
            // A bundle holds one version of the manifest's list.
            Err(Error::NotFound { .. }) if bundle => continue,
            Err(e) => return Err(e),
        }
    }
    if lines.len() == 1 {
        return Err(Error::NotFound {
            location: reader.location(&tarball_name(&manifest.name, &manifest.latest)),
        });
    }
    Ok(lines)
}

/// The trusted comment of a pack manifest's signature: `timestamp:T file:packs/NAME/manifest.json`.
pub fn manifest_comment(name: &str, timestamp: u64) -> String {
    format!("timestamp:{timestamp} file:{}", signed_manifest_name(name))
}
