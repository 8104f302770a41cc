//! minisign signature checks against a set of trusted public keys, and the replay guard.
//!
//! Verification only (`minisign-verify`, no scrypt, no signer): this is what the agent links.
use crate::error::{Error, Result};
use crate::fsx;
use std::io::Read;
use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/builtin_keys.rs"));

/// Largest `.minisig` accepted (a real one is ~300 bytes).
pub const MAX_SIG_BYTES: u64 = 8 << 10;

/// The set of public keys a release may be signed with. Several keys are normal (rotation:
/// the old and the next key are both trusted for a while). Empty refuses everything.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, minisign_verify::PublicKey)>,
}

/// minisign's key id display: the 8 id bytes as a little-endian u64 in uppercase hex.
fn key_id_hex(id: &[u8]) -> String {
    id.iter().rev().map(|b| format!("{b:02X}")).collect()
}

impl TrustedKeys {
    /// No keys: every verification fails closed.
    pub fn empty() -> TrustedKeys {
        TrustedKeys::default()
    }

    /// The keys compiled in at build time (`packaging/keys/*.pub`, `OUTPOST_RELEASE_PUBKEYS`).
    pub fn builtin() -> TrustedKeys {
        let mut k = TrustedKeys::empty();
        for b64 in BUILTIN_KEYS {
            // Invariant: build.rs accepted only lines that decode to a 42-byte "Ed" key.
            k.add_text(b64, "compiled-in keys")
                .expect("build.rs validated the compiled-in keys");
        }
        k
    }

    /// Parse key text: the contents of minisign `.pub` files (comment + base64 lines) or
    /// bare base64 lines, several separated by newlines.
    pub fn parse(text: &str, origin: &str) -> Result<TrustedKeys> {
        let mut k = TrustedKeys::empty();
        k.add_text(text, origin)?;
        Ok(k)
    }

