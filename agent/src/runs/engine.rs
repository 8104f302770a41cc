//! The runs engine: two threads beside the agent's main loop.
//!
//! * **poll**: long-polls the hub (`holding` the runs the agent has), hands offers and cancel
//!   requests to the runs thread and waits until they are handled.
//! * **runs**: owns every [`RunRecord`]. It claims offers, plans each with
//!   [`plan::decide`], starts the unit in the service user's manager, and every tick reads
//!   each unit's state, uploads new log bytes, pending events and, once everything before it
//!   is acknowledged, the result. Each step is written to the run's record before it is
//!   sent, so a restarted agent (kill -9, upgrade) reattaches: it loads the records, finds
//!   the units still running (they never belonged to the agent's cgroup) and carries on.
//!
//! Stopping the agent stops neither thread's runs: the units keep running, and the records
//! are consistent at every point (atomic writes), so the engine is simply abandoned.
use super::client::{Claim, Delivery, LogReply, RunsClient};
use super::plan::{self, Decision, Host};
use super::record::{self, Phase, RunRecord};
use super::supervise::SupState;
use crate::log;
use outpost_core::journal::{kind, Journal};
use outpost_pack::Pack;
use outpost_proto::{FlatMap, FlatValue, RunOffer, RunOutcome, RunResult};
use outpost_systemd::{RunManager, SvcError};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How long a poll may wait at the hub.
pub const POLL_WAIT_SECS: u64 = 25;
/// How often the runs thread looks at its units and logs.
pub const TICK: Duration = Duration::from_millis(200);
/// Largest log upload.
pub const LOG_CHUNK: usize = 1 << 20;
/// Most log bytes uploaded for one run per tick (the others get their turn).
const LOG_PER_TICK: u64 = 16 << 20;

/// Opens the manager runs are started in.
pub type Connect = Box<dyn Fn() -> Result<Box<dyn RunManager>, SvcError> + Send>;

pub struct EngineConfig {
    pub state_dir: PathBuf,
    /// The hub (`None`: no hub configured; only the host's own workloads run).
    pub client: Option<RunsClient>,
    /// A second client for the long poll (each holds its own connection).
    pub poll_client: Option<RunsClient>,
    /// Workloads declared in the host's config (`[[workload]]`), started if they have no
    /// record yet.
    pub workloads: Vec<outpost_core::config::WorkloadSection>,
    /// The installed packs, replaced by the main loop on reload.
    pub packs: Arc<RwLock<Vec<Pack>>>,
    pub journal: Arc<Journal>,
    /// The agent's environment (allowlisted names are taken from it).
    pub env: BTreeMap<String, String>,
    pub connect: Connect,
    /// Who must own the packs (root in system mode, the agent's uid in user mode): each
    /// run's pack is loaded and hashed again from disk before it is planned.
    pub pack_owner: u32,
    /// Where the host's admin leaves requests for the agent (`stop-<run id>`: `outpost
    /// workload stop`): root's state dir in system mode, read only.
    pub control_dir: PathBuf,
    /// System mode with the root-owned template installed: privileged actions go through it.
    pub privileged: Option<PrivilegedConfig>,
    /// How runs are fenced off from the agent's files, applied where the manager proves it
    /// can ([`probe_isolation`]); `None`: never.
    pub isolation: Option<plan::Isolation>,
}

/// Where privileged runs are admitted (system mode).
pub struct PrivilegedConfig {
    /// Opens the system manager (the template's and the privileged runs' units).
    pub connect: Connect,
    /// Root's state dir: privileged runs' logs.
    pub state_dir: PathBuf,
    /// The filesystem root and root's config dir: the admin's grants are read from
    /// `<config>/privileged/` (root-owned, world-readable), like root reads them.
    pub root: PathBuf,
    pub config_dir: PathBuf,
}

enum Msg {
    Work {
        offers: Vec<RunOffer>,
        cancel: Vec<String>,
        done: mpsc::Sender<()>,
    },
}

/// The running engine; dropping it (or [`Engine::stop`]) lets its threads end.
pub struct Engine {
    stop: Arc<AtomicBool>,
    _idle: Option<mpsc::Sender<Msg>>,
}

impl Engine {
    pub fn spawn(cfg: EngineConfig) -> std::io::Result<Engine> {
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::<String>::new()));
        let (tx, rx) = mpsc::channel();
        let claimant = format!("c_{:016x}", fastrand::u64(..));
        let mut runs = Runs {
            state_dir: cfg.state_dir,
            client: cfg.client,
            packs: cfg.packs,
            journal: cfg.journal,
            env: cfg.env,
            connect: cfg.connect,
            pack_owner: cfg.pack_owner,
            control_dir: cfg.control_dir,
            privileged: cfg.privileged,
            isolation: cfg.isolation,
            sys_manager: None,
            manager: None,
            host: None,
            last_connect: None,
            claimant,
            active: BTreeMap::new(),
            held: Arc::clone(&held),
        };
        runs.reattach();
        runs.declared(&cfg.workloads);
        let s = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("runs".into())
            .stack_size(512 * 1024)
            .spawn(move || runs.run(&rx, &s))?;
        // Without a hub there is no poll thread: the engine keeps the sender, so the runs
        // thread's channel stays open (its ticks are the receive timeouts).
        let mut idle = None;
        match cfg.poll_client {
            Some(client) => {
                let s = Arc::clone(&stop);
                std::thread::Builder::new()
                    .name("poll".into())
                    .stack_size(256 * 1024)
                    .spawn(move || poll_loop(&client, &tx, &held, &s))?;
            }
            None => idle = Some(tx),
        }
        Ok(Engine { stop, _idle: idle })
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

fn poll_loop(
    client: &RunsClient,
    tx: &mpsc::Sender<Msg>,
    held: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    let mut failures = 0u32;
    let mut seen_cancel: Vec<String> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let holding = held.lock().map(|h| h.clone()).unwrap_or_default();
        match client.poll(POLL_WAIT_SECS, holding) {
            Ok(reply) => {
                if failures > 0 {
                    log::info("runs: the hub answers polls again");
                }
                failures = 0;
                let fresh_cancel = reply.cancel.iter().any(|c| !seen_cancel.contains(c));
                if reply.offers.is_empty() && !fresh_cancel {
                    // Only cancels already handled (the hub repeats them until the result):
                    // do not spin on them.
                    if !reply.cancel.is_empty() {
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    continue;
                }
                seen_cancel = reply.cancel.clone();
                let (done, wait) = mpsc::channel();
                let work = Msg::Work {
                    offers: reply.offers,
                    cancel: reply.cancel,
                    done,
                };
                if tx.send(work).is_err() {
                    return;
                }
                let _ = wait.recv_timeout(Duration::from_secs(120));
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    log::warn(&format!("runs: cannot poll the hub: {e}"), &e.hint());
                }
                if matches!(
                    e,
                    crate::hub::HubError::TokenRevoked | crate::hub::HubError::TokenInvalid
                ) {
                    std::thread::sleep(Duration::from_secs(30));
                } else {
                    std::thread::sleep(
                        crate::run::backoff_delay(failures, fastrand::f64())
                            .min(Duration::from_secs(10)),
                    );
                }
            }
        }
    }
}

