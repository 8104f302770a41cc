//! Reading files across the privilege boundary.
//!
//! Two directions, two rules (docs/SECURITY.md):
//! - **Trusted** files decide what root does (receipt, upgrade record, replay state, config,
//!   trusted keys, `versions/`, `current`, `last-good`). [`read_trusted`] and
//!   [`check_trusted`] accept them only the way sshd's `StrictModes` does: the file and every
//!   directory from the filesystem root down to it are owned by root (or by the caller, which
//!   in user mode owns its own install), none is writable by group or others, and the file
//!   itself is not a symlink. Anything else is refused with a clear error.
//! - **Untrusted** files are written by the agent and only ever *read* by root, for display
//!   or the health gate (its heartbeat state, its journal). [`read_untrusted`] opens them with
//!   `O_NOFOLLOW | O_NONBLOCK`, requires a regular file of the expected owner, bounds the size
//!   and never writes. The caller must still schema-validate the bytes.
use rustix::fs::{Mode, OFlags};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("refusing {path}: {why}")]
    Unsafe { path: PathBuf, why: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing {path}: larger than {max} bytes")]
    TooLarge { path: PathBuf, max: u64 },
}

impl TrustError {
    pub fn hint(&self) -> String {
        match self {
            TrustError::Unsafe { path, .. } => format!(
                "only root may control this file: check who changed it, then `sudo chown root:root {p} && sudo chmod go-w {p}` (or re-run `sudo outpost install`, which repairs ownership)",
                p = path.display()
            ),
            TrustError::Io { .. } => "check the file's permissions, or run the command with sudo".into(),
            TrustError::TooLarge { .. } => {
                "the file is far larger than outpost ever writes: move it aside and re-run".into()
            }
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            TrustError::Unsafe { path, .. }
            | TrustError::Io { path, .. }
            | TrustError::TooLarge { path, .. } => path,
        }
    }
}

/// Whether `uid` may own a file that decides what a process with `euid` does.
fn trusted_owner(uid: u32, euid: u32) -> bool {
    uid == 0 || uid == euid
}

/// Why a file of this owner and mode cannot be trusted by `euid`, if it cannot (pure).
pub fn strict_modes(uid: u32, mode: u32, is_dir: bool, euid: u32) -> Option<String> {
    if !trusted_owner(uid, euid) {
        return Some(format!(
            "owned by uid {uid}, not root{}",
            if euid == 0 {
                String::new()
            } else {
                format!(" or uid {euid}")
            }
        ));
    }
    if mode & 0o022 != 0 {
        let what = if is_dir { "directory" } else { "file" };
        return Some(format!(
            "{what} is writable by {} (mode {:04o})",
            if mode & 0o002 != 0 {
                "others"
            } else {
                "its group"
            },
            mode & 0o7777
        ));
    }
    None
}

/// Check every directory from `root` (inclusive) down to `path`'s parent, and `path` itself
/// when it exists (not following it). `Ok(false)` when `path` does not exist.
pub fn check_trusted(root: &Path, path: &Path, euid: u32) -> Result<bool, TrustError> {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut cur = root.to_path_buf();
    let mut chain = vec![cur.clone()];
    for c in rel.components() {
        if let std::path::Component::Normal(n) = c {
            cur.push(n);
            chain.push(cur.clone());
        }
    }
    let last = chain.len() - 1;
    for (i, p) in chain.iter().enumerate() {
        let meta = match std::fs::symlink_metadata(p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(TrustError::Io {
                    path: p.clone(),
                    source: e,
                })
            }
        };
        let ft = meta.file_type();
        if ft.is_symlink() && i == last {
            return Err(TrustError::Unsafe {
                path: p.clone(),
                why: "it is a symlink".into(),
            });
        }
        // An ancestor that is a symlink (e.g. /var/run → /run) is judged by what it points at.
        let meta = if ft.is_symlink() {
            std::fs::metadata(p).map_err(|e| TrustError::Io {
                path: p.clone(),
                source: e,
            })?
        } else {
            meta
        };
        if i < last && !meta.is_dir() {
            return Err(TrustError::Unsafe {
                path: p.clone(),
                why: "not a directory".into(),
            });
        }
        // Sticky world-writable ancestors outside the install (/tmp in tests) only matter
        // when they are the root itself; everything outpost creates is checked strictly.
        if let Some(why) = strict_modes(meta.uid(), meta.mode(), meta.is_dir(), euid) {
            return Err(TrustError::Unsafe {
                path: p.clone(),
                why,
            });
        }
    }
    Ok(true)
}

