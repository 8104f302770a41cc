//! HTTPS for the release tests: a throwaway CA and a server certificate for 127.0.0.1 and
//! localhost (made with the `openssl` CLI), and a real `outpost-hub serve` process serving a
//! release directory over TLS. The hub is killed on drop.
//!
//! ```ignore
//! let ca = support::tls::TestCa::new("rel");
//! let hub = support::tls::Hub::start(&ca, &release_dir);
//! // hub.url == "https://127.0.0.1:PORT"; trust ca.cert_pem() in the client.
//! ```
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running openssl {args:?}: {e} (apt-get install openssl)"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway CA plus one server certificate (SAN 127.0.0.1, ::1, localhost).
pub struct TestCa {
    pub dir: PathBuf,
    /// CA certificate (PEM): what clients must trust.
    pub ca_cert: PathBuf,
    /// Server certificate chain (leaf then CA, PEM) and its key, for `--tls-cert/--tls-key`.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir =
            std::env::temp_dir().join(format!("outpost-e2e-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=outpost e2e test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        std::fs::write(
            dir.join("server.ext"),
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n",
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "leaf.crt",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        let chain = std::fs::read_to_string(dir.join("leaf.crt")).unwrap()
            + &std::fs::read_to_string(dir.join("ca.crt")).unwrap();
        std::fs::write(dir.join("server.crt"), chain).unwrap();
        TestCa {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            dir,
        }
    }

    /// Trust this CA system-wide inside a testbed container (curl, and anything reading the
    /// Debian CA bundle).
    pub fn trust_in(&self, c: &super::Container) {
        c.cp_in(
            &self.ca_cert,
            "/usr/local/share/ca-certificates/outpost-test.crt",
        );
        c.must_sh(
            "update-ca-certificates >/dev/null 2>&1 && test -s /etc/ssl/certs/ca-certificates.crt",
        );
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static HUB_BIN: OnceLock<PathBuf> = OnceLock::new();
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// The `outpost-hub` binary: `OUTPOST_E2E_HUB_BIN`, else the workspace's debug build (built
/// with `cargo build -p outpost-hub` when missing).
pub fn hub_bin() -> PathBuf {
    HUB_BIN
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("OUTPOST_E2E_HUB_BIN") {
                return PathBuf::from(p);
            }
            let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let target_dir = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo().join("target"));
            let bin = target_dir.join("debug/outpost-hub");
            if !bin.is_file() {
                let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
                let out = Command::new(cargo)
                    .args([
                        "build",
                        "--locked",
                        "-p",
                        "outpost-hub",
                        "--bin",
                        "outpost-hub",
                    ])
                    .current_dir(repo())
                    .output()
                    .expect("run cargo build -p outpost-hub");
                assert!(
                    out.status.success(),
                    "cargo build -p outpost-hub failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(bin.is_file(), "{} missing after the build", bin.display());
            bin
        })
        .clone()
}

/// A running `outpost-hub serve` over HTTPS; killed on drop.
pub struct Hub {
    child: Child,
    pub url: String,
    pub releases: PathBuf,
    db_dir: PathBuf,
    log: std::sync::Arc<Mutex<String>>,
}

impl Hub {
    /// Serve `releases` (an existing directory, read on every request) over HTTPS with the
    /// CA's server certificate, on a free port of 127.0.0.1.
    pub fn start(ca: &TestCa, releases: &Path) -> Hub {
        let db_dir = tempfile::Builder::new()
            .prefix("outpost-e2e-hubdb-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let mut child = Command::new(hub_bin())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--db")
            .arg(db_dir.join("hub.db"))
            .arg("--releases")
            .arg(releases)
            .arg("--tls-cert")
            .arg(&ca.server_cert)
            .arg("--tls-key")
            .arg(&ca.server_key)
            .env(
                "OUTPOST_HUB_ADMIN_TOKEN",
                "e2e-release-admin-token-0123456789",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", hub_bin().display()));
        let log = std::sync::Arc::new(Mutex::new(String::new()));
        {
            let log = log.clone();
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
        }
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(url) = line.strip_prefix("outpost-hub listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "outpost-hub did not print its address within 30 s:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        assert!(
            url.starts_with("https://127.0.0.1:"),
            "unexpected hub URL {url}"
        );
        Hub {
            child,
            url,
            releases: releases.to_path_buf(),
            db_dir,
            log,
        }
    }

    /// What the hub wrote on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.db_dir);
    }
}
