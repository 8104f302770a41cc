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
use outpost_proto::{
    Capabilities, CreateKeyRequest, EnrollRequest, Enrolled, ErrorBody, Facts, Heartbeat,
    JournalHead, KeyCreated,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
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
    /// Runs mode: create this many runs of one action across the agents, which poll, claim
    /// and finish them (started event + result) like real agents; reports finished runs/s.
    #[arg(long, default_value_t = 0)]
    runs: usize,
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

/// The body of a successful reply as `T`, else an error naming `what`, the status and the
/// hub's error body.
fn reply<T: DeserializeOwned>(
    what: &str,
    want: u16,
    status: u16,
    body: &[u8],
) -> Result<T, BenchError> {
    if status != want {
        let e: ErrorBody = serde_json::from_slice(body).unwrap_or_else(|_| ErrorBody {
            message: String::from_utf8_lossy(body).into_owned(),
            ..ErrorBody::default()
        });
        return Err(BenchError::Protocol(format!(
            "{what}: {status} {}: {}",
            e.error, e.message
        )));
    }
    serde_json::from_slice(body).map_err(|e| BenchError::Protocol(format!("{what}: {e}")))
}

/// `value` as JSON text.
fn to_json<T: Serialize>(value: &T) -> Result<String, BenchError> {
    serde_json::to_string(value).map_err(|e| BenchError::Protocol(format!("cannot encode: {e}")))
}

/// The enrollment request of bench agent `i`.
fn enroll_request(key: String, i: usize) -> EnrollRequest {
    EnrollRequest {
        key,
        nonce: None,
        facts: Facts {
            hostname: format!("bench-{i:05}"),
            machine_id: format!("m{i}"),
            distro: "debian 12".into(),
            arch: "x86_64".into(),
            version: "1.0.0".into(),
            mode: "system".into(),
        },
    }
}

/// Mints a key for and enrolls agents `w, w + step, …` below `n` over one connection:
/// their `(agent id, token)`.
async fn enroll_some(
    addr: &str,
    admin: &str,
    w: usize,
    step: usize,
    n: usize,
) -> Result<Vec<(String, String)>, BenchError> {
    let mut c = Conn::open(addr).await?;
    let key_req = to_json(&CreateKeyRequest {
        ttl_secs: 600,
        group: Some("bench".into()),
        labels: Default::default(),
    })?;
    let mut out = Vec::new();
    for i in (w..n).step_by(step) {
        let (s, b) = c.call("POST", "/api/v1/keys", admin, &key_req).await?;
        let key: KeyCreated = reply("keys", 201, s, &b)?;
        let body = to_json(&enroll_request(key.key, i))?;
        let (s, b) = c.call("POST", "/api/v1/enroll", "-", &body).await?;
        let e: Enrolled = reply("enroll", 201, s, &b)?;
        out.push((e.agent_id, e.token));
    }
    Ok(out)
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
            enroll_some(&addr, &admin, w, workers, n).await
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.map_err(|e| BenchError::Protocol(e.to_string()))??);
    }
    Ok(all)
}

/// The heartbeat every bench agent sends (what a real agent sends, all fields).
fn heartbeat(agent_id: &str) -> Heartbeat {
    Heartbeat {
        agent_id: agent_id.to_string(),
        version: Some("1.0.0".into()),
        distro: Some("debian 12".into()),
        kernel: Some("6.1.0-bench".into()),
        arch: Some("x86_64".into()),
        uptime_secs: Some(1000),
        mode: Some("system".into()),
        capabilities: Some(Capabilities {
            cpus: Some(2),
            mem_total_bytes: Some(4_000_000_000),
            mem_available_bytes: Some(2_000_000_000),
            disk_free_bytes: Some(10_000_000_000),
            docker_version: None,
            extra: Default::default(),
        }),
        journal_head: Some(JournalHead {
            seq: 1,
            hash: "0".repeat(64),
        }),
        last_upgrade: None,
        // A real agent sends its catalog each time: one small pack.
        packs: Some(vec![outpost_proto::PackAdvert {
            name: "linux-core".into(),
            version: "1.0.0".into(),
            sha256: "a".repeat(64),
            actions: vec![outpost_proto::ActionAdvert {
                id: "restart-service".into(),
                description: "restart a unit".into(),
                params: vec![outpost_proto::ParamAdvert {
                    name: "service".into(),
                    kind: "string".into(),
                    required: true,
                }],
                idempotent: true,
                privileged: false,
            }],
        }]),
    }
}

