//! The event journal: `events.jsonl` in the state directory, one hash-chained JSON record per
//! line. This module is THE one writer; the agent, the CLI and the upgrader all append through
//! [`Journal::append`], which serialises writers with `flock(2)` (across processes) and a mutex
//! (across threads of one process).
//!
//! # Record
//!
//! `{"seq": n, "time": "<RFC 3339 UTC>", "kind": "...", "data": {...}, "prev": "<hex>", "hash": "<hex>"}`
//!
//! * `seq` starts at 1 and grows by exactly 1 per line.
//! * `prev` is the previous record's `hash`; the first record's `prev` is 64 zeros ([`GENESIS`]).
//! * `hash` is the lowercase hex SHA-256 of the **canonical encoding** of the object
//!   `{"data": data, "kind": kind, "prev": prev, "seq": seq, "time": time}` (no `hash` field).
//!
//! # Canonical encoding
//!
//! JSON text with no whitespace at all; object keys sorted by their UTF-8 bytes (so the five
//! top-level keys appear in the order `data, kind, prev, seq, time`); strings escaped the way
//! `serde_json` writes them (`"` `\\` and control characters escaped, `\n`-style short escapes
//! where JSON has one, everything else literal UTF-8); numbers as `serde_json` prints them
//! (integers in decimal, floats in their shortest round-trip form). The line stored in the file
//! may order keys differently: only the canonical form is hashed. Example: seq 1, time
//! `2024-01-01T00:00:00Z`, kind `x`, data `{"b":1,"a":[true,null]}` hashes the bytes
//! `{"data":{"a":[true,null],"b":1},"kind":"x","prev":"000…000","seq":1,"time":"2024-01-01T00:00:00Z"}`.
//!
//! # Durability
//!
//! An append takes an exclusive `flock` on the journal's lock file (`events.jsonl.lock`,
//! 0600, so only the journal's owner can take it: a reader with less privilege can never
//! block the writer), opens the journal with `O_APPEND | O_NOFOLLOW`, reads the last line for
//! the head, writes the new line with one `write`, `fsync`s the file (and the directory when
//! it created the file). A torn last line (a crash mid-write, never acknowledged) is cut off by
//! the next append; [`Journal::verify`] reports it as `torn_tail` rather than as tampering.
//!
//! # Two journals, one writer each (docs/SECURITY.md)
//!
//! In system mode the agent's journal (`<state>/agent/events.jsonl`) is written only by the
//! agent, and root's install and upgrade events go to root's own journal
//! (`<state>/events.jsonl`). Readers take no lock: they open the file `O_NOFOLLOW`, require a
//! regular file, stop at a torn last line, bound every line to [`MAX_RECORD_BYTES`] and never
//! write, so root can display the agent's journal without trusting it.
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// File name inside the state directory.
pub use crate::layout::files::JOURNAL as FILE;
/// Longest record line accepted by readers (1 MiB); the agent writes far smaller ones.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;
/// Most bytes one [`Follow::poll`] reads.
const MAX_POLL_BYTES: u64 = 16 << 20;
/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Event kinds other modules write (upgrade kinds are written by the upgrader).
pub mod kind {
    pub const ENROLLED: &str = "enrolled";
    pub const ENROLL_REFUSED: &str = "enroll_refused";
    pub const TOKEN_REVOKED: &str = "token_revoked";
    pub const SERVICE_UPGRADED: &str = "service_upgraded";
    pub const SERVICE_UPGRADE_ROLLED_BACK: &str = "service_upgrade_rolled_back";
    pub const PACKAGE_UPGRADED: &str = "package_upgraded";
    /// Root's journal: a pack installed or updated, removed, its privileged actions granted.
    pub const PACK_INSTALLED: &str = "pack_installed";
    pub const PACK_REMOVED: &str = "pack_removed";
    pub const PACK_PRIVILEGED_GRANTED: &str = "pack_privileged_granted";
    /// The agent's journal: a run's unit started, a run ended (its result), a restarted
    /// agent took over the runs its predecessor left, a run refused before it started.
    pub const RUN_STARTED: &str = "run_started";
    pub const RUN_FINISHED: &str = "run_finished";
    pub const RUNS_REATTACHED: &str = "runs_reattached";
    /// Whether this host's manager isolates runs from the agent's files (`isolated`,
    /// `reason`), proved at each connection to it.
    pub const RUNS_ISOLATION: &str = "runs_isolation";
    /// Root's journal: the privileged helper started a privileged run as root, or refused
    /// the service user's request (with the reason).
    pub const PRIVILEGED_RUN_STARTED: &str = "privileged_run_started";
    pub const PRIVILEGED_RUN_REFUSED: &str = "privileged_run_refused";
    /// The agent's journal: a supervised workload's rounds and how it stopped.
    pub const ROUND_START: &str = "round_start";
    pub const ROUND_END: &str = "round_end";
    pub const ROUND_BACKOFF: &str = "round_backoff";
    pub const ROUND_TIMEOUT_KILL: &str = "round_timeout_kill";
    pub const ROUND_GRACE_EXTENDED: &str = "round_grace_extended";
    pub const STOP_FILE_DETECTED: &str = "stop_file_detected";
    pub const SELF_TERMINATED: &str = "self_terminated";
    pub const CRASH_LOOP: &str = "crash_loop";
    pub const CONFIG_BROKEN: &str = "config_broken";
    pub const MAX_ROUNDS_REACHED: &str = "max_rounds_reached";
    pub const WORKLOAD_STOPPED: &str = "workload_stopped";
    /// The kinds the heartbeat reports as `last_upgrade`.
    pub const UPGRADE_RESULTS: [&str; 3] = [
        SERVICE_UPGRADED,
        SERVICE_UPGRADE_ROLLED_BACK,
        PACKAGE_UPGRADED,
    ];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub seq: u64,
    pub time: String,
    pub kind: String,
    pub data: Value,
    pub prev: String,
    pub hash: String,
}

