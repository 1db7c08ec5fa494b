//! Counting the events that the alternate exchange took (`hookgate_unroutable_total{source}`).
//!
//! RabbitMQ does not tell a publisher that its message went to the exchange's alternate exchange: the message
//! *was* routed (to the AE), so there is no `basic.return` and the confirm is a plain ack. So the gateway
//! watches the AE itself: each connection binds a private queue (server-named, exclusive, auto-delete, capped
//! at [`OBSERVER_MAX_LENGTH`] messages) to the fanout AE next to the durable `<exchange>.unrouted` queue, and
//! consumes from it with automatic acks. Every message the AE takes arrives there once.
//!
//! A fanout AE copies every message to every replica's private queue, so a replica counts only the messages
//! it published itself: each publish notes its `message_id` (the event id) and source in [`Tracker`] before it
//! is sent, and the observer counts a message only when it finds (and removes) its id there. The tracker keeps
//! the most recent 32,768 to 65,536 ids, so a copy that arrives after that many later publishes is not counted.
//! The count follows the `200 Stored` by the time the broker takes to deliver the copy (milliseconds).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ExchangeKind};

use crate::metrics::Metrics;

/// The private observer queue keeps at most this many messages (the oldest are dropped past it).
pub const OBSERVER_MAX_LENGTH: i64 = 10_000;
/// Ids per generation of the tracker; two generations are kept (at least 16 s of publishes at 4,000/s, where a
/// copy from the alternate exchange arrives within milliseconds), about 1.5 MB at most.
const GENERATION: usize = 32_768;

/// The ids this replica published recently, while an observer is consuming: 64-bit keyed hashes of the ids (no
/// copy of the id per publish), in two generations (bounded memory however long the process runs).
#[derive(Default)]
pub struct Tracker {
    /// Observers consuming (one per live connection; briefly two while one is replaced).
    observers: AtomicUsize,
    ids: Mutex<Generations>,
    hasher: RandomState,
}

#[derive(Default)]
struct Generations {
    current: HashMap<u64, Arc<str>>,
    previous: HashMap<u64, Arc<str>>,
}

impl Tracker {
    fn ids(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a publish of `id` for `source` (only while an observer runs).
    pub fn note(&self, id: &str, source: &Arc<str>) {
        if self.observers.load(Ordering::Acquire) == 0 {
            return;
        }
        let key = self.hasher.hash_one(id);
        let mut ids = self.ids();
        if ids.current.len() >= GENERATION {
            ids.previous = std::mem::take(&mut ids.current);
        }
        ids.current.insert(key, source.clone());
    }

    /// The source of a message this replica published, forgetting it.
    fn take(&self, id: &str) -> Option<Arc<str>> {
        let key = self.hasher.hash_one(id);
        let mut ids = self.ids();
        ids.current.remove(&key).or_else(|| ids.previous.remove(&key))
    }

    fn started(&self) {
        self.observers.fetch_add(1, Ordering::AcqRel);
    }

    fn stopped(&self) {
        if self.observers.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.ids() = Generations::default();
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        let ids = self.ids();
        ids.current.len() + ids.previous.len()
    }
}

/// Binds a private queue to the alternate exchange `ae` and spawns the task that counts what arrives there; the
/// task ends with the connection. `Ok(None)` when `ae` does not exist (nothing to watch).
///
/// # Errors
/// A channel or queue operation failed.
pub async fn observe(
    conn: &Connection,
    ae: &str,
    tracker: Arc<Tracker>,
    metrics: Metrics,
) -> Result<Option<tokio::task::JoinHandle<()>>, lapin::Error> {
    let ch = conn.create_channel().await?;
    // Passive: the AE is only watched, never created here (a failed passive declare closes just this channel).
    let passive = ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() };
    if ch.exchange_declare(ae.into(), ExchangeKind::Fanout, passive, FieldTable::default()).await.is_err() {
        return Ok(None);
    }
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(OBSERVER_MAX_LENGTH));
    let private = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
    let queue = ch.queue_declare("".into(), private, args).await?;
    ch.queue_bind(queue.name().clone(), ae.into(), "".into(), QueueBindOptions::default(), FieldTable::default())
        .await?;
    let consume = BasicConsumeOptions { no_ack: true, exclusive: true, ..BasicConsumeOptions::default() };
    let mut consumer =
        ch.basic_consume(queue.name().clone(), "hookgate-unrouted".into(), consume, FieldTable::default()).await?;
    tracker.started();
    Ok(Some(tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let id = delivery.properties.message_id().as_ref().map(|s| s.as_str().to_string()).unwrap_or_default();
            if let Some(source) = tracker.take(&id) {
                metrics.unroutable.with_label_values(&[&source]).inc();
                tracing::warn!(source = %source, "event unroutable: kept in the alternate exchange's queue");
            }
        }
        tracker.stopped();
        drop(ch);
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tracker_is_bounded_and_finds_what_it_noted_last() {
        let t = Tracker::default();
        let source: Arc<str> = Arc::from("card");
        t.note("before-any-observer", &source);
        assert_eq!(t.held(), 0, "nothing is noted while no observer runs");
        t.started();
        for i in 0..200_000 {
            t.note(&format!("id-{i}"), &source);
        }
        assert!(t.held() <= 2 * GENERATION, "{} held", t.held());
        assert_eq!(t.take("id-199999").as_deref(), Some("card"));
        assert_eq!(t.take("id-199999"), None, "taken once");
        assert_eq!(t.take("id-0"), None, "forgotten: older than two generations");
        t.stopped();
        assert_eq!(t.held(), 0);
    }
}
