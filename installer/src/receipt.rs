//! The install receipt: what `install` created, so `uninstall` removes exactly that.
//!
//! Stored as JSON in root's state directory (`receipt.json`, root-owned in system mode),
//! written atomically and read only through [`outpost_core::trust::read_trusted`]. A loaded
//! receipt is also checked against the layout ([`Receipt::validate`]): every path it lists
//! must be one outpost manages, and every user name a valid non-root name, so even a receipt
//! that got past the ownership checks cannot make `uninstall` delete anything else.
use outpost_core::layout::{Layout, Mode};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const SCHEMA: u32 = 1;
/// Largest receipt read (4 MiB).
pub const MAX_BYTES: u64 = 4 << 20;

/// The paths a receipt may list (and everything below them).
fn managed_paths(l: &Layout) -> Vec<PathBuf> {
    let mut v = vec![
        l.base.clone(),
        l.bin_link.clone(),
        l.config_dir.clone(),
        l.state_dir.clone(),
        l.unit_file.clone(),
    ];
    if let Some(d) = &l.dropin_file {
        v.extend(d.parent().map(Path::to_path_buf));
    }
    if l.mode == Mode::System {
        v.push(PathBuf::from(crate::plan::POLKIT_RULES));
    }
    v.extend(l.privileged_template());
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

/// What an entry is for. `Config`, `Secrets` and `State` are the operator's: plain
/// uninstall keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Binary,
    Unit,
    Dropin,
    Polkit,
    Config,
    Secrets,
    State,
    Link,
    Dir,
}

