//! The done records committed most recently, in memory: a provider retry of one of them is answered
//! `Duplicate` without a read of `state.redb` (which runs off the runtime, on the blocking pool: a thread
//! hand-off and two wake-ups per request, most of the hit path's cost).
//!
//! # Invariants
//!
//! - A record enters only once it is committed to `state.redb` (the group commit returned), or when a read of
//!   `state.redb` found it: the cache never says more than the file does, so answers are the same with or
//!   without it (a record expired by the clock is no hit here either).
//! - Bounded: two generations of at most [`GENERATION`] records each; when the current one is full it becomes
//!   the previous one and the oldest generation is dropped. A record that fell out is read from the file again.
//! - Keyed like the file: the first 16 bytes of SHA-256 of `<source>\u{1f}<id>` (the same collision bound).

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

/// Records per generation (two are kept: at most 32,768 records, about 1.6 MB).
pub const GENERATION: usize = 16_384;

/// The key of `(source, id)`: the digest of [`super::key`], computed without building the string.
pub type RecentKey = [u8; 16];

pub fn recent_key(source: &str, id: &str) -> RecentKey {
    let full = Sha256::new().chain_update(source).chain_update("\u{1f}").chain_update(id).finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&full[..16]);
    k
}

/// Committed done records and their expiry (ms since the epoch).
#[derive(Default)]
pub struct Recent {
    inner: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<RecentKey, u64>,
    previous: HashMap<RecentKey, u64>,
}

impl Recent {
    /// Whether `key` is a committed record that has not expired at `now_ms`.
    pub fn is_done(&self, key: &RecentKey, now_ms: u64) -> bool {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.current.get(key).or_else(|| g.previous.get(key)).is_some_and(|until| *until > now_ms)
    }

    /// Remembers a committed record (see the module invariants: only what `state.redb` holds).
    pub fn insert(&self, key: RecentKey, expires_ms: u64) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.current.len() >= GENERATION && !g.current.contains_key(&key) {
            g.previous = std::mem::take(&mut g.current);
        }
        g.current.insert(key, expires_ms);
    }

    #[cfg(test)]
    pub fn held(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.current.len() + g.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_digest_of_the_joined_key() {
        let full = Sha256::digest(super::super::key("card", "tx-1").as_bytes());
        assert_eq!(recent_key("card", "tx-1")[..], full[..16]);
        assert_ne!(recent_key("card", "tx-1"), recent_key("card", "tx-2"));
        assert_ne!(recent_key("car", "dtx-1"), recent_key("card", "tx-1"));
    }

    #[test]
    fn bounded_to_two_generations_and_expiry_is_checked() {
        let r = Recent::default();
        let k = |i: usize| recent_key("s", &i.to_string());
        for i in 0..GENERATION * 3 {
            r.insert(k(i), 1_000);
        }
        assert_eq!(r.held(), 2 * GENERATION);
        assert!(!r.is_done(&k(0), 10), "the oldest generation was dropped");
        assert!(r.is_done(&k(GENERATION), 10), "the previous generation is still read");
        assert!(r.is_done(&k(3 * GENERATION - 1), 10));
        assert!(!r.is_done(&k(3 * GENERATION - 1), 1_000), "expired at its expiry");
        // Inserting a record already held in a full generation does not rotate.
        r.insert(k(3 * GENERATION - 1), 2_000);
        assert_eq!(r.held(), 2 * GENERATION);
        assert!(r.is_done(&k(3 * GENERATION - 1), 1_500));
    }
}
