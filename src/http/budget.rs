//! `server.max_inflight_body_bytes`: request-body bytes held at once by every request together, taken as a
//! `Content-Length` is announced or as chunks arrive, and given back when the request's event is stored or refused.
//!
//! Each client (its address as the rate limits count it: IPv4, or an IPv6 /64) holds at most its share of the
//! budget with its bodies together (`server.max_inflight_body_bytes_per_client`, a quarter by default); a body that
//! was the client's only one when it began may be as large as its source allows. So one address with slow bodies
//! cannot hold the whole budget and turn every other client away `503 Server Busy`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::PipelineError;
use crate::ratelimit::ClientKey;

/// The budget, shared by every connection.
#[derive(Clone, Debug)]
pub struct BodyBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bytes: Arc<Semaphore>,
    /// `None`: no per-client share.
    per_client: Option<u64>,
    /// Bytes held per client; an entry lives while its client holds any, so there are at most as many as
    /// requests reading or holding a body.
    clients: Mutex<HashMap<ClientKey, u64>>,
}

/// The body bytes one request holds; given back on drop. The default permit holds nothing and belongs to no
/// budget (a polling job's receipt, which no client sent).
#[derive(Debug, Default)]
pub struct BodyPermit {
    budget: Option<Arc<Inner>>,
    client: Option<ClientKey>,
    permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
    /// The client held nothing else when this body began: it may grow past the share.
    alone: bool,
}

impl BodyBudget {
    /// A budget of `bytes`, of which one client's bodies together hold at most `per_client` (`0`: no share).
    pub fn new(bytes: u64, per_client: u64) -> BodyBudget {
        let total = usize::try_from(bytes).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        let per_client = (per_client > 0).then_some(per_client);
        let inner = Inner { bytes: Arc::new(Semaphore::new(total)), per_client, clients: Mutex::default() };
        BodyBudget { inner: Arc::new(inner) }
    }

    /// Bytes not held by any request now.
    pub fn available(&self) -> usize {
        self.inner.bytes.available_permits()
    }

    /// Clients holding bytes now.
    pub fn clients(&self) -> usize {
        self.inner.lock().len()
    }

    /// An empty permit for a body of `client`'s, grown as the body arrives ([`BodyPermit::grow`]).
    pub fn permit(&self, client: IpAddr) -> BodyPermit {
        let client = self.inner.per_client.map(|_| ClientKey::of(client));
        BodyPermit { budget: Some(self.inner.clone()), client, permit: None, bytes: 0, alone: false }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<ClientKey, u64>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `more` bytes of a body to `key`, unless they would take the client past its share — a body that
    /// was the client's only one when it began (`alone`, decided at its first bytes) excepted.
    fn take_share(&self, key: ClientKey, first: bool, alone: &mut bool, more: u64) -> Result<(), PipelineError> {
        let share = self.per_client.unwrap_or(u64::MAX);
        let mut clients = self.lock();
        let held = clients.get(&key).copied().unwrap_or(0);
        if first {
            *alone = held == 0;
        }
        if !*alone && held.saturating_add(more) > share {
            return Err(PipelineError::Overloaded);
        }
        clients.insert(key, held.saturating_add(more));
        Ok(())
    }

    fn give_share(&self, key: ClientKey, bytes: u64) {
        let mut clients = self.lock();
        if let Some(held) = clients.get_mut(&key) {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                clients.remove(&key);
                // After a flood of addresses, give the map's room back once it is empty.
                if clients.is_empty() && clients.capacity() > 1024 {
                    clients.shrink_to(64);
                }
            }
        }
    }
}

