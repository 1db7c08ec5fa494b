//! The drainer: publishes spooled events in receipt order and moves past a record only after the broker
//! confirmed it and every record before it. A window of records is on the wire at once (`window.rs`: up to
//! [`WINDOW`], sent in order on one channel, confirms taken in order); one record at a time (a round trip and a
//! broker fsync each) drained about 490 records/s.
//!
//! A spooled event was already answered 200, so one that turns out unroutable (returned: no queue bound, no
//! alternate exchange) is never dropped, and must not block the events behind it either: it is moved to the
//! *parked* spool (`spool/parked/`, same format, fsynced before the main spool moves past it), counted in
//! `hookgate_unroutable_total` and `hookgate_spool_parked_events`. The request path parks the events the broker
//! returns in the same place. Parked events are retried in order, first [`PARKED_FIRST_RETRY`] after one is
//! parked, then at doubling intervals up to every [`PARKED_RETRY`], until a route exists.
//!
//! A record that can never be read back (its checksum, decryption or decoding fails; its bytes were cut) must not
//! block the events behind it either: it is copied to `spool/quarantine/` as recovery does at start, counted in
//! `hookgate_spool_quarantined_total`, and passed (the cursor is persisted at once).
//!
//! Every disk step (read, cursor write, deletions) runs off the runtime (`spawn_blocking`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Spool, SpoolError};

mod window;

use crate::metrics::Metrics;
use crate::publish::Publisher;
pub use window::WINDOW;

const IDLE_POLL: Duration = Duration::from_millis(250);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest wait between two tries of the parked (unroutable) events.
pub const PARKED_RETRY: Duration = Duration::from_secs(30);
/// The first try after an event is parked.
pub const PARKED_FIRST_RETRY: Duration = Duration::from_secs(1);

/// What the drainer works on.
pub struct Drainer {
    pub spool: Spool,
    pub parked: Spool,
    pub publisher: Publisher,
    pub metrics: Metrics,
    /// Set the first time the drainer sees the spool empty (start-up replay done).
    pub replayed: Arc<AtomicBool>,
}

enum Step {
    Drained,
    Idle,
    Failed(String),
}

impl Drainer {
    /// Drains until `shutdown`; with `until_empty`, returns as soon as the spool is empty (`spool replay`).
    pub async fn run(self, shutdown: CancellationToken, until_empty: bool) {
        let mut backoff = MIN_BACKOFF;
        let mut failures: u32 = 0;
        let mut parked_due = Instant::now();
        let mut parked_wait = PARKED_FIRST_RETRY;
        let mut parked_len = self.parked.len();
        // The start-up replay is done once every record the spool held at start is passed — not when the spool
        // is next seen empty, which under steady arrivals (queued behind the spool) may be never.
        // Every check on this runtime thread is lock-free: the writer holds the state lock across writes and fsyncs.
        let replay_end = self.spool.inner.opened_at;
        loop {
            self.gauges();
            if self.parked.len() > parked_len {
                // Newly parked: a binding may follow soon (a consumer deployed late); try again soon.
                parked_wait = PARKED_FIRST_RETRY;
                parked_due = parked_due.min(Instant::now() + parked_wait);
            }
            self.note_replay(replay_end);
            if self.spool.is_empty() && until_empty {
                return;
            }
            if Instant::now() >= parked_due && self.publisher.is_connected() {
                self.retry_parked().await;
                parked_wait = (parked_wait * 2).min(PARKED_RETRY);
                parked_due = Instant::now() + parked_wait;
            }
            parked_len = self.parked.len();
            let pause = match self.step(&shutdown, replay_end).await {
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
                () = shutdown.cancelled() => break,
                () = self.spool.inner.arrived.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
        self.persist_cursors().await;
    }

    /// At a graceful stop: writes both cursors where the drain stands, so the restart republishes none of the
    /// records confirmed since the last periodic write (up to [`super::CURSOR_EVERY`] − 1 of them otherwise).
    async fn persist_cursors(&self) {
        for (spool, name) in [(&self.spool, "spool"), (&self.parked, "parked spool")] {
            let s = spool.clone();
            match tokio::task::spawn_blocking(move || persist_cursor(&s)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, spool = name, "cursor not written at stop; a restart may republish confirmed records")
                }
                Err(_) => tracing::warn!(spool = name, "cursor task failed at stop"),
            }
        }
    }

