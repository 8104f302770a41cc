//! A minimal HTTP/1.1 server on 127.0.0.1 for stand-ins of third-party hosts (GitHub): one
//! thread, one request per connection, GET paths answered by a handler. Shared by the root
//! e2e suites (`tests/support/github.rs`) and `packaging/tests/github.rs` (included there by
//! path, so both test crates use one implementation).
#![allow(dead_code)]
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};

/// A handler's answer to one request path.
pub enum Reply {
    Ok(Vec<u8>),
    /// 302 to this absolute URL.
    Found(String),
    NotFound,
}

/// Serve on a free loopback port; returns the origin (`http://127.0.0.1:PORT`). Every request
/// path is appended to `log`. The handler gets the path and the origin.
pub fn serve(
    log: Arc<Mutex<Vec<String>>>,
    handler: impl Fn(&str, &str) -> Reply + Send + 'static,
) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let origin = format!("http://{}", listener.local_addr().expect("local addr"));
    let here = origin.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(s) = stream else { continue };
            let _ = answer(s, &here, &log, &handler);
        }
    });
    origin
}

fn answer(
    mut s: std::net::TcpStream,
    origin: &str,
    log: &Mutex<Vec<String>>,
    handler: &impl Fn(&str, &str) -> Reply,
) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    log.lock().expect("log lock").push(path.clone());
    let resp = match handler(&path, origin) {
        Reply::Ok(body) => {
            let mut v = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            v.extend(body);
            v
        }
        Reply::Found(to) => format!(
            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .into_bytes(),
        Reply::NotFound => {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nNot Found"
                .to_vec()
        }
    };
    s.write_all(&resp)?;
    s.flush()?;
    s.shutdown(std::net::Shutdown::Write)?;
    r.read_to_end(&mut Vec::new())?;
    Ok(())
}

/// A path segment that cannot leave its directory.
pub fn safe_segment(p: &str) -> bool {
    !p.is_empty() && p != "." && p != ".." && !p.contains('\\')
}
