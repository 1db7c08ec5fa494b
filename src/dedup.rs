//! The idempotency index (SPEC §3): each event id is either in flight (one delivery is storing it; identical
//! deliveries wait for its outcome) or done (stored; a retry inside `dedup_window` is a duplicate).
//!
//! # Invariants
//!
//! - Within one process, one delivery per id is in flight at a time; the others wait (until their deadline) and
//!   then see the first one's outcome: done → duplicate, failed → one of them claims the id.
//! - A done record is queued for the next group commit when the event is durable, and the delivery is answered
//!   200 without waiting for that commit (the event itself is already confirmed or fsynced: nothing is lost).
//!   Until the record is committed (fsynced to `state.redb`, and set in Redis with `storage.shared`) the id
//!   stays in flight, so an identical delivery in this process waits and then sees it done — never admitted
//!   twice while the process lives. A crash between the answer and the commit can forget the records of the
//!   last commit (a provider that sends one of those events again gets it published again; the bound is in
//!   `docs/delivery-semantics.md`). [`Dedup::flush`] waits for every queued record (at shutdown). A failed
//!   store releases the claim, so the provider's retry is admitted.
//! - With `storage.shared`, the in-flight claim is also taken in Redis (`SET NX PX` with a short TTL, so a claim
//!   left by a crashed replica expires), and waiters on another replica poll it until it is done or gone.
//! - After the window the record expires (purged periodically) and the id is admitted again.
//!
//! - The records committed most recently are also kept in memory ([`recent`], bounded): a retry of one is
//!   answered without a read of `state.redb`. Only committed records enter, so answers are the same.
//!
//! Layout: [`redis`] holds the shared claim; [`recent`] the in-memory hit cache; the local index lives in
//! [`crate::state`].

pub mod recent;
pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use self::recent::{recent_key, Recent, RecentKey};
use self::redis::{Shared, SharedClaim};
use crate::state::{now_ms, Op, State, StateError};

/// What a claim found.
pub enum Claim {
    /// First delivery of this id: store it, then [`ClaimGuard::complete`].
    New(ClaimGuard),
    /// Already stored inside its window.
    Duplicate,
    /// Another delivery of the same id is still being stored and did not finish before the deadline.
    Busy,
    /// The index cannot be read (the shared store is down): not admitted, the provider retries.
    Unavailable,
}

/// The index. Cheap to clone.
#[derive(Clone)]
pub struct Dedup {
    inner: Arc<Inner>,
}

struct Inner {
    flights: Mutex<HashMap<String, Arc<Notify>>>,
    state: State,
    shared: Option<Shared>,
    /// Done records being written to Redis and `state.redb` (with `storage.shared`; see
    /// [`ClaimGuard::complete`]); [`Dedup::flush`] waits for them, and for the local ones queued to the writer.
    writes: TaskTracker,
    /// Caps the done records queued at once: past it, a request waits for its own record (a disk that falls
    /// behind slows the answers rather than growing the queued records and in-flight ids without bound).
    pending: Arc<tokio::sync::Semaphore>,
    /// Committed done records, most recent first (see [`recent`]).
    recent: Recent,
    /// Reads of `state.redb` by [`Dedup::claim`] (for the tests).
    #[cfg(test)]
    index_reads: std::sync::atomic::AtomicUsize,
}

/// Done records that may be queued (not yet committed) at once.
pub const MAX_PENDING_RECORDS: usize = 4096;

/// `<source>\u{1f}<id>`: the key of an event id in both stores.
pub fn key(source: &str, id: &str) -> String {
    format!("{source}\u{1f}{id}")
}