    /// Marks the start-up replay done once every record below `replay_end` is passed.
    fn note_replay(&self, replay_end: u64) {
        if self.replayed.load(Ordering::Acquire) {
            return;
        }
        let done = self.spool.inner.front.load(Ordering::Acquire) >= replay_end;
        if done && !self.replayed.swap(true, Ordering::AcqRel) {
            tracing::info!("spool replayed");
        }
    }

    fn gauges(&self) {
        self.metrics.set_spool_events(self.spool.len(), self.parked.len());
        self.metrics.spool_bytes.set(i64::try_from(self.spool.bytes()).unwrap_or(i64::MAX));
    }

    /// Publishes parked events until one is still unroutable (or the broker fails).
    async fn retry_parked(&self) {
        while self.publisher.is_connected() {
            let (seq, event) = match self.parked.peek().await {
                Ok(Some(front)) => front,
                Err(SpoolError::Corrupt(seq)) if matches!(self.quarantine(&self.parked, seq).await, Step::Drained) => {
                    continue
                }
                _ => return,
            };
            self.metrics.publish_retries.inc();
            let deadline = Instant::now() + self.publisher.publish_timeout();
            if self.publisher.publish_parked(&event, deadline).await.is_err() {
                return;
            }
            if !matches!(advance(&self.parked, seq).await, Step::Drained) {
                return;
            }
        }
    }
}

impl Drainer {
    /// Copies the unreadable front record `seq` of `spool` aside and moves past it.
    async fn quarantine(&self, spool: &Spool, seq: u64) -> Step {
        let s = spool.clone();
        match tokio::task::spawn_blocking(move || s.quarantine_front(seq)).await {
            Ok(Ok(Some(file))) => {
                self.metrics.spool_quarantined.inc();
                tracing::error!(seq, file = %file.display(), "unreadable spool record quarantined; draining on");
                Step::Drained
            }
            Ok(Ok(None)) => Step::Drained,
            Ok(Err(e)) => Step::Failed(format!("unreadable spool record not quarantined: {e}")),
            Err(_) => Step::Failed("spool quarantine task failed".into()),
        }
    }
}

/// Passes the confirmed records `seqs` (in order) off the runtime, and empties `seqs`. A cursor write that fails
/// leaves the records passed in memory (a restart may republish them); the first error is returned.
async fn advance_all(spool: &Spool, seqs: &mut Vec<u64>) -> Result<(), String> {
    if seqs.is_empty() {
        return Ok(());
    }
    let (s, batch) = (spool.clone(), std::mem::take(seqs));
    let passed = tokio::task::spawn_blocking(move || {
        let mut first = Ok(());
        for seq in batch {
            if let Err(e) = s.advance(seq) {
                first = first.and(Err(e));
            }
        }
        first
    });
    match passed.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("spool cursor task failed".into()),
    }
}

async fn advance(spool: &Spool, seq: u64) -> Step {
    let s = spool.clone();
    match tokio::task::spawn_blocking(move || s.advance(seq)).await {
        Ok(Ok(())) => Step::Drained,
        Ok(Err(e)) => Step::Failed(e.to_string()),
        Err(_) => Step::Failed("spool cursor task failed".into()),
    }
}

/// Writes `spool`'s cursor at the first undrained record now, unless it is already there. Blocking (fsync, rename).
fn persist_cursor(spool: &Spool) -> Result<(), SpoolError> {
    let inner = &spool.inner;
    let _cursor = inner.cursor.lock().unwrap_or_else(|e| e.into_inner());
    let next = {
        let mut st = inner.state();
        if st.drained_since_cursor == 0 {
            return Ok(());
        }
        st.drained_since_cursor = 0;
        st.queue.front().map_or(st.next_seq, |l| l.seq)
    };
    if let Err(e) = super::segment::write_cursor(&inner.dir, next) {
        inner.state().drained_since_cursor = super::CURSOR_EVERY;
        return Err(e.into());
    }
    Ok(())
}
