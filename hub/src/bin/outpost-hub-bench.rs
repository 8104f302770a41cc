//! `outpost-hub-bench`: drives an already-running hub over loopback with N concurrent
//! keep-alive HTTP/1.1 connections and reports heartbeats/s and latency percentiles.
//!
//! It pre-enrolls `--agents` agents (one key each), then sends heartbeats round-robin over
//! those agents until `--count` heartbeats were sent or `--duration` elapsed. The client is
//! a hand-written keep-alive loop (no HTTP client library) so that it costs little CPU next
//! to the hub on the same machine. See hub/bench.sh.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use outpost_hub::duration::parse_secs;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
#[command(
    name = "outpost-hub-bench",
    about = "Heartbeat load generator for a running outpost-hub"
)]
struct Args {
    /// Hub URL (plain http, e.g. http://127.0.0.1:8443).
    #[arg(long, env = "OUTPOST_HUB_URL", default_value = "http://127.0.0.1:8443")]
    hub: String,
    /// Agents to enroll before the run.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Stop after this many heartbeats.
    #[arg(long, default_value_t = 200_000)]
    count: u64,
    /// Stop after this long (90s, 1m, ...).
    #[arg(long, default_value = "20s")]
    duration: String,
    /// Client runtime threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad response: {0}")]
    Protocol(String),
    #[error("{0}")]
    Usage(String),
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    io: BufReader<TcpStream>,
    host: String,
    req: Vec<u8>,
    line: String,
}

impl Conn {
    async fn open(addr: &str) -> Result<Conn, BenchError> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            io: BufReader::with_capacity(16 * 1024, s),
            host: addr.to_string(),
            req: Vec::with_capacity(2048),
            line: String::new(),
        })
    }

    async fn call(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: &str,
    ) -> Result<(u16, Vec<u8>), BenchError> {
        use std::io::Write;
        self.req.clear();
        write!(
            self.req,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        )?;
        self.io.get_mut().write_all(&self.req).await?;
        self.line.clear();
        if self.io.read_line(&mut self.line).await? == 0 {
            return Err(BenchError::Protocol("connection closed".into()));
        }
        let status: u16 = self
            .line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| BenchError::Protocol(format!("status line {:?}", self.line)))?;
        let mut len = None;
        loop {
            self.line.clear();
            if self.io.read_line(&mut self.line).await? == 0 {
                return Err(BenchError::Protocol("connection closed in headers".into()));
            }
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
        let len = len.ok_or_else(|| BenchError::Protocol("no content-length".into()))?;
        let mut buf = vec![0u8; len];
        self.io.read_exact(&mut buf).await?;
        Ok((status, buf))
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

async fn enroll_all(
    addr: &str,
    admin: &str,
    n: usize,
) -> Result<Vec<(String, String)>, BenchError> {
    let workers = 8.min(n.max(1));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let addr = addr.to_string();
        let admin = admin.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(&addr).await?;
            let mut out = Vec::new();
            for i in (w..n).step_by(workers) {
                let (s, b) = c.call("POST", "/api/v1/keys", &admin, r#"{"ttl_secs":600,"group":"bench"}"#).await?;
                let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
                if s != 201 {
                    return Err(BenchError::Protocol(format!("keys: {s} {v}")));
                }
                let key = v["key"].as_str().unwrap_or_default();
                let body = json!({"key": key, "facts": {"hostname": format!("bench-{i:05}"), "machine_id": format!("m{i}"),
                    "distro": "debian 12", "arch": "x86_64", "version": "1.0.0", "mode": "system"}});
                let (s, b) = c.call("POST", "/api/v1/enroll", "-", &body.to_string()).await?;
                let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
                if s != 201 {
                    return Err(BenchError::Protocol(format!("enroll: {s} {v}")));
                }
                out.push((v["agent_id"].as_str().unwrap_or_default().to_string(), v["token"].as_str().unwrap_or_default().to_string()));
            }
            Ok::<_, BenchError>(out)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.map_err(|e| BenchError::Protocol(e.to_string()))??);
    }
    Ok(all)
}

