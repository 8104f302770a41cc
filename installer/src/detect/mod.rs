//! Host detection: which distro, which init, which users, which polkit, and what to recommend.
//!
//! Parsing is pure (see the submodules, tested on fixtures under `tests/fixtures/`); the only
//! I/O goes through [`Probe`], whose production implementation reads under a filesystem root.
use outpost_core::layout::Mode;
use serde::Serialize;

pub mod os_release;
pub mod probe;
pub mod topology;

pub use probe::{HostProbe, Probe};

/// `/etc/os-release`, the fields we use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OsRelease {
    pub id: String,
    pub id_like: Vec<String>,
    pub version_id: Option<String>,
    pub version_codename: Option<String>,
    pub pretty_name: Option<String>,
    pub variant_id: Option<String>,
}

/// The distro families we know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum Distro {
    Ubuntu {
        version: Option<String>,
        desktop: bool,
    },
    Debian {
        version: Option<String>,
    },
    DietPi,
    RaspberryPiOs {
        version: Option<String>,
    },
    Alpine {
        version: Option<String>,
    },
    /// A distro we have not tested; allowed (with a warning) when systemd is PID 1.
    Other {
        id: String,
    },
}

/// What runs as PID 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Init {
    Systemd { version: Option<u32> },
    Other { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolkitFlavor {
    /// JavaScript `.rules` files (polkit ≥ 0.106).
    Rules,
    /// `.pkla` local authority files (polkit 0.105, e.g. Ubuntu 22.04).
    Pkla,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Polkit {
    pub version: Option<String>,
    pub flavor: PolkitFlavor,
}

/// A user account from the passwd database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: std::path::PathBuf,
}

/// The user whose service we would install in user mode, and their manager's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetUser {
    pub account: Account,
    /// `/var/lib/systemd/linger/NAME` exists.
    pub linger: bool,
    /// `/run/user/UID/systemd` exists (user@UID is running).
    pub manager_running: bool,
    /// `/run/user/UID/bus` exists.
    pub bus: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    pub init: Init,
    /// Container type (`systemd-nspawn`, `docker`, `lxc`, …) when running inside one.
    pub container: Option<String>,
    /// The effective user running outpost.
    pub invoking: Account,
    /// `SUDO_USER`, when invoked through sudo by someone other than root.
    pub sudo_user: Option<Account>,
    /// The user a user-mode install would target (`SUDO_USER` if set, else the invoking user);
    /// `None` when that is root.
    pub target_user: Option<TargetUser>,
    pub polkit: Option<Polkit>,
    /// `x86_64`, `aarch64`, … (as `uname -m`).
    pub arch: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recommendation {
    pub mode: Mode,
    /// User mode needs linger turned on so the service runs without a login.
    pub enable_linger: bool,
    pub reason: String,
}

/// Everything `outpost detect` reports and `install` decides from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detection {
    pub os_release: OsRelease,
    pub distro: Distro,
    pub topology: Topology,
    /// `Some(reason)` when outpost cannot run here as a service at all.
    pub unsupported: Option<String>,
    pub recommendation: Recommendation,
    pub warnings: Vec<String>,
}
