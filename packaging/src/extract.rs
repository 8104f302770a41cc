//! Unpacking a verified release tarball into a staging directory, and moving it into
//! `versions/V` atomically.
//!
//! Only regular files and directories are accepted, entry by entry, written by this code
//! (never `tar::Archive::unpack`) with mode 0755 or 0644. Refused: `..`, absolute paths,
//! symlinks, hardlinks, device nodes, fifos, oversize entries, too many entries, a truncated
//! or corrupt gzip stream. On any refusal the staging directory is removed.
use crate::error::{Error, Result};
use crate::fsx;
use fs_err::os::unix::fs::OpenOptionsExt;
use std::io::{BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Caps on what one tarball may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractLimits {
    pub max_entries: usize,
    pub max_entry_bytes: u64,
    pub max_total_bytes: u64,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        ExtractLimits {
            max_entries: 64,
            max_entry_bytes: 256 << 20,
            max_total_bytes: 512 << 20,
        }
    }
}

/// The file every release tarball must hold at its root.
pub const BINARY: &str = "outpost";

/// A fresh staging directory name inside `versions_dir` (same filesystem, so the final
/// rename is atomic). Hidden, so nothing mistakes it for an installed version.
pub fn staging_dir_for(versions_dir: &Path, version: &semver::Version) -> PathBuf {
    fsx::tmp_name(&versions_dir.join(version.to_string()), "staging")
}

/// Unpack `tarball` into `staging`, which must not exist yet (its parent must). Returns the
/// relative paths of the files written. On error `staging` is removed.
pub fn extract_tarball(
    tarball: &Path,
    staging: &Path,
    limits: &ExtractLimits,
) -> Result<Vec<PathBuf>> {
    extract_checked(tarball, staging, limits, Some(BINARY))
}

/// Unpack any tree of regular files and directories (a pack release's tarball) into
/// `staging`, with the same rules and caps as [`extract_tarball`] but no required file.
/// Returns the relative paths of the files written. On error `staging` is removed.
pub fn extract_tree(
    tarball: &Path,
    staging: &Path,
    limits: &ExtractLimits,
) -> Result<Vec<PathBuf>> {
    extract_checked(tarball, staging, limits, None)
}

fn extract_checked(
    tarball: &Path,
    staging: &Path,
    limits: &ExtractLimits,
    required: Option<&'static str>,
) -> Result<Vec<PathBuf>> {
    fs_err::create_dir(staging).map_err(|e| Error::io("create staging directory", staging, e))?;
    let result = extract_into(tarball, staging, limits, required);
    if result.is_err() {
        let _ = fs_err::remove_dir_all(staging); // best effort: staging is ours
    }
    result
}

fn unsafe_entry(tarball: &Path, entry: &str, why: impl Into<String>) -> Error {
    Error::UnsafeEntry {
        archive: tarball.to_path_buf(),
        entry: entry.to_string(),
        why: why.into(),
    }
}

/// A tar path made only of normal components, or why not.
fn safe_rel_path(raw: &[u8]) -> std::result::Result<PathBuf, &'static str> {
    let s = std::str::from_utf8(raw).map_err(|_| "is not valid utf-8")?;
    if s.starts_with('/') {
        return Err("has an absolute path");
    }
    let mut p = PathBuf::new();
    for c in s.split('/') {
        match c {
            "" | "." => continue,
            ".." => return Err("has a `..` component"),
            c if c.contains('\0') || c.contains('\\') => return Err("has an invalid character"),
            c => p.push(c),
        }
    }
    Ok(p)
}

fn extract_into(
    tarball: &Path,
    staging: &Path,
    limits: &ExtractLimits,
    required: Option<&'static str>,
) -> Result<Vec<PathBuf>> {
    let f = fs_err::File::open(tarball).map_err(|e| Error::io("open", tarball, e))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(f)));
    let mut x = Extraction::new(tarball, staging, limits, required);
    for entry in ar.entries().map_err(|e| x.archive_err(e))? {
        let mut entry = entry.map_err(|e| x.archive_err(e))?;
        x.entry(&mut entry)?;
    }
    x.check_trailing(ar.into_inner())?;
    x.finish()
}

