//! Atomic, durable filesystem writes: temp file in the same directory, fsync, rename,
//! fsync of the directory. Every write outpost makes goes through here — the installer
//! (`outpost_installer::fsx` re-exports this module), the agent and the release tools.
use fs_err::os::unix::fs::OpenOptionsExt;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Owner to give a new file or directory (`None`: whoever runs outpost).
pub type Owner = Option<(u32, u32)>;

/// A unique hidden name next to `path` for a temp file or directory:
/// `.<name>.<tag>-<pid>-<nanos>` (the sweepers recognise the pid of a dead writer in it).
pub fn tmp_name(path: &Path, tag: &str) -> PathBuf {
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

/// The pid in a temp name [`write_atomic`] or [`symlink_atomic`] made
/// (`.NAME.outpost-tmp-PID-NANOS`), `None` for any other name.
pub fn temp_pid(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let (_, rest) = name.rsplit_once(".outpost-tmp-")?;
    let (pid, nanos) = rest.split_once('-')?;
    nanos.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Remove the temp files and links this module left in `dir` (not below it) for processes
/// that no longer run (killed, power cut between create and rename). Returns what went.
pub fn sweep_stale_temps(dir: &Path) -> Vec<PathBuf> {
    sweep_dead_writers(dir, temp_pid, false)
}

/// Remove the entries of `dir` whose name `pid_of` maps to the pid of a process that no
/// longer runs (directories too, recursively, when `dirs`). The one sweeper of leftovers.
pub fn sweep_dead_writers(dir: &Path, pid_of: fn(&str) -> Option<u32>, dirs: bool) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = pid_of(&e.file_name().to_string_lossy()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let p = e.path();
        let gone = match e.file_type() {
            Ok(t) if t.is_dir() => dirs && fs_err::remove_dir_all(&p).is_ok(),
            Ok(_) => fs_err::remove_file(&p).is_ok(),
            Err(_) => false,
        };
        if gone {
            removed.push(p);
        }
    }
    removed
}

/// The directory of `path` (`.` for a bare name).
pub fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// fsync a directory so a rename inside it is durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    fs_err::File::open(dir)?.sync_all()
}

fn chown(path: &Path, owner: Owner) -> std::io::Result<()> {
    if let Some((uid, gid)) = owner {
        // SAFETY-free: rustix wraps fchownat; the ids come from the passwd database.
        rustix::fs::chownat(
            rustix::fs::CWD,
            path,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| {
            std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!("cannot chown {}: {e}", path.display()),
            )
        })?;
    }
    Ok(())
}

/// Write `contents` to `path` atomically with `mode` (and owner).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32, owner: Owner) -> std::io::Result<()> {
    write_atomic_with(path, mode, owner, |f| f.write_all(contents))
}

/// Create `path` atomically with `mode` (and owner), its contents written by `fill`.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    owner: Owner,
    fill: impl FnOnce(&mut fs_err::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = tmp_name(path, "outpost-tmp");
    let result = (|| {
        let mut f = fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        fill(&mut f)?;
        // The umask may have narrowed the mode given to open(2).
        f.file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
        chown(&tmp, owner)?;
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

/// Point the symlink `link` at `target`, atomically replacing whatever `link` was.
pub fn symlink_atomic(target: &Path, link: &Path) -> std::io::Result<()> {
    let tmp = tmp_name(link, "outpost-tmp");
    let result = (|| {
        std::os::unix::fs::symlink(target, &tmp).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot create symlink {}: {e}", tmp.display()),
            )
        })?;
        fs_err::rename(&tmp, link)?;
        fsync_dir(parent(link))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp); // best effort: the temp link is ours
    }
    result
}

/// Create `path` and missing parents with `mode`; returns the directories it created,
/// outermost first.
pub fn create_dirs(path: &Path, mode: u32, owner: Owner) -> std::io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cur = Some(path);
    while let Some(p) = cur {
        if p.as_os_str().is_empty() || p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        cur = p.parent();
    }
    missing.reverse();
    for d in &missing {
        fs_err::create_dir(d)?;
        fs_err::set_permissions(d, std::fs::Permissions::from_mode(mode))?;
        chown(d, owner)?;
        fsync_dir(parent(d))?;
    }
    Ok(missing)
}

/// Set mode and owner of an existing path.
pub fn set_mode_owner(path: &Path, mode: u32, owner: Owner) -> std::io::Result<()> {
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    chown(path, owner)
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = fs_err::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Remove a file or symlink and fsync its directory; a missing path is not an error.
pub fn remove_file(path: &Path) -> std::io::Result<bool> {
    match fs_err::remove_file(path) {
        Ok(()) => {
            fsync_dir(parent(path))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn temp_pid_table() {
        for (name, want) in [
            (".receipt.json.outpost-tmp-1234-5678", Some(1234)),
            (".current.outpost-tmp-7-0", Some(7)),
            ("receipt.json", None),
            (".x.outpost-tmp-12", None),
            (".x.outpost-tmp-a-1", None),
            (".1.1.0.staging-5-6", None),
        ] {
            assert_eq!(temp_pid(name), want, "{name}");
        }
    }

    #[test]
    fn sweep_removes_only_dead_writers_temps() {
        let d = tempfile::tempdir().unwrap();
        let dead = d.path().join(".receipt.json.outpost-tmp-4194300-1");
        let mine = d
            .path()
            .join(format!(".x.outpost-tmp-{}-1", std::process::id()));
        let keep = d.path().join("receipt.json");
        for p in [&dead, &mine, &keep] {
            std::fs::write(p, "x").unwrap();
        }
        std::os::unix::fs::symlink(
            "versions/1",
            d.path().join(".current.outpost-tmp-4194301-2"),
        )
        .unwrap();
        let mut gone = sweep_stale_temps(d.path());
        gone.sort();
        assert_eq!(gone.len(), 2, "{gone:?}");
        assert!(!dead.exists() && mine.exists() && keep.exists());
    }

    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret.env");
        write_atomic(&p, b"a", 0o600, None).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        write_atomic(&p, b"bb", 0o644, None).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"bb");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o644);
        // no temp files left behind
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn symlink_replaces_atomically() {
        let d = tempfile::tempdir().unwrap();
        let l = d.path().join("current");
        symlink_atomic(Path::new("versions/1.0.0"), &l).unwrap();
        symlink_atomic(Path::new("versions/1.1.0"), &l).unwrap();
        assert_eq!(std::fs::read_link(&l).unwrap(), Path::new("versions/1.1.0"));
    }

    #[test]
    fn create_dirs_reports_only_new() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/c");
        let made = create_dirs(&p, 0o755, None).unwrap();
        assert_eq!(
            made,
            vec![d.path().join("a"), d.path().join("a/b"), p.clone()]
        );
        assert!(create_dirs(&p, 0o755, None).unwrap().is_empty());
    }

    #[test]
    fn sha256_known_value() {
        assert_eq!(
            sha256_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
