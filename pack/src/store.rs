//! The host's installed packs: `<config>/packs/<name>/` (root's in system mode), and the
//! admin's grants for privileged actions: `<config>/privileged/<name>` holding the tree hash
//! that was trusted. A pack whose hash drifted from its grant has no privileged action.
//!
//! Installing copies the tree into a hidden sibling, re-hashes the copy (so a source that
//! changes while it is copied is refused), then swaps it in with one rename (an exchange
//! when a version is already there), so the agent sees the old pack or the new one.
use crate::{load, Owner, Pack, PackError, MANIFEST};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The packs of a config dir.
pub fn packs_dir(config_dir: &Path) -> PathBuf {
    config_dir.join("packs")
}

/// The privileged grants of a config dir.
pub fn grants_dir(config_dir: &Path) -> PathBuf {
    config_dir.join("privileged")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One installed pack by its directory name, loaded or why not.
pub type Entry = (String, Result<Pack, PackError>);

/// Every installed pack, in name order, each loaded and checked (`owner`: see [`Owner`]).
/// A pack that fails is reported with its error; the others still load.
pub fn installed(packs_dir: &Path, owner: Owner) -> Result<Vec<Entry>, PackError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(packs_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(packs_dir)(e)),
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    for name in names {
        let dir = packs_dir.join(&name);
        let r = load(&dir, owner).and_then(|p| {
            if p.name == name {
                Ok(p)
            } else {
                Err(PackError::Manifest {
                    path: dir.join(MANIFEST),
                    detail: format!("names pack {:?} but is installed as {name:?}", p.name),
                })
            }
        });
        out.push((name, r));
    }
    Ok(out)
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    New,
    /// Replaced the pack with this hash.
    Replaced {
        old_sha256: String,
    },
    /// The same tree is already installed.
    Unchanged,
}

/// Copy `src` into `packs_dir/<name>` owned by `ids` (uid, gid; `None`: the caller),
/// directories 0755, files 0755 or 0644 by their executable bit.
pub fn install(
    src: &Pack,
    packs_dir: &Path,
    ids: Option<(u32, u32)>,
) -> Result<Installed, PackError> {
    let dest = packs_dir.join(&src.name);
    let trust = ids.map(|(u, _)| u);
    let old = match std::fs::symlink_metadata(&dest) {
        Ok(_) => Some(load(&dest, trust)?.sha256),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&dest)(e)),
    };
    if old.as_deref() == Some(src.sha256.as_str()) {
        return Ok(Installed::Unchanged);
    }
    fs_err::create_dir_all(packs_dir)
        .map_err(|e| io(packs_dir)(std::io::Error::new(e.kind(), e.to_string())))?;
    let tmp = packs_dir.join(format!(".{}.new-{}", src.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let staged = copy_tree(&src.root, &tmp, ids).and_then(|_| load(&tmp, trust));
    let staged = match staged {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if staged.sha256 != src.sha256 {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(PackError::Tree {
            root: src.root.clone(),
            entry: PathBuf::from("."),
            rule: "changed while it was being copied: nothing was installed".into(),
        });
    }
    if let Err(e) = set_owner_mode(&tmp, 0o755, ids) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let swapped = match old {
        Some(_) => rustix::fs::renameat_with(
            rustix::fs::CWD,
            &tmp,
            rustix::fs::CWD,
            &dest,
            rustix::fs::RenameFlags::EXCHANGE,
        ),
        None => rustix::fs::rename(&tmp, &dest),
    };
    if let Err(e) = swapped {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io(&dest)(e.into()));
    }
    // After an exchange `tmp` holds the old tree.
    let _ = std::fs::remove_dir_all(&tmp);
    outpost_core::atomic::fsync_dir(packs_dir).map_err(io(packs_dir))?;
    Ok(match old {
        Some(old_sha256) => Installed::Replaced { old_sha256 },
        None => Installed::New,
    })
}

fn copy_tree(from: &Path, to: &Path, ids: Option<(u32, u32)>) -> Result<(), PackError> {
    let mkdir = |p: &Path| -> Result<(), PackError> {
        std::fs::create_dir(p).map_err(io(p))?;
        set_owner_mode(p, 0o755, ids)
    };
    // The staging root stays 0700 until the copy is verified: if the source changed under
    // the copy (a directory swapped for a link to something only root may read), nobody
    // but root ever sees what was read, and the hash check below refuses it.
    std::fs::create_dir(to).map_err(io(to))?;
    set_owner_mode(to, 0o700, ids)?;
    for e in crate::walk(from, None)? {
        let (s, d) = (from.join(&e.path), to.join(&e.path));
        if e.dir {
            mkdir(&d)?;
            continue;
        }
        let mode = if e.executable { 0o755 } else { 0o644 };
        let bytes = crate::read_nofollow(&s).map_err(io(&s))?;
        outpost_core::atomic::write_atomic(&d, &bytes, mode, ids).map_err(io(&d))?;
    }
    Ok(())
}

fn set_owner_mode(p: &Path, mode: u32, ids: Option<(u32, u32)>) -> Result<(), PackError> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io(p))?;
    if let Some((u, g)) = ids {
        rustix::fs::chown(
            p,
            Some(rustix::process::Uid::from_raw(u)),
            Some(rustix::process::Gid::from_raw(g)),
        )
        .map_err(|e| io(p)(e.into()))?;
    }
    Ok(())
}