/// Latency percentiles of a run, in ms.
#[derive(Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

/// The `--json` result.
#[derive(Serialize)]
struct BenchResult {
    agents: usize,
    connections: usize,
    heartbeats: usize,
    errors: u64,
    seconds: f64,
    heartbeats_per_sec: f64,
    latency_ms: Latency,
}

/// Sends heartbeats round-robin over `bodies` (`(token, body)` per agent) on `connections`
/// keep-alive connections until `count` were sent or `deadline`: every latency in µs,
/// non-200 replies counted in `errors`.
async fn drive(
    addr: &str,
    bodies: Arc<Vec<(String, String)>>,
    connections: usize,
    count: u64,
    deadline: Instant,
    errors: &Arc<AtomicU64>,
) -> Result<Vec<u32>, BenchError> {
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (addr, bodies, issued, errors) = (
            addr.to_string(),
            bodies.clone(),
            issued.clone(),
            errors.clone(),
        );
        let n = connections;
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
    Ok(lat)
}

impl BenchResult {
    /// The human summary; `secs` and `rate` unrounded.
    fn print(&self, secs: f64, rate: f64) {
        println!(
            "{} heartbeats from {} agents over {} connections in {:.2}s: {:.0} heartbeats/s, {} errors",
            self.heartbeats, self.agents, self.connections, secs, rate, self.errors
        );
        let l = &self.latency_ms;
        println!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
    }
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
    if args.runs > 0 {
        return runs_bench(&addr, &admin, &agents, &args).await;
    }
    let enroll_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "enrolled {} agents in {:.2}s ({:.0} enrollments/s incl. key minting)",
        agents.len(),
        enroll_secs,
        agents.len() as f64 / enroll_secs
    );

    // Pre-render each agent's request body; the hot loop only writes bytes.
    let bodies = agents
        .iter()
        .map(|(id, tok)| Ok((tok.clone(), to_json(&heartbeat(id))?)))
        .collect::<Result<Vec<(String, String)>, BenchError>>()?;
    let bodies = Arc::new(bodies);

    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(limit);
    let start = Instant::now();
    let mut lat = drive(
        &addr,
        bodies,
        args.connections,
        args.count,
        deadline,
        &errors,
    )
    .await?;
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let rate = lat.len() as f64 / secs;
    let result = BenchResult {
        agents: agents.len(),
        connections: args.connections,
        heartbeats: lat.len(),
        errors: errors.load(Ordering::Relaxed),
        seconds: (secs * 100.0).round() / 100.0,
        heartbeats_per_sec: rate.round(),
        latency_ms: Latency {
            p50: percentile(&lat, 0.50),
            p90: percentile(&lat, 0.90),
            p99: percentile(&lat, 0.99),
            p999: percentile(&lat, 0.999),
            max: percentile(&lat, 1.0),
        },
    };
    if args.json {
        println!("{}", to_json(&result)?);
    } else {
        result.print(secs, rate);
    }
    if errors.load(Ordering::Relaxed) > 0 {
        return Err(BenchError::Protocol("some heartbeats failed".into()));
    }
    Ok(())
}

/// The runs result.
#[derive(Serialize)]
struct RunsResult {
    agents: usize,
    runs: usize,
    seconds: f64,
    finished_runs_per_sec: f64,
    /// Create request → result stored, per run.
    latency_ms: Latency,
}

