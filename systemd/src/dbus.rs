//! The production [`ServiceManager`] and [`Logind`]: systemd and logind over D-Bus (zbus,
//! blocking API, async-io runtime; no tokio).
//!
//! Start/stop/restart follow what `systemctl` does: subscribe to the manager's `JobRemoved`
//! signal *before* enqueueing the job, enqueue it with mode `replace`, then wait (bounded by
//! [`SystemdBus::job_timeout`]) for the `JobRemoved` carrying our job's object path. Because
//! the match rule is installed before the call, a job that finishes instantly is not missed.
//!
//! Authorisation: no call sets `ALLOW_INTERACTIVE_AUTHORIZATION`. outpost is a CLI that may run
//! without a TTY (cloud-init, CI, the agent's own upgrader) and must never block on a polkit
//! prompt; polkit rules that *grant* an action (our service user restarting `outpost.service`)
//! apply without interaction, and anything needing a password fails fast with
//! `InteractiveAuthorizationRequired`, which maps to [`SvcError::AccessDenied`].
use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use zbus::export::futures_core::Stream;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;
use zbus::DBusError;

use super::{Logind, Scope, ServiceManager, SvcError, UnitStatus, Whom};

/// The system bus when `DBUS_SYSTEM_BUS_ADDRESS` is unset.
pub const DEFAULT_SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";
/// Default bound on waiting for a start/stop/restart job.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on any single method call (a stuck bus must not hang the CLI forever). Generous because
/// `Reload` only returns once the daemon-reload is complete.
const METHOD_TIMEOUT: Duration = Duration::from_secs(180);
/// Poll interval of [`wait_user_manager`].
const POLL_INTERVAL: Duration = Duration::from_millis(50);

mod proxies {
    use zbus::proxy;
    use zbus::zvariant::{ObjectPath, OwnedObjectPath};

    /// `(type, symlink, target)` triples describing unit-file symlink changes.
    pub type Changes = Vec<(String, String, String)>;

    /// `org.freedesktop.systemd1.Manager`, only the members outpost uses.
    #[proxy(
        interface = "org.freedesktop.systemd1.Manager",
        default_service = "org.freedesktop.systemd1",
        default_path = "/org/freedesktop/systemd1"
    )]
    pub trait SystemdManager {
        fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
        fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
        fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
        fn reload(&self) -> zbus::Result<()>;
        /// Returns (carries_install_info, [(type, symlink, target)]).
        fn enable_unit_files(
            &self,
            files: &[&str],
            runtime: bool,
            force: bool,
        ) -> zbus::Result<(bool, Changes)>;
        fn disable_unit_files(&self, files: &[&str], runtime: bool) -> zbus::Result<Changes>;
        fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
        fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
        #[allow(clippy::type_complexity)]
        fn start_transient_unit(
            &self,
            name: &str,
            mode: &str,
            properties: &[(&str, zbus::zvariant::Value<'_>)],
            aux: &[(&str, Vec<(&str, zbus::zvariant::Value<'_>)>)],
        ) -> zbus::Result<OwnedObjectPath>;
        fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
        fn get_unit_file_state(&self, file: &str) -> zbus::Result<String>;
        fn subscribe(&self) -> zbus::Result<()>;

        #[zbus(signal)]
        fn job_removed(
            &self,
            id: u32,
            job: ObjectPath<'_>,
            unit: &str,
            result: &str,
        ) -> zbus::Result<()>;

        #[zbus(property)]
        fn version(&self) -> zbus::Result<String>;
    }

    /// `org.freedesktop.systemd1.Unit` (properties only).
    #[proxy(
        interface = "org.freedesktop.systemd1.Unit",
        default_service = "org.freedesktop.systemd1"
    )]
    pub trait SystemdUnit {
        #[zbus(property)]
        fn active_state(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn sub_state(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn load_state(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn active_enter_timestamp_monotonic(&self) -> zbus::Result<u64>;
    }

    /// `org.freedesktop.systemd1.Service` (properties only).
    #[proxy(
        interface = "org.freedesktop.systemd1.Service",
        default_service = "org.freedesktop.systemd1"
    )]
    pub trait SystemdService {
        #[zbus(property, name = "MainPID")]
        fn main_pid(&self) -> zbus::Result<u32>;
        #[zbus(property, name = "NRestarts")]
        fn n_restarts(&self) -> zbus::Result<u32>;
        #[zbus(property)]
        fn exec_main_status(&self) -> zbus::Result<i32>;
    }

    /// `org.freedesktop.login1.Manager`, only `SetUserLinger`.
    #[proxy(
        interface = "org.freedesktop.login1.Manager",
        default_service = "org.freedesktop.login1",
        default_path = "/org/freedesktop/login1"
    )]
    pub trait LogindManager {
        fn set_user_linger(&self, uid: u32, enable: bool, interactive: bool) -> zbus::Result<()>;
    }
}

use proxies::{LogindManagerProxyBlocking, SystemdManagerProxy, SystemdManagerProxyBlocking};
use proxies::{SystemdServiceProxyBlocking, SystemdUnitProxyBlocking};

// ---------------------------------------------------------------------------------------------
// Pure helpers (unit-tested).

/// `"system"` / `"user"`, as used in [`SvcError`] messages.
pub fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::System => "system",
        Scope::User { .. } => "user",
    }
}

