//! The packager side (feature `tools`, only in `outpost-release`): key generation, signing,
//! building tarballs, publishing a release root, bundling and end-to-end verification.
use crate::error::{Error, Result};
use crate::fetch::{download_verified, fetch_manifest_with, Source};
use crate::manifest::{rfc3339, tarball_file_name, Artifact, Manifest, Release, SCHEMA, TARGETS};
use crate::verify::{ReplayState, TrustedComment, TrustedKeys, MAX_SIG_BYTES};
use crate::{fsx, MANIFEST, SHA256SUMS};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Names of the key files `keygen` writes.
pub const PUBLIC_KEY_FILE: &str = "outpost-release.pub";
pub const SECRET_KEY_FILE: &str = "outpost-release.key";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn minisign_err(what: String, hint: &str) -> impl FnOnce(minisign::PError) -> Error + '_ {
    move |e| Error::usage(format!("{what}: {}", e.to_string().to_lowercase()), hint)
}

/// Generate a minisign key pair in `out_dir`: `outpost-release.pub` (0644) and
/// `outpost-release.key` (0600), encrypted with `password` (scrypt, as the minisign CLI)
/// or unencrypted when `None`. Refuses to overwrite an existing key.
pub fn keygen(out_dir: &Path, password: Option<String>) -> Result<(PathBuf, PathBuf)> {
    let pk_path = out_dir.join(PUBLIC_KEY_FILE);
    let sk_path = out_dir.join(SECRET_KEY_FILE);
    for p in [&pk_path, &sk_path] {
        if p.exists() {
            return Err(Error::usage(
                format!("{} already exists", p.display()),
                "refusing to overwrite a release key: move it away first, or use another --out",
            ));
        }
    }
    fsx::create_dir_all(out_dir)?;
    let err = || {
        minisign_err(
            format!("cannot generate a key pair in {}", out_dir.display()),
            "try again",
        )
    };
    let kp = match password {
        Some(pw) => minisign::KeyPair::generate_encrypted_keypair(Some(pw)).map_err(err())?,
        None => minisign::KeyPair::generate_unencrypted_keypair().map_err(err())?,
    };
    let pk = kp.pk.to_box().map_err(err())?.to_bytes();
    let sk = kp
        .sk
        .to_box(Some("outpost release secret key"))
        .map_err(err())?
        .to_bytes();
    fsx::write_atomic(&sk_path, &sk, 0o600)?;
    fsx::write_atomic(&pk_path, &pk, 0o644)?;
    Ok((pk_path, sk_path))
}

/// A loaded secret key and its public key.
pub struct Signer {
    sk: minisign::SecretKey,
    pk: minisign::PublicKey,
}

impl Signer {
    /// Load a minisign secret key file (ours or the minisign CLI's). `password` is asked for
    /// only when the key is encrypted.
    pub fn load(path: &Path, password: impl FnOnce() -> Result<String>) -> Result<Signer> {
        let text = fs_err::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        let hint = "give the secret key written by `outpost-release keygen` (or `minisign -G`)";
        // An unencrypted key (KDF "\0\0") is read directly: the minisign CLI (0.11, `-W`)
        // leaves its checksum zero, which minisign-rs's box reader calls corrupt. A damaged
        // key is still caught: signing checks the signature against the embedded public key.
        let raw = text.lines().nth(1).and_then(crate::b64::decode);
        let sk = match raw {
            Some(b) if b.len() == 158 && b[2..4] == [0, 0] => minisign::SecretKey::from_bytes(&b)
                .map_err(minisign_err(
                format!("invalid secret key {}", path.display()),
                hint,
            ))?,
            _ => {
                let pw = password()?;
                minisign::SecretKey::from_box(text.into(), Some(pw)).map_err(minisign_err(
                    format!("cannot open secret key {}", path.display()),
                    "check the password (OUTPOST_RELEASE_PASSWORD) and the key file",
                ))?
            }
        };
        let pk = minisign::PublicKey::from_secret_key(&sk).map_err(minisign_err(
            format!("invalid secret key {}", path.display()),
            hint,
        ))?;
        Ok(Signer { sk, pk })
    }

    /// The public key's base64 line (as in the `.pub` file).
    pub fn public_key_base64(&self) -> String {
        self.pk.to_base64()
    }

    pub fn trusted_keys(&self) -> TrustedKeys {
        // Invariant: minisign's own encoding of a valid public key parses.
        TrustedKeys::parse(&self.public_key_base64(), "signing key").expect("own public key parses")
    }

    /// A prehashed minisign signature (`.minisig` text) of `data` with `trusted_comment`.
    pub fn sign_bytes(&self, data: &[u8], trusted_comment: &str) -> Result<String> {
        let sig = minisign::sign(
            Some(&self.pk),
            &self.sk,
            data,
            Some(trusted_comment),
            Some("signature from outpost-release secret key"),
        )
        .map_err(minisign_err("cannot sign".into(), "check the secret key"))?;
        Ok(sig.into_string())
    }

    /// Sign `path` into `path.minisig` with minisign's default trusted comment
    /// (`timestamp:<now>\tfile:<name>\thashed`).
    pub fn sign_file(&self, path: &Path) -> Result<PathBuf> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let f = fs_err::File::open(path).map_err(|e| Error::io("open", path, e))?;
        let sig = minisign::sign(
            Some(&self.pk),
            &self.sk,
            std::io::BufReader::new(f),
            Some(&format!("timestamp:{}\tfile:{name}\thashed", now())),
            Some("signature from outpost-release secret key"),
        )
        .map_err(minisign_err(
            format!("cannot sign {}", path.display()),
            "check the file and the secret key",
        ))?;
        let sig_path = sig_path(path);
        fsx::write_atomic(&sig_path, sig.into_string().as_bytes(), 0o644)?;
        Ok(sig_path)
    }
}

