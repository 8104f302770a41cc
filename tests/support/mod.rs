//! Real-systemd test bed for integration tests (std only).
//!
//! Thin wrapper around `ci/testbed.sh`: boots Debian bookworm containers with
//! systemd as PID 1 (systemd-nspawn), runs commands as root or as a logged-in
//! user, reboots / power-cuts them, and halts them on drop.
//!
//! ```ignore
//! mod support;
//! #[test]
//! fn e2e_something() {
//!     let Some(tb) = support::require_testbed() else { return };
//!     let c = tb.boot("something");
//!     c.must_sh("systemctl is-system-running --wait || true");
//!     c.must_sh_as("alice", "systemctl --user status");
//! }
//! ```
//!
//! Skips (loudly) when not root or the tools are missing, unless `CI` is set
//! (to anything but `false`/`0`) or `OUTPOST_E2E_REQUIRED=1`: then it panics.
#![allow(dead_code)]

pub mod github;
pub mod http_stub;
pub mod hub;
pub mod proxy;
pub mod release;
pub mod runs;
pub mod tls;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Default per-command timeout (seconds); override with OUTPOST_TESTBED_CMD_TIMEOUT.
const DEFAULT_CMD_TIMEOUT: u64 = 600;

/// Result of a command run in (or against) a container.
/// Single-quote `s` for `sh -c`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[derive(Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    /// stdout with surrounding whitespace trimmed
    pub fn out(&self) -> &str {
        self.stdout.trim()
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl From<std::process::Output> for Output {
    fn from(o: std::process::Output) -> Self {
        Output {
            status: o.status,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Handle on the test bed (the script plus a built image).
#[derive(Clone, Debug)]
pub struct Testbed {
    script: PathBuf,
    /// Debian suite of the image (`None`: the default, bookworm).
    suite: Option<String>,
}

fn script_path() -> PathBuf {
    if let Some(p) = std::env::var_os("OUTPOST_TESTBED_SCRIPT") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/testbed.sh")
}

fn required() -> bool {
    let ci = std::env::var("CI").unwrap_or_default();
    let ci = !ci.is_empty() && ci != "false" && ci != "0";
    ci || std::env::var("OUTPOST_E2E_REQUIRED").as_deref() == Ok("1")
}

fn is_root() -> bool {
    // Uid: real effective saved fs
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn in_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn unavailable_reason(script: &Path) -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("not Linux".into());
    }
    if !is_root() {
        return Some("not running as root".into());
    }
    if !script.is_file() {
        return Some(format!("{} not found", script.display()));
    }
    let missing: Vec<&str> = [
        "systemd-nspawn",
        "debootstrap",
        "nsenter",
        "zstd",
        "flock",
        "setsid",
        "pgrep",
        "timeout",
    ]
    .into_iter()
    .filter(|t| !in_path(t))
    .collect();
    if !missing.is_empty() {
        return Some(format!(
            "missing tools: {} (apt-get install debootstrap systemd-container zstd util-linux procps)",
            missing.join(" ")
        ));
    }
    for d in ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"] {
        if !Path::new(d).is_dir() {
            return Some(format!("{d} missing (needs hybrid cgroup mounts)"));
        }
    }
    None
}

fn skip_or_panic(reason: &str) -> Option<Testbed> {
    if required() {
        panic!("e2e testbed required (CI or OUTPOST_E2E_REQUIRED=1) but unavailable: {reason}");
    }
    // Straight to fd 2: eprintln! would be swallowed by libtest's capture.
    use std::io::Write;
    let bar = "*".repeat(72);
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\nSKIPPED: e2e testbed unavailable: {reason}\n\
         (set OUTPOST_E2E_REQUIRED=1 to make this a failure)\n{bar}\n"
    );
    None
}

static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The test bed, with its image built (once per process; the script also
/// locks across processes). `None` (after a loud message) when unavailable,
/// unless required: then it panics.
/// The `outpost` binary the e2e suites test: `OUTPOST_E2E_BIN` (CI: the static release
/// build), else this workspace's debug build.
pub fn binary_under_test() -> String {
    std::env::var("OUTPOST_E2E_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_outpost").to_string())
}

/// Boot a container with [`binary_under_test`] at `/srv/dist/outpost` (mode 0755).
pub fn boot_with_binary(name: &str) -> Option<Container> {
    let tb = require_testbed()?;
    let c = tb.boot(name);
    c.must_sh("mkdir -p /srv/dist");
    c.cp_in(binary_under_test(), "/srv/dist/outpost");
    c.must_sh("chmod 0755 /srv/dist/outpost");
    Some(c)
}

pub fn require_testbed() -> Option<Testbed> {
    let script = script_path();
    if let Some(reason) = unavailable_reason(&script) {
        return skip_or_panic(&reason);
    }
    let tb = Testbed {
        script,
        suite: None,
    };
    match tb.image() {
        Ok(_) => Some(tb),
        Err(e) => skip_or_panic(&format!("image build failed: {e}")),
    }
}

/// Like [`require_testbed`], with an image of another Debian suite (`trixie`).
pub fn require_testbed_suite(suite: &str) -> Option<Testbed> {
    let script = script_path();
    if let Some(reason) = unavailable_reason(&script) {
        return skip_or_panic(&reason);
    }
    let tb = Testbed {
        script,
        suite: Some(suite.to_string()),
    };
    let o = tb.run(&["image"], None);
    if o.success() {
        Some(tb)
    } else {
        skip_or_panic(&format!("{suite} image build failed: {o:?}"))
    }
}

impl Testbed {
    /// Builds (or reuses) the cached image; path of the tarball.
    pub fn image(&self) -> Result<PathBuf, String> {
        if self.suite.is_some() {
            let o = self.run(&["image"], None);
            return if o.success() {
                Ok(PathBuf::from(o.out()))
            } else {
                Err(format!("{o:?}"))
            };
        }
        IMAGE
            .get_or_init(|| {
                let o = self.run(&["image"], None);
                if o.success() {
                    Ok(PathBuf::from(o.out()))
                } else {
                    Err(format!("{o:?}"))
                }
            })
            .clone()
    }

    /// Boot a fresh container; the name gets a unique suffix.
    pub fn boot(&self, name: &str) -> Container {
        Container::boot_with(self.clone(), name)
    }

    /// Run the script with args (stdin from `input` or /dev/null), bounded by
    /// a timeout that kills the whole process group.
    pub fn run(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let secs = std::env::var("OUTPOST_TESTBED_CMD_TIMEOUT")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(DEFAULT_CMD_TIMEOUT);
        let mut cmd = Command::new("timeout");
        cmd.arg("--kill-after=10")
            .arg(secs.to_string())
            .arg("bash")
            .arg(&self.script)
            .envs(
                self.suite
                    .iter()
                    .map(|s| ("OUTPOST_TESTBED_SUITE", s.as_str())),
            )
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.script.display()));
        if let Some(data) = input {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            let data = data.to_vec();
            // write from a thread so a large input can't deadlock against output
            std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            });
        }
        let o: Output = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.script.display()))
            .into();
        if o.code() == Some(124) || o.code() == Some(137) {
            eprintln!("testbed: `{}` timed out after {secs}s", args.join(" "));
        }
        o
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn machine_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(36);
    let s = s.trim_matches('-');
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("otb-{s}-{}-{n}", std::process::id())
}

