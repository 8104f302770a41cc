//! The serving loop: listener (plain or TLS), per-connection HTTP/1.1, the batching writer
//! task, and shutdown on SIGINT/SIGTERM with a final flush.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::api::{router, Hub};
use crate::db::Db;
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
    let db = hub.db.clone();
    let n = batch.len();
    match tokio::task::spawn_blocking(move || db.flush_heartbeats(&batch)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("outpost-hub: persisting {n} heartbeats failed: {e}"),
        Err(e) => eprintln!("outpost-hub: heartbeat writer task failed: {e}"),
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
    let db_path = cfg.db.display().to_string();
    let db = tokio::task::spawn_blocking(move || Db::open(&db_path))
        .await
        .map_err(|e| HubError::Internal(format!("startup task failed: {e}")))??;
    let hub = Arc::new(Hub::load(
        db,
        cfg.interval_secs,
        &cfg.admin_token,
        releases,
    )?);
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .map_err(|source| HubError::Listen {
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

    let app = router(hub.clone());
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
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
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .keep_alive(true);
            let result = match acceptor {
                Some(acc) => {
                    match tokio::time::timeout(Duration::from_secs(10), acc.accept(stream)).await {
                        Ok(Ok(tls)) => builder.serve_connection(TokioIo::new(tls), svc).await,
                        _ => return,
                    }
                }
                None => builder.serve_connection(TokioIo::new(stream), svc).await,
            };
            drop(result);
        });
    }
    writer.abort();
    flush(&hub).await;
    eprintln!("outpost-hub: stopped");
    Ok(())
}
