//! Deciding, not doing: what the agent makes of an offer (start a unit with these
//! properties, or reject it with a reason) and what a finished unit's state means (the run's
//! result). Pure functions over plain inputs, table-tested; [`super::engine`] applies them.
use outpost_pack::{Action, Pack};
use outpost_proto::{RunOffer, RunOutcome};
use outpost_systemd::{PropValue, UnitStatus};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The slice every run unit is started in (in the service user's manager).
pub const SLICE: &str = "outpost-runs.slice";
/// `PATH` of a run.
pub const RUN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// After SIGTERM (cancel, timeout), how long the run's processes have before SIGKILL of the
/// whole control group.
pub const STOP_GRACE_SECS: u64 = 10;
/// Variables the service manager would pass that a run must not see (the manager's own bus
/// and pid: a run is not meant to drive the manager).
pub const UNSET_ENV: [&str; 2] = ["DBUS_SESSION_BUS_ADDRESS", "MANAGERPID"];
/// A run is more likely than the agent to be killed when memory runs out.
pub const OOM_SCORE_ADJUST: i32 = 500;
/// A run's CPU and IO weight (the agent's is systemd's default, 100), when the controller
/// is delegated.
pub const WEIGHT: u64 = 50;

/// The unit of run `id`.
pub fn unit_name(id: &str) -> String {
    format!("outpost-run-{id}.service")
}

/// A run id the hub may send: 1-64 of `A-Za-z0-9_-` (it names a unit and a directory).
pub fn valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What this host offers a run, read once by the engine.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// The agent's state dir: runs live in `runs/<id>/`.
    pub state_dir: PathBuf,
    /// The agent's environment (systemd loaded the runner env file into it): allowlisted
    /// names are taken from here.
    pub env: BTreeMap<String, String>,
    /// cgroup v2 controllers delegated to the manager runs are started in.
    pub controllers: BTreeSet<String>,
    /// That manager's cgroup (named in rejections).
    pub cgroup: String,
    /// Where privileged actions can run: `None` where they cannot (user mode, or a system
    /// install without the root-owned template).
    pub privileged: Option<PrivilegedHost>,
    /// How a run is fenced off from the agent's files, when this host's manager can do it
    /// (the engine proves it at connect: [`Isolation`]); `None`: it cannot, and runs see
    /// what the service user sees.
    pub isolation: Option<Isolation>,
}

/// What a run (as the service user, in its user manager) must not see or change, beyond
/// the agent's state dir, which a run never sees: it gets an empty read-only directory
/// there, with only its own work dir bound into it. Enforced by the manager in the run's
/// own mount namespace (`PrivateUsers=yes`, which an unprivileged manager needs for any of
/// it; without it a user manager ignores these settings silently).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Isolation {
    /// Read-only for the run (user mode: outpost's own files, all the user's): its
    /// binaries, config and state, so a run cannot change the next agent it would start.
    pub read_only: Vec<PathBuf>,
    /// Invisible to the run: the runner env file (a run gets only its allowlisted names).
    pub inaccessible: Vec<PathBuf>,
}

/// What a privileged run gets: root's files, root's manager, the admin's grants.
#[derive(Debug, Clone, Default)]
pub struct PrivilegedHost {
    /// Root's state dir: privileged runs live in `runs/<id>/` there (root-owned, the log
    /// readable by the service user's group).
    pub state_dir: PathBuf,
    /// The host admin's grants (`sudo outpost pack trust NAME --privileged`): pack name →
    /// the tree hash it was granted at.
    pub grants: BTreeMap<String, String>,
    /// The controllers of the system manager (privileged runs are its units).
    pub controllers: BTreeSet<String>,
    pub cgroup: String,
}

/// Where a run's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPaths {
    /// `runs/<id>`: the agent's record and the log.
    pub dir: PathBuf,
    /// `runs/<id>/work`: the run's working directory, `OUTPOST_RUN_DIR`.
    pub work: PathBuf,
    /// `runs/<id>/output.log`: stdout and stderr, appended by the manager.
    pub log: PathBuf,
    /// `runs/<id>/run.json`: the agent's record ([`super::record::RunRecord`]).
    pub record: PathBuf,
}

pub fn paths(state_dir: &Path, id: &str) -> RunPaths {
    let dir = state_dir.join("runs").join(id);
    RunPaths {
        work: dir.join("work"),
        log: dir.join("output.log"),
        record: dir.join("run.json"),
        dir,
    }
}

/// A unit to start for a run.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitPlan {
    pub unit: String,
    pub paths: RunPaths,
    pub props: Vec<(String, PropValue)>,
    /// Bytes of log uploaded at most; past it the run is stopped (`log_limit`).
    pub log_cap: u64,
    pub max_concurrency: u32,
    /// A privileged action: root starts the unit (in the system manager) after checking the
    /// request against the root-owned pack; its files are in root's state dir.
    pub privileged: bool,
    /// A supervised action: `props` is the template of each round's unit ([`round_props`]).
    pub supervise: Option<outpost_pack::Supervise>,
}

