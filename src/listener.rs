//! The public accept loop: a connection cap taken *before* accepting (past it, new connections wait in the
//! kernel backlog), one task per connection, the TLS handshake inside that task under a timeout, hyper's
//! HTTP/1.1 and HTTP/2 with its timer installed (so `header_read_timeout` is real), and a graceful drain.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::Peer;
use crate::http::service;
use crate::metrics::Metrics;
use crate::pipeline::Gateway;

/// Connection-level limits (SPEC §5, `[server]`).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub drain_timeout: Duration,
    /// `server.trusted_proxies`: the peers whose PROXY header or `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// `server.proxy_protocol`: every connection opens with a PROXY v2 header.
    pub proxy_protocol: bool,
}

/// Serves the public listener until `shutdown`, then drains: stop accepting, ask every connection to finish its
/// in-flight requests, and wait for them up to `drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<crate::tls::Current>,
    gateway: Arc<Gateway>,
    limits: Limits,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = shutdown.cancelled() => break,
        };
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(error) => {
                    // Usually EMFILE/ENFILE: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn =
            Connection { tls: tls.clone(), gateway: gateway.clone(), limits: limits.clone(), metrics: metrics.clone() };
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            conn.metrics.open_connections.inc();
            conn.run(stream, addr, watcher).await;
            conn.metrics.open_connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!("drain timeout passed with connections still open");
    }
}

struct Connection {
    /// The TLS config is taken per connection, so a reload's certificate serves the next handshake.
    tls: Option<crate::tls::Current>,
    gateway: Arc<Gateway>,
    limits: Limits,
    metrics: Metrics,
}

impl Connection {
    async fn run(
        &self,
        mut stream: TcpStream,
        addr: std::net::SocketAddr,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let Ok(proxied) = self.proxy_header(&mut stream, addr).await else {
            return;
        };
        let peer =
            |client_certs| Peer { addr, client_certs, proxied, trusted_proxies: self.limits.trusted_proxies.clone() };
        let builder = self.builder();
        match &self.tls {
            None => {
                let svc = service(self.gateway.clone(), peer(None));
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                let _ = watcher.watch(conn.into_owned()).await;
            }
            Some(current) => {
                let acceptor = current.acceptor();
                let tls = match tokio::time::timeout(self.limits.tls_handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        self.metrics.tls_handshake_failures.with_label_values(&["error"]).inc();
                        tracing::debug!(%error, peer = %addr, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        self.metrics.tls_handshake_failures.with_label_values(&["timeout"]).inc();
                        tracing::debug!(peer = %addr, "TLS handshake timed out");
                        return;
                    }
                };
                let certs = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()));
                let svc = service(self.gateway.clone(), peer(certs));
                let conn = builder.serve_connection(TokioIo::new(tls), svc);
                let _ = watcher.watch(conn.into_owned()).await;
            }
        }
    }

    /// With `proxy_protocol`, reads the PROXY v2 header (under the handshake timeout). `Err`: drop the
    /// connection (untrusted peer, malformed or missing header).
    async fn proxy_header(
        &self,
        stream: &mut TcpStream,
        addr: std::net::SocketAddr,
    ) -> Result<Option<std::net::SocketAddr>, ()> {
        if !self.limits.proxy_protocol {
            return Ok(None);
        }
        let read = crate::client_addr::read_proxy_v2(stream, addr.ip(), &self.limits.trusted_proxies);
        match tokio::time::timeout(self.limits.tls_handshake_timeout, read).await {
            Ok(Ok(proxied)) => Ok(proxied),
            Ok(Err(error)) => {
                tracing::debug!(%error, peer = %addr, "PROXY header refused; connection dropped");
                Err(())
            }
            Err(_) => {
                tracing::debug!(peer = %addr, "PROXY header timed out; connection dropped");
                Err(())
            }
        }
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(self.limits.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256);
        builder
    }
}
