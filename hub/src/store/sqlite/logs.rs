//! Run logs as files: `run-logs/<run id>.log` next to the database, append-only at the
//! offsets the `runs.log_bytes` column commits. The column is the truth: bytes are written
//! and synced (`fdatasync`) before the transaction that raises it commits, so a committed
//! size never exceeds what is on disk; bytes past it (a crash between the two) are cut off by
//! the next upload, which writes at the committed size.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// An I/O failure as the store's error type, naming the path.
fn sql_err(path: &Path, e: std::io::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::new(
        e.kind(),
        format!("{}: {e}", path.display()),
    )))
}

/// Creates the log directory (0700) if it is missing.
pub(super) fn create_dir(dir: &Path) -> rusqlite::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(sql_err(dir, e)),
    }
}

/// The log file of run `id`; `None` for an id that is not a plain file name (the hub mints
/// `r_` + hex, so this only guards against a store written by something else).
pub(super) fn path(dir: &Path, id: &str) -> Option<PathBuf> {
    let plain = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    plain.then(|| dir.join(format!("{id}.log")))
}

fn named(dir: &Path, id: &str) -> rusqlite::Result<PathBuf> {
    path(dir, id).ok_or_else(|| {
        sql_err(
            dir,
            std::io::Error::new(
                ErrorKind::InvalidInput,
                format!("run id {id:?} is not a file name"),
            ),
        )
    })
}

fn open_rw(p: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(p)
}

/// Writes `data` at `at` (the committed size) and syncs it; anything past `at` is cut off
/// first (bytes of an upload whose transaction did not commit).
pub(super) fn write_at(dir: &Path, id: &str, at: u64, data: &[u8]) -> rusqlite::Result<()> {
    let p = named(dir, id)?;
    let err = |e| sql_err(&p, e);
    let f = open_rw(&p).map_err(err)?;
    if f.metadata().map_err(err)?.len() != at {
        f.set_len(at).map_err(err)?;
    }
    f.write_all_at(data, at).map_err(err)?;
    f.sync_data().map_err(err)?;
    if at == 0 {
        // A new file: make its directory entry durable too.
        sync_dir(dir)?;
    }
    Ok(())
}

/// Replaces run `id`'s log with `data`, synced (the migration from `run_logs` rows).
pub(super) fn replace(dir: &Path, id: &str, data: &[u8]) -> rusqlite::Result<()> {
    let Some(p) = path(dir, id) else {
        return Ok(());
    };
    let err = |e| sql_err(&p, e);
    let mut f = open_rw(&p).map_err(err)?;
    f.set_len(0).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_data().map_err(err)
}

/// At most `len` bytes of run `id`'s log from `offset`; a missing file reads as empty.
pub(super) fn read(dir: &Path, id: &str, offset: u64, len: u64) -> rusqlite::Result<Vec<u8>> {
    let Some(p) = path(dir, id) else {
        return Ok(Vec::new());
    };
    let err = |e| sql_err(&p, e);
    let mut f = match File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(e)),
    };
    f.seek(SeekFrom::Start(offset)).map_err(err)?;
    let mut out = Vec::new();
    f.take(len).read_to_end(&mut out).map_err(err)?;
    Ok(out)
}

/// Deletes run `id`'s log; a missing one is fine.
pub(super) fn remove(dir: &Path, id: &str) -> std::io::Result<()> {
    let Some(p) = path(dir, id) else {
        return Ok(());
    };
    match std::fs::remove_file(&p) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", p.display()),
        )),
        _ => Ok(()),
    }
}

/// Syncs the directory (new or removed entries).
pub(super) fn sync_dir(dir: &Path) -> rusqlite::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| sql_err(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_writes_reads_and_cuts() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        assert_eq!(path(dir, "r_0a"), Some(dir.join("r_0a.log")));
        for bad in ["", "../x", "a/b", "r.x", "r x"] {
            assert_eq!(path(dir, bad), None, "{bad}");
        }
        assert!(write_at(dir, "../x", 0, b"x").is_err());
        write_at(dir, "r_1", 0, b"hello").unwrap();
        write_at(dir, "r_1", 5, b" world").unwrap();
        assert_eq!(read(dir, "r_1", 0, 100).unwrap(), b"hello world");
        assert_eq!(read(dir, "r_1", 6, 3).unwrap(), b"wor");
        assert_eq!(read(dir, "r_1", 50, 3).unwrap(), b"");
        // An upload that never committed left bytes past the size: the next one cuts them.
        write_at(dir, "r_1", 5, b"!").unwrap();
        assert_eq!(read(dir, "r_1", 0, 100).unwrap(), b"hello!");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join("r_1.log"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read(dir, "r_none", 0, 10).unwrap(), b"");
        remove(dir, "r_1").unwrap();
        remove(dir, "r_1").unwrap();
        assert!(!dir.join("r_1.log").exists());
        replace(dir, "r_2", b"abc").unwrap();
        replace(dir, "r_2", b"d").unwrap();
        assert_eq!(read(dir, "r_2", 0, 10).unwrap(), b"d");
    }
}
