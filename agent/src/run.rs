//! `outpost agent run`: the service's main loop.
//!
//! 1. Load the config (and the hub client when `[hub] url` is set).
//! 2. Not enrolled yet and a key is at hand: enroll (see [`crate::enroll`]).
//! 3. Heartbeat every `interval` (the hub's `interval_secs` wins over `[hub] heartbeat_secs`)
//!    with ±10 % jitter; after a failure, exponential backoff with full jitter capped at 5 min;
//!    the first success goes back to the normal interval.
//! 4. READY once the config is loaded and the first hub exchange has been attempted (at once
//!    without a hub); WATCHDOG while the loop is healthy.
//!
//! The loop sleeps on one channel, so a signal wakes it at once: hub exchanges run on a
//! worker thread (each bounded by the client's 15 s timeout) and the main thread keeps
//! petting the watchdog meanwhile; it stops petting when an exchange has hung for twice that,
//! so systemd restarts a wedged agent. SIGTERM/SIGINT: finish the exchange in flight, exit 0.
//! SIGHUP: reload the config (an invalid one is refused, the old one kept). SIGUSR1: heartbeat
//! now. Each heartbeat result is written to `heartbeat.json` in the state directory.
//! A 401 `token_revoked`/`token_invalid` is journaled as `token_revoked` and ends the loop with
//! [`RunError::Revoked`], whose exit code is [`outpost_core::exit::REVOKED`].
use crate::enroll::{self, EnrollError, Enrollment, Identity};
use crate::facts::Facts;
use crate::hub::{self, HubClient, HubError, JournalHead, LastUpgrade};
use crate::log;
use outpost_core::config::{Config, ConfigError};
use outpost_core::journal::{kind, Journal};
use sd_notify::NotifyState;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    pub mode: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("state directory {path} is not usable: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Bad `[hub] url` or `[release] ca_file` at start.
    #[error(transparent)]
    Hub(HubError),
    #[error(transparent)]
    Identity(EnrollError),
    /// The hub refused the enrollment key (journaled as `enroll_refused`).
    #[error("enrollment refused: {0}")]
    EnrollRefused(HubError),
    /// The hub revoked or no longer knows our token (journaled as `token_revoked`).
    #[error("agent stopped: {0}")]
    Revoked(HubError),
}

impl outpost_core::Hint for RunError {
    fn hint(&self) -> String {
        RunError::hint(self)
    }
    fn exit_code(&self) -> i32 {
        RunError::exit_code(self)
    }
}

impl RunError {
    pub fn hint(&self) -> String {
        match self {
            RunError::Config(e) => e.hint(),
            RunError::Signals(_) => "this is a bug; please report it with the output above".into(),
            RunError::StateDir { path, .. } => format!(
                "re-run `outpost install` to recreate {} with the right owner",
                path.display()
            ),
            RunError::Hub(e) | RunError::EnrollRefused(e) | RunError::Revoked(e) => e.hint(),
            RunError::Identity(e) => e.hint(),
        }
    }

    /// The process exit code for this error (docs/EXIT-CODES.md).
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Config(_) => outpost_core::exit::USAGE,
            RunError::Hub(HubError::BadUrl { .. } | HubError::CaFile { .. }) => {
                outpost_core::exit::USAGE
            }
            RunError::Revoked(_) => outpost_core::exit::REVOKED,
            _ => outpost_core::exit::FAILURE,
        }
    }
}

pub use outpost_core::state::{read_heartbeat_state, HeartbeatState, HEARTBEAT_FILE};