struct Runs {
    state_dir: PathBuf,
    client: Option<RunsClient>,
    packs: Arc<RwLock<Vec<Pack>>>,
    journal: Arc<Journal>,
    env: BTreeMap<String, String>,
    connect: Connect,
    pack_owner: u32,
    control_dir: PathBuf,
    privileged: Option<PrivilegedConfig>,
    isolation: Option<plan::Isolation>,
    /// The system manager, for privileged runs.
    sys_manager: Option<Box<dyn RunManager>>,
    manager: Option<Box<dyn RunManager>>,
    host: Option<Host>,
    last_connect: Option<(Instant, String)>,
    claimant: String,
    /// Runs not yet delivered, by id.
    active: BTreeMap<String, RunRecord>,
    held: Arc<Mutex<Vec<String>>>,
}

fn now() -> String {
    outpost_core::time::now_rfc3339()
}

fn data(pairs: &[(&str, &str)]) -> FlatMap {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), FlatValue::String(v.to_string())))
        .collect()
}

impl Runs {
    fn run(&mut self, rx: &mpsc::Receiver<Msg>, stop: &AtomicBool) {
        let mut next_tick = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                Ok(Msg::Work {
                    offers,
                    cancel,
                    done,
                }) => {
                    for id in &cancel {
                        self.cancel(id, "by admin");
                    }
                    for o in offers {
                        self.offer(o);
                    }
                    self.publish_held();
                    let _ = done.send(());
                    // Start what was just claimed right away (dispatch latency).
                    next_tick = Instant::now();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let ids: Vec<String> = self.active.keys().cloned().collect();
            for id in ids {
                self.step(&id);
            }
            self.publish_held();
            next_tick = Instant::now() + TICK;
        }
    }

    fn publish_held(&self) {
        let ids = self
            .active
            .values()
            .filter(|r| r.held())
            .map(|r| r.run_id.clone())
            .collect();
        if let Ok(mut h) = self.held.lock() {
            *h = ids;
        }
    }

    /// Start the workloads declared in the host's config that have no record yet (a record
    /// that exists is resumed by [`Runs::reattach`], or has ended: its reason stays in
    /// `outpost runs peek`).
    fn declared(&mut self, workloads: &[outpost_core::config::WorkloadSection]) {
        for w in workloads {
            let id = w.run_id();
            let paths = plan::paths(&self.state_dir, &id);
            if paths.record.exists() {
                continue;
            }
            let Some((pack, action)) = w.target() else {
                continue;
            };
            let sha = self
                .packs
                .read()
                .ok()
                .and_then(|p| p.iter().find(|p| p.name == pack).map(|p| p.sha256.clone()))
                .unwrap_or_default();
            let mut r = self.new_record(&id, pack, action, &sha, &w.params, Phase::Claimed);
            r.local = true;
            if let Err(e) = outpost_core::atomic::create_dirs(&paths.work, 0o700, None) {
                log::error(
                    &format!("runs: cannot create {}: {e}", paths.work.display()),
                    "check free space and the state directory's owner",
                );
                continue;
            }
            self.settle(&mut r);
            self.save(&r);
            log::info(&format!(
                "runs: workload {} ({}) declared in the config: starting as run {id}",
                w.name, w.action
            ));
            self.active.insert(id, r);
        }
    }

    /// A fresh record of this agent's for run `id`.
    fn new_record(
        &self,
        id: &str,
        pack: &str,
        action: &str,
        sha256: &str,
        params: &BTreeMap<String, String>,
        phase: Phase,
    ) -> RunRecord {
        let spec = record::RunSpec {
            id,
            pack,
            action,
            sha256,
            params,
        };
        RunRecord::new(spec, &self.claimant, phase, now())
    }

    /// Load the records a previous agent left.
    fn reattach(&mut self) {
        let mut n = 0;
        for r in record::all(&self.state_dir) {
            match r {
                Ok(mut r) if r.phase != Phase::Delivered => {
                    if r.phase == Phase::Started {
                        r.event(
                            "reattached",
                            now(),
                            data(&[("agent", outpost_release::VERSION)]),
                        );
                    }
                    n += 1;
                    self.active.insert(r.run_id.clone(), r);
                }
                Ok(_) => {}
                Err(e) => log::warn(&format!("runs: {e}"), &outpost_core::Hint::hint(&e)),
            }
        }
        if n > 0 {
            log::info(&format!(
                "runs: took over {n} run(s) from the previous agent"
            ));
            let ids: Vec<&str> = self.active.keys().map(String::as_str).collect();
            let _ = self
                .journal
                .append(kind::RUNS_REATTACHED, serde_json::json!({ "runs": ids }));
        }
        self.publish_held();
    }

    /// The manager and what it offers, connecting (at most once a second) when needed.
    fn manager(&mut self) -> Result<(&dyn RunManager, &Host), String> {
        if self.manager.is_none() {
            if let Some((at, why)) = &self.last_connect {
                if at.elapsed() < Duration::from_secs(1) {
                    return Err(why.clone());
                }
            }
            match (self.connect)() {
                Ok(m) => {
                    let cgroup = m.manager_cgroup().unwrap_or_default();
                    let controllers = read_controllers(&cgroup);
                    log::info(&format!(
                        "runs: service manager at {} (controllers: {})",
                        if cgroup.is_empty() { "?" } else { &cgroup },
                        if controllers.is_empty() {
                            "none".to_string()
                        } else {
                            controllers.iter().cloned().collect::<Vec<_>>().join(" ")
                        }
                    ));
                    let isolation = self.isolation.clone().and_then(|iso| {
                        match probe_isolation(m.as_ref(), &self.state_dir, &iso) {
                            Ok(()) => {
                                log::info("runs: each run is isolated from the agent's files (its own user namespace; the agent's state dir hidden, outpost's files read-only)");
                                self.journal_isolation(true, "");
                                Some(iso)
                            }
                            Err(why) => {
                                log::warn(
                                    &format!("runs: runs are NOT isolated from the agent's files (a run can read the agent's token): {why}"),
                                    "allow unprivileged user namespaces (sysctl user.max_user_namespaces > 0; on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0), then restart the agent",
                                );
                                self.journal_isolation(false, &why);
                                None
                            }
                        }
                    });
                    self.host = Some(Host {
                        state_dir: self.state_dir.clone(),
                        env: self.env.clone(),
                        controllers,
                        cgroup,
                        privileged: None,
                        isolation,
                    });
                    self.manager = Some(m);
                    self.last_connect = None;
                }
                Err(e) => {
                    let why = format!(
                        "cannot reach the service manager that runs actions: {e} (is the service user lingering? `loginctl enable-linger USER`)"
                    );
                    if self.last_connect.is_none() {
                        log::warn(&format!("runs: {why}"), &e.hint());
                    }
                    self.last_connect = Some((Instant::now(), why.clone()));
                    return Err(why);
                }
            }
        }
        match (&self.manager, &self.host) {
            (Some(m), Some(h)) => Ok((m.as_ref(), h)),
            _ => Err("no service manager".into()),
        }
    }

