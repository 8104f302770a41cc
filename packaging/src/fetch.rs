//! Getting a release: from an http(s) host, GitHub Releases (`github:OWNER/REPO`), a
//! directory (or `file://` URL) laid out like one, or an offline bundle file. Everything is
//! verified before anything is unpacked.
//!
//! For GitHub the base URL is `https://github.com`, or the value of the environment
//! variable `OUTPOST_GITHUB_URL` ([`GITHUB_URL_ENV`]) when set at parse time: a GitHub
//! Enterprise server (`https://ghe.example.com`), or a loopback `http://127.0.0.1:PORT`
//! stand-in for tests. Any other `http://` base is refused.
use crate::error::{Error, Result};
use crate::manifest::{tarball_file_name, Manifest, Want, MAX_MANIFEST_BYTES};
use crate::verify::{ReplayState, TrustedComment, TrustedKeys, MAX_SIG_BYTES};
use crate::{fsx, MANIFEST};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Hard cap on a tarball, whatever the manifest says.
pub const MAX_TARBALL_BYTES: u64 = 256 << 20;

/// Base URL of a `github:OWNER/REPO` source unless [`GITHUB_URL_ENV`] says otherwise.
pub const GITHUB_URL: &str = "https://github.com";
/// Environment variable overriding [`GITHUB_URL`] (GitHub Enterprise, tests), read by
/// [`Source::parse`].
pub const GITHUB_URL_ENV: &str = "OUTPOST_GITHUB_URL";
/// Redirects followed per request (GitHub sends `latest/download` to the release, and
/// every asset to its object store).
const MAX_REDIRECTS: u32 = 10;

/// Where releases come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `https://host/path` (the release root; `http://` too, for a LAN mirror: signatures
    /// make transport security optional). `ca_file`: PEM roots that replace the built-in
    /// (Mozilla) roots, for a mirror behind a private CA. Proxies come from `HTTPS_PROXY`,
    /// `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`.
    Http {
        base: String,
        ca_file: Option<PathBuf>,
    },
    /// GitHub Releases of `owner/repo` (`github:OWNER/REPO`): one release per version,
    /// tagged `vV`, whose assets are the files of `vV/`; the root files are assets of the
    /// latest release (`channels/NAME` as `channel-NAME`). See [`Source::location`].
    /// `base` is the web URL without a trailing `/` ([`GITHUB_URL`] by default). Redirects
    /// are followed and, for an https base, must stay on https.
    GitHub {
        owner: String,
        repo: String,
        base: String,
        ca_file: Option<PathBuf>,
    },
    /// A directory laid out like the release root (or a `file://` URL of one).
    Dir(PathBuf),
    /// An offline bundle made by `outpost-release bundle`.
    Bundle(PathBuf),
}

impl Source {
    /// `https://…`/`http://…` → Http; `github:OWNER/REPO` → GitHub (base from
    /// `OUTPOST_GITHUB_URL`, else `https://github.com`); `file:///dir` or a path → Dir, or
    /// Bundle if it is a file.
    pub fn parse(s: &str) -> Result<Source> {
        Source::parse_with_github_url(s, std::env::var(GITHUB_URL_ENV).ok().as_deref())
    }

    /// [`Source::parse`] with the GitHub base URL given (`None` or empty: [`GITHUB_URL`]).
    pub fn parse_with_github_url(s: &str, github_url: Option<&str>) -> Result<Source> {
        let bad = |detail: &str| Error::Source {
            source_text: s.to_string(),
            detail: detail.to_string(),
        };
        let t = s.trim();
        if t.is_empty() {
            return Err(bad("empty"));
        }
        if let Some(spec) = t.strip_prefix("github:") {
            return parse_github(spec, github_url).map_err(|d| bad(&d));
        }
        if t.starts_with("https://") || t.starts_with("http://") {
            return Ok(Source::Http {
                base: t.trim_end_matches('/').to_string(),
                ca_file: None,
            });
        }
        let path = match t.strip_prefix("file://") {
            Some(p) if p.starts_with('/') => PathBuf::from(p),
            Some(_) => {
                return Err(bad(
                    "a file:// URL needs an absolute path (file:///srv/outpost)",
                ))
            }
            None if t.contains("://") => {
                return Err(bad(
                    "only https://, http://, file:// URLs and github:OWNER/REPO are supported",
                ))
            }
            None => PathBuf::from(t),
        };
        Ok(if path.is_file() {
            Source::Bundle(path)
        } else {
            Source::Dir(path)
        })
    }

