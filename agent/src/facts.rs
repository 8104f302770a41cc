//! Host facts sent at enrollment and in every heartbeat. Collection never fails: a fact that
//! cannot be read is empty/zero/null. The parsers are pure and tested on fixture strings.
use serde::Serialize;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// Where Docker listens by default.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Facts {
    pub hostname: String,
    pub machine_id: String,
    /// `ID VERSION_ID` from os-release (`debian 12`), the form the hub shows.
    pub distro: String,
    /// `PRETTY_NAME` from os-release (`Debian GNU/Linux 12 (bookworm)`).
    pub distro_pretty: String,
    pub kernel: String,
    pub arch: String,
    pub uptime_secs: u64,
    pub cpus: u64,
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    /// Free bytes (for unprivileged users) on the filesystem of the state directory.
    pub disk_free_bytes: u64,
    pub docker_version: Option<String>,
}

impl Facts {
    /// Read the facts of this host. `state_dir` is the filesystem whose free space is reported.
    pub fn collect(state_dir: &Path) -> Facts {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let os = parse_os_release(&{
            let t = read("/etc/os-release");
            if t.is_empty() {
                read("/usr/lib/os-release")
            } else {
                t
            }
        });
        let uname = rustix::system::uname();
        let mem = parse_meminfo(&read("/proc/meminfo"));
        Facts {
            hostname: uname.nodename().to_string_lossy().into_owned(),
            machine_id: read("/etc/machine-id").trim().to_string(),
            distro: os.short,
            distro_pretty: os.pretty,
            kernel: uname.release().to_string_lossy().into_owned(),
            arch: std::env::consts::ARCH.to_string(),
            uptime_secs: parse_uptime(&read("/proc/uptime")).unwrap_or(0),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get() as u64),
            mem_total_bytes: mem.total,
            mem_available_bytes: mem.available,
            disk_free_bytes: disk_free(state_dir).unwrap_or(0),
            docker_version: docker_version(Path::new(DOCKER_SOCKET), Duration::from_secs(1)),
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct OsRelease {
    pub short: String,
    pub pretty: String,
}

/// os-release(5): `KEY=value` lines, values optionally quoted with shell-style escapes.
pub fn parse_os_release(text: &str) -> OsRelease {
    let mut id = String::new();
    let mut version = String::new();
    let mut pretty = String::new();
    let mut name = String::new();
    for line in text.lines() {
        let Some((k, v)) = outpost_core::kv::assignment(line) else {
            continue;
        };
        match k {
            "ID" => id = v,
            "VERSION_ID" => version = v,
            "PRETTY_NAME" => pretty = v,
            "NAME" => name = v,
            _ => {}
        }
    }
    if id.is_empty() {
        id = "linux".into(); // os-release(5): ID defaults to "linux"
    }
    let short = if version.is_empty() {
        id
    } else {
        format!("{id} {version}")
    };
    if pretty.is_empty() {
        pretty = if name.is_empty() { short.clone() } else { name };
    }
    OsRelease { short, pretty }
}

/// First field of /proc/uptime, whole seconds.
pub fn parse_uptime(text: &str) -> Option<u64> {
    let secs: f64 = text.split_ascii_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some(secs as u64)
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub available: u64,
}

/// `MemTotal` and `MemAvailable` (kB) from /proc/meminfo, in bytes. Kernels before 3.14 lack
/// `MemAvailable`; then it is `MemFree + Buffers + Cached`.
pub fn parse_meminfo(text: &str) -> MemInfo {
    let mut total = None;
    let mut avail = None;
    let mut fallback = 0u64;
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(kb) = v.parse::<u64>() else { continue };
        let bytes = kb.saturating_mul(1024);
        match k {
            "MemTotal:" => total = Some(bytes),
            "MemAvailable:" => avail = Some(bytes),
            "MemFree:" | "Buffers:" | "Cached:" => fallback = fallback.saturating_add(bytes),
            _ => {}
        }
    }
    MemInfo {
        total: total.unwrap_or(0),
        available: avail.unwrap_or(fallback),
    }
}

/// Bytes available to unprivileged users on the filesystem holding `path`.
pub fn disk_free(path: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// `Version` from Docker's `GET /version` over its unix socket; `None` when the socket is
/// absent, not ours to read, slow (`timeout` for connect+read) or answers something else.
pub fn docker_version(socket: &Path, timeout: Duration) -> Option<String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    // HTTP/1.0 so the daemon closes the connection after the body (no keep-alive to manage).
    s.write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    s.take(256 * 1024).read_to_end(&mut buf).ok()?;
    parse_docker_version_response(&buf)
}

/// Parse the raw HTTP response to `GET /version` (plain or chunked body).
pub fn parse_docker_version_response(raw: &[u8]) -> Option<String> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_ascii_whitespace().nth(1)?;
    if status != "200" {
        return None;
    }
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if chunked {
        body = dechunk(&body)?;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v.get("Version")?.as_str().map(str::to_string)
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_table() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
                "debian 12",
                "Debian GNU/Linux 12 (bookworm)",
            ),
            (
                "NAME=\"Arch Linux\"\nID=arch\nBUILD_ID=rolling\n",
                "arch",
                "Arch Linux",
            ),
            ("ID='rhel'\nVERSION_ID='9.3'\nPRETTY_NAME=\"Red Hat \\\"EL\\\" 9\"\n", "rhel 9.3", "Red Hat \"EL\" 9"),
            // single quotes are literal in shell (and os-release(5)): backslashes stay
            ("ID=x\nPRETTY_NAME='a\\b'\n", "x", "a\\b"),
            ("# comment\n\nID=alpine\nVERSION_ID=3.19.1\n", "alpine 3.19.1", "alpine 3.19.1"),
            ("", "linux", "linux"),
        ];
        for (text, short, pretty) in cases {
            let r = parse_os_release(text);
            assert_eq!(
                (r.short.as_str(), r.pretty.as_str()),
                (*short, *pretty),
                "{text}"
            );
        }
    }

    #[test]
    fn uptime_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("350735.47 234388.90\n", Some(350735)),
            ("0.99 0.5", Some(0)),
            ("", None),
            ("abc 1", None),
            ("-1.0 2", None),
        ];
        for (t, want) in cases {
            assert_eq!(parse_uptime(t), *want, "{t}");
        }
    }

    #[test]
    fn meminfo_table() {
        let modern = "MemTotal:       16318164 kB\nMemFree:         1234 kB\nMemAvailable:   10000000 kB\nBuffers: 1 kB\n";
        let old =
            "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 1 kB\nSwapCached: 5 kB\n";
        let cases: &[(&str, MemInfo)] = &[
            (
                modern,
                MemInfo {
                    total: 16318164 * 1024,
                    available: 10000000 * 1024,
                },
            ),
            (
                old,
                MemInfo {
                    total: 1000 * 1024,
                    available: 111 * 1024,
                },
            ),
            (
                "garbage\nMemTotal: x kB\n",
                MemInfo {
                    total: 0,
                    available: 0,
                },
            ),
        ];
        for (t, want) in cases {
            assert_eq!(&parse_meminfo(t), want, "{t}");
        }
    }

    #[test]
    fn docker_response_table() {
        let body = r#"{"Version":"24.0.7","ApiVersion":"1.43"}"#;
        let plain = format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{body}");
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            10, &body[..10], body.len() - 10, &body[10..]
        );
        let cases: &[(&str, Option<&str>)] = &[
            (&plain, Some("24.0.7")),
            (&chunked, Some("24.0.7")),
            ("HTTP/1.0 403 Forbidden\r\n\r\n{\"Version\":\"1\"}", None),
            ("HTTP/1.0 200 OK\r\n\r\n{\"ApiVersion\":\"1.43\"}", None),
            ("HTTP/1.0 200 OK\r\n\r\nnot json", None),
            ("garbage", None),
        ];
        for (raw, want) in cases {
            assert_eq!(
                parse_docker_version_response(raw.as_bytes()).as_deref(),
                *want,
                "{raw}"
            );
        }
    }

    #[test]
    fn docker_over_a_fake_socket_and_absent_socket() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("docker.sock");
        assert_eq!(docker_version(&sock, Duration::from_millis(200)), None);
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 512];
            let n = c.read(&mut req).unwrap();
            assert!(std::str::from_utf8(&req[..n])
                .unwrap()
                .starts_with("GET /version HTTP/1.0\r\n"));
            c.write_all(b"HTTP/1.0 200 OK\r\n\r\n{\"Version\":\"27.1.1\"}")
                .unwrap();
        });
        assert_eq!(
            docker_version(&sock, Duration::from_secs(2)).as_deref(),
            Some("27.1.1")
        );
        t.join().unwrap();
    }

    #[test]
    fn collect_reads_this_host() {
        let d = tempfile::tempdir().unwrap();
        let f = Facts::collect(d.path());
        assert!(!f.hostname.is_empty() && !f.kernel.is_empty());
        assert_eq!(f.arch, std::env::consts::ARCH);
        assert!(f.cpus >= 1 && f.mem_total_bytes > 0 && f.disk_free_bytes > 0);
        assert!(f.mem_available_bytes <= f.mem_total_bytes);
    }
}
