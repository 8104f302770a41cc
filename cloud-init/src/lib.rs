//! cloud-init user-data that installs a pinned, verified outpost release on a fresh host and
//! enrolls it with the hub (docs/HETZNER.md). The templates live in `cloud-init/` (variables:
//! cloud-init/README.md) and are compiled in.
//!
//! Rendering ([`render`]) is pure, so `outpost cloud-init render` and `outpost-hub keys create
//! --cloud-init` produce the same bytes. [`resolve`] pins the version: it reads the signed
//! manifest (verified with the given keys), downloads and verifies the tarball like an
//! install would, and returns its sha256 and `.minisig` for the user-data to check again on
//! the host.
//!
//! The enrollment key appears exactly once in the output: in the `write_files` entry of the
//! 0600 secrets file, never in `runcmd` or a command line.
use outpost_release::error::{Error, Result};
use outpost_release::fetch::{fetch_release, Source};
use outpost_release::manifest::{Want, TARGETS};
use outpost_release::verify::{TrustedKeys, MAX_SIG_BYTES};
use std::path::Path;

/// Hetzner Cloud's (and a common) limit on user-data: 32 KiB.
pub const MAX_USER_DATA_BYTES: usize = 32 * 1024;
/// Where system mode's user-data writes the key: the service's own secrets file.
pub const SECRETS_FILE_SYSTEM: &str = "/etc/outpost/outpost.env";
/// User mode: a root-only staging file on tmpfs; `outpost install --user` copies the key into
/// the user's secrets file and the bootstrap removes this one.
pub const SECRETS_FILE_USER: &str = "/run/outpost-cloud-init/enroll.env";
/// Where the user-data writes `--ca-file` (passed on to `outpost install --ca-file`).
pub const CA_FILE: &str = "/etc/outpost/ca.pem";
/// Directory of the bootstrap script and the tarball's signature on the host.
pub const HOST_DIR: &str = "/usr/local/lib/outpost/cloud-init";

const USER_DATA_TEMPLATE: &str = include_str!("../user-data.yaml");
const CA_ENTRY_TEMPLATE: &str = include_str!("../ca-entry.yaml");
/// The bootstrap script template (`cloud-init/bootstrap.sh`).
pub const BOOTSTRAP_TEMPLATE: &str = include_str!("../bootstrap.sh");

/// Which service the host gets: the workspace's one [`outpost_core::Mode`].
pub use outpost_core::Mode;

/// `--mode system|user`.
pub fn parse_mode(s: &str) -> Result<Mode> {
    match s {
        "system" => Ok(Mode::System),
        "user" => Ok(Mode::User),
        _ => Err(Error::usage(
            format!("invalid mode {s:?}"),
            "use --mode system or --mode user",
        )),
    }
}

/// A release pinned for the user-data: everything the host needs to check the download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub version: semver::Version,
    pub target: String,
    /// sha256 of the tarball, from the signed manifest.
    pub sha256: String,
    /// The tarball's `.minisig` (text).
    pub minisig: String,
    /// Public keys (base64 lines) the host checks the signatures with.
    pub pubkeys: Vec<String>,
}

impl Pinned {
    /// A stand-in for checking the other inputs before anything is downloaded (it renders,
    /// but pins nothing: never ship its output).
    pub fn placeholder(target: &str, pubkeys: Vec<String>) -> Pinned {
        Pinned {
            version: semver::Version::new(0, 0, 0),
            target: target.to_string(),
            sha256: "0".repeat(64),
            minisig: "untrusted comment: placeholder\n".into(),
            pubkeys,
        }
    }
}

/// Everything the user-data is rendered from. `Debug` hides the key.
#[derive(Clone)]
pub struct Params {
    /// Hub URL the agent enrolls with (`outpost install --hub`).
    pub hub_url: String,
    /// Single-use enrollment key (secret).
    pub enroll_key: String,
    /// Release root the host downloads from: an http(s) URL, or `github:OWNER/REPO` (GitHub
    /// Releases; the base comes from `OUTPOST_GITHUB_URL` when set, as for any source).
    pub release_url: String,
    pub release: Pinned,
    pub mode: Mode,
    /// System mode: the service user (default: a new `outpost` system user). User mode: the
    /// (existing) user whose service it is; required.
    pub run_as: Option<String>,
    /// PEM CA certificate(s) the host trusts for the release host and hub.
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Params")
            .field("hub_url", &self.hub_url)
            .field("enroll_key", &"<redacted>")
            .field("release_url", &self.release_url)
            .field("release", &self.release)
            .field("mode", &self.mode)
            .field("run_as", &self.run_as)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

/// An http(s) URL that is safe inside single quotes, YAML and a comment line.
fn check_url(url: &str, flag: &str) -> Result<String> {
    let u = url.trim().trim_end_matches('/');
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    let ok = rest.is_some_and(|r| {
        !r.is_empty()
            && !r.starts_with('/')
            && u.chars()
                .all(|c| c.is_ascii_graphic() && !"'\"\\`$<>{}|^".contains(c))
    });
    if ok {
        Ok(u.to_string())
    } else {
        Err(Error::usage(
            format!("invalid {flag} {url:?}: expected http(s)://HOST[:PORT][/PATH] without quotes or spaces"),
            format!("pass {flag} https://host.example.com"),
        ))
    }
}

fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 256
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::usage(
            "invalid enrollment key: expected letters, digits, `_` and `-` only",
            "copy the key exactly as `outpost-hub keys create` printed it (opk_…)",
        ))
    }
}