    /// Use the PEM certificates in `ca_file` as the trusted roots for an https source.
    pub fn with_ca_file(self, ca_file: Option<PathBuf>) -> Source {
        match self {
            Source::Http { base, .. } => Source::Http { base, ca_file },
            Source::GitHub {
                owner, repo, base, ..
            } => Source::GitHub {
                owner,
                repo,
                base,
                ca_file,
            },
            other => other,
        }
    }

    /// Human-readable location of `rel` in this source, for messages. For GitHub it is the
    /// URL fetched: `vV/FILE` → `BASE/OWNER/REPO/releases/download/vV/FILE`; a root file
    /// `NAME` → `BASE/OWNER/REPO/releases/latest/download/NAME`, and `channels/NAME` →
    /// `…/latest/download/channel-NAME`.
    pub fn location(&self, rel: &str) -> String {
        match self {
            Source::Http { base, .. } => format!("{base}/{rel}"),
            Source::GitHub {
                owner, repo, base, ..
            } => github_url(base, owner, repo, rel)
                .unwrap_or_else(|| format!("github:{owner}/{repo}:{rel}")),
            Source::Dir(d) => d.join(rel).display().to_string(),
            Source::Bundle(b) => format!("{}:{rel}", b.display()),
        }
    }

    pub(crate) fn reader(&self) -> Result<Reader<'_>> {
        let agent = match self {
            Source::Http { ca_file, .. } => Some(http_agent(ca_file.as_deref(), false)?),
            Source::GitHub { base, ca_file, .. } => Some(http_agent(
                ca_file.as_deref(),
                base.starts_with("https://"),
            )?),
            _ => None,
        };
        Ok(Reader {
            source: self,
            agent,
        })
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Http { base, .. } => f.write_str(base),
            Source::GitHub { owner, repo, .. } => write!(f, "github:{owner}/{repo}"),
            Source::Dir(d) | Source::Bundle(d) => write!(f, "{}", d.display()),
        }
    }
}

/// `OWNER/REPO` of a `github:` source, and the base URL to use.
fn parse_github(spec: &str, github_url: Option<&str>) -> std::result::Result<Source, String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n != "."
            && n != ".."
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    let (owner, repo) = spec
        .trim_end_matches('/')
        .split_once('/')
        .filter(|(o, r)| name_ok(o) && name_ok(r))
        .ok_or("expected github:OWNER/REPO (letters, digits, '-', '_', '.')")?;
    let base = match github_url.map(str::trim).filter(|u| !u.is_empty()) {
        None => GITHUB_URL.to_string(),
        Some(u) => {
            let u = u.trim_end_matches('/');
            let ok = outpost_core::url::https_or_loopback(u);
            if !ok {
                return Err(format!(
                    "{GITHUB_URL_ENV}={u:?} must be an https:// URL (http:// only on loopback)"
                ));
            }
            u.to_string()
        }
    };
    Ok(Source::GitHub {
        owner: owner.to_string(),
        repo: repo.to_string(),
        base,
        ca_file: None,
    })
}

/// The GitHub URL of release-root path `rel` (see [`Source::location`]); `None` for a path
/// the layout has no asset for.
fn github_url(base: &str, owner: &str, repo: &str, rel: &str) -> Option<String> {
    let releases = format!("{base}/{owner}/{repo}/releases");
    match rel.split('/').collect::<Vec<_>>().as_slice() {
        [name] if !name.is_empty() => Some(format!("{releases}/latest/download/{name}")),
        ["channels", ch] if !ch.is_empty() => {
            Some(format!("{releases}/latest/download/channel-{ch}"))
        }
        [tag, name] if tag.len() > 1 && tag.starts_with('v') && !name.is_empty() => {
            Some(format!("{releases}/download/{tag}/{name}"))
        }
        _ => None,
    }
}

