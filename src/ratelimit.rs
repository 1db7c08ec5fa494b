//! Rate limits (SPEC §5): GCRA token buckets from `governor`, checked for every request before anything reads
//! its body or authenticates it.
//!
//! Three limits, in the order they are checked (`pipeline.rs` runs this right after routing):
//! 1. **per client**: one bucket per client address ([`ClientKey`]: IPv4 /32, IPv6 /64), the address
//!    `client_addr.rs` derives (the socket's, or a trusted proxy's `X-Forwarded-For` / PROXY header). Checked
//!    first, so one client flooding is refused without draining the shared bucket below.
//! 2. **global**: one bucket for the whole gateway (`[rate_limits] global`).
//! 3. **per source**: one bucket per source with `rate_limit`, kept inside the built [`crate::source::Source`]
//!    (a config reload that rebuilds the sources rebuilds their buckets with them).
//!
//! Invariants:
//! - A refused request costs no token of a later limit; an admitted one has taken one token of each.
//! - The per-client map never holds more than `rate_limits.max_clients` addresses (see `clients.rs`): memory
//!   stays bounded whatever number of addresses an attacker controls.
//! - Every type is generic over governor's [`Clock`], so the unit tests drive time with `FakeRelativeClock`.

mod clients;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};
use prometheus::IntGauge;
use tokio_util::sync::CancellationToken;

pub use clients::{ClientKey, Clients};

use crate::config;

/// How often idle client addresses are dropped from the per-client map.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// At most one `warn` line about refused requests per this many milliseconds (the rest go to `debug`, and are
/// counted in the next `warn`).
const WARN_EVERY_MS: u64 = 10_000;

/// Which limit refused a request (the `limit` field of its log line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The client address's own bucket.
    Client,
    /// The shared bucket of new client addresses while the per-client map is full.
    ClientOverflow,
    Global,
    Source,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Client => "per_client",
            Limit::ClientOverflow => "per_client_overflow",
            Limit::Global => "global",
            Limit::Source => "per_source",
        }
    }
}

/// A refusal: the limit, and when a retry can pass (whole seconds, at least 1: the `Retry-After` value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub limit: Limit,
    pub retry_after_secs: u64,
}

/// The quota of a configured bucket: `burst` cells, one more every `1 / per_second` seconds. Validation has
/// refused zeros; a zero that got here anyway counts as 1.
pub fn quota(b: config::Bucket) -> Quota {
    let per_second = NonZeroU32::new(b.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(b.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_second).allow_burst(burst)
}

/// `Retry-After` of a refusal: the wait until one cell is back, rounded up to whole seconds, at least 1.
fn retry_after<P: Reference>(not_until: &NotUntil<P>, now: P) -> u64 {
    let wait = not_until.wait_time_from(now);
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

// === impl Bucket ===

/// One unkeyed token bucket (the global one, a source's, the per-client overflow).
pub struct Bucket<C: Clock = DefaultClock> {
    limiter: Direct<C>,
    clock: C,
    limit: Limit,
    quota: config::Bucket,
}

impl Bucket {
    pub fn new(b: config::Bucket, limit: Limit) -> Self {
        Bucket::with_clock(b, limit, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Bucket<C> {
    pub fn with_clock(b: config::Bucket, limit: Limit, clock: C) -> Self {
        Bucket { limiter: RateLimiter::direct_with_clock(quota(b), clock.clone()), clock, limit, quota: b }
    }

    /// Takes one token.
    ///
    /// # Errors
    /// [`Limited`] when the bucket is empty.
    pub fn check(&self) -> Result<(), Limited> {
        self.limiter
            .check()
            .map_err(|nu| Limited { limit: self.limit, retry_after_secs: retry_after(&nu, self.clock.now()) })
    }
}

impl<C: Clock> fmt::Debug for Bucket<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bucket")
            .field("limit", &self.limit.as_str())
            .field("per_second", &self.quota.per_second)
            .field("burst", &self.quota.burst)
            .finish()
    }
}

// === impl RateLimits ===

/// The gateway-wide limits of `[rate_limits]`: per client, then global.
pub struct RateLimits<C: Clock = DefaultClock> {
    clients: Clients<C>,
    global: Bucket<C>,
    refusals: Refusals,
}

impl RateLimits {
    /// The limits of `[rate_limits]`; `keys` is the `hookgate_rate_limiter_keys` gauge.
    pub fn new(cfg: &config::RateLimits, keys: IntGauge) -> Self {
        RateLimits::with_clock(cfg, keys, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    pub fn with_clock(cfg: &config::RateLimits, keys: IntGauge, clock: C) -> Self {
        RateLimits {
            clients: Clients::new(cfg.per_client, cfg.max_clients, keys, clock.clone()),
            global: Bucket::with_clock(cfg.global, Limit::Global, clock),
            refusals: Refusals::default(),
        }
    }

    /// Checks a request from `client` (to a source with `source`'s bucket, if any): per client, global, per
    /// source.
    ///
    /// # Errors
    /// [`Limited`] from the first limit that refuses.
    pub fn check(&self, client: IpAddr, source: Option<&Bucket<C>>) -> Result<(), Limited> {
        self.clients.check(client)?;
        self.global.check()?;
        source.map_or(Ok(()), Bucket::check)
    }

    /// Drops the client addresses whose bucket is full again (at most `(burst + 1) / per_second` after their
    /// last request).
    pub fn prune(&self) {
        self.clients.prune();
    }

    /// Client addresses tracked now.
    pub fn client_keys(&self) -> usize {
        self.clients.len()
    }

    /// Logs a refusal without flooding the log under attack: every one at `debug`, and at most one `warn` per
    /// 10 s, which counts the refusals since the previous one.
    pub fn log_refusal(&self, source: &str, request_id: u64, limit: Limit) {
        self.refusals.log(source, request_id, limit);
    }
}

/// Prunes the per-client map every [`PRUNE_EVERY`] until `shutdown`.
pub async fn prune_loop<C: Clock + Clone>(limits: Arc<RateLimits<C>>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => limits.prune(),
            () = shutdown.cancelled() => return,
        }
    }
}

// === impl Refusals ===

/// The throttle of the `warn` line about refused requests.
struct Refusals(crate::telemetry::Throttle);

impl Default for Refusals {
    fn default() -> Self {
        Refusals(crate::telemetry::Throttle::new(Duration::from_millis(WARN_EVERY_MS)))
    }
}

impl Refusals {
    fn log(&self, source: &str, request_id: u64, limit: Limit) {
        let limit = limit.as_str();
        tracing::debug!(source, request_id, limit, status = 429, reason = "rate_limited", "delivery refused");
        if let Some(refused) = self.0.due() {
            tracing::warn!(source, request_id, limit, refused, "deliveries refused: rate limited");
        }
    }
}
