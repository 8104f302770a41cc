//! A synchronous D-Bus connection: unix socket, `EXTERNAL` authentication, `Hello`, serials,
//! reply matching and a bounded queue of signals that arrive while we wait for a reply.
//!
//! One caller at a time (`&mut self`); every read is bounded by a deadline, every message by
//! [`crate::wire::MAX_MESSAGE`]. Unix fds are never negotiated.
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::wire::{self, Kind, Message, Value, WireError};

pub const BUS_NAME: &str = "org.freedesktop.DBus";
pub const BUS_PATH: &str = "/org/freedesktop/DBus";
/// Signals kept while waiting for a reply; older ones are dropped first.
const MAX_QUEUED_SIGNALS: usize = 4096;
/// Longest line of the authentication dialogue we accept.
const MAX_AUTH_LINE: usize = 512;

#[derive(Debug, Error)]
pub enum ConnError {
    #[error("unsupported d-bus address '{0}' (expected unix:path=… or unix:abstract=…)")]
    Address(String),
    #[error("{what}: {}", io_text(.source))]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the bus rejected authentication ({0})")]
    Auth(String),
    #[error("timed out waiting for the bus")]
    Timeout,
    #[error("the bus closed the connection")]
    Closed,
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("unexpected reply from the bus: {0}")]
    Protocol(String),
    /// An error reply: its name and (first string argument) message.
    #[error("{name}: {message}")]
    Method { name: String, message: String },
}

