//! The drainer: publishes spooled events in receipt order, one at a time with its confirm, and moves past a
//! record only after the broker confirmed it. Sequential on purpose: one publish in flight keeps the order of the
//! spool in the queue, and a local broker confirms in well under a millisecond.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Spool;
use crate::metrics::Metrics;
use crate::publish::{PublishError, Publisher};

const IDLE_POLL: Duration = Duration::from_millis(250);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Drains until `shutdown`; with `until_empty`, returns as soon as the spool is empty (the `spool replay`
/// command). Sets `replayed` the first time it sees the spool empty.
pub async fn run(
    spool: Spool,
    publisher: Publisher,
    metrics: Metrics,
    replayed: Arc<AtomicBool>,
    shutdown: CancellationToken,
    until_empty: bool,
) {
    let mut backoff = MIN_BACKOFF;
    let mut failures: u32 = 0;
    loop {
        metrics.spool_events.set(i64::try_from(spool.len()).unwrap_or(i64::MAX));
        if spool.is_empty() {
            if !replayed.swap(true, Ordering::AcqRel) {
                tracing::info!("spool replayed");
            }
            if until_empty {
                return;
            }
        }
        let pause = match next_step(&spool, &publisher, &metrics).await {
            Step::Drained => {
                backoff = MIN_BACKOFF;
                failures = 0;
                continue;
            }
            Step::Idle => IDLE_POLL,
            Step::Failed(error) => {
                failures += 1;
                if failures == 1 || failures % 50 == 0 {
                    tracing::warn!(error, failures, "spool drain: publish failed; retrying");
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                backoff
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = spool.inner.arrived.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

enum Step {
    Drained,
    Idle,
    Failed(String),
}

async fn next_step(spool: &Spool, publisher: &Publisher, metrics: &Metrics) -> Step {
    if !publisher.is_connected() {
        return Step::Idle;
    }
    let (seq, event) = match spool.front() {
        Ok(Some(front)) => front,
        Ok(None) => return Step::Idle,
        Err(e) => return Step::Failed(e.to_string()),
    };
    metrics.publish_retries.inc();
    let deadline = Instant::now() + publisher.publish_timeout();
    match publisher.publish(&event, deadline).await {
        Ok(()) => {}
        // A spooled event was already answered 200: an unroutable one stays at the head (and is logged) until a
        // queue or alternate exchange takes it — never dropped.
        Err(e @ PublishError::Returned) => return Step::Failed(format!("{e}; bind a queue or an alternate exchange")),
        Err(e) => return Step::Failed(e.to_string()),
    }
    let s = spool.clone();
    match tokio::task::spawn_blocking(move || s.advance(seq)).await {
        Ok(Ok(())) => Step::Drained,
        Ok(Err(e)) => Step::Failed(e.to_string()),
        Err(_) => Step::Failed("spool cursor task failed".into()),
    }
}
