//! The packager side of signed pack releases (feature `tools`): build a pack's deterministic
//! tarball, sign it, publish it into a release site (`packs/NAME/`), bundle it, verify it.
//! The format: [`crate::packrel`], docs/RELEASES.md ("Pack releases").
use crate::error::{Error, Result};
use crate::fetch::Source;
use crate::manifest::{rfc3339, Artifact, MAX_MANIFEST_BYTES};
use crate::packrel::{
    self, bundle_members, pack_root, signed_manifest_name, tarball_name, PackManifest, PackVersion,
    KIND, MAX_PACK_TARBALL_BYTES, SCHEMA,
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
            tar.append(&h, std::io::empty()).map_err(add_err(&e.path))?;
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
                format!(
                    "{} is the manifest of pack {}, not {}",
                    manifest_path.display(),
                    m.name,
                    pack.name
                ),
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
    fsx::write_atomic(
        &root.join(format!("{MANIFEST}.minisig")),
        sig.as_bytes(),
        0o644,
    )?;
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
    let members = bundle_members(&manifest.name, &pv.version);
    crate::bundle::write_members(&reader, &members, MAX_PACK_TARBALL_BYTES, out)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packrel::{fetch_pack, record_replay, VerifiedPack};
    use crate::verify::TrustedComment;
    use std::os::unix::fs::PermissionsExt;

    const NAME: &str = "hello";

    struct Fx {
        dir: tempfile::TempDir,
        signer: Signer,
        keys: TrustedKeys,
    }

    fn write_pack(dir: &Path, version: &str) {
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(
            dir.join("pack.toml"),
            format!("[pack]\nname = \"{NAME}\"\nversion = \"{version}\"\n[[action]]\nid = \"hi\"\ncommand = [\"bin/hi.sh\"]\n"),
        )
        .unwrap();
        std::fs::write(dir.join("bin/hi.sh"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(
            dir.join("bin/hi.sh"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        std::fs::write(dir.join("README"), "notes\n").unwrap();
    }

    fn fx() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let (_, sk) = crate::tools::keygen(&dir.path().join("keys"), None).unwrap();
        let signer = Signer::load(&sk, || panic!("unencrypted key")).unwrap();
        let keys = signer.trusted_keys();
        write_pack(&dir.path().join("src"), "1.0.0");
        let f = Fx { dir, signer, keys };
        f.build(1_000);
        f
    }

    impl Fx {
        fn site(&self) -> PathBuf {
            self.dir.path().join("site")
        }
        fn root(&self) -> PathBuf {
            self.site().join(pack_root(NAME))
        }
        fn build(&self, now: u64) -> PackBuilt {
            build_pack(
                &self.signer,
                &PackBuildOptions {
                    dir: self.dir.path().join("src"),
                    site: self.site(),
                    mtime: 0,
                    now: Some(now),
                },
            )
            .unwrap()
        }
        fn fetch(&self, keys: &TrustedKeys, replay: Option<&Path>) -> Result<VerifiedPack> {
            let work = tempfile::tempdir().unwrap();
            fetch_pack(&Source::Dir(self.root()), keys, replay, None, work.path())
        }
        fn manifest(&self) -> PackManifest {
            PackManifest::parse(&std::fs::read(self.root().join(MANIFEST)).unwrap(), "m").unwrap()
        }
        /// Write `m` and sign it with `comment` (default: the right one).
        fn sign_manifest(&self, m: &PackManifest, comment: Option<&str>) {
            let body = m.to_json();
            let c = comment
                .map(str::to_string)
                .unwrap_or_else(|| manifest_comment(NAME, m.timestamp));
            let sig = self.signer.sign_bytes(&body, &c).unwrap();
            std::fs::write(self.root().join(MANIFEST), body).unwrap();
            std::fs::write(self.root().join("manifest.json.minisig"), sig).unwrap();
        }
        /// Replace 1.0.0's tarball with `gz` (signed), its sha and size in a re-signed
        /// manifest: only the contents can be refused.
        fn republish(&self, gz: &[u8]) {
            let v = semver::Version::new(1, 0, 0);
            let path = self.root().join(tarball_name(NAME, &v));
            std::fs::write(&path, gz).unwrap();
            self.signer.sign_file(&path).unwrap();
            let mut m = self.manifest();
            m.versions[0].tarball.sha256 = fsx::sha256_bytes(gz);
            m.versions[0].tarball.size = gz.len() as u64;
            self.sign_manifest(&m, None);
        }
    }

    /// A .tar.gz of raw entries: (path bytes, type, contents, mode), bypassing tar's own
    /// path checks.
    fn raw_tarball(entries: &[(&str, tar::EntryType, &[u8], u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, mode) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_entry_type(*kind);
            if *kind == tar::EntryType::Symlink {
                h.set_link_name("/etc/shadow").unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&b.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    }

    const TOML: &[u8] = b"[pack]\nname = \"hello\"\nversion = \"1.0.0\"\n[[action]]\nid = \"hi\"\ncommand = [\"bin/hi.sh\"]\n";
    const HI: &[u8] = b"#!/bin/sh\necho hi\n";
    const REG: tar::EntryType = tar::EntryType::Regular;

    #[test]
    fn build_then_install_side_verifies() {
        let f = fx();
        let v = f.fetch(&f.keys, None).unwrap();
        let src = outpost_pack::load(&f.dir.path().join("src"), None).unwrap();
        assert_eq!(
            v.pack.sha256, src.sha256,
            "the unpacked tree is the source's"
        );
        assert_eq!(v.pack.name, NAME);
        let m = f.manifest();
        assert_eq!(m.latest.to_string(), "1.0.0");
        assert_eq!(m.versions[0].tree_sha256, src.sha256);
        assert_eq!(m.timestamp, 1_000);
        let lines = verify_pack(&Source::Dir(f.root()), &f.keys).unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
    }

    #[test]
    fn tarball_is_deterministic_and_modes_come_from_the_x_bit() {
        let f = fx();
        let first =
            std::fs::read(f.root().join(tarball_name(NAME, &"1.0.0".parse().unwrap()))).unwrap();
        // Same tree elsewhere, other mtimes and permission bits: same bytes.
        let other = f.dir.path().join("copy");
        write_pack(&other, "1.0.0");
        std::fs::set_permissions(other.join("README"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::set_permissions(
            other.join("bin/hi.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let p = outpost_pack::load(&other, None).unwrap();
        assert_eq!(pack_tarball(&p, 0).unwrap(), first);
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&first[..]));
        let got: Vec<(String, u32, u64, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("README".to_string(), 0o644, 0, 0),
                ("bin".to_string(), 0o755, 0, 0),
                ("bin/hi.sh".to_string(), 0o755, 0, 0),
                ("pack.toml".to_string(), 0o644, 0, 0),
            ]
        );
    }

    #[test]
    fn refusals_table() {
        type Setup = fn(&Fx) -> Option<TrustedKeys>;
        type Want = fn(&Error) -> bool;
        let cases: &[(&str, Setup, Want)] = &[
            (
                "tampered manifest",
                |f| {
                    let p = f.root().join(MANIFEST);
                    let s = std::fs::read_to_string(&p)
                        .unwrap()
                        .replace("1.0.0\"", "1.0.0\" ");
                    std::fs::write(p, s).unwrap();
                    None
                },
                |e| matches!(e, Error::BadSignature { .. }),
            ),
            (
                "wrong key",
                |_| {
                    Some(
                        TrustedKeys::parse(
                            "RWTGnk8a6RTphBHaNdFsKGTCAOHhNCJgSFzIEJFV5bHCr9yaBumeKrdb",
                            "other",
                        )
                        .unwrap(),
                    )
                },
                |e| matches!(e, Error::UnknownKey { .. }),
            ),
            (
                "no trusted key",
                |_| Some(TrustedKeys::empty()),
                |e| matches!(e, Error::NoTrustedKeys { .. }),
            ),
            (
                "outpost release manifest signature",
                |f| {
                    let m = f.manifest();
                    f.sign_manifest(&m, Some(&TrustedComment::for_manifest(m.timestamp)));
                    None
                },
                |e| matches!(e, Error::BadSignature { detail, .. } if detail.contains("packs/hello/manifest.json")),
            ),
            (
                "signed timestamp differs",
                |f| {
                    let m = f.manifest();
                    f.sign_manifest(&m, Some(&manifest_comment(NAME, m.timestamp + 1)));
                    None
                },
                |e| matches!(e, Error::BadSignature { .. }),
            ),
            (
                "tarball one byte longer",
                |f| {
                    let p = f.root().join("v1.0.0/hello-1.0.0.tar.gz");
                    let mut b = std::fs::read(&p).unwrap();
                    b.push(0);
                    std::fs::write(p, b).unwrap();
                    None
                },
                |e| matches!(e, Error::TooLarge { .. } | Error::SizeMismatch { .. }),
            ),
            (
                "tarball byte flipped",
                |f| {
                    let p = f.root().join("v1.0.0/hello-1.0.0.tar.gz");
                    let mut b = std::fs::read(&p).unwrap();
                    let n = b.len() / 2;
                    b[n] ^= 0xff;
                    std::fs::write(p, b).unwrap();
                    None
                },
                |e| matches!(e, Error::ShaMismatch { .. }),
            ),
            (
                "tarball signature of another file",
                |f| {
                    let sig = std::fs::read(f.root().join("manifest.json.minisig")).unwrap();
                    std::fs::write(f.root().join("v1.0.0/hello-1.0.0.tar.gz.minisig"), sig)
                        .unwrap();
                    None
                },
                |e| matches!(e, Error::BadSignature { .. }),
            ),
            (
                "tree hash mismatch",
                |f| {
                    let mut m = f.manifest();
                    m.versions[0].tree_sha256 = "0".repeat(64);
                    f.sign_manifest(&m, None);
                    None
                },
                |e| matches!(e, Error::ShaMismatch { location, .. } if location.starts_with("the tree of")),
            ),
            (
                "tarball size over the limit",
                |f| {
                    let mut m = f.manifest();
                    m.versions[0].tarball.size = MAX_PACK_TARBALL_BYTES + 1;
                    f.sign_manifest(&m, None);
                    None
                },
                |e| matches!(e, Error::Manifest { .. }),
            ),
            (
                "tarball outside its version dir",
                |f| {
                    let mut m = f.manifest();
                    m.versions[0].tarball.name = "../../etc/hello-1.0.0.tar.gz".into();
                    f.sign_manifest(&m, None);
                    None
                },
                |e| matches!(e, Error::Manifest { .. }),
            ),
            (
                "symlink entry",
                |f| {
                    f.republish(&raw_tarball(&[
                        ("pack.toml", REG, TOML, 0o644),
                        ("bin/hi.sh", tar::EntryType::Symlink, b"", 0o777),
                    ]));
                    None
                },
                |e| matches!(e, Error::UnsafeEntry { why, .. } if why.contains("symlink")),
            ),
            (
                "dot-dot entry",
                |f| {
                    f.republish(&raw_tarball(&[
                        ("pack.toml", REG, TOML, 0o644),
                        ("../evil", REG, b"x", 0o644),
                    ]));
                    None
                },
                |e| matches!(e, Error::UnsafeEntry { .. }),
            ),
            (
                "absolute entry",
                |f| {
                    f.republish(&raw_tarball(&[("/etc/evil", REG, b"x", 0o644)]));
                    None
                },
                |e| matches!(e, Error::UnsafeEntry { .. }),
            ),
            (
                "fifo entry",
                |f| {
                    f.republish(&raw_tarball(&[
                        ("pack.toml", REG, TOML, 0o644),
                        ("p", tar::EntryType::Fifo, b"", 0o644),
                    ]));
                    None
                },
                |e| matches!(e, Error::UnsafeEntry { .. }),
            ),
            (
                "duplicate entry",
                |f| {
                    f.republish(&raw_tarball(&[
                        ("pack.toml", REG, TOML, 0o644),
                        ("pack.toml", REG, TOML, 0o644),
                    ]));
                    None
                },
                |e| matches!(e, Error::UnsafeEntry { why, .. } if why.contains("twice")),
            ),
            (
                "more entries than a pack may hold",
                |f| {
                    let names: Vec<String> = (0..=outpost_pack::MAX_TREE_ENTRIES)
                        .map(|i| format!("f{i}"))
                        .collect();
                    let entries: Vec<(&str, tar::EntryType, &[u8], u32)> = names
                        .iter()
                        .map(|n| (n.as_str(), REG, &b""[..], 0o644))
                        .collect();
                    f.republish(&raw_tarball(&entries));
                    None
                },
                |e| matches!(e, Error::Archive { detail, .. } if detail.contains("entries")),
            ),
            (
                "not a pack",
                |f| {
                    f.republish(&raw_tarball(&[("README", REG, b"x", 0o644)]));
                    None
                },
                |e| matches!(e, Error::InvalidPack { .. }),
            ),
            (
                "pack.toml of another version",
                |f| {
                    let toml = String::from_utf8_lossy(TOML).replace("1.0.0", "2.0.0");
                    f.republish(&raw_tarball(&[
                        ("bin/hi.sh", REG, HI, 0o755),
                        ("pack.toml", REG, toml.as_bytes(), 0o644),
                    ]));
                    None
                },
                |e| matches!(e, Error::InvalidPack { detail, .. } if detail.contains("2.0.0")),
            ),
            (
                "command not executable in the tarball",
                |f| {
                    f.republish(&raw_tarball(&[
                        ("bin/hi.sh", REG, HI, 0o644),
                        ("pack.toml", REG, TOML, 0o644),
                    ]));
                    None
                },
                |e| matches!(e, Error::InvalidPack { .. }),
            ),
        ];
        for (name, setup, want) in cases {
            let f = fx();
            let keys = setup(&f).unwrap_or_else(|| f.keys.clone());
            let err = f.fetch(&keys, None).map(|v| v.pack.sha256).unwrap_err();
            assert!(want(&err), "{name}: {err:?}");
            let msg = err.to_string();
            assert!(
                !msg.contains('\n') && !msg.starts_with(char::is_uppercase),
                "{name}: {msg}"
            );
            assert!(!err.hint().is_empty());
        }
    }

    #[test]
    fn a_genuine_raw_tarball_is_accepted() {
        // The control of the hostile cases above: the same helper with a valid tree passes.
        let f = fx();
        f.republish(&raw_tarball(&[
            ("bin/hi.sh", REG, HI, 0o755),
            ("pack.toml", REG, TOML, 0o644),
        ]));
        let mut m = f.manifest();
        let w = tempfile::tempdir().unwrap();
        std::fs::create_dir(w.path().join("bin")).unwrap();
        std::fs::write(w.path().join("pack.toml"), TOML).unwrap();
        std::fs::write(w.path().join("bin/hi.sh"), HI).unwrap();
        std::fs::set_permissions(
            w.path().join("bin/hi.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        m.versions[0].tree_sha256 = outpost_pack::load(w.path(), None).unwrap().sha256;
        f.sign_manifest(&m, None);
        assert!(f.fetch(&f.keys, None).is_ok());
    }

    #[test]
    fn replay_guard_per_pack() {
        let f = fx();
        let state = f.dir.path().join("replay");
        // nothing recorded while fetching
        f.fetch(&f.keys, Some(&state)).unwrap();
        assert!(!state.exists());
        record_replay(&state, NAME, 1_000).unwrap();
        f.fetch(&f.keys, Some(&state)).unwrap(); // the same manifest again
        record_replay(&state, NAME, 2_000).unwrap();
        let err = f.fetch(&f.keys, Some(&state)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Replay {
                    seen: 2_000,
                    got: 1_000,
                    ..
                }
            ),
            "{err}"
        );
        // another pack's state is its own
        assert!(record_replay(&state, "other", 5).is_ok());
    }

    #[test]
    fn versions_are_immutable_and_latest_moves() {
        let f = fx();
        let again = f.build(1_000);
        assert!(again.unchanged);
        assert_eq!(again.timestamp, 1_001, "the timestamp always moves forward");
        std::fs::write(f.dir.path().join("src/README"), "changed\n").unwrap();
        let err = build_pack(
            &f.signer,
            &PackBuildOptions {
                dir: f.dir.path().join("src"),
                site: f.site(),
                mtime: 0,
                now: Some(2_000),
            },
        )
        .unwrap_err();
        assert!(matches!(err, Error::Usage { .. }), "{err}");
        assert!(err.to_string().contains("already published"), "{err}");
        write_pack(&f.dir.path().join("src"), "1.1.0-rc.1");
        f.build(3_000);
        assert_eq!(
            f.manifest().latest.to_string(),
            "1.0.0",
            "a prerelease is not latest"
        );
        write_pack(&f.dir.path().join("src"), "1.1.0");
        f.build(4_000);
        let m = f.manifest();
        assert_eq!(m.latest.to_string(), "1.1.0");
        assert_eq!(m.versions.len(), 3);
        // a pinned older version is still installable
        let work = tempfile::tempdir().unwrap();
        let v = fetch_pack(
            &Source::Dir(f.root()),
            &f.keys,
            None,
            Some(&"1.0.0".parse().unwrap()),
            work.path(),
        )
        .unwrap();
        assert_eq!(v.pack.version.to_string(), "1.0.0");
        let work = tempfile::tempdir().unwrap();
        let missing = fetch_pack(
            &Source::Dir(f.root()),
            &f.keys,
            None,
            Some(&"9.9.9".parse().unwrap()),
            work.path(),
        )
        .unwrap_err();
        assert!(matches!(missing, Error::NoSuchRelease { .. }), "{missing}");
    }

    #[test]
    fn invalid_packs_are_not_built() {
        let f = fx();
        let bad = f.dir.path().join("bad");
        write_pack(&bad, "1.0.0");
        std::os::unix::fs::symlink("/etc/passwd", bad.join("link")).unwrap();
        let opts = PackBuildOptions {
            dir: bad.clone(),
            site: f.dir.path().join("site2"),
            mtime: 0,
            now: Some(1),
        };
        let err = build_pack(&f.signer, &opts).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(!f.dir.path().join("site2").exists(), "nothing published");
    }

    #[test]
    fn bundle_round_trip_and_tampering() {
        let f = fx();
        let out = f.dir.path().join("hello.bundle.tar");
        let v = write_pack_bundle(&Source::Dir(f.root()), None, &out, &f.keys).unwrap();
        assert_eq!(v.to_string(), "1.0.0");
        let work = tempfile::tempdir().unwrap();
        let got = fetch_pack(
            &Source::Bundle(out.clone()),
            &f.keys,
            None,
            None,
            work.path(),
        )
        .unwrap();
        assert_eq!(got.pack.name, NAME);
        assert_eq!(
            verify_pack(&Source::Bundle(out.clone()), &f.keys)
                .unwrap()
                .len(),
            2
        );
        // a tampered tarball in the site: the bundle is verified as it is written, and removed
        let p = f.root().join("v1.0.0/hello-1.0.0.tar.gz");
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len() / 2;
        b[n] ^= 1;
        std::fs::write(&p, b).unwrap();
        let out2 = f.dir.path().join("bad.tar");
        assert!(write_pack_bundle(&Source::Dir(f.root()), None, &out2, &f.keys).is_err());
        assert!(!out2.exists(), "a bad bundle is not left behind");
        // GitHub is no pack source
        let gh = Source::parse_with_github_url("github:o/r", None).unwrap();
        assert!(matches!(
            verify_pack(&gh, &f.keys),
            Err(Error::Source { .. })
        ));
    }

    #[test]
    fn pack_source_parse_table() {
        use crate::packrel::PackSource;
        let f = fx();
        let bundle = f.dir.path().join("b.tar");
        std::fs::write(&bundle, b"x").unwrap();
        let src = f.dir.path().join("src");
        let root = f.root();
        let cases: Vec<(String, Option<PackSource>)> = vec![
            (
                "https://h/packs/hello".into(),
                Some(PackSource::Release(Source::Http {
                    base: "https://h/packs/hello".into(),
                    ca_file: None,
                })),
            ),
            (
                "http://127.0.0.1:8080/packs/hello/".into(),
                Some(PackSource::Release(Source::Http {
                    base: "http://127.0.0.1:8080/packs/hello".into(),
                    ca_file: None,
                })),
            ),
            (
                bundle.display().to_string(),
                Some(PackSource::Release(Source::Bundle(bundle.clone()))),
            ),
            (
                src.display().to_string(),
                Some(PackSource::Dir(src.clone())),
            ),
            (
                root.display().to_string(),
                Some(PackSource::Release(Source::Dir(root.clone()))),
            ),
            (
                "/nonexistent".into(),
                Some(PackSource::Dir("/nonexistent".into())),
            ),
            ("github:o/r".into(), None),
            ("ftp://h/x".into(), None),
        ];
        for (s, want) in cases {
            assert_eq!(PackSource::parse(&s).ok(), want, "{s}");
        }
    }
}
