//! The limiters under a fake clock: each limit refuses past its burst, names itself, gives a `Retry-After`, and
//! admits again once the bucket refilled; the per-client map stays within its cap whatever the addresses.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use prometheus::IntGauge;

use super::*;

fn bucket(per_second: u32, burst: u32) -> config::Bucket {
    config::Bucket { per_second, burst }
}

fn gauge() -> IntGauge {
    IntGauge::new("hookgate_rate_limiter_keys", "test").unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The n-th of 2^32 distinct IPv4 addresses.
fn v4(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(n))
}

fn limits(
    global: config::Bucket,
    per_client: config::Bucket,
    max_clients: usize,
) -> (RateLimits<FakeRelativeClock>, FakeRelativeClock, IntGauge) {
    let clock = FakeRelativeClock::default();
    let keys = gauge();
    let cfg = config::RateLimits { global, per_client, max_clients };
    (RateLimits::with_clock(&cfg, keys.clone(), clock.clone()), clock, keys)
}

fn refused(limit: Limit, retry_after_secs: u64) -> Result<(), Limited> {
    Err(Limited { limit, retry_after_secs })
}

#[test]
fn a_bucket_refuses_past_its_burst_and_refills() {
    let clock = FakeRelativeClock::default();
    let b = Bucket::with_clock(bucket(2, 3), Limit::Source, clock.clone());
    for _ in 0..3 {
        assert_eq!(b.check(), Ok(()));
    }
    assert_eq!(b.check(), refused(Limit::Source, 1), "one cell back in 500 ms: Retry-After rounds up to 1");
    clock.advance(Duration::from_millis(400));
    assert_eq!(b.check(), refused(Limit::Source, 1), "100 ms left is still a whole second");
    clock.advance(Duration::from_millis(100));
    assert_eq!(b.check(), Ok(()), "one cell refilled");
    assert_eq!(b.check(), refused(Limit::Source, 1));
    clock.advance(Duration::from_secs(2));
    for _ in 0..3 {
        assert_eq!(b.check(), Ok(()), "the whole burst refilled");
    }
    assert!(b.check().is_err());
}

#[test]
fn per_client_first_then_global_then_source() {
    let (l, _, _) = limits(bucket(1, 3), bucket(1, 2), 100);
    let (a, b, c) = (ip("203.0.113.1"), ip("203.0.113.2"), ip("203.0.113.3"));
    assert_eq!(l.check(a, None), Ok(()));
    assert_eq!(l.check(a, None), Ok(()));
    assert_eq!(l.check(a, None), refused(Limit::Client, 1), "a's own bucket");
    assert_eq!(l.check(a, None), refused(Limit::Client, 1), "refused by its own bucket: no global token taken");
    assert_eq!(l.check(b, None), Ok(()), "so the third global token is still there");
    assert_eq!(l.check(c, None), refused(Limit::Global, 1), "another client, but the gateway is at its limit");

    let (l, clock, _) = limits(bucket(100, 100), bucket(100, 100), 100);
    let source = Bucket::with_clock(bucket(1, 1), Limit::Source, clock.clone());
    assert_eq!(l.check(a, Some(&source)), Ok(()));
    assert_eq!(l.check(b, Some(&source)), refused(Limit::Source, 1), "the source's own bucket, whoever sends");
    assert_eq!(l.check(b, None), Ok(()), "another source is not limited by this one's bucket");
    clock.advance(Duration::from_secs(1));
    assert_eq!(l.check(b, Some(&source)), Ok(()), "refilled after 1 / per_second");
}