impl Record {
    /// The canonical bytes that `hash` covers (see the module docs).
    pub fn canonical(seq: u64, time: &str, kind: &str, data: &Value, prev: &str) -> String {
        let mut s = String::with_capacity(128);
        s.push_str("{\"data\":");
        canon(data, &mut s);
        s.push_str(",\"kind\":");
        canon_str(kind, &mut s);
        s.push_str(",\"prev\":");
        canon_str(prev, &mut s);
        s.push_str(",\"seq\":");
        s.push_str(&seq.to_string());
        s.push_str(",\"time\":");
        canon_str(time, &mut s);
        s.push('}');
        s
    }

    pub fn compute_hash(seq: u64, time: &str, kind: &str, data: &Value, prev: &str) -> String {
        hex::encode(Sha256::digest(
            Self::canonical(seq, time, kind, data, prev).as_bytes(),
        ))
    }

    fn expected_hash(&self) -> String {
        Self::compute_hash(self.seq, &self.time, &self.kind, &self.data, &self.prev)
    }
}

fn canon_str(s: &str, out: &mut String) {
    // Serialising a str cannot fail (no I/O, no map keys to check).
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

fn canon(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => canon_str(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canon(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            // Sort explicitly: serde_json's map order depends on its `preserve_order` feature,
            // which any crate in the build could switch on.
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canon_str(k, out);
                out.push(':');
                canon(&m[k], out);
            }
            out.push('}');
        }
    }
}

/// Why a line breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakReason {
    BadJson(String),
    SeqGap { expected: u64, found: u64 },
    PrevMismatch,
    HashMismatch,
}

impl std::fmt::Display for BreakReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BreakReason::BadJson(e) => write!(f, "bad json ({e})"),
            BreakReason::SeqGap { expected, found } => {
                write!(f, "seq gap (expected {expected}, found {found})")
            }
            BreakReason::PrevMismatch => f.write_str("prev does not match the previous hash"),
            BreakReason::HashMismatch => f.write_str("hash does not match the record"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot {op} journal {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal {path} has an unreadable last line: {reason}")]
    BadHead { path: PathBuf, reason: String },
    #[error("journal {path} is broken at line {line}{}: {reason}", seq.map(|s| format!(" (seq {s})")).unwrap_or_default())]
    Broken {
        path: PathBuf,
        line: u64,
        seq: Option<u64>,
        reason: BreakReason,
    },
}

impl JournalError {
    pub fn hint(&self) -> String {
        match self {
            JournalError::Io { path, .. } => format!(
                "check that {} exists and is writable by the service user",
                fsx_parent(path).display()
            ),
            JournalError::BadHead { path, .. } => format!(
                "run `outpost audit verify` to find the damage in {}",
                path.display()
            ),
            JournalError::Broken { path, line, .. } => format!(
                "line {line} of {} was edited, truncated or reordered; keep a copy for review, \
                 then move the file aside to start a new chain (the hub will flag the reset)",
                path.display()
            ),
        }
    }
}

/// `O_NOFOLLOW` for `OpenOptionsExt::custom_flags`.
fn libc_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

fn fsx_parent(p: &Path) -> &Path {
    crate::atomic::parent(p)
}

/// Result of a successful [`Journal::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub records: u64,
    /// `(seq, hash)` of the last record.
    pub head: Option<(u64, String)>,
    /// The file ends in an incomplete line (a crash mid-append); the next append removes it.
    pub torn_tail: bool,
}

