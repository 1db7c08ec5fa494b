//! Rate limits end to end (issue 12, item 2), against the real RabbitMQ: the global, per-source and per-client
//! buckets each answer `429 Too Many Requests` with `Retry-After`, publish nothing, count
//! `hookgate_posting_errors_total{reason="rate_limited"}`, and admit again once refilled; a flood of distinct
//! client addresses through a trusted proxy leaves the per-client map at its cap.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{expect, expect_published};
use crate::support::{metric_value, Gateway, Resp, JSON};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_limit_answers_429_and_recovers() {
    let config = format!(
        "{}[sources.a]\npreset = \"generic\"\nunauthenticated = true\n[sources.b]\npreset = \"generic\"\nunauthenticated = true\n",
        limits("{ per_second = 1, burst = 3 }", BIG)
    );
    let gw = Gateway::start(&config).await;
    let mut q = gw.queue("#").await;
    expect(&gw.post("/webhooks/a", &JSON, &body(1)).await, 200, "Stored", "token 1");
    expect(&gw.post("/webhooks/b", &JSON, &body(2)).await, 200, "Stored", "token 2, another source");
    expect(&gw.post("/webhooks/a", &JSON, &body(3)).await, 200, "Stored", "token 3");
    expect_limited(&gw.post("/webhooks/b", &JSON, &body(4)).await, "the gateway's bucket is empty");
    expect_limited(&gw.post("/webhooks/nowhere", &JSON, &body(5)).await, "unknown paths count too");
    expect_published(&mut q, &[body(1), body(2), body(3)]).await;
    assert_eq!(gw.metric("hookgate_posting_errors_total{reason=\"rate_limited\",source=\"b\"}").await, 1.0);
    assert_eq!(gw.metric("hookgate_posting_errors_total{reason=\"rate_limited\",source=\"unmatched\"}").await, 1.0);
    assert_eq!(gw.metric("hookgate_requests_total{code=\"429\",source=\"b\"}").await, 1.0);

    tokio::time::sleep(REFILL).await;
    expect(&gw.post("/webhooks/b", &JSON, &body(6)).await, 200, "Stored", "refilled");
    expect_published(&mut q, &[body(6)]).await;
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
    expect(&gw.post("/webhooks/limited", &JSON, &body(1)).await, 200, "Stored", "token 1");
    expect(&gw.post("/webhooks/limited", &JSON, &body(2)).await, 200, "Stored", "token 2");
    expect_limited(&gw.post("/webhooks/limited", &JSON, &body(3)).await, "the source's bucket is empty");
    expect(&gw.post("/webhooks/free", &JSON, &body(4)).await, 200, "Stored", "another source is not limited");
    expect_published(&mut q, &[body(1), body(2), body(4)]).await;
    assert_eq!(gw.metric("hookgate_posting_errors_total{reason=\"rate_limited\",source=\"limited\"}").await, 1.0);
    assert_eq!(gw.metric("hookgate_posting_errors_total{reason=\"rate_limited\",source=\"free\"}").await, 0.0);

    tokio::time::sleep(REFILL).await;
    expect(&gw.post("/webhooks/limited", &JSON, &body(5)).await, 200, "Stored", "refilled");
    expect_published(&mut q, &[body(5)]).await;
    q.close().await;
    gw.stop().await;
}

/// A delivery through the trusted proxy (127.0.0.1) for `client`.
async fn via(gw: &Gateway, path: &str, client: &str, headers: &[(&str, &str)], n: u32) -> Resp {
    let mut h = vec![("content-type", "application/json"), ("x-forwarded-for", client)];
    h.extend_from_slice(headers);
    gw.post(path, &h, &body(n)).await
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
    let (x, y) = ("198.51.100.7", "198.51.100.8");
    expect(&via(&gw, "/webhooks/open", x, &[], 1).await, 200, "Stored", "x token 1");
    expect(&via(&gw, "/webhooks/open", x, &[], 2).await, 200, "Stored", "x token 2");
    expect_limited(&via(&gw, "/webhooks/open", x, &[], 3).await, "x's bucket is empty");
    expect(&via(&gw, "/webhooks/open", y, &[], 4).await, 200, "Stored", "another client address");
    // IPv6: one bucket per /64.
    expect(&via(&gw, "/webhooks/open", "2001:db8:5:6::1", &[], 5).await, 200, "Stored", "v6 token 1");
    expect(&via(&gw, "/webhooks/open", "2001:db8:5:6::2", &[], 6).await, 200, "Stored", "v6 token 2, same /64");
    expect_limited(&via(&gw, "/webhooks/open", "2001:db8:5:6:ffff::3", &[], 7).await, "the /64's bucket is empty");
    expect(&via(&gw, "/webhooks/open", "2001:db8:5:7::1", &[], 8).await, 200, "Stored", "the next /64");
    // Before authentication: the third unauthenticated attempt is not even checked.
    let z = "203.0.113.50";
    expect(&via(&gw, "/webhooks/locked", z, &[], 9).await, 401, "Unauthorized", "z attempt 1");
    expect(&via(&gw, "/webhooks/locked", z, &[], 10).await, 401, "Unauthorized", "z attempt 2");
    expect_limited(
        &via(&gw, "/webhooks/locked", z, &[("authorization", "Basic dTpw")], 11).await,
        "z, even with creds",
    );
    expect_published(&mut q, &[body(1), body(2), body(4), body(5), body(6), body(8)]).await;
    assert_eq!(gw.metric("hookgate_posting_errors_total{reason=\"rate_limited\",source=\"open\"}").await, 2.0);
    assert_eq!(gw.metric("hookgate_posting_errors_total{reason=\"rate_limited\",source=\"locked\"}").await, 1.0);
    assert_eq!(gw.metric("hookgate_auth_failures_total{method=\"basic\",source=\"locked\"}").await, 2.0, "not 3");

    tokio::time::sleep(REFILL).await;
    expect(&via(&gw, "/webhooks/open", x, &[], 12).await, 200, "Stored", "x refilled");
    expect(&via(&gw, "/webhooks/locked", z, &[("authorization", "Basic dTpw")], 13).await, 200, "Stored", "z refilled");
    expect_published(&mut q, &[body(12), body(13)]).await;
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
    assert!(keys >= (CAP / 2) as f64, "the map filled up: {keys}");
    // Past the cap, new addresses shared the overflow bucket: most were refused (each address sent once, so
    // without the cap every one would have been admitted).
    assert!(limited >= total / 2, "{limited} of {total} refused");
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
    assert_eq!(gw.metric("hookgate_rate_limiter_keys").await, 1.0, "the idle addresses were dropped");
    gw.stop().await;
}
