//! Serving the API over TCP (`api.listen`), with TLS when `api.tls_cert`/`api.tls_key` are
//! set, and the bearer token required on every request but the dashboard's assets.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::auth::{Peer, Tokens, require_token};
use crate::config::AgentConfig;
use crate::error::AgentError;

/// Connections to the API over TCP at once; more wait to be accepted.
const CONNECTIONS_MAX: usize = 128;
/// A TLS handshake longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn tls_config(cfg: &AgentConfig) -> Result<Option<TlsAcceptor>, AgentError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&cfg.api.tls_cert, &cfg.api.tls_key) else {
        return Ok(None);
    };
    let (cert, key) = (cfg.resolve(cert), cfg.resolve(key));
    let bad = |path: &std::path::Path, why: String| AgentError::Config {
        path: path.to_path_buf(),
        why: format!("api TLS: {why}"),
    };
    let chain = CertificateDer::pem_file_iter(&cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(&cert, format!("cannot read the certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(bad(&cert, "no PEM certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| bad(&key, format!("cannot read the private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            bad(
                &cert,
                format!("the certificate and key do not make a TLS identity: {e}"),
            )
        })?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// The API's TCP listener, bound at start (so that a bad address or certificate stops the
/// start), served once the router is made.
pub struct Bound {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    tokens: Arc<Tokens>,
    /// What it listens on: `https://ADDR` or `http://ADDR`.
    pub url: String,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound").field("url", &self.url).finish()
    }
}

/// Binds `api.listen`; `None` when not set.
pub async fn bind_tcp(cfg: &AgentConfig) -> Result<Option<Bound>, AgentError> {
    let Some(listen) = cfg.api.listen.clone() else {
        return Ok(None);
    };
    let tls = tls_config(cfg)?;
    let token_file = cfg.token_file();
    let tokens = Arc::new(Tokens::open(token_file.clone()).map_err(|e| AgentError::Config {
        path: token_file,
        why: format!("the API token file: {e}"),
    })?);
    let listener = TcpListener::bind(&listen).await.map_err(|source| AgentError::Listen {
        addr: listen.clone(),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| AgentError::Listen {
        addr: listen.clone(),
        source,
    })?;
    let url = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
    Ok(Some(Bound {
        listener,
        tls,
        tokens,
        url,
    }))
}

impl Bound {
    /// Serves `router` until `shutdown`.
    pub fn serve(self, router: Router, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let Bound {
            listener,
            tls,
            tokens,
            url,
        } = self;
        let router = router.layer(axum::middleware::from_fn_with_state(tokens, require_token));
        tracing::info!(api = %url, "control API and dashboard listening (the dashboard is at /ui/)");
        let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "API accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let (router, tls, shutdown) = (router.clone(), tls.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(Peer(peer));
                        router.clone().call(req)
                    });
                    match tls {
                        None => serve_conn(TokioIo::new(tcp), svc, shutdown).await,
                        Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                            Ok(Ok(s)) => serve_conn(TokioIo::new(s), svc, shutdown).await,
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "API TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "API TLS handshake timed out"),
                        },
                    }
                });
            }
        })
    }
}

async fn serve_conn<I, S>(io: I, svc: S, shutdown: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = axum::response::Response>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "API connection ended");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}
