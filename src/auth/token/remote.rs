//! A JWKS at a URL: cached, refreshed by one fetch at a time, and never holding up a token the cached set can
//! check.
//!
//! # Invariants
//!
//! - A token whose `kid` the cached set has (or that names none, once a set is cached) is checked against that set
//!   at once, whatever a fetch is doing. A set older than [`MAX_AGE`] is still used while a background fetch
//!   replaces it; a failed fetch keeps the last good set.
//! - One fetch at a time (single flight), in a task of its own and outside every lock a request reads through.
//!   A request that needs its result (no set yet, or an unknown `kid`) waits for the fetch in flight, bounded by
//!   the fetch timeout, instead of starting another; a request that goes away does not cancel it.
//! - Fetches are spaced: at least [`MIN_REFRESH`] after one that gave what was asked, [`MISS_REFRESH`] after one
//!   that did not hold the `kid` that prompted it, or that failed while a set is cached. A flood of unknown `kid`s
//!   therefore costs the identity provider at most one fetch per [`MISS_REFRESH`].
//! - An unknown `kid` that the last fetch did not hold is remembered for [`MISS_TTL`] (at most [`MAX_MISSES`]
//!   `kid`s) and refused without waiting or fetching; a `kid` longer than [`MAX_KID`] is never looked up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::fetch;
use super::jwks::{check_url, KeySet};

/// A fetched set is used for this long before it is fetched again (in the background).
pub const MAX_AGE: Duration = Duration::from_secs(600);
/// The least time between two fetches.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// The least time after a fetch that failed (with a set cached) or lacked the `kid` that prompted it.
pub const MISS_REFRESH: Duration = Duration::from_secs(30);
/// How long an unknown `kid` is refused without a fetch.
pub const MISS_TTL: Duration = Duration::from_secs(300);
/// Most unknown `kid`s remembered.
pub const MAX_MISSES: usize = 1024;
/// A longer `kid` is never fetched for.
pub const MAX_KID: usize = 256;

/// Unknown `kid`s and when they were found missing. Bounded: past [`MAX_MISSES`] the expired ones go, and if
/// none has expired, all of them (the spacing of fetches still holds).
#[derive(Default)]
pub(super) struct Misses {
    kids: HashMap<String, Instant>,
}

impl Misses {
    pub(super) fn contains(&self, kid: &str, now: Instant) -> bool {
        self.kids.get(kid).is_some_and(|at| now.saturating_duration_since(*at) < MISS_TTL)
    }

    pub(super) fn insert(&mut self, kid: &str, now: Instant) {
        if kid.len() > MAX_KID {
            return;
        }
        if self.kids.len() >= MAX_MISSES {
            self.kids.retain(|_, at| now.saturating_duration_since(*at) < MISS_TTL);
            if self.kids.len() >= MAX_MISSES {
                self.kids.clear();
            }
        }
        self.kids.insert(kid.to_string(), now);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.kids.len()
    }
}

#[derive(Default)]
struct Cache {
    keys: Option<Arc<KeySet>>,
    fetched_at: Option<Instant>,
    /// No fetch starts before this.
    next_try: Option<Instant>,
    /// Fetches finished, good or not: a waiter that sees it change uses that result instead of fetching again.
    fetches: u64,
    misses: Misses,
}

struct Shared {
    url: http::Uri,
    tls: Option<TlsConnector>,
    /// Held only to read or replace the cache, never across a fetch.
    cache: Mutex<Cache>,
    /// Held by the one fetch in flight.
    flight: Arc<tokio::sync::Mutex<()>>,
}

/// What a token needs before its candidates can be picked.
enum Need {
    Nothing,
    Background,
    Wait,
}

/// A JWKS at a URL, cached.
pub struct RemoteJwks {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteJwks({})", self.shared.url)
    }
}

impl RemoteJwks {
    /// # Errors
    /// A reason when the URL is not an absolute http(s) URL.
    pub fn new(url: &str) -> Result<Self, String> {
        let url = check_url(url)?;
        let tls = if url.scheme_str() == Some("https") { Some(fetch::tls_connector()?) } else { None };
        let shared = Shared { url, tls, cache: Mutex::default(), flight: Arc::default() };
        Ok(RemoteJwks { shared: Arc::new(shared) })
    }

