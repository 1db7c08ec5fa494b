//! Every connection makes progress or is closed: [`Activity`] counts the requests in flight on one connection
//! (the service holds a [`Busy`] guard per request) and [`drive`] closes the connection once it has had none for
//! too long, or when the listener drains.
//!
//! With no request in flight, a connection is closed `first` after it started (no complete request head yet,
//! whatever it sent) or `between` after its last answer; it gets a graceful shutdown (HTTP/2 `GOAWAY`) and is
//! dropped [`CLOSE_GRACE`] later if still idle. A request in flight is bounded by its own deadlines.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a connection asked to close may stay idle before it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// The idle limits of one connection.
#[derive(Clone, Copy, Debug)]
pub struct IdleLimits {
    /// From the start of the connection to its first complete request head.
    pub first: Duration,
    /// From an answer to the next complete request head (HTTP/1.1) or request (HTTP/2).
    pub between: Duration,
}

// === impl Activity ===

/// The requests in flight on one connection.
pub struct Activity {
    state: Mutex<State>,
    changed: Notify,
    /// Its next request head was due and did not come: an HTTP/1.1 connection answers `408` (`late.rs`).
    late: AtomicBool,
}

struct State {
    in_flight: usize,
    requests: u64,
    idle_since: Instant,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        let state = State { in_flight: 0, requests: 0, idle_since: Instant::now() };
        Arc::new(Activity { state: Mutex::new(state), changed: Notify::new(), late: AtomicBool::new(false) })
    }

    /// Whether the connection's request head was due and did not come (and no request is in flight: an answer
    /// of hyper's is never replaced by a `408`).
    pub fn is_late(&self) -> bool {
        self.late.load(Ordering::Acquire) && self.lock().in_flight == 0
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        {
            let mut s = self.lock();
            s.in_flight += 1;
            s.requests += 1;
        }
        self.changed.notify_waiters();
        Busy(self.clone())
    }

    /// When the connection is due to close if nothing changes; `None` while a request is in flight.
    fn due(&self, limits: IdleLimits, closing_since: Option<Instant>) -> Option<Instant> {
        let s = self.lock();
        if s.in_flight > 0 {
            return None;
        }
        Some(match closing_since {
            Some(since) => s.idle_since.max(since) + CLOSE_GRACE,
            None if s.requests == 0 => s.idle_since + limits.first,
            None => s.idle_since + limits.between,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One request in flight.
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        {
            let mut s = self.0.lock();
            s.in_flight -= 1;
            if s.in_flight == 0 {
                s.idle_since = Instant::now();
            }
        }
        self.0.changed.notify_waiters();
    }
}

/// A connection [`drive`] runs and asks to close: hyper's HTTP/1.1 and HTTP/2 connections.
pub trait Closable: std::future::Future {
    /// Stop taking requests; the ones in flight are answered, then the connection ends.
    fn close_gracefully(self: Pin<&mut Self>);
}

impl<C: GracefulConnection> Closable for C {
    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs `conn` until it ends, it has been idle past `limits`, or `drain` is cancelled (then it is shut down
/// gracefully: requests in flight are answered, then it closes).
pub async fn drive<C>(conn: C, activity: &Activity, limits: IdleLimits, drain: &CancellationToken)
where
    C: Closable,
{
    let mut conn = std::pin::pin!(conn);
    let mut closing_since = None;
    loop {
        let changed = activity.changed.notified();
        let mut changed = std::pin::pin!(changed);
        changed.as_mut().enable();
        let due = activity.due(limits, closing_since);
        tokio::select! {
            _ = conn.as_mut() => return,
            () = drain.cancelled(), if closing_since.is_none() => close(conn.as_mut(), &mut closing_since),
            () = changed => {}
            () = sleep_until(due) => {
                // `conn` may have been polled first in this very round and begun a request: then nothing is due.
                if activity.due(limits, closing_since).is_none_or(|at| at > Instant::now()) {
                    continue;
                }
                if closing_since.is_some() {
                    return;
                }
                // Read by the connection's stream on the next poll of `conn` (this task): see `late.rs`.
                activity.late.store(true, Ordering::Release);
                close(conn.as_mut(), &mut closing_since);
            }
        }
    }
}

fn close<C: Closable>(conn: Pin<&mut C>, closing_since: &mut Option<Instant>) {
    conn.close_gracefully();
    *closing_since = Some(Instant::now());
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll};

    use super::*;

    /// A connection whose request head completes at `at` (the moment its header deadline is due), and whose
    /// request then stays in flight.
    struct HeadAt {
        at: Pin<Box<tokio::time::Sleep>>,
        activity: Arc<Activity>,
        busy: Option<Busy>,
        /// Set when the request began before the connection was marked late.
        began_in_time: Arc<AtomicBool>,
    }

    impl Future for HeadAt {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.busy.is_none() && self.at.as_mut().poll(cx).is_ready() {
                self.began_in_time.store(!self.activity.late.load(Ordering::Acquire), Ordering::Release);
                self.busy = Some(self.activity.begin());
            }
            Poll::Pending
        }
    }

    impl Closable for HeadAt {
        fn close_gracefully(self: Pin<&mut Self>) {}
    }

    /// The connection and the deadline are both ready in one round; whichever `select!` polls first, a request
    /// that began is never marked late (its stream would answer `408` in its place).
    #[tokio::test(start_paused = true)]
    async fn a_request_begun_in_the_round_its_deadline_fires_is_not_marked_late() {
        let limits = IdleLimits { first: Duration::from_secs(1), between: Duration::from_secs(1) };
        let (mut in_time, mut late) = (0, 0);
        for _ in 0..64 {
            let activity = Activity::new();
            let at = Box::pin(tokio::time::sleep(limits.first));
            let began_in_time = Arc::new(AtomicBool::new(false));
            let conn = HeadAt { at, activity: activity.clone(), busy: None, began_in_time: began_in_time.clone() };
            let drain = CancellationToken::new();
            let run = drive(conn, &activity, limits, &drain);
            assert!(tokio::time::timeout(Duration::from_secs(5), run).await.is_err(), "the request stays in flight");
            let (began, marked) = (began_in_time.load(Ordering::Acquire), activity.late.load(Ordering::Acquire));
            assert!(!(began && marked), "a request that began was marked late");
            if began {
                in_time += 1;
            } else {
                late += 1;
            }
        }
        assert!(in_time > 0, "the connection was polled first in some rounds ({in_time} in time, {late} late)");
    }
}
