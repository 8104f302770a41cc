//! The one registry of environment variables outpost reads. Documented in docs/ENVIRONMENT.md;
//! clap arguments refer to these constants with `env =`.

/// Path of the config file (the unit sets it; default depends on the mode).
pub const CONFIG: &str = "OUTPOST_CONFIG";
/// The agent's state directory (token, heartbeat state, its journal).
pub const STATE_DIR: &str = "OUTPOST_STATE_DIR";
/// Root's journal of install and upgrade events (the unit sets it): the agent follows it,
/// read-only, to report the last upgrade's result in heartbeats.
pub const INSTALL_JOURNAL: &str = "OUTPOST_INSTALL_JOURNAL";
/// `system` or `user`: the mode the service was installed in (the unit sets it).
pub const MODE: &str = "OUTPOST_MODE";
/// Filesystem root for every path outpost reads or writes (default `/`). A test seam: read
/// only by test builds (debug assertions or the `fault-injection` feature); release builds
/// ignore it and refuse `--root`.
pub const ROOT: &str = "OUTPOST_ROOT";
/// Single-use enrollment key, only ever read from the environment or the 0600 secrets file.
pub const ENROLL_KEY: &str = "OUTPOST_ENROLL_KEY";
/// Path of the 0600 secrets file (`outpost.env`); the agent removes the used enrollment key
/// from it after enrolling when it can (user mode; in system mode the file is root's and the
/// root resolver removes the key at the next start). Set by the unit.
pub const ENV_FILE: &str = "OUTPOST_ENV_FILE";
/// A file holding the enrollment key (safer through sudo than the variable itself, which
/// `sudo --preserve-env` logs).
pub const ENROLL_KEY_FILE: &str = "OUTPOST_ENROLL_KEY_FILE";
/// Control-plane URL written into the config by `install --hub`.
pub const HUB_URL: &str = "OUTPOST_HUB_URL";
/// Release host (`outpost upgrade --from`, install.sh).
pub const RELEASE_URL: &str = "OUTPOST_RELEASE_URL";
/// The channel install.sh resolved the version from; `install` refuses unless the signed
/// manifest names that version as the channel's head.
pub const RELEASE_CHANNEL: &str = "OUTPOST_RELEASE_CHANNEL";
/// Trusted release public keys, one minisign base64 line each (install.sh passes the keys
/// embedded at publish time; `install` records them in a new config).
pub const RELEASE_PUBKEYS: &str = "OUTPOST_RELEASE_PUBKEYS";
/// Extra CA bundle (PEM) for the release host and hub (`install --ca-file`).
pub const CA_FILE: &str = "OUTPOST_CA_FILE";
/// User the system service runs as (`install --run-as`).
pub const RUN_AS: &str = "OUTPOST_RUN_AS";
/// Build-time only: overrides the version baked into the binary.
pub const BUILD_VERSION: &str = "OUTPOST_BUILD_VERSION";

/// Set by sudo: the user who invoked `sudo outpost …`.
pub const SUDO_USER: &str = "SUDO_USER";
/// Set by systemd for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// Set by systemd when `WatchdogSec=` is configured.
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// Home directory of the invoking user (user mode paths).
pub const HOME: &str = "HOME";

/// Every variable above, for the test that checks docs/ENVIRONMENT.md against this registry.
pub const ALL: &[&str] = &[
    CONFIG,
    STATE_DIR,
    INSTALL_JOURNAL,
    MODE,
    ROOT,
    ENROLL_KEY,
    ENV_FILE,
    ENROLL_KEY_FILE,
    HUB_URL,
    RELEASE_URL,
    RELEASE_CHANNEL,
    RELEASE_PUBKEYS,
    CA_FILE,
    RUN_AS,
    BUILD_VERSION,
    SUDO_USER,
    NOTIFY_SOCKET,
    WATCHDOG_USEC,
    HOME,
];