/// The bus address for `scope`, given the environment and our effective uid.
///
/// System: `DBUS_SYSTEM_BUS_ADDRESS` or [`DEFAULT_SYSTEM_BUS`]. User: `DBUS_SESSION_BUS_ADDRESS`
/// only when we *are* that user (a root shell's session address points at root's bus), else
/// `unix:path=/run/user/UID/bus`. Empty variables count as unset.
pub fn bus_address(
    scope: Scope,
    system_env: Option<&str>,
    session_env: Option<&str>,
    euid: u32,
) -> String {
    let set = |v: Option<&str>| {
        v.map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    match scope {
        Scope::System => set(system_env).unwrap_or_else(|| DEFAULT_SYSTEM_BUS.to_owned()),
        Scope::User { uid } => match set(session_env) {
            Some(addr) if euid == uid => addr,
            _ => format!("unix:path=/run/user/{uid}/bus"),
        },
    }
}

/// How outpost treats a D-Bus error name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    AccessDenied,
    NoSuchUnit,
    /// The unit has no process to signal (`KillUnit` on a stopped unit).
    NotRunning,
    AlreadySubscribed,
    Other,
}

pub fn classify(error_name: Option<&str>) -> ErrorKind {
    match error_name {
        Some("org.freedesktop.DBus.Error.AccessDenied")
        | Some("org.freedesktop.DBus.Error.InteractiveAuthorizationRequired")
        | Some("org.freedesktop.DBus.Error.AuthFailed") => ErrorKind::AccessDenied,
        Some("org.freedesktop.systemd1.NoSuchUnit")
        | Some("org.freedesktop.systemd1.LoadFailed") => ErrorKind::NoSuchUnit,
        Some("org.freedesktop.systemd1.AlreadySubscribed") => ErrorKind::AlreadySubscribed,
        Some("org.freedesktop.systemd1.NoSuchProcess") => ErrorKind::NotRunning,
        _ => ErrorKind::Other,
    }
}

/// Error name (if the peer sent one) and a short lowercase message.
pub fn error_parts(err: &zbus::Error) -> (Option<String>, String) {
    match err {
        zbus::Error::MethodError(name, detail, _) => {
            let msg = detail.clone().unwrap_or_else(|| name.to_string());
            (Some(name.to_string()), short_message(&msg))
        }
        zbus::Error::FDO(e) => {
            let msg = e
                .description()
                .map(str::to_owned)
                .unwrap_or_else(|| e.to_string());
            (Some(e.name().to_string()), short_message(&msg))
        }
        zbus::Error::InputOutput(io) | zbus::Error::Connection(io, _) => {
            (None, short_message(&io.to_string()))
        }
        other => (None, short_message(&other.to_string())),
    }
}

/// First line, lowercase first letter, no trailing period.
fn short_message(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim().trim_end_matches('.');
    let mut chars = line.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => "unknown d-bus error".to_owned(),
    }
}

/// Map a failed call to [`SvcError`]: access-denied style names → `AccessDenied`, else `Call`.
pub fn map_error(err: &zbus::Error, scope: Scope, action: &str, unit: &str) -> SvcError {
    let (name, message) = error_parts(err);
    map_named(name.as_deref(), message, scope, action, unit)
}

fn map_named(
    name: Option<&str>,
    message: String,
    scope: Scope,
    action: &str,
    unit: &str,
) -> SvcError {
    match classify(name) {
        ErrorKind::AccessDenied => SvcError::AccessDenied {
            scope: scope_name(scope).into(),
            action: action.into(),
            unit: unit.into(),
        },
        _ => SvcError::Call {
            action: action.into(),
            unit: unit.into(),
            message,
        },
    }
}