    /// The manager failed a call: reconnect next time.
    fn drop_manager(&mut self, e: &SvcError) {
        if matches!(e, SvcError::Connect { .. } | SvcError::Call { .. }) {
            self.manager = None;
            self.sys_manager = None;
        }
    }

    /// The manager a run's unit is in: the system manager for a privileged run.
    fn manager_of(&mut self, privileged: bool) -> Result<&dyn RunManager, String> {
        if !privileged {
            return self.manager().map(|(m, _)| m);
        }
        let Some(pc) = &self.privileged else {
            return Err("privileged runs are not set up on this host".into());
        };
        if self.sys_manager.is_none() {
            let m = (pc.connect)().map_err(|e| {
                format!("cannot reach the system manager that admits privileged runs: {e}")
            })?;
            self.sys_manager = Some(m);
        }
        match &self.sys_manager {
            Some(m) => Ok(m.as_ref()),
            None => Err("no system manager".into()),
        }
    }

    /// Where a run's files are: root's state dir for a privileged run.
    fn paths_of(&self, r: &RunRecord) -> plan::RunPaths {
        match (&self.privileged, r.privileged) {
            (Some(pc), true) => plan::paths(&pc.state_dir, &r.run_id),
            _ => plan::paths(&self.state_dir, &r.run_id),
        }
    }

    /// The admin's current grants and the system manager's controllers (read for every
    /// decision: `pack trust --privileged` takes effect without a reload).
    /// Journal whether runs are isolated here (once per connection to the manager).
    fn journal_isolation(&self, isolated: bool, why: &str) {
        let _ = self.journal.append(
            kind::RUNS_ISOLATION,
            serde_json::json!({"isolated": isolated, "reason": why}),
        );
    }

    fn privileged_host(&self) -> Option<plan::PrivilegedHost> {
        let pc = self.privileged.as_ref()?;
        let packs = self.packs.read().ok()?;
        let grants = packs
            .iter()
            .filter_map(|p| {
                let g = outpost_pack::store::privileged_grant(
                    &pc.root,
                    &pc.config_dir,
                    &p.name,
                    rustix::process::geteuid().as_raw(),
                );
                match g {
                    Ok(Some(sha)) => Some((p.name.clone(), sha)),
                    _ => None,
                }
            })
            .collect();
        Some(plan::PrivilegedHost {
            state_dir: pc.state_dir.clone(),
            grants,
            controllers: read_controllers("/"),
            cgroup: "/".into(),
        })
    }

    fn save(&self, r: &RunRecord) {
        let p = plan::paths(&self.state_dir, &r.run_id);
        if let Err(e) = record::save(&p.record, r) {
            log::error(&format!("runs: {e}"), &outpost_core::Hint::hint(&e));
        }
    }

    fn offer(&mut self, o: RunOffer) {
        if self.active.contains_key(&o.run_id) {
            return;
        }
        if !plan::valid_run_id(&o.run_id) {
            log::warn(
                &format!(
                    "runs: the hub offered run id {:?}, which is not a valid name; ignored",
                    o.run_id
                ),
                "the hub and this agent disagree on the protocol; upgrade the older one",
            );
            return;
        }
        let paths = plan::paths(&self.state_dir, &o.run_id);
        if paths.record.exists() {
            return; // delivered earlier
        }
        let mut r = self.new_record(
            &o.run_id,
            &o.pack,
            &o.action,
            &o.sha256,
            &o.params,
            Phase::Claiming,
        );
        if let Err(e) = outpost_core::atomic::create_dirs(&paths.work, 0o700, None) {
            log::error(
                &format!("runs: cannot create {}: {e}", paths.work.display()),
                "check free space and the state directory's owner",
            );
            return;
        }
        self.save(&r);
        self.claim(&mut r);
        if r.phase != Phase::Delivered {
            self.active.insert(r.run_id.clone(), r);
        }
    }

    /// Claim (again, with the record's claimant); lost → forget the run entirely.
    fn claim(&mut self, r: &mut RunRecord) {
        let Some(client) = &self.client else {
            return; // no hub: nothing offered, nothing to claim
        };
        match client.claim(&r.run_id, &r.claimant) {
            Ok(Claim::Won { .. }) => {
                r.phase = Phase::Claimed;
                self.settle(r);
                self.save(r);
            }
            Ok(Claim::Lost(why)) => {
                log::info(&format!(
                    "runs: run {} is not ours ({why}); dropped",
                    r.run_id
                ));
                let dir = plan::paths(&self.state_dir, &r.run_id).dir;
                let _ = std::fs::remove_dir_all(dir);
                r.phase = Phase::Delivered;
            }
            Err(e) => log::warn(
                &format!("runs: cannot claim run {}: {e}; retrying", r.run_id),
                &e.hint(),
            ),
        }
    }

    /// After the claim: plan it now, so a rejection is reported at once and the limits are
    /// known.
    fn settle(&mut self, r: &mut RunRecord) {
        match self.decide(r) {
            Ok(p) => {
                r.privileged = p.privileged;
                if p.supervise.is_some() && r.supervise.is_none() {
                    r.supervise = Some(SupState::default());
                }
                r.log_cap = p.log_cap;
                r.max_concurrency = p.max_concurrency.max(1);
                r.timeout_secs = timeout_of(&p);
            }
            Err(why) => self.finish(r, rejected(why)),
        }
    }

