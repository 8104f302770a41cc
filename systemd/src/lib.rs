//! The service-manager seam: systemd (and logind) over D-Bus.
//!
//! The installer, the upgrader and the agent talk to [`ServiceManager`] and [`Logind`]; production uses the
//! D-Bus implementation in [`dbus`] (over outpost's own client: [`wire`] and [`conn`]),
//! unit tests use a recording fake.
use serde::Serialize;

pub mod conn;
pub mod dbus;
pub mod wire;

/// Which systemd instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Scope {
    /// PID 1 on the system bus.
    System,
    /// `user@UID.service`'s manager on `/run/user/UID/bus`.
    User { uid: u32 },
}

/// Which processes of a unit [`ServiceManager::kill`] signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Whom {
    Main,
    All,
}

impl Whom {
    pub fn as_str(self) -> &'static str {
        match self {
            Whom::Main => "main",
            Whom::All => "all",
        }
    }
}

/// A unit's state as systemd reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UnitStatus {
    /// `loaded`, `not-found`, `masked`, `error`, …
    pub load_state: String,
    /// `active`, `inactive`, `failed`, `activating`, `deactivating`, `reloading`.
    pub active_state: String,
    /// `running`, `dead`, `auto-restart`, `start`, …
    pub sub_state: String,
    /// `enabled`, `disabled`, `static`, … (empty when unknown).
    pub unit_file_state: String,
    /// 0 when not running.
    pub main_pid: u32,
    /// How often systemd restarted the service automatically.
    pub n_restarts: u32,
    /// Exit status of the last main process (0 when it never exited).
    pub exec_main_status: i32,
    /// Monotonic µs timestamp of the last entry into `active` (0 = never).
    pub active_enter_timestamp_monotonic: u64,
    /// The service's `Result`: `success`, `exit-code`, `signal`, `core-dump`, `timeout`,
    /// `oom-kill`, `watchdog`, `start-limit-hit`, `resources`, … (empty for other units).
    pub result: String,
    /// How the last main process ended: 1 exited (`exec_main_status` is its exit code), 2
    /// killed, 3 dumped core (`exec_main_status` is the signal); 0 while it runs.
    pub exec_main_code: i32,
    /// The unit's cgroup (`/user.slice/…`), empty when it has no processes.
    pub control_group: String,
}

