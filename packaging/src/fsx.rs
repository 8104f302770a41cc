//! Atomic, durable writes: temp file in the same directory, fsync, rename, fsync of the
//! directory. A reader sees the old file or the new one, never half of one.
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::path::Path;

pub(crate) use outpost_core::atomic::parent;
pub(crate) use outpost_core::atomic::tmp_name;

/// The workspace's one temp dir ([`outpost_core::tempdir::PrivateTempDir`]), its error as
/// a release error naming the directory.
pub fn private_temp_dir(tag: &str) -> Result<PrivateTempDir> {
    let base = std::env::temp_dir();
    PrivateTempDir::new_in(&base, tag)
        .map_err(|e| Error::io("create a private directory in", &base, e))
}

pub use outpost_core::tempdir::PrivateTempDir;

/// fsync a directory so renames inside it are durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    outpost_core::atomic::fsync_dir(dir).map_err(|e| Error::io("sync directory", dir, e))
}

/// Write `contents` to `path` atomically with `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    outpost_core::atomic::write_atomic(path, contents, mode, None)
        .map_err(|e| Error::io("write", path, e))
}

/// Create `path` atomically with `mode`, its contents written by `fill`.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut fs_err::File) -> std::io::Result<()>,
) -> Result<()> {
    outpost_core::atomic::write_atomic_with(path, mode, None, fill)
        .map_err(|e| Error::io("write", path, e))
}

/// Create a directory and its missing parents (mode 0755).
pub fn create_dir_all(path: &Path) -> Result<()> {
    fs_err::create_dir_all(path).map_err(|e| Error::io("create directory", path, e))
}

pub use outpost_core::atomic::sha256_bytes;

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
    // Mode, replacement and sha256 are tested in `outpost_core::atomic`; this is the wrapper's error path.
    use super::*;
    use std::io::Write;

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