fn open_nofollow(path: &Path) -> Result<Option<std::fs::File>, TrustError> {
    match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(std::fs::File::from(fd))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(rustix::io::Errno::LOOP) => Err(TrustError::Unsafe {
            path: path.to_path_buf(),
            why: "it is a symlink".into(),
        }),
        Err(e) => Err(TrustError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        }),
    }
}

fn read_bounded(file: std::fs::File, path: &Path, max: u64) -> Result<Vec<u8>, TrustError> {
    let mut buf = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| TrustError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
    if buf.len() as u64 > max {
        return Err(TrustError::TooLarge {
            path: path.to_path_buf(),
            max,
        });
    }
    Ok(buf)
}

/// Read a file that decides what this process does, refusing it unless it and its
/// directories pass [`check_trusted`]. `Ok(None)` when it does not exist.
pub fn read_trusted(
    root: &Path,
    path: &Path,
    euid: u32,
    max: u64,
) -> Result<Option<Vec<u8>>, TrustError> {
    if !check_trusted(root, path, euid)? {
        return Ok(None);
    }
    let Some(file) = open_nofollow(path)? else {
        return Ok(None);
    };
    // Re-check the opened file itself: the path may have been replaced since the walk.
    let meta = regular(&file, path)?;
    if let Some(why) = strict_modes(meta.uid(), meta.mode(), false, euid) {
        return Err(TrustError::Unsafe {
            path: path.to_path_buf(),
            why,
        });
    }
    read_bounded(file, path, max).map(Some)
}

/// [`read_trusted`] as text for the process's own euid.
pub fn read_trusted_string(
    root: &Path,
    path: &Path,
    max: u64,
) -> Result<Option<String>, TrustError> {
    let euid = rustix::process::geteuid().as_raw();
    match read_trusted(root, path, euid, max)? {
        None => Ok(None),
        Some(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| TrustError::Unsafe {
                path: path.to_path_buf(),
                why: "not valid UTF-8".into(),
            }),
    }
}

/// Read a file the agent wrote: no symlink, a regular file, owned by `owner` when given (or
/// root), at most `max` bytes. Never writes. `Ok(None)` when it does not exist.
pub fn read_untrusted(
    path: &Path,
    owner: Option<u32>,
    max: u64,
) -> Result<Option<Vec<u8>>, TrustError> {
    let Some(file) = open_untrusted(path)? else {
        return Ok(None);
    };
    if let Some(uid) = owner {
        let found = file
            .metadata()
            .map_err(|e| TrustError::Io {
                path: path.to_path_buf(),
                source: e,
            })?
            .uid();
        if found != uid && found != 0 {
            return Err(TrustError::Unsafe {
                path: path.to_path_buf(),
                why: format!("owned by uid {found}, expected {uid}"),
            });
        }
    }
    read_bounded(file, path, max).map(Some)
}

/// Open a file the agent wrote for reading, without following a link, and only when it is a
/// regular file (for incremental readers like the journal). `Ok(None)` when it does not exist.
pub fn open_untrusted(path: &Path) -> Result<Option<std::fs::File>, TrustError> {
    let Some(file) = open_nofollow(path)? else {
        return Ok(None);
    };
    regular(&file, path)?;
    Ok(Some(file))
}