fn write_heartbeat_state(state_dir: &Path, s: &HeartbeatState) {
    let mut text = serde_json::to_string_pretty(s).unwrap_or_default();
    text.push('\n');
    let path = state_dir.join(HEARTBEAT_FILE);
    if let Err(e) = crate::fsx::write_atomic(&path, text.as_bytes(), 0o644) {
        log::warn(
            &format!("cannot write {}: {e}", path.display()),
            "the state directory must be writable by the service user",
        );
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HeartbeatNowError {
    #[error("cannot signal the agent (pid {pid}): {source}")]
    Signal { pid: i32, source: std::io::Error },
    #[error("the agent did not record a heartbeat within {0:?}")]
    Timeout(Duration),
}

impl HeartbeatNowError {
    pub fn hint(&self) -> String {
        match self {
            HeartbeatNowError::Signal { .. } => {
                "check that the service is running (`outpost status`) and that you may signal it (sudo for the system service)".into()
            }
            HeartbeatNowError::Timeout(_) => {
                "the agent may be waiting on a slow hub or not configured with one; see `outpost status` and the service's journal".into()
            }
        }
    }
}

/// `outpost heartbeat --now`: SIGUSR1 the running agent `pid` and wait until `heartbeat.json`
/// records a newer attempt.
pub fn heartbeat_now(
    pid: i32,
    state_dir: &Path,
    timeout: Duration,
) -> Result<HeartbeatState, HeartbeatNowError> {
    let before = read_heartbeat_state(state_dir).map_or(0, |s| s.at_ms);
    let p = rustix::process::Pid::from_raw(pid).ok_or(HeartbeatNowError::Signal {
        pid,
        source: std::io::Error::other("not a process id"),
    })?;
    rustix::process::kill_process(p, rustix::process::Signal::USR1).map_err(|e| {
        HeartbeatNowError::Signal {
            pid,
            source: e.into(),
        }
    })?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = read_heartbeat_state(state_dir).filter(|s| s.at_ms > before) {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            return Err(HeartbeatNowError::Timeout(timeout));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Longest wait between failed attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// Delay before retry number `failures` (1 = after the first failure): "full jitter"
/// (a uniform draw in `[0, min(cap, base * 2^(failures-1))]`), so a fleet that lost its hub
/// at the same moment does not come back in lockstep. Written out rather than pulling in a
/// backoff crate: it is these few lines, and `rand01` makes the bounds testable.
pub fn backoff_delay(failures: u32, rand01: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let ceiling = BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_CAP);
    ceiling
        .mul_f64(rand01.clamp(0.0, 1.0))
        .max(Duration::from_millis(50))
}

/// Share of the heartbeat interval that a retry never exceeds (see [`retry_delay`]).
const RETRY_SHARE_OF_INTERVAL: f64 = 0.8;

/// Delay before the next attempt after `failures` failed ones: [`backoff_delay`], but never
/// longer than 80 % of the heartbeat interval. A hub that comes back is then reached within
/// 0.8 interval, which leaves the rest of the interval for the exchange itself: the hub sees
/// every agent again within one interval of its return (issue 5), while retries against a hub
/// that stays away still back off from 50 ms up to that ceiling with full jitter.
pub fn retry_delay(failures: u32, interval: Duration, rand01: f64) -> Duration {
    backoff_delay(failures, rand01).min(interval.mul_f64(RETRY_SHARE_OF_INTERVAL))
}

/// `interval` ±10 %, per the protocol.
pub fn jittered(interval: Duration, rand01: f64) -> Duration {
    interval.mul_f64(0.9 + 0.2 * rand01.clamp(0.0, 1.0))
}

fn notify(state: &[NotifyState]) {
    // Outside systemd (NOTIFY_SOCKET unset) this is a no-op; a send error is not fatal for the
    // agent, and systemd will notice the missing READY/WATCHDOG itself.
    if let Err(e) = sd_notify::notify(false, state) {
        log::warn(
            &format!("cannot notify systemd: {e}"),
            "check NOTIFY_SOCKET",
        );
    }
}

enum Event {
    Signal(i32),
    Stop,
    HeartbeatNow,
    Reload,
    Done(Outcome),
}

enum Outcome {
    Enrolled(Result<Enrollment, EnrollError>),
    Heartbeat(Result<(hub::HeartbeatAck, hub::Meta), HubError>),
}

type Job = Box<dyn FnOnce() -> Outcome + Send>;

/// Control of a [`Runner`] from another thread (tests, an embedding CLI).
#[derive(Clone)]
pub struct RunHandle(mpsc::Sender<Event>);

impl RunHandle {
    /// Like SIGTERM.
    pub fn stop(&self) {
        let _ = self.0.send(Event::Stop);
    }
    /// Like SIGUSR1.
    pub fn heartbeat_now(&self) {
        let _ = self.0.send(Event::HeartbeatNow);
    }
    /// Like SIGHUP.
    pub fn reload(&self) {
        let _ = self.0.send(Event::Reload);
    }
}

/// The run loop with its inputs made explicit. [`run`] is `Runner::new(opts).run()`.
pub struct Runner {
    opts: RunOptions,
    env_file: Option<PathBuf>,
    enroll_key: Option<String>,
    signals: bool,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
}

impl Runner {
    /// Inputs from the environment: the key from `OUTPOST_ENROLL_KEY`, the secrets file from
    /// `OUTPOST_ENV_FILE` (else `outpost.env` beside the config file, if it exists).
    pub fn new(opts: RunOptions) -> Runner {
        let env_file = enroll::env_file_from_env().or_else(|| {
            let p = opts.config_path.with_file_name("outpost.env");
            p.exists().then_some(p)
        });
        let (tx, rx) = mpsc::channel();
        Runner {
            opts,
            env_file,
            enroll_key: enroll::key_from_env(),
            signals: true,
            tx,
            rx,
        }
    }

    pub fn env_file(mut self, p: Option<PathBuf>) -> Runner {
        self.env_file = p;
        self
    }

    pub fn enroll_key(mut self, k: Option<String>) -> Runner {
        self.enroll_key = k;
        self
    }

    /// Do not install signal handlers (tests running several loops in one process).
    pub fn without_signals(mut self) -> Runner {
        self.signals = false;
        self
    }

    pub fn handle(&self) -> RunHandle {
        RunHandle(self.tx.clone())
    }

    /// Run until stopped (Ok) or until the hub refuses us (Err, see [`RunError::exit_code`]).
    pub fn run(self) -> Result<(), RunError> {
        crate::fault::at_start();
        let signals = if self.signals {
            Some(spawn_signal_thread(self.tx.clone())?)
        } else {
            None
        };
        let result = Loop::start(&self).and_then(|mut l| l.run(&self.rx));
        if let Some((handle, thread)) = signals {
            handle.close();
            let _ = thread.join();
        }
        result
    }
}

/// Run until SIGTERM. Returns Ok on a clean stop; see [`RunError::exit_code`] otherwise.
pub fn run(opts: &RunOptions) -> Result<(), RunError> {
    Runner::new(opts.clone()).run()
}

fn spawn_signal_thread(
    tx: mpsc::Sender<Event>,
) -> Result<(signal_hook::iterator::Handle, std::thread::JoinHandle<()>), RunError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .map_err(RunError::Signals)?;
    let handle = signals.handle();
    let thread = std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })
        .map_err(RunError::Signals)?;
    Ok((handle, thread))
}