/// Remove `packs_dir/<name>` and its grant. Returns whether it was there.
pub fn remove(config_dir: &Path, name: &str) -> Result<bool, PackError> {
    let dest = packs_dir(config_dir).join(name);
    let grant = grants_dir(config_dir).join(name);
    match std::fs::remove_file(&grant) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&grant)(e)),
    }
    match std::fs::symlink_metadata(&dest) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
            Ok(true)
        }
        Ok(_) => {
            std::fs::remove_file(&dest).map_err(io(&dest))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(&dest)(e)),
    }
}

/// Grant `pack`'s privileged actions at its current hash.
pub fn grant_privileged(
    config_dir: &Path,
    pack: &Pack,
    ids: Option<(u32, u32)>,
) -> Result<(), PackError> {
    let dir = grants_dir(config_dir);
    fs_err::create_dir_all(&dir)
        .map_err(|e| io(&dir)(std::io::Error::new(e.kind(), e.to_string())))?;
    set_owner_mode(&dir, 0o755, ids)?;
    let path = dir.join(&pack.name);
    outpost_core::atomic::write_atomic(&path, format!("{}\n", pack.sha256).as_bytes(), 0o644, ids)
        .map_err(io(&path))
}

/// The hash `name`'s privileged actions were granted at, read like root reads what it acts
/// on (StrictModes from `root` down for `euid`: 0 for a system install, no links, bounded).
pub fn privileged_grant(
    root: &Path,
    config_dir: &Path,
    name: &str,
    euid: u32,
) -> Result<Option<String>, PackError> {
    let path = grants_dir(config_dir).join(name);
    match outpost_core::trust::read_trusted(root, &path, euid, 256) {
        Ok(None) => Ok(None),
        Ok(Some(b)) => Ok(Some(String::from_utf8_lossy(&b).trim().to_string())),
        Err(e) => Err(PackError::Tree {
            root: config_dir.to_path_buf(),
            entry: path.clone(),
            rule: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> (tempfile::TempDir, Pack) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join(MANIFEST),
            "[pack]\nname = \"p\"\nversion = \"1.0.0\"\n[[action]]\nid = \"a\"\ncommand = [\"run.sh\"]\n",
        )
        .unwrap();
        std::fs::write(d.path().join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            d.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let p = load(d.path(), None).unwrap();
        (d, p)
    }

    #[test]
    fn install_replace_unchanged_remove() {
        let me = rustix::process::geteuid().as_raw();
        let (s, p) = src();
        let cfg = tempfile::tempdir().unwrap();
        let pd = packs_dir(cfg.path());
        assert_eq!(install(&p, &pd, None).unwrap(), Installed::New);
        let got = installed(&pd, Some(me)).unwrap();
        assert_eq!(got.len(), 1);
        let loaded = got[0].1.as_ref().unwrap();
        assert_eq!(loaded.sha256, p.sha256, "the copy has the source's hash");
        let m = std::fs::metadata(pd.join("p/run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, 0o755, "modes are normalised");
        let root_mode = std::fs::metadata(pd.join("p"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(root_mode, 0o755, "the pack root is opened up once verified");
        assert_eq!(install(&p, &pd, None).unwrap(), Installed::Unchanged);
        std::fs::write(s.path().join("README"), "v2").unwrap();
        let p2 = load(s.path(), None).unwrap();
        assert_eq!(
            install(&p2, &pd, None).unwrap(),
            Installed::Replaced {
                old_sha256: p.sha256.clone()
            }
        );
        assert_eq!(std::fs::read_to_string(pd.join("p/README")).unwrap(), "v2");
        let left: Vec<_> = std::fs::read_dir(&pd)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["p"], "no staging left behind");
        grant_privileged(cfg.path(), &p2, None).unwrap();
        assert_eq!(
            privileged_grant(cfg.path(), cfg.path(), "p", me).unwrap(),
            Some(p2.sha256.clone())
        );
        assert!(remove(cfg.path(), "p").unwrap());
        assert!(!remove(cfg.path(), "p").unwrap());
        assert_eq!(
            privileged_grant(cfg.path(), cfg.path(), "p", me).unwrap(),
            None
        );
    }

    #[test]
    fn a_pack_under_another_name_is_reported() {
        let (_s, p) = src();
        let cfg = tempfile::tempdir().unwrap();
        let pd = packs_dir(cfg.path());
        install(&p, &pd, None).unwrap();
        std::fs::rename(pd.join("p"), pd.join("q")).unwrap();
        let got = installed(&pd, None).unwrap();
        let e = got[0].1.as_ref().unwrap_err();
        assert!(e.to_string().contains("installed as \"q\""), "{e}");
    }
}
