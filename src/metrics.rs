//! Every metric family, registered once (SPEC §7 plus additions in the same style), and the admin listener that
//! serves `/metrics`, `/healthz` and `/readyz` — never on the public port.
//!
//! Label values come only from closed sets: source names from the config (`unmatched` for requests that match
//! none), event types from the presets, reasons and outcomes from enums.

mod admin;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub use admin::{serve_admin, Readiness};

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
    /// Bytes of the in-memory filter in front of `state.redb` (at most `storage.filter_bytes`).
    pub state_filter_bytes: IntGauge,
    /// Rows of the record log in memory, not yet folded into `state.redb`.
    pub state_log_rows: IntGauge,
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
    /// The spool's gauges: every event waiting in it (SPEC §7), parked ones included (SPEC §4: "parked in the
    /// spool"), and the parked share.
    pub fn set_spool_events(&self, spooled: usize, parked: usize) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.spool_events.set(count(spooled.saturating_add(parked)));
        self.spool_parked.set(count(parked));
    }

    /// Registers every family in a fresh registry.
    ///
    /// # Panics
    /// Only if a family is declared twice, which is a programming error caught by the tests.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let gauge = |name: &str, help: &str| register(&registry, IntGauge::new(name, help));
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
        let spool_quarantined = register(
            &registry,
            IntCounter::new(
                "hookgate_spool_quarantined_total",
                "Unreadable spool records copied to spool/quarantine/, at start or while draining.",
            ),
        );
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
        let publish_retries = register(
            &registry,
            IntCounter::new("hookgate_publish_retries_total", "Publishes to RabbitMQ tried again."),
        );
        let request_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new("hookgate_request_duration_seconds", "Receipt to answer.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["source"],
            ),
        );
        let publish_confirm = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new("hookgate_publish_confirm_seconds", "Publish to broker confirm.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
            ),
        );
        let request_body_bytes = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new("hookgate_request_body_bytes", "Size of accepted request bodies.")
                    .buckets(prometheus::exponential_buckets(256.0, 4.0, 8).expect("valid buckets")),
                &["source"],
            ),
        );
        let source_ack_timeout = register(
            &registry,
            GaugeVec::new(
                Opts::new("hookgate_source_ack_timeout_seconds", "The source's ack_timeout (the provider's deadline)."),
                &["source"],
            ),
        );
        let process_start_time = register(
            &registry,
            Gauge::new("process_start_time_seconds", "Start time of the process since the Unix epoch, in seconds."),
        );
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
            spool_events: gauge("hookgate_spool_events", "Events waiting in the spool, parked ones included."),
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
            state_filter_bytes: gauge(
                "hookgate_state_filter_bytes",
                "Bytes of the in-memory filter of the digests state.redb holds (at most storage.filter_bytes).",
            ),
            state_log_rows: gauge(
                "hookgate_state_log_rows",
                "Dedup and order rows the record log holds in memory, not yet folded into state.redb.",
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

/// Registers `family` in `registry` and returns it. Startup only: a family that is invalid or declared twice is a
/// programming error the tests catch.
///
/// # Panics
/// In that case.
pub(crate) fn register<C>(registry: &Registry, family: prometheus::Result<C>) -> C
where
    C: prometheus::core::Collector + Clone + 'static,
{
    let family = family.expect("valid metric family");
    registry.register(Box::new(family.clone())).expect("registered once");
    family
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// `hookgate_tls_cert_expiry_timestamp_seconds{listener}` and `hookgate_build_info{version}` (always 1).
fn info_gauges(registry: &Registry) -> (IntGaugeVec, IntGaugeVec) {
    let gauge_vec =
        |name: &str, help: &str, labels: &[&str]| register(registry, IntGaugeVec::new(Opts::new(name, help), labels));
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