impl UnitStatus {
    pub fn is_active(&self) -> bool {
        self.active_state == "active"
    }
    pub fn is_loaded(&self) -> bool {
        self.load_state == "loaded"
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SvcError {
    #[error("cannot connect to the {scope} service manager at {address}: {message}")]
    Connect {
        scope: String,
        address: String,
        message: String,
    },
    #[error("access denied by the {scope} service manager while trying to {action} {unit}")]
    AccessDenied {
        scope: String,
        action: String,
        unit: String,
    },
    #[error("{action} {unit} failed: job result '{result}'")]
    Job {
        action: String,
        unit: String,
        result: String,
    },
    #[error("timed out after {secs}s waiting to {action} {unit}")]
    Timeout {
        action: String,
        unit: String,
        secs: u64,
    },
    #[error("{action} {unit} failed: {message}")]
    Call {
        action: String,
        unit: String,
        message: String,
    },
}

impl SvcError {
    pub fn hint(&self) -> String {
        match self {
            SvcError::Connect { .. } => {
                "is systemd running as PID 1 here? `outpost detect` shows what was found".into()
            }
            SvcError::AccessDenied { .. } => {
                "run the command with sudo, or as the service user granted by outpost's polkit rule"
                    .into()
            }
            SvcError::Job { unit, .. }
            | SvcError::Timeout { unit, .. }
            | SvcError::Call { unit, .. } => {
                format!("see `journalctl -u {unit} -n 50` (add --user in user mode) for what the service printed")
            }
        }
    }
}

/// Control of one systemd manager. Start/stop/restart wait for the job to finish and fail
/// unless its result is `done`.
pub trait ServiceManager {
    fn scope(&self) -> Scope;
    fn daemon_reload(&self) -> Result<(), SvcError>;
    /// `systemctl enable` (persistent, force-replacing stale symlinks).
    fn enable(&self, unit: &str) -> Result<(), SvcError>;
    fn disable(&self, unit: &str) -> Result<(), SvcError>;
    fn start(&self, unit: &str) -> Result<(), SvcError>;
    /// Like [`ServiceManager::start`], but give up waiting for the job after `timeout` (the
    /// job itself stays queued; stop the unit to cancel it). The upgrader's health gate uses
    /// it so a version that never sends READY is caught within the soak period.
    fn start_within(&self, unit: &str, timeout: std::time::Duration) -> Result<(), SvcError> {
        let _ = timeout;
        self.start(unit)
    }
    fn stop(&self, unit: &str) -> Result<(), SvcError>;
    fn restart(&self, unit: &str) -> Result<(), SvcError>;
    /// Clear the `failed` state and the start-limit counter (`systemctl reset-failed`).
    fn reset_failed(&self, unit: &str) -> Result<(), SvcError>;
    /// State of a unit; a unit systemd does not know reports `load_state = "not-found"`.
    fn status(&self, unit: &str) -> Result<UnitStatus, SvcError>;
    /// Send `signal` to the unit's main process or to its whole control group
    /// (`systemctl kill --kill-whom=main|all -s SIGNAL`). A unit that is not running is not an
    /// error (there is nobody to signal).
    fn kill(&self, unit: &str, whom: Whom, signal: i32) -> Result<(), SvcError>;
    /// Start `argv` as the transient service `unit` (in this manager, outside the caller's
    /// session, so signals to the caller do not reach it). Returns once the job is queued; a
    /// unit of that name that already runs counts as started.
    fn start_transient(
        &self,
        unit: &str,
        description: &str,
        argv: &[String],
    ) -> Result<(), SvcError>;
}

/// One property of a transient unit, as `StartTransientUnit` takes it (`a(sv)`): the name
/// systemd's D-Bus API uses (`RuntimeMaxUSec`, `MemoryMax`, …) and a typed value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PropValue {
    Str(String),
    Strs(Vec<String>),
    U64(u64),
    I32(i32),
    Bool(bool),
    /// `ExecStart`-like: argv, the first element the program (`a(sasb)`).
    Exec(Vec<String>),
    /// `TemporaryFileSystem`: (path, mount options) pairs (`a(ss)`).
    TempFs(Vec<(String, String)>),
    /// `BindPaths`: (source, destination) pairs, recursive, read-write, a missing source an
    /// error (`a(ssbt)`).
    Binds(Vec<(String, String)>),
}

/// The units of runs: transient services a manager starts for the agent and reports on, so
/// they keep running whatever happens to the agent (docs/RUNS.md).
pub trait RunManager: Send + Sync {
    fn scope(&self) -> Scope;
    /// Start the transient service `unit` with `props` and return once the start job is
    /// queued. A unit of that name that is already loaded is [`SvcError::Job`] with result
    /// `exists` (the caller reattaches to it).
    fn start_transient_unit(
        &self,
        unit: &str,
        props: &[(String, PropValue)],
    ) -> Result<(), SvcError>;
    /// Start a unit from its file and wait for the job: `Ok` once it is `done` (a oneshot
    /// service: once its process exited 0), [`SvcError::Job`] with the job's result else.
    fn start_unit(&self, unit: &str) -> Result<(), SvcError>;
    /// Queue a stop job and return (the unit's `TimeoutStopSec=` bounds it). A unit that is
    /// not loaded is not an error.
    fn stop_nowait(&self, unit: &str) -> Result<(), SvcError>;
    /// See [`ServiceManager::status`].
    fn unit_status(&self, unit: &str) -> Result<UnitStatus, SvcError>;
    /// Forget a failed unit (`reset-failed`), so it is garbage-collected.
    fn reset_failed(&self, unit: &str) -> Result<(), SvcError>;
    /// The names of loaded units matching a glob (`outpost-run-*.service`).
    fn list_units(&self, pattern: &str) -> Result<Vec<String>, SvcError>;
    /// The manager's own cgroup (`/user.slice/user-1000.slice/user@1000.service`), where the
    /// controllers delegated to it are listed.
    fn manager_cgroup(&self) -> Result<String, SvcError>;
}

/// logind, for lingering users in user mode.
pub trait Logind {
    /// `SetUserLinger(uid, enable, interactive = false)`.
    fn set_linger(&self, uid: u32, enable: bool) -> Result<(), SvcError>;
}