/// System CA bundles, first one found wins (Debian/Ubuntu, Fedora/RHEL, Alpine/others).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The roots outpost trusts for https (release host *and* hub): the host's CA bundle (where
/// operators add private CAs) plus `ca_file`. `Ok(None)`: neither exists, use ureq's
/// built-in Mozilla roots. `Err(reason)`: `ca_file` is unreadable or holds no certificate.
pub fn trust_roots(
    ca_file: Option<&Path>,
) -> std::result::Result<Option<ureq::tls::RootCerts>, String> {
    let mut certs = Vec::new();
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read it: {}", e.kind()))?;
        let mut n = 0;
        for item in ureq::tls::parse_pem(&pem) {
            if let ureq::tls::PemItem::Certificate(c) = item.map_err(|e| e.to_string())? {
                certs.push(c);
                n += 1;
            }
        }
        if n == 0 {
            return Err("it holds no PEM CERTIFICATE block".into());
        }
    }
    if let Some(pem) = SYSTEM_BUNDLES.iter().find_map(|p| std::fs::read(p).ok()) {
        // A damaged system bundle is not ours to refuse: take what parses.
        certs.extend(ureq::tls::parse_pem(&pem).filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        }));
    }
    Ok((!certs.is_empty()).then(|| ureq::tls::RootCerts::new_with_certs(&certs)))
}

/// Trust: the host's CA bundle (where operators add private CAs) plus `ca_file`; the
/// built-in Mozilla roots only when the host has no bundle and no `ca_file` is given.
/// Redirects are followed (up to [`MAX_REDIRECTS`]); `https_only` refuses any `http://`
/// request, redirects included.
fn http_agent(ca_file: Option<&Path>, https_only: bool) -> Result<ureq::Agent> {
    let mut cfg = ureq::Agent::config_builder()
        .max_redirects(MAX_REDIRECTS)
        .https_only(https_only)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(format!("outpost/{}", crate::VERSION));
    let roots = trust_roots(ca_file).map_err(|why| {
        Error::usage(
            format!(
                "ca_file {} is not usable: {why}",
                ca_file.map(|p| p.display().to_string()).unwrap_or_default()
            ),
            "ca_file must be a readable PEM file with one or more CERTIFICATE blocks",
        )
    })?;
    if let Some(roots) = roots {
        cfg = cfg.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build());
    }
    Ok(cfg.build().into())
}

/// Reads files of one source.
pub(crate) struct Reader<'a> {
    source: &'a Source,
    agent: Option<ureq::Agent>,
}

/// Refuse a relative path that could leave the release root.
fn check_rel(rel: &str) -> Result<()> {
    let ok = !rel.is_empty()
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(Error::Manifest {
            location: rel.to_string(),
            detail: "path leaves the release root".into(),
        })
    }
}

