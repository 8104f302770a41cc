//! The runner agent: configuration, the systemd notify protocol and the service's run loop.
pub mod config;
pub mod env;
pub mod exit;
pub mod run;
pub mod selftest;

pub use config::{Config, ConfigError};
