//! The base of the workspace: contracts every other crate shares, and nothing else.
//!
//! Charter: std plus small, well-kept crates of the Rust core ecosystem (serde, toml, time,
//! rustix, tempfile, sha2, semver, thiserror, fs-err). No network, no D-Bus, no CLI, no
//! async runtime; nothing here knows about the hub, releases or systemd. What lives here:
//! the env-var registry ([`env`]), exit codes ([`exit`]) and the [`Hint`] trait, [`Mode`],
//! [`Layout`] and the state-file names ([`layout::files`]), atomic writes ([`atomic`]), the one
//! temp dir ([`tempdir`]), StrictModes reads ([`trust`]), time helpers ([`time`]), validators
//! ([`url`], [`names`], [`text`]), `KEY=value` files ([`kv`]), the config schema ([`config`]),
//! the state-file schemas ([`state`]) and the event journal ([`journal`]).
pub mod atomic;
pub mod config;
pub mod duration;
pub mod env;
pub mod exit;
pub mod hint;
pub mod journal;
pub mod kv;
pub mod layout;
pub mod names;
pub mod state;
pub mod tempdir;
pub mod text;
pub mod time;
pub mod trust;
pub mod url;

pub use config::{Config, ConfigError};
pub use hint::Hint;
pub use layout::{Layout, Mode};