/// The worker thread that runs hub exchanges so the main loop never blocks on the network.
struct Worker {
    jobs: mpsc::Sender<Job>,
}

impl Worker {
    fn spawn(events: mpsc::Sender<Event>) -> std::io::Result<Worker> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("hub".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                for job in rx {
                    if events.send(Event::Done(job())).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Worker { jobs })
    }
}

/// The journal's head and last upgrade result, read incrementally (only appended bytes).
struct JournalView {
    journal: Arc<Journal>,
    follow: Option<outpost_core::journal::Follow>,
    /// Root's install journal (`OUTPOST_INSTALL_JOURNAL`), where upgrades are recorded: read
    /// only, for `last_upgrade`.
    install: Option<outpost_core::journal::Follow>,
    head: Option<JournalHead>,
    last_upgrade: Option<LastUpgrade>,
}

impl JournalView {
    fn new(journal: Arc<Journal>, install_journal: Option<&Path>) -> JournalView {
        let follow = journal.follow(true).ok();
        let install = install_journal.and_then(|p| Journal::at(p).follow(true).ok());
        JournalView {
            journal,
            follow,
            install,
            head: None,
            last_upgrade: None,
        }
    }

    fn note_upgrade(&mut self, r: &outpost_core::journal::Record) {
        if kind::UPGRADE_RESULTS.contains(&r.kind.as_str()) {
            let s = |k: &str| r.data.get(k).and_then(|v| v.as_str()).map(String::from);
            self.last_upgrade = Some(LastUpgrade {
                from: s("from"),
                to: s("to"),
                result: Some(r.kind.clone()),
                at: Some(r.time.clone()),
                extra: Default::default(),
            });
        }
    }

    fn refresh(&mut self) {
        if let Some(Ok(recs)) = self.install.as_mut().map(|f| f.poll()) {
            for r in &recs {
                self.note_upgrade(r);
            }
        }
        let polled = self.follow.as_mut().map(|f| f.poll());
        match polled {
            Some(Ok(recs)) => {
                for r in recs {
                    self.note_upgrade(&r);
                    self.head = Some(JournalHead {
                        seq: r.seq,
                        hash: r.hash,
                    });
                }
            }
            // A damaged line stops the incremental reader; the head is still readable.
            _ => {
                self.head = self
                    .journal
                    .head()
                    .ok()
                    .flatten()
                    .map(|(seq, hash)| JournalHead { seq, hash })
            }
        }
    }
}

struct HubConn {
    client: Arc<HubClient>,
    url: String,
}

fn connect(config: &Config) -> Result<Option<HubConn>, HubError> {
    let Some(url) = config.hub.url() else {
        return Ok(None);
    };
    Ok(Some(HubConn {
        client: Arc::new(HubClient::new(url, config.release.ca_file.as_deref())?),
        url: url.to_string(),
    }))
}

struct Loop<'a> {
    opts: &'a RunOptions,
    env_file: Option<&'a Path>,
    enroll_key: Option<&'a str>,
    config: Config,
    hub: Option<HubConn>,
    identity: Option<Identity>,
    journal: Arc<Journal>,
    view: JournalView,
    /// The catalog advertised with each heartbeat (reloaded on SIGHUP).
    catalog: Vec<outpost_proto::PackAdvert>,
    /// The same packs, for the runs engine.
    packs: Arc<std::sync::RwLock<Vec<outpost_pack::Pack>>>,
    /// Started once the agent is enrolled with a hub.
    engine: Option<crate::runs::Engine>,
    worker: Worker,
    started: Instant,
    interval: Duration,
    hub_set_interval: bool,
    failures: u32,
    next_due: Option<Instant>,
    in_flight: Option<Instant>,
    again: bool,
    ready: bool,
    stopping: bool,
    next_log: Instant,
    watchdog: Option<Duration>,
    next_wd: Instant,
    warned_no_key: bool,
}

