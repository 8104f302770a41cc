//! Test harness: a real `outpost-hub` process on 127.0.0.1 with an ephemeral port, a real
//! SQLite file in a tempdir, and a small blocking HTTP client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

pub const ADMIN: &str = "test-admin-token-0123456789abcdef";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_outpost-hub")
}

/// A running hub; killed on drop.
pub struct Hub {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub addr: String,
    child: Option<Child>,
    http: ureq::Agent,
    extra: Vec<String>,
}

impl Hub {
    /// Starts a hub with a fresh database and release directory.
    pub fn start() -> Hub {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("releases")).unwrap();
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        let mut h = Hub {
            dir,
            url: String::new(),
            addr: String::new(),
            child: None,
            http,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        h.spawn();
        h
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("hub.db")
    }

    pub fn releases(&self) -> PathBuf {
        self.dir.path().join("releases")
    }

    fn spawn(&mut self) {
        let mut child = Command::new(bin())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--db"])
            .arg(self.db())
            .arg("--releases")
            .arg(self.releases())
            .args(&self.extra)
            .env("OUTPOST_HUB_ADMIN_TOKEN", ADMIN)
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("HUB_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("outpost-hub listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from the hub: {line:?}"))
            .to_string();
        self.addr = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string();
        self.url = url;
        self.child = Some(child);
    }

    /// Stops the hub with SIGTERM (graceful: final flush) and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let st = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status()
                .unwrap();
            assert!(st.success());
            let status = c.wait().unwrap();
            assert!(status.success(), "hub exited with {status}");
        }
    }

    /// Kills the hub with SIGKILL (a crash) and waits.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Starts the hub again on the same database (new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }

    /// Sends a request; returns status and JSON body (Null when empty, String when not JSON).
    pub fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let auth = token.map(|t| format!("Bearer {t}"));
        let r = match method {
            "GET" | "DELETE" | "HEAD" => {
                let mut rb = match method {
                    "GET" => self.http.get(&url),
                    "HEAD" => self.http.head(&url),
                    _ => self.http.delete(&url),
                };
                if let Some(a) = &auth {
                    rb = rb.header("authorization", a);
                }
                rb.call()
            }
            _ => {
                let mut rb = match method {
                    "POST" => self.http.post(&url),
                    "PUT" => self.http.put(&url),
                    _ => self.http.patch(&url),
                };
                if let Some(a) = &auth {
                    rb = rb.header("authorization", a);
                }
                rb = rb.header("content-type", "application/json");
                rb.send(body.map(|b| b.to_string()).unwrap_or_default())
            }
        };
        let mut r = r.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    pub fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.req(method, path, Some(ADMIN), body)
    }

    /// Mints a key; returns its secret.
    pub fn mint(&self, ttl_secs: u64) -> String {
        let (s, v) = self.admin("POST", "/api/v1/keys", Some(&json!({"ttl_secs": ttl_secs})));
        assert_eq!(s, 201, "{v}");
        v["key"].as_str().unwrap().to_string()
    }

    pub fn enroll(&self, key: &str, hostname: &str) -> (u16, Value) {
        let facts = json!({"hostname": hostname, "machine_id": "m-1", "distro": "debian 12",
                           "arch": "x86_64", "version": "1.2.0", "mode": "system"});
        self.req(
            "POST",
            "/api/v1/enroll",
            None,
            Some(&json!({"key": key, "facts": facts})),
        )
    }

    /// Mints a key and enrolls `hostname`; returns (agent id, token).
    pub fn new_agent(&self, hostname: &str) -> (String, String) {
        let key = self.mint(3600);
        let (s, v) = self.enroll(&key, hostname);
        assert_eq!(s, 201, "{v}");
        (
            v["agent_id"].as_str().unwrap().into(),
            v["token"].as_str().unwrap().into(),
        )
    }

    pub fn heartbeat(&self, id: &str, token: &str, seq: u64, hash: &str) -> (u16, Value) {
        self.req(
            "POST",
            "/api/v1/heartbeat",
            Some(token),
            Some(&heartbeat_body(id, seq, hash)),
        )
    }

    /// A raw HTTP/1.1 GET with the path sent byte for byte (no client-side normalisation).
    pub fn raw_get(&self, path: &str) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&buf[..split]).to_string();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head, buf[split + 4..].to_vec())
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn heartbeat_body(id: &str, seq: u64, hash: &str) -> Value {
    json!({
        "agent_id": id, "version": "1.2.0", "distro": "debian 12", "kernel": "6.1.0-test",
        "arch": "x86_64", "uptime_secs": 1234, "mode": "system",
        "capabilities": {"cpus": 2, "mem_total_bytes": 1, "mem_available_bytes": 1,
                         "disk_free_bytes": 1, "docker_version": null},
        "journal_head": {"seq": seq, "hash": hash},
        "last_upgrade": null
    })
}

/// `target/` of this build (the binary lives in target/<profile>/).
pub fn target_dir() -> PathBuf {
    Path::new(bin())
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}
