//! Limits that hold before authentication: all request headers together (`431`), and request-body bytes in
//! flight across every connection (the source's retry status with `Retry-After`), measured on a real process.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    amqp_url, delete_exchange, proc_config_server, unique, Gateway, Pki, Proxy, Queue, GENERIC, JSON,
};

fn head_with(headers: &[(String, String)]) -> String {
    let mut head = String::from("POST /webhooks/generic HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head + "content-length: 2\r\n\r\n{}"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_max_header_bytes_together_get_431() {
    let pki = Pki::new();
    let extra = format!("{}{GENERIC}", pki.server_toml(false));
    let mut gw = Gateway::start_full("max_header_bytes = 4096\n", &extra, &amqp_url(), HashMap::new()).await;
    let mut q = gw.queue("#").await;
    gw.tls = Some(pki.client_config(None, &[b"http/1.1"]));
    let one_big = vec![("x-big".to_string(), "a".repeat(5_000))];
    let ten: Vec<_> = (0..10).map(|i| (format!("x-h{i}"), "b".repeat(500))).collect();
    for headers in [&one_big, &ten] {
        let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut all = JSON.to_vec();
        all.extend(refs);
        let r = gw.post("/webhooks/generic", &all, b"{}").await;
        assert_eq!((r.status, r.reason.as_str()), (431, "Request Header Fields Too Large"));
    }
    // HTTP/2 (ALPN): ten 500-byte headers.
    let connector = tokio_rustls::TlsConnector::from(pki.client_config(None, &[b"h2"]));
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let tls = connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::post("https://localhost/webhooks/generic").header("content-type", "application/json");
    for (k, v) in &ten {
        req = req.header(k, v);
    }
    let resp = sender.send_request(req.body(Full::new(Bytes::from_static(b"{}"))).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 431);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "Request Header Fields Too Large\n");
    assert_eq!(gw.metric("hookgate_posting_errors_total{reason=\"headers_too_large\",source=\"generic\"}").await, 3.0);
    assert!(q.next(Duration::from_millis(300)).await.is_none(), "nothing published");

    // Just under the cap, on plain HTTP/1.1 too: stored.
    let near: Vec<_> = (0..3).map(|i| (format!("x-n{i}"), "c".repeat(1_000))).collect();
    let refs: Vec<(&str, &str)> = near.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut all = JSON.to_vec();
    all.extend(refs);
    let r = gw.post("/webhooks/generic", &all, br#"{"event":"near.cap"}"#).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    assert_eq!(q.exactly_one(Duration::from_secs(5)).await.routing_key, "generic.near.cap");
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_oversized_heads_on_plain_http_get_431() {
    let gw = Gateway::start_full("max_header_bytes = 4096\n", GENERIC, &amqp_url(), HashMap::new()).await;
    let mut q = gw.queue("#").await;
    let one_big = vec![("x-big".to_string(), "a".repeat(5_000))];
    let ten: Vec<_> = (0..10).map(|i| (format!("x-h{i}"), "b".repeat(500))).collect();
    let huge = vec![("x-huge".to_string(), "d".repeat(40_000))];
    for headers in [one_big, ten, huge] {
        let answer = gw.raw(head_with(&headers).as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }
    assert!(q.next(Duration::from_millis(300)).await.is_none(), "nothing published");
    q.close().await;
    gw.stop().await;
}

const BODY: usize = 1 << 20;
/// 8.5 MiB: room for eight 1 MiB bodies and a small delivery.
const BUDGET: u64 = (8 << 20) + (512 << 10);

fn vm(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with(field)).expect("field");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("kB") * 1024
}

/// An unauthenticated 1 MiB body from client address `from` (through the trusted proxy, `X-Forwarded-For`): the
/// head, then (unless refused at once) all but its last byte, then silence. Returns the answer's status line and
/// `Retry-After`, if it was refused before the body.
async fn slow_body(addr: std::net::SocketAddr, from: String) -> Option<(String, String)> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /webhooks/sig HTTP/1.1\r\nhost: x\r\nx-forwarded-for: {from}\r\ncontent-type: application/json\r\n\
         content-length: {BODY}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(700), s.read(&mut buf)).await {
        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        let retry = answer.lines().find_map(|l| l.strip_prefix("retry-after: ")).unwrap_or_default().to_string();
        return Some((answer.lines().next().unwrap_or_default().to_string(), retry));
    }
    let _ = s.write_all(&vec![b' '; BODY - 1]).await;
    // Held open: the gateway cuts it at body_read_timeout.
    let _ = tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf)).await;
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_unauthenticated_bodies_are_held_to_the_inflight_budget() {
    let (_dir, exchange, gw, mut q) = budget_gateway("hookgate-inflight").await;
    let body = br#"{"event":"legit"}"#;
    let headers = signed(body);
    let warm = gw
        .client
        .post("/webhooks/sig", &headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>(), body)
        .await;
    assert_eq!(warm.status, 200);
    q.exactly_one(Duration::from_secs(5)).await;
    let baseline = vm(gw.pid(), "VmRSS:");

    // Each from an address of its own: the per-client share (a quarter of the budget) is not what refuses them.
    let attackers: Vec<_> = (1..=64).map(|k| tokio::spawn(slow_body(gw.client.addr, format!("192.0.2.{k}")))).collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The budget is held by the slow bodies; a signed delivery still fits.
    let body = br#"{"event":"legit","n":2}"#;
    let mut headers = signed(body);
    headers.push(("x-forwarded-for".into(), "198.51.100.1".into()));
    let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = gw.client.post("/webhooks/sig", &refs, body).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    let peak = vm(gw.pid(), "VmHWM:");
    let mut refused = 0;
    for a in attackers {
        if let Some((status, retry)) = a.await.unwrap() {
            assert_eq!((status.as_str(), retry.as_str()), ("HTTP/1.1 503 Server Busy", "1"));
            refused += 1;
        }
    }
    let grown = peak.saturating_sub(baseline);
    eprintln!("RSS baseline {} KiB, peak {} KiB, grown {} KiB", baseline / 1024, peak / 1024, grown / 1024);
    assert!(grown < BUDGET + (24 << 20), "RSS grew by {grown} bytes");
    assert_eq!(refused, 56, "eight 1 MiB bodies fit in the budget");
    assert_eq!(gw.metric("hookgate_posting_errors_total{reason=\"overloaded\",source=\"sig\"}").await, 56.0);
    assert_eq!(q.exactly_one(Duration::from_secs(5)).await.body, br#"{"event":"legit","n":2}"#);
    q.close().await;
    drop(gw);
    delete_exchange(&exchange).await;
}

/// One client's bodies together hold at most a quarter of `max_inflight_body_bytes` (one body alone may be as
/// large as its source allows): eight slow 1 MiB bodies from one address no longer hold the whole budget (8.5 MiB),
/// so another client's 1 MiB delivery is stored, not turned away `503 Server Busy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_holds_at_most_a_quarter_of_the_inflight_budget() {
    let (_dir, exchange, gw, mut q) = budget_gateway("hookgate-share").await;
    let attacker: Vec<_> = (0..8).map(|_| tokio::spawn(slow_body(gw.client.addr, "192.0.2.9".into()))).collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut body = br#"{"event":"big","pad":""#.to_vec();
    body.resize(BODY - 2, b'x');
    body.extend_from_slice(b"\"}");
    let mut headers = signed(&body);
    headers.push(("x-forwarded-for".into(), "198.51.100.7".into()));
    let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = gw.client.post("/webhooks/sig", &refs, &body).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"), "another client's 1 MiB body fits");
    let mut refused = 0;
    for a in attacker {
        if let Some((status, retry)) = a.await.unwrap() {
            assert_eq!((status.as_str(), retry.as_str()), ("HTTP/1.1 503 Server Busy", "1"));
            refused += 1;
        }
    }
    assert_eq!(refused, 6, "two 1 MiB bodies fit in one client's quarter (2.125 MiB)");
    assert_eq!(gw.metric("hookgate_posting_errors_total{reason=\"overloaded\",source=\"sig\"}").await, 6.0);
    assert_eq!(q.exactly_one(Duration::from_secs(5)).await.body, body);
    q.close().await;
    drop(gw);
    delete_exchange(&exchange).await;
}