impl ConnError {
    /// The D-Bus error name of an error reply.
    pub fn name(&self) -> Option<&str> {
        match self {
            ConnError::Method { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// `No such file or directory (os error 2)` → `no such file or directory`.
fn io_text(e: &io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => "i/o error".into(),
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ConnError {
    let what = what.into();
    move |source| ConnError::Io { what, source }
}

/// Where a D-Bus address points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

/// Parse a D-Bus address (`unix:path=/run/dbus/system_bus_socket`, `unix:abstract=…,guid=…`,
/// several separated by `;`). Other transports are refused.
pub fn parse_address(address: &str) -> Result<Vec<Target>, ConnError> {
    let bad = || ConnError::Address(address.to_owned());
    let mut out = Vec::new();
    for entry in address.split(';').filter(|e| !e.is_empty()) {
        let rest = entry.strip_prefix("unix:").ok_or_else(bad)?;
        let mut target = None;
        for kv in rest.split(',') {
            match kv.split_once('=') {
                Some(("path", v)) => {
                    use std::os::unix::ffi::OsStringExt;
                    let raw = unescape(v).ok_or_else(bad)?;
                    target = Some(Target::Path(std::ffi::OsString::from_vec(raw).into()))
                }
                Some(("abstract", v)) => {
                    target = Some(Target::Abstract(unescape(v).ok_or_else(bad)?))
                }
                Some(_) => {} // guid=…, and keys we do not need
                None => return Err(bad()),
            }
        }
        out.push(target.ok_or_else(bad)?);
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// Undo the address format's `%XX` escapes.
fn unescape(v: &str) -> Option<Vec<u8>> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    (!out.is_empty()).then_some(out)
}

fn connect_target(t: &Target) -> io::Result<UnixStream> {
    match t {
        Target::Path(p) => UnixStream::connect(p),
        Target::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            UnixStream::connect_addr(&addr)
        }
    }
}

/// An authenticated bus connection.
#[derive(Debug)]
pub struct Conn {
    stream: UnixStream,
    rbuf: Vec<u8>,
    serial: u32,
    unique_name: String,
    signals: VecDeque<Message>,
}

impl Conn {
    /// Connect to `address`, authenticate as our effective uid and say `Hello`; each step
    /// (and every later write) is bounded by `timeout`.
    pub fn connect(address: &str, timeout: Duration) -> Result<Conn, ConnError> {
        let mut last = None;
        let mut stream = None;
        for t in parse_address(address)? {
            match connect_target(&t) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(io_err("cannot connect")(e)),
            (None, None) => return Err(ConnError::Address(address.to_owned())),
        };
        Self::handshake(stream, rustix::process::geteuid().as_raw(), timeout)
    }

    /// Authenticate on an already connected socket as `uid`, then `Hello`.
    pub fn handshake(
        mut stream: UnixStream,
        uid: u32,
        timeout: Duration,
    ) -> Result<Conn, ConnError> {
        stream
            .set_write_timeout(Some(timeout))
            .and_then(|()| stream.set_read_timeout(Some(timeout)))
            .map_err(io_err("cannot set socket timeouts"))?;
        authenticate(&mut stream, uid)?;
        let mut conn = Conn {
            stream,
            rbuf: Vec::new(),
            serial: 0,
            unique_name: String::new(),
            signals: VecDeque::new(),
        };
        let reply = conn.call_method(BUS_NAME, BUS_PATH, BUS_NAME, "Hello", vec![], timeout)?;
        conn.unique_name = first_str(&reply, "Hello")?;
        Ok(conn)
    }

    /// Our unique bus name (`:1.42`).
    pub fn unique_name(&self) -> &str {
        &self.unique_name
    }

    fn next_serial(&mut self) -> u32 {
        self.serial = self.serial.wrapping_add(1).max(1);
        self.serial
    }

    /// Send `msg` with a fresh serial; returns the serial.
    pub fn send(&mut self, mut msg: Message) -> Result<u32, ConnError> {
        msg.serial = self.next_serial();
        let bytes = msg.encode()?;
        self.stream.write_all(&bytes).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ConnError::Timeout,
            _ => io_err("cannot write to the bus")(e),
        })?;
        Ok(msg.serial)
    }

    /// Send a method call and wait until `deadline` for its reply. An error reply is
    /// [`ConnError::Method`]; signals that arrive meanwhile are queued for [`Conn::next_signal`].
    pub fn call(&mut self, msg: Message, deadline: Instant) -> Result<Message, ConnError> {
        let serial = self.send(msg)?;
        loop {
            let m = self.read_message(deadline)?;
            match m.kind {
                Kind::Signal => self.queue_signal(m),
                Kind::Return | Kind::Error if m.reply_serial == Some(serial) => {
                    return match m.kind {
                        Kind::Error => Err(method_error(m)),
                        _ => Ok(m),
                    };
                }
                // Late replies to calls we gave up on, and calls to us (we serve nothing).
                _ => {}
            }
        }
    }

    /// [`Conn::call`] for a method, bounded by `timeout`; returns the reply's body.
    pub fn call_method(
        &mut self,
        dest: &str,
        path: &str,
        iface: &str,
        member: &str,
        body: Vec<Value>,
        timeout: Duration,
    ) -> Result<Vec<Value>, ConnError> {
        let msg = Message::call(dest, path, iface, member, body);
        Ok(self.call(msg, Instant::now() + timeout)?.body)
    }

    fn queue_signal(&mut self, m: Message) {
        if self.signals.len() >= MAX_QUEUED_SIGNALS {
            self.signals.pop_front();
        }
        self.signals.push_back(m);
    }

    /// Forget queued signals.
    pub fn clear_signals(&mut self) {
        self.signals.clear();
    }

    /// The next signal (queued first), waiting until `deadline`.
    pub fn next_signal(&mut self, deadline: Instant) -> Result<Message, ConnError> {
        if let Some(m) = self.signals.pop_front() {
            return Ok(m);
        }
        loop {
            let m = self.read_message(deadline)?;
            if m.kind == Kind::Signal {
                return Ok(m);
            }
        }
    }

    /// Read one whole message. A partial message stays buffered across a timeout, so the
    /// stream never loses its framing.
    fn read_message(&mut self, deadline: Instant) -> Result<Message, ConnError> {
        loop {
            if let Some(n) = wire::frame_len(&self.rbuf)? {
                if self.rbuf.len() >= n {
                    let msg = Message::decode(&self.rbuf[..n]);
                    self.rbuf.drain(..n);
                    return Ok(msg?);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConnError::Timeout);
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(io_err("cannot set the socket timeout"))?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ConnError::Closed),
                Ok(k) => self.rbuf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ConnError::Timeout)
                }
                Err(e) => return Err(io_err("cannot read from the bus")(e)),
            }
        }
    }
}

fn method_error(m: Message) -> ConnError {
    let message = m
        .body
        .first()
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    ConnError::Method {
        // check_required guarantees an error message carries its name.
        name: m.error_name.unwrap_or_default(),
        message,
    }
}

/// The first body value as a string (reply of `member`).
pub fn first_str(body: &[Value], member: &str) -> Result<String, ConnError> {
    body.first()
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ConnError::Protocol(format!("{member} did not return a string")))
}