impl<'a> Loop<'a> {
    fn start(r: &'a Runner) -> Result<Loop<'a>, RunError> {
        let opts = &r.opts;
        let config = Config::load(&opts.config_path)?;
        crate::selftest::check_state_dir(&opts.state_dir)?;
        let hub = connect(&config).map_err(RunError::Hub)?;
        let identity = if hub.is_some() {
            enroll::load_identity(&opts.state_dir).map_err(RunError::Identity)?
        } else {
            None
        };
        if let (Some(h), Some(id)) = (&hub, &identity) {
            if h.client.base_url() != id.hub_url.trim_end_matches('/') {
                log::warn(
                    &format!(
                        "agent {} was enrolled with {} but the config names {}",
                        id.agent_id, id.hub_url, h.url
                    ),
                    "if the hub moved, its token may not be valid there; to enroll with the new hub, delete identity.json and add a new key",
                );
            }
        }
        let journal = Arc::new(Journal::open(&opts.state_dir));
        let (catalog, packs) = load_catalog(opts, &journal);
        let mut wd_usec = 0u64;
        let watchdog = sd_notify::watchdog_enabled(false, &mut wd_usec)
            .then(|| Duration::from_micros(wd_usec / 2).max(Duration::from_millis(100)));
        let now = Instant::now();
        log::info(&format!(
            "outpost agent {} started (mode {}, config {}, state {}, hub {})",
            outpost_release::VERSION,
            opts.mode,
            opts.config_path.display(),
            opts.state_dir.display(),
            hub.as_ref().map_or("none", |h| h.url.as_str()),
        ));
        Ok(Loop {
            opts,
            env_file: r.env_file.as_deref(),
            enroll_key: r.enroll_key.as_deref(),
            interval: Duration::from_secs(config.hub.initial_interval_secs()),
            next_due: hub.as_ref().map(|_| now),
            view: JournalView::new(
                Arc::clone(&journal),
                std::env::var_os(outpost_core::env::INSTALL_JOURNAL)
                    .map(PathBuf::from)
                    .as_deref(),
            ),
            catalog,
            packs: Arc::new(std::sync::RwLock::new(packs)),
            engine: None,
            worker: Worker::spawn(r.tx.clone()).map_err(RunError::Signals)?,
            next_log: now + log_interval(&config),
            config,
            hub,
            identity,
            journal,
            started: now,
            hub_set_interval: false,
            failures: 0,
            in_flight: None,
            again: false,
            ready: false,
            stopping: false,
            watchdog,
            next_wd: now,
            warned_no_key: false,
        })
    }

    fn set_ready(&mut self) {
        if !self.ready && !crate::fault::no_ready() {
            self.ready = true;
            notify(&[NotifyState::Ready, NotifyState::Status("running")]);
        }
    }

    fn run(&mut self, rx: &mpsc::Receiver<Event>) -> Result<(), RunError> {
        if self.hub.is_none() {
            self.set_ready();
        }
        self.start_engine();
        loop {
            let now = Instant::now();
            if self.stopping && self.in_flight.is_none() {
                log::info("outpost agent stopping (signal received)");
                notify(&[NotifyState::Stopping]);
                return Ok(());
            }
            if !self.stopping && self.in_flight.is_none() && self.next_due.is_some_and(|d| d <= now)
            {
                self.dispatch();
            }
            if self.hub.is_none() && now >= self.next_log {
                log::info(&format!("alive: up {}s", self.started.elapsed().as_secs()));
                self.next_log = now + log_interval(&self.config);
            }
            self.pet_watchdog(now);
            // The 100 ms floor only matters while the watchdog is withheld (a hung exchange).
            let mut wake = self.next_wd.max(now + Duration::from_millis(100));
            if self.watchdog.is_none() {
                wake = now + Duration::from_secs(3600);
            }
            if self.hub.is_none() {
                wake = wake.min(self.next_log);
            }
            if let (None, Some(d)) = (self.in_flight, self.next_due) {
                wake = wake.min(d);
            }
            let ev = match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(ev) => ev,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                // Unreachable while we hold `self.worker`'s sender chain; treat as a stop.
                Err(mpsc::RecvTimeoutError::Disconnected) => Event::Stop,
            };
            match ev {
                Event::Stop => self.stopping = true,
                Event::Signal(s)
                    if s == signal_hook::consts::SIGTERM || s == signal_hook::consts::SIGINT =>
                {
                    self.stopping = true
                }
                Event::Signal(signal_hook::consts::SIGHUP) | Event::Reload => self.reload(),
                Event::Signal(_) | Event::HeartbeatNow => self.heartbeat_now(),
                Event::Done(outcome) => {
                    self.in_flight = None;
                    self.finish(outcome)?;
                    if self.again && !self.stopping {
                        self.again = false;
                        self.next_due = Some(Instant::now());
                    }
                }
            }
        }
    }

    fn pet_watchdog(&mut self, now: Instant) {
        let Some(every) = self.watchdog else { return };
        // Healthy unless an exchange has outlived twice the client's own overall timeout.
        let healthy = !matches!(self.in_flight,
            Some(t) if now.duration_since(t) >= 2 * hub::OVERALL_TIMEOUT);
        if now >= self.next_wd && healthy {
            notify(&[NotifyState::Watchdog]);
            self.next_wd = now + every;
        }
    }