fn sig_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".minisig");
    PathBuf::from(s)
}

/// Inputs of [`build_tarball`].
#[derive(Debug, Clone)]
pub struct BuildInput {
    pub version: semver::Version,
    pub target: String,
    pub binary: PathBuf,
    pub license: PathBuf,
    pub readme: PathBuf,
    /// Release root: the tarball goes to `out/vV/`.
    pub out: PathBuf,
    /// mtime of every entry (SOURCE_DATE_EPOCH, or 0).
    pub mtime: u64,
}

/// Build `out/vV/outpost-V-T.tar.gz` (outpost 0755, LICENSE and README.md 0644, owner 0,
/// fixed mtime: the same inputs give the same bytes), update `out/vV/SHA256SUMS`, and
/// remove signatures the rebuild made stale. Returns the tarball path.
pub fn build_tarball(input: &BuildInput) -> Result<PathBuf> {
    if !TARGETS.contains(&input.target.as_str()) {
        return Err(Error::usage(
            format!("unknown target {:?}", input.target),
            format!("use one of: {}", TARGETS.join(", ")),
        ));
    }
    let binary = fsx::read(&input.binary)?;
    if !binary.starts_with(b"\x7fELF") {
        return Err(Error::usage(
            format!("{} is not an ELF executable", input.binary.display()),
            "pass the static outpost binary built for the target (target/T/release/outpost)",
        ));
    }
    let files: [(&str, Vec<u8>, u32); 3] = [
        ("outpost", binary, 0o755),
        ("LICENSE", fsx::read(&input.license)?, 0o644),
        ("README.md", fsx::read(&input.readme)?, 0o644),
    ];
    let dir = input.out.join(format!("v{}", input.version));
    fsx::create_dir_all(&dir)?;
    let name = tarball_file_name(&input.version, &input.target);
    let path = dir.join(&name);
    let mut tar = tar::Builder::new(Vec::new());
    for (n, data, mode) in &files {
        let mut h = tar::Header::new_ustar();
        h.set_path(n)
            .map_err(|e| Error::io("add", Path::new(n), e))?;
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(input.mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append(&h, &data[..])
            .map_err(|e| Error::io("add", Path::new(n), e))?;
    }
    // Invariant: writing to a Vec cannot fail.
    let tar = tar.into_inner().expect("tar into Vec");
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar)
        .and_then(|()| gz.try_finish())
        .expect("gzip into Vec");
    let gz = gz.finish().expect("gzip into Vec");
    fsx::write_atomic(&path, &gz, 0o644)?;
    let _ = fs_err::remove_file(sig_path(&path));
    let sums = dir.join(SHA256SUMS);
    update_sha256sums(&sums, &name, &fsx::sha256_bytes(&gz))?;
    let _ = fs_err::remove_file(sig_path(&sums));
    Ok(path)
}

/// Parse `sha256sum` output lines: `HEX  NAME` (text mode) or `HEX *NAME` (binary mode).
pub fn parse_sha256sums(text: &str, location: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parsed = line
            .split_once("  ")
            .or_else(|| line.split_once(" *"))
            .filter(|(h, n)| {
                h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) && !n.is_empty()
            });
        match parsed {
            Some((h, n)) => {
                out.insert(n.to_string(), h.to_ascii_lowercase());
            }
            None => {
                return Err(Error::Manifest {
                    location: location.to_string(),
                    detail: format!("bad SHA256SUMS line {line:?}"),
                })
            }
        }
    }
    Ok(out)
}

fn render_sha256sums(sums: &BTreeMap<String, String>) -> String {
    sums.iter().map(|(n, h)| format!("{h}  {n}\n")).collect()
}