/// Why an entry of this type is refused; `None` for a regular file or a directory.
fn refused_type(kind: tar::EntryType) -> Option<&'static str> {
    match kind {
        tar::EntryType::Regular | tar::EntryType::Directory => None,
        tar::EntryType::Symlink => Some("is a symlink"),
        tar::EntryType::Link => Some("is a hardlink"),
        tar::EntryType::Char | tar::EntryType::Block => Some("is a device node"),
        tar::EntryType::Fifo => Some("is a fifo"),
        _ => Some("is not a regular file or directory"),
    }
}

/// The mode a file is written with: executable (0755) if the archive marks it so for
/// anyone, else 0644. Nothing else of the archive's mode is kept.
fn file_mode(archive_mode: u32) -> u32 {
    if archive_mode & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

/// Most trailing data tolerated after the tar end-of-archive inside the gzip stream.
const MAX_TRAILING: u64 = 1 << 20;

/// One [`extract_tarball`]: the caps as they are used up and what was written so far, one
/// method per check or write.
struct Extraction<'a> {
    tarball: &'a Path,
    staging: &'a Path,
    limits: &'a ExtractLimits,
    /// A file that must be at the top level ([`BINARY`] for a release tarball).
    required: Option<&'static str>,
    files: Vec<PathBuf>,
    /// Directories made (the staging directory first), to fsync at the end.
    dirs: Vec<PathBuf>,
    entries: usize,
    total_bytes: u64,
}

impl<'a> Extraction<'a> {
    fn new(
        tarball: &'a Path,
        staging: &'a Path,
        limits: &'a ExtractLimits,
        required: Option<&'static str>,
    ) -> Self {
        Extraction {
            tarball,
            staging,
            limits,
            required,
            files: Vec::new(),
            dirs: vec![staging.to_path_buf()],
            entries: 0,
            total_bytes: 0,
        }
    }

    fn archive_err(&self, e: std::io::Error) -> Error {
        self.invalid(e.to_string())
    }

    fn invalid(&self, detail: String) -> Error {
        Error::Archive {
            archive: self.tarball.to_path_buf(),
            detail,
        }
    }

    /// Check one entry against every rule, then write it.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        self.count_entry()?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if let Some(why) = refused_type(kind) {
            return Err(unsafe_entry(self.tarball, &name, why));
        }
        let rel = safe_rel_path(&raw).map_err(|why| unsafe_entry(self.tarball, &name, why))?;
        let size = entry.size();
        self.count_bytes(&name, size)?;
        if kind == tar::EntryType::Directory {
            return self.directory(&rel);
        }
        self.file(entry, &name, &rel, size)
    }

    fn count_entry(&mut self) -> Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(self.invalid(format!("more than {} entries", self.limits.max_entries)));
        }
        Ok(())
    }

    /// The entry's size against the per-entry cap, and the running total against its own.
    fn count_bytes(&mut self, name: &str, size: u64) -> Result<()> {
        let max = self.limits.max_entry_bytes;
        if size > max {
            let why = format!("is {size} bytes, more than the {max} allowed");
            return Err(unsafe_entry(self.tarball, name, why));
        }
        self.total_bytes += size;
        if self.total_bytes > self.limits.max_total_bytes {
            let max = self.limits.max_total_bytes;
            return Err(self.invalid(format!("more than {max} bytes in total")));
        }
        Ok(())
    }

    /// A directory entry (the archive's root, `./`, is the staging directory itself).
    fn directory(&mut self, rel: &Path) -> Result<()> {
        if rel.as_os_str().is_empty() {
            return Ok(());
        }
        create_dirs_in(self.staging, rel, &mut self.dirs)
    }

    /// A regular file: created new (a second entry of the same path is refused), `size`
    /// bytes copied, its mode fixed, synced.
    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
        rel: &Path,
        size: u64,
    ) -> Result<()> {
        if rel.as_os_str().is_empty() {
            return Err(unsafe_entry(self.tarball, name, "has an empty path"));
        }
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_dirs_in(self.staging, parent, &mut self.dirs)?;
        }
        let mode = file_mode(entry.header().mode().map_err(|e| self.archive_err(e))?);
        let dest = self.staging.join(rel);
        let mut out = match fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&dest)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(unsafe_entry(self.tarball, name, "appears twice"))
            }
            Err(e) => return Err(Error::io("create", &dest, e)),
        };
        let copied =
            std::io::copy(&mut entry.take(size), &mut out).map_err(|e| self.archive_err(e))?;
        if copied != size {
            return Err(self.invalid(format!("entry {name:?} is truncated")));
        }
        out.file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .and_then(|()| out.sync_all())
            .map_err(|e| Error::io("write", &dest, e))?;
        self.files.push(rel.to_path_buf());
        Ok(())
    }

    /// Read the gzip stream to its end so a truncated or corrupt one (CRC, length) is
    /// caught, and refuse large trailing data.
    fn check_trailing(&self, mut rest: impl Read) -> Result<()> {
        let trailing = std::io::copy(&mut (&mut rest).take(MAX_TRAILING), &mut std::io::sink())
            .map_err(|e| self.archive_err(e))?;
        if trailing >= MAX_TRAILING {
            return Err(self.invalid("unexpected data after the end of the archive".into()));
        }
        Ok(())
    }

    /// The required file (the binary) must be there; then every directory made is synced,
    /// deepest first.
    fn finish(self) -> Result<Vec<PathBuf>> {
        if let Some(req) = self.required {
            if !self.files.iter().any(|f| f == Path::new(req)) {
                return Err(self.invalid(format!("no `{req}` file at the top level")));
            }
        }
        for d in self.dirs.iter().rev() {
            fsx::fsync_dir(d)?;
        }
        Ok(self.files)
    }
}