fn timeout_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

// ---------------------------------------------------------------------------------------------
// A minimal deadline-bounded executor: parks the thread between polls. zbus's connection runs
// its socket reader on its own executor thread, which wakes us when a message arrives.

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Drive `fut` to completion on this thread, or give up at `deadline` (`None`).
fn block_on_until<F: Future>(fut: F, deadline: Instant) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return Some(out);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::park_timeout(deadline - now);
    }
}

// ---------------------------------------------------------------------------------------------
// systemd.

/// A connection to one systemd manager.
pub struct SystemdBus {
    conn: zbus::blocking::Connection,
    scope: Scope,
    /// Bound on waiting for a start/stop/restart job to be removed. Default 120 s.
    pub job_timeout: Duration,
}

impl std::fmt::Debug for SystemdBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemdBus")
            .field("scope", &self.scope)
            .field("job_timeout", &self.job_timeout)
            .finish()
    }
}

fn current_euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

impl SystemdBus {
    /// Connect to the manager of `scope` (see [`bus_address`] for which socket).
    pub fn connect(scope: Scope) -> Result<SystemdBus, SvcError> {
        let system = std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok();
        let session = std::env::var("DBUS_SESSION_BUS_ADDRESS").ok();
        let address = bus_address(scope, system.as_deref(), session.as_deref(), current_euid());
        Self::connect_at(scope, &address)
    }

    /// Connect to an explicit bus address.
    pub fn connect_at(scope: Scope, address: &str) -> Result<SystemdBus, SvcError> {
        let connect_err = |e: &zbus::Error| SvcError::Connect {
            scope: scope_name(scope).into(),
            address: address.into(),
            message: error_parts(e).1,
        };
        let conn = zbus::blocking::connection::Builder::address(address)
            .and_then(|b| b.method_timeout(METHOD_TIMEOUT).build())
            .map_err(|e| connect_err(&e))?;
        Ok(SystemdBus {
            conn,
            scope,
            job_timeout: DEFAULT_JOB_TIMEOUT,
        })
    }

    /// The underlying connection (e.g. to share with other proxies).
    pub fn connection(&self) -> &zbus::blocking::Connection {
        &self.conn
    }