/// The opened file's metadata, refusing anything but a regular file.
fn regular(file: &std::fs::File, path: &Path) -> Result<std::fs::Metadata, TrustError> {
    let meta = file.metadata().map_err(|e| TrustError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    if !meta.is_file() {
        return Err(TrustError::Unsafe {
            path: path.to_path_buf(),
            why: "not a regular file".into(),
        });
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn strict_modes_table() {
        // (uid, mode, dir, euid, refused)
        let cases = [
            (0, 0o644, false, 0, false),
            (0, 0o600, false, 0, false),
            (0, 0o755, true, 0, false),
            (0, 0o664, false, 0, true),
            (0, 0o646, false, 0, true),
            (0, 0o775, true, 0, true),
            (0, 0o1777, true, 0, true),
            (1000, 0o644, false, 0, true),
            (1000, 0o644, false, 1000, false),
            (1001, 0o644, false, 1000, true),
            (0, 0o644, false, 1000, false),
        ];
        for (uid, mode, dir, euid, refused) in cases {
            assert_eq!(
                strict_modes(uid, mode, dir, euid).is_some(),
                refused,
                "uid {uid} mode {mode:o} dir {dir} euid {euid}"
            );
        }
    }

    #[test]
    fn trusted_read_refuses_links_and_writable_files() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let euid = rustix::process::geteuid().as_raw();
        let f = root.join("receipt.json");
        std::fs::write(&f, "{}").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            read_trusted(root, &f, euid, 100).unwrap().unwrap(),
            b"{}".to_vec()
        );
        assert!(read_trusted(root, &root.join("none"), euid, 100)
            .unwrap()
            .is_none());
        // too large
        assert!(matches!(
            read_trusted(root, &f, euid, 1),
            Err(TrustError::TooLarge { .. })
        ));
        // group-writable
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o664)).unwrap();
        let e = read_trusted(root, &f, euid, 100).unwrap_err();
        assert!(e.to_string().contains("writable by its group"), "{e}");
        assert!(e.hint().contains("chown root:root"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        // symlink
        let l = root.join("link.json");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        let e = read_trusted(root, &l, euid, 100).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        // writable directory on the way
        let sub = root.join("state");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("x"), "1").unwrap();
        std::fs::set_permissions(sub.join("x"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = read_trusted(root, &sub.join("x"), euid, 100).unwrap_err();
        assert!(e.to_string().contains("writable by others"), "{e}");
        // a uid that is neither root nor us
        if euid == 0 {
            std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(sub.join("x"), Some(4242), None).unwrap();
            let e = read_trusted(root, &sub.join("x"), euid, 100).unwrap_err();
            assert!(e.to_string().contains("owned by uid 4242"), "{e}");
        }
    }

    #[test]
    fn untrusted_read_refuses_links_fifos_and_other_owners() {
        let d = tempfile::tempdir().unwrap();
        let me = rustix::process::geteuid().as_raw();
        let f = d.path().join("heartbeat.json");
        std::fs::write(&f, "{}").unwrap();
        assert!(read_untrusted(&f, Some(me), 10).unwrap().is_some());
        assert!(read_untrusted(&f, Some(me), 1).is_err());
        let l = d.path().join("l");
        std::os::unix::fs::symlink("/etc/shadow", &l).unwrap();
        assert!(matches!(
            read_untrusted(&l, Some(me), 10),
            Err(TrustError::Unsafe { .. })
        ));
        let fifo = d.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // O_NONBLOCK: opening a FIFO nobody writes does not hang; it is refused as not a file.
        assert!(matches!(
            read_untrusted(&fifo, Some(me), 10),
            Err(TrustError::Unsafe { .. })
        ));
        if me != 4242 && me != 0 {
            assert!(read_untrusted(&f, Some(4242), 10).is_err());
        }
        assert!(read_untrusted(&d.path().join("none"), None, 10)
            .unwrap()
            .is_none());
    }
}