    fn decide(&mut self, r: &RunRecord) -> Result<plan::UnitPlan, String> {
        let offer = RunOffer {
            run_id: r.run_id.clone(),
            pack: r.pack.clone(),
            // A host-declared workload runs what the host's admin installed, at its hash.
            sha256: if r.local {
                self.packs
                    .read()
                    .ok()
                    .and_then(|p| {
                        p.iter()
                            .find(|p| p.name == r.pack)
                            .map(|p| p.sha256.clone())
                    })
                    .unwrap_or_default()
            } else {
                r.sha256.clone()
            },
            action: r.action.clone(),
            params: r.params.clone(),
            lease_secs: 0,
        };
        let packs = Arc::clone(&self.packs);
        let privileged = self.privileged_host();
        let (_, host) = self.manager()?;
        let mut host = host.clone();
        host.privileged = privileged;
        let packs = packs
            .read()
            .map_err(|_| "the pack catalog is unavailable".to_string())?;
        // The catalog was hashed at the last (re)load: hash the run's pack again now, so a
        // tree changed on disk since is refused as drifted, never run.
        let fresh = match packs.iter().find(|p| p.name == offer.pack) {
            Some(p) => match outpost_pack::load(&p.root, Some(self.pack_owner)) {
                Ok(f) if f.name == p.name => vec![f],
                Ok(f) => {
                    return Err(format!(
                        "pack {}'s directory now holds pack {}: reload the agent",
                        p.name, f.name
                    ))
                }
                Err(e) => return Err(format!("pack {} is refused now: {e}", p.name)),
            },
            None => Vec::new(),
        };
        match plan::decide(&offer, &fresh, &host) {
            Decision::Start(p) => Ok(*p),
            Decision::Reject(why) => Err(why),
        }
    }

    fn cancel(&mut self, id: &str, why: &str) {
        let Some(mut r) = self.active.remove(id) else {
            return;
        };
        match r.phase {
            Phase::Claiming | Phase::Claimed => {
                let end = plan::Ending {
                    outcome: RunOutcome::Canceled,
                    exit_code: None,
                    signal: None,
                    reason: format!("canceled: {why} before it started"),
                };
                self.finish(&mut r, end);
            }
            Phase::Started if r.cancel.is_none() => {
                r.cancel = Some(why.to_string());
                r.event("cancel_requested", now(), data(&[("reason", why)]));
                self.save(&r);
                let unit = r.unit.clone();
                if let Ok(m) = self.manager_of(r.privileged) {
                    if let Err(e) = m.stop_nowait(&unit) {
                        log::warn(&format!("runs: cannot stop {unit}: {e}"), &e.hint());
                    }
                }
            }
            _ => {}
        }
        self.active.insert(r.run_id.clone(), r);
    }

