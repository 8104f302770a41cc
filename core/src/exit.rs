//! Process exit codes. Documented in docs/EXIT-CODES.md; the unit's
//! `RestartPreventExitStatus=` uses [`REVOKED`].

/// Success.
pub const OK: i32 = 0;
/// The operation failed (I/O, service manager, network); retrying may help.
pub const FAILURE: i32 = 1;
/// Bad input: unknown flag, bad value, unreadable or invalid config. Nothing was changed.
pub const USAGE: i32 = 2;
/// The control plane revoked this agent's token. systemd must not restart the agent.
pub const REVOKED: i32 = 10;
