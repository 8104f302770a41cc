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
        self.enroll_nonce(key, None, hostname)
    }

    /// Enrolls with an idempotency nonce.
    pub fn enroll_nonce(&self, key: &str, nonce: Option<&str>, hostname: &str) -> (u16, Value) {
        let facts = json!({"hostname": hostname, "machine_id": "m-1", "distro": "debian 12",
                           "arch": "x86_64", "version": "1.2.0", "mode": "system"});
        let mut body = json!({"key": key, "facts": facts});
        if let Some(n) = nonce {
            body["nonce"] = json!(n);
        }
        self.req("POST", "/api/v1/enroll", None, Some(&body))
    }

    /// Logs in through the form like a browser would (pre-session cookie, CSRF token,
    /// Origin); returns the session cookie's value.
    pub fn login(&self) -> String {
        let page = self.raw("GET", "/login", &[], b"");
        assert_eq!(page.status, 200, "{}", page.head);
        let (pre, _) = page.cookie("outpost_login").expect("login cookie");
        let csrf = csrf_of(&page.text());
        let origin = self.url.clone();
        let cookie = format!("outpost_login={pre}");
        let body = format!("csrf={csrf}&token={ADMIN}");
        let r = self.raw(
            "POST",
            "/login",
            &[
                ("Origin", &origin),
                ("Cookie", &cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            body.as_bytes(),
        );
        assert_eq!(r.status, 303, "{}\n{}", r.head, r.text());
        r.cookie("outpost_session").expect("session cookie").0
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
        let r = self.raw("GET", path, &[("Host", "x")], b"");
        (r.status, r.head, r.body)
    }

    /// A raw HTTP/1.1 request on a new connection (`Connection: close`; `Content-Length`
    /// added for a non-empty body). No redirects are followed.
    pub fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Raw {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        // The hub may refuse early (413) and close while a large body is still going out.
        let _ = s.write_all(&bytes);
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        Raw::parse(&buf)
    }
}

/// A raw HTTP response.
#[derive(Debug, Clone)]
pub struct Raw {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn parse(buf: &[u8]) -> Raw {
        let split = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
        let head = String::from_utf8_lossy(&buf[..split]).to_string();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        Raw {
            status,
            head,
            body: buf[split + 4..].to_vec(),
        }
    }

    /// Every value of header `name`.
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The value `name` is set to by a `Set-Cookie` header, with that header's attributes.
    pub fn cookie(&self, name: &str) -> Option<(String, String)> {
        self.headers("set-cookie").into_iter().find_map(|c| {
            let (kv, attrs) = c.split_once(';').unwrap_or((c.as_str(), ""));
            let (k, v) = kv.split_once('=')?;
            (k.trim() == name).then(|| (v.trim().to_string(), attrs.trim().to_string()))
        })
    }
}

/// The value of the hidden `csrf` field in a page.
pub fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field in {html}"));
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
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

/// A pack advert with one action; `sha` is a hex digit repeated to 64.
pub fn pack(name: &str, version: &str, sha: char) -> Value {
    json!({
        "name": name, "version": version, "sha256": sha.to_string().repeat(64),
        "actions": [{"id": "restart", "description": format!("restart {name}"),
                     "params": [{"name": "unit", "type": "string", "required": true}],
                     "idempotent": true, "privileged": false}]
    })
}

impl Hub {
    /// A heartbeat carrying `packs` (a JSON array, or null).
    pub fn heartbeat_packs(&self, id: &str, token: &str, packs: Value) -> (u16, Value) {
        let mut body = heartbeat_body(id, 1, "a");
        body["packs"] = packs;
        self.req("POST", "/api/v1/heartbeat", Some(token), Some(&body))
    }
}