impl Dedup {
    pub fn new(state: State, shared: Option<Shared>) -> Self {
        let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_RECORDS));
        Dedup {
            inner: Arc::new(Inner {
                flights: Mutex::default(),
                state,
                shared,
                writes: TaskTracker::new(),
                pending,
                recent: Recent::default(),
                #[cfg(test)]
                index_reads: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    fn flights(&self) -> MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.inner.flights.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `(source, id)`; waits (until `deadline`) while an identical delivery is in flight. `in_flight_ttl`
    /// bounds how long a shared claim outlives a crashed holder.
    pub async fn claim(&self, source: &str, id: &str, in_flight_ttl: Duration, deadline: Instant) -> Claim {
        // A committed, unexpired record: a duplicate whatever is in flight (no holder of this id can be storing
        // it: a claim that finds such a record is answered `Duplicate` and stores nothing).
        let recent = recent_key(source, id);
        if self.inner.recent.is_done(&recent, now_ms()) {
            return Claim::Duplicate;
        }
        let key = key(source, id);
        loop {
            let waiting = {
                let mut flights = self.flights();
                match flights.get(&key) {
                    Some(n) => n.clone(),
                    None => {
                        flights.insert(key.clone(), Arc::new(Notify::new()));
                        break;
                    }
                }
            };
            let notified = waiting.notified();
            // The holder may have finished between the lock and here; re-check before sleeping.
            if !self.flights().get(&key).is_some_and(|n| Arc::ptr_eq(n, &waiting)) {
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Claim::Busy;
            }
        }
        let mut guard = ClaimGuard { dedup: self.clone(), key: Some(key), recent, token: None };
        #[cfg(test)]
        self.inner.index_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.inner.state.lookup_done(guard.key()).await {
            Ok(Some(until)) if until > now_ms() => {
                self.inner.recent.insert(recent, until);
                return Claim::Duplicate;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, "dedup index read failed");
                return Claim::Unavailable;
            }
        }
        let Some(shared) = &self.inner.shared else { return Claim::New(guard) };
        match shared.claim(guard.key(), in_flight_ttl, deadline).await {
            Ok(SharedClaim::New(token)) => {
                guard.token = Some(token);
                Claim::New(guard)
            }
            Ok(SharedClaim::Duplicate) => Claim::Duplicate,
            Ok(SharedClaim::Busy) => Claim::Busy,
            Err(error) => {
                tracing::error!(%error, "shared dedup claim failed");
                Claim::Unavailable
            }
        }
    }

    /// Waits until every done record queued so far is committed (or failed and logged).
    pub async fn flush(&self) {
        self.inner.writes.close();
        self.inner.writes.wait().await;
        self.inner.writes.reopen();
        // Local records go straight to the state writer, which commits in queue order: once an (empty) write
        // queued now returns, every record queued before it is committed and its follow-up has run.
        if let Err(error) = self.inner.state.write(Vec::new()).await {
            tracing::error!(%error, "dedup records not flushed");
        }
    }

    /// Drops expired records (called periodically).
    pub async fn purge(&self) {
        if let Err(error) = self.inner.state.purge(now_ms()).await {
            tracing::warn!(%error, "dedup purge failed");
        }
    }

    /// Rows of the state's record log not yet folded into its file.
    pub fn log_rows(&self) -> u64 {
        self.inner.state.log_rows()
    }

    /// Bytes of the state's in-memory filter now.
    pub fn filter_bytes(&self) -> u64 {
        self.inner.state.filter_bytes()
    }
}

/// Holds an in-flight claim. Dropped without [`complete`](ClaimGuard::complete), it releases the id.
pub struct ClaimGuard {
    dedup: Dedup,
    key: Option<String>,
    /// The digest under which [`recent`] keeps the record once committed.
    recent: RecentKey,
    /// The shared claim's token, for a compare-and-delete release.
    token: Option<String>,
}

impl ClaimGuard {
    fn key(&self) -> &str {
        self.key.as_deref().unwrap_or_default()
    }

    /// Marks the id stored for `window` and returns at once: the record is written (fsynced; and set in Redis, by
    /// a task of its own, with `storage.shared`), then the id is released, the waiters woken and `report` given
    /// the stores that failed — for a local record, by the state writer right after its commit. Until then an
    /// identical delivery waits, so it sees the record. A failure to write is logged and
    /// reported (for `hookgate_dedup_record_failures_total`): the event itself is already durable, and the worst
    /// outcome is one provider retry published again (`docs/delivery-semantics.md`).
    pub async fn complete(mut self, window: Duration, report: impl FnOnce(RecordFailures) + Send + 'static) {
        // Waits only when MAX_PENDING_RECORDS records are already queued. The semaphore is never closed.
        let permit = self.dedup.inner.pending.clone().acquire_owned().await.ok();
        let Some(key) = self.key.take() else { return };
        let token = self.token.take();
        let dedup = self.dedup.clone();
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let (recent, expires_ms) = (self.recent, now_ms().saturating_add(window_ms));
        let op = Op::Done { key: key.clone(), expires_ms };
        let shared = self.dedup.inner.shared.clone().map(|s| (s, key.clone()));
        // What follows the record's commit(s): the id leaves flight, the waiters wake, the slot comes back.
        let finish = move |local: Result<(), StateError>, shared: Result<(), String>| {
            if let Err(error) = &local {
                tracing::error!(%error, "dedup record not written; a retry may be published again");
            }
            if let Err(error) = &shared {
                tracing::error!(%error, "shared dedup record not written; a retry on another replica may be published again");
            }
            drop(token);
            // Committed: the next retry is answered from memory. Before the release, so a waiter woken by it
            // finds the record there.
            if local.is_ok() {
                dedup.inner.recent.insert(recent, expires_ms);
            }
            release_local(&dedup, &key);
            drop(permit);
            report(RecordFailures { local: local.is_err(), shared: shared.is_err() });
        };
        let state = self.dedup.inner.state.clone();
        let Some((shared, key)) = shared else {
            // Local only: the state writer runs `finish` after the commit (no task of our own per record).
            state.write_then(vec![op], move |local| finish(local, Ok(()))).await;
            return;
        };
        self.dedup.inner.writes.spawn(async move {
            let (local, remote) = tokio::join!(state.write(vec![op]), shared.complete(&key, window));
            finish(local, remote.map_err(|e| e.to_string()));
        });
    }
}

/// Which stores could not record a completed id (each lets a provider retry of it be published again).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordFailures {
    /// `state.redb`.
    pub local: bool,
    /// Redis (`storage.shared`).
    pub shared: bool,
}

impl RecordFailures {
    /// The `store` label values of the failed records.
    pub fn stores(self) -> impl Iterator<Item = &'static str> {
        [("local", self.local), ("shared", self.shared)].into_iter().filter(|(_, failed)| *failed).map(|(s, _)| s)
    }
}

fn release_local(dedup: &Dedup, key: &str) {
    if let Some(n) = dedup.flights().remove(key) {
        n.notify_waiters();
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        release_local(&self.dedup, &key);
        if let (Some(token), Some(shared)) = (self.token.take(), self.dedup.inner.shared.clone()) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { shared.release(&key, &token).await });
            }
        }
    }
}

#[cfg(test)]
mod tests;