impl Reader<'_> {
    pub(crate) fn location(&self, rel: &str) -> String {
        self.source.location(rel)
    }

    /// Copy `rel` into `out`, refusing more than `limit` bytes. Returns the byte count.
    pub(crate) fn copy_to(
        &self,
        rel: &str,
        limit: u64,
        out: &mut dyn Write,
        progress: Option<&mut Progress>,
    ) -> Result<u64> {
        check_rel(rel)?;
        let location = self.location(rel);
        let not_found = || Error::NotFound {
            location: location.clone(),
        };
        let url = match self.source {
            Source::Http { base, .. } => Some(format!("{base}/{rel}")),
            Source::GitHub {
                owner, repo, base, ..
            } => Some(github_url(base, owner, repo, rel).ok_or_else(not_found)?),
            Source::Dir(_) | Source::Bundle(_) => None,
        };
        match (self.source, &self.agent, url) {
            (Source::Http { .. } | Source::GitHub { .. }, Some(agent), Some(url)) => {
                let resp = agent.get(&url).call().map_err(|e| match e {
                    ureq::Error::StatusCode(404) => not_found(),
                    e => Error::Http {
                        url: url.clone(),
                        detail: e.to_string(),
                    },
                })?;
                let reader = resp
                    .into_body()
                    .into_with_config()
                    .limit(limit.saturating_add(1))
                    .reader();
                copy_capped(reader, limit, out, &location, progress, |e| Error::Http {
                    url: url.clone(),
                    detail: e.to_string(),
                })
            }
            (Source::Dir(dir), _, _) => {
                let path = dir.join(rel);
                let f = match fs_err::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
                    Err(e) => return Err(Error::io("open", &path, e)),
                };
                copy_capped(f, limit, out, &location, progress, |e| {
                    Error::io("read", &path, e)
                })
            }
            (Source::Bundle(bundle), _, _) => {
                let f = fs_err::File::open(bundle).map_err(|e| Error::io("open", bundle, e))?;
                let mut ar = tar::Archive::new(f);
                let archive_err = |e: std::io::Error| Error::Archive {
                    archive: bundle.clone(),
                    detail: e.to_string(),
                };
                // The whole bundle is read: a name held twice (tar -x would take the last
                // copy, this reader the first) or held as a link is refused, not guessed at.
                let mut copied = None;
                let mut progress = progress;
                for entry in ar.entries().map_err(archive_err)? {
                    let entry = entry.map_err(archive_err)?;
                    let name = entry.path().map_err(archive_err)?.into_owned();
                    let name = name.strip_prefix("./").unwrap_or(&name);
                    if name != Path::new(rel) {
                        continue;
                    }
                    let detail = if copied.is_some() {
                        format!("it holds {rel} twice")
                    } else if !entry.header().entry_type().is_file() {
                        format!("{rel} is not a regular file")
                    } else {
                        copied = Some(copy_capped(
                            entry,
                            limit,
                            out,
                            &location,
                            progress.take(),
                            archive_err,
                        )?);
                        continue;
                    };
                    return Err(Error::Archive {
                        archive: bundle.clone(),
                        detail,
                    });
                }
                copied.ok_or_else(not_found)
            }
            (Source::Http { .. } | Source::GitHub { .. }, _, _) => {
                unreachable!("Source::reader builds an agent for Http and GitHub")
            }
        }
    }

    /// A small file (manifest, signature) into memory.
    pub(crate) fn bytes(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.copy_to(rel, limit, &mut v, None)?;
        Ok(v)
    }

    /// Download `rel` to `dest` (atomically), requiring exactly `size` bytes; returns sha256.
    /// On any error `dest` is not created.
    pub(crate) fn download(
        &self,
        rel: &str,
        size: u64,
        dest: &Path,
        show_progress: bool,
    ) -> Result<String> {
        let limit = size.min(MAX_TARBALL_BYTES);
        let mut progress = Progress::new(rel, size, show_progress);
        let mut sha = None;
        let mut inner_err = None;
        let r = fsx::write_atomic_with(dest, 0o644, |f| {
            let mut w = HashingWriter {
                inner: f,
                hash: Sha256::new(),
            };
            let result = self
                .copy_to(rel, limit, &mut w, Some(&mut progress))
                .and_then(|n| match n == size {
                    true => Ok(()),
                    false => Err(Error::SizeMismatch {
                        location: self.location(rel),
                        expected: size,
                        actual: n,
                    }),
                });
            match result {
                Ok(()) => {
                    sha = Some(hex::encode(w.hash.finalize()));
                    Ok(())
                }
                Err(e) => {
                    inner_err = Some(e);
                    Err(std::io::Error::other("download failed"))
                }
            }
        });
        progress.finish();
        if let Some(e) = inner_err {
            return Err(e);
        }
        r?;
        // Invariant: write_atomic_with succeeded, so the closure ran to its Ok branch.
        Ok(sha.expect("sha set on success"))
    }
}

struct HashingWriter<'f> {
    inner: &'f mut fs_err::File,
    hash: Sha256,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn copy_capped<R: Read, E: Fn(std::io::Error) -> Error>(
    mut r: R,
    limit: u64,
    out: &mut dyn Write,
    location: &str,
    mut progress: Option<&mut Progress>,
    read_err: E,
) -> Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total: u64 = 0;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // ureq reports its body limit as an error: that is our cap.
            Err(e) if total >= limit && e.to_string().contains("limit") => {
                return Err(Error::TooLarge {
                    location: location.to_string(),
                    limit,
                })
            }
            Err(e) => return Err(read_err(e)),
        };
        total += n as u64;
        if total > limit {
            return Err(Error::TooLarge {
                location: location.to_string(),
                limit,
            });
        }
        out.write_all(&buf[..n]).map_err(|e| Error::Io {
            what: "write download of",
            path: PathBuf::from(location),
            source: e,
        })?;
        if let Some(p) = progress.as_deref_mut() {
            p.advance(n as u64);
        }
    }
}

/// A one-line progress display on stderr, only when stderr is a terminal.
pub(crate) struct Progress {
    name: String,
    total: u64,
    done: u64,
    last: Option<Instant>,
    enabled: bool,
}

