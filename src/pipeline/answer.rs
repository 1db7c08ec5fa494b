//! The last stage of the request path: the answer for a result, its metrics and its one log line (throttled
//! where a failure repeats on every request).

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;

use super::Gateway;
use crate::error::PipelineError;
use crate::respond::{self, Stored};
use crate::source::Source;

/// The one INFO line of a stored delivery: buffered and written out by the log thread (`telemetry.rs`), not one
/// `write(2)` per request.
fn delivery_line(name: &str, request_id: u64, event_id: Option<&str>, status: u16, outcome: Stored, latency_ms: f64) {
    tracing::info!(
        target: crate::telemetry::DELIVERY_TARGET,
        source = name,
        request_id,
        event_id,
        status,
        ?outcome,
        latency_ms,
        "delivery stored"
    );
}

impl Gateway {
    /// Turns the result into the answer, with its metrics and one log line.
    pub(super) fn finish(
        &self,
        source: Option<&Source>,
        request_id: u64,
        event_id: Option<&str>,
        started: Instant,
        result: Result<Stored, PipelineError>,
    ) -> Response<Full<Bytes>> {
        let retry_status = source.map_or(StatusCode::SERVICE_UNAVAILABLE, |s| s.retry_status);
        let resp = respond::response(&result, retry_status);
        let name = source.map_or("unmatched", |s| &s.name);
        let status = resp.status().as_u16();
        let latency = started.elapsed();
        self.metrics.requests.with_label_values(&[name, resp.status().as_str()]).inc();
        self.metrics.request_duration.with_label_values(&[name]).observe(latency.as_secs_f64());
        let latency_ms = (latency.as_secs_f64() * 1_000_000.0).round() / 1000.0;
        match &result {
            Ok(outcome) => delivery_line(name, request_id, event_id, status, *outcome, latency_ms),
            Err(error) => {
                self.metrics.posting_errors.with_label_values(&[name, error.reason()]).inc();
                self.log_error(name, request_id, event_id, status, error, latency_ms);
            }
        }
        resp
    }

    /// One log line for a delivery not stored: a sender's mistake at `warn`, a rate-limited one throttled (an
    /// attack must not flood the log), our own failure at `error`, throttled too (an outage must not either).
    fn log_error(
        &self,
        name: &str,
        request_id: u64,
        event_id: Option<&str>,
        status: u16,
        error: &PipelineError,
        latency_ms: f64,
    ) {
        let reason = error.reason();
        // The auth method that failed, never the value presented.
        let method = match error {
            PipelineError::Auth(e) => Some(e.method()),
            _ => None,
        };
        match (error, error.class()) {
            (PipelineError::RateLimited { limit, .. }, _) => self.limits.log_refusal(name, request_id, *limit),
            (_, crate::error::Class::Client | crate::error::Class::RateLimited) => {
                tracing::warn!(
                    source = name,
                    request_id,
                    event_id,
                    status,
                    reason,
                    method,
                    latency_ms,
                    "delivery refused"
                );
            }
            // Our own failure repeats on every request while it lasts (a full spool, a lost disk): one ERROR line
            // per STORE_ERROR_EVERY with the count, the rest at `debug`.
            _ => match self.store_errors.due() {
                Some(failed) => tracing::error!(
                    source = name,
                    request_id,
                    event_id,
                    status,
                    reason,
                    %error,
                    latency_ms,
                    failed,
                    "delivery not stored"
                ),
                None => tracing::debug!(
                    source = name,
                    request_id,
                    event_id,
                    status,
                    reason,
                    latency_ms,
                    "delivery not stored"
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{LogSink, LogWriter, Shared};

    #[test]
    fn the_delivery_line_is_buffered_not_written_per_request() {
        let out = Shared::default();
        let sink: &'static LogSink = Box::leak(Box::new(LogSink::new(Box::new(out.clone()))));
        let subscriber = tracing_subscriber::fmt().with_writer(LogWriter::on(sink)).with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, || {
            delivery_line("card", 7, Some("tx-1"), 200, Stored::Stored, 1.5);
        });
        assert!(out.0.lock().unwrap().is_empty(), "written at once: one write(2) per request");
        sink.flush();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("delivery stored") && text.contains("request_id=7"), "{text}");
    }
}