/// `AUTH EXTERNAL <uid as hex-encoded decimal>` → `OK <guid>` → `BEGIN`.
fn authenticate(stream: &mut UnixStream, uid: u32) -> Result<(), ConnError> {
    let hex: String = uid
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    let write = |s: &mut UnixStream, b: &[u8]| {
        s.write_all(b).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ConnError::Timeout,
            _ => io_err("cannot write to the bus")(e),
        })
    };
    write(stream, format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())?;
    let line = read_auth_line(stream)?;
    if !line.starts_with("OK ") {
        return Err(ConnError::Auth(line));
    }
    write(stream, b"BEGIN\r\n")
}

/// One `\r\n`-terminated line, read byte by byte so nothing after it is consumed.
fn read_auth_line(stream: &mut UnixStream) -> Result<String, ConnError> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if line.len() >= MAX_AUTH_LINE {
            return Err(ConnError::Auth("reply line too long".into()));
        }
        match stream.read(&mut byte) {
            Ok(0) => return Err(ConnError::Closed),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ConnError::Timeout)
            }
            Err(e) => return Err(io_err("cannot read from the bus")(e)),
        }
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let p = |s: &str| Target::Path(PathBuf::from(s));
        let ok: &[(&str, Vec<Target>)] = &[
            (
                "unix:path=/run/dbus/system_bus_socket",
                vec![p("/run/dbus/system_bus_socket")],
            ),
            ("unix:path=/tmp/a%20b,guid=123", vec![p("/tmp/a b")]),
            (
                "unix:abstract=/tmp/dbus-x,guid=1;unix:path=/y",
                vec![Target::Abstract(b"/tmp/dbus-x".to_vec()), p("/y")],
            ),
        ];
        for (addr, want) in ok {
            assert_eq!(&parse_address(addr).unwrap(), want, "{addr}");
        }
        for bad in [
            "",
            "bogus",
            "tcp:host=x,port=1",
            "unix:guid=1",
            "unix:path=",
            "unix:path=%zz",
            "unix:path",
        ] {
            assert!(
                matches!(parse_address(bad), Err(ConnError::Address(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn io_errors_read_lowercase() {
        let e = io::Error::from_raw_os_error(2);
        let text = io_err("cannot connect")(e).to_string();
        assert_eq!(text, "cannot connect: no such file or directory");
    }

    fn read_until(s: &mut UnixStream, got: &mut Vec<u8>, end: &[u8]) {
        let mut b = [0u8; 1];
        while !got.ends_with(end) {
            s.read_exact(&mut b).unwrap();
            got.push(b[0]);
        }
    }

    /// A fake bus on a socket pair: checks our auth dialogue and replies to Hello.
    #[test]
    fn handshake_against_a_fake_bus() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut got = Vec::new();
            read_until(&mut theirs, &mut got, b"\r\n");
            theirs
                .write_all(b"OK 0123456789abcdef0123456789abcdef\r\n")
                .unwrap();
            read_until(&mut theirs, &mut got, b"BEGIN\r\n");
            let mut buf = vec![0u8; 4096];
            let n = theirs.read(&mut buf).unwrap();
            let hello = Message::decode(&buf[..n]).unwrap();
            assert_eq!(hello.member.as_deref(), Some("Hello"));
            let mut reply = Message::signal("/", "x.y", "z", vec![Value::Str(":1.7".into())]);
            reply.kind = Kind::Return;
            reply.path = None;
            reply.interface = None;
            reply.member = None;
            reply.serial = 1;
            reply.reply_serial = Some(hello.serial);
            theirs.write_all(&reply.encode().unwrap()).unwrap();
            String::from_utf8(got).unwrap()
        });
        let conn = Conn::handshake(ours, 1000, Duration::from_secs(5)).unwrap();
        assert_eq!(conn.unique_name(), ":1.7");
        let dialogue = server.join().unwrap();
        // "1000" hex-encoded digit by digit.
        assert_eq!(dialogue, "\0AUTH EXTERNAL 31303030\r\nBEGIN\r\n");
    }

    #[test]
    fn auth_rejected_and_silent_bus() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let _ = theirs.read(&mut buf);
            theirs.write_all(b"REJECTED EXTERNAL\r\n").unwrap();
            theirs
        });
        let err = Conn::handshake(ours, 0, Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(&err, ConnError::Auth(l) if l == "REJECTED EXTERNAL"),
            "{err:?}"
        );
        drop(t.join());

        let (ours, _theirs) = UnixStream::pair().unwrap();
        let t0 = Instant::now();
        let err = Conn::handshake(ours, 0, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, ConnError::Timeout), "{err:?}");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
