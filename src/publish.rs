//! Publishing to RabbitMQ with publisher confirms (SPEC §4).
//!
//! One long-lived connection carries a small pool of confirm-mode channels; publishes on a channel are pipelined
//! (many in flight, each awaiting its own confirm). A supervisor of our own (lapin's auto-recovery is not used)
//! connects, declares the exchange, opens the channels, watches the connection and rebuilds everything with
//! back-off when it fails. While it is down, publishing fails at once, so the caller can answer (or, with the
//! spool, store locally) well inside the provider's deadline.
//!
//! The request path sees only the [`Sink`] trait; [`crate::store::Store`] wraps the publisher and the spool
//! behind the same trait.
//!
//! Layout: `message.rs` builds the CloudEvents AMQP message, `channel.rs` publishes on one confirm channel and
//! correlates returned (unroutable) messages, `supervisor.rs` owns the connection.

mod channel;
mod message;
mod supervisor;
mod unrouted;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::event::Event;
use crate::metrics::Metrics;
use crate::store::StoreError;

pub use message::amqp_message;

/// Declares the exchange and its alternate exchange exactly as the gateway does (for `hookgate tail`, which may
/// start first).
///
/// # Errors
/// The broker refused a declaration (other than the handled PRECONDITION_FAILED of an existing exchange).
pub async fn declare(conn: &lapin::Connection, settings: &Settings) -> Result<(), lapin::Error> {
    supervisor::declare(conn, settings).await
}

/// Why an event was not confirmed by the broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("broker not connected")]
    NotConnected,
    #[error("broker blocked the connection")]
    Blocked,
    #[error("no confirm before the publish timeout")]
    Timeout,
    #[error("broker nacked the message")]
    Nack,
    #[error("message unroutable (returned by the broker)")]
    Returned,
    #[error("channel error: {0}")]
    Channel(String),
    #[error("event cannot be encoded as an AMQP message: {0}")]
    Encode(&'static str),
}

impl PublishError {
    /// A closed label value for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PublishError::NotConnected => "not_connected",
            PublishError::Blocked => "blocked",
            PublishError::Timeout => "timeout",
            PublishError::Nack => "nack",
            PublishError::Returned => "returned",
            PublishError::Channel(_) => "channel",
            PublishError::Encode(_) => "encode",
        }
    }
}

/// Where the request path stores an accepted event. `Ok` means durable.
pub trait Sink: Send + Sync {
    /// Stores `event`, giving up at `deadline`.
    fn store<'a>(&'a self, event: &'a Event, deadline: Instant) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Whether the sink can take events now (for `/readyz`).
    fn ready(&self) -> bool;
}

/// Publisher settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The broker nodes (`broker.urls`, or the one of `broker.url`): tried in order, and in turn on reconnect.
    pub urls: Vec<String>,
    pub exchange: String,
    pub declare_exchange: bool,
    /// The fanout alternate exchange of `exchange` (with a durable queue of the same name); `None`: none.
    pub alternate_exchange: Option<String>,
    pub publish_timeout: Duration,
    /// Confirm channels in the pool.
    pub channels: usize,
}

/// The RabbitMQ publisher. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

struct Shared {
    settings: Settings,
    metrics: Metrics,
    pool: RwLock<Option<Arc<supervisor::Pool>>>,
    next: AtomicUsize,
    unrouted: Arc<unrouted::Tracker>,
}

impl Publisher {
    /// Creates the publisher and starts its connection supervisor; it runs until `shutdown`.
    pub fn start(
        settings: Settings,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let shared = Arc::new(Shared {
            settings,
            metrics,
            pool: RwLock::new(None),
            next: AtomicUsize::new(0),
            unrouted: Arc::default(),
        });
        let task = tokio::spawn(supervisor::run(shared.clone(), shutdown));
        (Publisher { shared }, task)
    }

