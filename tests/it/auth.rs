//! Authentication end to end (issue 3), over real TLS against the real RabbitMQ: each method passes with the
//! right credentials and fails with each wrong one — with the exact status and phrase, and nothing published.

mod address;
mod basic;
mod bearer;
mod hmac;
mod mtls;
mod replay;
mod sign;

use std::time::Duration;

use crate::support::{Queue, Resp};

pub const WAIT: Duration = Duration::from_secs(5);

/// Status and reason phrase, with a label saying which case failed.
#[track_caller]
pub fn expect(r: &Resp, status: u16, reason: &str, case: &str) {
    assert_eq!((r.status, r.reason.as_str()), (status, reason), "{case}: {:?}", r.body);
}

/// The queue holds exactly `bodies` (in order) and then nothing: no refused delivery was published.
pub async fn expect_published(q: &mut Queue, bodies: &[Vec<u8>]) {
    for (i, body) in bodies.iter().enumerate() {
        let m = q.next(WAIT).await.unwrap_or_else(|| panic!("message {i} missing"));
        assert_eq!(&m.body, body, "message {i}");
    }
    assert!(q.next(Duration::from_millis(300)).await.is_none(), "a refused delivery was published");
}

/// The handshake was refused with a TLS alert, at once: not any error (the harness's own timeout is one too).
pub fn refused_by_alert(case: &str, r: Result<Resp, String>, took: Duration) {
    let error = r.err().unwrap_or_else(|| panic!("{case}: the handshake must fail"));
    assert!(error.to_lowercase().contains("alert"), "{case}: not refused by a TLS alert: {error}");
    assert!(took < Duration::from_secs(2), "{case}: refused after {took:?}");
}
