//! Fault injection for the crash-safety tests. Compiled in only with the `fault-injection`
//! feature (test builds made by `ci/build-variants.sh`); release builds have no knob.
use crate::record::Step;
use outpost_core::layout::Layout;

/// With `OUTPOST_FAULT_PAUSE_AT=<step>` (kebab-case step name), the upgrader writes
/// `<state>/fault-paused` and stops there forever, so a test can SIGKILL it or power-cut the
/// host at exactly that step.
#[cfg(feature = "fault-injection")]
pub fn pause_at(layout: &Layout, step: Step) {
    let Ok(want) = std::env::var("OUTPOST_FAULT_PAUSE_AT") else {
        return;
    };
    let name = serde_json::to_value(step)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    if want == name {
        let marker = layout.host(&layout.state_dir).join("fault-paused");
        let _ = std::fs::write(&marker, &name);
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn pause_at(_layout: &Layout, _step: Step) {}

/// With `<state>/fault-dump-env` present, the resolver copies the environment it was started
/// with (`/proc/self/environ`) to `<state>/resolver-environ`, so the privilege-separation
/// suite can prove what reaches it. Test builds only.
#[cfg(feature = "fault-injection")]
pub fn dump_start_environment(layout: &Layout) {
    let sd = layout.host(&layout.state_dir);
    if sd.join("fault-dump-env").exists() {
        if let Ok(env) = std::fs::read("/proc/self/environ") {
            let _ = std::fs::write(sd.join("resolver-environ"), env);
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn dump_start_environment(_layout: &Layout) {}