fn update_sha256sums(path: &Path, name: &str, sha: &str) -> Result<()> {
    let mut sums = match fs_err::read_to_string(path) {
        Ok(t) => parse_sha256sums(&t, &path.display().to_string())?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    sums.insert(name.to_string(), sha.to_string());
    fsx::write_atomic(path, render_sha256sums(&sums).as_bytes(), 0o644)
}

/// The `vV` directories directly under `root`, by version.
fn version_dirs(root: &Path) -> Result<BTreeMap<semver::Version, PathBuf>> {
    let mut out = BTreeMap::new();
    for e in fs_err::read_dir(root).map_err(|e| Error::io("read directory", root, e))? {
        let e = e.map_err(|e| Error::io("read directory", root, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(v) = name
            .strip_prefix('v')
            .and_then(|v| semver::Version::parse(v).ok())
        {
            if e.path().is_dir() {
                out.insert(v, e.path());
            }
        }
    }
    Ok(out)
}

/// The tarballs of one `vV` directory, checked against its SHA256SUMS: target → (name, sha, size).
fn check_version_dir(dir: &Path, version: &semver::Version) -> Result<BTreeMap<String, Artifact>> {
    let sums_path = dir.join(SHA256SUMS);
    let sums = parse_sha256sums(
        &crate::verify::read_small(&sums_path, 1 << 20)?,
        &sums_path.display().to_string(),
    )?;
    let mut out = BTreeMap::new();
    for target in TARGETS {
        let name = tarball_file_name(version, target);
        let path = dir.join(&name);
        if !path.exists() {
            continue;
        }
        let sha = fsx::sha256_file(&path)?;
        match sums.get(&name) {
            Some(h) if *h == sha => {}
            _ => {
                return Err(Error::usage(
                    format!("{} does not match {}", path.display(), sums_path.display()),
                    "rebuild with `outpost-release build`, which updates SHA256SUMS",
                ))
            }
        }
        let size = fs_err::metadata(&path)
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        out.insert(
            target.to_string(),
            Artifact {
                name: crate::manifest::artifact_name(version, target),
                sha256: sha,
                size,
            },
        );
    }
    if out.is_empty() {
        return Err(Error::usage(
            format!("{} has no outpost-{version}-TARGET.tar.gz", dir.display()),
            "build one with `outpost-release build`",
        ));
    }
    Ok(out)
}

/// Sign every tarball and SHA256SUMS under `dir` (a release root or one `vV` directory),
/// after checking the tarballs against SHA256SUMS. Returns the signature files written.
pub fn sign_dir(signer: &Signer, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<(semver::Version, PathBuf)> = version_dirs(dir)?.into_iter().collect();
    if dirs.is_empty() {
        let v = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix('v'))
            .and_then(|v| semver::Version::parse(v).ok());
        match v {
            Some(v) => dirs.push((v, dir.to_path_buf())),
            None => {
                return Err(Error::usage(
                    format!("{} has no vVERSION directories", dir.display()),
                    "pass the --out directory of `outpost-release build`",
                ))
            }
        }
    }
    let mut written = Vec::new();
    for (v, d) in dirs {
        let artifacts = check_version_dir(&d, &v)?;
        for target in artifacts.keys() {
            written.push(signer.sign_file(&d.join(tarball_file_name(&v, target)))?);
        }
        written.push(signer.sign_file(&d.join(SHA256SUMS))?);
    }
    Ok(written)
}

/// Options of [`publish`].
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Build output (holds `vV/` directories).
    pub from: PathBuf,
    /// Release root to create or update.
    pub to: PathBuf,
    /// Point this channel (stable or beta) at the newest version published now. Moving
    /// stable also moves beta when beta is older.
    pub channel: Option<String>,
    /// install.sh template (with the `OUTPOST_EMBEDDED_*=""` lines); none: no install.sh.
    pub install_template: Option<PathBuf>,
    /// Base URL baked into install.sh (`OUTPOST_EMBEDDED_RELEASE_URL`).
    pub base_url: Option<String>,
    /// More public keys to embed in install.sh (e.g. the next key during a rotation).
    pub extra_pubkeys: Vec<String>,
    /// Unix time to publish as (default: now).
    pub now: Option<u64>,
}

/// Publish the versions in `opts.from` into `opts.to`: copy (tarballs are immutable once
/// published), sign what is unsigned, merge manifest.json with a new strictly larger
/// timestamp, sign it (`timestamp:<T> file:manifest.json`), write channels/*, install.sh.
pub fn publish(signer: &Signer, opts: &PublishOptions) -> Result<Manifest> {
    let mut p = Publication::open(signer, opts)?;
    let versions = version_dirs(&opts.from)?;
    // Invariant for `point_channel`: `newest` exists.
    let Some(newest) = versions.keys().next_back().cloned() else {
        return Err(Error::usage(
            format!("{} has no vVERSION directories", opts.from.display()),
            "pass the --out directory of `outpost-release build`",
        ));
    };
    fsx::create_dir_all(&opts.to)?;
    for (v, src_dir) in &versions {
        p.add_version(v, src_dir)?;
    }
    if let Some(c) = &opts.channel {
        point_channel(&mut p.manifest, c, newest)?;
    }
    let manifest = p.write_manifest()?;
    write_channels(&opts.to, &manifest)?;
    if let Some(t) = &opts.install_template {
        write_install_sh(signer, opts, t, &manifest)?;
    }
    Ok(manifest)
}

/// One [`publish`]: the release root's manifest as it grows, one method per step.
struct Publication<'a> {
    signer: &'a Signer,
    opts: &'a PublishOptions,
    keys: TrustedKeys,
    now: u64,
    manifest_path: PathBuf,
    manifest: Manifest,
}

impl<'a> Publication<'a> {
    /// The release root's manifest.json, or an empty one for a new root.
    fn open(signer: &'a Signer, opts: &'a PublishOptions) -> Result<Self> {
        let manifest_path = opts.to.join(MANIFEST);
        let manifest = match fs_err::read(&manifest_path) {
            Ok(b) => Manifest::parse(&b, &manifest_path.display().to_string())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest {
                schema: SCHEMA,
                generated_at: String::new(),
                timestamp: 0,
                channels: BTreeMap::new(),
                releases: Vec::new(),
            },
            Err(e) => return Err(Error::io("read", &manifest_path, e)),
        };
        Ok(Publication {
            signer,
            opts,
            keys: signer.trusted_keys(),
            now: opts.now.unwrap_or_else(now),
            manifest_path,
            manifest,
        })
    }

    /// One `vV` directory of the build: checked against its SHA256SUMS, signed, copied, and
    /// merged into the manifest.
    fn add_version(&mut self, v: &semver::Version, src_dir: &Path) -> Result<()> {
        let artifacts = check_version_dir(src_dir, v)?;
        let mut files: Vec<String> = vec![SHA256SUMS.into()];
        files.extend(artifacts.keys().map(|t| tarball_file_name(v, t)));
        self.sign_unsigned(src_dir, &files)?;
        copy_published(src_dir, &self.opts.to.join(format!("v{v}")), &files)?;
        let released_at = rfc3339(self.now);
        merge_release(
            &mut self.manifest,
            &self.manifest_path,
            v,
            artifacts,
            released_at,
        )
    }

