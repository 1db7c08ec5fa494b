//! Silent, one-byte and idle connections are closed (public and admin listeners), and they never lock a
//! delivery out or stall a drain.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::{amqp_url, Gateway, Pki, GENERIC, JSON};

const HEADER_READ: Duration = Duration::from_secs(2);

/// Waits until the server closes `s` (EOF or reset): when, and what it sent until then; panics if it is still
/// open after `limit`.
async fn closed_within(mut s: TcpStream, limit: Duration) -> (Duration, String) {
    let started = Instant::now();
    let (mut buf, mut said) = ([0u8; 1024], Vec::new());
    loop {
        match tokio::time::timeout_at(started + limit, s.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {limit:?}"),
            Ok(Ok(0) | Err(_)) => return (started.elapsed(), String::from_utf8_lossy(&said).into_owned()),
            Ok(Ok(n)) => said.extend_from_slice(&buf[..n]),
        }
    }
}

/// `n` connections that each send `first` (maybe nothing) and then stay silent, all closed by the gateway
/// within `limit`; meanwhile a real delivery, queued behind them, is answered `200 Stored` within `limit`.
async fn flood_then_deliver(gw: &Gateway, n: usize, first: &'static [u8], limit: Duration) {
    let mut attackers = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(gw.addr).await.expect("connect");
        if !first.is_empty() {
            s.write_all(first).await.expect("write");
        }
        attackers.push(tokio::spawn(closed_within(s, limit)));
    }
    let started = Instant::now();
    let client = Gateway::client_for(gw.addr);
    let body = format!(r#"{{"event":"after.flood","n":{}}}"#, first.len());
    let delivery = tokio::spawn(async move { client.post("/webhooks/generic", &JSON, body.as_bytes()).await });
    for a in attackers {
        a.await.expect("every attacker closed in time");
    }
    let r = tokio::time::timeout(limit + Duration::from_secs(1), delivery).await.expect("answered").expect("task");
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    assert!(started.elapsed() < limit, "delivery answered after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_one_byte_connections_are_closed_and_deliveries_get_through() {
    let server = "max_connections = 50\nheader_read_timeout = \"2s\"\n";
    let gw = Gateway::start_full(server, GENERIC, &amqp_url(), HashMap::new()).await;
    let mut q = gw.queue("#").await;
    let limit = HEADER_READ + Duration::from_secs(1);
    // 50 connections that send nothing fill every slot; then 50 that send the first byte of an HTTP/2 preface.
    flood_then_deliver(&gw, 50, b"", limit).await;
    assert_eq!(q.exactly_one(Duration::from_secs(5)).await.routing_key, "generic.after.flood");
    flood_then_deliver(&gw, 50, b"P", limit).await;
    assert_eq!(q.exactly_one(Duration::from_secs(5)).await.routing_key, "generic.after.flood");
    // Part of a head (first on a connection, and after an answered request), and a whole HTTP/2 preface with no
    // request: closed alike; the parts of a head are answered `408` first (SPEC §5: "where HTTP still allows an
    // answer"), the silent one is not, and the HTTP/2 one gets HTTP/2's own GOAWAY.
    let mut partial = TcpStream::connect(gw.addr).await.unwrap();
    partial.write_all(b"POST /webhooks/generic HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut second = TcpStream::connect(gw.addr).await.unwrap();
    let body = br#"{"event":"before.stall"}"#;
    let head = format!(
        "POST /webhooks/generic HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    second.write_all(&[head.as_bytes(), body].concat()).await.unwrap();
    let mut first_answer = vec![0u8; 512];
    let n = second.read(&mut first_answer).await.unwrap();
    assert!(
        first_answer[..n].starts_with(b"HTTP/1.1 200 Stored\r\n"),
        "{:?}",
        String::from_utf8_lossy(&first_answer[..n])
    );
    second.write_all(b"POST /webhooks/generic HTTP/1.1\r\nhost:").await.unwrap();
    let mut preface = TcpStream::connect(gw.addr).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    let silent = TcpStream::connect(gw.addr).await.unwrap();
    let timeout_answer = "HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
    let (took, said) = closed_within(partial, limit).await;
    assert_eq!(said, timeout_answer);
    assert!(took >= HEADER_READ - Duration::from_millis(100), "answered after {took:?}");
    assert_eq!(closed_within(second, limit).await.1, timeout_answer);
    let said = closed_within(preface, limit).await.1;
    assert!(!said.contains("HTTP/1.1"), "HTTP/2 frames (SETTINGS, GOAWAY), no HTTP/1.1 answer: {said:?}");
    assert_eq!(closed_within(silent, limit).await.1, "");
    assert_eq!(q.exactly_one(Duration::from_secs(5)).await.routing_key, "generic.before.stall");
    gw.wait_metric("hookgate_open_connections", 0.0).await;
    q.close().await;
    gw.stop().await;
}

/// A client still sending after its head was due (a slow trickle that reads only at the end) gets the whole `408`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_head_that_keeps_trickling_still_reads_its_408() {
    let gw = Gateway::start_full("header_read_timeout = \"1s\"\n", GENERIC, &amqp_url(), HashMap::new()).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /webhooks/generic HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Past the deadline: the answer is on its way or here; the client, not reading yet, sends more.
    for _ in 0..5 {
        if s.write_all(b"x-trickle: 1\r\n").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await.expect("closed");
    let said = String::from_utf8_lossy(&out);
    assert!(said.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{read:?}: {said:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_and_keep_alive_http1_connections_are_closed_after_idle_timeout() {
    let pki = Pki::new();
    let server = "idle_timeout = \"1s\"\nheader_read_timeout = \"5s\"\n";
    let gw =
        Gateway::start_full(server, &format!("{}{GENERIC}", pki.server_toml(false)), &amqp_url(), HashMap::new()).await;
    let mut q = gw.queue("#").await;

    // HTTP/2 by ALPN: one request, then nothing.
    let connector = tokio_rustls::TlsConnector::from(pki.client_config(None, &[b"h2"]));
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let tls = connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::post("https://localhost/webhooks/generic")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"event":"h2.idle"}"#)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "Stored\n");
    let answered = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("HTTP/2 connection closed by the gateway")
        .unwrap()
        .ok();
    let idle = answered.elapsed();
    assert!(idle >= Duration::from_millis(800), "closed after {idle:?}, before idle_timeout");
    assert_eq!(q.exactly_one(Duration::from_secs(5)).await.routing_key, "generic.h2.idle");

    // HTTP/1.1 keep-alive over TLS: one answered request, then nothing.
    let connector = tokio_rustls::TlsConnector::from(pki.client_config(None, &[b"http/1.1"]));
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut tls = connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let body = br#"{"event":"h1.idle"}"#;
    let head = format!(
        "POST /webhooks/generic HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"Stored\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200 Stored"), "{}", String::from_utf8_lossy(&answer));
    let answered = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf)).await.expect("HTTP/1.1 connection closed");
    assert_eq!(n.unwrap_or(0), 0);
    assert!(answered.elapsed() >= Duration::from_millis(800), "closed after {:?}", answered.elapsed());
    assert_eq!(q.exactly_one(Duration::from_secs(5)).await.routing_key, "generic.h1.idle");
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_http2_connection_over_tls_is_closed_at_the_header_timeout() {
    let pki = Pki::new();
    let gw =
        Gateway::start_full("", &format!("{}{GENERIC}", pki.server_toml(false)), &amqp_url(), HashMap::new()).await;
    let connector = tokio_rustls::TlsConnector::from(pki.client_config(None, &[b"h2"]));
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let tls = connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    // The client's preface and SETTINGS go out, but no request.
    let (_sender, conn) =
        hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let started = Instant::now();
    tokio::time::timeout(HEADER_READ + Duration::from_secs(1), conn).await.expect("closed by the gateway").ok();
    assert!(started.elapsed() >= Duration::from_millis(1500), "closed after {:?}", started.elapsed());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_closes_silent_and_idle_sockets() {
    let gw = Gateway::start(GENERIC).await;
    let silent = TcpStream::connect(gw.admin).await.unwrap();
    let mut kept = TcpStream::connect(gw.admin).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let limit = HEADER_READ + Duration::from_secs(1);
    let ((a, _), (b, _)) = tokio::join!(closed_within(silent, limit), closed_within(kept, limit));
    assert!(a >= Duration::from_millis(1500) && b >= Duration::from_millis(1500), "{a:?} {b:?}");
    assert_eq!(gw.admin_get("/healthz").await.0, 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_do_not_stall_the_drain() {
    let gw = Gateway::start_full("header_read_timeout = \"30s\"\n", GENERIC, &amqp_url(), HashMap::new()).await;
    let mut held = Vec::new();
    for first in [&b""[..], b"P", b"POST / HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"] {
        for _ in 0..5 {
            let mut s = TcpStream::connect(gw.addr).await.unwrap();
            s.write_all(first).await.unwrap();
            held.push(s);
        }
    }
    gw.wait_metric("hookgate_open_connections", 20.0).await;
    let started = Instant::now();
    gw.stop().await;
    assert!(started.elapsed() < Duration::from_secs(3), "drain took {:?} (drain_timeout 5 s)", started.elapsed());
    for s in held {
        closed_within(s, Duration::from_secs(1)).await;
    }
}