/// A booted container; halted and deleted on drop.
pub struct Container {
    tb: Testbed,
    name: String,
}

impl Container {
    /// Boot with the process-wide test bed; panics if it is unavailable
    /// (call `require_testbed()` first to get the skip behaviour).
    pub fn boot(name: &str) -> Container {
        let tb = require_testbed().expect("e2e testbed unavailable");
        Self::boot_with(tb, name)
    }

    pub fn boot_with(tb: Testbed, name: &str) -> Container {
        let name = machine_name(name);
        let o = tb.run(&["boot", &name], None);
        if !o.success() {
            let _ = tb.run(&["halt", &name], None);
            panic!("booting container {name} failed:\n{o:?}");
        }
        eprint!("{}", o.stderr);
        Container { tb, name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host path of the container's root file system.
    pub fn host_root(&self) -> PathBuf {
        let state = std::env::var_os("OUTPOST_TESTBED_STATE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/outpost-testbed"));
        state.join("machines").join(&self.name).join("root")
    }

    /// Console log (nspawn + systemd boot output) of all boots so far.
    pub fn console_log(&self) -> String {
        std::fs::read_to_string(self.host_root().with_file_name("console.log")).unwrap_or_default()
    }

    /// Host PID of the container's PID 1.
    pub fn pid(&self) -> u32 {
        let o = self.tb.run(&["pid", &self.name], None);
        o.out()
            .parse()
            .unwrap_or_else(|_| panic!("pid of {}: {o:?}", self.name))
    }

    /// Run argv as root inside the container (nsenter; not a unit).
    pub fn exec(&self, argv: &[&str]) -> Output {
        let mut args = vec!["exec", &self.name, "--"];
        args.extend_from_slice(argv);
        self.tb.run(&args, None)
    }

    /// Like `exec`, feeding `input` on stdin.
    pub fn exec_with_stdin(&self, argv: &[&str], input: &[u8]) -> Output {
        let mut args = vec!["exec", &self.name, "--"];
        args.extend_from_slice(argv);
        self.tb.run(&args, Some(input))
    }

    /// `bash -c script` as root.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["bash", "-c", script])
    }