    fn heartbeat_now(&mut self) {
        if self.hub.is_none() {
            log::info("heartbeat requested, but no hub is configured");
            return;
        }
        if self.in_flight.is_some() {
            self.again = true;
        } else {
            self.next_due = Some(Instant::now());
        }
    }

    fn reload(&mut self) {
        notify(&[NotifyState::Reloading]);
        let (catalog, packs) = load_catalog(self.opts, &self.journal);
        self.catalog = catalog;
        if let Ok(mut p) = self.packs.write() {
            *p = packs;
        }
        match Config::load(&self.opts.config_path) {
            Err(e) => log::warn(&format!("{e}; keeping the previous config"), &e.hint()),
            Ok(c) => {
                let same_hub = c.hub.url() == self.config.hub.url()
                    && c.release.ca_file == self.config.release.ca_file;
                if same_hub {
                    self.apply_config(c);
                } else {
                    match connect(&c) {
                        Err(e) => {
                            log::warn(&format!("{e}; keeping the previous config"), &e.hint())
                        }
                        Ok(h) => {
                            self.hub = h;
                            if self.hub.is_some() && self.identity.is_none() {
                                self.identity =
                                    enroll::load_identity(&self.opts.state_dir).ok().flatten();
                            }
                            self.failures = 0;
                            self.next_due = self.hub.as_ref().map(|_| Instant::now());
                            self.apply_config(c);
                        }
                    }
                }
            }
        }
        notify(&[NotifyState::Ready]);
    }

    fn apply_config(&mut self, c: Config) {
        if !self.hub_set_interval {
            self.interval = Duration::from_secs(c.hub.initial_interval_secs());
        }
        if self.hub.is_some() && self.identity.is_none() && self.next_due.is_none() {
            self.next_due = Some(Instant::now()); // maybe a key is there now
        }
        self.config = c;
        log::info(&format!(
            "config reloaded from {}",
            self.opts.config_path.display()
        ));
    }

    /// Start the next hub exchange on the worker.
    fn dispatch(&mut self) {
        let Some(h) = &self.hub else {
            self.next_due = None;
            return;
        };
        let client = Arc::clone(&h.client);
        let state_dir = self.opts.state_dir.clone();
        let mode = self.opts.mode.clone();
        let job: Job = match &self.identity {
            Some(id) => {
                self.view.refresh();
                let token = id.token.clone();
                let agent_id = id.agent_id.clone();
                let head = self.view.head.clone();
                let last = self.view.last_upgrade.clone();
                let packs = Some(self.catalog.clone());
                Box::new(move || {
                    let f = Facts::collect(&state_dir);
                    let hb = heartbeat_body(agent_id, mode, f, head, last, packs);
                    Outcome::Heartbeat(client.heartbeat(&token, &hb))
                })
            }
            None => {
                let key = self
                    .enroll_key
                    .map(String::from)
                    .or_else(|| self.env_file.and_then(key_from_env_file));
                let Some(key) = key else {
                    if !self.warned_no_key {
                        let e = EnrollError::NoKey;
                        log::warn(&format!("not enrolled with the hub: {e}"), &e.hint());
                        self.warned_no_key = true;
                    }
                    self.next_due = None; // a reload (SIGHUP) tries again
                    self.set_ready();
                    return;
                };
                let journal = Arc::clone(&self.journal);
                let env_file = self.env_file.map(Path::to_path_buf);
                Box::new(move || {
                    let facts = enroll_facts(Facts::collect(&state_dir), mode);
                    Outcome::Enrolled(enroll::enroll(enroll::EnrollRequest {
                        hub: &client,
                        key: &key,
                        facts,
                        state_dir: &state_dir,
                        journal: &journal,
                        env_file: env_file.as_deref(),
                    }))
                })
            }
        };
        self.next_due = None;
        if self.worker.jobs.send(job).is_err() {
            // The worker only exits when its channels close, which happens after this loop.
            log::error(
                "the hub worker thread is gone",
                "this is a bug; please report it",
            );
            self.stopping = true;
            return;
        }
        self.in_flight = Some(Instant::now());
    }

    fn schedule_failure(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        // Exponential with full jitter, capped below one heartbeat interval so an agent is
        // back online within one interval of the hub's return (the 5 min cap applies to
        // longer intervals).
        let d = retry_delay(self.failures, self.interval, fastrand::f64());
        self.next_due = Some(Instant::now() + d);
        d
    }