/// Create `rel` (normal components only) and its parents under `root`, mode 0755.
fn create_dirs_in(root: &Path, rel: &Path, made: &mut Vec<PathBuf>) -> Result<()> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs_err::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                return Err(Error::usage(
                    format!(
                        "archive entry {} is both a file and a directory",
                        cur.display()
                    ),
                    "the tarball is not a genuine outpost release: nothing was installed",
                ))
            }
            Err(_) => {
                fs_err::create_dir(&cur).map_err(|e| Error::io("create directory", &cur, e))?;
                fs_err::set_permissions(&cur, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| Error::io("chmod", &cur, e))?;
                made.push(cur.clone());
            }
        }
    }
    Ok(())
}

/// Move a fully extracted `staging` directory to `versions_dir/V`, atomically: readers see
/// no version, or the whole new one. If `versions/V` already exists with identical content
/// it is kept (and staging removed); if it differs it is swapped out atomically
/// (`renameat2(RENAME_EXCHANGE)`) and the old copy removed. Returns the final path.
pub fn install_version(
    staging: &Path,
    versions_dir: &Path,
    version: &semver::Version,
) -> Result<PathBuf> {
    let dest = versions_dir.join(version.to_string());
    let exists = match fs_err::symlink_metadata(&dest) {
        Ok(m) if m.is_dir() => true,
        Ok(_) => {
            return Err(Error::usage(
                format!("{} exists and is not a directory", dest.display()),
                format!("remove {} and try again", dest.display()),
            ))
        }
        Err(_) => false,
    };
    let cross_device = |e: std::io::Error| {
        if e.raw_os_error() == Some(18) {
            Error::usage(
                format!(
                    "staging {} is on another filesystem than {}",
                    staging.display(),
                    versions_dir.display()
                ),
                "stage the release inside the versions directory (extract::staging_dir_for)",
            )
        } else {
            Error::io("rename", staging, e)
        }
    };
    if !exists {
        fs_err::rename(staging, &dest).map_err(cross_device)?;
        fsx::fsync_dir(versions_dir)?;
        return Ok(dest);
    }
    if same_tree(staging, &dest)? {
        fs_err::remove_dir_all(staging).map_err(|e| Error::io("remove", staging, e))?;
        return Ok(dest);
    }
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        staging,
        rustix::fs::CWD,
        &dest,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(|e| cross_device(std::io::Error::from(e)))?;
    fsx::fsync_dir(versions_dir)?;
    // staging now holds the old copy.
    fs_err::remove_dir_all(staging).map_err(|e| Error::io("remove", staging, e))?;
    Ok(dest)
}

