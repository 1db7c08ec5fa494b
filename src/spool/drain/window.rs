//! One drain step: a window of spooled records on the wire at once.
//!
//! Records are sent in `seq` order on one channel (so they reach the queue in receipt order) and up to
//! [`WINDOW`] of them await their confirms at once (pipelined: the broker confirms a batch in one fsync, where one
//! record at a time paid a round trip and a broker fsync each). Confirms are taken in `seq` order, so the cursor
//! only ever moves past a contiguous prefix of confirmed records. The first failure (nack, timeout, channel
//! error) ends the step: the records sent after it are given up (each counted as an unknown outcome, `timeout`:
//! the broker may have them), the confirmed prefix is passed, and the next step sends again from the first record
//! not confirmed — at most [`WINDOW`] records may so reach the queue twice per failure. A failure to *send* (the
//! connection went down or blocked, a spool read failed) only stops the sending: the records already on the wire
//! are all before it, and their confirms are still taken and passed.

use std::collections::VecDeque;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{advance_all, Drainer, Step};
use crate::event::Event;
use crate::publish::{PublishError, Sent};
use crate::spool::{Spool, SpoolError};

/// Records on the wire (sent, confirm not yet taken) at once, plus those confirmed but not yet passed.
pub const WINDOW: usize = 128;
/// The most spooled bytes held in the window at once (records are read into memory to be sent), whatever the
/// sources' `max_body_bytes`: a window of large events is shorter. At least one record is always sent.
const WINDOW_BYTES: u64 = 8 << 20;
/// Confirmed records passed to the cursor in one blocking task.
const ADVANCE_BATCH: usize = 32;
/// The window is refilled once this many places are free (one spool read per refill).
const REFILL: usize = WINDOW / 4;

/// A record in the window: sent, or (an event that cannot be encoded, which the store never accepts) to be
/// parked in its turn.
struct Entry {
    seq: u64,
    /// The record's size in the spool.
    len: u64,
    event: Event,
    sent: Option<Sent>,
}

#[derive(Default)]
struct Window {
    on_wire: VecDeque<Entry>,
    /// Confirmed (or parked), in `seq` order, not yet passed.
    confirmed: Vec<u64>,
    /// The last record sent; the next read starts after it.
    last: Option<u64>,
    /// Spooled bytes of the records on the wire.
    bytes: u64,
    /// Why no more records are sent (a send or a read failed); the records on the wire, all before it, are
    /// still confirmed and passed first.
    halt: Option<Halt>,
    passed_any: bool,
}

impl Window {
    fn room(&self) -> (usize, u64) {
        (WINDOW.saturating_sub(self.on_wire.len() + self.confirmed.len()), WINDOW_BYTES.saturating_sub(self.bytes))
    }
}

impl Drainer {
    /// Sends the spool from its front, a window at a time, until it is drained, a publish fails, the broker is
    /// lost or blocked, or `stop` is cancelled (then the window on the wire is still awaited and passed).
    pub(super) async fn step(&self, stop: &CancellationToken, replay_end: u64) -> Step {
        if stop.is_cancelled() || !self.publisher.is_connected() {
            return Step::Idle;
        }
        let mut w = Window::default();
        let failure = self.run_window(&mut w, stop, replay_end).await;
        // Given up: dropped, each is counted as a publish of unknown outcome.
        w.on_wire.clear();
        if let Err(e) = advance_all(&self.spool, &mut w.confirmed).await {
            return Step::Failed(e);
        }
        match failure {
            Some(Halt::Failed(e)) => Step::Failed(e),
            Some(Halt::Front(step)) => step,
            None if w.passed_any => Step::Drained,
            None => Step::Idle,
        }
    }

    async fn run_window(&self, w: &mut Window, stop: &CancellationToken, replay_end: u64) -> Option<Halt> {
        loop {
            if let Err(halt) = self.fill(w, stop).await {
                return Some(halt);
            }
            let Some(entry) = w.on_wire.pop_front() else { return w.halt.take() };
            w.bytes -= entry.len;
            let outcome = match entry.sent {
                Some(sent) => sent.confirmed().await,
                None => Err(PublishError::Encode("unencodable spooled event")),
            };
            match outcome {
                Ok(()) => {}
                // Never a blocked head: an unroutable (or unencodable) event is parked, in its turn.
                Err(PublishError::Returned | PublishError::Encode(_)) => {
                    if let Err(e) = self.park(entry.seq, &entry.event).await {
                        return Some(Halt::Failed(e));
                    }
                }
                Err(e) => return Some(Halt::Failed(e.to_string())),
            }
            w.confirmed.push(entry.seq);
            w.passed_any = true;
            if w.confirmed.len() >= ADVANCE_BATCH || w.on_wire.is_empty() {
                if let Err(e) = advance_all(&self.spool, &mut w.confirmed).await {
                    return Some(Halt::Failed(e));
                }
                self.note_replay(replay_end);
            }
        }
    }

