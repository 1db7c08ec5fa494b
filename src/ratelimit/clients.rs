//! The per-client limiter: one bucket per client address, in a map of bounded size.
//!
//! governor's keyed limiter never forgets an address by itself, so an attacker with many addresses (an IPv6
//! block, a botnet, a compromised trusted proxy) could grow it without bound. Two rules keep it bounded:
//! - **Pruning.** Every [`super::PRUNE_EVERY`], `retain_recent` drops the addresses whose bucket is full again
//!   (at most `(burst + 1) / per_second` after their last request): their state is a new address's, so nothing
//!   is lost.
//! - **A cap** of `rate_limits.max_clients` addresses. A new address that finds the map full first prunes it (at
//!   most once per [`FULL_PRUNE_EVERY`], so a flood of new addresses cannot make every request scan the map). If
//!   the map is still full, the address is not added: it takes its token from one shared *overflow* bucket of
//!   the `per_client` size. Addresses already tracked keep their own bucket. Under a flood of more live
//!   addresses than the cap, the excess is thus limited together to one client's rate: memory stays bounded,
//!   and the gateway fails closed for the newcomers rather than open.
//!
//! Adding an address is serialized by a mutex (the map never passes the cap); a known address takes only the
//! map's shard lock, as in plain governor.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::RateLimiter;
use prometheus::IntGauge;

use super::{quota, retry_after, Bucket, Limit, Limited};
use crate::auth::ip::canonical;
use crate::config;

/// A full map is pruned on demand at most this often.
pub const FULL_PRUNE_EVERY: Duration = Duration::from_secs(1);

/// What a client is counted by: an IPv4 address, or the /64 network of an IPv6 address (one subscriber's
/// allocation: an IPv6 client can pick any of its 2^64 addresses). An IPv4-mapped IPv6 address is its IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(u32),
    V6(u64),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => ClientKey::V6(u64::try_from(u128::from(v6) >> 64).unwrap_or(u64::MAX)),
        }
    }
}

type Map = DashMapStateStore<ClientKey>;

/// governor's DashMap store, shared with [`Clients`] so that it can ask whether an address is tracked (the
/// limiter itself only offers check-and-insert).
struct Shared(Arc<Map>);

impl StateStore for Shared {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<ClientKey> for Shared {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&*self.0, drop_below);
    }

    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The per-client buckets, at most `max` of them, and the overflow bucket.
pub struct Clients<C: Clock> {
    limiter: RateLimiter<ClientKey, Shared, C, NoOpMiddleware<C::Instant>>,
    map: Arc<Map>,
    overflow: Bucket<C>,
    max: usize,
    clock: C,
    /// Held while adding an address; the time of the last prune of a full map.
    adding: Mutex<Option<C::Instant>>,
    /// `hookgate_rate_limiter_keys`.
    keys: IntGauge,
}

impl<C: Clock + Clone> Clients<C> {
    pub fn new(per_client: config::Bucket, max: usize, keys: IntGauge, clock: C) -> Self {
        let map = Arc::new(Map::default());
        Clients {
            limiter: RateLimiter::new(quota(per_client), Shared(map.clone()), clock.clone()),
            map,
            overflow: Bucket::with_clock(per_client, Limit::ClientOverflow, clock.clone()),
            max: max.max(1),
            clock,
            adding: Mutex::new(None),
            keys,
        }
    }

    /// Takes one token of `ip`'s bucket (or of the overflow bucket, see the module doc).
    ///
    /// # Errors
    /// [`Limited`] when that bucket is empty.
    pub fn check(&self, ip: IpAddr) -> Result<(), Limited> {
        let key = ClientKey::of(ip);
        if self.map.contains_key(&key) {
            return self.check_key(&key);
        }
        let mut last_prune = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        if self.map.len() >= self.max && !self.map.contains_key(&key) {
            let now = self.clock.now();
            if last_prune.is_none_or(|t| Duration::from(now.duration_since(t)) >= FULL_PRUNE_EVERY) {
                *last_prune = Some(now);
                self.limiter.retain_recent();
            }
            if self.map.len() >= self.max {
                self.publish_len();
                return self.overflow.check();
            }
        }
        let result = self.check_key(&key);
        self.publish_len();
        result
    }

    fn check_key(&self, key: &ClientKey) -> Result<(), Limited> {
        self.limiter
            .check_key(key)
            .map_err(|nu| Limited { limit: Limit::Client, retry_after_secs: retry_after(&nu, self.clock.now()) })
    }

    /// Drops idle addresses; gives memory back when the map has shrunk a lot (after a flood).
    pub fn prune(&self) {
        self.limiter.retain_recent();
        if self.map.capacity() > 4 * self.map.len() + 1024 {
            self.limiter.shrink_to_fit();
        }
        self.publish_len();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn publish_len(&self) {
        self.keys.set(i64::try_from(self.map.len()).unwrap_or(i64::MAX));
    }
}
