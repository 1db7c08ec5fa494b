//! `ip_allow` with the client address from the socket, `X-Forwarded-For` of a trusted proxy, or PROXY v2.

use super::{expect, expect_published};
use crate::support::{amqp_url, Gateway, Pki};

const SOURCES: &str = r#"
[sources.member]
preset = "generic"
path = "/webhooks/instamed/member-payments"
[sources.member.auth]
ip_allow = ["216.177.67.4/32", "216.39.105.164/32"]
"#;

const PATH: &str = "/webhooks/instamed/member-payments";

async fn start(server: &str, tls: Option<&Pki>) -> Gateway {
    let extra = format!("{}{SOURCES}", tls.map(|p| p.server_toml(false)).unwrap_or_default());
    let mut gw = Gateway::start_full(server, &extra, &amqp_url(), Default::default()).await;
    gw.tls = tls.map(|p| p.client_config(None, &[b"http/1.1"]));
    gw
}

fn body(n: u32) -> Vec<u8> {
    format!(r#"{{"event":"member.payment","n":{n}}}"#).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let pki = Pki::new();
    let gw = start("trusted_proxies = [\"127.0.0.1/32\"]\n", Some(&pki)).await;
    let mut q = gw.queue("#").await;
    let post = |xff: Option<&'static str>, b: Vec<u8>| {
        let gw = &gw;
        async move {
            let mut headers = vec![("content-type", "application/json")];
            headers.extend(xff.map(|v| ("x-forwarded-for", v)));
            gw.post(PATH, &headers, &b).await
        }
    };
    expect(&post(Some("216.177.67.4"), body(1)).await, 200, "Stored", "listed address via trusted proxy");
    expect(&post(Some("216.177.67.4, 1.2.3.4"), body(0)).await, 403, "Forbidden", "nearest untrusted hop");
    expect(&post(None, body(0)).await, 403, "Forbidden", "the proxy itself is not listed");
    expect_published(&mut q, &[body(1)]).await;
    q.close().await;
    gw.stop().await;

    let gw = start("trusted_proxies = [\"10.0.0.0/8\"]\n", Some(&pki)).await;
    let mut q = gw.queue("#").await;
    let r = gw.post(PATH, &[("content-type", "application/json"), ("x-forwarded-for", "216.177.67.4")], &body(2)).await;
    expect(&r, 403, "Forbidden", "X-Forwarded-For spoofed by an untrusted peer");
    expect_published(&mut q, &[]).await;
    assert_eq!(gw.metric("hookgate_posting_errors_total{reason=\"forbidden\",source=\"member\"}").await, 1.0);
    assert_eq!(gw.metric("hookgate_auth_failures_total{method=\"ip_allow\",source=\"member\"}").await, 1.0);
    q.close().await;
    gw.stop().await;
}

/// A PROXY v2 header (TCP over IPv4) from `src`, then one HTTP/1.1 request that closes the connection.
fn proxied(header: &[u8], n: u32) -> Vec<u8> {
    let b = body(n);
    let req = format!(
        "POST {PATH} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        b.len()
    );
    [header, req.as_bytes(), &b].concat()
}

fn v2(cmd: u8, src: [u8; 4]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([cmd, 0x11, 0, 12]);
    h.extend(src);
    h.extend([127, 0, 0, 1, 0x9c, 0x40, 0x20, 0xfb]);
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2() {
    let gw = start("trusted_proxies = [\"127.0.0.1/32\"]\nproxy_protocol = true\n", None).await;
    let mut q = gw.queue("#").await;
    let ok = gw.raw(&proxied(&v2(0x21, [216, 177, 67, 4]), 1)).await;
    assert!(ok.starts_with("HTTP/1.1 200 Stored"), "{ok}");
    let other = gw.raw(&proxied(&v2(0x21, [1, 2, 3, 4]), 0)).await;
    assert!(other.starts_with("HTTP/1.1 403 Forbidden"), "{other}");
    let malformed = [
        ("bad version", v2(0x31, [216, 177, 67, 4])),
        ("bad family", {
            let mut h = v2(0x21, [216, 177, 67, 4]);
            h[13] = 0x71;
            h
        }),
        ("short address block", {
            let mut h = v2(0x21, [216, 177, 67, 4]);
            h[15] = 4;
            h.truncate(20);
            h
        }),
        ("version 1 text", b"PROXY TCP4 216.177.67.4 127.0.0.1 40000 8443\r\n".to_vec()),
        ("no header", Vec::new()),
    ];
    for (case, header) in malformed {
        let started = tokio::time::Instant::now();
        let answer = gw.raw(&proxied(&header, 0)).await;
        assert_eq!(answer, "", "{case}: the connection is dropped without an answer");
        // Dropped, not held open until a timeout (`raw` also reads "" after 3 s of silence).
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(1), "{case}: closed after {took:?}");
    }
    expect_published(&mut q, &[body(1)]).await;
    q.close().await;
    gw.stop().await;

    let gw = start("trusted_proxies = [\"10.0.0.0/8\"]\nproxy_protocol = true\n", None).await;
    let answer = gw.raw(&proxied(&v2(0x21, [216, 177, 67, 4]), 2)).await;
    assert_eq!(answer, "", "a PROXY header from an untrusted peer drops the connection");
    gw.stop().await;
}
