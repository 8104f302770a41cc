//! Atomic, durable file writes for the agent: temp file in the same directory, fsync, rename,
//! fsync of the directory. A copy of the routine in `installer/src/fsx.rs` (the agent crate
//! cannot depend on the installer); the lead will dedupe by moving it here.
use fs_err::os::unix::fs::OpenOptionsExt;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn tmp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.outpost-tmp-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ))
}

pub(crate) fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// fsync a directory so a rename or create inside it is durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    fs_err::File::open(dir)?.sync_all()
}

/// Write `contents` to `path` atomically with `mode`, owned by the current user.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    write_atomic_owned(path, contents, mode, None)
}

/// [`write_atomic`], giving the new file `owner` (uid, gid) before it replaces `path`.
pub fn write_atomic_owned(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let tmp = tmp_name(path);
    let result = (|| {
        let mut f = fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        // The umask may have narrowed the mode given to open(2).
        f.file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            rustix::fs::fchown(
                f.file(),
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| {
                std::io::Error::new(
                    std::io::Error::from(e).kind(),
                    format!("cannot chown {}: {e}", tmp.display()),
                )
            })?;
        }
        f.sync_all()?;
        drop(f);
        fs_err::rename(&tmp, path)?;
        fsync_dir(parent(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp); // best effort: the temp file is ours
    }
    result
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
