//! The upgrade record: `upgrade.json` in the state dir, rewritten atomically at every step so
//! that whatever kills the upgrader (SIGKILL, power loss), the next `outpost` that runs knows
//! exactly where it stopped.
//!
//! The record lives in root's state dir (system mode) and is loaded only through
//! [`outpost_core::trust::read_trusted`]; its versions are `semver::Version`, so a "version"
//! can never be a path.
use semver::Version;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use outpost_core::layout::files::UPGRADE_RECORD as FILE;
/// Largest record read (64 KiB; a real one is a few hundred bytes).
pub const MAX_BYTES: u64 = 64 << 10;

/// Steps in order. Everything up to and including `Stopping` happened while `current` still
/// pointed at `from`; from `Swapped` on it points at `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Recorded; the service has not been touched.
    Pending,
    /// Stopping the service.
    Stopping,
    /// `current` → `to` (atomic rename; may not have happened when interrupted).
    Swapping,
    Swapped,
    Starting,
    /// Started; watching it for the soak period.
    HealthCheck,
    /// The new version passed the health gate.
    Confirmed,
    /// Rolling back to `from`.
    RollingBack,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub from: Version,
    pub to: Version,
    pub step: Step,
    pub started_at: String,
    /// The upgrader process and its start time (jiffies since boot, /proc/PID/stat field 22),
    /// so a recycled PID after a reboot is not mistaken for it.
    pub upgrader_pid: u32,
    pub upgrader_start: u64,
    /// How often the service was started on `to` without being confirmed (boot counting).
    #[serde(default)]
    pub starts: u32,
    /// Whether the upgrade restarts the service (false: `--no-restart`, package only).
    #[serde(default = "yes")]
    pub orchestrated: bool,
}

fn yes() -> bool {
    true
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Why a record could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Unsafe owner/mode/link, or unreadable: never acted on, never touched.
    #[error(transparent)]
    Untrusted(#[from] outpost_core::trust::TrustError),
    /// Trusted but not a record (a torn disk, a hand edit): the resolver moves it aside.
    #[error("upgrade record {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// Load the record from `state_dir` (under the filesystem `root`, which bounds the
/// ownership walk).
pub fn load(root: &Path, state_dir: &Path) -> Result<Option<Record>, LoadError> {
    let p = path(state_dir);
    let euid = rustix::process::geteuid().as_raw();
    let Some(bytes) = outpost_core::trust::read_trusted(root, &p, euid, MAX_BYTES)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| LoadError::Corrupt {
            path: p,
            reason: e.to_string(),
        })
}

/// Move a corrupt record aside (`upgrade.json.corrupt`) so it no longer blocks anything.
pub fn quarantine(state_dir: &Path) -> std::io::Result<PathBuf> {
    let to = state_dir.join(format!("{FILE}.corrupt"));
    fs_err::rename(path(state_dir), &to)?;
    outpost_installer::fsx::fsync_dir(state_dir)?;
    Ok(to)
}

pub fn save(
    state_dir: &Path,
    r: &Record,
    owner: outpost_installer::fsx::Owner,
) -> std::io::Result<()> {
    // Invariant: Record holds only strings and numbers, which always serialize.
    let text = serde_json::to_string_pretty(r).expect("record serializes") + "\n";
    outpost_installer::fsx::write_atomic(&path(state_dir), text.as_bytes(), 0o644, owner)
}

pub fn clear(state_dir: &Path) -> std::io::Result<()> {
    outpost_installer::fsx::remove_file(&path(state_dir)).map(|_| ())
}

/// Start time of a process (field 22 of /proc/PID/stat), `None` when it does not exist.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the upgrader that wrote `r` is still running.
pub fn upgrader_alive(r: &Record) -> bool {
    r.upgrader_pid != std::process::id() && process_start(r.upgrader_pid) == Some(r.upgrader_start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_clear() {
        let d = tempfile::tempdir().unwrap();
        assert!(load(d.path(), d.path()).unwrap().is_none());
        let r = Record {
            from: "1.0.0".parse().unwrap(),
            to: "1.1.0".parse().unwrap(),
            step: Step::Swapped,
            started_at: "t".into(),
            upgrader_pid: 1,
            upgrader_start: 2,
            starts: 0,
            orchestrated: true,
        };
        let root = d.path();
        save(d.path(), &r, None).unwrap();
        assert_eq!(load(root, d.path()).unwrap().unwrap(), r);
        clear(d.path()).unwrap();
        assert!(load(root, d.path()).unwrap().is_none());
        std::fs::write(path(d.path()), "{").unwrap();
        assert!(matches!(
            load(root, d.path()),
            Err(LoadError::Corrupt { .. })
        ));
        quarantine(d.path()).unwrap();
        assert!(load(root, d.path()).unwrap().is_none());
    }

    #[test]
    fn a_path_is_never_a_version() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["/var/lib/outpost/x", "../../tmp/x", "1.0.0/../../x", "x"] {
            let text = format!(
                r#"{{"from":"1.0.0","to":"{bad}","step":"confirmed","started_at":"t","upgrader_pid":1,"upgrader_start":2}}"#
            );
            std::fs::write(path(d.path()), text).unwrap();
            assert!(
                matches!(load(d.path(), d.path()), Err(LoadError::Corrupt { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_record_the_service_user_could_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::write(path(d.path()), "{}").unwrap();
        std::fs::set_permissions(path(d.path()), std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            load(d.path(), d.path()),
            Err(LoadError::Untrusted(_))
        ));
    }

    #[test]
    fn own_process_start_is_readable() {
        let me = std::process::id();
        assert!(process_start(me).is_some());
        assert!(process_start(u32::MAX - 1).is_none());
    }

    #[test]
    fn steps_are_ordered() {
        assert!(
            Step::Pending < Step::Stopping
                && Step::Stopping < Step::Swapping
                && Step::HealthCheck < Step::Confirmed
        );
    }
}