    /// Add the keys in `text` (see [`TrustedKeys::parse`]); `origin` names it in errors.
    pub fn add_text(&mut self, text: &str, origin: &str) -> Result<()> {
        let mut found = 0;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with("untrusted comment:") || line.starts_with('#') {
                continue;
            }
            let pk = minisign_verify::PublicKey::from_base64(line).map_err(|e| Error::BadKey {
                origin: origin.to_string(),
                detail: format!("{line:?}: {}", e.to_string().to_lowercase()),
            })?;
            found += 1;
            if !self.keys.iter().any(|(b, _)| b == line) {
                self.keys.push((line.to_string(), pk));
            }
        }
        if found == 0 {
            return Err(Error::BadKey {
                origin: origin.to_string(),
                detail: "no key found".into(),
            });
        }
        Ok(())
    }

    /// Add the keys of a minisign `.pub` file.
    pub fn add_file(&mut self, path: &Path) -> Result<()> {
        let text = fs_err::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        self.add_text(&text, &path.display().to_string())
    }

    /// Add every key of `other`.
    pub fn extend(&mut self, other: &TrustedKeys) {
        for (b, k) in &other.keys {
            if !self.keys.iter().any(|(x, _)| x == b) {
                self.keys.push((b.clone(), k.clone()));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The base64 key lines, as in a `.pub` file's second line.
    pub fn base64_keys(&self) -> Vec<String> {
        self.keys.iter().map(|(b, _)| b.clone()).collect()
    }

    /// The key ids, as `minisign` prints them.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys
            .iter()
            .filter_map(|(b, _)| crate::b64::decode(b).map(|v| key_id_hex(&v[2..10])))
            .collect()
    }

    /// The trusted key whose id matches the signature's, if any.
    fn key_for(
        &self,
        sig_text: &str,
        location: &str,
    ) -> Result<(minisign_verify::Signature, &minisign_verify::PublicKey)> {
        if self.is_empty() {
            return Err(Error::NoTrustedKeys {
                location: location.to_string(),
            });
        }
        let bad = |detail: String| Error::BadSignature {
            location: location.to_string(),
            detail,
        };
        let sig = minisign_verify::Signature::decode(sig_text).map_err(|e| {
            bad(format!(
                "malformed .minisig: {}",
                e.to_string().to_lowercase()
            ))
        })?;
        let sig_id = sig_text
            .lines()
            .nth(1)
            .and_then(crate::b64::decode)
            .filter(|b| b.len() == 74)
            .map(|b| b[2..10].to_vec())
            .ok_or_else(|| bad("malformed .minisig".into()))?;
        for (b, pk) in &self.keys {
            let id = crate::b64::decode(b).map(|v| v[2..10].to_vec());
            if id.as_deref() == Some(&sig_id[..]) {
                return Ok((sig, pk));
            }
        }
        Err(Error::UnknownKey {
            location: location.to_string(),
            key_id: key_id_hex(&sig_id),
        })
    }

    /// Verify the detached signature `sig_text` (a `.minisig`) over `data`; returns the
    /// signature's trusted comment. Accepts prehashed ("ED") and legacy ("Ed") signatures.
    pub fn verify(&self, data: &[u8], sig_text: &str, location: &str) -> Result<String> {
        let (sig, pk) = self.key_for(sig_text, location)?;
        pk.verify(data, &sig, true)
            .map_err(|e| Error::BadSignature {
                location: location.to_string(),
                detail: e.to_string().to_lowercase(),
            })?;
        Ok(sig.trusted_comment().to_string())
    }

    /// Verify `path` against the signature file `sig_path`, streaming prehashed signatures so
    /// a large tarball is never read into memory. Returns the trusted comment.
    pub fn verify_file(&self, path: &Path, sig_path: &Path) -> Result<String> {
        let location = path.display().to_string();
        let sig_text = read_small(sig_path, MAX_SIG_BYTES)?;
        let (sig, pk) = self.key_for(&sig_text, &location)?;
        let bad = |e: minisign_verify::Error| Error::BadSignature {
            location: location.clone(),
            detail: e.to_string().to_lowercase(),
        };
        let mut f = fs_err::File::open(path).map_err(|e| Error::io("open", path, e))?;
        match pk.verify_stream(&sig) {
            Ok(mut v) => {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = f.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
                    if n == 0 {
                        break;
                    }
                    v.update(&buf[..n]);
                }
                v.finalize().map_err(bad)?;
            }
            Err(minisign_verify::Error::UnsupportedLegacyMode) => {
                let mut data = Vec::new();
                f.take(crate::fetch::MAX_TARBALL_BYTES)
                    .read_to_end(&mut data)
                    .map_err(|e| Error::io("read", path, e))?;
                pk.verify(&data, &sig, true).map_err(bad)?;
            }
            Err(e) => return Err(bad(e)),
        }
        Ok(sig.trusted_comment().to_string())
    }
}

/// Read a small text file, refusing more than `limit` bytes.
pub(crate) fn read_small(path: &Path, limit: u64) -> Result<String> {
    let f = fs_err::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut s = String::new();
    f.take(limit + 1)
        .read_to_string(&mut s)
        .map_err(|e| Error::io("read", path, e))?;
    if s.len() as u64 > limit {
        return Err(Error::TooLarge {
            location: path.display().to_string(),
            limit,
        });
    }
    Ok(s)
}

/// The fields of a trusted comment: `timestamp:<unix> file:<name>` (space or tab separated,
/// as minisign writes `timestamp:…\tfile:…\thashed`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustedComment {
    pub timestamp: Option<u64>,
    pub file: Option<String>,
}

impl TrustedComment {
    pub fn parse(s: &str) -> TrustedComment {
        let mut tc = TrustedComment::default();
        for field in s.split([' ', '\t']) {
            if let Some(t) = field.strip_prefix("timestamp:") {
                tc.timestamp = t.parse().ok();
            } else if let Some(f) = field.strip_prefix("file:") {
                tc.file = Some(f.to_string());
            }
        }
        tc
    }

    /// The trusted comment a manifest signature carries.
    pub fn for_manifest(timestamp: u64) -> String {
        format!("timestamp:{timestamp} file:{}", crate::MANIFEST)
    }
}

/// Remembers the newest manifest timestamp seen, in a small state file, and refuses older
/// ones (a replayed or rolled-back release). A missing file means nothing seen yet.
#[derive(Debug, Clone)]
pub struct ReplayState {
    path: Option<PathBuf>,
    /// Check against the state but never write it (`--dry-run`).
    read_only: bool,
}

