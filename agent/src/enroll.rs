//! Enrollment: trade the single-use key for an agent identity, once.
//!
//! When the config has `[hub] url` and the state directory has no `identity.json`, the agent
//! reads `OUTPOST_ENROLL_KEY` from its environment (systemd loads it from the 0600 secrets
//! file), enrolls with its facts, stores `{agent_id, token, hub_url, enrolled_at}` as
//! `identity.json` (mode 0600, owned by the service user), journals `enrolled`, then removes
//! the key line from the secrets file (`OUTPOST_ENV_FILE`) with an atomic rewrite that keeps
//! every other line and the file's mode and owner. A secrets file the service cannot write
//! (ProtectSystem=, root-owned) is a warning, not a failure: the key is used up anyway.
//!
//! Enrollment is idempotent: before the first attempt the agent stores a random nonce
//! (`enroll-nonce`, 32 bytes from the kernel, hex, mode 0600) in the state directory and
//! sends it with every attempt; when a 201 is lost on the way and the agent retries, the hub
//! recognises the same key + nonce and answers with the same agent id (and a fresh token).
//! The nonce is deleted once `identity.json` is saved.
//!
//! A refused key (401 `key_unknown`/`key_expired`/`key_used`) is journaled as
//! `enroll_refused`; the run loop then exits with [`outpost_core::exit::FAILURE`]. Decision: FAILURE
//! rather than REVOKED because the operator's fix is to put a new key in the secrets file,
//! and systemd's `Restart=on-failure` picks it up on the next start by itself; the unit's
//! StartLimitBurst= stops the retries if nobody does. A key is never logged or journaled.
use crate::hub::{EnrollFacts, HubClient, HubError};
use outpost_core::journal::{kind, Journal};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use outpost_core::layout::files::IDENTITY as IDENTITY_FILE;
/// Largest identity file read (a real one is a few hundred bytes).
pub const MAX_IDENTITY_BYTES: u64 = 64 << 10;
/// The enrollment nonce, kept from before the first attempt until the identity is saved.
pub use outpost_core::layout::files::ENROLL_NONCE as NONCE_FILE;

