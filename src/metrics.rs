//! Every metric family, registered once (SPEC §7 plus additions in the same style), and the admin listener that
//! serves `/metrics`, `/healthz` and `/readyz` — never on the public port.
//!
//! Label values come only from closed sets: source names from the config (`unmatched` for requests that match
//! none), event types from the presets, reasons and outcomes from enums.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::listener::{drive, Activity, IdleLimits};

/// Histogram buckets in seconds, around the providers' deadlines (10 s, 20 s).
const LATENCY_BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0];

/// Handles to every family. Cloning is cheap (the families are reference counted).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub events: IntCounterVec,
    pub retries: IntCounterVec,
    pub posting_errors: IntCounterVec,
    pub out_of_order: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub publish_retries: IntCounter,
    pub publish_confirm: Histogram,
    pub amqp_publishes: IntCounterVec,
    pub spool_events: IntGauge,
    pub spooled: IntCounterVec,
    pub spool_parked: IntGauge,
    pub spool_bytes: IntGauge,
    pub spool_quarantined: IntCounter,
    pub broker_connected: IntGauge,
    pub broker_blocked: IntGauge,
    pub request_body_bytes: HistogramVec,
    pub open_connections: IntGauge,
    pub tls_handshake_failures: IntCounterVec,
    /// SIGHUP reloads by outcome: `applied` or `refused`.
    pub config_reloads: IntCounterVec,
    pub rate_limiter_keys: IntGauge,
    /// Each source's `ack_timeout`, so dashboards and alerts compare latency with the provider's deadline.
    pub source_ack_timeout: GaugeVec,
    /// `storage.spool_max_bytes`, so an alert can compare `hookgate_spool_bytes` with the cap.
    pub spool_max_bytes: IntGauge,
    /// Unix time the process started (the conventional `process_start_time_seconds`): restarts show as changes.
    pub process_start_time: Gauge,
    /// The InstaMed polling families (`poll/metrics.rs`).
    pub poll: crate::poll::metrics::PollMetrics,
    /// Dedup "done" records not written after a confirmed store, by `store` (`local`, `shared`).
    pub dedup_record_failures: IntCounterVec,
    pub unroutable: IntCounterVec,
    pub tls_cert_expiry: IntGaugeVec,
    pub build_info: IntGaugeVec,
}