/// Same regular files (bytes and mode) and directories, nothing else.
fn same_tree(a: &Path, b: &Path) -> Result<bool> {
    fn list(
        root: &Path,
        rel: &Path,
        out: &mut Vec<(PathBuf, Option<(u32, String)>)>,
    ) -> Result<bool> {
        let dir = root.join(rel);
        let mut entries: Vec<_> = fs_err::read_dir(&dir)
            .map_err(|e| Error::io("read directory", &dir, e))?
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io("read directory", &dir, e))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            let m = fs_err::symlink_metadata(e.path())
                .map_err(|err| Error::io("stat", &e.path(), err))?;
            if m.is_dir() {
                out.push((r.clone(), None));
                if !list(root, &r, out)? {
                    return Ok(false);
                }
            } else if m.is_file() {
                out.push((
                    r,
                    Some((
                        m.permissions().mode() & 0o7777,
                        fsx::sha256_file(&e.path())?,
                    )),
                ));
            } else {
                return Ok(false);
            }
        }
        Ok(true)
    }
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    Ok(list(a, Path::new(""), &mut la)? && list(b, Path::new(""), &mut lb)? && la == lb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Clone)]
    enum E {
        File(&'static str, &'static [u8], u32),
        Dir(&'static str),
        Raw(tar::EntryType, &'static str, Option<&'static str>),
    }

    /// Build a .tar.gz with raw header paths (bypassing tar's own path checks).
    fn build(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            let (path, data, mode, kind, link): (&str, &[u8], u32, tar::EntryType, Option<&str>) =
                match e {
                    E::File(p, d, m) => (p, d, *m, tar::EntryType::Regular, None),
                    E::Dir(p) => (p, b"", 0o755, tar::EntryType::Directory, None),
                    E::Raw(k, p, l) => (p, b"", 0o644, *k, *l),
                };
            // Write the name bytes directly: set_path refuses `..` and absolute paths.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_entry_type(kind);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn good() -> Vec<E> {
        vec![
            E::File("outpost", b"\x7fELF", 0o755),
            E::File("LICENSE", b"license", 0o644),
            E::File("README.md", b"readme", 0o600),
        ]
    }

    fn tree(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = walk(dir)
            .into_iter()
            .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
            .collect();
        v.sort();
        v
    }
    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = vec![];
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.clone());
            if p.symlink_metadata().unwrap().is_dir() {
                out.extend(walk(&p));
            }
        }
        out
    }

    #[test]
    fn good_tarball_extracts_with_fixed_modes() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("r.tar.gz");
        let mut entries = good();
        entries.push(E::Dir("./doc/"));
        entries.push(E::File("doc/x/notes.txt", b"n", 0o777));
        std::fs::write(&t, build(&entries)).unwrap();
        let staging = d.path().join("stage");
        let files = extract_tarball(&t, &staging, &ExtractLimits::default()).unwrap();
        assert_eq!(files.len(), 4);
        let mode = |p: &str| {
            std::fs::metadata(staging.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("outpost"), 0o755);
        assert_eq!(mode("LICENSE"), 0o644);
        assert_eq!(mode("README.md"), 0o644);
        assert_eq!(mode("doc/x/notes.txt"), 0o755);
        assert_eq!(std::fs::read(staging.join("outpost")).unwrap(), b"\x7fELF");
    }

    #[test]
    fn hostile_tarballs_refused_nothing_written_outside_staging() {
        let mut oversize = good();
        oversize.push(E::File("big", &[0u8; 2000], 0o644));
        let many: Vec<E> = good()
            .into_iter()
            .chain((0..70).map(|_| E::Dir("d/")))
            .collect();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "dotdot",
                build(&[
                    E::File("outpost", b"x", 0o755),
                    E::File("../escape", b"x", 0o644),
                ]),
                "`..`",
            ),
            (
                "nested dotdot",
                build(&[
                    E::File("outpost", b"x", 0o755),
                    E::File("a/../../escape", b"x", 0o644),
                ]),
                "`..`",
            ),
            (
                "absolute",
                build(&[
                    E::File("outpost", b"x", 0o755),
                    E::File("/tmp/outpost-escape-abs", b"x", 0o644),
                ]),
                "absolute",
            ),
            (
                "symlink",
                build(&[E::Raw(
                    tar::EntryType::Symlink,
                    "outpost",
                    Some("/etc/passwd"),
                )]),
                "symlink",
            ),
            (
                "symlink then write through",
                build(&[
                    E::Raw(tar::EntryType::Symlink, "d", Some("..")),
                    E::File("d/escape", b"x", 0o644),
                ]),
                "symlink",
            ),
            (
                "hardlink",
                build(&[
                    E::File("outpost", b"x", 0o755),
                    E::Raw(tar::EntryType::Link, "h", Some("/etc/shadow")),
                ]),
                "hardlink",
            ),
            (
                "char device",
                build(&[E::Raw(tar::EntryType::Char, "null", None)]),
                "device node",
            ),
            (
                "block device",
                build(&[E::Raw(tar::EntryType::Block, "sda", None)]),
                "device node",
            ),
            (
                "fifo",
                build(&[E::Raw(tar::EntryType::Fifo, "pipe", None)]),
                "fifo",
            ),
            ("oversize", build(&oversize), "more than the 1000 allowed"),
            ("too many entries", build(&many), "more than 64 entries"),
            (
                "duplicate",
                build(&[
                    E::File("outpost", b"x", 0o755),
                    E::File("outpost", b"y", 0o755),
                ]),
                "appears twice",
            ),
            (
                "no binary",
                build(&[E::File("LICENSE", b"x", 0o644)]),
                "no `outpost`",
            ),
            (
                "truncated gzip",
                {
                    let g = build(&good());
                    g[..g.len() - 12].to_vec()
                },
                "invalid archive",
            ),
            (
                "truncated gzip mid-entry",
                {
                    let g = build(&good());
                    g[..g.len() / 2].to_vec()
                },
                "invalid archive",
            ),
            (
                "corrupt crc",
                {
                    let mut g = build(&good());
                    let n = g.len();
                    g[n - 6] ^= 0xff;
                    g
                },
                "invalid archive",
            ),
            (
                "not gzip",
                b"plain text, not an archive".to_vec(),
                "invalid archive",
            ),
        ];
        let limits = ExtractLimits {
            max_entries: 64,
            max_entry_bytes: 1000,
            max_total_bytes: 1 << 20,
        };
        for (name, bytes, why) in cases {
            let d = tempfile::tempdir().unwrap();
            let root = d.path().join("root");
            std::fs::create_dir(&root).unwrap();
            let t = d.path().join("r.tar.gz");
            std::fs::write(&t, &bytes).unwrap();
            let staging = root.join("stage");
            let err = extract_tarball(&t, &staging, &limits)
                .expect_err(name)
                .to_string();
            assert!(err.contains(why), "{name}: {err}");
            assert!(!staging.exists(), "{name}: staging left behind");
            assert!(tree(&root).is_empty(), "{name}: wrote {:?}", tree(&root));
            assert_eq!(tree(d.path()), ["r.tar.gz", "root"], "{name}");
        }
        assert!(!Path::new("/tmp/outpost-escape-abs").exists());
    }

    #[test]
    fn refused_type_table() {
        use tar::EntryType as T;
        let cases = [
            (T::Regular, None),
            (T::Directory, None),
            (T::Symlink, Some("is a symlink")),
            (T::Link, Some("is a hardlink")),
            (T::Char, Some("is a device node")),
            (T::Block, Some("is a device node")),
            (T::Fifo, Some("is a fifo")),
            (T::Continuous, Some("is not a regular file or directory")),
            (T::GNULongName, Some("is not a regular file or directory")),
            (T::XHeader, Some("is not a regular file or directory")),
        ];
        for (kind, want) in cases {
            assert_eq!(refused_type(kind), want, "{kind:?}");
        }
    }

    #[test]
    fn file_mode_table() {
        for (archive, want) in [
            (0o755, 0o755),
            (0o100, 0o755),
            (0o001, 0o755),
            (0o4755, 0o755),
            (0o644, 0o644),
            (0o600, 0o644),
            (0o7666, 0o644),
            (0, 0o644),
        ] {
            assert_eq!(file_mode(archive), want, "{archive:o}");
        }
    }

    /// Entries, bytes per entry and bytes in total, each against its cap.
    #[test]
    fn caps_table() {
        let limits = ExtractLimits {
            max_entries: 3,
            max_entry_bytes: 10,
            max_total_bytes: 25,
        };
        // sizes of successive entries -> index that fails and why, or None
        type Fails<'a> = Option<(usize, &'a str)>;
        let cases: &[(&[u64], Fails)] = &[
            (&[10, 10, 5], None),
            (&[0, 0, 0, 0], Some((3, "more than 3 entries"))),
            (&[11], Some((0, "is 11 bytes, more than the 10 allowed"))),
            (&[10, 10, 6], Some((2, "more than 25 bytes in total"))),
        ];
        for (sizes, want) in cases {
            let t = Path::new("r.tar.gz");
            let mut x = Extraction::new(t, Path::new("stage"), &limits, Some(BINARY));
            let failed = sizes.iter().enumerate().find_map(|(i, size)| {
                x.count_entry()
                    .and_then(|()| x.count_bytes("e", *size))
                    .err()
                    .map(|e| (i, e.to_string()))
            });
            match (failed, want) {
                (None, None) => {}
                (Some((i, err)), Some((at, why))) => {
                    assert_eq!(i, *at, "{sizes:?}: {err}");
                    assert!(err.contains(why), "{sizes:?}: {err}");
                }
                (got, want) => panic!("{sizes:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn trailing_data_table() {
        let limits = ExtractLimits::default();
        let x = Extraction::new(Path::new("r.tar.gz"), Path::new("s"), &limits, Some(BINARY));
        let n = MAX_TRAILING as usize;
        for (len, ok) in [
            (0, true),
            (1024, true),
            (n - 1, true),
            (n, false),
            (n + 1, false),
        ] {
            let r = x.check_trailing(std::io::Cursor::new(vec![0u8; len]));
            assert_eq!(r.is_ok(), ok, "{len}");
        }
    }

    #[test]
    fn finish_needs_the_binary_at_the_top() {
        let d = tempfile::tempdir().unwrap();
        let limits = ExtractLimits::default();
        for (files, ok) in [
            (vec!["outpost"], true),
            (vec!["LICENSE", "outpost"], true),
            (vec!["LICENSE"], false),
            (vec!["bin/outpost"], false),
            (vec![], false),
        ] {
            let mut x = Extraction::new(Path::new("r.tar.gz"), d.path(), &limits, Some(BINARY));
            x.files = files.iter().map(PathBuf::from).collect();
            let r = x.finish();
            assert_eq!(r.is_ok(), ok, "{files:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("no `outpost` file"), "{e}");
            }
        }
    }

    #[test]
    fn safe_rel_path_table() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"outpost", Some("outpost")),
            (b"./outpost", Some("outpost")),
            (b"a//b/", Some("a/b")),
            (b"../x", None),
            (b"/abs", None),
            (b"a/../b", None),
            (b"\xff", None),
        ];
        for (raw, want) in cases {
            let got = safe_rel_path(raw).ok().map(|p| p.display().to_string());
            assert_eq!(got.as_deref(), *want, "{raw:?}");
        }
    }

    #[test]
    fn install_version_is_atomic_and_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let versions = d.path().join("versions");
        std::fs::create_dir(&versions).unwrap();
        let t = d.path().join("r.tar.gz");
        std::fs::write(&t, build(&good())).unwrap();
        let v = semver::Version::new(1, 2, 3);
        let stage = |n: &str| {
            let s = staging_dir_for(&versions, &v).with_extension(n);
            extract_tarball(&t, &s, &ExtractLimits::default()).unwrap();
            s
        };
        let s1 = stage("a");
        let dest = install_version(&s1, &versions, &v).unwrap();
        assert_eq!(dest, versions.join("1.2.3"));
        assert_eq!(
            tree(&versions),
            ["1.2.3", "1.2.3/LICENSE", "1.2.3/README.md", "1.2.3/outpost"]
        );
        // identical content: kept, same inode, staging removed
        let ino =
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dest.join("outpost")).unwrap());
        let s2 = stage("b");
        install_version(&s2, &versions, &v).unwrap();
        assert!(!s2.exists());
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dest.join("outpost")).unwrap()),
            ino
        );
        // different content: swapped in whole, old copy gone
        std::fs::write(dest.join("LICENSE"), b"tampered").unwrap();
        let s3 = stage("c");
        install_version(&s3, &versions, &v).unwrap();
        assert_eq!(std::fs::read(dest.join("LICENSE")).unwrap(), b"license");
        assert_eq!(tree(&versions).len(), 4);
    }
}