    /// Like [`KeySet::candidates`]; fetches the set first when there is none or it lacks `kid`, and refreshes an
    /// old one in the background.
    pub async fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<DecodingKey> {
        match self.shared.need(kid) {
            Need::Nothing => {}
            Need::Background => self.shared.refresh_in_background(),
            Need::Wait => self.shared.clone().refresh(kid).await,
        }
        self.shared.cache().keys.as_ref().map(|s| s.candidates(kid, alg)).unwrap_or_default()
    }
}

// === impl Shared ===

impl Shared {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn need(&self, kid: Option<&str>) -> Need {
        let now = Instant::now();
        let c = self.cache();
        let Some(keys) = &c.keys else { return Need::Wait };
        match kid {
            Some(k) if !keys.has_kid(k) => {
                if k.len() > MAX_KID || c.misses.contains(k, now) {
                    Need::Nothing
                } else {
                    Need::Wait
                }
            }
            _ if c.fetched_at.is_none_or(|t| now.saturating_duration_since(t) > MAX_AGE) => Need::Background,
            _ => Need::Nothing,
        }
    }

    fn may_fetch(&self) -> bool {
        self.cache().next_try.is_none_or(|t| Instant::now() >= t)
    }

    /// Starts a fetch unless one is in flight or it is too early; does not wait for it.
    fn refresh_in_background(self: &Arc<Self>) {
        let Ok(flight) = self.flight.clone().try_lock_owned() else { return };
        if !self.may_fetch() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.fetch(None).await;
            drop(flight);
        });
    }

    /// Waits for the fetch in flight, or starts one when none is and it is not too early.
    async fn refresh(self: Arc<Self>, kid: Option<&str>) {
        let seen = self.cache().fetches;
        let flight = self.flight.clone().lock_owned().await;
        let fetched_meanwhile = self.cache().fetches != seen;
        if fetched_meanwhile || !self.may_fetch() {
            return;
        }
        let kid = kid.map(str::to_owned);
        let this = self.clone();
        // Its own task: the fetch others now wait for survives this request going away.
        let _ = tokio::spawn(async move {
            this.fetch(kid.as_deref()).await;
            drop(flight);
        })
        .await;
    }

    /// One fetch; the caller holds `flight`.
    async fn fetch(&self, kid: Option<&str>) {
        self.cache().next_try = Some(Instant::now() + MIN_REFRESH);
        let result = fetch::get(&self.url, self.tls.as_ref()).await.and_then(|body| KeySet::parse(&body));
        let now = Instant::now();
        let mut c = self.cache();
        c.fetches += 1;
        let pause = match result {
            Ok(set) => {
                let missing = kid.filter(|k| !set.has_kid(k));
                c.keys = Some(Arc::new(set));
                c.fetched_at = Some(now);
                match missing {
                    Some(k) => {
                        c.misses.insert(k, now);
                        MISS_REFRESH
                    }
                    None => MIN_REFRESH,
                }
            }
            Err(error) => {
                tracing::warn!(url = %loggable(&self.url), %error, "cannot fetch the JWKS; the last good set stays in use");
                if c.keys.is_some() {
                    MISS_REFRESH
                } else {
                    MIN_REFRESH
                }
            }
        };
        c.next_try = Some(now + pause);
    }
}

/// The JWKS URL as it may be logged: scheme, host, port and path; never user info or a query (either may hold a
/// credential).
fn loggable(url: &http::Uri) -> String {
    let scheme = url.scheme_str().unwrap_or("https");
    let host = url.host().unwrap_or("");
    let port = url.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{scheme}://{host}{port}{}", url.path())
}

#[cfg(test)]
mod loggable_tests {
    #[test]
    fn user_info_and_query_never_reach_the_log() {
        let url: http::Uri = "https://user:s3cret@idp.example:8443/keys?token=abc".parse().expect("uri");
        assert_eq!(super::loggable(&url), "https://idp.example:8443/keys");
    }
}
