//! The durable sink: the broker first, the spool when the broker cannot confirm in time (SPEC §2).
//!
//! `Ok` from [`Store`] means one of: RabbitMQ confirmed the persistent message, or the event was appended to the
//! spool and fsynced. Broker failures that a later publish can cure (not connected, blocked, no confirm before
//! `broker.publish_timeout`, nack, channel error) go to the spool. An unroutable event (returned: no queue bound
//! and no alternate exchange, SPEC §4) is not refused: it is appended to the *parked* spool (fsynced), counted in
//! `hookgate_unroutable_total`, answered `200 Stored`, and published by the drainer once a binding exists.
//!
//! While the spool holds records (and until the start-up replay has finished) new events go straight to the
//! spool, behind the older ones, so the drainer publishes everything in receipt order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::event::Event;
use crate::metrics::Metrics;
use crate::publish::{amqp_message, PublishError, Publisher, Sink};
use crate::spool::{Spool, SpoolError};

/// Kept from the answer deadline for the spool append after a broker attempt.
const SPOOL_RESERVE: Duration = Duration::from_millis(250);

/// Why an event is not durable.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Broker + spool behind the [`Sink`] trait.
pub struct Store {
    publisher: Publisher,
    spool: Spool,
    /// Events the broker returned as unroutable, waiting for a binding.
    parked: Spool,
    /// True once the drainer has seen the spool empty after start.
    replayed: Arc<AtomicBool>,
    metrics: Metrics,
}

impl Store {
    pub fn new(
        publisher: Publisher,
        (spool, parked): (Spool, Spool),
        replayed: Arc<AtomicBool>,
        metrics: Metrics,
    ) -> Self {
        Store { publisher, spool, parked, replayed, metrics }
    }

    async fn store(&self, event: &Event, deadline: Instant) -> Result<(), StoreError> {
        if !self.spool.is_empty() || !self.replayed.load(Ordering::Acquire) {
            return self.spool_it(event, "behind_spool").await;
        }
        let broker_deadline = deadline.checked_sub(SPOOL_RESERVE).unwrap_or(deadline).max(Instant::now());
        match self.publisher.publish(event, broker_deadline).await {
            Ok(()) => Ok(()),
            Err(PublishError::Returned) => self.park(event).await,
            Err(e @ PublishError::Encode(_)) => Err(e.into()),
            Err(e) => self.spool_it(event, e.kind()).await,
        }
    }

    /// Parks an event the broker returned (so it was encoded: it can be published later).
    async fn park(&self, event: &Event) -> Result<(), StoreError> {
        self.parked.append(event).await?;
        self.metrics.set_spool_events(self.spool.len(), self.parked.len());
        self.metrics.unroutable.with_label_values(&[&event.source]).inc();
        tracing::warn!(source = %event.source, "event unroutable (no binding, no alternate exchange): parked");
        Ok(())
    }

    /// Appends `event` to the spool. An event that cannot become an AMQP message is refused before it could sit
    /// there (on the broker path, the publish itself refuses it).
    async fn spool_it(&self, event: &Event, why: &'static str) -> Result<(), StoreError> {
        amqp_message(event)?;
        let seq = self.spool.append(event).await?;
        self.metrics.set_spool_events(self.spool.len(), self.parked.len());
        self.metrics.spool_bytes.set(i64::try_from(self.spool.bytes()).unwrap_or(i64::MAX));
        self.metrics.spooled.with_label_values(&[why]).inc();
        tracing::debug!(seq, why, "event spooled");
        Ok(())
    }
}

impl Sink for Store {
    fn store<'a>(&'a self, event: &'a Event, deadline: Instant) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::store(self, event, deadline))
    }

    /// SPEC §7: the broker or the spool can take events. Not gated on the start-up replay: while it runs, new
    /// events queue behind it in the spool, which can take them; a pod restarted during a broker outage that waited
    /// for the replay would stay out of its Service until the broker came back.
    fn ready(&self) -> bool {
        self.publisher.is_connected() || self.spool.can_take()
    }
}
