//! Out-of-order detection (SPEC §3): an event whose `time` is earlier than, or whose `rank` is below, the
//! latest already seen for the same `(source, subject)` is still published, flagged `cloudEvents_outoforder`.
//!
//! # Invariants
//!
//! - The state per subject is the maximum time and the maximum rank seen, each kept on its own; it only grows.
//! - It is checked and raised in one step (under a lock here; a Lua compare-and-set in Redis with
//!   `storage.shared`), after the dedup claim, so a provider retry is never compared with itself.
//! - The state is advisory: it is persisted in the next state commit (not awaited) and kept for the source's
//!   `dedup_window`. A failed read counts the event as in order.
//! - An event whose id is its subject (`prepaid-card`: `TransactionId` is both) keeps no state and is never
//!   late: every other delivery for that subject has the same id, so it is a retry — a duplicate inside the
//!   window (never compared), or after it a delivery of the same event (same time and rank: not late). This
//!   saves a row per event in `state.redb` (and a Redis call with `storage.shared`). A source whose id fields
//!   differ from its subject field but yield the same value for some events would not compare those.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::dedup::redis::Shared;
use crate::event::Event;
use crate::state::{digest, now_ms, Digest, Op, State};

/// Subjects one generation of the cache holds (about 270 KiB); the latest this many are always in memory.
const CACHE: usize = 7 * 1024;

/// The order state.
pub struct Order {
    state: State,
    shared: Option<Shared>,
    /// The latest subjects' state, in front of the database.
    cache: Mutex<Cache>,
}

/// Latest (time ms or `i64::MIN`, rank) per key digest (as `state.redb` keys it), for the most recent
/// subjects: two generations of at most [`CACHE`] subjects each; when the current one is full it becomes the
/// previous one (the older previous one is dropped), so the latest `CACHE` subjects are always here. That covers
/// the time between an event's state and its commit (the record log's memory generations answer after it), and
/// memory stays fixed: a single map cleared at 100,000 subjects grew to ~4 MiB (~6 while it resized), a tenth of
/// the gateway's memory at 2,000/s (`docs/benchmarks.md`).
#[derive(Default)]
struct Cache {
    current: HashMap<Digest, (i64, u8)>,
    previous: HashMap<Digest, (i64, u8)>,
}

impl Cache {
    fn get(&self, d: &Digest) -> Option<(i64, u8)> {
        self.current.get(d).or_else(|| self.previous.get(d)).copied()
    }

