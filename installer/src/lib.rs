//! Host detection, unit/polkit rendering, install and uninstall: no CLI (the `outpost` binary
//! parses arguments and calls in here) and no dependency on the agent.
//!
//! The shape is detect → plan → apply: [`detect`] and [`plan`] are pure functions over
//! inputs (os-release text, `systemctl show`-style properties, a root directory); [`apply`]
//! is the one executor. Side effects sit behind two seams: the filesystem root carried by
//! `outpost_core::Layout` and the service manager trait of `outpost_systemd`.
pub mod apply;
pub mod detect;
pub mod error;
pub mod fsx;
pub mod install;
pub mod plan;
pub mod receipt;
pub mod render;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod uninstall;
pub mod users;

/// The unit name, in both modes.
pub const UNIT: &str = "outpost.service";
