//! The public accept loop: a connection cap taken *before* accepting (past it, new connections wait in the
//! kernel backlog), one task per connection, and a drain that closes idle connections at once and waits for
//! the requests in flight up to `drain_timeout`.
//!
//! - `listener/conn.rs`: one connection — PROXY header, TLS handshake (HTTP/2 or HTTP/1.1 by ALPN) or a bounded
//!   sniff on plain HTTP, hyper with its timer.
//! - `listener/idle.rs`: no connection holds a slot without a request in flight past `header_read_timeout`
//!   (before its first request) or `idle_timeout` (between requests).
//! - `listener/late.rs`: an HTTP/1.1 head that is late is answered `408` before the close.
//! - `listener/sniff.rs`: HTTP/2 prior knowledge vs HTTP/1.1 on plain HTTP.

mod conn;
mod idle;
mod late;
mod sniff;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use idle::{drive, Activity, Busy, IdleLimits};

use crate::metrics::Metrics;
use crate::pipeline::Gateway;

/// Connection-level limits (SPEC §5, `[server]`).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// `server.idle_timeout`: a kept-alive connection with no request in flight this long is closed.
    pub idle_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    pub drain_timeout: Duration,
    /// `server.trusted_proxies`: the peers whose PROXY header or `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// `server.proxy_protocol`: every connection opens with a PROXY v2 header.
    pub proxy_protocol: bool,
}

/// Serves the public listener until `shutdown`, then drains: stop accepting, close idle connections, ask the
/// others to finish their in-flight requests, and wait for them up to `drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<crate::tls::Current>,
    gateway: Arc<Gateway>,
    limits: Limits,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let drain_timeout = limits.drain_timeout;
    let shared = Arc::new(conn::Shared::new(tls, gateway, limits, metrics));
    let tasks = TaskTracker::new();
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
        let (shared, drain) = (shared.clone(), shutdown.clone());
        tasks.spawn(async move {
            shared.metrics.open_connections.inc();
            shared.run(stream, addr, &drain).await;
            shared.metrics.open_connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(drain_timeout, tasks.wait()).await.is_err() {
        tracing::warn!("drain timeout passed with connections still open");
    }
}