    fn insert(&mut self, d: Digest, value: (i64, u8)) {
        if self.current.len() >= CACHE && !self.current.contains_key(&d) {
            // Both maps keep their allocations: after the first two generations nothing is allocated here.
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
        self.current.insert(d, value);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

impl Order {
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn new(state: State, shared: Option<Shared>) -> Self {
        Order { state, shared, cache: Mutex::default() }
    }

    /// Records `event` and answers whether it arrived after a later one for the same subject.
    pub async fn observe(&self, event: &Event, window: Duration) -> bool {
        let Some(subject) = &event.subject else { return false };
        if (event.time.is_none() && event.rank.is_none()) || *subject == event.id {
            return false;
        }
        let key = crate::dedup::key(&event.source, subject);
        let time = event.time.map(|t| t.timestamp_millis());
        let rank = event.rank.unwrap_or(0);
        if let Some(shared) = &self.shared {
            match shared.observe_order(&key, time, rank, window).await {
                Ok(late) => return late,
                Err(error) => tracing::warn!(%error, "shared order state unavailable; using the local one"),
            }
        }
        self.observe_local(key, time.unwrap_or(i64::MIN), rank, window).await
    }

    async fn observe_local(&self, key: String, time: i64, rank: u8, window: Duration) -> bool {
        let d = digest(&key);
        let cached = self.cache().get(&d);
        let stored = match cached {
            Some(c) => Some(c),
            None => self.state.lookup_order(&key).await.ok().flatten().map(|(t, r, _)| (t, r)),
        };
        let mut cache = self.cache();
        // An event for the same subject may have raised it during the read: the cached value is never older.
        let current = cache.get(&d).or(stored);
        let (late, max) = compare(current, time, rank);
        cache.insert(d, max);
        drop(cache);
        let expires_ms = now_ms() + u64::try_from(window.as_millis()).unwrap_or(u64::MAX / 2);
        self.state.write_later(vec![Op::Order { key, time_ms: max.0, rank: max.1, expires_ms }]);
        late
    }
}

/// Whether (time, rank) is behind `current`, and the new maximum. `i64::MIN` / 0 mean "none".
fn compare(current: Option<(i64, u8)>, time: i64, rank: u8) -> (bool, (i64, u8)) {
    let Some((ct, cr)) = current else { return (false, (time, rank)) };
    let late = (time != i64::MIN && time < ct) || (rank > 0 && rank < cr);
    (late, (time.max(ct), rank.max(cr)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn event(id: &str, subject: &str, time_ms: i64) -> Event {
        Event {
            source: Arc::from("s"),
            id: id.into(),
            kind: "k".into(),
            subject: Some(subject.into()),
            time: chrono::DateTime::from_timestamp_millis(time_ms),
            rank: None,
            received_at: chrono::Utc::now(),
            content_type: "application/json".into(),
            body: bytes::Bytes::new(),
            out_of_order: false,
        }
    }

    const WINDOW: Duration = Duration::from_secs(60);

    /// An order state of its own, without Redis (the directory lives as long as the first value).
    fn local() -> (tempfile::TempDir, State, Order) {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let order = Order::new(state.clone(), None);
        (dir, state, order)
    }

    #[tokio::test]
    async fn an_event_whose_id_is_its_subject_keeps_no_state_and_shared_subjects_are_compared() {
        let (_dir, state, order) = local();
        assert!(!order.observe(&event("card-1", "card-1", 2_000), WINDOW).await);
        assert!(!order.observe(&event("tx-1:settlement", "tx-1", 2_000), WINDOW).await);
        assert!(order.observe(&event("tx-1:approved", "tx-1", 1_000), WINDOW).await, "earlier time, same subject");
        // A write queued after the order writes is committed after them.
        state.write(vec![]).await.unwrap();
        assert_eq!(crate::state::rows(&state).unwrap(), (0, 1), "one order row, for the shared subject only");
        assert_eq!(state.order_of(&crate::dedup::key("s", "tx-1")).unwrap().map(|(t, r, _)| (t, r)), Some((2_000, 0)));
        assert_eq!(state.order_of(&crate::dedup::key("s", "card-1")).unwrap(), None);
    }

    #[tokio::test]
    async fn the_cache_keeps_the_latest_subjects_within_two_generations() {
        let (_dir, state, order) = local();
        assert!(!order.observe(&event("first:settled", "first", 2_000), WINDOW).await);
        for i in 0..3 * CACHE {
            let subject = format!("tx-{i}");
            assert!(!order.observe(&event(&format!("{subject}:approved"), &subject, 2_000), WINDOW).await);
            assert!(order.cache().len() <= 2 * CACHE, "{} subjects in memory after {i}", order.cache().len());
        }
        // The latest CACHE subjects are in memory whatever the state commits did meanwhile.
        for i in 2 * CACHE..3 * CACHE {
            let d = digest(&crate::dedup::key("s", &format!("tx-{i}")));
            assert_eq!(order.cache().get(&d), Some((2_000, 0)), "subject {i}");
        }
        // A subject that left memory is read back from the state.
        state.write(vec![]).await.unwrap();
        assert!(order.observe(&event("first:approved", "first", 1_000), WINDOW).await, "earlier time, same subject");
    }

    #[test]
    fn a_full_generation_becomes_the_previous_one() {
        let mut cache = Cache::default();
        let d = |i: usize| digest(&i.to_string());
        for i in 0..CACHE {
            cache.insert(d(i), (i as i64, 0));
        }
        cache.insert(d(0), (-1, 1));
        assert_eq!((cache.current.len(), cache.previous.len()), (CACHE, 0), "an update is not a new subject");
        cache.insert(d(CACHE), (0, 0));
        assert_eq!((cache.current.len(), cache.previous.len()), (1, CACHE));
        assert_eq!(cache.get(&d(0)), Some((-1, 1)), "found in the previous generation");
        cache.insert(d(1), (5, 5));
        assert_eq!(cache.get(&d(1)), Some((5, 5)), "the current generation answers first");
    }

    #[test]
    fn earlier_time_or_lower_rank_is_late() {
        assert_eq!(compare(None, 10, 1), (false, (10, 1)));
        assert_eq!(compare(Some((10, 2)), 5, 3), (true, (10, 3)), "earlier time");
        assert_eq!(compare(Some((10, 2)), 20, 1), (true, (20, 2)), "lower rank (settlement before approval)");
        assert_eq!(compare(Some((10, 2)), 20, 2), (false, (20, 2)));
        assert_eq!(compare(Some((10, 2)), i64::MIN, 0), (false, (10, 2)), "nothing to compare");
    }
}
