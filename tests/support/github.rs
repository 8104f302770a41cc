//! A github.com stand-in on 127.0.0.1 serving a release root (as `outpost-release publish`
//! writes it) the way GitHub Releases would, for repository `o/r` (docs/RELEASES.md):
//! `/o/r/releases/download/vV/NAME` is the asset NAME of release vV (`vV/NAME`, or a root file
//! uploaded with that release: `manifest.json`, `install.sh`, `channel-C` = `channels/C`);
//! `/o/r/releases/latest/download/NAME` answers 302 to the release the stable channel names,
//! as GitHub does for the release marked *Latest*. Every request path is logged.
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub struct GitHub {
    /// Base URL (`OUTPOST_GITHUB_URL`), like `http://127.0.0.1:PORT`.
    pub url: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl GitHub {
    pub fn serve(root: &Path) -> GitHub {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let (root, here, seen) = (root.to_path_buf(), url.clone(), Arc::clone(&log));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(s) = stream else { continue };
                let _ = answer(s, &root, &here, &seen);
            }
        });
        GitHub { url, log }
    }

    /// The request paths so far.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn answer(
    mut s: std::net::TcpStream,
    root: &Path,
    here: &str,
    log: &Mutex<Vec<String>>,
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
    log.lock().unwrap().push(path.clone());
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let safe = |p: &str| !p.is_empty() && p != "." && p != ".." && !p.contains('\\');
    let resp = match parts.as_slice() {
        ["o", "r", "releases", "latest", "download", name] if safe(name) => {
            match std::fs::read_to_string(root.join("channels/stable")) {
                Ok(v) => format!(
                    "HTTP/1.1 302 Found\r\nLocation: {here}/o/r/releases/download/v{}/{name}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    v.trim()
                )
                .into_bytes(),
                Err(_) => not_found(),
            }
        }
        ["o", "r", "releases", "download", tag, name] if safe(tag) && safe(name) => {
            match std::fs::read(asset(root, tag, name)) {
                Ok(b) => {
                    let mut v = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        b.len()
                    )
                    .into_bytes();
                    v.extend(b);
                    v
                }
                Err(_) => not_found(),
            }
        }
        _ => not_found(),
    };
    s.write_all(&resp)?;
    s.flush()?;
    s.shutdown(std::net::Shutdown::Write)?;
    r.read_to_end(&mut Vec::new())?;
    Ok(())
}

/// The file behind asset `name` of release `tag`.
fn asset(root: &Path, tag: &str, name: &str) -> PathBuf {
    let own = root.join(tag).join(name);
    if own.is_file() {
        return own;
    }
    match name.strip_prefix("channel-") {
        Some(channel) => root.join("channels").join(channel),
        None => root.join(name),
    }
}

fn not_found() -> Vec<u8> {
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nNot Found".to_vec()
}
