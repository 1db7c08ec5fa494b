//! At most one log line per period for something that repeats on every request (an outage, an attack): the
//! log stays readable and its volume bounded, and each line says how many occurrences it stands for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Counts occurrences; [`Throttle::due`] says when a line is due (the first one at once, then at most one per
/// period) and how many occurred since the last line, this one included.
pub struct Throttle {
    started: Instant,
    every_ms: u64,
    /// Milliseconds after `started` of the last line (`u64::MAX`: none yet).
    last_ms: AtomicU64,
    /// Occurrences since the last line.
    since: AtomicU64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Throttle {
            started: Instant::now(),
            every_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            last_ms: AtomicU64::new(u64::MAX),
            since: AtomicU64::new(0),
        }
    }

    /// Counts one occurrence; `Some(n)` when a line is due now, `n` the occurrences it stands for.
    pub fn due(&self) -> Option<u64> {
        self.due_at(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1))
    }

    /// [`Throttle::due`] at `now_ms` after the throttle was made.
    fn due_at(&self, now_ms: u64) -> Option<u64> {
        self.since.fetch_add(1, Ordering::Relaxed);
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now_ms.saturating_sub(last) >= self.every_ms;
        // One caller wins the slot; the others only counted.
        if due && self.last_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.since.swap(0, Ordering::Relaxed));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrence_logs_then_one_line_per_period_with_the_count() {
        let t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.due_at(5), Some(1));
        assert_eq!((0..99).filter_map(|_| t.due_at(6)).count(), 0);
        assert_eq!(t.due_at(10_004), None, "9.999 s after the line");
        assert_eq!(t.due_at(10_005), Some(101), "the 99 and the one at 9.999 s are counted in this line");
        assert_eq!(t.due_at(10_006), None);
        let real = Throttle::new(Duration::from_secs(10));
        assert_eq!((real.due(), real.due()), (Some(1), None), "on the throttle's own clock");
    }
}
