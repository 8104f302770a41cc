//! The upgrade record: `upgrade.json` in the state dir, rewritten atomically at every step so
//! that whatever kills the upgrader (SIGKILL, power loss), the next `outpost` that runs knows
//! exactly where it stopped.
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FILE: &str = "upgrade.json";

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
pub struct Record {
    pub from: String,
    pub to: String,
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

pub fn load(state_dir: &Path) -> std::io::Result<Option<Record>> {
    let p = path(state_dir);
    match fs_err::read_to_string(&p) {
        Ok(t) => serde_json::from_str(&t).map(Some).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is corrupt: {e}", p.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn save(state_dir: &Path, r: &Record, owner: crate::fsx::Owner) -> std::io::Result<()> {
    // Invariant: Record holds only strings and numbers, which always serialize.
    let text = serde_json::to_string_pretty(r).expect("record serializes") + "\n";
    crate::fsx::write_atomic(&path(state_dir), text.as_bytes(), 0o644, owner)
}

pub fn clear(state_dir: &Path) -> std::io::Result<()> {
    crate::fsx::remove_file(&path(state_dir)).map(|_| ())
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
        assert!(load(d.path()).unwrap().is_none());
        let r = Record {
            from: "1.0.0".into(),
            to: "1.1.0".into(),
            step: Step::Swapped,
            started_at: "t".into(),
            upgrader_pid: 1,
            upgrader_start: 2,
            starts: 0,
            orchestrated: true,
        };
        save(d.path(), &r, None).unwrap();
        assert_eq!(load(d.path()).unwrap().unwrap(), r);
        clear(d.path()).unwrap();
        assert!(load(d.path()).unwrap().is_none());
        std::fs::write(path(d.path()), "{").unwrap();
        assert!(load(d.path()).is_err());
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
