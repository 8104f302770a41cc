//! The one error type of the release pipeline: a lowercase one-line message naming the
//! path or URL involved, and a [`Error::hint`] saying what to do about it.
use outpost_core::exit;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a local path.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A download failed (connection, TLS, HTTP status).
    #[error("cannot download {url}: {detail}")]
    Http { url: String, detail: String },
    /// A file the release should have is not there.
    #[error("{location} not found")]
    NotFound { location: String },
    /// More bytes than allowed (declared size or hard cap).
    #[error("{location} is larger than {limit} bytes")]
    TooLarge { location: String, limit: u64 },
    /// Fewer or more bytes than the manifest declares.
    #[error("{location} is {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        location: String,
        expected: u64,
        actual: u64,
    },
    /// manifest.json does not parse or breaks the format's rules.
    #[error("invalid release manifest {location}: {detail}")]
    Manifest { location: String, detail: String },
    /// The requested version or channel is not in the manifest.
    #[error("release {wanted} not found in {location}")]
    NoSuchRelease { wanted: String, location: String },
    /// The release has no build for this target.
    #[error("release {version} has no build for {target}")]
    NoArtifact { version: String, target: String },
    /// No public key to check signatures with: everything is refused.
    #[error("no trusted release public key: refusing to accept {location}")]
    NoTrustedKeys { location: String },
    /// A public key that does not parse.
    #[error("invalid minisign public key in {origin}: {detail}")]
    BadKey { origin: String, detail: String },
    /// A signature made by a key not in the trusted set.
    #[error("{location} is signed by key {key_id}, which is not trusted")]
    UnknownKey { location: String, key_id: String },
    /// A signature that does not verify (tampered file or signature, or malformed).
    #[error("signature check failed for {location}: {detail}")]
    BadSignature { location: String, detail: String },
    /// The manifest is older than one already seen: a replay or rollback.
    #[error("release manifest {location} has timestamp {got}, older than {seen} already seen: refusing a replayed or rolled-back release")]
    Replay {
        location: String,
        seen: u64,
        got: u64,
    },
    /// A version resolved from a channel file that the signed manifest does not name as
    /// that channel's head: a stale or forged channel file (a downgrade).
    #[error("channel {channel} of the signed manifest {location} is {}, not {version}: refusing a stale or forged channel file (a downgrade)", head.as_deref().unwrap_or("not set"))]
    ChannelMismatch {
        channel: String,
        location: String,
        head: Option<String>,
        version: String,
    },
    /// A sha256 that does not match.
    #[error("sha256 mismatch for {location}: expected {expected}, got {actual}")]
    ShaMismatch {
        location: String,
        expected: String,
        actual: String,
    },
    /// A tarball entry that is refused (unsafe path, type, or size).
    #[error("refusing archive {}: entry {entry:?} {why}", archive.display())]
    UnsafeEntry {
        archive: PathBuf,
        entry: String,
        why: String,
    },
    /// A tarball or bundle that cannot be read (truncated, corrupt, too many entries).
    #[error("invalid archive {}: {detail}", archive.display())]
    Archive { archive: PathBuf, detail: String },
    /// A signed pack release whose unpacked tree is not a valid pack, or not the one signed.
    #[error("invalid pack release {location}: {detail}")]
    InvalidPack { location: String, detail: String },
    /// A release source string that is neither a URL nor a path.
    #[error("invalid release source {source_text:?}: {detail}")]
    Source { source_text: String, detail: String },
    /// Bad input to a packaging tool (flags, files in the wrong place).
    #[error("{message}")]
    Usage { message: String, hint: String },
}

