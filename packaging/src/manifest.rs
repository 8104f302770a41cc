//! `manifest.json`: the signed index of a release host (see docs/RELEASES.md).
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The manifest format version this code reads and writes.
pub const SCHEMA: u32 = 1;
/// The targets outpost is released for.
pub const TARGETS: [&str; 2] = ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"];
/// The channels a manifest may carry.
pub const CHANNELS: [&str; 2] = ["stable", "beta"];
/// Largest manifest.json accepted (the real one is a few KiB per release).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    /// When the manifest was published (RFC 3339).
    pub generated_at: String,
    /// Unix seconds, strictly increasing with every publish; also in the signature's
    /// trusted comment. Clients refuse a manifest older than the newest they have seen.
    pub timestamp: u64,
    /// Channel name → version.
    pub channels: BTreeMap<String, semver::Version>,
    pub releases: Vec<Release>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: semver::Version,
    /// When this version was first published (RFC 3339).
    pub released_at: String,
    /// Target triple → artifact.
    pub artifacts: BTreeMap<String, Artifact>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Path relative to the release root: `vV/outpost-V-T.tar.gz`.
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

/// What to install: an exact version or a channel's current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    Exact(semver::Version),
    Channel(String),
}

impl std::str::FromStr for Want {
    type Err = Error;
    /// `1.2.3` or `v1.2.3` → exact; `stable`/`beta` → channel.
    fn from_str(s: &str) -> Result<Want> {
        let t = s.trim();
        if CHANNELS.contains(&t) {
            return Ok(Want::Channel(t.to_string()));
        }
        semver::Version::parse(t.strip_prefix('v').unwrap_or(t))
            .map(Want::Exact)
            .map_err(|e| {
                Error::usage(
                    format!("invalid version or channel {s:?}: {e}"),
                    "give a version like 1.2.3, or a channel: stable or beta",
                )
            })
    }
}

impl std::fmt::Display for Want {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Want::Exact(v) => write!(f, "{v}"),
            Want::Channel(c) => write!(f, "channel {c}"),
        }
    }
}

/// `vV/outpost-V-T.tar.gz`: the only artifact name a manifest may carry.
pub fn artifact_name(version: &semver::Version, target: &str) -> String {
    format!("v{version}/{}", tarball_file_name(version, target))
}