async fn run(args: Args) -> Result<(), BenchError> {
    let addr = args
        .hub
        .strip_prefix("http://")
        .ok_or_else(|| {
            BenchError::Usage("--hub must be a plain http:// URL (run the hub without TLS)".into())
        })?
        .trim_end_matches('/')
        .to_string();
    let admin = std::env::var("OUTPOST_HUB_ADMIN_TOKEN").map_err(|_| {
        BenchError::Usage("set OUTPOST_HUB_ADMIN_TOKEN to the hub's admin token".into())
    })?;
    let limit = parse_secs(&args.duration).ok_or_else(|| {
        BenchError::Usage(format!("--duration {:?} is not a duration", args.duration))
    })?;
    if args.agents == 0 || args.connections == 0 {
        return Err(BenchError::Usage(
            "--agents and --connections must be positive".into(),
        ));
    }

    let t0 = Instant::now();
    let agents = Arc::new(enroll_all(&addr, &admin, args.agents).await?);
    let enroll_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "enrolled {} agents in {:.2}s ({:.0} enrollments/s incl. key minting)",
        agents.len(),
        enroll_secs,
        agents.len() as f64 / enroll_secs
    );

    // Pre-render each agent's request body; the hot loop only writes bytes.
    let bodies: Arc<Vec<(String, String)>> = Arc::new(
        agents
            .iter()
            .map(|(id, tok)| {
                let b = json!({"agent_id": id, "version": "1.0.0", "distro": "debian 12", "kernel": "6.1.0-bench",
                    "arch": "x86_64", "uptime_secs": 1000, "mode": "system",
                    "capabilities": {"cpus": 2, "mem_total_bytes": 4_000_000_000u64, "mem_available_bytes": 2_000_000_000u64,
                                     "disk_free_bytes": 10_000_000_000u64, "docker_version": null},
                    "journal_head": {"seq": 1, "hash": "0000000000000000000000000000000000000000000000000000000000000000"},
                    "last_upgrade": null});
                (tok.clone(), b.to_string())
            })
            .collect(),
    );

    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(limit);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (addr, bodies, issued, errors) =
            (addr.clone(), bodies.clone(), issued.clone(), errors.clone());
        let count = args.count;
        let n = args.connections;
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> =
                Vec::with_capacity(usize::try_from(count).unwrap_or(0) / n + 16);
            let mut conn = Conn::open(&addr).await?;
            let mut i = c;
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < count {
                let (tok, body) = &bodies[i % bodies.len()];
                i += n;
                let t = Instant::now();
                let (s, _) = conn.call("POST", "/api/v1/heartbeat", tok, body).await?;
                lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                if s != 200 {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, BenchError>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.map_err(|e| BenchError::Protocol(e.to_string()))??);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let rate = lat.len() as f64 / secs;
    let result = json!({
        "agents": agents.len(), "connections": args.connections, "heartbeats": lat.len(),
        "errors": errors.load(Ordering::Relaxed), "seconds": (secs * 100.0).round() / 100.0,
        "heartbeats_per_sec": rate.round(),
        "latency_ms": {"p50": percentile(&lat, 0.50), "p90": percentile(&lat, 0.90), "p99": percentile(&lat, 0.99),
                       "p999": percentile(&lat, 0.999), "max": percentile(&lat, 1.0)},
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "{} heartbeats from {} agents over {} connections in {:.2}s: {:.0} heartbeats/s, {} errors",
            lat.len(),
            agents.len(),
            args.connections,
            secs,
            rate,
            result["errors"]
        );
        println!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            percentile(&lat, 0.50),
            percentile(&lat, 0.90),
            percentile(&lat, 0.99),
            percentile(&lat, 0.999),
            percentile(&lat, 1.0)
        );
    }
    if errors.load(Ordering::Relaxed) > 0 {
        return Err(BenchError::Protocol("some heartbeats failed".into()));
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("error: {e}");
        eprintln!(
            "hint: start the hub first (hub/bench.sh does it all) and pass its URL with --hub"
        );
        std::process::exit(match e {
            BenchError::Usage(_) => 2,
            _ => 1,
        });
    }
}