pub struct Journal {
    path: PathBuf,
    /// Serialises appends from threads of this process (flock is per open file description,
    /// so it would not separate two threads sharing one `Journal`).
    local: Mutex<()>,
}

struct Locked {
    file: std::fs::File,
}

impl Drop for Locked {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.file, rustix::fs::FlockOperation::Unlock);
    }
}

fn flock(file: &std::fs::File, op: rustix::fs::FlockOperation) -> std::io::Result<()> {
    loop {
        match rustix::fs::flock(file, op) {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r.map_err(std::io::Error::from),
        }
    }
}

impl Journal {
    /// The journal of `state_dir` (the file is created by the first append).
    pub fn open(state_dir: &Path) -> Journal {
        Journal {
            path: state_dir.join(FILE),
            local: Mutex::new(()),
        }
    }

    /// The journal file at `path` (another journal than a state dir's, e.g. root's
    /// install journal that the agent follows read-only).
    pub fn at(path: &Path) -> Journal {
        Journal {
            path: path.to_path_buf(),
            local: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, op: &'static str) -> impl Fn(std::io::Error) -> JournalError + '_ {
        move |source| JournalError::Io {
            op,
            path: self.path.clone(),
            source,
        }
    }

    /// Open for reading (no lock, no link followed, regular files only); `None` when the
    /// file does not exist yet.
    fn open_read(&self) -> Result<Option<std::fs::File>, JournalError> {
        crate::trust::open_untrusted(&self.path).map_err(|e| match e {
            crate::trust::TrustError::Io { source, .. } => self.io("open")(source),
            other => self.io("open")(std::io::Error::other(other.to_string())),
        })
    }

    /// The lock file that serialises appenders (0600: only the journal's owner can lock it).
    fn lock_path(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        self.path.with_file_name(name)
    }

    fn lock_exclusive(&self) -> Result<Locked, JournalError> {
        let path = self.lock_path();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc_nofollow())
            .open(&path)
            .map_err(|e| JournalError::Io {
                op: "open the lock of",
                path: self.path.clone(),
                source: e,
            })?;
        flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(self.io("lock"))?;
        Ok(Locked { file })
    }

    /// Append one record and return it.
    pub fn append(&self, kind: &str, data: Value) -> Result<Record, JournalError> {
        // A poisoned mutex only means another thread panicked mid-append; the flock-protected
        // file is still consistent, so carry on.
        let _guard = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let _lock = self.lock_exclusive()?;
        let (file, created) = match std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .custom_flags(libc_nofollow())
            .open(&self.path)
        {
            Ok(f) => (f, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&self.path)
                    .map_err(self.io("create"))?;
                (f, true)
            }
            Err(e) => return Err(self.io("open")(e)),
        };
        if !file.metadata().map_err(self.io("stat"))?.is_file() {
            return Err(self.io("open")(std::io::Error::other("not a regular file")));
        }
        let locked = Locked { file };
        let head = self.tail(&locked.file, true)?;
        let (seq, prev) = match &head {
            Some(r) => (r.seq + 1, r.hash.clone()),
            None => (1, GENESIS.to_string()),
        };
        let time = crate::time::now_rfc3339();
        let hash = Record::compute_hash(seq, &time, kind, &data, &prev);
        let rec = Record {
            seq,
            time,
            kind: kind.to_string(),
            data,
            prev,
            hash,
        };
        let mut line = serde_json::to_string(&rec).map_err(|e| self.io("encode")(e.into()))?;
        line.push('\n');
        (&locked.file)
            .write_all(line.as_bytes())
            .map_err(self.io("write"))?;
        locked.file.sync_all().map_err(self.io("fsync"))?;
        if created {
            crate::atomic::fsync_dir(fsx_parent(&self.path)).map_err(self.io("fsync dir of"))?;
        }
        Ok(rec)
    }