impl Progress {
    pub(crate) fn new(name: &str, total: u64, wanted: bool) -> Progress {
        Progress {
            name: name.rsplit('/').next().unwrap_or(name).to_string(),
            total,
            done: 0,
            last: None,
            enabled: wanted && std::io::stderr().is_terminal(),
        }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(100))
            && self.done < self.total
        {
            return;
        }
        self.last = Some(now);
        let pct = (self.done * 100)
            .checked_div(self.total)
            .unwrap_or(100)
            .min(100);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let _ = write!(
            std::io::stderr(),
            "\rdownloading {} {pct:>3}% ({:.1}/{:.1} MiB)",
            self.name,
            mib(self.done),
            mib(self.total)
        );
    }

    fn finish(&mut self) {
        if self.enabled && self.last.is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// A release whose tarball is on disk and verified: size, sha256 from the signed manifest,
/// and the tarball's own signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub version: semver::Version,
    pub target: String,
    pub tarball_path: PathBuf,
    pub sha256: String,
    /// The tarball's `.minisig` (text), as verified.
    pub minisig: String,
    /// The signed manifest's timestamp (now recorded in the replay state).
    pub manifest_timestamp: u64,
    /// The signed manifest's channel heads (channel → version), as verified.
    pub channels: BTreeMap<String, semver::Version>,
    /// Where the signed manifest was read from (for messages).
    pub manifest_location: String,
}

/// Environment variable in which install.sh names the channel it resolved the version from
/// (unset when a version was asked for): [`Verified::check_channel_from_env`].
pub use outpost_core::env::RELEASE_CHANNEL as CHANNEL_ENV;

impl Verified {
    /// Refuse unless the signed manifest names this version as the head of `channel`: the
    /// channel file (`channels/NAME`, `channel-NAME` on GitHub) is not signed, so a version
    /// resolved from it is only trusted once the signed manifest agrees. A stale or forged
    /// channel file (a downgrade to an older, genuinely signed version) fails here.
    pub fn check_channel_head(&self, channel: &str) -> Result<()> {
        check_channel_head(
            &self.channels,
            channel,
            &self.version,
            &self.manifest_location,
        )
    }

    /// [`Verified::check_channel_head`] for the channel named in [`CHANNEL_ENV`], when set
    /// (install.sh sets it when it resolved the version from a channel file).
    pub fn check_channel_from_env(&self) -> Result<()> {
        match std::env::var(CHANNEL_ENV) {
            Ok(c) if !c.trim().is_empty() => self.check_channel_head(c.trim()),
            _ => Ok(()),
        }
    }
}

/// Refuse unless `channels` (a signed manifest's) names `version` as the head of `channel`.
pub fn check_channel_head(
    channels: &BTreeMap<String, semver::Version>,
    channel: &str,
    version: &semver::Version,
    location: &str,
) -> Result<()> {
    if !crate::manifest::CHANNELS.contains(&channel) {
        return Err(Error::usage(
            format!("unknown release channel {channel:?} in {CHANNEL_ENV}"),
            "use stable or beta (install.sh sets it from OUTPOST_CHANNEL)",
        ));
    }
    match channels.get(channel) {
        Some(head) if head == version => Ok(()),
        head => Err(Error::ChannelMismatch {
            channel: channel.to_string(),
            location: location.to_string(),
            head: head.map(ToString::to_string),
            version: version.to_string(),
        }),
    }
}

/// What [`download_verified`] checked: the tarball's sha256 and its signature's text.
pub(crate) struct Downloaded {
    pub sha256: String,
    pub minisig: String,
}

/// Fetch `manifest.json` and its signature, verify the signature with `keys`, check the
/// trusted comment's timestamp against `state` (refusing replays), and record it.
pub fn fetch_manifest(
    source: &Source,
    keys: &TrustedKeys,
    state: &ReplayState,
) -> Result<Manifest> {
    let reader = source.reader()?;
    fetch_manifest_with(&reader, keys, state)
}