    /// Record the run's end (before delivering it).
    fn finish(&mut self, r: &mut RunRecord, e: plan::Ending) {
        let log_bytes = match &r.supervise {
            Some(st) => {
                supervised_total(&plan::paths(&self.state_dir, &r.run_id).dir, st, r.log_sent)
            }
            None => log_size(&self.paths_of(r).log).min(r.log_cap),
        };
        let outcome = e.outcome;
        r.result = Some(RunResult {
            outcome,
            exit_code: e.exit_code,
            signal: e.signal,
            reason: truncate(&e.reason, outpost_proto::MAX_REASON),
            finished_at: now(),
            log_bytes,
        });
        r.phase = Phase::Finished;
        self.save(r);
        let _ = self.journal.append(
            kind::RUN_FINISHED,
            serde_json::json!({
                "run": r.run_id, "pack": r.pack, "action": r.action,
                "outcome": outcome, "exit_code": e.exit_code, "reason": e.reason,
            }),
        );
        log::info(&format!(
            "runs: run {} ({}/{}) {}{}",
            r.run_id,
            r.pack,
            r.action,
            serde_json::to_value(outcome)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            if e.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", e.reason)
            }
        ));
    }

    fn step(&mut self, id: &str) {
        let Some(mut r) = self.active.remove(id) else {
            return;
        };
        match r.phase {
            Phase::Claiming => self.claim(&mut r),
            Phase::Claimed => self.start(&mut r),
            Phase::Started => self.watch(&mut r),
            Phase::Finished | Phase::Delivered => {}
        }
        if matches!(r.phase, Phase::Started | Phase::Finished) {
            self.deliver(&mut r);
        }
        if r.phase != Phase::Delivered {
            self.active.insert(r.run_id.clone(), r);
        }
    }

    fn start(&mut self, r: &mut RunRecord) {
        let busy = self
            .active
            .values()
            .filter(|o| o.phase == Phase::Started && o.pack == r.pack && o.action == r.action)
            .count();
        if busy >= r.max_concurrency as usize {
            return; // waits, claimed (its lease renewed by the polls), for a free slot
        }
        let p = match self.decide(r) {
            Ok(p) => p,
            Err(why) => return self.finish(r, rejected(why)),
        };
        // The unit may already exist: a previous agent started it and stopped before saying so.
        r.privileged = p.privileged;
        r.phase = Phase::Started;
        r.started_at = Some(now());
        self.save(r);
        if p.supervise.is_some() {
            // The first round starts at the next tick; each round is planned afresh.
            let st = r.supervise.get_or_insert_with(SupState::default);
            st.next_at_ms = Some(now_ms());
            r.event("started", now(), data(&[("kind", "supervised")]));
            self.save(r);
            let _ = self.journal.append(
                kind::RUN_STARTED,
                serde_json::json!({"run": r.run_id, "pack": r.pack, "action": r.action, "supervised": true}),
            );
            return;
        }
        if p.privileged {
            if let Err(why) = self.start_privileged(r) {
                return self.finish(r, rejected(why));
            }
            r.event("started", now(), data(&[("unit", &p.unit), ("as", "root")]));
            self.save(r);
            let _ = self.journal.append(
                kind::RUN_STARTED,
                serde_json::json!({"run": r.run_id, "pack": r.pack, "action": r.action, "unit": p.unit, "privileged": true}),
            );
            return;
        }
        let result = match self.manager() {
            Ok((m, _)) => m.start_transient_unit(&p.unit, &p.props),
            Err(why) => return self.finish(r, rejected(why)),
        };
        match result {
            Ok(()) => {}
            Err(SvcError::Job { result, .. }) if result == "exists" => {}
            Err(e) => {
                self.drop_manager(&e);
                return self.finish(r, rejected(format!("cannot start the run's unit: {e}")));
            }
        }
        r.event("started", now(), data(&[("unit", &p.unit)]));
        self.save(r);
        let _ = self.journal.append(
            kind::RUN_STARTED,
            serde_json::json!({"run": r.run_id, "pack": r.pack, "action": r.action, "unit": p.unit}),
        );
    }

    /// Ask root to start a privileged run: the request into the run's directory, then the
    /// template instance, whose job ends once root has admitted (and started) the run or
    /// refused it (the reason in root's `runs/<id>/refused`).
    fn start_privileged(&mut self, r: &RunRecord) -> Result<(), String> {
        let req = super::privileged::Request {
            run_id: r.run_id.clone(),
            pack: r.pack.clone(),
            sha256: r.sha256.clone(),
            action: r.action.clone(),
            params: r.params.clone(),
        };
        let path = plan::paths(&self.state_dir, &r.run_id)
            .dir
            .join(super::privileged::REQUEST_FILE);
        let bytes =
            serde_json::to_vec(&req).map_err(|e| format!("cannot encode the request: {e}"))?;
        outpost_core::atomic::write_atomic(&path, &bytes, 0o600, None)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let refused = self.paths_of(r).dir.join(super::privileged::REFUSED_FILE);
        let inst = super::privileged::instance(&r.run_id);
        let m = self.manager_of(true)?;
        let started = m.start_unit(&inst);
        // The instance is done either way (a oneshot); a failed one would stay listed.
        let _ = m.reset_failed(&inst);
        match started {
            Ok(()) => Ok(()),
            Err(e) => {
                let why = outpost_core::trust::read_untrusted(&refused, Some(0), 4096)
                    .ok()
                    .flatten()
                    .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                    .filter(|s| !s.is_empty());
                if let SvcError::Connect { .. } | SvcError::Call { .. } = e {
                    self.sys_manager = None;
                }
                Err(match why {
                    Some(w) => format!("refused by root: {w}"),
                    None => {
                        format!("the privileged helper failed: {e}; see `journalctl -u {inst}`")
                    }
                })
            }
        }
    }

    fn watch(&mut self, r: &mut RunRecord) {
        if let Some(st) = &r.supervise {
            let in_flight = st.in_flight.is_some();
            self.watch_supervised(r);
            // The round just ended and the next one is due now (no delay, no back-off): start
            // it in this tick, not one TICK later (the schedule is the previous round's end).
            let due = r.supervise.as_ref().is_some_and(|st| {
                st.in_flight.is_none() && st.next_at_ms.is_none_or(|at| now_ms() >= at)
            });
            if in_flight && due && r.phase == Phase::Started {
                self.watch_supervised(r);
            }
            return;
        }
        let unit = r.unit.clone();
        let st = match self.manager_of(r.privileged) {
            Ok(m) => m.unit_status(&unit),
            Err(_) => return,
        };
        let st = match st {
            Ok(st) => st,
            Err(e) => return self.drop_manager(&e),
        };
        if let Some(end) = plan::ending(&st, r.cancel.as_deref(), r.timeout_secs) {
            return self.finish(r, end);
        }
        let size = log_size(&self.paths_of(r).log);
        if size > r.log_cap && r.cancel.is_none() {
            let why = format!(
                "log_limit: the log passed limits.log_size ({} bytes)",
                r.log_cap
            );
            r.cancel = Some(why.clone());
            r.event("log_limit", now(), data(&[("reason", &why)]));
            self.save(r);
            if let Ok(m) = self.manager_of(r.privileged) {
                let _ = m.stop_nowait(&unit);
            }
        }
    }

    /// A supervised workload: the round in flight, or the next one when it is due.
    fn watch_supervised(&mut self, r: &mut RunRecord) {
        let Some(mut st) = r.supervise.clone() else {
            return;
        };
        let paths = plan::paths(&self.state_dir, &r.run_id);
        match st.in_flight.clone() {
            Some(f) => {
                let status = match self.manager() {
                    Ok((m, _)) => m.unit_status(&f.unit),
                    Err(_) => return,
                };
                let status = match status {
                    Ok(s) => s,
                    Err(e) => return self.drop_manager(&e),
                };
                let log = plan::round_log(&paths.dir, f.round);
                if plan::ending(&status, None, 0).is_none() {
                    if r.cancel.is_none()
                        && control(&self.control_dir, &r.run_id) == Some(Stop::Now)
                    {
                        let why = "stopped on the host (`outpost workload stop --now`)";
                        r.cancel = Some(why.into());
                        r.event("cancel_requested", now(), data(&[("reason", why)]));
                        self.save(r);
                        if let Ok((m, _)) = self.manager() {
                            let _ = m.stop_nowait(&f.unit);
                        }
                        return;
                    }
                    if log_size(&log) > r.log_cap {
                        let why = format!(
                            "log_limit: round {} passed limits.log_size ({} bytes)",
                            f.round, r.log_cap
                        );
                        if !r.events.iter().any(|e| e.kind == "log_limit") {
                            r.event("log_limit", now(), data(&[("reason", &why)]));
                            self.save(r);
                        }
                        if let Ok((m, _)) = self.manager() {
                            let _ = m.stop_nowait(&f.unit);
                        }
                    }
                    return;
                }
                let mut end = round_end(&status, f.round, now_ms().saturating_sub(f.started_ms));
                // The main process exited; workers it left may still run in the round's
                // cgroup. With grace_after_exit the round waits for them up to round_timeout.
                if let Some(deadline) = f.grace_until_ms {
                    if !cgroup_procs(&status.control_group).is_empty() {
                        if now_ms() < deadline {
                            return;
                        }
                        end.result = "timeout".into();
                    }
                }
                let Some((_, cfg)) = self.plan_round(r) else {
                    return;
                };
                if f.grace_until_ms.is_none() && cfg.grace_after_exit && end.result != "gone" {
                    let workers = cgroup_procs(&status.control_group);
                    let deadline = f.started_ms + cfg.round_timeout_secs * 1000;
                    if !workers.is_empty() && now_ms() < deadline {
                        let round = f.round.to_string();
                        r.event(
                            "round_grace_extended",
                            now(),
                            data(&[("round", &round), ("workers", &workers)]),
                        );
                        self.journal_round(
                            r,
                            kind::ROUND_GRACE_EXTENDED,
                            serde_json::json!({"round": f.round, "workers": workers, "round_timeout_secs": cfg.round_timeout_secs}),
                        );
                        let mut f = f.clone();
                        f.grace_until_ms = Some(deadline);
                        st.in_flight = Some(f);
                        r.supervise = Some(st);
                        self.save(r);
                        return;
                    }
                }
                if let Ok((m, _)) = self.manager() {
                    let _ = m.stop_nowait(&f.unit);
                    let _ = m.reset_failed(&f.unit);
                }
                let code = end.exit_code.map(|c| c.to_string()).unwrap_or_default();
                let ms = end.duration_ms.to_string();
                let round = f.round.to_string();
                r.event(
                    kind::ROUND_END,
                    now(),
                    data(&[
                        ("round", &round),
                        ("exit_code", &code),
                        ("result", &end.result),
                        ("duration_ms", &ms),
                    ]),
                );
                self.journal_round(r, kind::ROUND_END, serde_json::json!({"round": f.round, "exit_code": end.exit_code, "signal": end.signal, "result": end.result, "duration_ms": end.duration_ms}));
                if end.result == "timeout" {
                    r.event(kind::ROUND_TIMEOUT_KILL, now(), data(&[("round", &round)]));
                    self.journal_round(r, kind::ROUND_TIMEOUT_KILL, serde_json::json!({"round": f.round, "round_timeout_secs": cfg.round_timeout_secs}));
                }
                if f.round > cfg.keep_logs {
                    let _ =
                        std::fs::remove_file(plan::round_log(&paths.dir, f.round - cfg.keep_logs));
                }
                if let Some(why) = r.cancel.clone() {
                    st.in_flight = None;
                    st.last = Some(end.clone());
                    r.supervise = Some(st);
                    return self.finish(r, canceled(&why, Some(&end)));
                }
                let seen = seen(&paths.work, &cfg, control(&self.control_dir, &r.run_id));
                let next = super::supervise::after_round(
                    &cfg,
                    &mut st,
                    &end,
                    &seen,
                    now_ms(),
                    fastrand::f64(),
                );
                r.supervise = Some(st);
                self.apply_next(r, next, Some(&end), &log);
            }
            None => {
                if let Some(why) = r.cancel.clone() {
                    return self.finish(r, canceled(&why, None));
                }
                if st.next_at_ms.is_some_and(|at| now_ms() < at) {
                    return;
                }
                let Some((p, cfg)) = self.plan_round(r) else {
                    return;
                };
                let seen = seen(&paths.work, &cfg, control(&self.control_dir, &r.run_id));
                if let Some(stop) = super::supervise::before_round(&cfg, &seen) {
                    let log = plan::round_log(&paths.dir, st.round);
                    return self.apply_next(r, stop, None, &log);
                }
                let n = st.round + 1;
                let unit = plan::round_unit(&r.run_id, n);
                let props = plan::round_props(&p, n, cfg.round_timeout_secs);
                st.round = n;
                st.next_at_ms = None;
                st.in_flight = Some(super::supervise::InFlight {
                    round: n,
                    unit: unit.clone(),
                    started_ms: now_ms(),
                    grace_until_ms: None,
                });
                r.unit = unit.clone();
                r.supervise = Some(st);
                // Saved before the start: a restarted agent finds the round in flight.
                self.save(r);
                let started = match self.manager() {
                    Ok((m, _)) => m.start_transient_unit(&unit, &props),
                    Err(why) => {
                        return self.finish(r, failed(format!("round {n} cannot start: {why}")))
                    }
                };
                match started {
                    Ok(()) => {}
                    Err(SvcError::Job { result, .. }) if result == "exists" => {}
                    Err(e) => {
                        self.drop_manager(&e);
                        return self.finish(r, failed(format!("round {n} cannot start: {e}")));
                    }
                }
                link_current(&paths.dir, n);
                let round = n.to_string();
                r.event(
                    kind::ROUND_START,
                    now(),
                    data(&[("round", &round), ("unit", &unit)]),
                );
                self.journal_round(
                    r,
                    kind::ROUND_START,
                    serde_json::json!({"round": n, "unit": unit}),
                );
            }
        }
        self.save(r);
    }

    /// Plan a supervised action afresh (its pack hashed again) when a round ends or starts,
    /// not while one runs; `None` when the workload cannot go on (then it is finished).
    fn plan_round(
        &mut self,
        r: &mut RunRecord,
    ) -> Option<(plan::UnitPlan, outpost_pack::Supervise)> {
        let p = match self.decide(r) {
            Ok(p) => p,
            Err(why) => {
                self.finish(r, failed(format!("the workload cannot go on: {why}")));
                return None;
            }
        };
        match p.supervise.clone() {
            Some(cfg) => Some((p, cfg)),
            None => {
                self.finish(
                    r,
                    failed("the action is no longer supervised: the pack changed".into()),
                );
                None
            }
        }
    }

    /// Apply the supervisor's decision.
    fn apply_next(
        &mut self,
        r: &mut RunRecord,
        next: super::supervise::Next,
        end: Option<&super::supervise::RoundEnd>,
        log: &std::path::Path,
    ) {
        use super::supervise::Next;
        match next {
            Next::Round {
                round,
                backoff_secs: Some(secs),
                ..
            } => {
                let (n, s) = (round.to_string(), secs.to_string());
                r.event(
                    kind::ROUND_BACKOFF,
                    now(),
                    data(&[("next_round", &n), ("secs", &s)]),
                );
                self.journal_round(
                    r,
                    kind::ROUND_BACKOFF,
                    serde_json::json!({"next_round": round, "secs": secs}),
                );
            }
            Next::Round { .. } => {}
            Next::Stop {
                outcome,
                event,
                reason,
            } => {
                let mut reason = reason;
                if event == kind::CRASH_LOOP {
                    let tail = read_at(log, log_size(log).saturating_sub(16 << 10), 16 << 10)
                        .map(|b| String::from_utf8_lossy(&b).to_string())
                        .unwrap_or_default();
                    reason = format!(
                        "{reason}; last log: {}",
                        super::supervise::redacted_tail(&tail, 5)
                    );
                }
                r.event(event, now(), data(&[("reason", &reason)]));
                self.journal_round(r, event, serde_json::json!({"reason": reason}));
                let e = plan::Ending {
                    outcome,
                    exit_code: end.and_then(|e| e.exit_code),
                    signal: end.and_then(|e| e.signal.clone()),
                    reason,
                };
                self.finish(r, e);
            }
        }
    }

    fn journal_round(&self, r: &RunRecord, kind: &str, mut v: serde_json::Value) {
        v["run"] = serde_json::json!(r.run_id);
        v["pack"] = serde_json::json!(r.pack);
        v["action"] = serde_json::json!(r.action);
        let _ = self.journal.append(kind, v);
    }

    /// A supervised run's log, round after round, from the upload's place. True when the
    /// hub has all of it.
    fn upload_rounds(&mut self, r: &mut RunRecord) -> bool {
        let Some(mut st) = r.supervise.clone() else {
            return true;
        };
        let dir = plan::paths(&self.state_dir, &r.run_id).dir;
        let mut sent_now = 0u64;
        let mut done = false;
        while sent_now < LOG_PER_TICK {
            if st.upload_round == 0 {
                st.upload_round = 1;
            }
            if st.upload_round > st.round {
                done = true;
                break;
            }
            let path = plan::round_log(&dir, st.upload_round);
            let size = log_size(&path);
            // A finished run has no live round, whatever its state says.
            let live = r.phase == Phase::Started
                && st
                    .in_flight
                    .as_ref()
                    .is_some_and(|f| f.round == st.upload_round);
            if st.upload_offset >= size {
                if live {
                    break;
                }
                st.upload_round += 1;
                st.upload_offset = 0;
                continue;
            }
            let want = (size - st.upload_offset).min(LOG_CHUNK as u64);
            let Ok(chunk) = read_at(&path, st.upload_offset, want) else {
                break;
            };
            if chunk.is_empty() {
                break;
            }
            let Some(client) = &self.client else {
                break;
            };
            match client.log(&r.run_id, r.log_sent, &chunk) {
                Ok(Delivery::Acked(LogReply::Next(n))) if n > r.log_sent => {
                    let took = n - r.log_sent;
                    st.upload_offset += took;
                    r.log_sent = n;
                    sent_now += took;
                }
                Ok(Delivery::Acked(LogReply::Next(_))) => break,
                Ok(Delivery::Acked(LogReply::Gap(at))) => {
                    // The hub has `at` bytes: move back within this round, or forward.
                    if at < r.log_sent && r.log_sent - at <= st.upload_offset {
                        st.upload_offset -= r.log_sent - at;
                    }
                    r.log_sent = at;
                    break;
                }
                Ok(Delivery::Refused(why)) => {
                    log::warn(
                        &format!("runs: the hub refused run {}'s log ({why}); the rest stays on this host", r.run_id),
                        "the hub caps a run's log; the round logs are in the run's directory",
                    );
                    st.upload_round = st.round + 1;
                    done = true;
                    break;
                }
                Err(_) => break,
            }
        }
        r.supervise = Some(st);
        done
    }

    /// Upload new log bytes and events; once both are through, the result.
    fn deliver(&mut self, r: &mut RunRecord) {
        if r.local || self.client.is_none() {
            // The host's own workload: its journal and run directory are the record.
            r.events.clear();
            if r.phase == Phase::Finished {
                r.hub_state = Some("local".into());
                self.delivered(r);
            }
            return;
        }
        let before = (r.log_sent, r.events.len());
        let log_done = if r.supervise.is_some() {
            self.upload_rounds(r)
        } else {
            self.upload_log(r)
        };
        if !r.events.is_empty() {
            let Some(client) = &self.client else {
                return;
            };
            match client.events(&r.run_id, &r.events) {
                Ok(Delivery::Acked(seq)) => r.acked(seq),
                Ok(Delivery::Refused(why)) => {
                    log::warn(
                        &format!(
                            "runs: the hub refused run {}'s events ({why}); dropped",
                            r.run_id
                        ),
                        "the hub no longer knows this run (deleted?)",
                    );
                    r.events.clear();
                }
                Err(_) => {}
            }
        }
        if (r.log_sent, r.events.len()) != before {
            self.save(r);
        }
        if r.phase != Phase::Finished || !log_done || !r.events.is_empty() {
            return;
        }
        let Some(res) = r.result.clone() else { return };
        let Some(client) = &self.client else {
            return;
        };
        match client.result(&r.run_id, &res) {
            Ok(Delivery::Acked(ack)) => {
                r.hub_state = Some(ack.state.as_str().to_string());
                self.delivered(r);
            }
            Ok(Delivery::Refused(why)) => {
                log::warn(
                    &format!(
                        "runs: the hub refused run {}'s result ({why}); kept here",
                        r.run_id
                    ),
                    "`outpost runs` shows the local result",
                );
                r.hub_state = Some(format!("refused: {why}"));
                self.delivered(r);
            }
            Err(_) => {}
        }
    }

    fn delivered(&mut self, r: &mut RunRecord) {
        r.phase = Phase::Delivered;
        self.save(r);
        // Let the manager forget the unit (it stayed loaded for its result).
        let unit = r.unit.clone();
        if let Ok(m) = self.manager_of(r.privileged) {
            let _ = m.stop_nowait(&unit);
            let _ = m.reset_failed(&unit);
        }
    }

    /// Send what the hub lacks of the log (up to the cap). True when it has everything.
    fn upload_log(&mut self, r: &mut RunRecord) -> bool {
        let path = self.paths_of(r).log;
        let size = log_size(&path);
        let end = size.min(r.log_cap);
        let mut sent_now = 0u64;
        while r.log_sent < end && sent_now < LOG_PER_TICK {
            let want = (end - r.log_sent).min(LOG_CHUNK as u64);
            let Ok(chunk) = read_at(&path, r.log_sent, want) else {
                return false;
            };
            if chunk.is_empty() {
                return false;
            }
            let Some(client) = &self.client else {
                break;
            };
            match client.log(&r.run_id, r.log_sent, &chunk) {
                Ok(Delivery::Acked(LogReply::Next(n))) => {
                    let prev = r.log_sent;
                    r.log_sent = n.min(end);
                    if r.log_sent <= prev {
                        return false; // the hub took nothing new: again next tick
                    }
                    sent_now += r.log_sent - prev;
                }
                Ok(Delivery::Acked(LogReply::Gap(at))) => r.log_sent = at.min(end),
                Ok(Delivery::Refused(why)) => {
                    log::warn(
                        &format!("runs: the hub refused run {}'s log ({why}); the rest stays on this host", r.run_id),
                        "the hub caps a run's log; the full log is in the run's directory",
                    );
                    r.log_sent = end;
                }
                Err(_) => return false,
            }
        }
        r.log_sent >= end
    }
}

