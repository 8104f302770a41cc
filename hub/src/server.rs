//! The serving loop: listener (plain or TLS), per-connection HTTP/1.1, the batching writer
//! task, and shutdown on SIGINT/SIGTERM with a final flush.
//!
//! Connections are capped ([`ServeConfig::max_connections`]). At the cap, a new connection
//! pushes out the oldest one that has never sent a complete request head (an idle or
//! slow-loris connection), else the oldest keep-alive connection between requests; when
//! every connection has a request in flight, the new one is closed at once. A request is in
//! flight from its complete head until its response body is sent. Request heads (and so idle
//! keep-alive connections) and bodies each get [`ServeConfig::request_timeout`].

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::api::{router, Hub, HubOptions};
use crate::error::HubError;

/// How often the writer task persists heartbeat state. A hub crash loses at most this
/// window of heartbeat timestamps (never identities, tokens or keys).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(150);

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: String,
    pub db: PathBuf,
    pub releases: PathBuf,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub admin_token: String,
    pub interval_secs: u64,
    /// Concurrent connections at most.
    pub max_connections: usize,
    /// Time allowed for a request head (also the keep-alive idle time) and for a body.
    pub request_timeout: Duration,
    /// Enrollments per minute and client address (0: unlimited).
    pub enroll_per_min: u32,
    /// Enrollments a client address may make at once.
    pub enroll_burst: u32,
    /// Run leases (`--run-lease`), `--lost-after`, the per-agent limits
    /// (`--max-runs-in-flight`, `--max-runs-queued`), `--run-retention`, `--run-log-rate`.
    pub runs: crate::runs_api::RunLimits,
}

/// Default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of `--request-timeout`, in seconds.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 10;

/// One live connection.
struct Slot {
    /// A complete request head arrived on it.
    served: AtomicBool,
    /// Requests whose response is not sent yet.
    in_flight: AtomicUsize,
    /// Closes it.
    kill: Notify,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            served: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            kill: Notify::new(),
        }
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }
}

/// The live connections, oldest first.
struct Conns {
    cap: usize,
    inner: Mutex<(u64, BTreeMap<u64, Arc<Slot>>)>,
}

impl Conns {
    fn new(cap: usize) -> Conns {
        Conns {
            cap: cap.max(1),
            inner: Mutex::new((0, BTreeMap::new())),
        }
    }

    /// A slot for a new connection: a free one, or one taken from the oldest connection that
    /// never sent a request head, else from the oldest idle keep-alive connection (which is
    /// closed); `None` at the cap with every connection busy.
    fn admit(&self) -> Option<(u64, Arc<Slot>)> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (next, live) = &mut *g;
        if live.len() >= self.cap {
            let never = || {
                live.iter()
                    .find(|(_, s)| !s.served.load(Ordering::Acquire) && s.idle())
                    .map(|(id, _)| *id)
            };
            let between = || live.iter().find(|(_, s)| s.idle()).map(|(id, _)| *id);
            let victim = never().or_else(between)?;
            if let Some(s) = live.remove(&victim) {
                s.kill.notify_one();
            }
        }
        *next += 1;
        let slot = Arc::new(Slot::new());
        live.insert(*next, slot.clone());
        Some((*next, slot))
    }

    fn release(&self, id: u64) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .remove(&id);
    }
}

/// Releases a connection's slot when its task ends (normally or not).
struct SlotGuard {
    conns: Arc<Conns>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.conns.release(self.id);
    }
}

/// Counts a request in flight on its connection until dropped (with the response body, once
/// it is sent, or with the request when the connection goes away).
struct InFlight(Arc<Slot>);

