//! The agent's catalog: the packs the host's admin installed (`<config dir>/packs`), loaded
//! at start and on every reload (SIGHUP), advertised to the hub with each heartbeat.
//!
//! In system mode the packs are root's: every entry must be owned by root and writable by
//! nobody else, or the pack is refused (the agent, or a run, could otherwise change what the
//! admin allowed). In user mode they are the user's. A refused pack is left out of the
//! catalog, logged with its rule and recorded in the journal; the others still load.
use crate::log;
use outpost_core::journal::Journal;
use outpost_pack::store;
use outpost_pack::Pack;
use outpost_proto::{ActionAdvert, PackAdvert, ParamAdvert};
use std::path::Path;

/// The agent's journal kind for a pack that did not load.
pub const PACK_REFUSED: &str = "pack_refused";

#[derive(Debug, Default)]
pub struct Catalog {
    pub packs: Vec<Pack>,
    /// Directory name and why it was refused.
    pub refused: Vec<(String, String)>,
}

/// Who must own the packs of an agent in `mode` running as `euid`.
pub fn owner(mode: &str, euid: u32) -> u32 {
    if mode == "system" {
        0
    } else {
        euid
    }
}

/// Load every pack under `config_dir/packs`.
pub fn load(config_dir: &Path, mode: &str) -> Catalog {
    let uid = owner(mode, rustix::process::geteuid().as_raw());
    let dir = store::packs_dir(config_dir);
    let mut c = Catalog::default();
    match store::installed(&dir, Some(uid)) {
        Ok(list) => {
            for (name, r) in list {
                match r {
                    Ok(p) => c.packs.push(p),
                    Err(e) => c.refused.push((name, e.to_string())),
                }
            }
        }
        Err(e) => c.refused.push((dir.display().to_string(), e.to_string())),
    }
    c
}

/// Log and journal the refusals of a fresh load.
pub fn report(c: &Catalog, journal: &Journal) {
    for (name, why) in &c.refused {
        log::warn(
            &format!("pack {name} refused: {why}"),
            "fix it and run `sudo outpost pack install DIR` again (`outpost pack validate DIR` shows the rule)",
        );
        let _ = journal.append(
            PACK_REFUSED,
            serde_json::json!({"pack": name, "reason": why}),
        );
    }
    log::info(&format!(
        "catalog: {} pack(s), {} action(s)",
        c.packs.len(),
        c.packs.iter().map(|p| p.actions.len()).sum::<usize>()
    ));
}

/// The catalog as the heartbeat carries it.
pub fn advert(c: &Catalog) -> Vec<PackAdvert> {
    c.packs
        .iter()
        .map(|p| {
            let cat = p.catalog();
            PackAdvert {
                name: cat.name,
                version: cat.version,
                sha256: cat.sha256,
                actions: cat
                    .actions
                    .into_iter()
                    .map(|a| ActionAdvert {
                        id: a.id,
                        description: a.description,
                        params: a
                            .params
                            .into_iter()
                            .map(|p| ParamAdvert {
                                name: p.name,
                                kind: p.kind,
                                required: p.required,
                            })
                            .collect(),
                        idempotent: a.idempotent,
                        privileged: a.privileged,
                    })
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn install(cfg: &Path, name: &str, mode: u32) {
        let d = store::packs_dir(cfg).join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("pack.toml"),
            format!("[pack]\nname = \"{name}\"\nversion = \"1.0.0\"\n[[action]]\nid = \"df\"\ncommand = [\"/usr/bin/df\"]\n"),
        )
        .unwrap();
        std::fs::set_permissions(d.join("pack.toml"), std::fs::Permissions::from_mode(mode))
            .unwrap();
    }

    #[test]
    fn loads_good_packs_and_refuses_writable_ones() {
        let cfg = tempfile::tempdir().unwrap();
        install(cfg.path(), "good", 0o644);
        install(cfg.path(), "loose", 0o666);
        let c = load(cfg.path(), "user");
        assert_eq!(c.packs.len(), 1);
        assert_eq!(c.packs[0].name, "good");
        assert_eq!(c.refused.len(), 1);
        assert!(c.refused[0].1.contains("writable"), "{:?}", c.refused);
        let ad = advert(&c);
        assert_eq!(ad[0].actions[0].id, "df");
        outpost_proto::validate_catalog(&ad).unwrap();
        let j = Journal::open(cfg.path());
        report(&c, &j);
        let recs = j.read_all().unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].kind, PACK_REFUSED);
        assert_eq!(recs[0].data["pack"], "loose");
    }

    #[test]
    fn no_pack_dir_is_an_empty_catalog() {
        let cfg = tempfile::tempdir().unwrap();
        let c = load(cfg.path(), "system");
        assert!(c.packs.is_empty() && c.refused.is_empty());
    }
}