impl ReplayState {
    /// State kept in `path` (created on first use; its directory must exist).
    pub fn at(path: impl Into<PathBuf>) -> ReplayState {
        ReplayState {
            path: Some(path.into()),
            read_only: false,
        }
    }

    /// Like [`ReplayState::at`], but only checks: a newer timestamp is not recorded (for
    /// dry runs, which must change nothing).
    pub fn checking(path: impl Into<PathBuf>) -> ReplayState {
        ReplayState {
            path: Some(path.into()),
            read_only: true,
        }
    }

    /// No memory: nothing refused on age. For one-shot tools (`outpost-release verify`).
    pub fn none() -> ReplayState {
        ReplayState {
            path: None,
            read_only: false,
        }
    }

    /// The newest timestamp seen (0 if none).
    pub fn seen(&self) -> Result<u64> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        match fs_err::read_to_string(path) {
            Ok(s) => s.trim().parse().map_err(|_| {
                Error::usage(
                    format!("replay state {} is corrupt: {:?}", path.display(), s.trim()),
                    format!(
                        "remove {} to accept the next signed manifest as the newest",
                        path.display()
                    ),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    /// Refuse `got` if older than the newest seen; otherwise remember it. An equal timestamp
    /// (the same manifest again) is accepted.
    pub fn check_and_record(&self, got: u64, location: &str) -> Result<()> {
        let seen = self.seen()?;
        if got < seen {
            return Err(Error::Replay {
                location: location.to_string(),
                seen,
                got,
            });
        }
        if let (Some(path), true, false) = (&self.path, got > seen, self.read_only) {
            fsx::write_atomic(path, format!("{got}\n").as_bytes(), 0o644)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A key pair and signatures from the minisign-verify test vectors (legacy "Ed" mode).
    const PK: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
    const LEGACY_SIG: &str = "untrusted comment: signature from minisign secret key\nRWQf6LRCGA9i59SLOFxz6NxvASXDJeRtuZykwQepbDEGt87ig1BNpWaVWuNrm73YiIiJbq71Wi+dP9eKL8OC351vwIasSSbXxwA=\ntrusted comment: timestamp:1555779966\tfile:test\nQtKMXWyYcwdpZAlPF7tE2ENJkRd1ujvKjlj1m9RtHTBnZPa5WKU5uWRs5GoP5M/VqE81QFuMKI5k/SfNQUaOAA==";
    // Prehashed ("ED") signature of the same data by the same key.
    const PREHASHED_SIG: &str = "untrusted comment: signature from minisign secret key\nRUQf6LRCGA9i559r3g7V1qNyJDApGip8MfqcadIgT9CuhV3EMhHoN1mGTkUidF/z7SrlQgXdy8ofjb7bNJJylDOocrCo8KLzZwo=\ntrusted comment: timestamp:1556193335\tfile:test\ny/rUw2y8/hOUYjZU71eHp/Wo1KZ40fGy2VJEDl34XMJM+TX48Ss/17u3IvIfbVR1FkZZSNCisQbuQY+bHwhEBg==";

    #[test]
    fn verify_table() {
        let keys = TrustedKeys::parse(PK, "test").unwrap();
        let other = TrustedKeys::parse(
            "RWTGnk8a6RTphBHaNdFsKGTCAOHhNCJgSFzIEJFV5bHCr9yaBumeKrdb",
            "other",
        )
        .unwrap();
        let tampered_sig = PREHASHED_SIG.replace("y/rUw2y8", "y/rUw2y9");
        let cases: Vec<(&str, &TrustedKeys, &[u8], &str, bool)> = vec![
            ("legacy good", &keys, b"test", LEGACY_SIG, true),
            ("prehashed good", &keys, b"test", PREHASHED_SIG, true),
            ("tampered file", &keys, b"tesT", PREHASHED_SIG, false),
            ("tampered legacy file", &keys, b"tesT", LEGACY_SIG, false),
            ("tampered signature", &keys, b"test", &tampered_sig, false),
            ("unknown key", &other, b"test", PREHASHED_SIG, false),
            (
                "garbage signature",
                &keys,
                b"test",
                "not a signature",
                false,
            ),
        ];
        for (name, k, data, sig, ok) in cases {
            let r = k.verify(data, sig, "f");
            assert_eq!(r.is_ok(), ok, "{name}: {r:?}");
        }
        let empty = TrustedKeys::empty();
        assert!(matches!(
            empty.verify(b"test", PREHASHED_SIG, "f"),
            Err(Error::NoTrustedKeys { .. })
        ));
        assert!(matches!(
            other.verify(b"test", PREHASHED_SIG, "f"),
            Err(Error::UnknownKey { .. })
        ));
        assert_eq!(
            keys.verify(b"test", PREHASHED_SIG, "f").unwrap(),
            "timestamp:1556193335\tfile:test"
        );
    }

    #[test]
    fn any_of_several_keys() {
        let mut keys = TrustedKeys::parse(
            "RWTGnk8a6RTphBHaNdFsKGTCAOHhNCJgSFzIEJFV5bHCr9yaBumeKrdb",
            "a",
        )
        .unwrap();
        keys.add_text(
            &format!("untrusted comment: minisign public key\n{PK}\n"),
            "b",
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.verify(b"test", PREHASHED_SIG, "f").is_ok());
        assert_eq!(keys.key_ids()[1], "E7620F1842B4E81F");
    }

    #[test]
    fn verify_file_streams_and_detects_tampering() {
        let d = tempfile::tempdir().unwrap();
        let keys = TrustedKeys::parse(PK, "test").unwrap();
        let f = d.path().join("test");
        let s = d.path().join("test.minisig");
        std::fs::write(&s, PREHASHED_SIG).unwrap();
        std::fs::write(&f, b"test").unwrap();
        assert!(keys.verify_file(&f, &s).is_ok());
        std::fs::write(&f, b"test!").unwrap();
        assert!(matches!(
            keys.verify_file(&f, &s),
            Err(Error::BadSignature { .. })
        ));
        std::fs::write(&s, LEGACY_SIG).unwrap();
        std::fs::write(&f, b"test").unwrap();
        assert!(keys.verify_file(&f, &s).is_ok());
    }

    #[test]
    fn bad_keys_refused() {
        for text in [
            "",
            "untrusted comment: x\n",
            "RWQ",
            "not base64 !",
            "RUQf6LRCGA9i559r3g7V1qNyJDApGip8MfqcadIgT9CuhV3EMhHoN1mGTkUidF",
        ] {
            assert!(TrustedKeys::parse(text, "cfg").is_err(), "{text:?}");
        }
    }

    #[test]
    fn builtin_keys_parse() {
        // Whatever was compiled in parses, and matches the generated list.
        assert_eq!(TrustedKeys::builtin().len(), BUILTIN_KEYS.len());
    }

    #[test]
    fn trusted_comment_table() {
        let cases = [
            (
                "timestamp:17 file:manifest.json",
                Some(17),
                Some("manifest.json"),
            ),
            (
                "timestamp:1556193335\tfile:test\thashed",
                Some(1556193335),
                Some("test"),
            ),
            ("timestamp:x file:y", None, Some("y")),
            ("hello", None, None),
        ];
        for (s, ts, file) in cases {
            let tc = TrustedComment::parse(s);
            assert_eq!(tc.timestamp, ts, "{s}");
            assert_eq!(tc.file.as_deref(), file, "{s}");
        }
        assert_eq!(
            TrustedComment::for_manifest(5),
            "timestamp:5 file:manifest.json"
        );
    }

    #[test]
    fn checking_state_is_never_written() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("release-replay");
        std::fs::write(&p, "5\n").unwrap();
        let st = ReplayState::checking(&p);
        assert!(st.check_and_record(9, "m").is_ok());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "5\n");
        assert!(st.check_and_record(4, "m").is_err());
    }

    #[test]
    fn replay_refuses_older() {
        let d = tempfile::tempdir().unwrap();
        let st = ReplayState::at(d.path().join("release-timestamp"));
        assert_eq!(st.seen().unwrap(), 0);
        st.check_and_record(100, "m").unwrap();
        st.check_and_record(100, "m").unwrap(); // same manifest again
        st.check_and_record(200, "m").unwrap();
        let err = st
            .check_and_record(150, "https://h/manifest.json")
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Replay {
                    seen: 200,
                    got: 150,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(st.seen().unwrap(), 200);
        std::fs::write(d.path().join("release-timestamp"), "junk").unwrap();
        assert!(st.seen().is_err());
        assert!(ReplayState::none().check_and_record(1, "m").is_ok());
    }
}