    fn err(&self, action: &str, unit: &str) -> impl Fn(zbus::Error) -> SvcError + '_ {
        let (action, unit) = (action.to_owned(), unit.to_owned());
        move |e| map_error(&e, self.scope, &action, &unit)
    }

    fn manager(
        &self,
        action: &str,
        unit: &str,
    ) -> Result<SystemdManagerProxyBlocking<'_>, SvcError> {
        SystemdManagerProxyBlocking::builder(&self.conn)
            .cache_properties(CacheProperties::No)
            .build()
            .map_err(self.err(action, unit))
    }

    /// Enqueue a job with `call` and wait for its `JobRemoved`; `Ok` only for result `done`.
    fn run_job(&self, action: &str, unit: &str, method: JobMethod) -> Result<(), SvcError> {
        self.run_job_within(action, unit, method, self.job_timeout)
    }

    fn run_job_within(
        &self,
        action: &str,
        unit: &str,
        method: JobMethod,
        timeout: Duration,
    ) -> Result<(), SvcError> {
        let deadline = Instant::now() + timeout;
        let work = async {
            let mgr = SystemdManagerProxy::builder(self.conn.inner())
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            // Signals are only emitted once a client subscribed; once per connection is enough.
            if let Err(e) = mgr.subscribe().await {
                if classify(error_parts(&e).0.as_deref()) != ErrorKind::AlreadySubscribed {
                    return Err(e);
                }
            }
            // Install the match rule *before* enqueueing the job so we cannot miss its removal.
            let mut removed = pin!(mgr.receive_job_removed().await?);
            let job: OwnedObjectPath = match method {
                JobMethod::Start => mgr.start_unit(unit, "replace").await?,
                JobMethod::Stop => mgr.stop_unit(unit, "replace").await?,
                JobMethod::Restart => mgr.restart_unit(unit, "replace").await?,
            };
            loop {
                let Some(signal) = std::future::poll_fn(|cx| removed.as_mut().poll_next(cx)).await
                else {
                    return Err(zbus::Error::Failure(
                        "the bus connection closed while waiting for the job".into(),
                    ));
                };
                let args = signal.args()?;
                if args.job.as_str() == job.as_str() {
                    return Ok(args.result.to_owned());
                }
            }
        };
        match block_on_until(work, deadline) {
            None => Err(SvcError::Timeout {
                action: action.into(),
                unit: unit.into(),
                secs: timeout_secs(timeout),
            }),
            Some(Err(e)) => Err(map_error(&e, self.scope, action, unit)),
            Some(Ok(result)) if result == "done" => Ok(()),
            Some(Ok(result)) => Err(SvcError::Job {
                action: action.into(),
                unit: unit.into(),
                result,
            }),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum JobMethod {
    Start,
    Stop,
    Restart,
}

impl ServiceManager for SystemdBus {
    fn scope(&self) -> Scope {
        self.scope
    }

    fn daemon_reload(&self) -> Result<(), SvcError> {
        const A: (&str, &str) = ("reload", "systemd's unit files");
        // `Reload` replies only after the reload has finished.
        self.manager(A.0, A.1)?.reload().map_err(self.err(A.0, A.1))
    }

    fn enable(&self, unit: &str) -> Result<(), SvcError> {
        self.manager("enable", unit)?
            .enable_unit_files(&[unit], false, true)
            .map(drop)
            .map_err(self.err("enable", unit))
    }

    fn disable(&self, unit: &str) -> Result<(), SvcError> {
        self.manager("disable", unit)?
            .disable_unit_files(&[unit], false)
            .map(drop)
            .map_err(self.err("disable", unit))
    }

    fn start(&self, unit: &str) -> Result<(), SvcError> {
        self.run_job("start", unit, JobMethod::Start)
    }

    fn start_within(&self, unit: &str, timeout: Duration) -> Result<(), SvcError> {
        self.run_job_within("start", unit, JobMethod::Start, timeout)
    }

    fn stop(&self, unit: &str) -> Result<(), SvcError> {
        self.run_job("stop", unit, JobMethod::Stop)
    }

    fn restart(&self, unit: &str) -> Result<(), SvcError> {
        self.run_job("restart", unit, JobMethod::Restart)
    }

    fn reset_failed(&self, unit: &str) -> Result<(), SvcError> {
        match self.manager("reset-failed", unit)?.reset_failed_unit(unit) {
            Ok(()) => Ok(()),
            // Nothing loaded means nothing failed.
            Err(e) if classify(error_parts(&e).0.as_deref()) == ErrorKind::NoSuchUnit => Ok(()),
            Err(e) => Err(map_error(&e, self.scope, "reset-failed", unit)),
        }
    }

    fn kill(&self, unit: &str, whom: Whom, signal: i32) -> Result<(), SvcError> {
        match self
            .manager("kill", unit)?
            .kill_unit(unit, whom.as_str(), signal)
        {
            Ok(()) => Ok(()),
            // Not loaded, or loaded but not running: nobody to signal.
            Err(e)
                if matches!(
                    classify(error_parts(&e).0.as_deref()),
                    ErrorKind::NoSuchUnit | ErrorKind::NotRunning
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(map_error(&e, self.scope, "kill", unit)),
        }
    }

    fn start_transient(
        &self,
        unit: &str,
        description: &str,
        argv: &[String],
    ) -> Result<(), SvcError> {
        use zbus::zvariant::Value;
        let Some(exe) = argv.first() else {
            return Err(SvcError::Job {
                action: "start".into(),
                unit: unit.into(),
                result: "empty command".into(),
            });
        };
        let exec = vec![(exe.clone(), argv.to_vec(), false)];
        let props: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(description)),
            ("ExecStart", Value::from(exec)),
            // Garbage-collect it whatever its result, so the name is free for the next upgrade.
            ("CollectMode", Value::from("inactive-or-failed")),
        ];
        match self
            .manager("start", unit)?
            .start_transient_unit(unit, "fail", &props, &[])
        {
            Ok(_) => Ok(()),
            // A guard from an earlier upgrade still runs: it watches whichever upgrader the
            // record names, so it covers this one too.
            Err(e)
                if error_parts(&e).0.as_deref() == Some("org.freedesktop.systemd1.UnitExists") =>
            {
                Ok(())
            }
            Err(e) => Err(map_error(&e, self.scope, "start", unit)),
        }
    }

    fn status(&self, unit: &str) -> Result<UnitStatus, SvcError> {
        let err = self.err("query the status of", unit);
        let mgr = self.manager("query the status of", unit)?;
        // LoadUnit succeeds for unknown units too; their LoadState is `not-found`.
        let path = mgr.load_unit(unit).map_err(&err)?;
        let u = SystemdUnitProxyBlocking::builder(&self.conn)
            .path(path.clone())
            .and_then(|b| b.cache_properties(CacheProperties::No).build())
            .map_err(&err)?;
        let mut st = UnitStatus {
            load_state: u.load_state().map_err(&err)?,
            active_state: u.active_state().map_err(&err)?,
            sub_state: u.sub_state().map_err(&err)?,
            active_enter_timestamp_monotonic: u.active_enter_timestamp_monotonic().map_err(&err)?,
            // Unknown units, generated units and units without a unit file have no state.
            unit_file_state: mgr.get_unit_file_state(unit).unwrap_or_default(),
            ..UnitStatus::default()
        };
        // The Service interface exists only for .service units; elsewhere these stay 0.
        if let Ok(s) = SystemdServiceProxyBlocking::builder(&self.conn)
            .path(path)
            .and_then(|b| b.cache_properties(CacheProperties::No).build())
        {
            st.main_pid = s.main_pid().unwrap_or(0);
            st.n_restarts = s.n_restarts().unwrap_or(0);
            st.exec_main_status = s.exec_main_status().unwrap_or(0);
        }
        Ok(st)
    }
}

/// The manager's `Version` property (e.g. `"255.4-1ubuntu8"`), `None` if it cannot be read.
pub fn systemd_version(bus: &SystemdBus) -> Option<String> {
    bus.manager("read", "the version").ok()?.version().ok()
}

// ---------------------------------------------------------------------------------------------
// logind.

/// logind on the system bus.
pub struct LogindBus {
    conn: zbus::blocking::Connection,
}

impl std::fmt::Debug for LogindBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogindBus").finish_non_exhaustive()
    }
}