    fn finish(&mut self, outcome: Outcome) -> Result<(), RunError> {
        match outcome {
            Outcome::Enrolled(Ok(e)) => {
                log::info(&format!(
                    "enrolled with {} as agent {}",
                    e.identity.hub_url, e.identity.agent_id
                ));
                match (&e.scrub_warning, self.opts.mode.as_str()) {
                    // System mode: the secrets file is root's; the root resolver removes the
                    // used (single-use, now consumed) key at the service's next start.
                    (Some(_), "system") => log::info(
                        "the used enrollment key stays in the root-owned secrets file until the next start, when root removes it",
                    ),
                    (Some((msg, hint)), _) => log::warn(msg, hint),
                    (None, _) => {}
                }
                if let Some(s) = e.heartbeat_interval_secs {
                    self.set_interval(s);
                }
                self.identity = Some(e.identity);
                self.failures = 0;
                self.next_due = Some(Instant::now()); // first heartbeat right away
                self.start_engine();
            }
            Outcome::Enrolled(Err(EnrollError::Hub(e @ HubError::KeyRefused { .. }))) => {
                log::error(&format!("enrollment refused: {e}"), &e.hint());
                return Err(RunError::EnrollRefused(e));
            }
            Outcome::Enrolled(Err(e)) => {
                let d = self.schedule_failure();
                log::warn(
                    &format!("cannot enroll: {e}; retrying in {}s", d.as_secs()),
                    &e.hint(),
                );
                self.set_ready();
            }
            Outcome::Heartbeat(r) => {
                let result = self.heartbeat_result(r);
                self.set_ready();
                result?;
            }
        }
        Ok(())
    }

    /// Start the runs engine once there is a hub and an identity (at most once: a reload
    /// that changes the hub needs a restart for runs, like the token does).
    fn start_engine(&mut self) {
        if self.engine.is_some() {
            return;
        }
        let workloads = self.config.workloads.clone();
        let clients = match (&self.hub, &self.identity) {
            (Some(h), Some(id)) => {
                let ca = self.config.release.ca_file.as_deref();
                let client = |c: HubClient| crate::runs::client::RunsClient {
                    hub: c,
                    token: id.token.clone(),
                    agent_id: id.agent_id.clone(),
                };
                let clients =
                    HubClient::new(&h.url, ca).and_then(|a| Ok((a, HubClient::new(&h.url, ca)?)));
                match clients {
                    Ok((a, b)) => Some((client(a), client(b))),
                    Err(e) => return log::warn(&format!("runs: {e}"), &e.hint()),
                }
            }
            // Not enrolled yet: the engine starts once the agent is.
            (Some(_), None) => return,
            (None, _) if workloads.is_empty() => return,
            (None, _) => {
                log::info("runs: no hub configured; running the workloads declared in the config");
                None
            }
        };
        let (a, b) = match clients {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        let cfg = crate::runs::EngineConfig {
            state_dir: self.opts.state_dir.clone(),
            client: a,
            poll_client: b,
            workloads,
            packs: Arc::clone(&self.packs),
            journal: Arc::clone(&self.journal),
            env: std::env::vars().collect(),
            connect: Box::new(|| {
                let uid = rustix::process::geteuid().as_raw();
                outpost_systemd::dbus::SystemdBus::connect(outpost_systemd::Scope::User { uid })
                    .map(|b| Box::new(b) as Box<dyn outpost_systemd::RunManager>)
            }),
            pack_owner: crate::packs::owner(&self.opts.mode, rustix::process::geteuid().as_raw()),
            control_dir: control_dir(self.opts),
            privileged: privileged_config(self.opts),
            isolation: Some(isolation(self.opts)),
        };
        if cfg.privileged.is_some() {
            log::info("runs: privileged actions are admitted by root through outpost-run-privileged@.service");
        }
        match crate::runs::Engine::spawn(cfg) {
            Ok(e) => self.engine = Some(e),
            Err(e) => log::error(
                &format!("runs: cannot start the runs engine: {e}"),
                "the agent keeps heartbeating; restart it to try again",
            ),
        }
    }

    fn set_interval(&mut self, secs: u64) {
        self.interval = Duration::from_secs(secs.clamp(1, 86_400));
        self.hub_set_interval = true;
    }

    fn heartbeat_result(
        &mut self,
        r: Result<(hub::HeartbeatAck, hub::Meta), HubError>,
    ) -> Result<(), RunError> {
        let now = SystemTime::now();
        let mut state = HeartbeatState {
            at: outpost_core::time::rfc3339(now),
            at_ms: now
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            ok: r.is_ok(),
            error: r.as_ref().err().map(|e| e.to_string()),
            interval_secs: 0,
            agent_id: self.identity.as_ref().map(|i| i.agent_id.clone()),
            hub_url: self.hub.as_ref().map(|h| h.url.clone()).unwrap_or_default(),
            clock_skew_secs: None,
            failures: 0,
        };
        let result = match r {
            Ok((ack, meta)) => {
                if self.failures > 0 {
                    log::info(&format!(
                        "hub reachable again after {} failed attempt(s)",
                        self.failures
                    ));
                } else if !self.ready {
                    log::info(&format!(
                        "first heartbeat ok (interval {}s)",
                        ack.interval_secs
                    ));
                }
                self.set_interval(ack.interval_secs);
                self.failures = 0;
                self.next_due = Some(Instant::now() + jittered(self.interval, fastrand::f64()));
                state.clock_skew_secs = meta.skew_secs();
                if let Some(s) = state.clock_skew_secs.filter(|s| s.abs() > 60) {
                    log::warn(
                        &format!("clock skew with the hub is {s}s"),
                        "enable time synchronisation (systemd-timesyncd, chrony) on this host",
                    );
                }
                Ok(())
            }
            Err(e @ (HubError::TokenRevoked | HubError::TokenInvalid)) => {
                let data = serde_json::json!({
                    "agent_id": state.agent_id,
                    "hub_url": state.hub_url,
                    "code": e.code(),
                });
                if let Err(je) = self.journal.append(kind::TOKEN_REVOKED, data) {
                    log::warn(&je.to_string(), &je.hint());
                }
                log::error(&format!("agent stopped: {e}"), &e.hint());
                Err(RunError::Revoked(e))
            }
            Err(e) => {
                let d = self.schedule_failure();
                log::warn(
                    &format!("heartbeat failed: {e}; retrying in {}ms", d.as_millis()),
                    &e.hint(),
                );
                Ok(())
            }
        };
        state.failures = self.failures;
        state.interval_secs = self.interval.as_secs();
        write_heartbeat_state(&self.opts.state_dir, &state);
        result
    }
}

fn log_interval(c: &Config) -> Duration {
    Duration::from_secs(c.agent.log_interval_secs.max(1))
}

/// The enrollment facts as the agent sends them (`POST /api/v1/enroll`).
pub fn enroll_facts(f: Facts, mode: String) -> hub::EnrollFacts {
    hub::EnrollFacts {
        hostname: f.hostname,
        machine_id: f.machine_id,
        distro: f.distro,
        arch: f.arch,
        version: outpost_release::VERSION.to_string(),
        mode,
    }
}

/// The heartbeat as the run loop sends it (`POST /api/v1/heartbeat`; the client caps it).
/// The packs beside the config file, loaded, reported and advertised.
fn load_catalog(
    opts: &RunOptions,
    journal: &Journal,
) -> (Vec<outpost_proto::PackAdvert>, Vec<outpost_pack::Pack>) {
    let dir = opts.config_path.parent().unwrap_or(Path::new("/"));
    let c = crate::packs::load(dir, &opts.mode);
    crate::packs::report(&c, journal);
    (crate::packs::advert(&c), c.packs)
}

pub fn heartbeat_body(
    agent_id: String,
    mode: String,
    f: Facts,
    journal_head: Option<JournalHead>,
    last_upgrade: Option<LastUpgrade>,
    packs: Option<Vec<outpost_proto::PackAdvert>>,
) -> hub::Heartbeat {
    hub::Heartbeat {
        agent_id,
        version: Some(outpost_release::VERSION.to_string()),
        distro: Some(f.distro),
        kernel: Some(f.kernel),
        arch: Some(f.arch),
        uptime_secs: Some(f.uptime_secs),
        mode: Some(mode),
        capabilities: Some(hub::Capabilities {
            cpus: Some(f.cpus),
            mem_total_bytes: Some(f.mem_total_bytes),
            mem_available_bytes: Some(f.mem_available_bytes),
            disk_free_bytes: Some(f.disk_free_bytes),
            docker_version: f.docker_version,
            extra: Default::default(),
        }),
        journal_head,
        last_upgrade,
        packs,
    }
}

/// The key from the secrets file itself, for a key added after the service started (systemd
/// only reads the file at start; a reload makes the agent look again).
fn key_from_env_file(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = outpost_core::kv::assignment(l)?;
        (k == outpost_core::env::ENROLL_KEY && !v.is_empty()).then_some(v)
    })
}