impl Error {
    pub fn io(what: &'static str, path: &Path, source: std::io::Error) -> Error {
        // fs-err errors read "failed to open file `PATH`: CAUSE"; keep CAUSE so the path
        // is said once.
        let text = source.to_string();
        let source = match text.rsplit_once("`: ") {
            Some((_, cause)) if text.contains(&path.display().to_string()) => {
                std::io::Error::new(source.kind(), cause.to_string())
            }
            _ => source,
        };
        Error::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn usage(message: impl Into<String>, hint: impl Into<String>) -> Error {
        Error::Usage {
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// The exit code of a command that fails with this error: bad input (a malformed
    /// source, key or value; nothing was changed) is [`exit::USAGE`], the rest
    /// [`exit::FAILURE`]. The one place a release error gets its code: the CLI and the hub
    /// both ask here.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage { .. } | Error::BadKey { .. } | Error::Source { .. } => exit::USAGE,
            _ => exit::FAILURE,
        }
    }

    /// What the operator should do about it, one line.
    pub fn hint(&self) -> String {
        match self {
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    "run as a user that may write there (sudo for a system install)".into()
                }
                _ => "check the path and free disk space, then try again".into(),
            },
            Error::Http { .. } => "check the release URL, the network and any HTTPS_PROXY/NO_PROXY settings (and ca_file for a private CA), then try again".into(),
            Error::NotFound { .. } => "check the release URL or path: it must be the release root that holds manifest.json (for a pack release: the site's packs/NAME)".into(),
            Error::TooLarge { .. } | Error::SizeMismatch { .. } | Error::ShaMismatch { .. } => {
                "the download is damaged or was tampered with: nothing was installed; try again or use another mirror".into()
            }
            Error::Manifest { .. } => "the release host serves a broken manifest.json; republish it with `outpost-release publish`".into(),
            Error::NoSuchRelease { .. } => "list the published versions in manifest.json, or use a channel (stable, beta)".into(),
            Error::NoArtifact { .. } => "pick a version that was built for this machine's architecture".into(),
            Error::NoTrustedKeys { .. } => "add the release public key (`public_keys` in the `[release]` config section), or use a binary built with the key compiled in".into(),
            Error::BadKey { .. } => "a key is the base64 line of a minisign .pub file (RWQ...), or the whole file".into(),
            Error::UnknownKey { .. } => "if the release key was rotated, add the new public key to the trusted keys; otherwise the release is not genuine".into(),
            Error::BadSignature { .. } => "the file or its .minisig was altered or is damaged: nothing was installed; do not use this release".into(),
            Error::ChannelMismatch { channel, head, .. } => match head {
                Some(h) => format!("nothing was installed: the release host or a mirror serves a stale or forged channel file for {channel}; run the release host's current install.sh again, or pin a version on purpose with OUTPOST_VERSION={h}"),
                None => format!("nothing was installed: the signed manifest has no channel {channel}; pin a version with OUTPOST_VERSION, or use another channel"),
            },
            Error::Replay { .. } => "the release host serves an older manifest than one already seen (mirror lagging, or an attack); wait for it to catch up or use another mirror".into(),
            Error::UnsafeEntry { .. } => "the tarball is not a genuine outpost release: nothing was installed".into(),
            Error::Archive { .. } => "the file is damaged or truncated: download it again".into(),
            Error::InvalidPack { .. } => "the pack release is not genuine or was built wrong: nothing was installed; rebuild it with `outpost-release pack build`".into(),
            Error::Source { .. } => "give an https:// URL, a file:// URL, a release directory, or an offline bundle file".into(),
            Error::Usage { hint, .. } => hint.clone(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl outpost_core::Hint for Error {
    fn hint(&self) -> String {
        Error::hint(self)
    }
    fn exit_code(&self) -> i32 {
        Error::exit_code(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_lowercase_line_with_a_hint() {
        let cases: Vec<Error> = vec![
            Error::io("read", Path::new("/x/y"), std::io::Error::other("boom")),
            Error::Http {
                url: "https://h/m".into(),
                detail: "timeout".into(),
            },
            Error::NotFound {
                location: "https://h/manifest.json".into(),
            },
            Error::Replay {
                location: "https://h/manifest.json".into(),
                seen: 5,
                got: 4,
            },
            Error::NoTrustedKeys {
                location: "manifest.json".into(),
            },
            Error::ChannelMismatch {
                channel: "stable".into(),
                location: "https://h/manifest.json".into(),
                head: Some("1.1.0".into()),
                version: "1.0.0".into(),
            },
            Error::ChannelMismatch {
                channel: "beta".into(),
                location: "https://h/manifest.json".into(),
                head: None,
                version: "1.0.0".into(),
            },
            Error::InvalidPack {
                location: "https://h/packs/p/v1.0.0/p-1.0.0.tar.gz".into(),
                detail: "its pack.toml is q 1.0.0".into(),
            },
            Error::UnsafeEntry {
                archive: "/t.tar.gz".into(),
                entry: "../x".into(),
                why: "escapes".into(),
            },
        ];
        for e in cases {
            let m = e.to_string();
            assert!(!m.contains('\n'), "{m}");
            assert!(m.chars().next().is_some_and(|c| !c.is_uppercase()), "{m}");
            assert!(!e.hint().is_empty());
        }
    }

    #[test]
    fn io_error_names_path_once() {
        let e = fs_err::read("/nonexistent/outpost-x").unwrap_err();
        let m = Error::io("read", Path::new("/nonexistent/outpost-x"), e).to_string();
        assert_eq!(m.matches("/nonexistent/outpost-x").count(), 1, "{m}");
    }
}