impl Metrics {
    /// Registers every family in a fresh registry.
    ///
    /// # Panics
    /// Only if a family is declared twice, which is a programming error caught by the tests.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let requests = counter_vec("hookgate_requests_total", "Deliveries answered.", &["source", "code"]);
        let events = counter_vec("hookgate_events_total", "New events stored.", &["source", "type"]);
        let retries =
            counter_vec("hookgate_retries_total", "Provider retries of an event already stored.", &["source"]);
        let posting_errors = counter_vec(
            "hookgate_posting_errors_total",
            "Deliveries not answered 2xx, by reason.",
            &["source", "reason"],
        );
        let out_of_order = counter_vec(
            "hookgate_out_of_order_total",
            "Events that arrived after a later one for the same subject.",
            &["source"],
        );
        let auth_failures =
            counter_vec("hookgate_auth_failures_total", "Deliveries refused by an auth method.", &["source", "method"]);
        let amqp_publishes = counter_vec(
            "hookgate_amqp_publishes_total",
            "Publishes to RabbitMQ by outcome (ack, nack, returned, error, timeout).",
            &["outcome"],
        );
        let spooled = counter_vec(
            "hookgate_spooled_total",
            "Events written to the spool, by why the broker did not take them (timeout, not_connected, ...).",
            &["reason"],
        );
        let spool_quarantined = IntCounter::new(
            "hookgate_spool_quarantined_total",
            "Unreadable spool records copied to spool/quarantine/, at start or while draining.",
        )
        .expect("valid counter");
        registry.register(Box::new(spool_quarantined.clone())).expect("registered once");
        let tls_handshake_failures =
            counter_vec("hookgate_tls_handshake_failures_total", "TLS handshakes that failed.", &["reason"]);
        let config_reloads =
            counter_vec("hookgate_config_reloads_total", "SIGHUP reloads, applied or refused.", &["outcome"]);
        // Both series exist from the start, so `increase(...{outcome="refused"}[1h]) > 0` sees the first refusal.
        for outcome in ["applied", "refused"] {
            config_reloads.with_label_values(&[outcome]);
        }
        let dedup_record_failures = counter_vec(
            "hookgate_dedup_record_failures_total",
            "Dedup records not written after an event was stored: a retry of it may be published again.",
            &["store"],
        );
        for store in ["local", "shared"] {
            dedup_record_failures.with_label_values(&[store]);
        }
        let publish_retries = IntCounter::new("hookgate_publish_retries_total", "Publishes to RabbitMQ tried again.")
            .expect("valid counter");
        registry.register(Box::new(publish_retries.clone())).expect("registered once");
        let request_duration = HistogramVec::new(
            HistogramOpts::new("hookgate_request_duration_seconds", "Receipt to answer.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["source"],
        )
        .expect("valid histogram");
        registry.register(Box::new(request_duration.clone())).expect("registered once");
        let publish_confirm = Histogram::with_opts(
            HistogramOpts::new("hookgate_publish_confirm_seconds", "Publish to broker confirm.")
                .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid histogram");
        registry.register(Box::new(publish_confirm.clone())).expect("registered once");
        let request_body_bytes = HistogramVec::new(
            HistogramOpts::new("hookgate_request_body_bytes", "Size of accepted request bodies.")
                .buckets(prometheus::exponential_buckets(256.0, 4.0, 8).expect("valid buckets")),
            &["source"],
        )
        .expect("valid histogram");
        registry.register(Box::new(request_body_bytes.clone())).expect("registered once");
        let source_ack_timeout = GaugeVec::new(
            Opts::new("hookgate_source_ack_timeout_seconds", "The source's ack_timeout (the provider's deadline)."),
            &["source"],
        )
        .expect("valid gauge");
        registry.register(Box::new(source_ack_timeout.clone())).expect("registered once");
        let process_start_time =
            Gauge::new("process_start_time_seconds", "Start time of the process since the Unix epoch, in seconds.")
                .expect("valid gauge");
        registry.register(Box::new(process_start_time.clone())).expect("registered once");
        process_start_time.set(unix_now());
        let poll = crate::poll::metrics::PollMetrics::register(&registry);
        let unroutable = counter_vec(
            "hookgate_unroutable_total",
            "Events no binding matched (kept in the alternate exchange or parked in the spool).",
            &["source"],
        );
        let (tls_cert_expiry, build_info) = info_gauges(&registry);
        Metrics {
            poll,
            spool_max_bytes: gauge("hookgate_spool_max_bytes", "storage.spool_max_bytes: the cap of the spool."),
            unroutable,
            tls_cert_expiry,
            build_info,
            spool_events: gauge("hookgate_spool_events", "Events waiting in the spool."),
            spool_bytes: gauge("hookgate_spool_bytes", "Bytes of undrained spool records (against spool_max_bytes)."),
            spool_parked: gauge(
                "hookgate_spool_parked_events",
                "Spooled events the broker returned as unroutable, waiting for a queue or alternate exchange.",
            ),
            broker_connected: gauge("hookgate_broker_connected", "1 when the broker connection is up."),
            broker_blocked: gauge(
                "hookgate_broker_blocked",
                "1 while the broker blocks publishing (connection.blocked: a resource alarm).",
            ),
            open_connections: gauge("hookgate_open_connections", "Open client connections on the public listener."),
            rate_limiter_keys: gauge(
                "hookgate_rate_limiter_keys",
                "Client addresses the per-client rate limiter tracks (at most rate_limits.max_clients).",
            ),
            registry,
            requests,
            request_duration,
            events,
            retries,
            posting_errors,
            out_of_order,
            auth_failures,
            publish_retries,
            publish_confirm,
            amqp_publishes,
            spooled,
            spool_quarantined,
            request_body_bytes,
            tls_handshake_failures,
            config_reloads,
            source_ack_timeout,
            process_start_time,
            dedup_record_failures,
        }
    }

    /// Publishes each source's `ack_timeout` (at start and after a reload); sources no longer configured vanish.
    pub fn set_ack_timeouts<'a>(&self, sources: impl IntoIterator<Item = (&'a str, std::time::Duration)>) {
        self.source_ack_timeout.reset();
        for (name, ack_timeout) in sources {
            self.source_ack_timeout.with_label_values(&[name]).set(ack_timeout.as_secs_f64());
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// `hookgate_tls_cert_expiry_timestamp_seconds{listener}` and `hookgate_build_info{version}` (always 1).
fn info_gauges(registry: &Registry) -> (IntGaugeVec, IntGaugeVec) {
    let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
        registry.register(Box::new(g.clone())).expect("registered once");
        g
    };
    let expiry = gauge_vec(
        "hookgate_tls_cert_expiry_timestamp_seconds",
        "notAfter of the served certificate, Unix seconds.",
        &["listener"],
    );
    let build = gauge_vec("hookgate_build_info", "The running build; always 1.", &["version"]);
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    (expiry, build)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_family_is_exposed() {
        let m = Metrics::new();
        m.requests.with_label_values(&["instamed", "200"]).inc();
        m.request_duration.with_label_values(&["instamed"]).observe(0.01);
        m.events.with_label_values(&["instamed", "payment.approved"]).inc();
        m.retries.with_label_values(&["instamed"]).inc();
        m.posting_errors.with_label_values(&["instamed", "auth"]).inc();
        m.out_of_order.with_label_values(&["instamed"]).inc();
        m.publish_confirm.observe(0.002);
        let text = m.render();
        for line in [
            "hookgate_requests_total{code=\"200\",source=\"instamed\"} 1",
            "hookgate_events_total{source=\"instamed\",type=\"payment.approved\"} 1",
            "hookgate_retries_total{source=\"instamed\"} 1",
            "hookgate_posting_errors_total{reason=\"auth\",source=\"instamed\"} 1",
            "hookgate_out_of_order_total{source=\"instamed\"} 1",
            "hookgate_publish_retries_total 0",
            "hookgate_publish_confirm_seconds_count 1",
            "hookgate_request_duration_seconds_count{source=\"instamed\"} 1",
            "hookgate_spool_events 0",
            "hookgate_broker_connected 0",
            "hookgate_config_reloads_total{outcome=\"applied\"} 0",
            "hookgate_config_reloads_total{outcome=\"refused\"} 0",
            "hookgate_rate_limiter_keys 0",
            "hookgate_spool_max_bytes 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn ack_timeouts_follow_the_configured_sources() {
        let m = Metrics::new();
        let s = std::time::Duration::from_secs;
        m.set_ack_timeouts([("instamed", s(20)), ("tyro", s(10))]);
        m.set_ack_timeouts([("instamed", s(15))]);
        let text = m.render();
        assert!(text.lines().any(|l| l == "hookgate_source_ack_timeout_seconds{source=\"instamed\"} 15"), "{text}");
        assert!(!text.contains("source=\"tyro\""), "a removed source keeps no deadline\n{text}");
    }

    #[test]
    fn process_start_time_is_set() {
        let text = Metrics::new().render();
        let start = text.lines().find_map(|l| l.strip_prefix("process_start_time_seconds "));
        assert!(start.and_then(|v| v.parse::<f64>().ok()).is_some_and(|t| t > 1.7e9), "{text}");
    }
}
