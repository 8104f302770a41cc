//! The runner agent: configuration, the systemd notify protocol, the service's run loop, the
//! event journal, host facts, the hub client, enrollment, diagnostics and the runs engine.
pub mod diagnostics;
pub mod enroll;
pub mod facts;
pub mod fault;
pub mod fsx;
pub mod hub;
pub mod log;
pub mod packs;
pub mod run;
pub mod runs;
pub mod selftest;

pub use outpost_core::{Config, ConfigError};
