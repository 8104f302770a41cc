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
/// drop. Its name (`outpost-TAG-RANDOM`) is created with one `mkdir`, never reused: a path
/// someone else made first (a planted directory or symlink in a shared /tmp) is skipped, not
/// entered.
#[derive(Debug)]
pub struct PrivateTempDir {
    path: PathBuf,
}

impl PrivateTempDir {
    pub fn new(tag: &str) -> Result<PrivateTempDir> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let mut last = None;
        for attempt in 0u32..16 {
            let path = base.join(format!("outpost-{tag}-{}", random_suffix(attempt)));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateTempDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(Error::io("create directory", &path, e)),
            }
        }
        Err(Error::io(
            "create a private directory in",
            &base,
            last.unwrap_or_else(|| std::io::Error::other("every name was taken")),
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateTempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path); // best effort: our own directory
    }
}

/// 16 hex digits from /dev/urandom (pid, time and `attempt` if it cannot be read).
fn random_suffix(attempt: u32) -> String {
    let mut b = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    if read.is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mixed = sha256_bytes(format!("{}-{nanos}-{attempt}", std::process::id()).as_bytes());
        return mixed[..16].to_string();
    }
    hex::encode(b)
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
