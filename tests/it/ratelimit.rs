//! Rate limits end to end (issue 12, item 2), against the real RabbitMQ: the global, per-source and per-client
//! buckets each answer `429 Too Many Requests` with `Retry-After`, publish nothing, count
//! `hookgate_posting_errors_total{reason="rate_limited"}`, and admit again once refilled; a flood of distinct
//! client addresses through a trusted proxy leaves the per-client map at its cap.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{expect, expect_published, WAIT};
use crate::support::{metric_value, Gateway, Queue, Resp, JSON};

/// Longer than a refill of one token at `per_second = 1`, with a margin for a loaded machine.
const REFILL: Duration = Duration::from_millis(1300);

fn body(n: u32) -> Vec<u8> {
    format!(r#"{{"event":"rate.test","n":{n}}}"#).into_bytes()
}

#[track_caller]
fn expect_limited(r: &Resp, case: &str) {
    expect(r, 429, "Too Many Requests", case);
    assert_eq!(r.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"), "{case}: Retry-After");
}

fn limits(global: &str, per_client: &str) -> String {
    format!("[rate_limits]\nglobal = {global}\nper_client = {per_client}\n")
}

const BIG: &str = "{ per_second = 10000, burst = 10000 }";

/// One request of a burst: the source label it counts under, path, headers (name, value) and body.
struct Req {
    label: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn req(label: &'static str, path: &'static str, headers: &[(&'static str, &str)], n: u32) -> Req {
    let mut h = vec![("content-type", "application/json".to_string())];
    h.extend(headers.iter().map(|(k, v)| (*k, v.to_string())));
    Req { label, path, headers: h, body: body(n) }
}

/// What a burst got: the bodies stored (in request order), the 429s and 401s per label, the seconds it took
/// (rounded up: the tokens a `per_second = 1` bucket may have refilled meanwhile).
#[derive(Default)]
struct Outcome {
    stored: Vec<Vec<u8>>,
    limited: std::collections::BTreeMap<&'static str, u32>,
    unauthorized: u32,
    refills: u32,
}

impl Outcome {
    fn limited(&self, label: &str) -> u32 {
        self.limited.get(label).copied().unwrap_or(0)
    }

    fn total_limited(&self) -> u32 {
        self.limited.values().sum()
    }
}

/// Sends every request at once, each on its own connection, and sorts the answers. Every answer must be
/// `200 Stored`, `401`, `404` or a `429` with `Retry-After: 1`.
async fn burst(gw: &Gateway, reqs: Vec<Req>) -> Outcome {
    let started = tokio::time::Instant::now();
    let answers = futures_util::future::join_all(reqs.iter().map(|r| {
        let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        async move { gw.post(r.path, &headers, &r.body).await }
    }))
    .await;
    let mut out =
        Outcome { refills: u32::try_from(started.elapsed().as_secs()).expect("secs") + 1, ..Outcome::default() };
    for (r, a) in reqs.iter().zip(answers) {
        match a.status {
            200 => {
                expect(&a, 200, "Stored", r.label);
                out.stored.push(r.body.clone());
            }
            429 => {
                expect_limited(&a, r.label);
                *out.limited.entry(r.label).or_default() += 1;
            }
            401 => out.unauthorized += 1,
            404 => {}
            other => panic!("{}: unexpected {other} {:?}", r.label, a.body),
        }
    }
    out
}

/// The queue holds exactly `bodies`, in any order (they were sent at once), and then nothing.
async fn expect_published_unordered(q: &mut Queue, bodies: &[Vec<u8>]) {
    let mut got = Vec::new();
    for i in 0..bodies.len() {
        got.push(q.next(WAIT).await.unwrap_or_else(|| panic!("message {i} of {} missing", bodies.len())).body);
    }
    assert!(q.next(Duration::from_millis(300)).await.is_none(), "a refused delivery was published");
    let mut want = bodies.to_vec();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

/// The rate_limited count of `source`.
async fn limited_metric(gw: &Gateway, source: &str) -> f64 {
    gw.metric(&format!("hookgate_posting_errors_total{{reason=\"rate_limited\",source=\"{source}\"}}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_limit_answers_429_and_recovers() {
    let config = format!(
        "{}[sources.a]\npreset = \"generic\"\nunauthenticated = true\n[sources.b]\npreset = \"generic\"\nunauthenticated = true\n",
        limits("{ per_second = 1, burst = 3 }", BIG)
    );
    let gw = Gateway::start(&config).await;
    let mut q = gw.queue("#").await;
    // 13 requests at once against 3 tokens: two sources and unknown paths share the gateway's bucket.
    let mut reqs: Vec<Req> = (0..5).map(|n| req("a", "/webhooks/a", &[], n)).collect();
    reqs.extend((5..10).map(|n| req("b", "/webhooks/b", &[], n)));
    reqs.extend((10..13).map(|n| req("unmatched", "/webhooks/nowhere", &[], n)));
    let out = burst(&gw, reqs).await;
    assert!(out.total_limited() >= 10 - out.refills.min(10), "{} refused", out.total_limited());
    assert!(out.total_limited() >= 1, "at least one refused");
    assert!(out.stored.len() <= 3 + out.refills as usize, "{} stored with 3 tokens", out.stored.len());
    expect_published_unordered(&mut q, &out.stored).await;
    for label in ["a", "b", "unmatched"] {
        assert_eq!(limited_metric(&gw, label).await, f64::from(out.limited(label)), "{label}");
    }

    tokio::time::sleep(REFILL).await;
    expect(&gw.post("/webhooks/b", &JSON, &body(20)).await, 200, "Stored", "refilled");
    expect_published(&mut q, &[body(20)]).await;
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_limit_answers_429_for_that_source_only() {
    let config = format!(
        "{}[sources.limited]\npreset = \"generic\"\nunauthenticated = true\nrate_limit = {{ per_second = 1, burst = 2 }}\n\
         [sources.free]\npreset = \"generic\"\nunauthenticated = true\n",
        limits(BIG, BIG)
    );
    let gw = Gateway::start(&config).await;
    let mut q = gw.queue("#").await;
    let mut reqs: Vec<Req> = (0..12).map(|n| req("limited", "/webhooks/limited", &[], n)).collect();
    reqs.extend((12..17).map(|n| req("free", "/webhooks/free", &[], n)));
    let out = burst(&gw, reqs).await;
    assert!(
        out.limited("limited") >= 10 - out.refills.min(10) && out.limited("limited") >= 1,
        "{}",
        out.limited("limited")
    );
    assert_eq!(out.limited("free"), 0, "another source is not limited by this one's bucket");
    expect_published_unordered(&mut q, &out.stored).await;
    assert_eq!(limited_metric(&gw, "limited").await, f64::from(out.limited("limited")));
    assert_eq!(limited_metric(&gw, "free").await, 0.0);

    tokio::time::sleep(REFILL).await;
    expect(&gw.post("/webhooks/limited", &JSON, &body(20)).await, 200, "Stored", "refilled");
    expect_published(&mut q, &[body(20)]).await;
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_limit_answers_429_before_authentication() {
    let config = format!(
        "{}[sources.open]\npreset = \"generic\"\nunauthenticated = true\n\
         [sources.locked]\npreset = \"generic\"\n[sources.locked.auth]\nbasic = [{{ username = \"u\", password = \"p\" }}]\n",
        limits(BIG, "{ per_second = 1, burst = 2 }")
    );
    let gw = Gateway::start_full(
        "trusted_proxies = [\"127.0.0.1/32\"]\n",
        &config,
        &crate::support::amqp_url(),
        Default::default(),
    )
    .await;
    let mut q = gw.queue("#").await;
    let from = |label, path, ip: &str, n| req(label, path, &[("x-forwarded-for", ip)], n);
    // Client x: 12 at once against its 2 tokens; client y, one, has its own bucket.
    let mut reqs: Vec<Req> = (0..12).map(|n| from("x", "/webhooks/open", "198.51.100.7", n)).collect();
    reqs.push(from("y", "/webhooks/open", "198.51.100.8", 12));
    // IPv6: every address of one /64 shares a bucket.
    reqs.extend((13..25).map(|n| from("v6", "/webhooks/open", &format!("2001:db8:5:6::{n:x}"), n)));
    reqs.push(from("v6 next /64", "/webhooks/open", "2001:db8:5:7::1", 25));
    let out = burst(&gw, reqs).await;
    let floor = 10 - out.refills.min(10);
    assert!(out.limited("x") >= floor && out.limited("x") >= 1, "x: {}", out.limited("x"));
    assert!(out.limited("v6") >= floor && out.limited("v6") >= 1, "v6: {}", out.limited("v6"));
    assert_eq!((out.limited("y"), out.limited("v6 next /64")), (0, 0), "other clients have their own buckets");
    expect_published_unordered(&mut q, &out.stored).await;
    assert_eq!(limited_metric(&gw, "open").await, f64::from(out.total_limited()));

    // Before authentication: refused attempts are never checked, whatever credentials they carry.
    let z = "203.0.113.50";
    let mut reqs: Vec<Req> = (30..36).map(|n| from("z", "/webhooks/locked", z, n)).collect();
    reqs.extend((36..42).map(|n| {
        let mut r = from("z", "/webhooks/locked", z, n);
        r.headers.push(("authorization", "Basic dTpw".to_string()));
        r
    }));
    let out_z = burst(&gw, reqs).await;
    assert!(out_z.limited("z") >= 10 - out_z.refills.min(10) && out_z.limited("z") >= 1, "z: {}", out_z.limited("z"));
    assert_eq!(out_z.stored.len() as u32 + out_z.unauthorized + out_z.limited("z"), 12);
    let auth_failures = gw.metric("hookgate_auth_failures_total{method=\"basic\",source=\"locked\"}").await;
    assert_eq!(auth_failures, f64::from(out_z.unauthorized), "the refused attempts were not authenticated");
    assert_eq!(limited_metric(&gw, "locked").await, f64::from(out_z.limited("z")));
    expect_published_unordered(&mut q, &out_z.stored).await;

    tokio::time::sleep(REFILL).await;
    let creds = [("content-type", "application/json"), ("x-forwarded-for", z), ("authorization", "Basic dTpw")];
    expect(&gw.post("/webhooks/locked", &creds, &body(50)).await, 200, "Stored", "z refilled");
    expect_published(&mut q, &[body(50)]).await;
    q.close().await;
    gw.stop().await;
}

/// Counts a pattern in a byte stream read in pieces (a match may straddle two pieces).
struct Counter {
    pattern: &'static [u8],
    carry: Vec<u8>,
    seen: u32,
}

impl Counter {
    fn new(pattern: &'static [u8]) -> Self {
        Counter { pattern, carry: Vec::new(), seen: 0 }
    }

    fn feed(&mut self, piece: &[u8]) {
        // The carry is shorter than the pattern, so no match lies wholly inside it: none is counted twice.
        let window = [self.carry.as_slice(), piece].concat();
        self.seen +=
            u32::try_from(window.windows(self.pattern.len()).filter(|w| *w == self.pattern).count()).expect("count");
        self.carry = window[window.len().saturating_sub(self.pattern.len() - 1)..].to_vec();
    }
}

/// Sends `count` pipelined requests to an unknown path on one keep-alive connection, each from the next client
/// address after `first` (as the trusted proxy's `X-Forwarded-For`); returns how many got 404 and 429.
async fn flood(addr: std::net::SocketAddr, first: u32, count: u32) -> (u32, u32) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        for start in (0..count).step_by(500) {
            let mut out = Vec::with_capacity(500 * 80);
            for n in start..(start + 500).min(count) {
                let ip = std::net::Ipv4Addr::from(first + n);
                out.extend_from_slice(
                    format!("GET /flood HTTP/1.1\r\nhost: x\r\nx-forwarded-for: {ip}\r\n\r\n").as_bytes(),
                );
            }
            wr.write_all(&out).await.expect("write");
        }
        wr
    });
    let (mut not_found, mut limited) = (Counter::new(b"HTTP/1.1 404 "), Counter::new(b"HTTP/1.1 429 "));
    let mut buf = vec![0u8; 64 * 1024];
    while not_found.seen + limited.seen < count {
        let n = tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf)).await.expect("answers").expect("read");
        assert!(n > 0, "the gateway closed the connection after {} answers", not_found.seen + limited.seen);
        not_found.feed(&buf[..n]);
        limited.feed(&buf[..n]);
    }
    drop(writer.await.expect("writer"));
    (not_found.seen, limited.seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_client_addresses_leave_the_limiter_at_its_cap() {
    const CAP: usize = 2_000;
    const PER_CONN: u32 = 5_000;
    const CONNS: u32 = 4;
    // One request leaves an address's bucket one token short for 1 s: it is idle (prunable) 2 s after it.
    let config = format!(
        "{}max_clients = {CAP}\n{}",
        limits("{ per_second = 1000000, burst = 1000000 }", "{ per_second = 1, burst = 5 }"),
        crate::support::GENERIC
    );
    let gw = Gateway::start_full(
        "trusted_proxies = [\"127.0.0.1/32\"]\n",
        &config,
        &crate::support::amqp_url(),
        Default::default(),
    )
    .await;
    let done = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn({
        let (admin, done) = (Gateway::client_for(gw.admin), done.clone());
        async move {
            let mut max = 0.0f64;
            while !done.is_cancelled() {
                let text = admin.try_get("/metrics").await.map(|(_, text)| text).unwrap_or_default();
                max = max.max(metric_value(&text, "hookgate_rate_limiter_keys"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            max
        }
    });
    let started = tokio::time::Instant::now();
    let floods: Vec<_> =
        (0..CONNS).map(|c| tokio::spawn(flood(gw.addr, 0x0b00_0000 + c * PER_CONN, PER_CONN))).collect();
    let (mut not_found, mut limited) = (0, 0);
    for f in floods {
        let (a, b) = f.await.expect("flood");
        (not_found, limited) = (not_found + a, limited + b);
    }
    let took = started.elapsed();
    done.cancel();
    let max_seen = sampler.await.expect("sampler");
    let total = CONNS * PER_CONN;
    eprintln!("{total} addresses in {took:?}: {not_found} admitted, {limited} refused, at most {max_seen} keys");
    assert_eq!(not_found + limited, total, "every request answered");
    let keys = gw.metric("hookgate_rate_limiter_keys").await;
    assert!(max_seen <= CAP as f64 && keys <= CAP as f64, "over the cap: {max_seen} during, {keys} after");
    // Sampled during the flood: the timer's prune may already have dropped idle addresses by the end.
    assert!(max_seen >= (CAP / 2) as f64, "the map filled up: at most {max_seen} keys seen");
    // Each address sent once, so without the cap every request would have been admitted. With it: CAP own
    // buckets, CAP more each time a prune (at most once a second) found addresses idle (2 s after their
    // request), and the overflow bucket's 5 plus one a second.
    let secs = u32::try_from(took.as_secs()).expect("secs") + 1;
    let bound = CAP as u32 * (1 + secs.div_ceil(2)) + 5 + secs;
    assert!(not_found <= bound && limited > 0, "{not_found} admitted in {took:?} (bound {bound})");
    assert_eq!(
        gw.metric("hookgate_posting_errors_total{reason=\"rate_limited\",source=\"unmatched\"}").await,
        f64::from(limited)
    );
    // Once the flood's addresses are idle, the next new client prunes them and gets its own bucket.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for _ in 0..5 {
        let r = gw.request("GET", "/flood", &[("x-forwarded-for", "192.0.2.1")], b"").await;
        expect(&r, 404, "Not Found", "a new client after the flood has its own five tokens");
    }
    // The new client prunes the map when it found it full; when the timer's prune had already made room during
    // the flood, the next timer prune (every PRUNE_EVERY) drops the idle addresses.
    let give_up = tokio::time::Instant::now() + hookgate::ratelimit::PRUNE_EVERY + Duration::from_secs(5);
    let mut keys = gw.metric("hookgate_rate_limiter_keys").await;
    while keys > 1.0 && tokio::time::Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(200)).await;
        keys = gw.metric("hookgate_rate_limiter_keys").await;
    }
    assert!(keys <= 1.0, "the idle addresses were dropped: {keys} keys left");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rebuilds_a_source_bucket_with_its_new_size() {
    let source = |burst: u32| {
        format!(
            "[sources.r]\npreset = \"generic\"\nunauthenticated = true\nrate_limit = {{ per_second = 1, burst = {burst} }}\n"
        )
    };
    let gw = Gateway::start(&source(1)).await;
    let mut q = gw.queue("#").await;
    expect(&gw.post("/webhooks/r", &JSON, &body(0)).await, 200, "Stored", "the one token");
    expect_limited(&gw.post("/webhooks/r", &JSON, &body(0)).await, "burst 1");

    gw.rewrite(&crate::support::amqp_url(), &source(10));
    let applied = gw.reload().await.expect("reload applied");
    assert!(applied.restart_required.is_empty(), "a source's rate_limit changes live: {applied:?}");
    // The old, empty bucket would admit one delivery a second; the new one starts with ten tokens.
    for n in 1..=10 {
        expect(&gw.post("/webhooks/r", &JSON, &body(n)).await, 200, "Stored", "the new, full bucket of 10");
    }
    let published: Vec<_> = std::iter::once(body(0)).chain((1..=10).map(body)).collect();
    expect_published(&mut q, &published).await;
    q.close().await;
    gw.stop().await;
}
