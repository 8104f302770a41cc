//! Agent faults for the upgrade suite's broken versions. Only in builds with the
//! `fault-injection` feature (`ci/build-variants.sh`); release builds have no knob.
//!
//! `OUTPOST_FAULT=VERSION:KIND` in the service environment makes the agent of exactly that
//! version misbehave: `exit-at-start`, `no-ready` (never sends READY), `crash-after-3s`.

/// The fault this process should inject, if any.
#[cfg(feature = "fault-injection")]
pub fn active() -> Option<String> {
    let spec = std::env::var("OUTPOST_FAULT").ok()?;
    let (version, kind) = spec.split_once(':')?;
    (version == outpost_release::VERSION).then(|| kind.to_string())
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn active() -> Option<String> {
    None
}

/// Apply start-time faults: exit now, or schedule a crash.
pub fn at_start() {
    match active().as_deref() {
        Some("exit-at-start") => {
            eprintln!("fault injection: exiting at start");
            std::process::exit(outpost_core::exit::FAILURE);
        }
        Some("crash-after-3s") => {
            std::thread::spawn(|| {
                std::thread::sleep(std::time::Duration::from_secs(3));
                eprintln!("fault injection: crashing after 3 s");
                std::process::exit(outpost_core::exit::FAILURE);
            });
        }
        _ => {}
    }
}

/// Whether READY must be withheld.
pub fn no_ready() -> bool {
    active().as_deref() == Some("no-ready")
}