impl BodyPermit {
    /// Grows the permit to `total` bytes, at once or not at all.
    ///
    /// # Errors
    /// [`PipelineError::Overloaded`]: the budget, or the client's share of it, has no room for them.
    pub fn grow(&mut self, total: u64) -> Result<(), PipelineError> {
        let Some(more) = total.checked_sub(self.bytes).filter(|n| *n > 0) else {
            return Ok(());
        };
        let Some(budget) = self.budget.clone() else {
            return Ok(());
        };
        let count = u32::try_from(more).map_err(|_| PipelineError::Overloaded)?;
        if let Some(key) = self.client {
            budget.take_share(key, self.bytes == 0, &mut self.alone, more)?;
        }
        let Ok(permit) = budget.bytes.clone().try_acquire_many_owned(count) else {
            if let Some(key) = self.client {
                budget.give_share(key, more);
            }
            return Err(PipelineError::Overloaded);
        };
        match &mut self.permit {
            Some(p) => p.merge(permit),
            None => self.permit = Some(permit),
        }
        self.bytes = total;
        Ok(())
    }
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        // The budget's bytes first, then the client's count: a body of the same client's never sees its share
        // free while the budget is still held.
        drop(self.permit.take());
        if let (Some(budget), Some(key)) = (&self.budget, self.client) {
            if self.bytes > 0 {
                budget.give_share(key, self.bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_client_holds_at_most_a_quarter_with_its_bodies_together() {
        let budget = BodyBudget::new(100, 25);
        let mut alone = budget.permit(ip("192.0.2.1"));
        alone.grow(60).expect("a client's only body may pass its share");
        let mut second = budget.permit(ip("192.0.2.1"));
        assert!(matches!(second.grow(1), Err(PipelineError::Overloaded)), "over the share (25) with the first");
        assert_eq!((budget.available(), budget.clients()), (40, 1), "the refusal holds nothing");
        let mut other = budget.permit(ip("192.0.2.2"));
        other.grow(25).expect("another client");
        drop(alone);
        second.grow(10).expect("room again once the first is given back");
        let mut third = budget.permit(ip("192.0.2.1"));
        third.grow(15).expect("10 + 15 is the share");
        assert!(matches!(third.grow(16), Err(PipelineError::Overloaded)));
        assert_eq!(budget.available(), 100 - 25 - 10 - 15);
        drop((second, third, other));
        assert_eq!((budget.available(), budget.clients()), (100, 0), "every byte and entry given back");
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_the_budget_still_bounds_all() {
        let budget = BodyBudget::new(100, 25);
        let mut a = budget.permit(ip("2001:db8:1:2::1"));
        a.grow(20).expect("first");
        let mut b = budget.permit(ip("2001:db8:1:2:ffff::9"));
        assert!(matches!(b.grow(6), Err(PipelineError::Overloaded)), "the same /64");
        let mut c = budget.permit(ip("198.51.100.1"));
        c.grow(80).expect("alone, up to the budget");
        let mut d = budget.permit(ip("198.51.100.2"));
        assert!(matches!(d.grow(1), Err(PipelineError::Overloaded)), "the budget is full");
        assert_eq!(budget.clients(), 2);
        assert!(BodyPermit::default().grow(1 << 40).is_ok(), "a permit of no budget holds nothing");
    }

    /// Whether a body may pass the share is decided when it begins: a streamed body that began alone keeps
    /// growing when another of its client's joins, and the other is held to the share.
    #[test]
    fn a_body_that_began_alone_keeps_growing_and_a_share_of_0_is_none() {
        let budget = BodyBudget::new(100, 25);
        let mut first = budget.permit(ip("192.0.2.1"));
        first.grow(10).expect("alone");
        let mut joined = budget.permit(ip("192.0.2.1"));
        joined.grow(10).expect("10 + 10 within the share");
        first.grow(60).expect("began alone: as large as its source allows");
        assert!(matches!(joined.grow(11), Err(PipelineError::Overloaded)), "held to the share");
        assert_eq!(budget.available(), 100 - 60 - 10);
        let unshared = BodyBudget::new(100, 0);
        let (mut a, mut b) = (unshared.permit(ip("192.0.2.1")), unshared.permit(ip("192.0.2.1")));
        a.grow(60).expect("no share");
        b.grow(40).expect("no share: only the budget");
        assert_eq!((unshared.available(), unshared.clients()), (0, 0));
    }
}
