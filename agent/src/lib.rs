//! The runner agent: configuration, the systemd notify protocol, the service's run loop, the
//! event journal, host facts, the hub client, enrollment and diagnostics.
pub mod clock;
pub mod config;
pub mod diagnostics;
pub mod enroll;
pub mod env;
pub mod exit;
pub mod facts;
pub mod fault;
pub mod fsx;
pub mod hub;
pub mod journal;
pub mod log;
pub mod run;
pub mod selftest;
pub mod trust;

pub use config::{Config, ConfigError};