/// One simulated agent: long-poll, claim each offer, report `started` and a result, until
/// `quota` runs are finished; the instant each result was stored.
async fn sim_agent(
    addr: String,
    id: String,
    token: String,
    quota: usize,
) -> Result<Vec<(String, Instant)>, BenchError> {
    let mut c = Conn::open(&addr).await?;
    let mut done = Vec::with_capacity(quota);
    let claim = to_json(&outpost_proto::ClaimRequest {
        claimant: format!("bench-{id}"),
    })?;
    while done.len() < quota {
        let poll = to_json(&outpost_proto::PollRequest {
            agent_id: id.clone(),
            wait_secs: 5,
            holding: vec![],
        })?;
        let (s, b) = c.call("POST", "/api/v1/agent/poll", &token, &poll).await?;
        let got: outpost_proto::PollReply = reply("poll", 200, s, &b)?;
        for o in got.offers {
            let base = format!("/api/v1/agent/runs/{}", o.run_id);
            let (s, b) = c
                .call("POST", &format!("{base}/claim"), &token, &claim)
                .await?;
            if s != 200 {
                return Err(BenchError::Protocol(format!(
                    "claim: {s} {}",
                    String::from_utf8_lossy(&b)
                )));
            }
            let ev = to_json(&outpost_proto::EventsUpload {
                events: vec![outpost_proto::RunEvent {
                    seq: 1,
                    kind: "started".into(),
                    at: "2026-12-02T00:00:00Z".into(),
                    data: Default::default(),
                }],
            })?;
            let (s, b) = c
                .call("POST", &format!("{base}/events"), &token, &ev)
                .await?;
            let _: outpost_proto::EventsAck = reply("events", 200, s, &b)?;
            let res = to_json(&outpost_proto::RunResult {
                outcome: outpost_proto::RunOutcome::Succeeded,
                exit_code: Some(0),
                signal: None,
                reason: String::new(),
                finished_at: "2026-12-02T00:00:01Z".into(),
                log_bytes: 0,
            })?;
            let (s, b) = c
                .call("POST", &format!("{base}/result"), &token, &res)
                .await?;
            let _: outpost_proto::ResultAck = reply("result", 200, s, &b)?;
            done.push((o.run_id, Instant::now()));
        }
    }
    Ok(done)
}