    /// The last complete record, cutting off a torn partial line when `repair` (exclusive lock
    /// held). Reads backwards from the end, so the cost does not grow with the file.
    fn tail(&self, file: &std::fs::File, repair: bool) -> Result<Option<Record>, JournalError> {
        let mut len = file.metadata().map_err(self.io("stat"))?.len();
        if len == 0 {
            return Ok(None);
        }
        let end_of_complete = match self.rfind_newline(file, len)? {
            None => 0,
            Some(i) => i + 1,
        };
        if end_of_complete != len {
            if repair {
                eprintln!(
                    "warning: journal {}: removing an incomplete last line (interrupted append)",
                    self.path.display()
                );
                file.set_len(end_of_complete).map_err(self.io("truncate"))?;
                file.sync_all().map_err(self.io("fsync"))?;
            }
            len = end_of_complete;
        }
        if len == 0 {
            return Ok(None);
        }
        let start = match self.rfind_newline(file, len - 1)? {
            None => 0,
            Some(i) => i + 1,
        };
        let mut buf = vec![0u8; (len - 1 - start) as usize];
        file.read_exact_at(&mut buf, start)
            .map_err(self.io("read"))?;
        serde_json::from_slice::<Record>(&buf)
            .map(Some)
            .map_err(|e| JournalError::BadHead {
                path: self.path.clone(),
                reason: e.to_string(),
            })
    }

