//! One public connection, start to end: the PROXY header, the TLS handshake (protocol from ALPN) or, on plain
//! HTTP, a sniff of the first bytes bounded by `header_read_timeout`, then hyper's HTTP/1.1 or HTTP/2 under the
//! idle watcher. Everything before hyper stops at once when the listener drains.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::idle::{drive, Activity, IdleLimits};
use super::late::LateAnswer;
use super::sniff::{sniff, Proto, Rewind};
use super::Limits;
use crate::auth::Peer;
use crate::http::service;
use crate::metrics::Metrics;
use crate::pipeline::Gateway;

/// What every connection of the listener shares.
pub(super) struct Shared {
    /// The TLS config is taken per connection, so a reload's certificate serves the next handshake.
    pub tls: Option<crate::tls::Current>,
    pub gateway: Arc<Gateway>,
    pub limits: Limits,
    pub metrics: Metrics,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

type ClientCerts = Option<Arc<Vec<rustls_pki_types::CertificateDer<'static>>>>;

/// A connection ready for hyper: its stream, protocol and client certificates.
struct Ready<I> {
    io: I,
    proto: Proto,
    certs: ClientCerts,
}

impl Shared {
    pub fn new(tls: Option<crate::tls::Current>, gateway: Arc<Gateway>, limits: Limits, metrics: Metrics) -> Shared {
        let (http1, http2) = builders(&limits);
        Shared { tls, gateway, limits, metrics, http1, http2 }
    }

    /// Serves one accepted connection until it ends, idles out or `drain` has closed it.
    pub async fn run(&self, mut stream: TcpStream, addr: SocketAddr, drain: &CancellationToken) {
        let start = async {
            let proxied = self.proxy_header(&mut stream, addr).await.ok()?;
            Some((proxied, stream))
        };
        let Some((proxied, stream)) = until_drain(drain, start).await else { return };
        let peer =
            |client_certs| Peer { addr, client_certs, proxied, trusted_proxies: self.limits.trusted_proxies.clone() };
        match &self.tls {
            Some(current) => {
                let handshake = self.tls_handshake(current.acceptor(), stream, addr);
                let Some(ready) = until_drain(drain, handshake).await else { return };
                self.serve(ready.io, ready.proto, peer(ready.certs), drain).await;
            }
            None => {
                let Some(ready) = until_drain(drain, self.plain(stream)).await else { return };
                self.serve(ready.io, ready.proto, peer(ready.certs), drain).await;
            }
        }
    }

    /// The TLS handshake under `tls_handshake_timeout`; the protocol is the one ALPN settled on.
    async fn tls_handshake(
        &self,
        acceptor: TlsAcceptor,
        stream: TcpStream,
        addr: SocketAddr,
    ) -> Option<Ready<tokio_rustls::server::TlsStream<TcpStream>>> {
        let tls = match tokio::time::timeout(self.limits.tls_handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                self.metrics.tls_handshake_failures.with_label_values(&["error"]).inc();
                tracing::debug!(%error, peer = %addr, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                self.metrics.tls_handshake_failures.with_label_values(&["timeout"]).inc();
                tracing::debug!(peer = %addr, "TLS handshake timed out");
                return None;
            }
        };
        let session = tls.get_ref().1;
        let proto = Proto::from_alpn(session.alpn_protocol());
        let certs = session.peer_certificates().map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()));
        Some(Ready { io: tls, proto, certs })
    }

    /// Plain HTTP: the first bytes tell the protocol; a peer that sends too few of them by `header_read_timeout`
    /// is closed.
    async fn plain(&self, mut stream: TcpStream) -> Option<Ready<Rewind<TcpStream>>> {
        match tokio::time::timeout(self.limits.header_read_timeout, sniff(&mut stream)).await {
            Ok(Ok((proto, prefix))) => Some(Ready { io: Rewind::new(prefix, stream), proto, certs: None }),
            Ok(Err(_)) | Err(_) => None,
        }
    }

    async fn serve<I>(&self, io: I, proto: Proto, peer: Peer, drain: &CancellationToken)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let svc = service(self.gateway.clone(), peer, activity.clone());
        let (first, idle) = (self.limits.header_read_timeout, self.limits.idle_timeout);
        match proto {
            Proto::Http1 => {
                // The next head is due `header_read_timeout` after each answer too: the smaller limit wins.
                let limits = IdleLimits { first, between: idle.min(first) };
                let io = TokioIo::new(LateAnswer::new(io, activity.clone()));
                drive(self.http1.serve_connection(io, svc), &activity, limits, drain).await;
            }
            Proto::Http2 => {
                let limits = IdleLimits { first, between: idle };
                drive(self.http2.serve_connection(TokioIo::new(io), svc), &activity, limits, drain).await;
            }
        }
    }

    /// With `proxy_protocol`, reads the PROXY v2 header (under the handshake timeout). `Err`: drop the
    /// connection (untrusted peer, malformed or missing header).
    async fn proxy_header(&self, stream: &mut TcpStream, addr: SocketAddr) -> Result<Option<SocketAddr>, ()> {
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
}

/// `fut`'s output, or `None` once the listener drains.
async fn until_drain<T>(drain: &CancellationToken, fut: impl std::future::Future<Output = Option<T>>) -> Option<T> {
    tokio::select! {
        out = fut => out,
        () = drain.cancelled() => None,
    }
}

/// hyper's HTTP/1.1 and HTTP/2 servers with their timer and the `[server]` limits.
fn builders(
    limits: &Limits,
) -> (hyper::server::conn::http1::Builder, hyper::server::conn::http2::Builder<TokioExecutor>) {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        // A backstop only: the idle watcher closes a late head first, so that it is answered `408` (`late.rs`).
        .header_read_timeout(limits.header_read_timeout + HEADER_BACKSTOP)
        // hyper counts the raw head (request line, separators); the exact cap on names and values is checked per
        // request (`http::check_header_bytes`), so this bound leaves room for the request line and framing.
        .max_header_size(raw_head_bytes(limits.max_header_bytes))
        .max_buf_size(raw_head_bytes(limits.max_header_bytes).max(64 * 1024));
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        // RFC 9113 counts 32 bytes per field on top of name and value.
        .max_header_list_size(u32::try_from(limits.max_header_bytes + 32 * 100).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .keep_alive_interval(ping_interval(limits.idle_timeout))
        .keep_alive_timeout(limits.header_read_timeout);
    (http1, http2)
}

/// How long after `header_read_timeout` hyper's own header timer would close a connection the idle watcher has
/// not (it always has: the watcher's limit is the same timeout, counted from no later).
const HEADER_BACKSTOP: std::time::Duration = std::time::Duration::from_secs(1);

/// The raw HTTP/1.1 head hyper may buffer: the header cap plus room for a request line of 8 KiB and the
/// separators of hyper's at most 100 fields.
fn raw_head_bytes(max_header_bytes: usize) -> usize {
    max_header_bytes + 8 * 1024 + 4 * 100
}

/// HTTP/2 keep-alive pings: half the idle limit, between 1 s and 30 s.
fn ping_interval(idle: std::time::Duration) -> std::time::Duration {
    (idle / 2).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(30))
}