    /// `bash -c script` as `user` in a logind session (systemd-run
    /// --uid=USER -p PAMName=login): XDG_RUNTIME_DIR, `systemctl --user`
    /// and sudo work.
    pub fn sh_as(&self, user: &str, script: &str) -> Output {
        self.tb.run(
            &["run-as", &self.name, user, "--", "/bin/bash", "-c", script],
            None,
        )
    }

    pub fn must_sh(&self, script: &str) -> String {
        let o = self.sh(script);
        if !o.success() {
            panic!("[{}] root$ {script}\nfailed: {o:?}", self.name);
        }
        o.stdout
    }

    pub fn must_sh_as(&self, user: &str, script: &str) -> String {
        let o = self.sh_as(user, script);
        if !o.success() {
            panic!("[{}] {user}$ {script}\nfailed: {o:?}", self.name);
        }
        o.stdout
    }

    /// Copy a host file or directory into the container (mode preserved for files).
    pub fn cp_in(&self, host: impl AsRef<Path>, guest: &str) {
        let host = host.as_ref().to_string_lossy().into_owned();
        let o = self.tb.run(&["cp-in", &self.name, &host, guest], None);
        if !o.success() {
            panic!("[{}] cp-in {host} -> {guest} failed: {o:?}", self.name);
        }
    }

    /// Wait for user@UID.service to be active and /run/user/UID/bus to exist
    /// (e.g. after `loginctl enable-linger USER`).
    pub fn wait_user(&self, user: &str) {
        let o = self.tb.run(&["wait-user", &self.name, user], None);
        if !o.success() {
            panic!("[{}] wait-user {user} failed: {o:?}", self.name);
        }
    }

    /// Clean poweroff, then boot again on the same files.
    pub fn reboot(&self) {
        let o = self.tb.run(&["reboot", &self.name], None);
        if !o.success() {
            panic!("[{}] reboot failed: {o:?}", self.name);
        }
    }

    /// SIGKILL the container (no shutdown), then boot again on the same files.
    /// Note: unsynced writes are NOT lost (same host page cache).
    pub fn powercut_and_boot(&self) {
        self.powercut();
        let o = self.tb.run(&["boot-again", &self.name], None);
        if !o.success() {
            panic!("[{}] boot after power cut failed: {o:?}", self.name);
        }
    }

    /// SIGKILL the container; it stays down until `boot_again`.
    pub fn powercut(&self) {
        let o = self.tb.run(&["powercut", &self.name], None);
        if !o.success() {
            panic!("[{}] powercut failed: {o:?}", self.name);
        }
    }

    /// Boot a halted / power-cut container on its existing files.
    pub fn boot_again(&self) {
        let o = self.tb.run(&["boot-again", &self.name], None);
        if !o.success() {
            panic!("[{}] boot-again failed: {o:?}", self.name);
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "testbed: test panicked; killing container {} (console log tail follows)",
                self.name
            );
            let log = self.console_log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            for l in tail.into_iter().rev() {
                eprintln!("  | {l}");
            }
            let _ = self.tb.run(&["powercut", &self.name], None);
        }
        let o = self.tb.run(&["halt", &self.name], None);
        if !o.success() {
            eprintln!("testbed: halting {} failed: {o:?}", self.name);
        }
    }
}

/// Files an install could touch (run in a container), for before/after comparisons.
pub const LISTING: &str =
    "find /etc /opt /usr/local /home /var/lib/outpost /var/lib/systemd/linger \
     -xdev 2>/dev/null | grep -v -e '^/etc/ld.so.cache' -e '/.sudo_as_admin_successful$' | sort";

/// Assert two listings are equal, showing only the difference.
pub fn assert_same_files(before: &str, after: &str, what: &str) {
    let b: std::collections::BTreeSet<&str> = before.lines().collect();
    let a: std::collections::BTreeSet<&str> = after.lines().collect();
    let added: Vec<_> = a.difference(&b).collect();
    let removed: Vec<_> = b.difference(&a).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "{what}: added {added:?}, removed {removed:?}"
    );
}