    /// Sends the next records while the window has room (in steps of [`REFILL`]), the broker takes them and no
    /// stop is asked for.
    async fn fill(&self, w: &mut Window, stop: &CancellationToken) -> Result<(), Halt> {
        let (room, room_bytes) = w.room();
        let empty = w.on_wire.is_empty() && w.confirmed.is_empty();
        let full = room < REFILL || room_bytes < WINDOW_BYTES / 4;
        if (full && !empty) || w.halt.is_some() || stop.is_cancelled() || !self.publisher.is_connected() {
            return Ok(());
        }
        let s = self.spool.clone();
        let after = w.last;
        let (records, corrupt) =
            match tokio::task::spawn_blocking(move || read_after(&s, after, room, room_bytes)).await {
                Ok(Ok(read)) => read,
                Ok(Err(e)) => return halt(w, e.to_string()),
                Err(_) => return halt(w, "spool read task failed".into()),
            };
        if records.is_empty() && empty && w.last.is_none() {
            return Err(Halt::Front(self.at_front(corrupt).await));
        }
        for (seq, len, event) in records {
            self.metrics.publish_retries.inc();
            let deadline = Instant::now() + self.publisher.publish_timeout();
            let sent = match self.publisher.send(&event, deadline).await {
                Ok(sent) => Some(sent),
                Err(PublishError::Encode(_)) => None,
                Err(e) => return halt(w, e.to_string()),
            };
            w.on_wire.push_back(Entry { seq, len, event, sent });
            w.last = Some(seq);
            w.bytes += len;
        }
        Ok(())
    }

    /// Nothing to send from the front: an unreadable front record is quarantined; records written but not yet
    /// fsynced are made durable; else the spool is empty.
    async fn at_front(&self, corrupt: Option<u64>) -> Step {
        if let Some(seq) = corrupt {
            return self.quarantine(&self.spool, seq).await;
        }
        if self.spool.is_empty() {
            return Step::Idle;
        }
        match self.spool.flush().await {
            Ok(()) => Step::Drained,
            Err(e) => Step::Failed(e.to_string()),
        }
    }

    /// Parks the unroutable spooled record `seq` (fsynced) before the main spool moves past it.
    async fn park(&self, seq: u64, event: &Event) -> Result<(), String> {
        self.parked.append(event).await.map_err(|e| format!("unroutable event not parked: {e}"))?;
        self.metrics.unroutable.with_label_values(&[&event.source]).inc();
        tracing::warn!(seq, source = %event.source, "spooled event unroutable; parked until a route exists");
        Ok(())
    }
}

/// Sends no more records in this window, for `why` (the records already on the wire are still confirmed).
#[allow(clippy::unnecessary_wraps)]
fn halt(w: &mut Window, why: String) -> Result<(), Halt> {
    w.halt = Some(Halt::Failed(why));
    Ok(())
}

/// Why a window ended early.
enum Halt {
    Failed(String),
    /// Nothing could be sent from the front of the spool; what the front needs instead.
    Front(Step),
}

/// A record read for the window: its seq, its size in the spool, its event.
type Record = (u64, u64, Event);

/// Up to `max` durable undrained records (and about `max_bytes`, at least one) after `after` (from the front
/// without it), in order. Stops before an unreadable record and names it; a read error after some records
/// returns those. Blocking: reads files.
fn read_after(
    spool: &Spool,
    after: Option<u64>,
    max: usize,
    max_bytes: u64,
) -> Result<(Vec<Record>, Option<u64>), SpoolError> {
    let locs: Vec<_> = {
        let st = spool.inner.state();
        let synced = spool.inner.synced.load(std::sync::atomic::Ordering::Acquire);
        let from = after.map_or(0, |a| st.queue.partition_point(|l| l.seq <= a));
        let mut bytes = 0;
        st.queue
            .iter()
            .skip(from)
            .take_while(|l| l.seq < synced)
            .take(max)
            .take_while(|l| {
                let first = bytes == 0;
                bytes += l.len;
                first || bytes <= max_bytes
            })
            .copied()
            .collect()
    };
    let mut records = Vec::with_capacity(locs.len());
    for loc in locs {
        match spool.read(loc) {
            Ok(event) => records.push((loc.seq, loc.len, event)),
            Err(SpoolError::Corrupt(seq)) => return Ok((records, Some(seq))),
            Err(e) if records.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok((records, None))
}
