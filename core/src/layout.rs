//! Where everything lives, per mode. This is a contract: tests and docs rely on it.
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The names of the state files, relative to their directory ([`Layout::state_dir`] for
/// root's, [`Layout::agent_dir`] for the agent's). One list, so the installer, the upgrader
/// and the agent cannot disagree on a name.
pub mod files {
    /// Root's record of what it installed (state dir).
    pub const RECEIPT: &str = "receipt.json";
    /// The upgrade in flight (state dir).
    pub const UPGRADE_RECORD: &str = "upgrade.json";
    /// Where a record that does not parse is set aside (state dir).
    pub const UPGRADE_RECORD_CORRUPT: &str = "upgrade.json.corrupt";
    /// The newest signed manifest timestamp seen (state dir): the replay guard.
    pub const RELEASE_REPLAY: &str = "release-replay";
    /// The newest signed manifest timestamp seen per pack release, one file per pack name
    /// (a directory in the state dir): the pack replay guard.
    pub const PACK_RELEASE_REPLAY: &str = "pack-release-replay";
    /// The event journal (root's in the state dir, the agent's in the agent dir).
    pub const JOURNAL: &str = "events.jsonl";
    /// The agent's hub identity and token (agent dir).
    pub const IDENTITY: &str = "identity.json";
    /// The runner env file (`EnvironmentFile=` of the unit), in the config dir.
    pub const ENV_FILE: &str = "outpost.env";
    /// The enrollment nonce that makes a retried enrollment idempotent (agent dir).
    pub const ENROLL_NONCE: &str = "enroll-nonce";
    /// The agent's last heartbeat attempt (agent dir).
    pub const HEARTBEAT: &str = "heartbeat.json";
    /// Requests of the host's admin to the agent (`stop-<run id>`), in root's state dir.
    pub const CONTROL_DIR: &str = "control";
    /// The root-owned template unit privileged runs are admitted through (system mode).
    pub const PRIVILEGED_TEMPLATE: &str = "outpost-run-privileged@.service";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    System,
    User,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::System => "system",
            Mode::User => "user",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every path outpost manages, as seen by the target host (absolute, without the root
/// prefix). [`Layout::host`] maps one onto the filesystem root seam.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub mode: Mode,
    /// Filesystem root every path is resolved under (`/` in production, a temp dir in tests).
    #[serde(skip)]
    pub root: PathBuf,
    /// `/opt/outpost` or `~/.local/share/outpost`.
    pub base: PathBuf,
    /// `/usr/local/bin/outpost` or `~/.local/bin/outpost`.
    pub bin_link: PathBuf,
    pub config_dir: PathBuf,
    pub config_file: PathBuf,
    /// Secrets as `KEY=value` lines, mode 0600 (system mode only has a separate dir owner).
    pub env_file: PathBuf,
    /// Root's state (system mode: root-owned, 0755): the receipt, the upgrade record, the
    /// replay state and root's own journal. Nothing here is writable by the service user.
    pub state_dir: PathBuf,
    /// The agent's own writable state (`<state>/agent`, owned by the service user, 0700): its
    /// token, heartbeat state and journal. Root only ever reads it, without following links.
    pub agent_dir: PathBuf,
    pub unit_dir: PathBuf,
    pub unit_file: PathBuf,
    /// Hardening drop-in (system mode only).
    pub dropin_file: Option<PathBuf>,
}

impl Layout {
    pub fn system(root: &Path) -> Layout {
        let p = PathBuf::from;
        Layout {
            mode: Mode::System,
            root: root.to_path_buf(),
            base: p("/opt/outpost"),
            bin_link: p("/usr/local/bin/outpost"),
            config_dir: p("/etc/outpost"),
            config_file: p("/etc/outpost/config.toml"),
            env_file: p("/etc/outpost").join(files::ENV_FILE),
            state_dir: p("/var/lib/outpost"),
            agent_dir: p("/var/lib/outpost/agent"),
            unit_dir: p("/etc/systemd/system"),
            unit_file: p("/etc/systemd/system/outpost.service"),
            dropin_file: Some(p("/etc/systemd/system/outpost.service.d/10-hardening.conf")),
        }
    }

    /// User mode for the user whose home is `home` (absolute, as on the host).
    pub fn user(root: &Path, home: &Path) -> Layout {
        let h = |s: &str| home.join(s);
        Layout {
            mode: Mode::User,
            root: root.to_path_buf(),
            base: h(".local/share/outpost"),
            bin_link: h(".local/bin/outpost"),
            config_dir: h(".config/outpost"),
            config_file: h(".config/outpost/config.toml"),
            env_file: h(".config/outpost").join(files::ENV_FILE),
            state_dir: h(".local/state/outpost"),
            agent_dir: h(".local/state/outpost/agent"),
            unit_dir: h(".config/systemd/user"),
            unit_file: h(".config/systemd/user/outpost.service"),
            dropin_file: None,
        }
    }

    pub fn versions_dir(&self) -> PathBuf {
        self.base.join("versions")
    }
    /// `versions/<ver>`: built only from a parsed version, whose text (digits, letters, `.`,
    /// `-`, `+`) can never name another directory.
    pub fn version_dir(&self, version: &semver::Version) -> PathBuf {
        self.versions_dir().join(version.to_string())
    }
    /// `versions/<ver>` relative to the base: what `current` and `last-good` point at.
    pub fn version_link_target(version: &semver::Version) -> PathBuf {
        PathBuf::from("versions").join(version.to_string())
    }
    /// `current` → `versions/<ver>` (relative symlink).
    pub fn current_link(&self) -> PathBuf {
        self.base.join("current")
    }
    /// The binary the unit runs: `<base>/current/outpost`.
    pub fn current_binary(&self) -> PathBuf {
        self.current_link().join("outpost")
    }
    /// `<base>/last-good` → the version last confirmed healthy.
    pub fn last_good_link(&self) -> PathBuf {
        self.base.join("last-good")
    }
    /// The binary the unit's `ExecStartPre=` resolver runs.
    pub fn resolver_binary(&self) -> PathBuf {
        self.last_good_link().join("outpost")
    }
    pub fn receipt_file(&self) -> PathBuf {
        self.state_dir.join(files::RECEIPT)
    }
    /// Root's journal (install and upgrade events).
    pub fn events_file(&self) -> PathBuf {
        self.state_dir.join(files::JOURNAL)
    }
    /// The agent's journal.
    pub fn agent_events_file(&self) -> PathBuf {
        self.agent_dir.join(files::JOURNAL)
    }
    /// The agent's last heartbeat result (read by the health gate).
    pub fn heartbeat_file(&self) -> PathBuf {
        self.agent_dir.join(files::HEARTBEAT)
    }

    /// System mode: the template unit whose instance `outpost-run-privileged@<run id>` the
    /// service user may start (polkit): root re-validates the run against the root-owned
    /// pack and starts it (docs/RUNS.md, *Privileged actions*). `None` in user mode.
    pub fn privileged_template(&self) -> Option<PathBuf> {
        (self.mode == Mode::System).then(|| self.unit_dir.join(files::PRIVILEGED_TEMPLATE))
    }

    /// Map a host path onto the filesystem root seam.
    pub fn host(&self, p: &Path) -> PathBuf {
        match p.strip_prefix("/") {
            Ok(rel) => self.root.join(rel),
            Err(_) => self.root.join(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_maps_under_root() {
        let l = Layout::system(Path::new("/tmp/r"));
        assert_eq!(
            l.host(&l.unit_file),
            PathBuf::from("/tmp/r/etc/systemd/system/outpost.service")
        );
        let l = Layout::system(Path::new("/"));
        assert_eq!(
            l.host(&l.current_binary()),
            PathBuf::from("/opt/outpost/current/outpost")
        );
    }

    #[test]
    fn user_paths_are_in_home() {
        let l = Layout::user(Path::new("/"), Path::new("/home/alice"));
        for p in [
            &l.base,
            &l.bin_link,
            &l.config_file,
            &l.env_file,
            &l.state_dir,
            &l.unit_file,
        ] {
            assert!(p.starts_with("/home/alice"), "{}", p.display());
        }
        assert!(l.dropin_file.is_none());
    }
}
