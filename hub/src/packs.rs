//! Pack trust: agents advertise their catalog (every pack with its tree hash) in heartbeats;
//! the hub keeps each agent's latest catalog and one trust record per (pack name, sha256),
//! `pending` from its first sighting until an admin trusts it. For one agent a pack is
//! `trusted` (that exact hash is trusted), `drifted` (another hash of the name is trusted)
//! or `pending` (no hash of the name is trusted). Dispatch (later) accepts trusted only.
//!
//! The functions here are pure: the store holds the records, the registry the catalogs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use outpost_proto::{AgentPack, CatalogState, PackAdvert, PackTrust, PackView};

use crate::state::rfc3339;
use crate::store::PackRow;

/// An agent's catalog as the hub keeps it, with the hash it is compared by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub packs: Vec<PackAdvert>,
    /// sha256 (hex) of the catalog's JSON: a heartbeat whose catalog has the same hash
    /// changes nothing and writes nothing.
    pub hash: String,
}

impl Catalog {
    pub fn new(packs: Vec<PackAdvert>) -> Catalog {
        let hash = catalog_hash(&packs);
        Catalog { packs, hash }
    }
}

/// sha256 hex of the catalog serialized as JSON (field order fixed by the type).
pub fn catalog_hash(packs: &[PackAdvert]) -> String {
    // Serializing plain structs of strings, bools and vectors cannot fail.
    let bytes = serde_json::to_vec(packs).unwrap_or_default();
    crate::token::hash_hex_bytes(&bytes)
}

/// Which hashes are trusted, by pack name.
#[derive(Debug, Default, Clone)]
pub struct TrustIndex {
    trusted: BTreeMap<String, BTreeSet<String>>,
}

impl TrustIndex {
    pub fn new(rows: &[PackRow]) -> TrustIndex {
        let mut trusted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.state == PackTrust::Trusted) {
            trusted
                .entry(r.name.clone())
                .or_default()
                .insert(r.sha256.clone());
        }
        TrustIndex { trusted }
    }

    /// The state of pack `name` at `sha256` on an agent advertising it.
    pub fn state(&self, name: &str, sha256: &str) -> CatalogState {
        match self.trusted.get(name) {
            Some(hashes) if hashes.contains(sha256) => CatalogState::Trusted,
            Some(hashes) if !hashes.is_empty() => CatalogState::Drifted,
            _ => CatalogState::Pending,
        }
    }
}

/// An agent's catalog with each pack's state.
pub fn agent_packs(catalog: &Catalog, index: &TrustIndex) -> Vec<AgentPack> {
    catalog
        .packs
        .iter()
        .map(|p| AgentPack {
            state: index.state(&p.name, &p.sha256),
            pack: p.clone(),
        })
        .collect()
}

/// How many of `catalogs` advertise each (name, sha256).
pub fn advertised<'a>(
    catalogs: impl IntoIterator<Item = &'a Arc<Catalog>>,
) -> BTreeMap<(String, String), u64> {
    let mut n: BTreeMap<(String, String), u64> = BTreeMap::new();
    for c in catalogs {
        for p in &c.packs {
            *n.entry((p.name.clone(), p.sha256.clone())).or_default() += 1;
        }
    }
    n
}

/// The API view of a trust record advertised by `agents` agents.
pub fn view(row: &PackRow, agents: u64) -> PackView {
    PackView {
        name: row.name.clone(),
        sha256: row.sha256.clone(),
        version: row.version.clone(),
        state: row.state,
        actions: row.actions.clone(),
        first_seen: rfc3339(row.first_seen_ms),
        first_seen_by: row.first_seen_by.clone(),
        trusted_at: row.trusted_at_ms.map(rfc3339),
        trusted_by: row.trusted_by.clone(),
        agents,
    }
}

/// Why a `packs trust NAME PREFIX` cannot name one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefixError {
    /// Not 12 to 64 hex digits.
    Malformed,
    Unknown,
    /// These full hashes all start with the prefix.
    Ambiguous(Vec<String>),
}

/// Shortest sha256 prefix `packs trust` accepts.
pub const MIN_PREFIX: usize = 12;

