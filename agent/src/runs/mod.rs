//! Runs: the hub dispatches actions of the host's trusted packs; the agent runs each in its
//! own transient systemd unit in the service user's manager (docs/RUNS.md).
//!
//! [`plan`] decides (pure, table-tested), [`record`] is the per-run journal, [`client`] the
//! protocol, [`engine`] the threads that apply it.
pub mod client;
pub mod engine;
pub mod plan;
pub mod privileged;
pub mod record;
pub mod supervise;

pub use engine::{Engine, EngineConfig, PrivilegedConfig};