/// Root's state dir (system mode; the parent of the agent's own in user mode) holds
/// `control/`, where `outpost workload stop` leaves its requests.
fn control_dir(opts: &RunOptions) -> std::path::PathBuf {
    let state = if opts.mode == "system" {
        outpost_core::layout::Layout::system(std::path::Path::new("/")).state_dir
    } else {
        opts.state_dir
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(|| opts.state_dir.clone())
    };
    state.join(outpost_core::layout::files::CONTROL_DIR)
}

/// What a run is fenced off from besides the agent's state dir, which it never sees
/// (docs/RUNS.md, *Isolation*). System mode: everything else of outpost's is root's, and
/// only root's env file is hidden (0600 already). User mode: outpost's files are all the
/// user's, so a run also gets them read-only (binaries, config, state, the user's units), so
/// it cannot change the agent that would start next.
fn isolation(opts: &RunOptions) -> crate::runs::plan::Isolation {
    let root = Path::new("/");
    if opts.mode == "system" {
        let layout = outpost_core::layout::Layout::system(root);
        return crate::runs::plan::Isolation {
            read_only: Vec::new(),
            inaccessible: vec![layout.env_file],
        };
    }
    // The config and state dirs are the agent's own; the binaries and the user's units are
    // found from $HOME (set by the user manager).
    let config_dir = opts.config_path.parent().unwrap_or(root);
    let mut read_only = vec![config_dir.to_path_buf()];
    read_only.extend(opts.state_dir.parent().map(Path::to_path_buf));
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        let layout = outpost_core::layout::Layout::user(root, Path::new(&home));
        read_only.extend([layout.base, layout.unit_dir]);
    }
    crate::runs::plan::Isolation {
        read_only,
        inaccessible: vec![config_dir.join(outpost_core::layout::files::ENV_FILE)],
    }
}