    /// Offset of the last `\n` strictly before `before`.
    fn rfind_newline(
        &self,
        file: &std::fs::File,
        before: u64,
    ) -> Result<Option<u64>, JournalError> {
        const CHUNK: u64 = 4096;
        let mut end = before;
        let mut buf = vec![0u8; CHUNK as usize];
        while end > 0 {
            let start = end.saturating_sub(CHUNK);
            let n = (end - start) as usize;
            file.read_exact_at(&mut buf[..n], start)
                .map_err(self.io("read"))?;
            if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
                return Ok(Some(start + i as u64));
            }
            end = start;
        }
        Ok(None)
    }

    /// `(seq, hash)` of the last record.
    pub fn head(&self) -> Result<Option<(u64, String)>, JournalError> {
        let Some(file) = self.open_read()? else {
            return Ok(None);
        };
        Ok(self.tail(&file, false)?.map(|r| (r.seq, r.hash)))
    }

    /// Every complete record, in order. Does not check the chain (see [`Journal::verify`]).
    pub fn read_all(&self) -> Result<Vec<Record>, JournalError> {
        let mut out = Vec::new();
        self.scan(|_, r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    /// The complete records in the last `window` bytes of the journal, in order: what a
    /// "recent events" view needs, at a cost that does not grow with the file. A line cut by
    /// the window's start, a torn last line and a line that is not a record are left out; it
    /// is for display and checks nothing (see [`Journal::verify`]).
    pub fn read_recent(&self, window: u64) -> Result<Vec<Record>, JournalError> {
        let Some(file) = self.open_read()? else {
            return Ok(Vec::new());
        };
        let len = file.metadata().map_err(self.io("stat"))?.len();
        let start = len.saturating_sub(window);
        let mut buf = vec![0u8; (len - start) as usize];
        file.read_exact_at(&mut buf, start)
            .map_err(self.io("read"))?;
        let mut body: &[u8] = &buf;
        if start > 0 {
            // The window begins inside a line unless the byte before it is a newline.
            let mut prev = [0u8; 1];
            file.read_exact_at(&mut prev, start - 1)
                .map_err(self.io("read"))?;
            if prev[0] != b'\n' {
                body = match body.iter().position(|&b| b == b'\n') {
                    Some(i) => &body[i + 1..],
                    None => &[],
                };
            }
        }
        let complete = match body.iter().rposition(|&b| b == b'\n') {
            Some(i) => &body[..i],
            None => return Ok(Vec::new()),
        };
        Ok(complete
            .split(|&b| b == b'\n')
            .filter_map(|line| serde_json::from_slice::<Record>(line).ok())
            .collect())
    }

    fn scan(
        &self,
        mut f: impl FnMut(u64, Record) -> Result<(), JournalError>,
    ) -> Result<bool, JournalError> {
        let Some(file) = self.open_read()? else {
            return Ok(false);
        };
        let mut r = std::io::BufReader::new(&file);
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        loop {
            buf.clear();
            let n = (&mut r)
                .take(MAX_RECORD_BYTES + 1)
                .read_until(b'\n', &mut buf)
                .map_err(self.io("read"))?;
            if n == 0 {
                return Ok(false);
            }
            line_no += 1;
            if buf.last() != Some(&b'\n') {
                if n as u64 > MAX_RECORD_BYTES {
                    return Err(JournalError::Broken {
                        path: self.path.clone(),
                        line: line_no,
                        seq: None,
                        reason: BreakReason::BadJson(format!(
                            "line longer than {MAX_RECORD_BYTES} bytes"
                        )),
                    });
                }
                return Ok(true); // torn tail
            }
            let rec: Record =
                serde_json::from_slice(&buf[..n - 1]).map_err(|e| JournalError::Broken {
                    path: self.path.clone(),
                    line: line_no,
                    seq: None,
                    reason: BreakReason::BadJson(e.to_string()),
                })?;
            f(line_no, rec)?;
        }
    }

    /// Check the whole chain; the error names the first broken line.
    pub fn verify(&self) -> Result<VerifyReport, JournalError> {
        let mut records = 0u64;
        let mut head: Option<(u64, String)> = None;
        let path = self.path.clone();
        let torn_tail = self.scan(|line, r| {
            let broken = |reason| JournalError::Broken {
                path: path.clone(),
                line,
                seq: Some(r.seq),
                reason,
            };
            let (expected_seq, expected_prev) = match &head {
                Some((s, h)) => (s + 1, h.as_str()),
                None => (1, GENESIS),
            };
            if r.seq != expected_seq {
                return Err(broken(BreakReason::SeqGap {
                    expected: expected_seq,
                    found: r.seq,
                }));
            }
            if r.prev != expected_prev {
                return Err(broken(BreakReason::PrevMismatch));
            }
            if r.hash != r.expected_hash() {
                return Err(broken(BreakReason::HashMismatch));
            }
            records += 1;
            head = Some((r.seq, r.hash));
            Ok(())
        })?;
        Ok(VerifyReport {
            records,
            head,
            torn_tail,
        })
    }

    /// Follow the journal: [`Follow::poll`] returns records appended since the last call.
    /// `from_start` replays the existing records first.
    pub fn follow(&self, from_start: bool) -> Result<Follow, JournalError> {
        let offset = if from_start {
            0
        } else {
            match fs_err::metadata(&self.path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => return Err(self.io("stat")(e)),
            }
        };
        Ok(Follow {
            path: self.path.clone(),
            offset,
            line: 0,
        })
    }
}

/// A cursor over the journal file that reads only what was appended since the last poll.
#[derive(Debug)]
pub struct Follow {
    path: PathBuf,
    offset: u64,
    line: u64,
}

impl Follow {
    /// New complete records since the last call (none when the file does not exist). A file
    /// that shrank (moved aside and restarted) is read again from its start.
    pub fn poll(&mut self) -> Result<Vec<Record>, JournalError> {
        let io = |op, source| JournalError::Io {
            op,
            path: self.path.clone(),
            source,
        };
        let mut f = match crate::trust::open_untrusted(&self.path) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(Vec::new()),
            Err(crate::trust::TrustError::Io { source, .. }) => return Err(io("open", source)),
            Err(e) => return Err(io("open", std::io::Error::other(e.to_string()))),
        };
        let len = f.metadata().map_err(|e| io("stat", e))?.len();
        if len < self.offset {
            self.offset = 0;
            self.line = 0;
        }
        if len == self.offset {
            return Ok(Vec::new());
        }
        let want = (len - self.offset).min(MAX_POLL_BYTES);
        let mut buf = Vec::with_capacity(want as usize);
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(self.offset))
            .map_err(|e| io("seek", e))?;
        (&mut f)
            .take(want)
            .read_to_end(&mut buf)
            .map_err(|e| io("read", e))?;
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete == 0 && buf.len() as u64 > MAX_RECORD_BYTES {
            return Err(JournalError::Broken {
                path: self.path.clone(),
                line: self.line + 1,
                seq: None,
                reason: BreakReason::BadJson(format!("line longer than {MAX_RECORD_BYTES} bytes")),
            });
        }
        let mut out = Vec::new();
        for raw in buf[..complete].split(|&b| b == b'\n') {
            if raw.is_empty() {
                continue;
            }
            self.line += 1;
            let rec = serde_json::from_slice(raw).map_err(|e| JournalError::Broken {
                path: self.path.clone(),
                line: self.line,
                seq: None,
                reason: BreakReason::BadJson(e.to_string()),
            })?;
            out.push(rec);
        }
        self.offset += complete as u64;
        Ok(out)
    }

    /// Block until at least one new record arrives (polling every `every`) or `stop` says so.
    pub fn wait(
        &mut self,
        every: Duration,
        mut stop: impl FnMut() -> bool,
    ) -> Result<Vec<Record>, JournalError> {
        loop {
            let recs = self.poll()?;
            if !recs.is_empty() || stop() {
                return Ok(recs);
            }
            std::thread::sleep(every);
        }
    }
}

#[cfg(test)]
mod tests;