impl Role {
    pub fn is_user_data(self) -> bool {
        matches!(self, Role::Config | Role::Secrets | Role::State)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: Kind,
    pub role: Role,
    /// Host-absolute path.
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Octal mode as a number (0o644 = 420).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub schema: u32,
    pub mode: Mode,
    /// Version `current` points at.
    pub version: String,
    /// RFC 3339 time of the last install that changed something.
    pub installed_at: String,
    /// `User=` of the system unit; in user mode the owning user.
    pub service_user: String,
    /// The system user install created (removed by `uninstall --purge`).
    #[serde(default)]
    pub created_user: Option<String>,
    /// The user whose linger install turned on (turned off again by uninstall).
    #[serde(default)]
    pub linger_enabled_for: Option<String>,
    /// Unit enabled by install (`systemctl enable`).
    #[serde(default)]
    pub unit_enabled: bool,
    /// Set by a plain `uninstall`: the entries left are what it kept (the operator's data and
    /// files someone edited), so a later `uninstall --purge` still knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uninstalled_at: Option<String>,
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("cannot read install receipt {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("install receipt {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{0}")]
    Untrusted(outpost_core::trust::TrustError),
    #[error("install receipt {path} lists {what}, which outpost does not manage")]
    Foreign { path: PathBuf, what: String },
    #[error("cannot write install receipt {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Receipt {
    pub fn entry(&self, path: &Path) -> Option<&Entry> {
        self.entries.iter().find(|e| e.path == path)
    }

    /// Add or replace the entry for `e.path`, keeping first-recorded order.
    pub fn upsert(&mut self, e: Entry) {
        match self.entries.iter_mut().find(|x| x.path == e.path) {
            Some(slot) => *slot = e,
            None => self.entries.push(e),
        }
    }

    pub fn to_json(&self) -> String {
        // Invariant: Receipt holds only strings, numbers and paths, which always serialize.
        serde_json::to_string_pretty(self).expect("receipt serializes") + "\n"
    }

    /// Load the receipt for `layout`; `Ok(None)` when there is none.
    pub fn load(layout: &Layout) -> Result<Option<Receipt>, ReceiptError> {
        use outpost_core::trust::{read_trusted_string, TrustError};
        let path = layout.host(&layout.receipt_file());
        let text = match read_trusted_string(&layout.root, &path, MAX_BYTES) {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(None),
            Err(TrustError::Io { source, .. }) => return Err(ReceiptError::Read { path, source }),
            Err(e) => return Err(ReceiptError::Untrusted(e)),
        };
        let r: Receipt = serde_json::from_str(&text).map_err(|e| ReceiptError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if r.schema != SCHEMA {
            return Err(ReceiptError::Corrupt {
                path,
                message: format!(
                    "schema {} is not supported (this outpost reads {SCHEMA})",
                    r.schema
                ),
            });
        }
        r.validate(layout)?;
        Ok(Some(r))
    }

    /// Every entry must be a path outpost manages for `layout` (or, for a directory, one of
    /// their ancestors, which uninstall removes only when empty); every user name valid and
    /// not root.
    pub fn validate(&self, layout: &Layout) -> Result<(), ReceiptError> {
        let foreign = |what: String| ReceiptError::Foreign {
            path: layout.host(&layout.receipt_file()),
            what,
        };
        if self.mode != layout.mode {
            return Err(foreign(format!("mode {}", self.mode)));
        }
        let managed = managed_paths(layout);
        for e in &self.entries {
            let p = &e.path;
            let clean = p.is_absolute()
                && p.components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::RootDir | std::path::Component::Normal(_)
                    )
                });
            let under = managed.iter().any(|m| p.starts_with(m));
            let ancestor = e.kind == Kind::Dir
                && e.role == Role::Dir
                && managed
                    .iter()
                    .any(|m| m.starts_with(p) && p != Path::new("/"));
            if !clean || !(under || ancestor) {
                return Err(foreign(format!("{}", p.display())));
            }
        }
        for (what, name) in [
            ("service user", Some(&self.service_user)),
            ("created user", self.created_user.as_ref()),
            ("linger user", self.linger_enabled_for.as_ref()),
        ] {
            if let Some(n) = name {
                if !crate::users::valid_username(n) || n == "root" {
                    return Err(foreign(format!("{what} {n:?}")));
                }
            }
        }
        if let Some(c) = &self.created_user {
            if c != &self.service_user {
                return Err(foreign(format!(
                    "created user {c:?} (not the service user)"
                )));
            }
        }
        Ok(())
    }

    pub fn save(&self, layout: &Layout, owner: crate::fsx::Owner) -> Result<(), ReceiptError> {
        let path = layout.host(&layout.receipt_file());
        crate::fsx::write_atomic(&path, self.to_json().as_bytes(), 0o644, owner)
            .map_err(|source| ReceiptError::Write { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Receipt {
        Receipt {
            schema: SCHEMA,
            mode: Mode::System,
            version: "1.0.0".into(),
            installed_at: "2026-01-01T00:00:00Z".into(),
            service_user: "alice".into(),
            created_user: None,
            linger_enabled_for: None,
            unit_enabled: true,
            uninstalled_at: None,
            entries: vec![Entry {
                kind: Kind::File,
                role: Role::Unit,
                path: "/etc/systemd/system/outpost.service".into(),
                sha256: Some("ab".into()),
                mode: Some(0o644),
                target: None,
            }],
        }
    }

    #[test]
    fn roundtrip_through_state_dir() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::system(d.path());
        std::fs::create_dir_all(l.host(&l.state_dir)).unwrap();
        assert!(Receipt::load(&l).unwrap().is_none());
        let r = sample();
        r.save(&l, None).unwrap();
        assert_eq!(Receipt::load(&l).unwrap().unwrap(), r);
    }

    #[test]
    fn corrupt_and_future_schema_refused() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::system(d.path());
        std::fs::create_dir_all(l.host(&l.state_dir)).unwrap();
        std::fs::write(l.host(&l.receipt_file()), "{").unwrap();
        assert!(matches!(
            Receipt::load(&l),
            Err(ReceiptError::Corrupt { .. })
        ));
        let mut r = sample();
        r.schema = 99;
        std::fs::write(
            l.host(&l.receipt_file()),
            serde_json::to_string(&r).unwrap(),
        )
        .unwrap();
        let e = Receipt::load(&l).unwrap_err().to_string();
        assert!(e.contains("schema 99"), "{e}");
    }

    #[test]
    fn foreign_paths_and_users_are_refused() {
        let l = Layout::system(Path::new("/"));
        assert!(sample().validate(&l).is_ok());
        let entry = |kind, role, path: &str| Entry {
            kind,
            role,
            path: path.into(),
            sha256: None,
            mode: None,
            target: None,
        };
        // (entry, ok)
        let cases = [
            (
                entry(
                    Kind::File,
                    Role::Binary,
                    "/opt/outpost/versions/1.0.0/outpost",
                ),
                true,
            ),
            (entry(Kind::Dir, Role::Dir, "/opt"), true),
            (entry(Kind::Dir, Role::Dir, "/usr/local/bin"), true),
            (
                entry(
                    Kind::File,
                    Role::Polkit,
                    "/etc/polkit-1/rules.d/50-outpost.rules",
                ),
                true,
            ),
            (entry(Kind::File, Role::Config, "/etc/shadow"), false),
            (entry(Kind::Dir, Role::State, "/home"), false),
            (entry(Kind::Dir, Role::Dir, "/"), false),
            (entry(Kind::Dir, Role::State, "/opt"), false),
            (
                entry(Kind::File, Role::Binary, "/opt/outpost/../../etc/shadow"),
                false,
            ),
            (entry(Kind::File, Role::Binary, "opt/outpost/x"), false),
            (entry(Kind::File, Role::Binary, "/opt/outpostx"), false),
        ];
        for (e, ok) in cases {
            let mut r = sample();
            let p = e.path.clone();
            r.entries.push(e);
            assert_eq!(r.validate(&l).is_ok(), ok, "{}", p.display());
        }
        for (svc, created) in [("root", None), ("alice", Some("bob")), ("a b", None)] {
            let mut r = sample();
            r.service_user = svc.into();
            r.created_user = created.map(String::from);
            assert!(r.validate(&l).is_err(), "{svc} {created:?}");
        }
        let mut r = sample();
        r.mode = Mode::User;
        assert!(r.validate(&l).is_err());
    }

    #[test]
    fn upsert_replaces_in_place() {
        let mut r = sample();
        let mut e = r.entries[0].clone();
        e.sha256 = Some("cd".into());
        r.upsert(e);
        assert_eq!(r.entries.len(), 1);
        assert_eq!(r.entries[0].sha256.as_deref(), Some("cd"));
    }
}