    /// Sign what the build left unsigned; an existing signature must be the signer's.
    fn sign_unsigned(&self, src_dir: &Path, files: &[String]) -> Result<()> {
        for f in files {
            let p = src_dir.join(f);
            let sig = sig_path(&p);
            if sig.exists() {
                self.keys.verify_file(&p, &sig)?;
            } else {
                self.signer.sign_file(&p)?;
            }
        }
        Ok(())
    }

    /// manifest.json with a new, strictly larger timestamp, and its signature
    /// (`timestamp:<T> file:manifest.json`). Returns the manifest as written.
    fn write_manifest(mut self) -> Result<Manifest> {
        stamp(&mut self.manifest, self.now);
        let json = self.manifest.to_json();
        let manifest = Manifest::parse(&json, &self.manifest_path.display().to_string())?;
        let sig = self
            .signer
            .sign_bytes(&json, &TrustedComment::for_manifest(manifest.timestamp))?;
        fsx::write_atomic(&self.manifest_path, &json, 0o644)?;
        fsx::write_atomic(
            &self.opts.to.join(format!("{MANIFEST}.minisig")),
            sig.as_bytes(),
            0o644,
        )?;
        Ok(manifest)
    }
}

/// What copying one published file does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyAction {
    /// Already there with these bytes.
    Skip,
    /// New, or a file that may change (SHA256SUMS and signatures).
    Write,
    /// A tarball already published with other bytes: refused.
    Refuse,
}

/// Tarballs are immutable once published; everything else is rewritten when it differs.
fn copy_action(name: &str, data: &[u8], published: Option<&[u8]>) -> CopyAction {
    match published {
        Some(old) if old == data => CopyAction::Skip,
        Some(_) if name.ends_with(".tar.gz") => CopyAction::Refuse,
        _ => CopyAction::Write,
    }
}

/// Copy `files` and their `.minisig`s from `src_dir` into `dest_dir`.
fn copy_published(src_dir: &Path, dest_dir: &Path, files: &[String]) -> Result<()> {
    fsx::create_dir_all(dest_dir)?;
    for f in files {
        for name in [f.clone(), format!("{f}.minisig")] {
            let (src, dst) = (src_dir.join(&name), dest_dir.join(&name));
            let data = fsx::read(&src)?;
            let published = fs_err::read(&dst).ok();
            match copy_action(&name, &data, published.as_deref()) {
                CopyAction::Skip => {}
                CopyAction::Refuse => {
                    return Err(Error::usage(
                        format!(
                            "{} is already published with different content",
                            dst.display()
                        ),
                        "published tarballs are immutable: release a new version instead",
                    ))
                }
                CopyAction::Write => fsx::write_atomic(&dst, &data, 0o644)?,
            }
        }
    }
    Ok(())
}

/// Add version `v`'s artifacts to the manifest: a new release, or new targets of a published
/// one. A target already listed with another artifact is refused (releases are immutable).
fn merge_release(
    manifest: &mut Manifest,
    manifest_path: &Path,
    v: &semver::Version,
    artifacts: BTreeMap<String, Artifact>,
    released_at: String,
) -> Result<()> {
    let Some(r) = manifest.releases.iter_mut().find(|r| &r.version == v) else {
        manifest.releases.push(Release {
            version: v.clone(),
            released_at,
            artifacts,
        });
        return Ok(());
    };
    for (t, a) in artifacts {
        if r.artifacts.get(&t).is_some_and(|old| old != &a) {
            return Err(Error::usage(
                format!(
                    "{v} for {t} is already in {} with another sha256",
                    manifest_path.display()
                ),
                "published releases are immutable: release a new version instead",
            ));
        }
        r.artifacts.insert(t, a);
    }
    Ok(())
}

/// Point `channel` at `newest`; moving stable also moves beta when beta is older (or unset).
fn point_channel(manifest: &mut Manifest, channel: &str, newest: semver::Version) -> Result<()> {
    if !crate::manifest::CHANNELS.contains(&channel) {
        return Err(Error::usage(
            format!("unknown channel {channel:?}"),
            "use --channel stable or --channel beta",
        ));
    }
    if channel == "stable" && manifest.channels.get("beta").is_none_or(|b| *b < newest) {
        manifest.channels.insert("beta".into(), newest.clone());
    }
    manifest.channels.insert(channel.to_string(), newest);
    Ok(())
}

/// A timestamp strictly larger than the last published one (`now` unless the clock is
/// behind it), and its RFC 3339 form.
fn stamp(manifest: &mut Manifest, now: u64) {
    manifest.timestamp = now.max(manifest.timestamp + 1);
    manifest.generated_at = rfc3339(manifest.timestamp);
}

/// `channels/NAME` holding each channel's version.
fn write_channels(to: &Path, manifest: &Manifest) -> Result<()> {
    let channels_dir = to.join("channels");
    fsx::create_dir_all(&channels_dir)?;
    for (c, v) in &manifest.channels {
        fsx::write_atomic(&channels_dir.join(c), format!("{v}\n").as_bytes(), 0o644)?;
    }
    Ok(())
}

/// What install.sh embeds: `V T SHA256` per artifact, newest version first, and
/// `CHANNEL V` per channel.
fn embedded_lines(manifest: &Manifest) -> (Vec<String>, Vec<String>) {
    let mut releases: Vec<&Release> = manifest.releases.iter().collect();
    releases.sort_by(|a, b| b.version.cmp(&a.version));
    let shas = releases
        .iter()
        .flat_map(|r| {
            r.artifacts
                .iter()
                .map(|(t, a)| format!("{} {t} {}", r.version, a.sha256))
        })
        .collect();
    let heads = manifest
        .channels
        .iter()
        .map(|(c, v)| format!("{c} {v}"))
        .collect();
    (shas, heads)
}