#[test]
fn clients_are_ipv4_addresses_and_ipv6_64_networks() {
    assert_eq!(ClientKey::of(ip("192.0.2.1")), ClientKey::V4(0xc000_0201));
    assert_ne!(ClientKey::of(ip("192.0.2.1")), ClientKey::of(ip("192.0.2.2")), "IPv4: /32");
    assert_eq!(ClientKey::of(ip("::ffff:192.0.2.1")), ClientKey::of(ip("192.0.2.1")), "IPv4-mapped IPv6");
    assert_eq!(ClientKey::of(ip("2001:db8:1:2::1")), ClientKey::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")), "/64");
    assert_ne!(ClientKey::of(ip("2001:db8:1:2::1")), ClientKey::of(ip("2001:db8:1:3::1")));

    let (l, _, keys) = limits(bucket(1000, 1000), bucket(1, 2), 100);
    assert_eq!(l.check(ip("2001:db8:1:2::1"), None), Ok(()));
    assert_eq!(l.check(ip("2001:db8:1:2::2"), None), Ok(()));
    assert_eq!(l.check(ip("2001:db8:1:2:abcd::9"), None), refused(Limit::Client, 1), "one bucket for the /64");
    assert_eq!(l.check(ip("2001:db8:1:3::1"), None), Ok(()), "the next /64 is another client");
    assert_eq!((l.client_keys(), keys.get()), (2, 2));
}

#[test]
fn a_hundred_thousand_addresses_and_more_stay_within_the_cap() {
    const MAX: usize = 100_000;
    let (l, clock, keys) = limits(bucket(10_000_000, 10_000_000), bucket(1, 2), MAX);
    let first = 0x0a00_0000; // 10.0.0.0
    for n in 0..150_000u32 {
        let r = l.check(v4(first + n), None);
        if (n as usize) < MAX {
            assert_eq!(r, Ok(()), "address {n} has its own bucket");
        } else if (n as usize) < MAX + 2 {
            assert_eq!(r, Ok(()), "the overflow bucket's burst");
        } else {
            assert_eq!(r, refused(Limit::ClientOverflow, 1), "past the cap, new addresses share one bucket");
        }
    }
    assert_eq!(l.client_keys(), MAX);
    assert_eq!(keys.get(), i64::try_from(MAX).unwrap(), "the gauge reports the map's size");
    assert_eq!(l.check(v4(first), None), Ok(()), "a tracked address keeps its own bucket");
    assert_eq!(l.check(v4(first), None), refused(Limit::Client, 1));

    // Once the addresses are idle (burst / per_second = 2 s), the next new one prunes the full map and gets its
    // own bucket.
    clock.advance(Duration::from_secs(3));
    assert_eq!(l.check(v4(0xc000_0201), None), Ok(()));
    assert_eq!(l.check(v4(0xc000_0201), None), Ok(()));
    assert_eq!(l.check(v4(0xc000_0201), None), refused(Limit::Client, 1), "its own bucket, not the overflow");
    assert_eq!((l.client_keys(), keys.get()), (1, 1));
}

#[test]
fn a_full_map_is_pruned_on_demand_at_most_once_a_second() {
    // per_second 10, burst 1: an address is idle again 100 ms after its request.
    let (l, clock, _) = limits(bucket(1_000_000, 1_000_000), bucket(10, 1), 10);
    for n in 0..10 {
        assert_eq!(l.check(v4(n), None), Ok(()));
    }
    assert_eq!(l.check(v4(10), None), Ok(()), "full: pruned (nothing idle), then the overflow bucket");
    assert_eq!(l.client_keys(), 10);
    clock.advance(Duration::from_millis(500));
    assert_eq!(l.check(v4(11), None), Ok(()), "every address is idle, but the last prune was 500 ms ago");
    assert_eq!(l.client_keys(), 10, "not pruned again yet: the new address went to the overflow bucket");
    clock.advance(Duration::from_millis(600));
    assert_eq!(l.check(v4(12), None), Ok(()));
    assert_eq!(l.client_keys(), 1, "pruned, and the address got its own bucket");
}

#[test]
fn the_timer_prune_drops_only_idle_addresses() {
    let (l, clock, keys) = limits(bucket(1_000_000, 1_000_000), bucket(1, 5), 1000);
    for n in 0..100 {
        assert_eq!(l.check(v4(n), None), Ok(()));
    }
    clock.advance(Duration::from_secs(5));
    for n in 0..5 {
        assert_eq!(l.check(v4(n), None), Ok(()), "five addresses stay busy");
    }
    clock.advance(Duration::from_secs(1));
    l.prune();
    assert_eq!((l.client_keys(), keys.get()), (5, 5), "the 95 idle ones are dropped");
}

#[test]
fn refusals_warn_once_per_interval_and_count_the_rest() {
    let r = Refusals::default();
    for n in 0..1000 {
        r.log("tyro", n, Limit::Client);
    }
    assert_eq!(r.0.due(), None, "the first refusal warned, and the period has not passed");
}