/// The unit of round `n` of supervised run `id`.
pub fn round_unit(id: &str, n: u32) -> String {
    format!("outpost-run-{id}.round{n}.service")
}

/// Round `n`'s log in the run's directory.
pub fn round_log(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("round-{n}.log"))
}

/// The link to the live round's log.
pub const ROUND_CURRENT: &str = "round-current.log";

/// Round `n`'s unit properties: the run's, with the round's log, its `round_timeout` and
/// `OUTPOST_ROUND`.
pub fn round_props(p: &UnitPlan, n: u32, timeout_secs: u64) -> Vec<(String, PropValue)> {
    let log = round_log(&p.paths.dir, n).display().to_string();
    p.props
        .iter()
        .map(|(k, v)| {
            let v = match (k.as_str(), v) {
                ("StandardOutputFileToAppend" | "StandardErrorFileToAppend", _) => {
                    PropValue::Str(log.clone())
                }
                ("RuntimeMaxUSec", _) => PropValue::U64(timeout_secs.saturating_mul(1_000_000)),
                ("Environment", PropValue::Strs(env)) => {
                    let mut env = env.clone();
                    env.push(format!("OUTPOST_ROUND={n}"));
                    PropValue::Strs(env)
                }
                ("Description", PropValue::Str(d)) => PropValue::Str(format!("{d}, round {n}")),
                _ => v.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// What to do with an offer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Start(Box<UnitPlan>),
    /// Report `rejected` with this one-line reason.
    Reject(String),
}

/// Check `offer` against the installed packs and this host, and plan its unit.
pub fn decide(offer: &RunOffer, packs: &[Pack], host: &Host) -> Decision {
    match plan(offer, packs, host) {
        Ok(p) => Decision::Start(Box::new(p)),
        Err(why) => Decision::Reject(why),
    }
}

fn plan(offer: &RunOffer, packs: &[Pack], host: &Host) -> Result<UnitPlan, String> {
    if !valid_run_id(&offer.run_id) {
        return Err(format!(
            "run id {:?} is not 1-64 of A-Za-z0-9_-",
            offer.run_id
        ));
    }
    let pack = packs
        .iter()
        .find(|p| p.name == offer.pack)
        .ok_or_else(|| format!("pack {} is not installed on this host", offer.pack))?;
    if pack.sha256 != offer.sha256 {
        return Err(format!(
            "pack {} here is {} but the run was dispatched for {} (drifted): trust this host's hash at the hub, or install the trusted pack here",
            pack.name,
            short(&pack.sha256),
            short(&offer.sha256)
        ));
    }
    let action = pack
        .action(&offer.action)
        .ok_or_else(|| format!("pack {} has no action {}", pack.name, offer.action))?;
    let (state_dir, controllers, cgroup) = match (&host.privileged, action.privileged) {
        (_, false) => (&host.state_dir, &host.controllers, &host.cgroup),
        (None, true) => {
            return Err(format!(
                "action {}/{} is privileged: this agent runs actions as its service user only (privileged actions need a system-mode install, whose root-owned {} admits them)",
                pack.name, action.id, outpost_core::layout::files::PRIVILEGED_TEMPLATE
            ))
        }
        (Some(ph), true) => {
            if ph.grants.get(&pack.name) != Some(&pack.sha256) {
                return Err(format!(
                    "action {}/{} is privileged and this host's admin has not granted pack {} privileged actions at hash {}: `sudo outpost pack trust {} --privileged` on the host, after reviewing it",
                    pack.name,
                    action.id,
                    pack.name,
                    short(&pack.sha256),
                    pack.name
                ));
            }
            (&ph.state_dir, &ph.controllers, &ph.cgroup)
        }
    };
    enforceable(action, controllers, cgroup)?;
    let inv = action.invocation(&pack.root, &offer.params)?;
    let paths = paths(state_dir, &offer.run_id);
    let mut env = vec![
        format!("PATH={RUN_PATH}"),
        "LANG=C.UTF-8".to_string(),
        format!("OUTPOST_RUN_ID={}", offer.run_id),
        format!("OUTPOST_RUN_DIR={}", paths.work.display()),
    ];
    env.extend(inv.env.iter().map(|(k, v)| format!("{k}={v}")));
    for name in &action.env {
        if let Some(v) = host.env.get(name) {
            env.push(format!("{name}={v}"));
        }
    }
    let s = |v: &str| PropValue::Str(v.to_string());
    let log = paths.log.display().to_string();
    let mut props: Vec<(String, PropValue)> = vec![
        (
            "Description".into(),
            s(&format!(
                "outpost run {} ({}/{})",
                offer.run_id, pack.name, action.id
            )),
        ),
        ("ExecStart".into(), PropValue::Exec(inv.argv)),
        ("Type".into(), s("exec")),
        // The unit stays loaded after its process exits, so its result can be read by an
        // agent that was down meanwhile.
        ("RemainAfterExit".into(), PropValue::Bool(true)),
        ("Slice".into(), s(SLICE)),
        (
            "WorkingDirectory".into(),
            s(&paths.work.display().to_string()),
        ),
        ("StandardInput".into(), s("null")),
        ("StandardOutputFileToAppend".into(), s(&log)),
        ("StandardErrorFileToAppend".into(), s(&log)),
        ("Environment".into(), PropValue::Strs(env)),
        (
            "UnsetEnvironment".into(),
            PropValue::Strs(UNSET_ENV.iter().map(|v| v.to_string()).collect()),
        ),
        ("NoNewPrivileges".into(), PropValue::Bool(true)),
        (
            "RuntimeMaxUSec".into(),
            PropValue::U64(action.limits.timeout_secs.saturating_mul(1_000_000)),
        ),
        ("KillMode".into(), s("control-group")),
        ("SendSIGKILL".into(), PropValue::Bool(true)),
        (
            "TimeoutStopUSec".into(),
            PropValue::U64(STOP_GRACE_SECS * 1_000_000),
        ),
        ("OOMScoreAdjust".into(), PropValue::I32(OOM_SCORE_ADJUST)),
    ];
    if let Some(m) = action.limits.memory_bytes {
        props.push(("MemoryMax".into(), PropValue::U64(m)));
        // Without this the limit only pushes the run into swap.
        props.push(("MemorySwapMax".into(), PropValue::U64(0)));
    }
    if let Some(pct) = action.limits.cpu_percent {
        props.push((
            "CPUQuotaPerSecUSec".into(),
            PropValue::U64(u64::from(pct) * 10_000),
        ));
    }
    if let Some(t) = action.limits.tasks {
        props.push(("TasksMax".into(), PropValue::U64(u64::from(t))));
    }
    if let (Some(iso), false) = (&host.isolation, action.privileged) {
        props.extend(isolation_props(iso, state_dir, &paths.work));
    }
    if controllers.contains("cpu") {
        props.push(("CPUWeight".into(), PropValue::U64(WEIGHT)));
    }
    if controllers.contains("io") {
        props.push(("IOWeight".into(), PropValue::U64(WEIGHT)));
    }
    Ok(UnitPlan {
        unit: unit_name(&offer.run_id),
        paths,
        props,
        log_cap: action.limits.log_bytes,
        max_concurrency: action.max_concurrency,
        privileged: action.privileged,
        supervise: action.supervise.clone(),
    })
}

/// The mount namespace of an unprivileged run: the agent's state dir an empty read-only
/// tmpfs with the run's work dir bound into it (its record, log, the agent's token,
/// journal and the other runs are not there), `iso`'s paths read-only or gone. A path
/// missing on this host is skipped (`-`), except the work dir, which the engine creates.
pub fn isolation_props(iso: &Isolation, agent_dir: &Path, work: &Path) -> Vec<(String, PropValue)> {
    let d = |p: &Path| p.display().to_string();
    let maybe = |l: &[PathBuf]| l.iter().map(|p| format!("-{}", d(p))).collect();
    vec![
        ("PrivateUsers".into(), PropValue::Bool(true)),
        (
            "ReadOnlyPaths".into(),
            PropValue::Strs(maybe(&iso.read_only)),
        ),
        (
            "InaccessiblePaths".into(),
            PropValue::Strs(maybe(&iso.inaccessible)),
        ),
        (
            "TemporaryFileSystem".into(),
            PropValue::TempFs(vec![(d(agent_dir), "ro".into())]),
        ),
        (
            "BindPaths".into(),
            PropValue::Binds(vec![(d(work), d(work))]),
        ),
    ]
}

/// The unit that proves, once per connection to the manager, that it applies [`Isolation`].
pub const ISOLATION_PROBE_UNIT: &str = "outpost-isolation-probe.service";
/// The probe's directory in the agent's state dir: a `marker` the probe must not see and a
/// `work` dir it must.
pub const ISOLATION_PROBE_DIR: &str = "isolation-probe";

/// The probe: a run's isolation around `/bin/sh -c 'test ! -e MARKER && test -d WORK'`, so
/// it exits 0 only where the agent's state dir is really hidden and the work dir bound in
/// (a manager that ignored the settings exits 1; one that cannot apply them fails to
/// spawn, [`isolation_verdict`]).
pub fn isolation_probe_props(iso: &Isolation, agent_dir: &Path) -> Vec<(String, PropValue)> {
    let dir = agent_dir.join(ISOLATION_PROBE_DIR);
    let (marker, work) = (dir.join("marker"), dir.join("work"));
    let s = |v: &str| PropValue::Str(v.to_string());
    let mut props = vec![
        (
            "Description".into(),
            s("outpost: can runs be isolated here?"),
        ),
        (
            "ExecStart".into(),
            PropValue::Exec(vec![
                "/bin/sh".into(),
                "-c".into(),
                r#"test ! -e "$1" && test -d "$2""#.into(),
                "sh".into(),
                marker.display().to_string(),
                work.display().to_string(),
            ]),
        ),
        ("Type".into(), s("exec")),
        ("RemainAfterExit".into(), PropValue::Bool(true)),
        ("StandardInput".into(), s("null")),
        (
            "Environment".into(),
            PropValue::Strs(vec![format!("PATH={RUN_PATH}")]),
        ),
        ("NoNewPrivileges".into(), PropValue::Bool(true)),
        ("RuntimeMaxUSec".into(), PropValue::U64(10_000_000)),
    ];
    props.extend(isolation_props(iso, agent_dir, &work));
    props
}

/// What the probe's unit says once its process has ended (`None` while it has not): `Ok`
/// when the isolation held, else why runs cannot be isolated on this host.
pub fn isolation_verdict(st: &UnitStatus) -> Option<Result<(), String>> {
    // 1: the process exited (the status is its code, or systemd's own 2xx for a failed
    // spawn); 2, 3: killed, dumped core.
    let ended = st.exec_main_code != 0 || st.active_state == "failed";
    if !ended {
        return None;
    }
    Some(match (st.exec_main_code, st.exec_main_status) {
        (1, 0) => Ok(()),
        (1, 1) => Err(
            "the user manager started the probe without the isolation (it ignores PrivateUsers= and mount settings)".into(),
        ),
        (1, 217) => Err(
            "the user manager cannot create a user namespace for a run (217/USER): unprivileged user namespaces are disabled or filtered here".into(),
        ),
        (1, 226) => Err(
            "the user manager cannot set up a mount namespace for a run (226/NAMESPACE)".into(),
        ),
        (1, n) => Err(format!("the probe exited with status {n}")),
        (0, _) => Err(format!("the probe failed to start ({})", st.result)),
        (_, sig) => Err(format!("the probe was killed by signal {sig}")),
    })
}

/// Every limit of `action` needs its controller delegated to the runs' manager; one that
/// would be silently ignored rejects the run.
fn enforceable(
    action: &Action,
    controllers: &BTreeSet<String>,
    cgroup: &str,
) -> Result<(), String> {
    let l = &action.limits;
    let needs = [
        ("memory", l.memory_bytes.is_some(), "memory"),
        ("cpu", l.cpu_percent.is_some(), "cpu"),
        ("tasks", l.tasks.is_some(), "pids"),
    ];
    for (limit, set, controller) in needs {
        if set && !controllers.contains(controller) {
            let cg = if cgroup.is_empty() {
                "its cgroup".to_string()
            } else {
                cgroup.to_string()
            };
            return Err(format!(
                "limits.{limit} cannot be enforced on this host: the {controller} controller is not delegated to the service manager that runs actions ({cg}); enable it (cgroup v2 with {controller} delegated to user@.service) or remove the limit from the pack"
            ));
        }
    }
    Ok(())
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// The result of a finished run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub outcome: RunOutcome,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub reason: String,
}

/// Whether the unit of a started run has ended, and how. `cancel` is the reason the agent
/// stopped it (an admin's cancel, the log cap), if it did. `None`: still running.
pub fn ending(st: &UnitStatus, cancel: Option<&str>, timeout_secs: u64) -> Option<Ending> {
    let gone = st.load_state == "not-found";
    let exited = st.active_state == "active" && st.sub_state == "exited";
    let stopped = matches!(st.active_state.as_str(), "inactive" | "failed");
    if !(gone || exited || stopped) {
        return None;
    }
    let (exit_code, signal) = match st.exec_main_code {
        1 => (Some(st.exec_main_status), None),
        2 | 3 => (None, Some(signal_name(st.exec_main_status))),
        _ => (None, None),
    };
    let e = |outcome, reason: String| Ending {
        outcome,
        exit_code,
        signal: signal.clone(),
        reason,
    };
    if let Some(why) = cancel {
        return Some(e(RunOutcome::Canceled, format!("canceled: {why}")));
    }
    if gone {
        return Some(Ending {
            outcome: RunOutcome::Failed,
            exit_code: None,
            signal: None,
            reason: "the run's unit is gone (the host rebooted or the service user's manager restarted while the agent was down)".into(),
        });
    }
    Some(match st.result.as_str() {
        "timeout" => e(
            RunOutcome::TimedOut,
            format!("timeout: ran longer than {timeout_secs}s (limits.timeout); its processes were stopped"),
        ),
        "oom-kill" => e(
            RunOutcome::Failed,
            "oom-kill: the run reached its memory limit and the kernel killed it".into(),
        ),
        "success" if exit_code == Some(0) || exit_code.is_none() && signal.is_none() => {
            e(RunOutcome::Succeeded, String::new())
        }
        _ if signal.is_some() => e(
            RunOutcome::Failed,
            format!(
                "signal: killed by {}",
                signal.as_deref().unwrap_or("a signal")
            ),
        ),
        "success" | "exit-code" => e(
            RunOutcome::Failed,
            format!("exit-code: exited with {}", exit_code.unwrap_or(-1)),
        ),
        other => e(RunOutcome::Failed, format!("{other}: as systemd reports it")),
    })
}

/// `SIGTERM` for 15, `signal 64` for what has no name here.
pub fn signal_name(n: i32) -> String {
    let name = match n {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => return format!("signal {n}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(dir: &Path, toml: &str) -> Pack {
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("pack.toml"), toml).unwrap();
        std::fs::write(dir.join("bin/x.sh"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("bin/x.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        outpost_pack::load(dir, None).unwrap()
    }

    const TOML: &str = r#"
[pack]
name = "demo"
version = "1.0.0"

[[action]]
id = "hello"
command = ["bin/x.sh", "{who}"]
env = ["ALLOWED"]
[[action.param]]
name = "who"
type = "string"
pattern = "[a-z]+"
max_len = 8
required = true
[[action.param]]
name = "loud"
type = "bool"
as = "env"
default = false

[[action]]
id = "capped"
command = ["/bin/true"]
[action.limits]
memory = "64M"
cpu = "50%"
tasks = 16
timeout = "5s"
log_size = "1M"

[[action]]
id = "root"
command = ["/usr/bin/id"]
privileged = true
"#;

    fn offer(pack: &Pack, action: &str, params: &[(&str, &str)]) -> RunOffer {
        RunOffer {
            run_id: "r_0123".into(),
            pack: pack.name.clone(),
            sha256: pack.sha256.clone(),
            action: action.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            lease_secs: 60,
        }
    }

    fn host(controllers: &[&str]) -> Host {
        Host {
            state_dir: "/var/lib/outpost/agent".into(),
            env: [("ALLOWED", "yes"), ("SECRET", "no")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            controllers: controllers.iter().map(|c| c.to_string()).collect(),
            cgroup: "/user.slice/user-999.slice/user@999.service".into(),
            privileged: None,
            isolation: None,
        }
    }

    #[test]
    fn privileged_actions_need_the_template_and_the_admins_grant() {
        let d = tempfile::tempdir().unwrap();
        let p = pack(d.path(), TOML);
        let grants = |sha: &str| PrivilegedHost {
            state_dir: "/var/lib/outpost".into(),
            grants: [("demo".to_string(), sha.to_string())].into(),
            controllers: Default::default(),
            cgroup: "/".into(),
        };
        // (what, privileged host, action, Ok(log dir) or Err(substring))
        #[allow(clippy::type_complexity)]
        let cases: Vec<(&str, Option<PrivilegedHost>, &str, Result<&str, &str>)> = vec![
            ("user mode", None, "root", Err("service user only")),
            (
                "not granted",
                Some(PrivilegedHost::default()),
                "root",
                Err("sudo outpost pack trust demo --privileged"),
            ),
            (
                "granted at another hash",
                Some(grants(&"0".repeat(64))),
                "root",
                Err("has not granted"),
            ),
            (
                "granted",
                Some(grants(&p.sha256)),
                "root",
                Ok("/var/lib/outpost/runs/r_0123"),
            ),
            (
                "unprivileged action stays the service user's",
                Some(grants(&p.sha256)),
                "hello",
                Ok("/var/lib/outpost/agent/runs/r_0123"),
            ),
            (
                "limits need the system manager's controllers",
                Some(grants(&p.sha256)),
                "capped",
                Err("limits.memory"),
            ),
        ];
        for (what, ph, action, want) in cases {
            let mut h = host(&[]);
            h.privileged = ph;
            let params: &[(&str, &str)] = if action == "hello" {
                &[("who", "bob")]
            } else {
                &[]
            };
            match (
                decide(&offer(&p, action, params), std::slice::from_ref(&p), &h),
                want,
            ) {
                (Decision::Start(plan), Ok(dir)) => {
                    assert_eq!(plan.paths.dir, Path::new(dir), "{what}");
                    assert_eq!(plan.privileged, action == "root", "{what}");
                }
                (Decision::Reject(why), Err(sub)) => {
                    assert!(why.contains(sub), "{what}: {why}");
                }
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
        // A grant for another pack of the same hash grants nothing.
        let mut h = host(&[]);
        h.privileged = Some(PrivilegedHost {
            grants: [("other".to_string(), p.sha256.clone())].into(),
            ..grants(&p.sha256)
        });
        h.privileged.as_mut().unwrap().grants.remove("demo");
        assert!(matches!(
            decide(&offer(&p, "root", &[]), std::slice::from_ref(&p), &h),
            Decision::Reject(_)
        ));
    }

    fn prop<'a>(p: &'a UnitPlan, name: &str) -> Option<&'a PropValue> {
        p.props.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    #[test]
    fn isolation_fences_unprivileged_runs_off_the_agents_files() {
        let d = tempfile::tempdir().unwrap();
        let p = pack(d.path(), TOML);
        let iso = Isolation {
            read_only: vec!["/home/bob/.config/outpost".into()],
            inaccessible: vec!["/home/bob/.config/outpost/outpost.env".into()],
        };
        let grants = PrivilegedHost {
            state_dir: "/var/lib/outpost".into(),
            grants: [("demo".to_string(), p.sha256.clone())].into(),
            ..PrivilegedHost::default()
        };
        // (what, isolation on this host, action, isolated)
        let cases = [
            ("isolated", Some(iso.clone()), "hello", true),
            ("no isolation here", None, "hello", false),
            (
                "a privileged run is root's",
                Some(iso.clone()),
                "root",
                false,
            ),
        ];
        for (what, isolation, action, isolated) in cases {
            let mut h = host(&[]);
            h.isolation = isolation;
            h.privileged = Some(grants.clone());
            let params: &[(&str, &str)] = if action == "hello" {
                &[("who", "bob")]
            } else {
                &[]
            };
            let Decision::Start(plan) =
                decide(&offer(&p, action, params), std::slice::from_ref(&p), &h)
            else {
                panic!("{what}: rejected")
            };
            let names = [
                "PrivateUsers",
                "ReadOnlyPaths",
                "InaccessiblePaths",
                "TemporaryFileSystem",
                "BindPaths",
            ];
            for n in names {
                assert_eq!(prop(&plan, n).is_some(), isolated, "{what}: {n}");
            }
            if !isolated {
                continue;
            }
            let work = "/var/lib/outpost/agent/runs/r_0123/work".to_string();
            assert_eq!(prop(&plan, "PrivateUsers"), Some(&PropValue::Bool(true)));
            assert_eq!(
                prop(&plan, "TemporaryFileSystem"),
                Some(&PropValue::TempFs(vec![(
                    "/var/lib/outpost/agent".into(),
                    "ro".into()
                )]))
            );
            assert_eq!(
                prop(&plan, "BindPaths"),
                Some(&PropValue::Binds(vec![(work.clone(), work.clone())]))
            );
            assert_eq!(
                prop(&plan, "ReadOnlyPaths"),
                Some(&PropValue::Strs(vec!["-/home/bob/.config/outpost".into()]))
            );
            assert_eq!(
                prop(&plan, "InaccessiblePaths"),
                Some(&PropValue::Strs(vec![
                    "-/home/bob/.config/outpost/outpost.env".into()
                ]))
            );
            assert_eq!(
                prop(&plan, "WorkingDirectory"),
                Some(&PropValue::Str(work.clone()))
            );
            // Every round of a workload gets the same fence.
            let round = round_props(&plan, 3, 60);
            for n in names {
                assert!(round.iter().any(|(k, _)| k == n), "{what}: round {n}");
            }
        }
    }

    #[test]
    fn isolation_probe_verdicts() {
        let st = |active: &str, code: i32, status: i32| UnitStatus {
            active_state: active.into(),
            exec_main_code: code,
            exec_main_status: status,
            result: "resources".into(),
            ..UnitStatus::default()
        };
        // (status, Some(Ok) / Some(Err(substring)) / None: not ended)
        let cases: Vec<(UnitStatus, Option<Result<(), &str>>)> = vec![
            (st("activating", 0, 0), None),
            (st("active", 0, 0), None),
            (st("active", 1, 0), Some(Ok(()))),
            (st("failed", 1, 1), Some(Err("ignores PrivateUsers="))),
            (st("failed", 1, 217), Some(Err("217/USER"))),
            (st("failed", 1, 226), Some(Err("226/NAMESPACE"))),
            (st("failed", 1, 203), Some(Err("status 203"))),
            (st("failed", 0, 0), Some(Err("failed to start (resources)"))),
            (st("failed", 2, 9), Some(Err("signal 9"))),
        ];
        for (status, want) in cases {
            let got = isolation_verdict(&status);
            match (&got, want) {
                (None, None) | (Some(Ok(())), Some(Ok(()))) => {}
                (Some(Err(why)), Some(Err(sub))) => assert!(why.contains(sub), "{why}"),
                _ => panic!("{status:?}: got {got:?}, want {want:?}"),
            }
        }
        // The probe runs inside the same fence as a run, around its own work dir.
        let iso = Isolation::default();
        let props = isolation_probe_props(&iso, Path::new("/a"));
        assert!(props.contains(&(
            "BindPaths".into(),
            PropValue::Binds(vec![(
                "/a/isolation-probe/work".into(),
                "/a/isolation-probe/work".into()
            )])
        )));
        let Some((_, PropValue::Exec(argv))) = props.iter().find(|(k, _)| k == "ExecStart") else {
            panic!("{props:?}")
        };
        assert_eq!(
            argv[4..],
            ["/a/isolation-probe/marker", "/a/isolation-probe/work"]
        );
    }

    #[test]
    fn decisions_table() {
        let d = tempfile::tempdir().unwrap();
        let p = pack(d.path(), TOML);
        let mut drifted = offer(&p, "hello", &[("who", "bob")]);
        drifted.sha256 = "0".repeat(64);
        let mut bad_id = offer(&p, "hello", &[("who", "bob")]);
        bad_id.run_id = "../etc".into();
        let mut other_pack = offer(&p, "hello", &[("who", "bob")]);
        other_pack.pack = "nope".into();
        // (what, offer, controllers, Ok(unit) or Err(substring of the reason))
        #[allow(clippy::type_complexity)]
        let cases: Vec<(&str, RunOffer, &[&str], Result<&str, &str>)> = vec![
            (
                "good",
                offer(&p, "hello", &[("who", "bob")]),
                &[],
                Ok("outpost-run-r_0123.service"),
            ),
            ("drifted", drifted, &[], Err("(drifted)")),
            ("bad id", bad_id, &[], Err("is not 1-64")),
            (
                "no pack",
                other_pack,
                &[],
                Err("pack nope is not installed"),
            ),
            (
                "no action",
                offer(&p, "gone", &[]),
                &[],
                Err("has no action gone"),
            ),
            (
                "privileged",
                offer(&p, "root", &[]),
                &[],
                Err("is privileged"),
            ),
            (
                "bad param",
                offer(&p, "hello", &[("who", "B0B")]),
                &[],
                Err("parameter who"),
            ),
            (
                "missing param",
                offer(&p, "hello", &[]),
                &[],
                Err("who is required"),
            ),
            (
                "unknown param",
                offer(&p, "hello", &[("who", "a"), ("x", "1")]),
                &[],
                Err("no parameter \"x\""),
            ),
            (
                "no controllers",
                offer(&p, "capped", &[]),
                &[],
                Err("limits.memory cannot be enforced"),
            ),
            (
                "no cpu",
                offer(&p, "capped", &[]),
                &["memory", "pids"],
                Err("the cpu controller is not delegated"),
            ),
            (
                "no pids",
                offer(&p, "capped", &[]),
                &["memory", "cpu"],
                Err("limits.tasks"),
            ),
            (
                "all delegated",
                offer(&p, "capped", &[]),
                &["memory", "cpu", "pids"],
                Ok("outpost-run-r_0123.service"),
            ),
        ];
        for (what, o, ctl, want) in cases {
            match (decide(&o, std::slice::from_ref(&p), &host(ctl)), want) {
                (Decision::Start(plan), Ok(unit)) => assert_eq!(plan.unit, unit, "{what}"),
                (Decision::Reject(why), Err(sub)) => {
                    assert!(why.contains(sub), "{what}: {why}");
                    assert!(!why.contains('\n'), "{what}: one line");
                }
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_unit_has_a_clean_environment_and_the_pack_limits() {
        let d = tempfile::tempdir().unwrap();
        let p = pack(d.path(), TOML);
        let Decision::Start(plan) = decide(
            &offer(&p, "hello", &[("who", "bob")]),
            std::slice::from_ref(&p),
            &host(&["cpu", "io"]),
        ) else {
            panic!()
        };
        let Some(PropValue::Strs(env)) = prop(&plan, "Environment") else {
            panic!("{plan:?}")
        };
        assert_eq!(
            env,
            &[
                format!("PATH={RUN_PATH}"),
                "LANG=C.UTF-8".into(),
                "OUTPOST_RUN_ID=r_0123".into(),
                "OUTPOST_RUN_DIR=/var/lib/outpost/agent/runs/r_0123/work".into(),
                "OUTPOST_PARAM_LOUD=false".into(),
                "ALLOWED=yes".into(),
            ]
        );
        let Some(PropValue::Exec(argv)) = prop(&plan, "ExecStart") else {
            panic!()
        };
        assert_eq!(argv[0], d.path().join("bin/x.sh").display().to_string());
        assert_eq!(argv[1], "bob");
        assert_eq!(prop(&plan, "Slice"), Some(&PropValue::Str(SLICE.into())));
        assert_eq!(
            prop(&plan, "StandardOutputFileToAppend"),
            Some(&PropValue::Str(
                "/var/lib/outpost/agent/runs/r_0123/output.log".into()
            ))
        );
        assert_eq!(prop(&plan, "CPUWeight"), Some(&PropValue::U64(WEIGHT)));
        assert_eq!(prop(&plan, "MemoryMax"), None);
        assert_eq!(plan.log_cap, 10 << 20, "the default log cap");

        let Decision::Start(capped) = decide(
            &offer(&p, "capped", &[]),
            std::slice::from_ref(&p),
            &host(&["memory", "cpu", "pids"]),
        ) else {
            panic!()
        };
        assert_eq!(prop(&capped, "MemoryMax"), Some(&PropValue::U64(64 << 20)));
        assert_eq!(prop(&capped, "MemorySwapMax"), Some(&PropValue::U64(0)));
        assert_eq!(
            prop(&capped, "CPUQuotaPerSecUSec"),
            Some(&PropValue::U64(500_000))
        );
        assert_eq!(prop(&capped, "TasksMax"), Some(&PropValue::U64(16)));
        assert_eq!(
            prop(&capped, "RuntimeMaxUSec"),
            Some(&PropValue::U64(5_000_000))
        );
        assert_eq!(capped.log_cap, 1 << 20);
    }

    fn st(active: &str, sub: &str, result: &str, code: i32, status: i32) -> UnitStatus {
        UnitStatus {
            load_state: "loaded".into(),
            active_state: active.into(),
            sub_state: sub.into(),
            result: result.into(),
            exec_main_code: code,
            exec_main_status: status,
            ..UnitStatus::default()
        }
    }

    #[test]
    fn endings_table() {
        use RunOutcome::*;
        let gone = UnitStatus {
            load_state: "not-found".into(),
            active_state: "inactive".into(),
            ..UnitStatus::default()
        };
        // (what, status, cancel, outcome or None = still running, exit, signal, reason prefix)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            UnitStatus,
            Option<&str>,
            Option<RunOutcome>,
            Option<i32>,
            Option<&str>,
            &str,
        )> = vec![
            (
                "running",
                st("active", "running", "success", 0, 0),
                None,
                None,
                None,
                None,
                "",
            ),
            (
                "starting",
                st("activating", "start", "success", 0, 0),
                None,
                None,
                None,
                None,
                "",
            ),
            (
                "stopping",
                st("deactivating", "stop-sigterm", "success", 0, 0),
                Some("admin"),
                None,
                None,
                None,
                "",
            ),
            (
                "exit 0",
                st("active", "exited", "success", 1, 0),
                None,
                Some(Succeeded),
                Some(0),
                None,
                "",
            ),
            (
                "exit 3",
                st("failed", "failed", "exit-code", 1, 3),
                None,
                Some(Failed),
                Some(3),
                None,
                "exit-code",
            ),
            (
                "killed",
                st("failed", "failed", "signal", 2, 9),
                None,
                Some(Failed),
                None,
                Some("SIGKILL"),
                "signal",
            ),
            (
                "dumped",
                st("failed", "failed", "core-dump", 3, 11),
                None,
                Some(Failed),
                None,
                Some("SIGSEGV"),
                "signal",
            ),
            (
                "timeout",
                st("failed", "failed", "timeout", 2, 15),
                None,
                Some(TimedOut),
                None,
                Some("SIGTERM"),
                "timeout",
            ),
            (
                "oom",
                st("failed", "failed", "oom-kill", 2, 9),
                None,
                Some(Failed),
                None,
                Some("SIGKILL"),
                "oom-kill",
            ),
            (
                "canceled",
                st("inactive", "dead", "success", 2, 15),
                Some("by admin"),
                Some(Canceled),
                None,
                Some("SIGTERM"),
                "canceled: by admin",
            ),
            (
                "canceled gone",
                gone.clone(),
                Some("by admin"),
                Some(Canceled),
                None,
                None,
                "canceled",
            ),
            (
                "gone",
                gone,
                None,
                Some(Failed),
                None,
                None,
                "the run's unit is gone",
            ),
            (
                "resources",
                st("failed", "failed", "resources", 0, 0),
                None,
                Some(Failed),
                None,
                None,
                "resources",
            ),
        ];
        for (what, s, cancel, outcome, exit, signal, reason) in cases {
            let got = ending(&s, cancel, 5);
            match (got, outcome) {
                (None, None) => {}
                (Some(e), Some(o)) => {
                    assert_eq!(e.outcome, o, "{what}");
                    assert_eq!(e.exit_code, exit, "{what}");
                    assert_eq!(e.signal.as_deref(), signal, "{what}");
                    assert!(e.reason.starts_with(reason), "{what}: {}", e.reason);
                }
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn run_ids() {
        assert!(valid_run_id("r_0123abcd"));
        assert!(valid_run_id("r_01-retry"));
        for bad in ["", "../x", "a b", "x.service", &"a".repeat(65)] {
            assert!(!valid_run_id(bad), "{bad}");
        }
    }
}
