//! The idempotency index: each event id is either in flight (one delivery is storing it; identical deliveries
//! wait for its outcome) or done (stored; retries inside `dedup_window` are duplicates).
//!
//! This is the in-process index; a failed store releases its claim so the provider's retry can proceed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

type Key = (Arc<str>, String);

enum Entry {
    InFlight(Arc<Notify>),
    Done(Instant),
}

/// What a claim found.
pub enum Claim {
    /// First delivery of this id: store it, then [`ClaimGuard::complete`].
    New(ClaimGuard),
    /// Already stored inside its window.
    Duplicate,
    /// Another delivery of the same id is still being stored and did not finish before the deadline.
    Busy,
}

/// The in-memory index. Cheap to clone.
#[derive(Clone, Default)]
pub struct Dedup {
    entries: Arc<Mutex<HashMap<Key, Entry>>>,
}

impl Dedup {
    pub fn new() -> Self {
        Dedup::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `(source, id)`; waits (until `deadline`) while an identical delivery is in flight.
    pub async fn claim(&self, source: &Arc<str>, id: &str, deadline: Instant) -> Claim {
        let key = (source.clone(), id.to_string());
        loop {
            let notify = {
                let mut entries = self.lock();
                match entries.get(&key) {
                    Some(Entry::Done(until)) if *until > Instant::now() => return Claim::Duplicate,
                    Some(Entry::InFlight(n)) => n.clone(),
                    _ => {
                        let n = Arc::new(Notify::new());
                        entries.insert(key.clone(), Entry::InFlight(n));
                        return Claim::New(ClaimGuard { dedup: self.clone(), key: Some(key) });
                    }
                }
            };
            let waiting = notify.notified();
            // The holder may have finished between the lock and here; re-check before sleeping.
            if !matches!(self.lock().get(&key), Some(Entry::InFlight(_))) {
                continue;
            }
            if tokio::time::timeout_at(deadline, waiting).await.is_err() {
                return Claim::Busy;
            }
        }
    }

    /// Drops expired entries (called periodically).
    pub fn purge(&self) {
        let now = Instant::now();
        self.lock().retain(|_, e| !matches!(e, Entry::Done(until) if *until <= now));
    }
}

/// Holds an in-flight claim. Dropped without [`complete`](ClaimGuard::complete), it releases the id.
pub struct ClaimGuard {
    dedup: Dedup,
    key: Option<Key>,
}

impl ClaimGuard {
    /// Marks the id stored for `window`.
    pub fn complete(mut self, window: Duration) {
        if let Some(key) = self.key.take() {
            let old = self.dedup.lock().insert(key, Entry::Done(Instant::now() + window));
            if let Some(Entry::InFlight(n)) = old {
                n.notify_waiters();
            }
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            if let Some(Entry::InFlight(n)) = self.dedup.lock().remove(&key) {
                n.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn second_claim_is_a_duplicate_until_the_window_ends() {
        let d = Dedup::new();
        let src: Arc<str> = Arc::from("s");
        let Claim::New(g) = d.claim(&src, "a", far()).await else { panic!("first claim") };
        g.complete(Duration::from_millis(50));
        assert!(matches!(d.claim(&src, "a", far()).await, Claim::Duplicate));
        assert!(matches!(d.claim(&Arc::from("other"), "a", far()).await, Claim::New(_)));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(matches!(d.claim(&src, "a", far()).await, Claim::New(_)));
    }

    #[tokio::test]
    async fn waiters_follow_the_first_outcome() {
        let d = Dedup::new();
        let src: Arc<str> = Arc::from("s");
        let Claim::New(g) = d.claim(&src, "a", far()).await else { panic!("first claim") };
        let d2 = d.clone();
        let s2 = src.clone();
        let waiter = tokio::spawn(async move { matches!(d2.claim(&s2, "a", far()).await, Claim::New(_)) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(g); // the first store failed: the waiter gets the claim
        assert!(waiter.await.unwrap());
        let soon = Instant::now() + Duration::from_millis(20);
        let Claim::New(_g) = d.claim(&src, "b", far()).await else { panic!("claim b") };
        assert!(matches!(d.claim(&src, "b", soon).await, Claim::Busy));
    }
}
