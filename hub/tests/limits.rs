//! Connection-level limits against a real hub process: a flood of idle connections is
//! capped and timed out while an enrolled agent keeps heartbeating, and slow request heads
//! and bodies are cut off. Loopback only.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{heartbeat_body, Hub, Raw};

/// Raises this process's open-file limit to at least `want` (the hub child inherits it);
/// the hard limit too when needed (root may).
fn raise_nofile(want: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current.is_some_and(|c| c >= want) {
        return;
    }
    lim.current = Some(want);
    if lim.maximum.is_some_and(|m| m < want) {
        lim.maximum = Some(want);
    }
    if let Err(e) = setrlimit(Resource::Nofile, lim) {
        panic!(
            "cannot raise the open file limit to {want} ({e}): run as root or raise `ulimit -Hn`"
        );
    }
}

/// A heartbeat over a new connection, by hand (so it cannot reuse a pooled one).
fn fresh_heartbeat(hub: &Hub, id: &str, token: &str, seq: u64) -> Result<u16, String> {
    let body = heartbeat_body(id, seq, "h").to_string();
    let mut s = TcpStream::connect_timeout(&hub.addr.parse().unwrap(), Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /api/v1/heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    if buf.is_empty() {
        return Err("closed without an answer".into());
    }
    Ok(Raw::parse(&buf).status)
}

/// Whether the hub closed `s` (EOF or reset); false while it is still open.
fn closed_by_peer(mut s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

#[test]
fn idle_connection_flood_is_capped_and_agents_keep_heartbeating() {
    const FLOOD: usize = 5000;
    const CAP: usize = 1024;
    raise_nofile(FLOOD as u64 + 2048);
    let hub = Hub::start_with(&["--max-connections", "1024", "--request-timeout", "3"]);
    let (id, token) = hub.new_agent("survivor");
    assert_eq!(fresh_heartbeat(&hub, &id, &token, 1), Ok(200));

    let t0 = Instant::now();
    let mut flood = Vec::with_capacity(FLOOD);
    let mut refused = 0;
    let mut during = Vec::new();
    for i in 0..FLOOD {
        match TcpStream::connect_timeout(&hub.addr.parse().unwrap(), Duration::from_secs(2)) {
            Ok(s) => flood.push(s),
            Err(_) => refused += 1,
        }
        // The agent heartbeats in the middle of the flood, over new connections.
        if i % 1000 == 999 {
            during.push(fresh_heartbeat(&hub, &id, &token, 2 + i as u64));
        }
    }
    let opened = t0.elapsed();
    for _ in 0..3 {
        during.push(fresh_heartbeat(&hub, &id, &token, 9000));
    }
    assert!(
        during.iter().all(|r| *r == Ok(200)),
        "heartbeats during the flood: {during:?}"
    );
    // The cap holds: at most CAP connections are still open, the rest were closed at once.
    std::thread::sleep(Duration::from_millis(300));
    let open_now = flood.iter().filter(|s| !closed_by_peer(s)).count();
    eprintln!(
        "flood: {} connected, {refused} refused, opened in {opened:?}, {open_now} still open",
        flood.len()
    );
    assert!(open_now <= CAP, "{open_now} connections open, cap {CAP}");
    assert!(
        open_now + refused < FLOOD,
        "nothing was closed by the cap ({open_now} open, {refused} refused)"
    );
    // The request timeout closes the rest: idle connections never sent a request head.
    let deadline = Instant::now() + Duration::from_secs(3 + 5);
    let mut left = open_now;
    while left > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        left = flood.iter().filter(|s| !closed_by_peer(s)).count();
    }
    assert_eq!(
        left, 0,
        "idle connections still open after the request timeout"
    );
    // And the hub is fine afterwards.
    assert_eq!(fresh_heartbeat(&hub, &id, &token, 9001), Ok(200));
    let (s, v) = hub.req("GET", "/healthz", None, None);
    assert_eq!((s, v["ok"].as_bool()), (200, Some(true)));
}

/// Sends a heartbeat's head and the first half of its body: the request is in flight.
fn start_heartbeat(hub: &Hub, id: &str, token: &str) -> (TcpStream, String) {
    let body = heartbeat_body(id, 7, "k").to_string();
    let mut s = TcpStream::connect(&hub.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /api/v1/heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..body.len() / 2]
    )
    .unwrap();
    (s, body[body.len() / 2..].to_string())
}

/// Reads one response (head, then exactly Content-Length bytes) from a keep-alive stream.
fn read_response(s: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "closed mid-response");
        head.push(b[0]);
    }
    let r = Raw::parse(&head);
    let len: usize = r.header("content-length").unwrap().parse().unwrap();
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).unwrap();
    r.status
}