impl LogindBus {
    /// Connect to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` or the default socket).
    pub fn connect() -> Result<LogindBus, SvcError> {
        Ok(LogindBus {
            conn: SystemdBus::connect(Scope::System)?.conn,
        })
    }

    /// Share an existing system-bus connection.
    pub fn from_connection(conn: zbus::blocking::Connection) -> LogindBus {
        LogindBus { conn }
    }
}

impl Logind for LogindBus {
    fn set_linger(&self, uid: u32, enable: bool) -> Result<(), SvcError> {
        let action = format!(
            "{} lingering for uid {uid} through",
            if enable { "enable" } else { "disable" }
        );
        let unit = "systemd-logind.service";
        let err = |e: zbus::Error| map_error(&e, Scope::System, &action, unit);
        LogindManagerProxyBlocking::builder(&self.conn)
            .cache_properties(CacheProperties::No)
            .build()
            .map_err(err)?
            // interactive = false: never wait for a polkit agent (see the module docs).
            .set_user_linger(uid, enable, false)
            .map_err(err)
    }
}

/// Wait until `user@UID.service` is active in the system manager and the user bus socket
/// `/run/user/UID/bus` exists (i.e. user-mode install can talk to the user manager), polling
/// every 50 ms. Gives up with [`SvcError::Timeout`] after `timeout`.
pub fn wait_user_manager(uid: u32, timeout: Duration) -> Result<(), SvcError> {
    let deadline = Instant::now() + timeout;
    let unit = format!("user@{uid}.service");
    let socket = format!("/run/user/{uid}/bus");
    let bus = SystemdBus::connect(Scope::System)?;
    loop {
        if bus.status(&unit)?.is_active() && Path::new(&socket).exists() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(SvcError::Timeout {
                action: "wait for".into(),
                unit,
                secs: timeout_secs(timeout),
            });
        }
        thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_selection() {
        let user = |uid| Scope::User { uid };
        type Case<'a> = (Scope, Option<&'a str>, Option<&'a str>, u32, &'a str);
        let cases: &[Case] = &[
            (Scope::System, None, None, 0, DEFAULT_SYSTEM_BUS),
            (Scope::System, Some(""), None, 0, DEFAULT_SYSTEM_BUS),
            (
                Scope::System,
                Some("unix:path=/x"),
                Some("unix:path=/s"),
                0,
                "unix:path=/x",
            ),
            (user(1000), None, None, 1000, "unix:path=/run/user/1000/bus"),
            (user(1000), None, Some("unix:path=/s"), 1000, "unix:path=/s"),
            // root (or anyone else) must not reuse their own session address for another user
            (
                user(1000),
                None,
                Some("unix:path=/s"),
                0,
                "unix:path=/run/user/1000/bus",
            ),
            (
                user(1000),
                Some("unix:path=/x"),
                Some("  "),
                1000,
                "unix:path=/run/user/1000/bus",
            ),
            (
                user(0),
                None,
                Some("unix:path=/root-bus"),
                0,
                "unix:path=/root-bus",
            ),
        ];
        for (scope, sys, sess, euid, want) in cases {
            assert_eq!(
                bus_address(*scope, *sys, *sess, *euid),
                *want,
                "{scope:?} {sys:?} {sess:?} {euid}"
            );
        }
    }

    #[test]
    fn error_classification() {
        let cases = [
            (
                Some("org.freedesktop.DBus.Error.AccessDenied"),
                ErrorKind::AccessDenied,
            ),
            (
                Some("org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"),
                ErrorKind::AccessDenied,
            ),
            (
                Some("org.freedesktop.systemd1.NoSuchUnit"),
                ErrorKind::NoSuchUnit,
            ),
            (
                Some("org.freedesktop.systemd1.AlreadySubscribed"),
                ErrorKind::AlreadySubscribed,
            ),
            (
                Some("org.freedesktop.systemd1.NoSuchProcess"),
                ErrorKind::NotRunning,
            ),
            (
                Some("org.freedesktop.DBus.Error.FileNotFound"),
                ErrorKind::Other,
            ),
            (None, ErrorKind::Other),
        ];
        for (name, want) in cases {
            assert_eq!(classify(name), want, "{name:?}");
        }
    }

    fn method_error(name: &str, detail: &str) -> zbus::Error {
        let call = zbus::Message::method_call("/org/freedesktop/systemd1", "StartUnit")
            .unwrap()
            .build(&())
            .unwrap();
        let reply = zbus::Message::error(&call.header(), name)
            .unwrap()
            .build(&(detail,))
            .unwrap();
        zbus::Error::from(reply)
    }

    #[test]
    fn error_mapping() {
        let sys = Scope::System;
        let e = map_error(
            &method_error(
                "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
                "Interactive authentication required.",
            ),
            Scope::User { uid: 5 },
            "restart",
            "outpost.service",
        );
        assert!(
            matches!(&e, SvcError::AccessDenied { scope, .. } if scope == "user"),
            "{e:?}"
        );

        let fdo = zbus::Error::FDO(Box::new(zbus::fdo::Error::AccessDenied(
            "Permission denied".into(),
        )));
        assert!(matches!(
            map_error(&fdo, sys, "start", "x.service"),
            SvcError::AccessDenied { .. }
        ));

        let e = map_error(
            &method_error(
                "org.freedesktop.systemd1.NoSuchUnit",
                "Unit x.service not loaded.",
            ),
            sys,
            "stop",
            "x.service",
        );
        match e {
            SvcError::Call { message, .. } => assert_eq!(message, "unit x.service not loaded"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            error_parts(&method_error("org.freedesktop.systemd1.NoSuchUnit", "x"))
                .0
                .as_deref(),
            Some("org.freedesktop.systemd1.NoSuchUnit")
        );
    }

    #[test]
    fn short_messages() {
        assert_eq!(
            short_message("Unit foo.service not found.\nmore"),
            "unit foo.service not found"
        );
        assert_eq!(short_message(""), "unknown d-bus error");
        assert_eq!(timeout_secs(Duration::from_millis(1500)), 2);
        assert_eq!(timeout_secs(Duration::from_secs(120)), 120);
    }

    #[test]
    fn connect_to_missing_socket_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("unix:path={}/nope/bus", dir.path().display());
        let err = SystemdBus::connect_at(Scope::System, &addr).unwrap_err();
        assert!(
            matches!(&err, SvcError::Connect { address, .. } if *address == addr),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(
            text.starts_with("cannot connect to the system service manager at unix:path="),
            "{text}"
        );
        assert!(text.contains("no such file or directory"), "{text}");
    }

    #[test]
    fn connect_bad_address_fails_cleanly() {
        let err = SystemdBus::connect_at(Scope::User { uid: 1 }, "bogus").unwrap_err();
        assert!(matches!(err, SvcError::Connect { .. }), "{err:?}");
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn block_on_until_times_out_and_completes() {
        let never = std::future::pending::<()>();
        let t = Instant::now();
        assert!(block_on_until(never, Instant::now() + Duration::from_millis(30)).is_none());
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert_eq!(block_on_until(async { 7 }, Instant::now()), Some(7));
    }
}
