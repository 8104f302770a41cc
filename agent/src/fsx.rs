//! Atomic, durable file writes for the agent: the workspace's one implementation
//! (`outpost_core::atomic`), with the agent's two-call shape.
use std::path::Path;

pub use outpost_core::atomic::fsync_dir;
pub(crate) use outpost_core::atomic::parent;

/// Write `contents` to `path` atomically with `mode`, owned by the current user.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    outpost_core::atomic::write_atomic(path, contents, mode, None)
}

/// [`write_atomic`], giving the new file `owner` (uid, gid) before it replaces `path`.
pub fn write_atomic_owned(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    outpost_core::atomic::write_atomic(path, contents, mode, owner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("identity.json");
        for (body, mode) in [(&b"a"[..], 0o600), (&b"bb"[..], 0o644)] {
            write_atomic(&p, body, mode).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), body);
            assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, mode);
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
