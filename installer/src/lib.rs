//! Host detection, unit/polkit rendering, install/uninstall and the `outpost` CLI.
//!
//! The shape is detect → plan → apply: [`detect`] and [`plan`] are pure functions over
//! inputs (os-release text, `systemctl show`-style properties, a root directory); [`apply`]
//! is the one executor. Side effects sit behind two seams: the filesystem root carried by
//! [`layout::Layout`] and the service manager trait in [`svc`].
pub mod agentctl;
pub mod apply;
pub mod cli;
pub mod cloudinit;
pub mod detect;
pub mod error;
pub mod fault;
pub mod fsx;
pub mod install;
pub mod plan;
pub mod receipt;
pub mod render;
pub mod status;
#[cfg(test)]
pub(crate) mod testing;
pub mod uninstall;
pub mod upgrade;
pub mod users;

/// The unit name, in both modes.
pub const UNIT: &str = "outpost.service";
