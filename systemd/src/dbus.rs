//! The production [`ServiceManager`] and [`Logind`]: systemd and logind over D-Bus, through
//! outpost's own small synchronous client ([`crate::conn`], [`crate::wire`]; no async runtime).
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
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::conn::{Conn, ConnError, BUS_NAME, BUS_PATH};
use crate::wire::Value;

use super::{Logind, PropValue, RunManager, Scope, ServiceManager, SvcError, UnitStatus, Whom};

/// The system bus when `DBUS_SYSTEM_BUS_ADDRESS` is unset.
pub const DEFAULT_SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";
/// Default bound on waiting for a start/stop/restart job.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on any single method call (a stuck bus must not hang the CLI forever). Generous because
/// `Reload` only returns once the daemon-reload is complete. Also bounds connecting
/// (authentication and `Hello`).
const METHOD_TIMEOUT: Duration = Duration::from_secs(180);
/// Poll interval of [`wait_user_manager`].
const POLL_INTERVAL: Duration = Duration::from_millis(50);

const SYSTEMD: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const SERVICE: &str = "org.freedesktop.systemd1.Service";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
const LOGIND: &str = "org.freedesktop.login1";
const LOGIND_PATH: &str = "/org/freedesktop/login1";
const LOGIND_MANAGER: &str = "org.freedesktop.login1.Manager";

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
pub fn error_parts(err: &ConnError) -> (Option<String>, String) {
    match err {
        ConnError::Method { name, message } => {
            let msg = if message.is_empty() { name } else { message };
            (Some(name.clone()), short_message(msg))
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
pub fn map_error(err: &ConnError, scope: Scope, action: &str, unit: &str) -> SvcError {
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
// systemd.

/// A connection and what has been set up on it.
#[derive(Debug)]
struct Link {
    conn: Conn,
    /// The `JobRemoved` match rule is installed (once per connection).
    watching_jobs: bool,
}

/// A connection to one systemd manager.
pub struct SystemdBus {
    link: Mutex<Link>,
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

fn str_arg(s: &str) -> Value {
    Value::Str(s.to_owned())
}

/// The first value of a reply body, which must be of the expected kind.
fn first<T>(body: Vec<Value>, what: &str, get: fn(&Value) -> Option<T>) -> Result<T, ConnError> {
    body.first()
        .map(|v| match v {
            Value::Variant(inner) => inner,
            v => v,
        })
        .and_then(get)
        .ok_or_else(|| ConnError::Protocol(format!("{what} has an unexpected type")))
}

fn get_str(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// The job path of a `JobRemoved(u id, o job, s unit, s result)` and its result.
fn job_removed(body: &[Value]) -> Result<(&str, &str), ConnError> {
    match body {
        [Value::U32(_), Value::Path(job), Value::Str(_), Value::Str(result)] => Ok((job, result)),
        _ => Err(ConnError::Protocol(
            "JobRemoved has unexpected arguments".into(),
        )),
    }
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
        let conn = Conn::connect(address, METHOD_TIMEOUT).map_err(|e| SvcError::Connect {
            scope: scope_name(scope).into(),
            address: address.into(),
            message: error_parts(&e).1,
        })?;
        Ok(SystemdBus {
            link: Mutex::new(Link {
                conn,
                watching_jobs: false,
            }),
            scope,
            job_timeout: DEFAULT_JOB_TIMEOUT,
        })
    }

    /// Give up the connection (e.g. to share it with [`LogindBus::from_connection`]).
    pub fn into_connection(self) -> Conn {
        self.link
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .conn
    }

    fn link(&self) -> MutexGuard<'_, Link> {
        // A panic while holding the lock leaves the connection usable (at worst a late reply
        // is skipped), so a poisoned lock is taken over.
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn err(&self, action: &str, unit: &str) -> impl Fn(ConnError) -> SvcError + '_ {
        let (action, unit) = (action.to_owned(), unit.to_owned());
        move |e| map_error(&e, self.scope, &action, &unit)
    }

    /// Call a `Manager` method.
    fn manager(&self, member: &str, body: Vec<Value>) -> Result<Vec<Value>, ConnError> {
        let mut link = self.link();
        link.conn
            .call_method(SYSTEMD, MANAGER_PATH, MANAGER, member, body, METHOD_TIMEOUT)
    }

    /// `Properties.Get` on a systemd object; returns the value inside the variant.
    fn property(&self, path: &str, iface: &str, name: &str) -> Result<Vec<Value>, ConnError> {
        let body = vec![str_arg(iface), str_arg(name)];
        let mut link = self.link();
        link.conn
            .call_method(SYSTEMD, path, PROPERTIES, "Get", body, METHOD_TIMEOUT)
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
        let result = self.link().run_job(unit, method, deadline);
        match result {
            // The whole wait, calls included, is bounded by `timeout`.
            Err(ConnError::Timeout) if Instant::now() >= deadline => Err(SvcError::Timeout {
                action: action.into(),
                unit: unit.into(),
                secs: timeout_secs(timeout),
            }),
            Err(e) => Err(map_error(&e, self.scope, action, unit)),
            Ok(result) if result == "done" => Ok(()),
            Ok(result) => Err(SvcError::Job {
                action: action.into(),
                unit: unit.into(),
                result,
            }),
        }
    }
}

impl Link {
    /// A `Manager` call bounded by the method timeout and `deadline`.
    fn call(
        &mut self,
        member: &str,
        body: Vec<Value>,
        deadline: Instant,
    ) -> Result<Vec<Value>, ConnError> {
        self.call_to(SYSTEMD, MANAGER_PATH, MANAGER, member, body, deadline)
    }

    fn call_to(
        &mut self,
        dest: &str,
        path: &str,
        iface: &str,
        member: &str,
        body: Vec<Value>,
        deadline: Instant,
    ) -> Result<Vec<Value>, ConnError> {
        let until = deadline.min(Instant::now() + METHOD_TIMEOUT);
        let msg = crate::wire::Message::call(dest, path, iface, member, body);
        Ok(self.conn.call(msg, until)?.body)
    }

    /// Subscribe and watch `JobRemoved`, enqueue the job, wait for its removal; its result.
    fn run_job(
        &mut self,
        unit: &str,
        method: JobMethod,
        deadline: Instant,
    ) -> Result<String, ConnError> {
        // Signals are only emitted once a client subscribed; once per connection is enough.
        match self.call("Subscribe", vec![], deadline) {
            Err(e) if classify(e.name()) != ErrorKind::AlreadySubscribed => return Err(e),
            _ => {}
        }
        // Install the match rule *before* enqueueing the job so we cannot miss its removal.
        if !self.watching_jobs {
            let rule = format!(
                "type='signal',sender='{SYSTEMD}',path='{MANAGER_PATH}',interface='{MANAGER}',member='JobRemoved'"
            );
            self.call_to(
                BUS_NAME,
                BUS_PATH,
                BUS_NAME,
                "AddMatch",
                vec![Value::Str(rule)],
                deadline,
            )?;
            self.watching_jobs = true;
        }
        // Only the manager itself may report our job's end (signals can be sent to us directly).
        let owner = self.call_to(
            BUS_NAME,
            BUS_PATH,
            BUS_NAME,
            "GetNameOwner",
            vec![str_arg(SYSTEMD)],
            deadline,
        )?;
        let owner = first(owner, "GetNameOwner", get_str)?;
        // Our job does not exist yet, so nothing queued so far can be its removal.
        self.conn.clear_signals();
        let job = self.call(
            method.member(),
            vec![str_arg(unit), str_arg("replace")],
            deadline,
        )?;
        let job = first(job, method.member(), get_str)?;
        loop {
            let m = self.conn.next_signal(deadline)?;
            let ours = m.sender.as_deref() == Some(owner.as_str())
                && m.path.as_deref() == Some(MANAGER_PATH)
                && m.interface.as_deref() == Some(MANAGER)
                && m.member.as_deref() == Some("JobRemoved");
            if !ours {
                continue;
            }
            let (removed, result) = job_removed(&m.body)?;
            if removed == job {
                return Ok(result.to_owned());
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum JobMethod {
    Start,
    Stop,
    Restart,
}

impl JobMethod {
    fn member(self) -> &'static str {
        match self {
            JobMethod::Start => "StartUnit",
            JobMethod::Stop => "StopUnit",
            JobMethod::Restart => "RestartUnit",
        }
    }
}

/// `ExecStart` as `a(sasb)`: (path, argv, ignore-failure = false).
fn exec_start(argv: &[String]) -> Option<Value> {
    let exe = argv.first()?;
    let args = argv.iter().map(|a| str_arg(a)).collect();
    Some(Value::Array(
        "(sasb)".into(),
        vec![Value::Struct(vec![
            str_arg(exe),
            Value::Array("s".into(), args),
            Value::Bool(false),
        ])],
    ))
}

/// `StartTransientUnit(name, mode, a(sv) properties, a(sa(sv)) aux)` arguments.
fn transient_args(unit: &str, description: &str, exec: Value) -> Vec<Value> {
    let prop = |k: &str, v: Value| Value::Struct(vec![str_arg(k), Value::Variant(Box::new(v))]);
    let props = vec![
        prop("Description", str_arg(description)),
        prop("ExecStart", exec),
        // Garbage-collect it whatever its result, so the name is free for the next upgrade.
        prop("CollectMode", str_arg("inactive-or-failed")),
    ];
    vec![
        str_arg(unit),
        str_arg("fail"),
        Value::Array("(sv)".into(), props),
        Value::Array("(sa(sv))".into(), vec![]),
    ]
}

impl ServiceManager for SystemdBus {
    fn scope(&self) -> Scope {
        self.scope
    }

    fn daemon_reload(&self) -> Result<(), SvcError> {
        const A: (&str, &str) = ("reload", "systemd's unit files");
        // `Reload` replies only after the reload has finished.
        self.manager("Reload", vec![])
            .map(drop)
            .map_err(self.err(A.0, A.1))
    }

    fn enable(&self, unit: &str) -> Result<(), SvcError> {
        let files = Value::Array("s".into(), vec![str_arg(unit)]);
        // (files, runtime = false, force = true)
        self.manager(
            "EnableUnitFiles",
            vec![files, Value::Bool(false), Value::Bool(true)],
        )
        .map(drop)
        .map_err(self.err("enable", unit))
    }

    fn disable(&self, unit: &str) -> Result<(), SvcError> {
        let files = Value::Array("s".into(), vec![str_arg(unit)]);
        self.manager("DisableUnitFiles", vec![files, Value::Bool(false)])
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
        match self.manager("ResetFailedUnit", vec![str_arg(unit)]) {
            Ok(_) => Ok(()),
            // Nothing loaded means nothing failed.
            Err(e) if classify(e.name()) == ErrorKind::NoSuchUnit => Ok(()),
            Err(e) => Err(map_error(&e, self.scope, "reset-failed", unit)),
        }
    }

    fn kill(&self, unit: &str, whom: Whom, signal: i32) -> Result<(), SvcError> {
        let body = vec![str_arg(unit), str_arg(whom.as_str()), Value::I32(signal)];
        match self.manager("KillUnit", body) {
            Ok(_) => Ok(()),
            // Not loaded, or loaded but not running: nobody to signal.
            Err(e)
                if matches!(
                    classify(e.name()),
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
        let Some(exec) = exec_start(argv) else {
            return Err(SvcError::Job {
                action: "start".into(),
                unit: unit.into(),
                result: "empty command".into(),
            });
        };
        match self.manager(
            "StartTransientUnit",
            transient_args(unit, description, exec),
        ) {
            Ok(_) => Ok(()),
            // A guard from an earlier upgrade still runs: it watches whichever upgrader the
            // record names, so it covers this one too.
            Err(e) if e.name() == Some("org.freedesktop.systemd1.UnitExists") => Ok(()),
            Err(e) => Err(map_error(&e, self.scope, "start", unit)),
        }
    }

    fn status(&self, unit: &str) -> Result<UnitStatus, SvcError> {
        let err = self.err("query the status of", unit);
        // LoadUnit succeeds for unknown units too; their LoadState is `not-found`.
        let path = self.manager("LoadUnit", vec![str_arg(unit)]);
        let path = path
            .and_then(|b| first(b, "LoadUnit", get_str))
            .map_err(&err)?;
        let unit_str = |name: &str| {
            self.property(&path, UNIT, name)
                .and_then(|b| first(b, name, get_str))
                .map_err(&err)
        };
        let mut st = UnitStatus {
            load_state: unit_str("LoadState")?,
            active_state: unit_str("ActiveState")?,
            sub_state: unit_str("SubState")?,
            active_enter_timestamp_monotonic: self
                .property(&path, UNIT, "ActiveEnterTimestampMonotonic")
                .and_then(|b| first(b, "ActiveEnterTimestampMonotonic", Value::as_u64))
                .map_err(&err)?,
            // Unknown units, generated units and units without a unit file have no state.
            unit_file_state: self
                .manager("GetUnitFileState", vec![str_arg(unit)])
                .and_then(|b| first(b, "GetUnitFileState", get_str))
                .unwrap_or_default(),
            ..UnitStatus::default()
        };
        // The Service interface exists only for .service units; elsewhere these stay 0.
        let service = |name: &str| self.property(&path, SERVICE, name).ok();
        st.main_pid = service("MainPID")
            .and_then(|b| first(b, "MainPID", Value::as_u32).ok())
            .unwrap_or(0);
        st.n_restarts = service("NRestarts")
            .and_then(|b| first(b, "NRestarts", Value::as_u32).ok())
            .unwrap_or(0);
        st.exec_main_status = service("ExecMainStatus")
            .and_then(|b| first(b, "ExecMainStatus", Value::as_i32).ok())
            .unwrap_or(0);
        st.exec_main_code = service("ExecMainCode")
            .and_then(|b| first(b, "ExecMainCode", Value::as_i32).ok())
            .unwrap_or(0);
        st.result = service("Result")
            .and_then(|b| first(b, "Result", get_str).ok())
            .unwrap_or_default();
        st.control_group = service("ControlGroup")
            .and_then(|b| first(b, "ControlGroup", get_str).ok())
            .unwrap_or_default();
        Ok(st)
    }
}

/// A [`PropValue`] as the D-Bus value `StartTransientUnit` expects.
fn prop_value(v: &PropValue) -> Option<Value> {
    Some(match v {
        PropValue::Str(s) => str_arg(s),
        PropValue::Strs(l) => Value::Array("s".into(), l.iter().map(|s| str_arg(s)).collect()),
        PropValue::U64(n) => Value::U64(*n),
        PropValue::I32(n) => Value::I32(*n),
        PropValue::Bool(b) => Value::Bool(*b),
        PropValue::Exec(argv) => exec_start(argv)?,
        PropValue::TempFs(l) => Value::Array(
            "(ss)".into(),
            l.iter()
                .map(|(p, o)| Value::Struct(vec![str_arg(p), str_arg(o)]))
                .collect(),
        ),
        PropValue::Binds(l) => Value::Array(
            "(ssbt)".into(),
            l.iter()
                .map(|(src, dst)| {
                    Value::Struct(vec![
                        str_arg(src),
                        str_arg(dst),
                        // ignore a missing source: no
                        Value::Bool(false),
                        Value::U64(MS_REC),
                    ])
                })
                .collect(),
        ),
    })
}

/// `mount(2)`'s recursive flag, as `BindPaths` takes it over D-Bus.
const MS_REC: u64 = 16384;

/// `StartTransientUnit(name, "fail", props, [])` arguments for a run's unit.
fn run_unit_args(unit: &str, props: &[(String, PropValue)]) -> Option<Vec<Value>> {
    let mut out = Vec::with_capacity(props.len());
    for (k, v) in props {
        out.push(Value::Struct(vec![
            str_arg(k),
            Value::Variant(Box::new(prop_value(v)?)),
        ]));
    }
    Some(vec![
        str_arg(unit),
        str_arg("fail"),
        Value::Array("(sv)".into(), out),
        Value::Array("(sa(sv))".into(), vec![]),
    ])
}

impl RunManager for SystemdBus {
    fn scope(&self) -> Scope {
        self.scope
    }

    fn start_transient_unit(
        &self,
        unit: &str,
        props: &[(String, PropValue)],
    ) -> Result<(), SvcError> {
        let Some(args) = run_unit_args(unit, props) else {
            return Err(SvcError::Job {
                action: "start".into(),
                unit: unit.into(),
                result: "empty command".into(),
            });
        };
        match self.manager("StartTransientUnit", args) {
            Ok(_) => Ok(()),
            Err(e) if e.name() == Some("org.freedesktop.systemd1.UnitExists") => {
                Err(SvcError::Job {
                    action: "start".into(),
                    unit: unit.into(),
                    result: "exists".into(),
                })
            }
            Err(e) => Err(map_error(&e, self.scope, "start", unit)),
        }
    }

    fn start_unit(&self, unit: &str) -> Result<(), SvcError> {
        ServiceManager::start(self, unit)
    }

    fn stop_nowait(&self, unit: &str) -> Result<(), SvcError> {
        match self.manager("StopUnit", vec![str_arg(unit), str_arg("replace")]) {
            Ok(_) => Ok(()),
            Err(e) if classify(e.name()) == ErrorKind::NoSuchUnit => Ok(()),
            Err(e) => Err(map_error(&e, self.scope, "stop", unit)),
        }
    }

    fn unit_status(&self, unit: &str) -> Result<UnitStatus, SvcError> {
        ServiceManager::status(self, unit)
    }

    fn reset_failed(&self, unit: &str) -> Result<(), SvcError> {
        ServiceManager::reset_failed(self, unit)
    }

    fn list_units(&self, pattern: &str) -> Result<Vec<String>, SvcError> {
        let body = vec![
            Value::Array("s".into(), vec![]),
            Value::Array("s".into(), vec![str_arg(pattern)]),
        ];
        let reply = self
            .manager("ListUnitsByPatterns", body)
            .map_err(self.err("list", pattern))?;
        let Some(Value::Array(_, units)) = reply.into_iter().next() else {
            return Err(SvcError::Call {
                action: "list".into(),
                unit: pattern.into(),
                message: "ListUnitsByPatterns has an unexpected reply".into(),
            });
        };
        Ok(units
            .into_iter()
            .filter_map(|u| match u {
                Value::Struct(mut f) if !f.is_empty() => match f.swap_remove(0) {
                    Value::Str(name) => Some(name),
                    _ => None,
                },
                _ => None,
            })
            .collect())
    }

    fn manager_cgroup(&self) -> Result<String, SvcError> {
        self.property(MANAGER_PATH, MANAGER, "ControlGroup")
            .and_then(|b| first(b, "ControlGroup", get_str))
            .map_err(self.err("query", "the manager's cgroup"))
    }
}

/// The manager's `Version` property (e.g. `"255.4-1ubuntu8"`), `None` if it cannot be read.
pub fn systemd_version(bus: &SystemdBus) -> Option<String> {
    let body = bus.property(MANAGER_PATH, MANAGER, "Version").ok()?;
    first(body, "Version", get_str).ok()
}

// ---------------------------------------------------------------------------------------------
// logind.

/// logind on the system bus.
pub struct LogindBus {
    conn: Mutex<Conn>,
}

impl std::fmt::Debug for LogindBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogindBus").finish_non_exhaustive()
    }
}

impl LogindBus {
    /// Connect to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` or the default socket).
    pub fn connect() -> Result<LogindBus, SvcError> {
        Ok(LogindBus::from_connection(
            SystemdBus::connect(Scope::System)?.into_connection(),
        ))
    }

    /// Share an existing system-bus connection.
    pub fn from_connection(conn: Conn) -> LogindBus {
        LogindBus {
            conn: Mutex::new(conn),
        }
    }
}

impl Logind for LogindBus {
    fn set_linger(&self, uid: u32, enable: bool) -> Result<(), SvcError> {
        let action = format!(
            "{} lingering for uid {uid} through",
            if enable { "enable" } else { "disable" }
        );
        let unit = "systemd-logind.service";
        // interactive = false: never wait for a polkit agent (see the module docs).
        let body = vec![Value::U32(uid), Value::Bool(enable), Value::Bool(false)];
        // See SystemdBus::link for why a poisoned lock is taken over.
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        conn.call_method(
            LOGIND,
            LOGIND_PATH,
            LOGIND_MANAGER,
            "SetUserLinger",
            body,
            METHOD_TIMEOUT,
        )
        .map(drop)
        .map_err(|e| map_error(&e, Scope::System, &action, unit))
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

    fn method_error(name: &str, detail: &str) -> ConnError {
        ConnError::Method {
            name: name.into(),
            message: detail.into(),
        }
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

        let fdo = method_error(
            "org.freedesktop.DBus.Error.AccessDenied",
            "Permission denied",
        );
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
    fn error_without_message_uses_its_name() {
        let (name, msg) = error_parts(&method_error("org.example.Boom", ""));
        assert_eq!(name.as_deref(), Some("org.example.Boom"));
        assert_eq!(msg, "org.example.Boom");
        let (name, msg) = error_parts(&ConnError::Timeout);
        assert_eq!(
            (name, msg.as_str()),
            (None, "timed out waiting for the bus")
        );
    }

    #[test]
    fn transient_unit_arguments() {
        let argv = vec!["/usr/bin/outpost".to_owned(), "guard".to_owned()];
        let exec = exec_start(&argv).unwrap();
        let args = transient_args("g.service", "guard", exec);
        let sig: String = args.iter().map(Value::signature).collect();
        assert_eq!(sig, "ssa(sv)a(sa(sv))");
        let Value::Array(_, props) = &args[2] else {
            panic!("{args:?}")
        };
        let exec = &props[1];
        assert_eq!(exec.signature(), "(sv)");
        let Value::Struct(kv) = exec else { panic!() };
        assert_eq!(kv[1].clone().into_inner().signature(), "a(sasb)");
        assert!(exec_start(&[]).is_none());
        // The whole call marshals.
        let msg =
            crate::wire::Message::call(SYSTEMD, MANAGER_PATH, MANAGER, "StartTransientUnit", args);
        assert!(msg.encode().is_ok());
    }

    #[test]
    fn run_unit_property_types() {
        let props: Vec<(String, PropValue)> = vec![
            ("Description".into(), PropValue::Str("run".into())),
            ("Environment".into(), PropValue::Strs(vec!["A=1".into()])),
            ("RuntimeMaxUSec".into(), PropValue::U64(5_000_000)),
            ("OOMScoreAdjust".into(), PropValue::I32(500)),
            ("RemainAfterExit".into(), PropValue::Bool(true)),
            (
                "ExecStart".into(),
                PropValue::Exec(vec!["/bin/true".into()]),
            ),
            (
                "TemporaryFileSystem".into(),
                PropValue::TempFs(vec![("/a".into(), "ro".into())]),
            ),
            (
                "BindPaths".into(),
                PropValue::Binds(vec![("/a/w".into(), "/a/w".into())]),
            ),
        ];
        let args = run_unit_args("outpost-run-r_1.service", &props).unwrap();
        let sig: String = args.iter().map(Value::signature).collect();
        assert_eq!(sig, "ssa(sv)a(sa(sv))");
        let Value::Array(_, got) = &args[2] else {
            panic!("{args:?}")
        };
        let types: Vec<String> = got
            .iter()
            .map(|p| match p {
                Value::Struct(kv) => kv[1].clone().into_inner().signature(),
                _ => panic!("{p:?}"),
            })
            .collect();
        assert_eq!(
            types,
            ["s", "as", "t", "i", "b", "a(sasb)", "a(ss)", "a(ssbt)"]
        );
        let msg =
            crate::wire::Message::call(SYSTEMD, MANAGER_PATH, MANAGER, "StartTransientUnit", args);
        assert!(msg.encode().is_ok());
        // An empty command has no ExecStart.
        let empty = [("ExecStart".to_string(), PropValue::Exec(vec![]))];
        assert!(run_unit_args("x.service", &empty).is_none());
    }

    #[test]
    fn job_removed_arguments() {
        let body = vec![
            Value::U32(7),
            Value::Path("/org/freedesktop/systemd1/job/7".into()),
            str_arg("x.service"),
            str_arg("done"),
        ];
        assert_eq!(
            job_removed(&body).unwrap(),
            ("/org/freedesktop/systemd1/job/7", "done")
        );
        assert!(matches!(
            job_removed(&body[..3]),
            Err(ConnError::Protocol(_))
        ));
    }

    #[test]
    fn reply_values() {
        let v = vec![Value::Variant(Box::new(Value::U32(5)))];
        assert_eq!(first(v.clone(), "MainPID", Value::as_u32).unwrap(), 5);
        assert!(first(v, "MainPID", Value::as_i32).is_err());
        assert!(first(vec![], "LoadUnit", get_str).is_err());
        let p = vec![Value::Path("/org/freedesktop/systemd1/unit/x".into())];
        assert_eq!(
            first(p, "LoadUnit", get_str).unwrap(),
            "/org/freedesktop/systemd1/unit/x"
        );
    }
}