/// A POSIX user name (as `useradd` accepts it by default).
fn check_user(name: &str) -> Result<()> {
    if outpost_core::names::valid_username(name) {
        Ok(())
    } else {
        Err(Error::usage(
            format!("invalid --run-as {name:?}: not a valid user name"),
            "pass a user name such as `outpost` or `deploy`",
        ))
    }
}

/// Printable ASCII lines (tab allowed), ending with exactly one newline; CRLF becomes LF.
fn text_block(text: &str, what: &str, limit: usize) -> Result<String> {
    let t = text.replace("\r\n", "\n");
    let t = t.trim_end_matches('\n');
    let ok = !t.trim().is_empty()
        && t.len() <= limit
        && t.chars()
            .all(|c| c == '\n' || c == '\t' || (' '..='~').contains(&c))
        && !t
            .lines()
            .next()
            .unwrap_or_default()
            .starts_with([' ', '\t']);
    if ok {
        Ok(format!("{t}\n"))
    } else {
        Err(Error::usage(
            format!("{what} is not plain text of at most {limit} bytes"),
            format!("check the {what}"),
        ))
    }
}

/// Where a host gets its release: `source` for `outpost install` (`OUTPOST_RELEASE_URL`), the
/// tarball's download URL for the bootstrap's curl, and the GitHub base for a `github:` source
/// that does not use github.com (`OUTPOST_GITHUB_URL` on the host).
struct ReleaseAt {
    source: String,
    tarball_url: String,
    github_url: Option<String>,
}

fn release_at(url: &str, r: &Pinned) -> Result<ReleaseAt> {
    let rel_path = outpost_release::manifest::artifact_name(&r.version, &r.target); // vV/outpost-V-T.tar.gz
    if !url.trim().starts_with("github:") {
        let rel = check_url(url, "--release-url")?;
        return Ok(ReleaseAt {
            tarball_url: format!("{rel}/{rel_path}"),
            source: rel,
            github_url: None,
        });
    }
    let source = Source::parse(url)?;
    let Source::GitHub { base, .. } = &source else {
        return Err(Error::usage(
            format!("invalid --release-url {url:?}"),
            "use an http(s) URL or github:OWNER/REPO",
        ));
    };
    Ok(ReleaseAt {
        github_url: (base != outpost_release::fetch::GITHUB_URL).then(|| base.clone()),
        tarball_url: check_url(&source.location(&rel_path), "--release-url")?,
        source: source.to_string(),
    })
}

fn validate(p: &Params) -> Result<(String, ReleaseAt, String, Option<String>)> {
    let hub = check_url(&p.hub_url, "--hub")?;
    outpost_core::url::check_hub_url(&hub, false).map_err(|why| {
        Error::usage(
            format!("invalid --hub {:?}: {why}", p.hub_url),
            "pass --hub https://hub.example.com (the new host sends its token there)",
        )
    })?;
    check_key(&p.enroll_key)?;
    let r = &p.release;
    if !TARGETS.contains(&r.target.as_str()) {
        return Err(Error::usage(
            format!("unknown target {:?}", r.target),
            format!("use one of {}", TARGETS.join(", ")),
        ));
    }
    if r.sha256.len() != 64
        || !r
            .sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(Error::usage(
            format!("invalid sha256 {:?}", r.sha256),
            "the sha256 comes from the signed manifest: 64 lowercase hex digits",
        ));
    }
    if r.pubkeys.is_empty() {
        return Err(Error::NoTrustedKeys {
            location: "the user-data".into(),
        });
    }
    for k in &r.pubkeys {
        let b64 = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
        if !b64 {
            return Err(Error::BadKey {
                origin: "the release keys".into(),
                detail: format!("{k:?} is not one base64 key line"),
            });
        }
        TrustedKeys::parse(k, "the release keys")?;
    }
    let minisig = text_block(
        &r.minisig,
        "tarball signature (.minisig)",
        MAX_SIG_BYTES as usize,
    )?;
    if !minisig.starts_with("untrusted comment:") {
        return Err(Error::usage(
            "the tarball signature is not a minisign .minisig",
            "resolve the release again",
        ));
    }
    match (&p.mode, &p.run_as) {
        (Mode::User, None) => {
            return Err(Error::usage(
                "user mode needs --run-as USER (the user whose service it is)",
                "pass --run-as USER, or use --mode system",
            ))
        }
        (_, Some(u)) => check_user(u)?,
        _ => {}
    }
    let ca = match &p.ca_pem {
        Some(pem) => {
            let pem = text_block(pem, "CA file", 24 * 1024)?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(Error::usage(
                    "the CA file holds no PEM certificate",
                    "pass a PEM file with one or more CERTIFICATE blocks",
                ));
            }
            Some(pem)
        }
        None => None,
    };
    let rel = release_at(&p.release_url, r)?;
    Ok((hub, rel, minisig, ca))
}