pub(crate) fn fetch_manifest_with(
    reader: &Reader<'_>,
    keys: &TrustedKeys,
    state: &ReplayState,
) -> Result<Manifest> {
    let location = reader.location(MANIFEST);
    if keys.is_empty() {
        return Err(Error::NoTrustedKeys { location });
    }
    let body = reader.bytes(MANIFEST, MAX_MANIFEST_BYTES)?;
    let sig_rel = format!("{MANIFEST}.minisig");
    let sig = reader.bytes(&sig_rel, MAX_SIG_BYTES)?;
    let sig = String::from_utf8(sig).map_err(|_| Error::BadSignature {
        location: location.clone(),
        detail: "the .minisig is not text".into(),
    })?;
    let comment = TrustedComment::parse(&keys.verify(&body, &sig, &location)?);
    let bad = |detail: String| Error::BadSignature {
        location: location.clone(),
        detail,
    };
    if comment.file.as_deref().is_some_and(|f| f != MANIFEST) {
        return Err(bad(format!(
            "the signature is for {:?}, not {MANIFEST}",
            comment.file.unwrap_or_default()
        )));
    }
    let ts = comment.timestamp.ok_or_else(|| {
        bad("the trusted comment has no timestamp (sign it with `outpost-release publish`)".into())
    })?;
    let manifest = Manifest::parse(&body, &location)?;
    if manifest.timestamp != ts {
        return Err(bad(format!(
            "the signed timestamp {ts} differs from the manifest's {}",
            manifest.timestamp
        )));
    }
    state.check_and_record(ts, &location)?;
    Ok(manifest)
}

/// Download and verify a release tarball into `staging_dir` (created if missing; it should
/// be on the same filesystem as the install, e.g. next to `versions/`). Nothing is unpacked:
/// see [`crate::extract`]. Steps: signed manifest (+ replay check), pick `want` for
/// `target`, download with a size cap, sha256 against the manifest, then the tarball's own
/// `.minisig`. A progress line is shown on stderr when it is a terminal.
pub fn fetch_release(
    source: &Source,
    keys: &TrustedKeys,
    state: &ReplayState,
    want: &Want,
    target: &str,
    staging_dir: &Path,
) -> Result<Verified> {
    let reader = source.reader()?;
    let manifest = fetch_manifest_with(&reader, keys, state)?;
    let release = manifest.pick(want, &reader.location(MANIFEST))?;
    let artifact = release.artifact(target)?;
    fsx::create_dir_all(staging_dir)?;
    let file_name = tarball_file_name(&release.version, target);
    let dest = staging_dir.join(&file_name);
    let result = download_verified(&reader, keys, artifact, &file_name, &dest, true);
    if result.is_err() {
        let _ = fs_err::remove_file(&dest); // best effort: never leave an unverified tarball
    }
    let Downloaded { sha256, minisig } = result?;
    Ok(Verified {
        version: release.version.clone(),
        target: target.to_string(),
        tarball_path: dest,
        sha256,
        minisig,
        manifest_timestamp: manifest.timestamp,
        channels: manifest.channels.clone(),
        manifest_location: reader.location(MANIFEST),
    })
}

/// Download `artifact` to `dest` and check size, sha256 and signature.
pub(crate) fn download_verified(
    reader: &Reader<'_>,
    keys: &TrustedKeys,
    artifact: &crate::manifest::Artifact,
    file_name: &str,
    dest: &Path,
    show_progress: bool,
) -> Result<Downloaded> {
    let part = crate::fsx::tmp_name(dest, "part");
    let result = verify_download(reader, keys, artifact, file_name, &part, show_progress);
    let result = result.and_then(|d| {
        fs_err::rename(&part, dest).map_err(|e| Error::io("rename", dest, e))?;
        fsx::fsync_dir(fsx::parent(dest))?;
        Ok(d)
    });
    if result.is_err() {
        let _ = fs_err::remove_file(&part); // best effort: the partial download is ours
    }
    result
}

