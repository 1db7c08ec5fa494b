//! The polling families (SPEC §7, §8), registered by `metrics.rs` with the rest.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Registration to outcome: from seconds (tests, fast payers) to InstaMed's 15-minute token life.
const DURATION_BUCKETS: [f64; 14] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0];

#[derive(Clone)]
pub struct PollMetrics {
    /// `hookgate_poll_jobs{poller,state}`: jobs held in `data_dir`, by state.
    pub jobs: IntGaugeVec,
    /// `hookgate_poll_requests_total{poller,call,outcome}`.
    pub requests: IntCounterVec,
    /// `hookgate_poll_duration_seconds{poller}`: registration to outcome (complete, expired or failed).
    pub duration: HistogramVec,
}

impl PollMetrics {
    /// # Panics
    /// Only if a family is declared twice (a programming error caught by the tests).
    pub fn register(registry: &Registry) -> Self {
        let jobs = crate::metrics::register(
            registry,
            IntGaugeVec::new(
                Opts::new("hookgate_poll_jobs", "Polling jobs held in data_dir, by state."),
                &["poller", "state"],
            ),
        );
        let requests = crate::metrics::register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "hookgate_poll_requests_total",
                    "Calls to the provider's polling API (token_status, view_receipt), by outcome.",
                ),
                &["poller", "call", "outcome"],
            ),
        );
        let duration = crate::metrics::register(
            registry,
            HistogramVec::new(
                HistogramOpts::new("hookgate_poll_duration_seconds", "Polling job registration to outcome.")
                    .buckets(DURATION_BUCKETS.to_vec()),
                &["poller"],
            ),
        );
        PollMetrics { jobs, requests, duration }
    }
}
