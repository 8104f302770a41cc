//! `config.toml`: the operator's file. outpost reads it and never rewrites it.
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Parsed configuration. Unknown keys are refused so that a typo is reported, not ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentSection,
    pub hub: HubSection,
    pub release: ReleaseSection,
    pub upgrade: UpgradeSection,
    /// Supervised workloads declared on the host: started by the agent at boot, with or
    /// without a hub (docs/WORKLOADS.md).
    #[serde(rename = "workload", skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadSection>,
}

/// `[[workload]]`: a supervised action of an installed pack, with its parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSection {
    /// 1-40 of a-z 0-9 -: the workload's run is `w-<name>`.
    pub name: String,
    /// `PACK/ACTION`.
    pub action: String,
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, String>,
}

impl WorkloadSection {
    /// The run id of this workload.
    pub fn run_id(&self) -> String {
        format!("w-{}", self.name)
    }
    /// `(pack, action)`.
    pub fn target(&self) -> Option<(&str, &str)> {
        self.action.split_once('/')
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// Seconds between the agent's "alive" log lines.
    pub log_interval_secs: u64,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            log_interval_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubSection {
    /// Control-plane base URL (`https://hub.example.com`).
    pub url: Option<String>,
    /// Heartbeat interval used until the hub states its own (the hub's `interval_secs` always
    /// wins). Default 30 s, the protocol's default.
    pub heartbeat_secs: Option<u64>,
    /// Allow a plain `http://` hub URL for a host other than loopback (the token and every
    /// heartbeat then cross the network unencrypted). Default false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
}

/// The protocol's default heartbeat interval.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 30;

impl HubSection {
    /// The configured hub URL, if any non-blank one.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref().map(str::trim).filter(|u| !u.is_empty())
    }

    pub fn initial_interval_secs(&self) -> u64 {
        self.heartbeat_secs.unwrap_or(DEFAULT_HEARTBEAT_SECS).max(1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReleaseSection {
    /// Release host base URL.
    pub url: Option<String>,
    /// Extra trusted minisign public keys (base64 lines), added to the built-in ones.
    pub public_keys: Vec<String>,
    /// PEM file with extra CA certificates for the release host and hub.
    pub ca_file: Option<PathBuf>,
    /// Release channel followed by `outpost upgrade` without `--target`.
    pub channel: String,
}

impl Default for ReleaseSection {
    fn default() -> Self {
        ReleaseSection {
            url: None,
            public_keys: Vec::new(),
            ca_file: None,
            channel: "stable".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpgradeSection {
    /// Seconds the new version must stay healthy before an upgrade is confirmed.
    pub soak_secs: u64,
    /// How many installed versions to keep for rollback.
    pub keep_versions: usize,
}

impl Default for UpgradeSection {
    fn default() -> Self {
        UpgradeSection {
            soak_secs: 5,
            keep_versions: 3,
        }
    }
}

/// Longest `[upgrade] soak_secs` accepted (one hour): the service is stopped for the start
/// timeout derived from it, so an unbounded value would leave a host without a working agent.
pub const MAX_SOAK_SECS: u64 = 3600;

pub use crate::url::check_hub_url;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist")]
    Missing { path: PathBuf },
    #[error("cannot read config file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{message}")]
    Untrusted { message: String, hint: String },
}

/// Largest config file read (1 MiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl ConfigError {
    /// What the operator should do about it.
    pub fn hint(&self) -> String {
        match self {
            ConfigError::Missing { .. } => {
                "run `outpost install` to create it, or pass --config PATH".into()
            }
            ConfigError::Unreadable { path, .. } => format!(
                "check the permissions of {} (the service user must be able to read it)",
                path.display()
            ),
            ConfigError::Invalid { path, .. } => format!(
                "fix {} (see docs/CONFIG.md for the keys), then run the command again",
                path.display()
            ),
            ConfigError::Untrusted { hint, .. } => hint.clone(),
        }
    }
}

impl Config {
    /// The default file `install` writes: every key commented out with its default.
    pub const TEMPLATE: &'static str = include_str!("config.template.toml");

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            // toml's message is multi-line with a caret diagram; keep the first line plus location.
            message: one_line(&e.to_string()),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if c.upgrade.soak_secs > MAX_SOAK_SECS {
            return Err(invalid(format!(
                "[upgrade] soak_secs = {} is more than {MAX_SOAK_SECS}",
                c.upgrade.soak_secs
            )));
        }
        if let Some(url) = c.hub.url() {
            check_hub_url(url, c.hub.insecure_http)
                .map_err(|why| invalid(format!("[hub] url {url:?}: {why}")))?;
        }
        let mut names = std::collections::BTreeSet::new();
        for w in &c.workloads {
            let ok = !w.name.is_empty()
                && w.name.len() <= 40
                && w.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(invalid(format!(
                    "[[workload]] name {:?}: use 1-40 of a-z 0-9 -",
                    w.name
                )));
            }
            if !names.insert(w.name.as_str()) {
                return Err(invalid(format!(
                    "[[workload]] name {:?} appears twice",
                    w.name
                )));
            }
            if w.target().is_none_or(|(p, a)| p.is_empty() || a.is_empty()) {
                return Err(invalid(format!(
                    "[[workload]] {}: action {:?} is not PACK/ACTION",
                    w.name, w.action
                )));
            }
        }
        Ok(c)
    }

    /// Load a config that decides what root does (`outpost upgrade` trusts its release URL,
    /// keys and CA file): the file and its directories must pass
    /// [`crate::trust::check_trusted`] from `root` down.
    pub fn load_trusted(root: &Path, path: &Path) -> Result<Config, ConfigError> {
        match crate::trust::read_trusted_string(root, path, MAX_CONFIG_BYTES) {
            Ok(Some(text)) => Config::parse(&text, path),
            Ok(None) => Err(ConfigError::Missing {
                path: path.to_path_buf(),
            }),
            Err(e @ crate::trust::TrustError::Io { .. }) => Err(ConfigError::Unreadable {
                path: path.to_path_buf(),
                source: std::io::Error::other(strip_path_prefix(&e.to_string())),
            }),
            Err(e) => Err(ConfigError::Untrusted {
                hint: e.hint(),
                message: e.to_string(),
            }),
        }
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match fs_err::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::Missing {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => {
                return Err(ConfigError::Unreadable {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(e.kind(), strip_path_prefix(&e.to_string())),
                })
            }
        };
        Config::parse(&text, path)
    }
}

fn strip_path_prefix(s: &str) -> String {
    // fs-err messages read "failed to open file `/x`: Permission denied (os error 13)"; keep the cause.
    s.rsplit_once(": ")
        .map(|(_, c)| c.to_string())
        .unwrap_or_else(|| s.to_string())
}

fn one_line(msg: &str) -> String {
    let mut parts = msg.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = parts
        .next()
        .unwrap_or("parse error")
        .trim_end_matches(':')
        .to_string();
    let detail = parts
        .next_back()
        .filter(|l| !l.starts_with('|') && !l.starts_with('^'));
    match detail {
        Some(d) if d != first => format!("{first}: {d}"),
        _ => first,
    }
    .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_to_defaults() {
        let c = Config::parse(Config::TEMPLATE, Path::new("t")).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn table_of_inputs() {
        let cases: &[(&str, Result<u64, &str>)] = &[
            ("", Ok(60)),
            ("[agent]\nlog_interval_secs = 5\n", Ok(5)),
            ("[agent]\nlog_intervl_secs = 5\n", Err("unknown field")),
            ("[agent\n", Err("invalid")),
            ("[hub]\nurl = 3\n", Err("invalid type")),
            (
                "[[workload]]\nname = \"crawl\"\naction = \"wl/forever\"\nparams = { n = \"3\" }\n",
                Ok(60),
            ),
            ("[[workload]]\nname = \"Crawl\"\naction = \"wl/f\"\n", Err("use 1-40")),
            ("[[workload]]\nname = \"c\"\naction = \"forever\"\n", Err("not PACK/ACTION")),
            (
                "[[workload]]\nname = \"c\"\naction = \"a/b\"\n[[workload]]\nname = \"c\"\naction = \"a/b\"\n",
                Err("appears twice"),
            ),
            ("[[workload]]\nname = \"c\"\naction = \"a/b\"\nrounds = 1\n", Err("unknown field")),
        ];
        for (text, want) in cases {
            let got = Config::parse(text, Path::new("/etc/outpost/config.toml"));
            match (got, want) {
                (Ok(c), Ok(n)) => assert_eq!(c.agent.log_interval_secs, *n, "{text}"),
                (Err(e), Err(frag)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(frag), "{text:?}: {msg}");
                    assert!(!msg.contains('\n'), "one line: {msg}");
                    assert!(msg.contains("/etc/outpost/config.toml"));
                }
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn missing_and_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope.toml");
        assert!(matches!(Config::load(&p), Err(ConfigError::Missing { .. })));
        let d = dir.path().join("isdir.toml");
        std::fs::create_dir(&d).unwrap();
        assert!(matches!(
            Config::load(&d),
            Err(ConfigError::Unreadable { .. })
        ));
    }

    #[test]
    fn hub_url_is_checked_at_parse() {
        let p = Path::new("/etc/outpost/config.toml");
        let e = Config::parse("[hub]\nurl = \"http://hub.example.com\"\n", p).unwrap_err();
        assert!(e.to_string().contains("unencrypted"), "{e}");
        assert!(Config::parse(
            "[hub]\nurl = \"http://hub.example.com\"\ninsecure_http = true\n",
            p
        )
        .is_ok());
    }

    #[test]
    fn soak_is_bounded() {
        let p = Path::new("c.toml");
        assert!(Config::parse("[upgrade]\nsoak_secs = 3600\n", p).is_ok());
        let e = Config::parse("[upgrade]\nsoak_secs = 9223372036854775000\n", p).unwrap_err();
        assert!(e.to_string().contains("soak_secs"), "{e}");
    }
}