impl InFlight {
    fn start(slot: &Arc<Slot>) -> InFlight {
        slot.served.store(true, Ordering::Release);
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(slot.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted in flight until it is sent.
struct TrackedBody {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

type ResponseFuture = Pin<
    Box<dyn Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send>,
>;

/// The router for one connection: records the peer address and which requests are in flight.
#[derive(Clone)]
struct ConnService {
    app: Router,
    peer: SocketAddr,
    slot: Arc<Slot>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(&self.slot);
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let mut app = self.app.clone();
        let fut = tower::Service::call(&mut app, req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(res.map(|inner| {
                axum::body::Body::new(TrackedBody {
                    inner,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// Accept queue length asked for (the kernel caps it at `net.core.somaxconn`): a burst of
/// new connections waits there instead of being dropped (std's default is 128).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (the first address it resolves to that binds) with [`LISTEN_BACKLOG`].
async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let sock = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        match sock.bind(a).and_then(|()| sock.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "address resolves to nothing",
        )
    }))
}

/// Raises the soft open-file limit to the hard one so the connection cap, not EMFILE,
/// decides; warns when even that is too low.
fn raise_nofile(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            eprintln!("outpost-hub: cannot raise the open file limit: {e}");
        }
    }
    let now = getrlimit(Resource::Nofile).current;
    let need = max_connections as u64 + 64;
    if now.is_some_and(|n| n < need) {
        eprintln!(
            "outpost-hub: warning: the open file limit ({}) is below --max-connections + 64 ({need}); raise LimitNOFILE= or lower --max-connections",
            now.unwrap_or(0)
        );
    }
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor, HubError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| HubError::Tls(format!("cannot read certificate {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(HubError::Tls(format!(
            "no certificate in {}",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| HubError::Tls(format!("cannot read private key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HubError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| HubError::Tls(format!("certificate and key do not fit: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

async fn flush(hub: &Arc<Hub>) {
    let batch = hub.registry.take_dirty();
    if batch.is_empty() {
        return;
    }
    let n = batch.len();
    if let Err(e) = hub.store.flush_heartbeats(batch).await {
        eprintln!("outpost-hub: persisting {n} heartbeats failed: {e}");
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the hub until SIGINT/SIGTERM. Prints `outpost-hub listening on <url>` on stdout
/// once the socket is bound (tests parse it to learn an ephemeral port).
pub async fn serve(cfg: ServeConfig) -> Result<(), HubError> {
    let acceptor = match &cfg.tls {
        Some((c, k)) => Some(tls_acceptor(c, k)?),
        None => None,
    };
    let releases = std::fs::canonicalize(&cfg.releases).map_err(|source| HubError::Io {
        path: cfg.releases.display().to_string(),
        source,
    })?;
    let store = crate::store::open(&cfg.db).await?;
    let hub = Arc::new(
        Hub::load(
            store,
            cfg.interval_secs,
            &cfg.admin_token,
            releases,
            HubOptions {
                tls: acceptor.is_some(),
                enroll_per_min: cfg.enroll_per_min,
                enroll_burst: cfg.enroll_burst,
                runs: cfg.runs,
            },
        )
        .await?,
    );
    raise_nofile(cfg.max_connections);
    crate::limits::set_body_timeout(cfg.request_timeout);
    let listener = bind(&cfg.listen).await.map_err(|source| HubError::Listen {
        addr: cfg.listen.clone(),
        source,
    })?;
    let addr: SocketAddr = listener.local_addr().map_err(|source| HubError::Listen {
        addr: cfg.listen.clone(),
        source,
    })?;
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "outpost-hub listening on {scheme}://{addr}");
        let _ = out.flush();
    }
    eprintln!(
        "outpost-hub {}: {} agents loaded from {}, heartbeat interval {}s",
        crate::VERSION,
        hub.registry.len(),
        cfg.db.display(),
        cfg.interval_secs
    );

    let writer_hub = hub.clone();
    let writer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            flush(&writer_hub).await;
        }
    });

    let sweeper = tokio::spawn(crate::runs_api::sweeper(hub.clone()));

    let app = router(hub.clone());
    let conns = Arc::new(Conns::new(cfg.max_connections));
    let timeout = cfg.request_timeout;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    eprintln!("outpost-hub: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some((id, slot)) = conns.admit() else {
            // At the cap and every connection is busy: close this one at once.
            drop(stream);
            continue;
        };
        let guard = SlotGuard {
            conns: conns.clone(),
            id,
        };
        let _ = stream.set_nodelay(true);
        let svc = ConnService {
            app: app.clone(),
            peer,
            slot: slot.clone(),
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .keep_alive(true);
            let serve = async {
                match acceptor {
                    Some(acc) => {
                        if let Ok(Ok(tls)) = tokio::time::timeout(timeout, acc.accept(stream)).await
                        {
                            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = slot.kill.notified() => {}
            }
        });
    }
    writer.abort();
    sweeper.abort();
    flush(&hub).await;
    eprintln!("outpost-hub: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_evicts_never_served_then_idle_connections_never_busy_ones() {
        let c = Conns::new(3);
        let (a, sa) = c.admit().unwrap();
        let (b, _sb) = c.admit().unwrap();
        let (d, sd) = c.admit().unwrap();
        let live = |c: &Conns| -> Vec<u64> { c.inner.lock().unwrap().1.keys().copied().collect() };
        // a: idle keep-alive (served, nothing in flight); b: never served; d: busy.
        drop(InFlight::start(&sa));
        let busy_d = InFlight::start(&sd);
        // Full: the never-served one goes first, although a is older.
        let (e, se) = c.admit().unwrap();
        assert_eq!(live(&c), vec![a, d, e]);
        assert!(!live(&c).contains(&b));
        // e is new too: it goes next.
        let (f, sf) = c.admit().unwrap();
        assert_eq!(live(&c), vec![a, d, f]);
        drop(se);
        // f busy: the idle keep-alive a goes; d (busy) stays.
        let busy_f = InFlight::start(&sf);
        let (g, sg) = c.admit().unwrap();
        assert_eq!(live(&c), vec![d, f, g]);
        // Everyone busy: refused.
        let busy_g = InFlight::start(&sg);
        assert!(c.admit().is_none());
        assert_eq!(live(&c), vec![d, f, g]);
        // A response sent: that connection is idle and can make room.
        drop(busy_d);
        assert!(c.admit().is_some());
        assert!(!live(&c).contains(&d));
        drop((busy_f, busy_g));
        c.release(f);
        assert_eq!(live(&c).len(), 2);
    }
}