fn verify_download(
    reader: &Reader<'_>,
    keys: &TrustedKeys,
    artifact: &crate::manifest::Artifact,
    file_name: &str,
    dest: &Path,
    show_progress: bool,
) -> Result<Downloaded> {
    let location = reader.location(&artifact.name);
    let sha = reader.download(&artifact.name, artifact.size, dest, show_progress)?;
    if sha != artifact.sha256 {
        return Err(Error::ShaMismatch {
            location,
            expected: artifact.sha256.clone(),
            actual: sha,
        });
    }
    let sig_rel = format!("{}.minisig", artifact.name);
    let sig_path = crate::fsx::tmp_name(dest, "minisig");
    let sig = reader.bytes(&sig_rel, MAX_SIG_BYTES)?;
    fsx::write_atomic(&sig_path, &sig, 0o644)?;
    let verified = keys.verify_file(dest, &sig_path);
    let _ = fs_err::remove_file(&sig_path);
    let comment = TrustedComment::parse(&verified.map_err(|e| match e {
        Error::BadSignature { detail, .. } => Error::BadSignature {
            location: location.clone(),
            detail,
        },
        e => e,
    })?);
    if let Some(f) = comment.file.filter(|f| f != file_name) {
        return Err(Error::BadSignature {
            location,
            detail: format!("the signature is for {f:?}"),
        });
    }
    let minisig = String::from_utf8(sig).map_err(|_| Error::BadSignature {
        location: reader.location(&sig_rel),
        detail: "the .minisig is not text".into(),
    })?;
    Ok(Downloaded {
        sha256: sha,
        minisig,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_parse_table() {
        let d = tempfile::tempdir().unwrap();
        let bundle = d.path().join("b.tar");
        std::fs::write(&bundle, b"").unwrap();
        let b = bundle.display().to_string();
        let cases: Vec<(String, Option<Source>)> = vec![
            (
                "https://r.example.com/outpost/".into(),
                Some(Source::Http {
                    base: "https://r.example.com/outpost".into(),
                    ca_file: None,
                }),
            ),
            (
                "http://10.0.0.1:8080".into(),
                Some(Source::Http {
                    base: "http://10.0.0.1:8080".into(),
                    ca_file: None,
                }),
            ),
            (
                "file:///srv/outpost".into(),
                Some(Source::Dir("/srv/outpost".into())),
            ),
            (
                "/srv/outpost".into(),
                Some(Source::Dir("/srv/outpost".into())),
            ),
            (b.clone(), Some(Source::Bundle(bundle.clone()))),
            (format!("file://{b}"), Some(Source::Bundle(bundle.clone()))),
            ("file://relative".into(), None),
            ("ftp://x/y".into(), None),
            ("".into(), None),
        ];
        for (s, want) in cases {
            assert_eq!(Source::parse(&s).ok(), want, "{s}");
        }
    }

    #[test]
    fn github_source_parse() {
        let gh = |owner: &str, repo: &str, base: &str| Source::GitHub {
            owner: owner.into(),
            repo: repo.into(),
            base: base.into(),
            ca_file: None,
        };
        let cases: Vec<(&str, Option<&str>, Option<Source>)> = vec![
            ("github:o/r", None, Some(gh("o", "r", GITHUB_URL))),
            ("github:o/r", Some(""), Some(gh("o", "r", GITHUB_URL))),
            (
                " github:My-Org/out_post.rs/ ",
                None,
                Some(gh("My-Org", "out_post.rs", GITHUB_URL)),
            ),
            (
                "github:o/r",
                Some("https://ghe.example.com/"),
                Some(gh("o", "r", "https://ghe.example.com")),
            ),
            (
                "github:o/r",
                Some("http://127.0.0.1:8080"),
                Some(gh("o", "r", "http://127.0.0.1:8080")),
            ),
            (
                "github:o/r",
                Some("http://[::1]:80/gh"),
                Some(gh("o", "r", "http://[::1]:80/gh")),
            ),
            ("github:o/r", Some("http://ghe.example.com"), None),
            ("github:o/r", Some("http://127.0.0.1.evil.com"), None),
            ("github:o/r", Some("https://"), None),
            ("github:o/r", Some("ftp://x"), None),
            ("github:o", None, None),
            ("github:/r", None, None),
            ("github:o/", None, None),
            ("github:o/r/x", None, None),
            ("github:../r", None, None),
            ("github:o/..", None, None),
            ("github:o/r?x", None, None),
            ("github:o w/r", None, None),
            ("github:", None, None),
        ];
        for (s, url, want) in cases {
            assert_eq!(
                Source::parse_with_github_url(s, url).ok(),
                want,
                "{s} {url:?}"
            );
        }
        let src = gh("o", "r", GITHUB_URL).with_ca_file(Some("/ca.pem".into()));
        assert!(matches!(
            &src,
            Source::GitHub {
                ca_file: Some(_),
                ..
            }
        ));
        assert_eq!(src.to_string(), "github:o/r");
    }

    #[test]
    fn github_layout_mapping() {
        let src = Source::parse_with_github_url("github:o/r", None).unwrap();
        let d = "https://github.com/o/r/releases";
        for (rel, want) in [
            (
                "v1.2.3/outpost-1.2.3-x86_64-unknown-linux-musl.tar.gz",
                format!("{d}/download/v1.2.3/outpost-1.2.3-x86_64-unknown-linux-musl.tar.gz"),
            ),
            (
                "v1.2.3/SHA256SUMS.minisig",
                format!("{d}/download/v1.2.3/SHA256SUMS.minisig"),
            ),
            (
                "manifest.json",
                format!("{d}/latest/download/manifest.json"),
            ),
            (
                "manifest.json.minisig",
                format!("{d}/latest/download/manifest.json.minisig"),
            ),
            (
                "channels/stable",
                format!("{d}/latest/download/channel-stable"),
            ),
            ("channels/beta", format!("{d}/latest/download/channel-beta")),
            ("install.sh", format!("{d}/latest/download/install.sh")),
        ] {
            assert_eq!(src.location(rel), want, "{rel}");
        }
        // no asset for deeper or non-version paths: not found, without a request
        let r = src.reader().unwrap();
        for rel in ["a/b/c", "x/y", "v/y"] {
            assert!(
                matches!(r.bytes(rel, 10), Err(Error::NotFound { .. })),
                "{rel}"
            );
        }
        assert!(r.bytes("../x", 10).is_err());
    }

    #[test]
    fn rel_paths_cannot_escape() {
        for bad in ["../x", "/etc/passwd", "a/../../b", "", "./x"] {
            assert!(check_rel(bad).is_err(), "{bad}");
        }
        assert!(check_rel("v1.0.0/outpost-1.0.0-x.tar.gz").is_ok());
    }

    #[test]
    fn dir_source_caps_size() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("big"), vec![7u8; 1000]).unwrap();
        let src = Source::Dir(d.path().to_path_buf());
        let r = src.reader().unwrap();
        assert_eq!(r.bytes("big", 1000).unwrap().len(), 1000);
        assert!(matches!(r.bytes("big", 999), Err(Error::TooLarge { .. })));
        assert!(matches!(
            r.bytes("missing", 10),
            Err(Error::NotFound { .. })
        ));
        // exact size required
        let dest = d.path().join("out");
        assert!(matches!(
            r.download("big", 1001, &dest, false),
            Err(Error::SizeMismatch { .. })
        ));
        assert!(!dest.exists());
        assert!(matches!(
            r.download("big", 10, &dest, false),
            Err(Error::TooLarge { .. })
        ));
        assert!(!dest.exists());
        assert_eq!(
            r.download("big", 1000, &dest, false).unwrap(),
            fsx::sha256_bytes(&[7u8; 1000])
        );
    }

    #[test]
    fn channel_head_table() {
        let v = |s: &str| semver::Version::parse(s).unwrap();
        let channels: BTreeMap<String, semver::Version> = [
            ("stable".to_string(), v("1.1.0")),
            ("beta".to_string(), v("1.2.0-rc.1")),
        ]
        .into();
        let cases = [
            ("stable", "1.1.0", true),
            ("stable", "1.0.0", false), // a forged channel file: downgrade
            ("stable", "1.2.0-rc.1", false),
            ("beta", "1.2.0-rc.1", true),
            ("beta", "1.1.0", false),
        ];
        for (channel, version, ok) in cases {
            let r = check_channel_head(&channels, channel, &v(version), "https://h/manifest.json");
            assert_eq!(r.is_ok(), ok, "{channel} {version}: {r:?}");
            if let Err(e) = r {
                assert!(matches!(e, Error::ChannelMismatch { .. }), "{e}");
                let m = e.to_string();
                assert!(
                    m.contains("https://h/manifest.json") && m.contains("downgrade"),
                    "{m}"
                );
                assert!(e.hint().contains("OUTPOST_VERSION="), "{}", e.hint());
            }
        }
        // a channel the manifest does not carry, and one that does not exist
        let only_stable: BTreeMap<String, semver::Version> =
            [("stable".to_string(), v("1.1.0"))].into();
        let e = check_channel_head(&only_stable, "beta", &v("1.1.0"), "m").unwrap_err();
        assert!(e.to_string().contains("not set"), "{e}");
        let e = check_channel_head(&channels, "nightly", &v("1.1.0"), "m").unwrap_err();
        assert!(matches!(e, Error::Usage { .. }), "{e}");
    }

    #[test]
    fn no_keys_refused_before_reading() {
        let d = tempfile::tempdir().unwrap(); // empty: would be NotFound if read
        let src = Source::Dir(d.path().to_path_buf());
        let err = fetch_manifest(&src, &TrustedKeys::empty(), &ReplayState::none()).unwrap_err();
        assert!(matches!(err, Error::NoTrustedKeys { .. }), "{err}");
    }
}