fn failed(reason: String) -> plan::Ending {
    plan::Ending {
        outcome: RunOutcome::Failed,
        exit_code: None,
        signal: None,
        reason,
    }
}

fn canceled(why: &str, end: Option<&super::supervise::RoundEnd>) -> plan::Ending {
    plan::Ending {
        outcome: RunOutcome::Canceled,
        exit_code: end.and_then(|e| e.exit_code),
        signal: end.and_then(|e| e.signal.clone()),
        reason: format!("canceled: {why}"),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How a round's unit ended.
fn round_end(
    st: &outpost_systemd::UnitStatus,
    round: u32,
    duration_ms: u64,
) -> super::supervise::RoundEnd {
    let (exit_code, signal) = match st.exec_main_code {
        1 => (Some(st.exec_main_status), None),
        2 | 3 => (None, Some(plan::signal_name(st.exec_main_status))),
        _ => (None, None),
    };
    let result = if st.load_state == "not-found" {
        "gone".to_string()
    } else if st.result.is_empty() {
        "success".to_string()
    } else {
        st.result.clone()
    };
    super::supervise::RoundEnd {
        round,
        exit_code,
        signal,
        result,
        duration_ms,
    }
}

/// The stop file and the `.done` sentinel (its first line, capped) in the run's work dir.
/// The processes left in a cgroup, as `pid name` pairs (at most 16), for an event.
fn cgroup_procs(cgroup: &str) -> String {
    if cgroup.is_empty() {
        return String::new();
    }
    let procs =
        std::fs::read_to_string(format!("/sys/fs/cgroup{cgroup}/cgroup.procs")).unwrap_or_default();
    procs
        .split_whitespace()
        .take(16)
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("{pid} {}", comm.trim())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the host's admin asked of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    AfterRound,
    Now,
}

/// The file name of a stop request for run `id` in the control dir.
pub fn stop_request_file(id: &str) -> String {
    format!("stop-{id}")
}

fn control(dir: &std::path::Path, id: &str) -> Option<Stop> {
    let b = outpost_core::trust::read_untrusted(&dir.join(stop_request_file(id)), None, 64)
        .ok()
        .flatten()?;
    Some(if String::from_utf8_lossy(&b).trim() == "now" {
        Stop::Now
    } else {
        Stop::AfterRound
    })
}

fn seen(
    work: &std::path::Path,
    cfg: &outpost_pack::Supervise,
    control: Option<Stop>,
) -> super::supervise::Seen {
    let stop_file = std::fs::symlink_metadata(work.join(&cfg.stop_file)).is_ok();
    let done = outpost_core::trust::read_untrusted(
        &work.join(outpost_pack::supervise::DONE_FILE),
        None,
        4096,
    )
    .ok()
    .flatten()
    .map(|b| {
        let text = String::from_utf8_lossy(&b).to_string();
        truncate(text.lines().next().unwrap_or("").trim(), 200)
    });
    super::supervise::Seen {
        stop_file,
        done,
        stop_requested: control.is_some(),
    }
}

/// `round-current.log` → `round-<n>.log` (a relative link, replaced atomically).
fn link_current(dir: &std::path::Path, n: u32) {
    let tmp = dir.join(format!(".{}.tmp", plan::ROUND_CURRENT));
    let _ = std::fs::remove_file(&tmp);
    if std::os::unix::fs::symlink(format!("round-{n}.log"), &tmp).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join(plan::ROUND_CURRENT));
    }
}