/// `outpost-V-T.tar.gz`.
pub fn tarball_file_name(version: &semver::Version, target: &str) -> String {
    format!("outpost-{version}-{target}.tar.gz")
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Manifest {
    /// Parse and validate; `location` names the file or URL in errors.
    pub fn parse(bytes: &[u8], location: &str) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| Error::Manifest {
            location: location.to_string(),
            detail: e.to_string(),
        })?;
        m.validate(location)?;
        Ok(m)
    }

    /// Pretty JSON with a trailing newline; releases sorted newest first.
    pub fn to_json(&self) -> Vec<u8> {
        let mut m = self.clone();
        m.releases.sort_by(|a, b| b.version.cmp(&a.version));
        // Invariant: the types hold only strings, integers and maps with string keys.
        let mut out = serde_json::to_vec_pretty(&m).expect("manifest serializes");
        out.push(b'\n');
        out
    }

    /// The format's rules: known schema, unique versions, well-formed artifacts whose names
    /// are exactly `vV/outpost-V-T.tar.gz` (so a manifest can never name a path outside the
    /// release), and channels that point at listed releases.
    pub fn validate(&self, location: &str) -> Result<()> {
        let bad = |detail: String| Error::Manifest {
            location: location.to_string(),
            detail,
        };
        if self.schema != SCHEMA {
            return Err(bad(format!(
                "schema {} is not supported (this outpost reads schema {SCHEMA}); upgrade outpost",
                self.schema
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.releases {
            if !seen.insert(&r.version) {
                return Err(bad(format!("version {} is listed twice", r.version)));
            }
            for (target, a) in &r.artifacts {
                let want = artifact_name(&r.version, target);
                if a.name != want {
                    return Err(bad(format!(
                        "artifact {:?} of {} should be named {want:?}",
                        a.name, r.version
                    )));
                }
                if !is_sha256_hex(&a.sha256) {
                    return Err(bad(format!(
                        "sha256 of {} is not 64 lowercase hex digits",
                        a.name
                    )));
                }
                if a.size == 0 || a.size > crate::fetch::MAX_TARBALL_BYTES {
                    return Err(bad(format!(
                        "size {} of {} is out of range",
                        a.size, a.name
                    )));
                }
            }
        }
        for (channel, v) in &self.channels {
            if !seen.contains(v) {
                return Err(bad(format!(
                    "channel {channel} points at {v}, which is not listed"
                )));
            }
        }
        Ok(())
    }

    /// The release `want` names: an exact version, or the channel's current version.
    pub fn pick(&self, want: &Want, location: &str) -> Result<&Release> {
        let version = match want {
            Want::Exact(v) => v,
            Want::Channel(c) => self.channels.get(c).ok_or_else(|| Error::NoSuchRelease {
                wanted: want.to_string(),
                location: location.to_string(),
            })?,
        };
        self.release(version).ok_or_else(|| Error::NoSuchRelease {
            wanted: want.to_string(),
            location: location.to_string(),
        })
    }

    pub fn release(&self, version: &semver::Version) -> Option<&Release> {
        self.releases.iter().find(|r| &r.version == version)
    }

    /// Newest version listed (any channel).
    pub fn newest(&self) -> Option<&Release> {
        self.releases
            .iter()
            .max_by(|a, b| a.version.cmp(&b.version))
    }
}

impl Release {
    pub fn artifact(&self, target: &str) -> Result<&Artifact> {
        self.artifacts.get(target).ok_or_else(|| Error::NoArtifact {
            version: self.version.to_string(),
            target: target.to_string(),
        })
    }
}

/// The target triple of the running binary's release artifacts, if outpost is released for it.
pub fn current_target() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Some(TARGETS[0]),
        "aarch64" => Some(TARGETS[1]),
        _ => None,
    }
}

pub use outpost_core::time::{rfc3339_secs, rfc3339_unix as rfc3339};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let v = |s: &str| semver::Version::parse(s).unwrap();
        let rel = |s: &str| Release {
            version: v(s),
            released_at: "2024-01-01T00:00:00Z".into(),
            artifacts: TARGETS
                .iter()
                .map(|t| {
                    (
                        t.to_string(),
                        Artifact {
                            name: artifact_name(&v(s), t),
                            sha256: "ab".repeat(32),
                            size: 10,
                        },
                    )
                })
                .collect(),
        };
        Manifest {
            schema: SCHEMA,
            generated_at: rfc3339(1_700_000_000),
            timestamp: 1_700_000_000,
            channels: [
                ("stable".to_string(), v("1.0.0")),
                ("beta".to_string(), v("1.1.0-rc.1")),
            ]
            .into_iter()
            .collect(),
            releases: vec![rel("1.0.0"), rel("1.1.0-rc.1"), rel("0.9.0")],
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let json = m.to_json();
        let back = Manifest::parse(&json, "m").unwrap();
        assert_eq!(back.timestamp, m.timestamp);
        assert_eq!(back.channels, m.channels);
        // serialized newest first
        let versions: Vec<String> = back
            .releases
            .iter()
            .map(|r| r.version.to_string())
            .collect();
        assert_eq!(versions, ["1.1.0-rc.1", "1.0.0", "0.9.0"]);
        assert_eq!(back.to_json(), json);
    }

    #[test]
    fn pick_table() {
        let m = sample();
        let cases = [
            ("stable", Some("1.0.0")),
            ("beta", Some("1.1.0-rc.1")),
            ("0.9.0", Some("0.9.0")),
            ("v1.0.0", Some("1.0.0")),
            ("2.0.0", None),
        ];
        for (want, expect) in cases {
            let w: Want = want.parse().unwrap();
            let got = m.pick(&w, "m").ok().map(|r| r.version.to_string());
            assert_eq!(got.as_deref(), expect, "{want}");
        }
        assert!("nightly".parse::<Want>().is_err());
        let r = m.pick(&Want::Channel("stable".into()), "m").unwrap();
        assert_eq!(
            r.artifact(TARGETS[1]).unwrap().name,
            "v1.0.0/outpost-1.0.0-aarch64-unknown-linux-musl.tar.gz"
        );
        assert!(matches!(
            r.artifact("mips-unknown-linux-musl"),
            Err(Error::NoArtifact { .. })
        ));
    }

    #[test]
    fn invalid_manifests_refused() {
        type Mutate = fn(&mut Manifest);
        let cases: &[(&str, Mutate)] = &[
            ("schema", |m| m.schema = 2),
            ("path escape", |m| {
                m.releases[0].artifacts.get_mut(TARGETS[0]).unwrap().name =
                    "../../etc/passwd".into()
            }),
            ("wrong version dir", |m| {
                m.releases[0].artifacts.get_mut(TARGETS[0]).unwrap().name =
                    "v0.9.0/outpost-1.0.0-x86_64-unknown-linux-musl.tar.gz".into()
            }),
            ("bad sha", |m| {
                m.releases[0].artifacts.get_mut(TARGETS[0]).unwrap().sha256 = "XYZ".into()
            }),
            ("zero size", |m| {
                m.releases[0].artifacts.get_mut(TARGETS[0]).unwrap().size = 0
            }),
            ("huge size", |m| {
                m.releases[0].artifacts.get_mut(TARGETS[0]).unwrap().size = 1 << 40
            }),
            ("duplicate", |m| {
                let r = m.releases[0].clone();
                m.releases.push(r)
            }),
            ("dangling channel", |m| {
                m.channels
                    .insert("stable".into(), semver::Version::new(9, 9, 9));
            }),
        ];
        for (name, mutate) in cases {
            let mut m = sample();
            mutate(&mut m);
            let json = serde_json::to_vec(&m).unwrap();
            let err = Manifest::parse(&json, "https://h/manifest.json").unwrap_err();
            assert!(matches!(err, Error::Manifest { .. }), "{name}: {err}");
            assert!(
                err.to_string().contains("https://h/manifest.json"),
                "{name}: {err}"
            );
        }
        assert!(Manifest::parse(b"{not json", "m").is_err());
        assert!(Manifest::parse(&sample().to_json(), "m").is_ok());
    }

    #[test]
    fn rfc3339_format() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