/// The one record of pack `name` whose sha256 starts with `prefix` (at least
/// [`MIN_PREFIX`] hex digits, any case).
pub fn resolve_prefix<'a>(
    packs: &'a [PackView],
    name: &str,
    prefix: &str,
) -> Result<&'a PackView, PrefixError> {
    let prefix = prefix.to_ascii_lowercase();
    if prefix.len() < MIN_PREFIX
        || prefix.len() > 64
        || !prefix.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(PrefixError::Malformed);
    }
    let hits: Vec<&PackView> = packs
        .iter()
        .filter(|p| p.name == name && p.sha256.starts_with(&prefix))
        .collect();
    match hits.as_slice() {
        [] => Err(PrefixError::Unknown),
        [one] => Ok(one),
        many => Err(PrefixError::Ambiguous(
            many.iter().map(|p| p.sha256.clone()).collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, sha: &str, state: PackTrust) -> PackRow {
        PackRow {
            name: name.into(),
            sha256: sha.into(),
            version: "1.0.0".into(),
            actions: Vec::new(),
            state,
            first_seen_ms: 0,
            first_seen_by: "a_1".into(),
            trusted_at_ms: None,
            trusted_by: None,
        }
    }

    #[test]
    fn states_of_an_agents_packs() {
        let rows = [
            row("web", "aa", PackTrust::Trusted),
            row("web", "bb", PackTrust::Pending),
            row("db", "cc", PackTrust::Pending),
            row("log", "dd", PackTrust::Trusted),
            row("log", "ee", PackTrust::Trusted),
        ];
        let ix = TrustIndex::new(&rows);
        #[rustfmt::skip]
        let cases = [
            ("web", "aa", CatalogState::Trusted),
            ("web", "bb", CatalogState::Drifted),
            ("web", "zz", CatalogState::Drifted),
            ("db",  "cc", CatalogState::Pending),
            ("new", "ff", CatalogState::Pending),
            ("log", "dd", CatalogState::Trusted),
            ("log", "ee", CatalogState::Trusted),
        ];
        for (name, sha, want) in cases {
            assert_eq!(ix.state(name, sha), want, "{name} {sha}");
        }
    }

    #[test]
    fn catalog_hash_follows_content() {
        let p = |sha: &str| PackAdvert {
            name: "web".into(),
            version: "1".into(),
            sha256: sha.into(),
            actions: Vec::new(),
        };
        assert_eq!(Catalog::new(vec![p("aa")]).hash, catalog_hash(&[p("aa")]));
        assert_ne!(catalog_hash(&[p("aa")]), catalog_hash(&[p("bb")]));
        assert_ne!(catalog_hash(&[]), catalog_hash(&[p("aa")]));
        assert_eq!(catalog_hash(&[]).len(), 64);
    }

    #[test]
    fn prefixes() {
        let v = |name: &str, sha: String| {
            view(
                &PackRow {
                    ..row(name, &sha, PackTrust::Pending)
                },
                0,
            )
        };
        let packs = [
            v("web", format!("0123456789ab{}", "0".repeat(52))),
            v("web", format!("0123456789ab{}", "1".repeat(52))),
            v("web", format!("fedcba987654{}", "2".repeat(52))),
            v("db", format!("0123456789ab{}", "3".repeat(52))),
        ];
        #[rustfmt::skip]
        let cases: [(&str, &str, Result<usize, PrefixError>); 7] = [
            ("web", "FEDCBA987654",       Ok(2)),
            ("web", "0123456789ab0",      Ok(0)),
            ("db",  "0123456789ab",       Ok(3)),
            ("web", "0123456789ab",       Err(PrefixError::Ambiguous(vec![packs[0].sha256.clone(), packs[1].sha256.clone()]))),
            ("web", "0123456789a",        Err(PrefixError::Malformed)),
            ("web", "0123456789ag",       Err(PrefixError::Malformed)),
            ("log", "0123456789ab",       Err(PrefixError::Unknown)),
        ];
        for (name, prefix, want) in cases {
            let got = resolve_prefix(&packs, name, prefix).map(|p| {
                packs
                    .iter()
                    .position(|q| q.sha256 == p.sha256 && q.name == p.name)
                    .unwrap()
            });
            assert_eq!(got, want, "{name} {prefix}");
        }
    }
}
