//! `outpost agent run`: the service's main loop.
//!
//! Loads the config, tells systemd READY, pets the watchdog, logs a line per interval,
//! reloads on SIGHUP and exits cleanly on SIGTERM/SIGINT.
use crate::config::{Config, ConfigError};
use sd_notify::NotifyState;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
        }
    }
}

struct Flags {
    term: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
}

fn install_signals() -> Result<Flags, RunError> {
    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term)).map_err(RunError::Signals)?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))
        .map_err(RunError::Signals)?;
    Ok(Flags { term, hup })
}

fn notify(state: &[NotifyState]) {
    // Outside systemd (NOTIFY_SOCKET unset) this is a no-op; a send error is not fatal for the
    // agent, and systemd will notice the missing READY/WATCHDOG itself.
    if let Err(e) = sd_notify::notify(false, state) {
        eprintln!("warning: cannot notify systemd: {e}");
    }
}

/// Run until SIGTERM. Returns Ok on a clean stop.
pub fn run(opts: &RunOptions) -> Result<(), RunError> {
    let flags = install_signals()?;
    let mut config = Config::load(&opts.config_path)?;
    crate::selftest::check_state_dir(&opts.state_dir)?;
    let started = Instant::now();
    println!(
        "outpost agent {} started (mode {}, config {}, state {})",
        outpost_packaging::VERSION,
        opts.mode,
        opts.config_path.display(),
        opts.state_dir.display()
    );
    notify(&[NotifyState::Ready, NotifyState::Status("running")]);

    let mut wd_usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut wd_usec)
        .then(|| Duration::from_micros(wd_usec / 2).max(Duration::from_millis(100)));
    let tick = Duration::from_millis(200);
    let mut last_wd = Instant::now();
    let mut last_log = Instant::now();
    loop {
        if flags.term.load(Ordering::Relaxed) {
            println!("outpost agent stopping (signal received)");
            notify(&[NotifyState::Stopping]);
            return Ok(());
        }
        if flags.hup.swap(false, Ordering::Relaxed) {
            notify(&[NotifyState::Reloading]);
            match Config::load(&opts.config_path) {
                Ok(c) => {
                    config = c;
                    println!("config reloaded from {}", opts.config_path.display());
                }
                Err(e) => eprintln!(
                    "error: {e}; keeping the previous config\nhint: {}",
                    e.hint()
                ),
            }
            notify(&[NotifyState::Ready]);
        }
        if let Some(every) = watchdog {
            if last_wd.elapsed() >= every {
                notify(&[NotifyState::Watchdog]);
                last_wd = Instant::now();
            }
        }
        let interval = Duration::from_secs(config.agent.log_interval_secs.max(1));
        if last_log.elapsed() >= interval {
            println!("alive: up {}s", started.elapsed().as_secs());
            last_log = Instant::now();
        }
        std::thread::sleep(tick);
    }
}