/// install.sh from the template `t`, with the signer's and the extra public keys.
fn write_install_sh(
    signer: &Signer,
    opts: &PublishOptions,
    t: &Path,
    manifest: &Manifest,
) -> Result<()> {
    let template = fs_err::read_to_string(t).map_err(|e| Error::io("read", t, e))?;
    let mut pubkeys = vec![signer.public_key_base64()];
    for k in &opts.extra_pubkeys {
        pubkeys.extend(TrustedKeys::parse(k, "--extra-pubkey")?.base64_keys());
    }
    pubkeys.dedup();
    let (shas, heads) = embedded_lines(manifest);
    let embed = Embedded {
        pubkeys: &pubkeys,
        sha_lines: &shas,
        channel_heads: &heads,
        base_url: opts.base_url.as_deref(),
    };
    let script = render_install_sh(&template, &embed).map_err(|e| match e {
        Error::Usage { message, hint } => Error::Usage {
            message: format!("{}: {message}", t.display()),
            hint,
        },
        e => e,
    })?;
    fsx::write_atomic(&opts.to.join("install.sh"), script.as_bytes(), 0o755)
}

/// What `publish` embeds in install.sh.
#[derive(Debug, Clone, Copy, Default)]
pub struct Embedded<'a> {
    /// Trusted public keys (base64 lines).
    pub pubkeys: &'a [String],
    /// `V T SHA256` per published artifact.
    pub sha_lines: &'a [String],
    /// `CHANNEL V` per channel: the heads of the signed manifest at publish time, so the
    /// script refuses a channel file naming an older version it knows (a downgrade).
    pub channel_heads: &'a [String],
    /// `OUTPOST_EMBEDDED_RELEASE_URL`, when given.
    pub base_url: Option<&'a str>,
}

/// Fill the install.sh template: the lines `OUTPOST_EMBEDDED_PUBKEYS=""`,
/// `OUTPOST_EMBEDDED_SHA256S=""` and `OUTPOST_EMBEDDED_CHANNELS=""` (each must appear
/// exactly once) get the newline-separated keys, `V T SHA256` lines and `CHANNEL V` lines;
/// `OUTPOST_EMBEDDED_RELEASE_URL=""` gets the base URL if given.
pub fn render_install_sh(template: &str, embed: &Embedded<'_>) -> Result<String> {
    let base_url = embed.base_url;
    if let Some(u) = base_url {
        // install.sh maps `github:OWNER/REPO` onto release assets itself (docs/RELEASES.md).
        let github = u.starts_with("github:")
            && matches!(
                crate::fetch::Source::parse_with_github_url(u, None),
                Ok(crate::fetch::Source::GitHub { .. })
            );
        if u.chars()
            .any(|c| matches!(c, '"' | '$' | '`' | '\\' | '\n' | '\''))
            || !(u.starts_with("https://") || u.starts_with("http://") || github)
        {
            return Err(Error::usage(
                format!("invalid --base-url {u:?}"),
                "give an http(s) URL or github:OWNER/REPO, without quotes, $, backslashes or backticks",
            ));
        }
    }
    for line in embed
        .pubkeys
        .iter()
        .chain(embed.sha_lines)
        .chain(embed.channel_heads)
    {
        if line
            .chars()
            .any(|c| matches!(c, '"' | '$' | '`' | '\\' | '\n') || c.is_control())
        {
            return Err(Error::usage(
                format!("refusing to embed {line:?} in install.sh"),
                "keys, checksums and versions never hold quotes, $, backticks or backslashes: check the release root",
            ));
        }
    }
    let fills: [(&str, Option<String>, bool); 4] = [
        (
            "OUTPOST_EMBEDDED_PUBKEYS",
            Some(embed.pubkeys.join("\n")),
            true,
        ),
        (
            "OUTPOST_EMBEDDED_SHA256S",
            Some(embed.sha_lines.join("\n")),
            true,
        ),
        (
            "OUTPOST_EMBEDDED_CHANNELS",
            Some(embed.channel_heads.join("\n")),
            true,
        ),
        (
            "OUTPOST_EMBEDDED_RELEASE_URL",
            base_url.map(|u| u.trim_end_matches('/').to_string()),
            false,
        ),
    ];
    let mut counts = [0usize; 4];
    let mut out = String::with_capacity(template.len() + 4096);
    for line in template.split_inclusive('\n') {
        let bare = line.trim_end_matches('\n');
        let mut replaced = false;
        for (i, (var, value, _)) in fills.iter().enumerate() {
            if bare == format!("{var}=\"\"") {
                counts[i] += 1;
                if let Some(v) = value {
                    out.push_str(&format!("{var}=\"{v}\"\n"));
                    replaced = true;
                }
            }
        }
        if !replaced {
            out.push_str(line);
        }
    }
    for (i, (var, _, required)) in fills.iter().enumerate() {
        if counts[i] > 1 || (*required && counts[i] != 1) {
            return Err(Error::usage(
                format!(
                    "the install.sh template must have the line {var}=\"\" exactly once (found {})",
                    counts[i]
                ),
                "restore the placeholder line in scripts/install.sh",
            ));
        }
    }
    Ok(out)
}

