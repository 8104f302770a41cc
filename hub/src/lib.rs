//! outpost-hub: the control plane for outpost agents.
//!
//! The HTTP API is specified in `docs/PROTOCOL.md` and `docs/openapi.yaml`. The hub keeps
//! every agent in memory (loaded from its [`store::Store`], SQLite today, at start) so
//! heartbeats never touch the database on the request path: a single writer task persists
//! them in batches. The one exception is a heartbeat whose pack catalog changed (compared by
//! hash, so an unchanged catalog costs nothing): it is written at once, with its new pending
//! packs ([`packs`]).

pub mod api;
pub mod audit;
pub mod cli;
pub mod dashboard;
pub use outpost_core::duration;
pub mod error;
pub mod fleet;
pub mod limits;
pub mod packs;
pub mod pages;
pub mod releases;
pub mod runs;
pub mod runs_api;
pub mod server;
pub mod state;
pub mod store;
pub mod token;
pub mod web;

/// The hub's version, reported by `/healthz`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