/// A real gateway for the budget tests (`budget_server`, the `SIG` source) on an exchange of its own, and a queue
/// bound to it; the temp dir must live as long as the gateway.
async fn budget_gateway(name: &str) -> (tempfile::TempDir, String, crate::support::Proc, Queue) {
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = unique(name);
    let config = proc_config_server(dir.path(), &exchange, &amqp_url(), &budget_server(), SIG, "");
    let gw = crate::support::Proc::spawn(&config).await;
    let q = Queue::bind(&exchange, "#").await;
    (dir, exchange, gw, q)
}

/// `[server]` of the budget tests: the 8.5 MiB budget, a 5 s body timeout, loopback the trusted proxy.
fn budget_server() -> String {
    format!("max_inflight_body_bytes = {BUDGET}\nbody_read_timeout = \"5s\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n")
}

/// A source whose HMAC needs the whole body, so bodies are read before any credential is checked.
const SIG: &str = "[sources.sig]\npreset = \"generic\"\nmax_body_bytes = 2097152\n[sources.sig.auth]\nhmac = { scheme = \"x-signature\", secrets = [\"s3cret\"] }\n";

/// A 1 MiB JSON body of ~130,000 tiny objects: a few bytes each on the wire, far more once parsed.
fn many_objects(k: usize) -> Vec<u8> {
    let mut body = format!(r#"{{"event":"objects","k":{k},"items":["#).into_bytes();
    while body.len() + 16 < BODY {
        body.extend_from_slice(br#"{"a":0},"#);
    }
    body.extend_from_slice(br#"{"a":0}]}"#);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parsed_body_is_not_held_while_its_event_is_stored() {
    // Sixteen bodies of tiny objects wait at once for a broker that never confirms (publish_timeout, then the
    // spool): what each waits with is its body, never its parsed tree, which costs many times the body.
    let dir = tempfile::tempdir().unwrap();
    let exchange = unique("hookgate-parsed");
    let proxy = Proxy::start().await;
    let config = proc_config_server(dir.path(), &exchange, &proxy.url(), "", GENERIC, "");
    let gw = crate::support::Proc::spawn(&config).await;
    let warm = gw.client.post("/webhooks/generic", &JSON, br#"{"event":"warm"}"#).await;
    assert_eq!((warm.status, warm.reason.as_str()), (200, "Stored"));
    let baseline = vm(gw.pid(), "VmRSS:");
    proxy.stall(true);
    let sends: Vec<_> = (0..16)
        .map(|k| {
            let client = gw.client;
            tokio::spawn(async move { client.post("/webhooks/generic", &JSON, &many_objects(k)).await })
        })
        .collect();
    for send in sends {
        let r = send.await.unwrap();
        assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    }
    let grown = vm(gw.pid(), "VmHWM:").saturating_sub(baseline);
    eprintln!("RSS baseline {} KiB, grown {} KiB", baseline / 1024, grown / 1024);
    assert!(grown < 96 << 20, "RSS grew by {} MiB for 16 MiB of bodies", grown >> 20);
    proxy.stall(false);
    drop(gw);
    delete_exchange(&exchange).await;
}

fn signed(body: &[u8]) -> Vec<(String, String)> {
    let cfg: hookgate::config::Hmac =
        toml::from_str::<toml::Table>(r#"x = { scheme = "x-signature", secrets = ["s3cret"] }"#)
            .map(|t| t["x"].clone().try_into().expect("hmac table"))
            .expect("toml");
    let mut h =
        hookgate::auth::hmac::sign("sig", &cfg, &HashMap::new(), body, std::time::SystemTime::now()).expect("sign");
    h.push(("content-type".into(), "application/json".into()));
    h
}
