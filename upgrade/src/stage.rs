//! The real [`super::Stager`]: the signed release host (or a directory / offline bundle),
//! through `outpost-release`'s fetch → verify → extract.
use outpost_installer::error::{Error, Result};
use outpost_release::{
    extract, fetch_manifest, fetch_release, ExtractLimits, ReplayState, Source, TrustedKeys, Want,
};
use semver::Version;
use std::path::{Path, PathBuf};

pub use outpost_installer::install::this_target;

/// The replay state's file in root's state dir.
pub use outpost_core::layout::files::RELEASE_REPLAY as REPLAY_FILE;

pub struct ReleaseStager {
    pub source: Source,
    pub keys: TrustedKeys,
    pub replay: ReplayState,
    pub target: String,
}

fn pkg_err(e: outpost_release::Error) -> Error {
    Error::from(e)
}

impl ReleaseStager {
    /// From config (`[release] url`, `public_keys`, `ca_file`) or an explicit source; the replay
    /// state lives in the state dir.
    pub fn from_config(
        config: &outpost_core::Config,
        from: Option<&str>,
        state_dir: &Path,
    ) -> Result<ReleaseStager> {
        let url = from
            .map(str::to_string)
            .or_else(|| config.release.url.clone())
            .ok_or_else(|| {
                Error::usage(
                    "no release source: [release] url is not set in the config",
                    "set [release] url in config.toml, or pass --from URL|DIR|BUNDLE",
                )
            })?;
        let source = Source::parse(&url)
            .map_err(pkg_err)?
            .with_ca_file(config.release.ca_file.clone());
        Ok(ReleaseStager {
            source,
            keys: trusted_keys(config)?,
            replay: ReplayState::at(state_dir.join(REPLAY_FILE)),
            target: this_target()?.to_string(),
        })
    }
}

/// The host's trusted release keys: the compiled-in ones plus `[release] public_keys` of
/// `config` (loaded with [`outpost_core::Config::load_trusted`]: root-owned, StrictModes).
/// What `outpost upgrade` verifies releases with, and `outpost pack install` pack releases.
/// No key at all is refused (fail closed).
pub fn trusted_keys(config: &outpost_core::Config) -> Result<TrustedKeys> {
    let mut keys = TrustedKeys::builtin();
    for (i, k) in config.release.public_keys.iter().enumerate() {
        keys.add_text(k, &format!("config [release] public_keys[{i}]"))
            .map_err(|e| {
                Error::usage(
                    e.to_string(),
                    "fix [release] public_keys in config.toml (minisign public keys, base64)",
                )
            })?;
    }
    if keys.is_empty() {
        return Err(Error::failed(
            "no trusted release keys: this build has none compiled in and the config adds none",
            "add the release's minisign public key to [release] public_keys in config.toml",
        ));
    }
    Ok(keys)
}

impl super::Stager for ReleaseStager {
    fn newest(&self, channel: &str) -> Result<Option<Version>> {
        let m = fetch_manifest(&self.source, &self.keys, &self.replay).map_err(pkg_err)?;
        Ok(m.channels.get(channel).cloned())
    }

    fn stage(&self, version: &Version, versions_dir: &Path) -> Result<PathBuf> {
        // A kept `versions/V` is never trusted as it is: the release is fetched and verified
        // again, and `install_version` keeps the directory only when it is identical to the
        // verified one (else it is exchanged for it).
        let swept = sweep_stale(versions_dir);
        if !swept.is_empty() {
            eprintln!(
                "removed {} leftover staging director{} of interrupted upgrades",
                swept.len(),
                if swept.len() == 1 { "y" } else { "ies" }
            );
        }
        let download_dir = versions_dir.join(format!(".{version}.download-{}", std::process::id()));
        let result = (|| {
            let v = fetch_release(
                &self.source,
                &self.keys,
                &self.replay,
                &Want::Exact(version.clone()),
                &self.target,
                &download_dir,
            )
            .map_err(pkg_err)?;
            let staging = extract::staging_dir_for(versions_dir, version);
            extract::extract_tarball(&v.tarball_path, &staging, &ExtractLimits::default())
                .map_err(pkg_err)?;
            extract::install_version(&staging, versions_dir, version).map_err(pkg_err)
        })();
        let _ = fs_err::remove_dir_all(&download_dir); // best effort: only the verified tarball was in it
        result
    }
}

/// The pid in a staging or download name (`.V.staging-PID-NANOS`, `.V.download-PID`).
pub fn staging_pid(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let (_, rest) = name
        .rsplit_once(".staging-")
        .or_else(|| name.rsplit_once(".download-"))?;
    rest.split('-').next()?.parse().ok()
}

/// Remove staging and download directories left in `versions_dir` by upgraders that no
/// longer run (killed, power cut). Returns what was removed.
pub fn sweep_stale(versions_dir: &Path) -> Vec<PathBuf> {
    outpost_core::atomic::sweep_dead_writers(versions_dir, staging_pid, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_pid_table() {
        let cases = [
            (".1.2.0.staging-1234-5678", Some(1234)),
            (".1.2.0.download-99", Some(99)),
            (".1.2.0-rc.1.staging-7-1", Some(7)),
            ("1.2.0", None),
            (".1.2.0.outpost-tmp-5-6", None),
            (".x.staging-abc", None),
        ];
        for (name, want) in cases {
            assert_eq!(staging_pid(name), want, "{name}");
        }
    }

    #[test]
    fn sweep_removes_only_dead_upgraders_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let dead = d.path().join(".1.1.0.staging-4194300-1");
        let mine = d
            .path()
            .join(format!(".1.1.0.staging-{}-1", std::process::id()));
        let kept = d.path().join("1.1.0");
        for p in [&dead, &mine, &kept] {
            std::fs::create_dir(p).unwrap();
            std::fs::write(p.join("outpost"), "x").unwrap();
        }
        assert_eq!(sweep_stale(d.path()), vec![dead.clone()]);
        assert!(!dead.exists() && mine.exists() && kept.exists());
    }
}