/// Check a whole release (directory, URL or bundle): the manifest signature, every listed
/// tarball's size, sha256 and signature, each version's SHA256SUMS signature and agreement
/// with the manifest, and channels/* (not in bundles). Returns one line per check passed.
pub fn verify_release(source: &Source, keys: &TrustedKeys) -> Result<Vec<String>> {
    let reader = source.reader()?;
    let manifest = fetch_manifest_with(&reader, keys, &ReplayState::none())?;
    let mut ok = vec![format!(
        "{MANIFEST}: signature ok, timestamp {}",
        manifest.timestamp
    )];
    let tmp_dir = fsx::private_temp_dir("verify")?;
    let tmp = tmp_dir.path();
    let result = (|| {
        let bundle = matches!(source, Source::Bundle(_));
        let mut tarballs = 0;
        for r in &manifest.releases {
            let sums_rel = format!("v{}/{SHA256SUMS}", r.version);
            let sums = match reader.bytes(&sums_rel, 1 << 20) {
                Err(Error::NotFound { .. }) if bundle => continue, // a bundle holds one version
                r => r?,
            };
            let sig = reader.bytes(&format!("{sums_rel}.minisig"), MAX_SIG_BYTES)?;
            keys.verify(
                &sums,
                &String::from_utf8_lossy(&sig),
                &reader.location(&sums_rel),
            )?;
            let sums =
                parse_sha256sums(&String::from_utf8_lossy(&sums), &reader.location(&sums_rel))?;
            ok.push(format!("{sums_rel}: signature ok"));
            for (t, a) in &r.artifacts {
                let file = tarball_file_name(&r.version, t);
                let dest = tmp.join(&file);
                match download_verified(&reader, keys, a, &file, &dest, false) {
                    Err(Error::NotFound { .. }) if bundle => continue, // and one target
                    r => r?,
                };
                let _ = fs_err::remove_file(&dest);
                if sums.get(&file) != Some(&a.sha256) {
                    return Err(Error::ShaMismatch {
                        location: reader.location(&sums_rel),
                        expected: a.sha256.clone(),
                        actual: sums.get(&file).cloned().unwrap_or_else(|| "nothing".into()),
                    });
                }
                tarballs += 1;
                ok.push(format!("{}: size, sha256, signature ok", a.name));
            }
        }
        if tarballs == 0 {
            return Err(Error::NotFound {
                location: source.location("vV/outpost-V-T.tar.gz"),
            });
        }
        if !bundle {
            for (c, v) in &manifest.channels {
                let rel = format!("channels/{c}");
                let got = String::from_utf8_lossy(&reader.bytes(&rel, 256)?)
                    .trim()
                    .to_string();
                if got != v.to_string() {
                    return Err(Error::Manifest {
                        location: reader.location(&rel),
                        detail: format!("says {got:?}, manifest.json says {v}"),
                    });
                }
                ok.push(format!("{rel}: {v} ok"));
            }
        }
        Ok(ok)
    })();
    drop(tmp_dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256sums_table() {
        let h = "a".repeat(64);
        let cases: Vec<(String, Option<usize>)> = vec![
            (format!("{h}  outpost-1.0.0-x.tar.gz\n"), Some(1)),
            (format!("{h} *bin\n{h}  other\n\n"), Some(2)),
            ("".into(), Some(0)),
            (format!("{h} one-space\n"), None),
            ("zz  name\n".into(), None),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse_sha256sums(&text, "s").ok().map(|m| m.len()),
                want,
                "{text:?}"
            );
        }
        let m: BTreeMap<String, String> =
            [("b".to_string(), h.clone()), ("a".to_string(), h.clone())].into();
        assert_eq!(render_sha256sums(&m), format!("{h}  a\n{h}  b\n"));
    }

    #[test]
    fn install_sh_rendering() {
        let t = "#!/bin/sh\nOUTPOST_EMBEDDED_RELEASE_URL=\"\"\nOUTPOST_EMBEDDED_PUBKEYS=\"\"\nOUTPOST_EMBEDDED_SHA256S=\"\"\nOUTPOST_EMBEDDED_CHANNELS=\"\"\necho \"$OUTPOST_EMBEDDED_PUBKEYS\"\n";
        let keys = ["K1".to_string(), "K2".to_string()];
        let shas = ["1.0.0 x86 abc".to_string()];
        let heads = ["beta 1.1.0-rc.1".to_string(), "stable 1.0.0".to_string()];
        let embed = |base_url| Embedded {
            pubkeys: &keys,
            sha_lines: &shas,
            channel_heads: &heads,
            base_url,
        };
        let out = render_install_sh(t, &embed(Some("https://r.example/"))).unwrap();
        assert_eq!(
            out,
            "#!/bin/sh\nOUTPOST_EMBEDDED_RELEASE_URL=\"https://r.example\"\nOUTPOST_EMBEDDED_PUBKEYS=\"K1\nK2\"\nOUTPOST_EMBEDDED_SHA256S=\"1.0.0 x86 abc\"\nOUTPOST_EMBEDDED_CHANNELS=\"beta 1.1.0-rc.1\nstable 1.0.0\"\necho \"$OUTPOST_EMBEDDED_PUBKEYS\"\n"
        );
        // URL placeholder kept when no base URL
        let out = render_install_sh(t, &embed(None)).unwrap();
        assert!(out.contains("OUTPOST_EMBEDDED_RELEASE_URL=\"\"\n"));
        // every placeholder but the URL is required, once: a template without the channel
        // line would silently lose the downgrade check
        for (name, template) in [
            ("empty", "#!/bin/sh\n".to_string()),
            (
                "no channels",
                t.replace("OUTPOST_EMBEDDED_CHANNELS=\"\"\n", ""),
            ),
            ("duplicate", format!("{t}OUTPOST_EMBEDDED_SHA256S=\"\"\n")),
        ] {
            let err = render_install_sh(&template, &embed(None)).unwrap_err();
            assert!(err.to_string().contains("exactly once"), "{name}: {err}");
        }
        // hostile URL or values
        assert!(render_install_sh(t, &embed(Some("https://x/\"; rm -rf /"))).is_err());
        assert!(render_install_sh(t, &embed(Some("ftp://x"))).is_err());
        let evil = ["stable 1.0.0\"; rm -rf / #".to_string()];
        let bad = Embedded {
            channel_heads: &evil,
            ..embed(None)
        };
        assert!(render_install_sh(t, &bad).is_err());
        // GitHub Releases: github:OWNER/REPO, and nothing that only starts like it
        let out = render_install_sh(t, &embed(Some("github:My-Org/out.post"))).unwrap();
        assert!(out.contains("OUTPOST_EMBEDDED_RELEASE_URL=\"github:My-Org/out.post\"\n"));
        for bad in [
            "github:o",
            "github:o/r/x",
            "github:o/r;x",
            "github:/r",
            "github:",
        ] {
            assert!(render_install_sh(t, &embed(Some(bad))).is_err(), "{bad}");
        }
    }

    fn manifest(channels: &[(&str, &str)], releases: &[(&str, &[(&str, &str)])]) -> Manifest {
        Manifest {
            schema: SCHEMA,
            generated_at: String::new(),
            timestamp: 0,
            channels: channels
                .iter()
                .map(|(c, v)| (c.to_string(), v.parse().unwrap()))
                .collect(),
            releases: releases
                .iter()
                .map(|(v, arts)| Release {
                    version: v.parse().unwrap(),
                    released_at: "then".into(),
                    artifacts: arts
                        .iter()
                        .map(|(t, sha)| (t.to_string(), artifact(v, t, sha)))
                        .collect(),
                })
                .collect(),
        }
    }

    fn artifact(v: &str, t: &str, sha: &str) -> Artifact {
        Artifact {
            name: format!("v{v}/outpost-{v}-{t}.tar.gz"),
            sha256: sha.into(),
            size: 1,
        }
    }

    #[test]
    fn copy_action_table() {
        type Case<'a> = (&'a str, &'a [u8], Option<&'a [u8]>, CopyAction);
        let cases: &[Case] = &[
            ("outpost-1.0.0-x.tar.gz", b"a", None, CopyAction::Write),
            ("outpost-1.0.0-x.tar.gz", b"a", Some(b"a"), CopyAction::Skip),
            (
                "outpost-1.0.0-x.tar.gz",
                b"a",
                Some(b"b"),
                CopyAction::Refuse,
            ),
            (
                "outpost-1.0.0-x.tar.gz.minisig",
                b"a",
                Some(b"b"),
                CopyAction::Write,
            ),
            ("SHA256SUMS", b"a", Some(b"b"), CopyAction::Write),
            ("SHA256SUMS", b"a", Some(b"a"), CopyAction::Skip),
            ("SHA256SUMS.minisig", b"a", None, CopyAction::Write),
        ];
        for (name, data, old, want) in cases {
            assert_eq!(copy_action(name, data, *old), *want, "{name} {old:?}");
        }
    }

    #[test]
    fn merge_release_table() {
        let x = "x86_64-unknown-linux-musl";
        let a = "aarch64-unknown-linux-musl";
        let v: semver::Version = "1.0.0".parse().unwrap();
        let arts = |list: &[(&str, &str)]| -> BTreeMap<String, Artifact> {
            list.iter()
                .map(|(t, sha)| (t.to_string(), artifact("1.0.0", t, sha)))
                .collect()
        };
        // (published, adding) -> Ok(targets of 1.0.0 after) or the error
        type Case<'a> = (
            Manifest,
            BTreeMap<String, Artifact>,
            std::result::Result<Vec<&'a str>, &'a str>,
        );
        let cases: Vec<Case> =
            vec![
            (manifest(&[], &[]), arts(&[(x, "s1")]), Ok(vec![x])),
            (manifest(&[], &[("0.9.0", &[(x, "s0")])]), arts(&[(x, "s1")]), Ok(vec![x])),
            (manifest(&[], &[("1.0.0", &[(x, "s1")])]), arts(&[(x, "s1")]), Ok(vec![x])),
            (manifest(&[], &[("1.0.0", &[(x, "s1")])]), arts(&[(a, "s2")]), Ok(vec![a, x])),
            (
                manifest(&[], &[("1.0.0", &[(x, "s1")])]),
                arts(&[(x, "other")]),
                Err("1.0.0 for x86_64-unknown-linux-musl is already in m.json with another sha256"),
            ),
        ];
        for (i, (mut m, adding, want)) in cases.into_iter().enumerate() {
            let before = m.releases.len();
            let got = merge_release(&mut m, Path::new("m.json"), &v, adding, "now".into());
            match want {
                Ok(targets) => {
                    got.unwrap();
                    let r = m.releases.iter().find(|r| r.version == v).unwrap();
                    assert_eq!(
                        r.artifacts.keys().map(String::as_str).collect::<Vec<_>>(),
                        targets,
                        "{i}"
                    );
                    // a new release is stamped now, an existing one keeps its date
                    let new = m.releases.len() > before;
                    assert_eq!(r.released_at, if new { "now" } else { "then" }, "{i}");
                }
                Err(msg) => assert_eq!(got.unwrap_err().to_string(), msg, "{i}"),
            }
        }
    }

    #[test]
    fn point_channel_table() {
        // (channels before, channel, newest) -> channels after
        type Channels<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Channels, &str, &str, Channels)] = &[
            (
                &[],
                "stable",
                "1.0.0",
                &[("beta", "1.0.0"), ("stable", "1.0.0")],
            ),
            (&[], "beta", "1.1.0-rc.1", &[("beta", "1.1.0-rc.1")]),
            (
                &[("beta", "0.9.0"), ("stable", "0.9.0")],
                "stable",
                "1.0.0",
                &[("beta", "1.0.0"), ("stable", "1.0.0")],
            ),
            (
                &[("beta", "1.1.0-rc.1"), ("stable", "1.0.0")],
                "stable",
                "1.0.1",
                &[("beta", "1.1.0-rc.1"), ("stable", "1.0.1")],
            ),
            (
                &[("beta", "1.0.0"), ("stable", "1.0.0")],
                "beta",
                "1.1.0-rc.1",
                &[("beta", "1.1.0-rc.1"), ("stable", "1.0.0")],
            ),
        ];
        for (before, c, newest, after) in cases {
            let mut m = manifest(before, &[]);
            point_channel(&mut m, c, newest.parse().unwrap()).unwrap();
            assert_eq!(
                m.channels,
                manifest(after, &[]).channels,
                "{before:?} {c} {newest}"
            );
        }
        let mut m = manifest(&[], &[]);
        let err = point_channel(&mut m, "nightly", "1.0.0".parse().unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("unknown channel \"nightly\""),
            "{err}"
        );
        assert!(m.channels.is_empty());
    }

    #[test]
    fn stamp_is_strictly_increasing() {
        for (last, now, want) in [
            (0, 100, 100),
            (100, 100, 101),
            (100, 50, 101),
            (100, 200, 200),
        ] {
            let mut m = manifest(&[], &[]);
            m.timestamp = last;
            stamp(&mut m, now);
            assert_eq!(m.timestamp, want, "{last} {now}");
            assert_eq!(m.generated_at, rfc3339(want));
        }
    }

    #[test]
    fn embedded_lines_newest_first() {
        let m = manifest(
            &[("beta", "1.1.0-rc.1"), ("stable", "1.0.0")],
            &[
                ("1.0.0", &[("x", "s1"), ("a", "s2")]),
                ("1.1.0-rc.1", &[("x", "s3")]),
            ],
        );
        let (shas, heads) = embedded_lines(&m);
        assert_eq!(shas, ["1.1.0-rc.1 x s3", "1.0.0 a s2", "1.0.0 x s1"]);
        assert_eq!(heads, ["beta 1.1.0-rc.1", "stable 1.0.0"]);
    }

    #[test]
    fn sign_unsigned_signs_new_files_and_checks_signed_ones() {
        let d = tempfile::tempdir().unwrap();
        let load = |dir: &str| {
            let (_, sk) = keygen(&d.path().join(dir), None).unwrap();
            Signer::load(&sk, || unreachable!("unencrypted")).unwrap()
        };
        let (signer, stranger) = (load("ours"), load("theirs"));
        let opts = PublishOptions::default();
        let p = Publication {
            signer: &signer,
            opts: &opts,
            keys: signer.trusted_keys(),
            now: 0,
            manifest_path: d.path().join(MANIFEST),
            manifest: manifest(&[], &[]),
        };
        let src = d.path().join("v1.0.0");
        std::fs::create_dir(&src).unwrap();
        for f in ["a", "b"] {
            std::fs::write(src.join(f), f).unwrap();
        }
        stranger.sign_file(&src.join("b")).unwrap();
        let files = ["a".to_string(), "b".to_string()];
        let err = p.sign_unsigned(&src, &files).unwrap_err();
        assert!(err.to_string().contains("not trusted"), "{err}");
        let keys = signer.trusted_keys();
        keys.verify_file(&src.join("a"), &src.join("a.minisig"))
            .unwrap();
        std::fs::remove_file(src.join("b.minisig")).unwrap();
        p.sign_unsigned(&src, &files).unwrap();
        for f in ["a", "b"] {
            keys.verify_file(&src.join(f), &sig_path(&src.join(f)))
                .unwrap();
        }
    }

    #[test]
    fn sign_and_verify_round_trip_with_own_key() {
        let d = tempfile::tempdir().unwrap();
        let (pk, sk) = keygen(d.path(), None).unwrap();
        assert!(keygen(d.path(), None).is_err(), "overwrote a key");
        let signer = Signer::load(&sk, || panic!("unencrypted key asked for a password")).unwrap();
        let keys = TrustedKeys::parse(&std::fs::read_to_string(&pk).unwrap(), "pk").unwrap();
        let f = d.path().join("data");
        std::fs::write(&f, b"hello").unwrap();
        let sig = signer.sign_file(&f).unwrap();
        let tc = TrustedComment::parse(&keys.verify_file(&f, &sig).unwrap());
        assert_eq!(tc.file.as_deref(), Some("data"));
        std::fs::write(&f, b"hellO").unwrap();
        assert!(keys.verify_file(&f, &sig).is_err());
        let s = signer
            .sign_bytes(b"m", &TrustedComment::for_manifest(42))
            .unwrap();
        assert_eq!(
            keys.verify(b"m", &s, "m").unwrap(),
            "timestamp:42 file:manifest.json"
        );
    }

    #[test]
    fn encrypted_key_needs_the_password() {
        let d = tempfile::tempdir().unwrap();
        let (_, sk) = keygen(d.path(), Some("correct horse".into())).unwrap();
        assert!(
            std::fs::metadata(&sk)
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
                .unwrap()
                == 0o600
        );
        assert!(Signer::load(&sk, || Ok("wrong".into())).is_err());
        assert!(Signer::load(&sk, || Ok("correct horse".into())).is_ok());
    }
}
