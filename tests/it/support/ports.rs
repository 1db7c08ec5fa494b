//! Loopback ports for a process a harness starts and that binds them later (a gateway, a RabbitMQ node, a proxy
//! after a cut). Shared by the test suite, the fault run and the load generator (each includes this file).
//!
//! A port from `bind(0)` lies in Linux's ephemeral range (32768–60999), where any outgoing connection of the
//! harness (its broker clients, its HTTP clients) can take it between the moment it is handed out and the moment
//! the child binds it. These ports come from a range below it instead, each handed out once per process: the
//! suite takes 26000–31999, the deploy checks 20000–25999 (`tests/deploy/ports.py`), the load generator and the
//! fault run (never run beside each other) 32000–32767.

use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};

/// A loopback port in `range` that is free now and was not handed out before in this process; `None` if every
/// port in the range is taken. Another process using the same range starts elsewhere in it (an offset from its
/// pid), so two harnesses running at once rarely meet.
pub fn free_port_in(range: Range<u32>) -> Option<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = range.end.checked_sub(range.start).filter(|s| *s > 0)?;
    let start = std::process::id().wrapping_mul(997) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(range.start + (start + n) % span).ok()?;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Some(port);
        }
    }
    None
}