/// System mode with the root-owned template unit: privileged actions are admitted by root
/// (docs/RUNS.md, *Privileged actions*). Elsewhere they are rejected with that reason.
fn privileged_config(opts: &RunOptions) -> Option<crate::runs::PrivilegedConfig> {
    if opts.mode != "system" {
        return None;
    }
    let layout = outpost_core::layout::Layout::system(std::path::Path::new("/"));
    let template = layout.privileged_template()?;
    // Root-owned, in a root-owned dir: the installer wrote it (`sudo outpost install`).
    let meta = std::fs::symlink_metadata(&template).ok()?;
    if !meta.is_file() || std::os::unix::fs::MetadataExt::uid(&meta) != 0 {
        return None;
    }
    Some(crate::runs::PrivilegedConfig {
        connect: Box::new(|| {
            outpost_systemd::dbus::SystemdBus::connect(outpost_systemd::Scope::System)
                .map(|b| Box::new(b) as Box<dyn outpost_systemd::RunManager>)
        }),
        state_dir: layout.state_dir.clone(),
        root: layout.root.clone(),
        config_dir: layout.config_dir.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_bounds_table() {
        // (failures, rand, min, max)
        let cases: &[(u32, f64, u64, u64)] = &[
            (1, 1.0, 1000, 1000),
            (1, 0.0, 50, 50),
            (2, 1.0, 2000, 2000),
            (4, 0.5, 4000, 4000),
            (9, 1.0, 256_000, 256_000),
            (10, 1.0, 300_000, 300_000),
            (100, 1.0, 300_000, 300_000),
            (u32::MAX, 0.999, 299_000, 300_000),
            (3, 7.0, 4000, 4000),
        ];
        for &(n, r, lo, hi) in cases {
            let d = backoff_delay(n, r).as_millis() as u64;
            assert!((lo..=hi).contains(&d), "failures {n} rand {r}: {d}ms");
        }
        for n in 1..40 {
            for _ in 0..50 {
                let d = backoff_delay(n, fastrand::f64());
                assert!(
                    d <= BACKOFF_CAP && d >= Duration::from_millis(50),
                    "{n}: {d:?}"
                );
            }
        }
    }

    #[test]
    fn retry_delay_stays_below_one_interval() {
        // (failures, interval s, rand, expected ms)
        let cases: &[(u32, u64, f64, u64)] = &[
            (1, 30, 1.0, 1000),      // early retries follow the backoff
            (4, 30, 1.0, 8000),      // still below 0.8 × 30 s
            (6, 30, 1.0, 24_000),    // 32 s capped to 0.8 interval
            (30, 30, 1.0, 24_000),   // stays there while the hub is away
            (30, 3, 1.0, 2400),      // short interval: short ceiling
            (30, 3, 0.5, 2400),      // jitter draws below the interval ceiling still cap
            (2, 3, 0.5, 1000),       // below the ceiling the draw is the backoff's
            (30, 600, 1.0, 300_000), // long interval: the 5 min cap rules
            (1, 3, 0.0, 50),         // never a busy loop
        ];
        for &(n, i, r, want) in cases {
            let d = retry_delay(n, Duration::from_secs(i), r).as_millis() as u64;
            assert_eq!(d, want, "failures {n} interval {i}s rand {r}");
        }
        for n in 1..40 {
            let d = retry_delay(n, Duration::from_secs(3), fastrand::f64());
            assert!(d <= Duration::from_millis(2400), "{n}: {d:?}");
        }
    }

    #[test]
    fn jitter_is_within_ten_percent() {
        let i = Duration::from_secs(30);
        assert_eq!(jittered(i, 0.0), Duration::from_secs(27));
        assert_eq!(jittered(i, 1.0), Duration::from_secs(33));
        for _ in 0..200 {
            let d = jittered(i, fastrand::f64());
            assert!(d >= Duration::from_secs(27) && d <= Duration::from_secs(33));
        }
    }

    #[test]
    fn key_from_env_file_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("OUTPOST_ENROLL_KEY=abc\n", Some("abc")),
            ("# x\nOUTPOST_ENROLL_KEY=\"q k\"\n", Some("q k")),
            ("OUTPOST_ENROLL_KEY=\n", None),
            ("OTHER=1\n", None),
        ];
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("outpost.env");
        for (text, want) in cases {
            std::fs::write(&p, text).unwrap();
            assert_eq!(key_from_env_file(&p).as_deref(), *want, "{text}");
        }
        assert_eq!(key_from_env_file(&d.path().join("none")), None);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(
            RunError::Revoked(HubError::TokenRevoked).exit_code(),
            outpost_core::exit::REVOKED
        );
        assert_eq!(
            RunError::EnrollRefused(HubError::KeyRefused {
                code: "key_used".into(),
                message: String::new()
            })
            .exit_code(),
            outpost_core::exit::FAILURE
        );
        assert_eq!(
            RunError::Hub(HubError::BadUrl {
                url: "x".into(),
                reason: "r"
            })
            .exit_code(),
            outpost_core::exit::USAGE
        );
    }
}
