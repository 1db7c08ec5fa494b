//! The admin listener: `/metrics`, `/healthz` and `/readyz` (what [`Readiness`] says), never on the public port.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Metrics;
use crate::listener::{drive, Activity, IdleLimits};

/// What `/readyz` looks at.
#[derive(Default)]
pub struct Readiness {
    pub listener_up: AtomicBool,
    pub draining: AtomicBool,
    /// The root shutdown token: once cancelled (SIGTERM), `/readyz` is 503 until the process exits.
    pub shutdown: CancellationToken,
    pub store_ready: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.listener_up.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && !self.shutdown.is_cancelled()
            && self.store_ready.as_ref().is_some_and(|f| f())
    }
}

/// Admin connections served at once; past it, new ones wait in the kernel backlog.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Serves the admin endpoints (HTTP/1.1) until `shutdown`. A connection that has sent no complete request by
/// `timeout` after it opened or after its last answer is closed, so silent sockets cannot hold the probes off.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Metrics,
    ready: Arc<Readiness>,
    timeout: std::time::Duration,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(ADMIN_MAX_CONNECTIONS));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(timeout).max_buf_size(64 * 1024);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            () = shutdown.cancelled() => return,
        };
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let (metrics, ready, http1, shutdown) = (metrics.clone(), ready.clone(), http1.clone(), shutdown.clone());
        tokio::spawn(async move {
            let activity = Activity::new();
            let svc = {
                let activity = activity.clone();
                hyper::service::service_fn(move |req| {
                    let _busy = activity.begin();
                    let out = admin_answer(&req, &metrics, &ready);
                    async move { Ok::<_, Infallible>(out) }
                })
            };
            let conn = http1.serve_connection(TokioIo::new(stream), svc);
            drive(conn, &activity, IdleLimits { first: timeout, between: timeout }, &shutdown).await;
            drop(permit);
        });
    }
}

fn admin_answer(req: &Request<Incoming>, metrics: &Metrics, ready: &Readiness) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", metrics.render()),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if ready.is_ready() => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n".to_string()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp
}