/// `'…'` for POSIX sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Indent every non-empty line by `n` spaces (a YAML literal block's content).
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One pass over `template`: each `@NAME@` of `vars` becomes its value (values are never
/// scanned again, so a value cannot pull in another one).
fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let hit = vars
            .iter()
            .find(|(name, _)| after.starts_with(name) && after[name.len()..].starts_with('@'));
        match hit {
            Some((name, value)) => {
                out.push_str(value);
                rest = &after[name.len() + 1..];
            }
            None => {
                out.push('@');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Replace the line `NAME=""` (present exactly once) with `NAME='value'`.
fn set_var(script: &str, name: &str, value: &str) -> String {
    let line = format!("\n{name}=\"\"\n");
    debug_assert_eq!(script.matches(&line).count(), 1, "{name} in bootstrap.sh");
    script.replacen(&line, &format!("\n{name}={}\n", sh_quote(value)), 1)
}

/// The bootstrap script with its variables filled in.
pub fn render_bootstrap(p: &Params) -> Result<String> {
    let (hub, rel, _, ca) = validate(p)?;
    Ok(bootstrap(p, &hub, &rel, ca.is_some()))
}

fn minisig_path(r: &Pinned) -> String {
    format!(
        "{HOST_DIR}/outpost-{}-{}.tar.gz.minisig",
        r.version, r.target
    )
}

fn secrets_file(mode: Mode) -> &'static str {
    match mode {
        Mode::System => SECRETS_FILE_SYSTEM,
        Mode::User => SECRETS_FILE_USER,
    }
}

fn bootstrap(p: &Params, hub: &str, rel: &ReleaseAt, with_ca: bool) -> String {
    let r = &p.release;
    let mut s = BOOTSTRAP_TEMPLATE.to_string();
    for (name, value) in [
        ("HUB_URL", hub.to_string()),
        ("RELEASE_URL", rel.source.clone()),
        ("TARBALL_URL", rel.tarball_url.clone()),
        ("GITHUB_URL", rel.github_url.clone().unwrap_or_default()),
        ("VERSION", r.version.to_string()),
        ("TARGET", r.target.clone()),
        ("SHA256", r.sha256.clone()),
        ("PUBKEYS", r.pubkeys.join("\n")),
        ("MODE", p.mode.to_string()),
        ("RUN_AS", p.run_as.clone().unwrap_or_default()),
        (
            "CA_FILE",
            if with_ca {
                CA_FILE.to_string()
            } else {
                String::new()
            },
        ),
        ("SECRETS_FILE", secrets_file(p.mode).to_string()),
        ("MINISIG_FILE", minisig_path(r)),
    ] {
        s = set_var(&s, name, &value);
    }
    s
}

/// The `#cloud-config` user-data. Fails on invalid input and when the result would exceed
/// [`MAX_USER_DATA_BYTES`].
pub fn render(p: &Params) -> Result<String> {
    let (hub, rel, minisig, ca) = validate(p)?;
    let r = &p.release;
    let ca_entry = match &ca {
        Some(pem) => fill(
            CA_ENTRY_TEMPLATE,
            &[("CA_FILE", CA_FILE.to_string()), ("CA_PEM", indent(pem, 6))],
        ),
        None => String::new(),
    };
    let out = fill(
        USER_DATA_TEMPLATE,
        &[
            ("VERSION", r.version.to_string()),
            ("TARGET", r.target.clone()),
            ("HUB_URL", hub.clone()),
            ("MODE", p.mode.to_string()),
            ("SECRETS_FILE", secrets_file(p.mode).to_string()),
            ("MINISIG_FILE", minisig_path(r)),
            ("CA_ENTRY", ca_entry),
            ("MINISIG", indent(&minisig, 6)),
            (
                "BOOTSTRAP",
                indent(&bootstrap(p, &hub, &rel, ca.is_some()), 6),
            ),
            ("ENROLL_KEY", p.enroll_key.clone()),
        ],
    );
    if out.len() > MAX_USER_DATA_BYTES {
        return Err(Error::usage(
            format!(
                "the user-data is {} bytes, more than the {MAX_USER_DATA_BYTES} bytes cloud providers accept",
                out.len()
            ),
            "use a smaller --ca-file (only the CA that signs the hub and release host)",
        ));
    }
    Ok(out)
}

/// Pin `want` (a version or a channel) for `target` from the signed release at `release`
/// (an http(s) URL; a directory or `file://` URL works too, for tests and air gaps):
/// the manifest's signature is checked with `keys` (no replay state: this machine is not the
/// host), the tarball is downloaded and checked (size, sha256, signature) as an install would,
/// and its sha256 and `.minisig` are returned with the keys to embed.
pub fn resolve(
    release: &str,
    keys: &TrustedKeys,
    ca_file: Option<&Path>,
    want: &Want,
    target: &str,
) -> Result<Pinned> {
    if !TARGETS.contains(&target) {
        return Err(Error::usage(
            format!("unknown target {target:?}"),
            format!("use one of {}", TARGETS.join(", ")),
        ));
    }
    let source = Source::parse(release)?.with_ca_file(ca_file.map(Path::to_path_buf));
    let dir = outpost_release::fsx::private_temp_dir("cloud-init")?;
    let v = fetch_release(
        &source,
        keys,
        &outpost_release::verify::ReplayState::none(),
        want,
        target,
        dir.path(),
    )?;
    Ok(Pinned {
        version: v.version,
        target: target.to_string(),
        sha256: v.sha256,
        minisig: v.minisig,
        pubkeys: keys.base64_keys(),
    })
}

/// The trusted keys for [`resolve`]: the compiled-in ones plus `extra` (key lines or `.pub`
/// file contents, e.g. from `--release-pubkey` or `OUTPOST_RELEASE_PUBKEYS`).
pub fn trusted_keys(extra: &[String]) -> Result<TrustedKeys> {
    let mut keys = TrustedKeys::builtin();
    for (i, k) in extra.iter().enumerate() {
        keys.add_text(k, &format!("release key #{}", i + 1))?;
    }
    Ok(keys)
}

/// What `outpost cloud-init render` and `outpost-hub keys create --cloud-init` are asked for.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub hub_url: &'a str,
    /// The key, when it is known before the release is pinned (the CLI); the hub mints it
    /// afterwards, so nothing is wasted when the release cannot be pinned.
    pub enroll_key: Option<&'a str>,
    /// Release root (default: the hub, which serves its releases).
    pub release_url: Option<&'a str>,
    /// Extra trusted keys (base64 lines) besides the compiled-in ones; blanks are ignored.
    pub release_pubkeys: &'a [String],
    pub want: Want,
    pub target: &'a str,
    pub mode: Mode,
    pub run_as: Option<&'a str>,
    pub ca_file: Option<&'a Path>,
}

/// The one preparation of user-data, shared by the CLI and the hub: check the input without
/// a download (a render with a placeholder release), then pin the release ([`resolve`]).
/// Returns the parameters to [`render`], their `enroll_key` empty when the request had none.
pub fn prepare(req: &Request<'_>) -> Result<Params> {
    let extra: Vec<String> = req
        .release_pubkeys
        .iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    let keys = trusted_keys(&extra)?;
    if keys.is_empty() {
        return Err(Error::usage(
            "no trusted release key: nothing to verify the release against",
            "pass the release's minisign public key with --release-pubkey (or OUTPOST_RELEASE_PUBKEYS)",
        ));
    }
    let ca_pem = match req.ca_file {
        Some(p) => Some(fs_err::read_to_string(p).map_err(|e| Error::io("read", p, e))?),
        None => None,
    };
    let release_url = req.release_url.unwrap_or(req.hub_url).to_string();
    let mut params = Params {
        hub_url: req.hub_url.to_string(),
        enroll_key: req
            .enroll_key
            .map(|k| k.trim().to_string())
            .unwrap_or_else(|| "opk_placeholder".into()),
        release_url: release_url.clone(),
        release: Pinned::placeholder(req.target, keys.base64_keys()),
        mode: req.mode,
        run_as: req.run_as.map(str::to_string),
        ca_pem,
    };
    // Cheap checks first: no download for input that cannot render.
    render_bootstrap(&params)?;
    params.release = resolve(&release_url, &keys, req.ca_file, &req.want, req.target)?;
    if req.enroll_key.is_none() {
        params.enroll_key = String::new();
    }
    Ok(params)
}

#[cfg(test)]
mod tests;
