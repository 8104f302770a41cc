//! Atomic, durable filesystem writes: one implementation for the whole workspace, in
//! `outpost_core::atomic` (the lowest crate); re-exported here for the installer.
pub use outpost_core::atomic::*;