    /// Waits until the broker connection is up or `timeout` passes; true when connected.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self.ready() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.ready()
    }

    /// Whether the connection is up and not blocked.
    pub fn is_connected(&self) -> bool {
        self.pool().is_some_and(|p| !p.blocked())
    }

    /// `broker.publish_timeout`.
    pub fn publish_timeout(&self) -> Duration {
        self.shared.settings.publish_timeout
    }

    fn pool(&self) -> Option<Arc<supervisor::Pool>> {
        self.shared.pool.read().map(|p| p.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Publishes one event and waits for its confirm, until `deadline` or `broker.publish_timeout`. An event the
    /// alternate exchange takes is counted in `hookgate_unroutable_total` (see `unrouted.rs`).
    ///
    /// # Errors
    /// Every way the broker can fail to confirm, as a [`PublishError`].
    pub async fn publish(&self, event: &Event, deadline: Instant) -> Result<(), PublishError> {
        self.publish_inner(event, deadline, true).await
    }

    /// [`Publisher::publish`] of an event already counted as unroutable (a parked one), so it is not counted
    /// again if the alternate exchange takes it.
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    pub async fn publish_parked(&self, event: &Event, deadline: Instant) -> Result<(), PublishError> {
        self.publish_inner(event, deadline, false).await
    }

    async fn publish_inner(&self, event: &Event, deadline: Instant, track: bool) -> Result<(), PublishError> {
        let pool = self.pool().ok_or(PublishError::NotConnected)?;
        if pool.blocked() {
            return Err(PublishError::Blocked);
        }
        let (routing_key, props) = amqp_message(event)?;
        let i = self.shared.next.fetch_add(1, Ordering::Relaxed) % pool.channels.len().max(1);
        let ch = pool.channels.get(i).ok_or(PublishError::NotConnected)?;
        let deadline = deadline.min(Instant::now() + self.shared.settings.publish_timeout);
        if track {
            self.shared.unrouted.note(&event.id, &event.source);
        }
        let started = Instant::now();
        let message = (routing_key, &event.body[..], props);
        let result = ch.publish(&self.shared.settings.exchange, message, &event.id, deadline).await;
        self.account(&pool, &result, started);
        result
    }

    /// Sends `event` and returns once it is on the wire, without waiting for its confirm ([`Sent::confirmed`]
    /// does). Every send goes on the pool's first channel, so a caller's sends reach the broker in the order it
    /// made them (the drainer's window). Refused at once, like [`Publisher::publish`], while the connection is
    /// down or blocked.
    ///
    /// # Errors
    /// As [`Publisher::publish`], for the part before the confirm.
    pub async fn send(&self, event: &Event, deadline: Instant) -> Result<Sent, PublishError> {
        let pool = self.pool().ok_or(PublishError::NotConnected)?;
        if pool.blocked() {
            return Err(PublishError::Blocked);
        }
        let (routing_key, props) = amqp_message(event)?;
        let ch = pool.channels.first().ok_or(PublishError::NotConnected)?;
        let deadline = deadline.min(Instant::now() + self.shared.settings.publish_timeout);
        self.shared.unrouted.note(&event.id, &event.source);
        let started = Instant::now();
        let message = (routing_key, &event.body[..], props);
        match ch.send(&self.shared.settings.exchange, message, deadline).await {
            Ok((seq, confirm)) => Ok(Sent {
                publisher: self.clone(),
                pool,
                seq,
                confirm: Some(confirm),
                id: event.id.clone(),
                deadline,
                started,
                counted: false,
            }),
            Err(e) => {
                self.account(&pool, &Err(e.clone()), started);
                Err(e)
            }
        }
    }

    /// Counts a publish's outcome; a channel error asks the supervisor to rebuild.
    fn account(&self, pool: &supervisor::Pool, result: &Result<(), PublishError>, started: Instant) {
        let outcome = match result {
            Ok(()) => "ack",
            Err(PublishError::Nack) => "nack",
            Err(PublishError::Returned) => "returned",
            Err(PublishError::Timeout) => "timeout",
            Err(_) => "error",
        };
        self.shared.metrics.amqp_publishes.with_label_values(&[outcome]).inc();
        if result.is_ok() {
            self.shared.metrics.publish_confirm.observe(started.elapsed().as_secs_f64());
        }
        if matches!(result, Err(PublishError::Channel(_))) {
            pool.mark_broken();
        }
    }
}

/// A message [`Publisher::send`] put on the wire, its confirm not yet awaited. Dropped without
/// [`Sent::confirmed`] (the drainer gives up on the rest of a window after a failure, or stops), it is counted
/// as `hookgate_amqp_publishes_total{outcome="timeout"}`: the broker may have it, so it may be published twice.
pub struct Sent {
    publisher: Publisher,
    pool: Arc<supervisor::Pool>,
    seq: u64,
    confirm: Option<lapin::PublisherConfirm>,
    id: String,
    deadline: Instant,
    started: Instant,
    counted: bool,
}

impl Sent {
    /// Waits for the confirm until the send's deadline; the outcome is counted as for [`Publisher::publish`].
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    pub async fn confirmed(mut self) -> Result<(), PublishError> {
        let (Some(confirm), Some(ch)) = (self.confirm.take(), self.pool.channels.first()) else {
            return Err(PublishError::NotConnected);
        };
        let result = ch.confirmed(self.seq, confirm, &self.id, self.deadline).await;
        self.publisher.account(&self.pool, &result, self.started);
        self.counted = true;
        result
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        if let Some(ch) = self.pool.channels.first() {
            ch.settle(self.seq);
        }
        if !self.counted {
            self.publisher.shared.metrics.amqp_publishes.with_label_values(&["timeout"]).inc();
        }
    }
}

impl Sink for Publisher {
    fn store<'a>(&'a self, event: &'a Event, deadline: Instant) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { Ok(self.publish(event, deadline).await?) })
    }

    fn ready(&self) -> bool {
        self.is_connected()
    }
}