/// The bytes of a supervised run's log: what was sent and what the remaining rounds hold.
fn supervised_total(dir: &std::path::Path, st: &SupState, sent: u64) -> u64 {
    let from = st.upload_round.max(1);
    let mut total = sent;
    for n in from..=st.round {
        let size = log_size(&plan::round_log(dir, n));
        total += if n == from {
            size.saturating_sub(st.upload_offset)
        } else {
            size
        };
    }
    total
}

fn rejected(reason: String) -> plan::Ending {
    plan::Ending {
        outcome: RunOutcome::Rejected,
        exit_code: None,
        signal: None,
        reason,
    }
}

fn timeout_of(p: &plan::UnitPlan) -> u64 {
    p.props
        .iter()
        .find_map(|(k, v)| match (k.as_str(), v) {
            ("RuntimeMaxUSec", outpost_systemd::PropValue::U64(us)) => Some(us / 1_000_000),
            _ => None,
        })
        .unwrap_or(0)
}

fn log_size(log: &std::path::Path) -> u64 {
    std::fs::symlink_metadata(log)
        .map(|m| if m.is_file() { m.len() } else { 0 })
        .unwrap_or(0)
}

fn read_at(path: &std::path::Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let Some(mut f) = outpost_core::trust::open_untrusted(path)
        .map_err(|e| std::io::Error::other(e.to_string()))?
    else {
        return Ok(Vec::new());
    };
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Prove that `m` applies `iso` to a run: start [`plan::ISOLATION_PROBE_UNIT`] (a run's
/// isolation around a test that the agent's state dir is hidden) and read its end. Why
/// not, if not. Takes a few tens of ms, once per connection to the manager.
pub fn probe_isolation(
    m: &dyn RunManager,
    state_dir: &std::path::Path,
    iso: &plan::Isolation,
) -> Result<(), String> {
    let dir = state_dir.join(plan::ISOLATION_PROBE_DIR);
    let prepare = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir.join("work"))?;
        std::fs::write(
            dir.join("marker"),
            b"the agent's files: invisible to a run\n",
        )
    };
    prepare().map_err(|e| format!("cannot prepare the probe in {}: {e}", dir.display()))?;
    let unit = plan::ISOLATION_PROBE_UNIT;
    let props = plan::isolation_probe_props(iso, state_dir);
    let clear = || {
        let _ = m.stop_nowait(unit);
        let _ = m.reset_failed(unit);
    };
    let started = match m.start_transient_unit(unit, &props) {
        Err(SvcError::Job { result, .. }) if result == "exists" => {
            // A previous agent's probe, still loaded: clear it and try once more.
            clear();
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until
                && m.unit_status(unit)
                    .is_ok_and(|st| st.load_state == "loaded")
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            m.start_transient_unit(unit, &props)
        }
        r => r,
    };
    let verdict = match started {
        Err(e) => Err(format!("cannot start the probe {unit}: {e}")),
        Ok(()) => {
            let until = Instant::now() + Duration::from_secs(15);
            loop {
                match m.unit_status(unit).map(|st| plan::isolation_verdict(&st)) {
                    Ok(Some(v)) => break v,
                    Ok(None) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Ok(None) => break Err(format!("the probe {unit} did not end within 15 s")),
                    Err(e) => break Err(format!("cannot read the probe {unit}: {e}")),
                }
            }
        }
    };
    clear();
    let _ = std::fs::remove_dir_all(&dir);
    verdict
}

/// The controllers listed in `/sys/fs/cgroup<cgroup>/cgroup.controllers` (none on cgroup v1
/// or when unreadable).
pub fn read_controllers(cgroup: &str) -> std::collections::BTreeSet<String> {
    if cgroup.is_empty() {
        return Default::default();
    }
    let path = format!("/sys/fs/cgroup{cgroup}/cgroup.controllers");
    std::fs::read_to_string(path)
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}
