//! The workspace's one temp dir: `mkdtemp`-style through `tempfile` (a random name created
//! with one `mkdir`, so a path someone else made first in a shared /tmp is never entered),
//! mode 0700, removed on drop.
use std::path::Path;

/// A fresh directory only its owner can enter (0700), removed on drop.
#[derive(Debug)]
pub struct PrivateTempDir {
    dir: tempfile::TempDir,
}

impl PrivateTempDir {
    /// A new directory `outpost-<tag>-XXXXXX` under the system temp dir.
    pub fn new(tag: &str) -> std::io::Result<PrivateTempDir> {
        PrivateTempDir::new_in(&std::env::temp_dir(), tag)
    }

    /// A new directory `outpost-<tag>-XXXXXX` under `base`.
    pub fn new_in(base: &Path, tag: &str) -> std::io::Result<PrivateTempDir> {
        use std::os::unix::fs::PermissionsExt;
        tempfile::Builder::new()
            .prefix(&format!("outpost-{tag}-"))
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(base)
            .map(|dir| PrivateTempDir { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
