//! Atomic, durable writes: temp file in the same directory, fsync, rename, fsync of the
//! directory. A reader sees the old file or the new one, never half of one.
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A unique hidden name next to `path` for a temp file or directory.
pub(crate) fn tmp_name(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    path.with_file_name(format!(".{name}.{tag}-{}-{nanos}", std::process::id()))
}

pub(crate) use crate::atomic::parent;

/// A fresh directory only its owner can enter (0700) under the system temp dir, removed on
/// drop: the workspace's one temp dir, `mkdtemp`-style through `tempfile` (a random name
/// created with one `mkdir`, so a path someone else made first in a shared /tmp is never
/// entered).
#[derive(Debug)]
pub struct PrivateTempDir {
    dir: tempfile::TempDir,
}

impl PrivateTempDir {
    pub fn new(tag: &str) -> Result<PrivateTempDir> {
        let base = std::env::temp_dir();
        use std::os::unix::fs::PermissionsExt;
        tempfile::Builder::new()
            .prefix(&format!("outpost-{tag}-"))
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&base)
            .map(|dir| PrivateTempDir { dir })
            .map_err(|e| Error::io("create a private directory in", &base, e))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// fsync a directory so renames inside it are durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    crate::atomic::fsync_dir(dir).map_err(|e| Error::io("sync directory", dir, e))
}

/// Write `contents` to `path` atomically with `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    crate::atomic::write_atomic(path, contents, mode, None).map_err(|e| Error::io("write", path, e))
}

/// Create `path` atomically with `mode`, its contents written by `fill`.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut fs_err::File) -> std::io::Result<()>,
) -> Result<()> {
    crate::atomic::write_atomic_with(path, mode, None, fill)
        .map_err(|e| Error::io("write", path, e))
}

/// Create a directory and its missing parents (mode 0755).
pub fn create_dir_all(path: &Path) -> Result<()> {
    fs_err::create_dir_all(path).map_err(|e| Error::io("create directory", path, e))
}

pub use crate::atomic::sha256_bytes;

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs_err::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io("read", path, e))?;
    Ok(hex::encode(h.finalize()))
}

/// Read a whole file; the error names the path.
#[cfg_attr(not(feature = "tools"), allow(dead_code))]
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    fs_err::read(path).map_err(|e| Error::io("read", path, e))
}

#[cfg(test)]
mod tests {
    // Mode, replacement and sha256 are tested in `crate::atomic`; this is the wrapper's error path.
    use super::*;
    use std::io::Write;

    #[test]
    fn private_temp_dir_is_new_0700_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let a = PrivateTempDir::new("fsx-test").unwrap();
        let b = PrivateTempDir::new("fsx-test").unwrap();
        assert_ne!(a.path(), b.path());
        let mode = std::fs::metadata(a.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(a
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("outpost-fsx-test-"));
        let p = a.path().to_path_buf();
        std::fs::write(p.join("f"), b"x").unwrap();
        drop(a);
        assert!(!p.exists());
    }

    #[test]
    fn failed_fill_keeps_old_file_and_removes_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"old", 0o644).unwrap();
        let err = write_atomic_with(&p, 0o644, |f| {
            f.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
