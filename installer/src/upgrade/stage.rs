//! The real [`super::Stager`]: the signed release host (or a directory / offline bundle),
//! through `outpost-packaging`'s fetch → verify → extract.
use crate::error::{Error, Result};
use outpost_packaging::{
    extract, fetch_manifest, fetch_release, ExtractLimits, ReplayState, Source, TrustedKeys, Want,
};
use semver::Version;
use std::path::{Path, PathBuf};

/// The target triple of this build (what `install.sh` and the manifest call it).
pub fn this_target() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "aarch64-unknown-linux-musl",
        _ => "x86_64-unknown-linux-musl",
    }
}

pub struct ReleaseStager {
    pub source: Source,
    pub keys: TrustedKeys,
    pub replay: ReplayState,
    pub target: String,
}

fn pkg_err(e: outpost_packaging::Error) -> Error {
    let hint = e.hint();
    Error::failed(e.to_string(), hint)
}

impl ReleaseStager {
    /// From config (`[release] url`, `public_keys`, `ca_file`) or an explicit source; the replay
    /// state lives in the state dir.
    pub fn from_config(
        config: &outpost_agent::Config,
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
        Ok(ReleaseStager {
            source,
            keys,
            replay: ReplayState::at(state_dir.join("release-replay")),
            target: this_target().to_string(),
        })
    }
}

impl super::Stager for ReleaseStager {
    fn newest(&self, channel: &str) -> Result<Option<Version>> {
        let m = fetch_manifest(&self.source, &self.keys, &self.replay).map_err(pkg_err)?;
        Ok(m.channels.get(channel).cloned())
    }

    fn stage(&self, version: &Version, versions_dir: &Path) -> Result<PathBuf> {
        let dest = versions_dir.join(version.to_string());
        if dest.join("outpost").is_file() {
            // Kept from an earlier install or upgrade, verified when it was staged.
            return Ok(dest);
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