/// Runs mode: each agent advertises the bench pack, the admin trusts it, `--runs` runs are
/// created (round-robin over the agents, over `--connections` connections) while the agents
/// work them off; finished runs/s is runs / (first create → last result stored).
async fn runs_bench(
    addr: &str,
    admin: &str,
    agents: &[(String, String)],
    args: &Args,
) -> Result<(), BenchError> {
    let mut c = Conn::open(addr).await?;
    for (id, tok) in agents {
        let (s, b) = c
            .call("POST", "/api/v1/heartbeat", tok, &to_json(&heartbeat(id))?)
            .await?;
        if s != 200 {
            return Err(BenchError::Protocol(format!(
                "heartbeat: {s} {}",
                String::from_utf8_lossy(&b)
            )));
        }
    }
    let sha = "a".repeat(64);
    let (s, b) = c
        .call(
            "POST",
            &format!("/api/v1/packs/linux-core/{sha}/trust"),
            admin,
            "",
        )
        .await?;
    if s != 200 {
        return Err(BenchError::Protocol(format!(
            "trust: {s} {}",
            String::from_utf8_lossy(&b)
        )));
    }
    let n = args.runs;
    let per = n.div_ceil(agents.len());
    let start = Instant::now();
    let mut workers = Vec::new();
    for (i, (id, tok)) in agents.iter().enumerate() {
        let quota = per.min(n.saturating_sub(i * per));
        if quota == 0 {
            continue;
        }
        workers.push(tokio::spawn(sim_agent(
            addr.to_string(),
            id.clone(),
            tok.clone(),
            quota,
        )));
    }
    // Creates: agent i gets runs i*per .. (i+1)*per, spread over the connections.
    let jobs: Vec<String> = (0..n).map(|k| agents[k / per].0.clone()).collect();
    let jobs = Arc::new(jobs);
    let conns = args.connections.min(n).max(1);
    let mut creators = Vec::new();
    for w in 0..conns {
        let (addr, admin, jobs) = (addr.to_string(), admin.to_string(), Arc::clone(&jobs));
        creators.push(tokio::spawn(async move {
            let mut c = Conn::open(&addr).await?;
            let mut created = Vec::new();
            for k in (w..jobs.len()).step_by(conns) {
                let req = to_json(&outpost_proto::CreateRunRequest {
                    target: outpost_proto::RunTarget {
                        agent: Some(jobs[k].clone()),
                        ..Default::default()
                    },
                    action: "linux-core/restart-service".into(),
                    params: [("service".to_string(), "nginx".to_string())].into(),
                    idempotency_key: None,
                })?;
                let t = Instant::now();
                let (s, b) = c.call("POST", "/api/v1/runs", &admin, &req).await?;
                let r: outpost_proto::RunsCreated = reply("create", 201, s, &b)?;
                created.extend(r.runs.into_iter().map(|v| (v.id, t)));
            }
            Ok::<_, BenchError>(created)
        }));
    }
    let mut created = std::collections::HashMap::new();
    for t in creators {
        created.extend(t.await.map_err(|e| BenchError::Protocol(e.to_string()))??);
    }
    let mut lat = Vec::with_capacity(n);
    let mut last = start;
    for w in workers {
        for (id, at) in w.await.map_err(|e| BenchError::Protocol(e.to_string()))?? {
            last = last.max(at);
            if let Some(t) = created.get(&id) {
                lat.push(at.duration_since(*t).as_micros() as u32);
            }
        }
    }
    let secs = last.duration_since(start).as_secs_f64();
    lat.sort_unstable();
    let result = RunsResult {
        agents: agents.len(),
        runs: n,
        seconds: (secs * 1000.0).round() / 1000.0,
        finished_runs_per_sec: (n as f64 / secs).round(),
        latency_ms: Latency {
            p50: percentile(&lat, 0.50),
            p90: percentile(&lat, 0.90),
            p99: percentile(&lat, 0.99),
            p999: percentile(&lat, 0.999),
            max: percentile(&lat, 1.0),
        },
    };
    if args.json {
        println!("{}", to_json(&result)?);
    } else {
        println!(
            "{} runs across {} agents finished in {:.3}s: {:.0} finished runs/s; create → result stored p50 {:.1} ms, p99 {:.1} ms",
            n, result.agents, secs, result.finished_runs_per_sec, result.latency_ms.p50, result.latency_ms.p99
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_wire_types() {
        assert!(heartbeat("a_0123456789abcdef").validate().is_ok());
        let e = enroll_request("opk_x".into(), 7);
        assert!(e.validate().is_ok());
        assert_eq!(e.facts.hostname, "bench-00007");
        let v: serde_json::Value =
            serde_json::from_str(&to_json(&heartbeat("a_1")).unwrap()).unwrap();
        assert_eq!(v["capabilities"]["docker_version"], serde_json::Value::Null);
        assert_eq!(v["last_upgrade"], serde_json::Value::Null);
    }

    #[test]
    fn refusals_name_the_hub_error() {
        let body =
            br#"{"error":"unauthorized","message":"missing or wrong admin token","hint":"h"}"#;
        let e = reply::<KeyCreated>("keys", 201, 401, body).err().unwrap();
        assert_eq!(
            e.to_string(),
            "bad response: keys: 401 unauthorized: missing or wrong admin token"
        );
        let e = reply::<KeyCreated>("keys", 201, 502, b"bad gateway")
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "bad response: keys: 502 : bad gateway");
    }

    #[test]
    fn result_keeps_its_json_keys() {
        let r = BenchResult {
            agents: 1,
            connections: 2,
            heartbeats: 3,
            errors: 0,
            seconds: 1.5,
            heartbeats_per_sec: 2.0,
            latency_ms: Latency {
                p50: 0.1,
                p90: 0.2,
                p99: 0.3,
                p999: 0.4,
                max: 0.5,
            },
        };
        assert_eq!(
            to_json(&r).unwrap(),
            r#"{"agents":1,"connections":2,"heartbeats":3,"errors":0,"seconds":1.5,"heartbeats_per_sec":2.0,"latency_ms":{"p50":0.1,"p90":0.2,"p99":0.3,"p999":0.4,"max":0.5}}"#
        );
    }
}