fn keepalive_heartbeat(s: &mut TcpStream, id: &str, token: &str, seq: u64) -> u16 {
    let body = heartbeat_body(id, seq, "k").to_string();
    write!(
        s,
        "POST /api/v1/heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_response(s)
}

fn wait_closed(s: &TcpStream) -> bool {
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if closed_by_peer(s) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_full_cap_closes_new_then_idle_connections_never_busy_ones() {
    let hub = Hub::start_with(&["--max-connections", "4", "--request-timeout", "5"]);
    let (id, token) = hub.new_agent("keepalive");
    // The harness's pooled client connection is idle keep-alive: it may be pushed out.
    // c1: idle keep-alive (one heartbeat answered). c2, c3: a heartbeat in flight.
    let mut c1 = TcpStream::connect(&hub.addr).unwrap();
    c1.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(keepalive_heartbeat(&mut c1, &id, &token, 1), 200);
    let (mut c2, rest2) = start_heartbeat(&hub, &id, &token);
    let (mut c3, rest3) = start_heartbeat(&hub, &id, &token);
    std::thread::sleep(Duration::from_millis(200));
    // c4 never sends anything; c5 then takes its place (it is the oldest never-served one
    // once the harness's connection is gone), c6 takes c1's (idle keep-alive).
    let c4 = TcpStream::connect(&hub.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut c5 = TcpStream::connect(&hub.addr).unwrap();
    c5.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(
        wait_closed(&c4),
        "the never-served connection was not closed"
    );
    assert_eq!(keepalive_heartbeat(&mut c5, &id, &token, 2), 200);
    let (mut c6, rest6) = start_heartbeat(&hub, &id, &token);
    assert!(
        wait_closed(&c1),
        "the idle keep-alive connection was not closed"
    );
    // c5 busy too: now all four (c2, c3, c5, c6) have a request in flight.
    let (mut c5b, rest5) = (c5.try_clone().unwrap(), {
        let body = heartbeat_body(&id, 8, "k").to_string();
        write!(
            c5,
            "POST /api/v1/heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            &body[..body.len() / 2]
        )
        .unwrap();
        body[body.len() / 2..].to_string()
    });
    std::thread::sleep(Duration::from_millis(200));
    // A new connection is closed at once, without an answer.
    let mut extra = TcpStream::connect(&hub.addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = Vec::new();
    let _ = extra.read_to_end(&mut buf);
    assert!(
        buf.is_empty(),
        "over the cap: {:?}",
        String::from_utf8_lossy(&buf)
    );
    // Every request in flight completes.
    for (s, rest) in [
        (&mut c2, rest2),
        (&mut c3, rest3),
        (&mut c6, rest6),
        (&mut c5b, rest5),
    ] {
        s.write_all(rest.as_bytes()).unwrap();
        assert_eq!(read_response(s), 200);
    }
}

#[test]
fn slow_heads_and_bodies_are_cut_off() {
    let hub = Hub::start_with(&["--request-timeout", "2"]);
    let (id, token) = hub.new_agent("slow");
    // A head that never ends: the connection is closed after the timeout.
    let t0 = Instant::now();
    let mut s = TcpStream::connect(&hub.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /api/v1/heartbeat HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "head timeout after {took:?}"
    );
    // A body that stops halfway: 408 after the timeout.
    let body = heartbeat_body(&id, 1, "x").to_string();
    let t0 = Instant::now();
    let mut s = TcpStream::connect(&hub.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /api/v1/heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..body.len() / 2]
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let took = t0.elapsed();
    let r = Raw::parse(&buf);
    assert_eq!(r.status, 408, "{}", r.head);
    assert_eq!(r.json()["error"], "request_timeout");
    assert!(took < Duration::from_secs(6), "body timeout after {took:?}");
    // An idle keep-alive connection is closed after the timeout too.
    let mut s = TcpStream::connect(&hub.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let t0 = Instant::now();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let took = t0.elapsed();
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "idle keep-alive closed after {took:?}"
    );
    assert_eq!(hub.heartbeat(&id, &token, 2, "y").0, 200);
}

#[test]
fn chunked_bodies_over_the_limit_are_413() {
    let hub = Hub::start();
    let (id, token) = hub.new_agent("chunky");
    // No Content-Length: the limit is enforced while reading.
    let mut s = TcpStream::connect(&hub.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /api/v1/heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let chunk = "x".repeat(8192);
    // One chunk past the heartbeat cap (512 KiB).
    let chunks = outpost_hub::limits::HEARTBEAT_BODY / chunk.len() + 1;
    assert_eq!(outpost_hub::limits::HEARTBEAT_BODY, 512 * 1024);
    for _ in 0..chunks {
        if write!(s, "{:x}\r\n{chunk}\r\n", chunk.len()).is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let r = Raw::parse(&buf);
    assert_eq!(r.status, 413, "{}", r.head);
    assert_eq!(r.json()["error"], "payload_too_large");
    assert_eq!(hub.heartbeat(&id, &token, 1, "a").0, 200);
}
