//! A real `outpost-hub` on host loopback (plain HTTP) for the agent suites: start, stop,
//! start again on the same port and database, and its admin CLI.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

pub const ADMIN_TOKEN: &str = "e2e-hub-admin-token-0123456789abcdef";

pub struct Hub {
    child: Option<Child>,
    pub url: String,
    port: u16,
    dir: PathBuf,
    interval: u64,
    /// Release root it serves.
    pub releases: PathBuf,
    /// (certificate chain, key) when serving https.
    tls: Option<(PathBuf, PathBuf)>,
    pub log: Arc<Mutex<String>>,
    /// Wall-clock time just before the hub process was last spawned: no request can have
    /// been served before it.
    pub spawned_at: std::time::SystemTime,
    /// More `serve` flags (`--run-lease 5`, …).
    pub extra: Vec<String>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

impl Hub {
    /// Start a hub with heartbeat interval `interval` seconds and an empty release dir.
    pub fn start(name: &str, interval: u64) -> Hub {
        Hub::start_with(name, interval, None, None)
    }

    /// A hub serving `releases` (default: an empty dir), over https with `tls` = (cert, key).
    pub fn start_with(
        name: &str,
        interval: u64,
        releases: Option<&std::path::Path>,
        tls: Option<(PathBuf, PathBuf)>,
    ) -> Hub {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("outpost-e2e-hub-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("releases")).unwrap();
        let port = free_port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let releases = releases
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| dir.join("releases"));
        let mut hub = Hub {
            child: None,
            url: format!("{scheme}://127.0.0.1:{port}"),
            port,
            dir,
            interval,
            releases,
            tls,
            log: Default::default(),
            spawned_at: std::time::UNIX_EPOCH,
            extra: Vec::new(),
        };
        hub.start_again();
        hub
    }

    /// A plain-HTTP hub with more `serve` flags.
    pub fn start_args(name: &str, interval: u64, extra: &[&str]) -> Hub {
        let mut hub = Hub::start(name, interval);
        hub.stop();
        hub.extra = extra.iter().map(|s| s.to_string()).collect();
        hub.start_again();
        hub
    }

    /// `host:port` the hub listens on.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the hub wrote on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// (Re)start on the same port and database.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "hub already running");
        self.spawned_at = std::time::SystemTime::now();
        let mut cmd = Command::new(super::tls::hub_bin());
        cmd.arg("serve");
        if let Some((cert, key)) = &self.tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        let mut child = cmd
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--db")
            .arg(self.dir.join("hub.db"))
            .arg("--releases")
            .arg(&self.releases)
            .args(["--heartbeat-interval", &self.interval.to_string()])
            .args(&self.extra)
            .env("OUTPOST_HUB_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start outpost-hub");
        let log = self.log.clone();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("outpost-hub listening on ") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!("outpost-hub did not start:\n{}", self.log.lock().unwrap());
        }
        self.child = Some(child);
    }

    /// Stop the hub (SIGTERM, then wait).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// Run the hub's admin CLI against this hub.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(super::tls::hub_bin())
            .args(args)
            .env("OUTPOST_HUB_URL", &self.url)
            .env("OUTPOST_HUB_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .expect("run outpost-hub")
    }

    /// Mint a key; returns the key only.
    pub fn mint_key(&self) -> String {
        let o = self.cli(&["keys", "create", "--ttl", "1h", "--hub", &self.url]);
        assert!(
            o.status.success(),
            "keys create: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        text.split(|c: char| c.is_whitespace() || c == '=' || c == ';')
            .find(|w| w.starts_with("opk_"))
            .unwrap_or_else(|| panic!("no key in: {text}"))
            .to_string()
    }

    pub fn agents(&self) -> Vec<serde_json::Value> {
        let o = self.cli(&["agents", "--json", "--hub", &self.url]);
        assert!(
            o.status.success(),
            "agents: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
    }

    pub fn revoke(&self, id: &str) {
        let o = self.cli(&["revoke", id, "--hub", &self.url]);
        assert!(
            o.status.success(),
            "revoke: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Wait until `pred` holds for the agent list (bounded); returns the list.
    pub fn wait_agents(
        &self,
        secs: u64,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Option<Vec<serde_json::Value>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let a = self.agents();
            if pred(&a) {
                return Some(a);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