/// The agent's credentials. `Debug` hides the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub agent_id: String,
    pub token: String,
    pub hub_url: String,
    pub enrolled_at: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("agent_id", &self.agent_id)
            .field("token", &"<redacted>")
            .field("hub_url", &self.hub_url)
            .field("enrolled_at", &self.enrolled_at)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("cannot {op} identity file {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("identity file {path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("no enrollment key: {} is not set", outpost_core::env::ENROLL_KEY)]
    NoKey,
    #[error("cannot {op} enrollment nonce {path}: {source}")]
    Nonce {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl EnrollError {
    pub fn hint(&self) -> String {
        match self {
            EnrollError::Hub(e) => e.hint(),
            EnrollError::Io { path, .. } | EnrollError::Nonce { path, .. } => format!(
                "the state directory {} must be writable by the service user; re-run `outpost install`",
                crate::fsx::parent(path).display()
            ),
            EnrollError::Invalid { path, .. } => format!(
                "move {} aside and enroll again with a new key (the old agent id is lost)",
                path.display()
            ),
            EnrollError::NoKey => format!(
                "create a key on the hub, add `{}=<key>` to the secrets file (outpost.env) and \
                 restart the service, or re-run `outpost install --hub URL` with the key",
                outpost_core::env::ENROLL_KEY
            ),
        }
    }
}

pub fn identity_path(state_dir: &Path) -> PathBuf {
    state_dir.join(IDENTITY_FILE)
}

/// The stored identity, `None` when not enrolled yet.
pub fn load_identity(state_dir: &Path) -> Result<Option<Identity>, EnrollError> {
    let path = identity_path(state_dir);
    // Root reads this file too (status, diagnostics): never through a link, bounded.
    let text = match outpost_core::trust::read_untrusted(&path, None, MAX_IDENTITY_BYTES) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(None),
        Err(outpost_core::trust::TrustError::Io { source: e, .. }) => {
            return Err(EnrollError::Io {
                op: "read",
                path,
                source: std::io::Error::new(e.kind(), e.kind().to_string()),
            })
        }
        Err(e) => {
            return Err(EnrollError::Invalid {
                reason: e.to_string(),
                path,
            })
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| EnrollError::Invalid {
            path,
            // serde's message could quote a value; keep only its position.
            reason: format!(
                "not the expected JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        })
}

/// Store `id` atomically, mode 0600, owned by the current (service) user.
pub fn save_identity(state_dir: &Path, id: &Identity) -> Result<(), EnrollError> {
    let path = identity_path(state_dir);
    let mut text = serde_json::to_string_pretty(id).map_err(|e| EnrollError::Invalid {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    text.push('\n');
    crate::fsx::write_atomic(&path, text.as_bytes(), 0o600).map_err(|source| EnrollError::Io {
        op: "write",
        path,
        source,
    })
}

pub fn nonce_path(state_dir: &Path) -> PathBuf {
    state_dir.join(NONCE_FILE)
}

/// The enrollment nonce: the stored one, or a new one (32 random bytes from the kernel, as
/// 64 hex) written atomically with mode 0600 before it is first sent. The stored file is
/// read like every file the agent wrote ([`outpost_core::trust::read_untrusted`]: no symlink, a
/// regular file of this user, bounded); one that is not that, or not 64 hex, is replaced
/// (the atomic rename replaces a symlink, it never writes through it).
pub fn load_or_create_nonce(state_dir: &Path) -> Result<String, EnrollError> {
    let path = nonce_path(state_dir);
    let err = |op, source| EnrollError::Nonce {
        op,
        path: path.clone(),
        source,
    };
    let me = rustix::process::getuid().as_raw();
    match outpost_core::trust::read_untrusted(&path, Some(me), 256) {
        Ok(Some(bytes)) => {
            let t = String::from_utf8_lossy(&bytes);
            let t = t.trim();
            if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(t.to_string());
            }
        }
        Ok(None)
        | Err(outpost_core::trust::TrustError::Unsafe { .. })
        | Err(outpost_core::trust::TrustError::TooLarge { .. }) => {}
        Err(outpost_core::trust::TrustError::Io { source, .. }) => {
            return Err(err(
                "read",
                std::io::Error::new(source.kind(), source.kind().to_string()),
            ))
        }
    }
    let mut raw = [0u8; 32];
    {
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut raw))
            .map_err(|e| err("generate", e))?;
    }
    let nonce = hex::encode(raw);
    crate::fsx::write_atomic(&path, format!("{nonce}\n").as_bytes(), 0o600)
        .map_err(|e| err("write", e))?;
    Ok(nonce)
}

/// Deletes the enrollment nonce (after the identity is saved). A failure is a warning: a
/// leftover nonce only matters to a retry of the same key, which the hub refuses once the
/// agent has heartbeated.
pub fn remove_nonce(state_dir: &Path) {
    let path = nonce_path(state_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => crate::log::warn(
            &format!("cannot remove the enrollment nonce {}: {e}", path.display()),
            "delete it by hand; it is of no use after enrollment",
        ),
    }
}

/// The key from the process environment (empty counts as absent).
pub fn key_from_env() -> Option<String> {
    std::env::var(outpost_core::env::ENROLL_KEY)
        .ok()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
}

/// The secrets file from `OUTPOST_ENV_FILE`.
pub fn env_file_from_env() -> Option<PathBuf> {
    std::env::var_os(outpost_core::env::ENV_FILE)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

pub struct EnrollRequest<'a> {
    pub hub: &'a HubClient,
    pub key: &'a str,
    pub facts: EnrollFacts,
    pub state_dir: &'a Path,
    pub journal: &'a Journal,
    /// The secrets file to remove the key from afterwards.
    pub env_file: Option<&'a Path>,
}

pub struct Enrollment {
    pub identity: Identity,
    pub heartbeat_interval_secs: Option<u64>,
    /// A warning (message, hint) when the key could not be scrubbed from the secrets file.
    pub scrub_warning: Option<(String, String)>,
}

/// Enroll, store the identity, journal it and scrub the key. See the module docs.
pub fn enroll(req: EnrollRequest<'_>) -> Result<Enrollment, EnrollError> {
    // Persisted before the first attempt: a retry after a lost answer sends the same one.
    let nonce = load_or_create_nonce(req.state_dir)?;
    let (resp, _meta) = match req.hub.enroll(req.key, Some(&nonce), &req.facts) {
        Ok(r) => r,
        Err(e @ HubError::KeyRefused { .. }) => {
            let data = serde_json::json!({
                "hub_url": req.hub.base_url(),
                "code": e.code(),
            });
            if let Err(je) = req.journal.append(kind::ENROLL_REFUSED, data) {
                crate::log::warn(&je.to_string(), &je.hint());
            }
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let identity = Identity {
        agent_id: resp.agent_id,
        token: resp.token,
        hub_url: req.hub.base_url().to_string(),
        enrolled_at: outpost_core::time::now_rfc3339(),
    };
    save_identity(req.state_dir, &identity)?;
    remove_nonce(req.state_dir);
    let data = serde_json::json!({"agent_id": identity.agent_id, "hub_url": identity.hub_url});
    if let Err(je) = req.journal.append(kind::ENROLLED, data) {
        crate::log::warn(&je.to_string(), &je.hint());
    }
    let scrub_warning = match req.env_file {
        None => Some((
            format!(
                "enrolled, but {} is not set, so the used key stays in the secrets file",
                outpost_core::env::ENV_FILE
            ),
            format!(
                "remove the {} line from outpost.env by hand",
                outpost_core::env::ENROLL_KEY
            ),
        )),
        Some(p) => match scrub_env_key(p, outpost_core::env::ENROLL_KEY) {
            Ok(_) => None,
            Err(e) => Some((e.to_string(), e.hint())),
        },
    };
    Ok(Enrollment {
        identity,
        heartbeat_interval_secs: resp.heartbeat_interval_secs,
        scrub_warning,
    })
}

pub use outpost_core::kv::{scrub_env_key, ScrubError};

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn nonce_is_random_0600_kept_until_removed() {
        let d = tempfile::tempdir().unwrap();
        let a = load_or_create_nonce(d.path()).unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        let m = std::fs::metadata(nonce_path(d.path())).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(load_or_create_nonce(d.path()).unwrap(), a, "reused");
        remove_nonce(d.path());
        assert!(!nonce_path(d.path()).exists());
        remove_nonce(d.path());
        let b = load_or_create_nonce(d.path()).unwrap();
        assert_ne!(a, b, "a new one after removal");
        std::fs::write(nonce_path(d.path()), "garbage").unwrap();
        let c = load_or_create_nonce(d.path()).unwrap();
        assert_eq!(c.len(), 64);
        assert_ne!(c, b);
        // A planted symlink is neither followed nor written through.
        let target = d.path().join("elsewhere");
        std::fs::write(&target, "f".repeat(64)).unwrap();
        std::fs::remove_file(nonce_path(d.path())).unwrap();
        std::os::unix::fs::symlink(&target, nonce_path(d.path())).unwrap();
        let e = load_or_create_nonce(d.path()).unwrap();
        assert_ne!(e, "f".repeat(64));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "f".repeat(64));
        assert!(!std::fs::symlink_metadata(nonce_path(d.path()))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn identity_roundtrip_is_0600_and_debug_hides_token() {
        let d = tempfile::tempdir().unwrap();
        assert!(load_identity(d.path()).unwrap().is_none());
        let id = Identity {
            agent_id: "a_1".into(),
            token: "secret-token-xyz".into(),
            hub_url: "https://h".into(),
            enrolled_at: "2024-01-01T00:00:00Z".into(),
        };
        save_identity(d.path(), &id).unwrap();
        let m = std::fs::metadata(identity_path(d.path())).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(load_identity(d.path()).unwrap(), Some(id.clone()));
        assert!(!format!("{id:?}").contains("secret-token-xyz"));
        std::fs::write(identity_path(d.path()), "{\"token\": \"secret-token-xyz\"").unwrap();
        let e = load_identity(d.path()).unwrap_err();
        assert!(!e.to_string().contains("secret-token-xyz"), "{e}");
    }
}
