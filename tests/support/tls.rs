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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

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

/// A running `outpost-hub serve` over HTTPS with the CA's server certificate, serving
/// `releases`; killed on drop (see [`super::hub::Hub`]).
pub type Hub = super::hub::Hub;

impl super::hub::Hub {
    /// Serve `releases` (read on every request) over HTTPS on a free port of 127.0.0.1.
    pub fn start_tls(ca: &TestCa, releases: &Path) -> Hub {
        let name = releases
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let hub = super::hub::Hub::start_with(
            &format!("tls-{name}"),
            30,
            Some(releases),
            Some((ca.server_cert.clone(), ca.server_key.clone())),
        );
        assert!(
            hub.url.starts_with("https://127.0.0.1:"),
            "unexpected hub URL {}",
            hub.url
        );
        hub
    }
}
