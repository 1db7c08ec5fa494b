//! Smaller holes of issue 12 (item 10): an event that can never be published is refused `400`, and a request
//! framed by both `Content-Length` and `Transfer-Encoding` is read by the latter alone, on the wire.

use std::time::Duration;

use crate::support::{Gateway, GENERIC, JSON};

const WAIT: Duration = Duration::from_secs(5);

/// The longest source name (64) with the card preset, whose type joins two slugs of up to 120 bytes: the
/// routing key `<source>.<type>` can pass AMQP's 255-byte limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_key_over_255_bytes_is_refused_400() {
    let name = "c".repeat(64);
    let gw = Gateway::start(&format!("[sources.{name}]\npreset = \"prepaid-card\"\nunauthenticated = true\n")).await;
    let mut q = gw.queue("#").await;
    let body = format!(
        r#"{{"TransactionId":"rk-1","MessageType":"{}","TransactionCode":"{}"}}"#,
        "m".repeat(150),
        "x".repeat(150)
    );
    let r = gw.post(&format!("/webhooks/{name}"), &JSON, body.as_bytes()).await;
    assert_eq!((r.status, r.reason.as_str()), (400, "Bad Request"), "never the retry status: no retry can publish it");
    assert!(q.next(Duration::from_millis(500)).await.is_none(), "nothing published");
    let series = format!("hookgate_posting_errors_total{{reason=\"unpublishable\",source=\"{name}\"}}");
    assert_eq!(gw.metric(&series).await, 1.0);
    // A short type on the same source is published as usual.
    let ok = br#"{"TransactionId":"rk-2","MessageType":"Transaction","TransactionCode":"PP80DS"}"#;
    assert_eq!(gw.post(&format!("/webhooks/{name}"), &JSON, ok).await.status, 200);
    assert_eq!(q.exactly_one(WAIT).await.routing_key, format!("{name}.transaction.purchase"));
    q.close().await;
    gw.stop().await;
}

fn chunked(head_lines: &[&str], body: &[u8]) -> Vec<u8> {
    let mut req = b"POST /webhooks/generic HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n".to_vec();
    for line in head_lines {
        req.extend_from_slice(format!("{line}\r\n").as_bytes());
    }
    req.extend_from_slice(format!("\r\n{:x}\r\n", body.len()).as_bytes());
    req.extend_from_slice(body);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    req
}

/// RFC 9112 §6.3: with both headers the body is read by `Transfer-Encoding` (never by the `Content-Length`),
/// and the connection is closed after the answer, so nothing behind the body is read as a second request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_read_by_chunks_then_closed() {
    let gw = Gateway::start(GENERIC).await;
    let mut q = gw.queue("generic.#").await;
    let smuggled = b"POST /webhooks/generic HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                     Content-Length: 20\r\n\r\n{\"event\":\"smuggled\"}";
    for (i, order) in
        [["Content-Length: 3", "Transfer-Encoding: chunked"], ["Transfer-Encoding: chunked", "Content-Length: 3"]]
            .into_iter()
            .enumerate()
    {
        let body = format!(r#"{{"event":"framed","n":{i}}}"#);
        let mut wire = chunked(&order, body.as_bytes());
        wire.extend_from_slice(smuggled);
        let answer = gw.raw(&wire).await;
        assert!(answer.starts_with("HTTP/1.1 200 Stored\r\n"), "{order:?}: {answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"), "{order:?}: {answer}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{order:?}: one answer, the rest unread: {answer}");
        let m = q.exactly_one(WAIT).await;
        assert_eq!(m.body, body.as_bytes(), "{order:?}: the whole chunked body, not 3 bytes");
    }
    // Transfer-Encoding other than chunked cannot be framed at all: 400, nothing published.
    let wire = b"POST /webhooks/generic HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\
                 Content-Length: 2\r\n\r\n{}";
    let answer = gw.raw(wire).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(q.next(Duration::from_millis(300)).await.is_none());
    q.close().await;
    gw.stop().await;
}

/// Every directory and file under `dir`, with its permission bits.
#[cfg(unix)]
fn modes(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, bool, u32)>) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        out.push((entry.path(), meta.is_dir(), meta.permissions().mode() & 0o777));
        if meta.is_dir() {
            modes(&entry.path(), out);
        }
    }
}

/// The spool (events with card and patient data) and `state.redb` are the gateway user's alone, whatever the
/// umask: files `0600`, directories `0700`, also when `data_dir` and `spool/` already existed world-readable.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_files_are_0600_and_directories_0700() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    std::fs::create_dir_all(data.join("spool")).expect("mkdir");
    for d in [data.clone(), data.join("spool")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let proxy = crate::support::Proxy::start().await;
    let opts = crate::support::Opts { data_dir: Some(data.clone()), ..Default::default() };
    let gw = Gateway::start_opts(GENERIC, &proxy.url(), Default::default(), opts).await;
    gw.wait_ready().await;
    proxy.cut();
    gw.wait_metric("hookgate_broker_connected", 0.0).await;
    let r = gw.post("/webhooks/generic", &JSON, br#"{"event":"private","patient":"x"}"#).await;
    assert_eq!(r.reason, "Stored");
    assert_eq!(gw.metric("hookgate_spool_events").await, 1.0, "the event is in a spool segment");
    let mut found = Vec::new();
    modes(&data, &mut found);
    assert!(found.iter().any(|(p, ..)| p.ends_with("state.redb")), "{found:?}");
    assert!(found.iter().any(|(p, ..)| p.extension().is_some_and(|e| e == "seg")), "{found:?}");
    found.push((data.clone(), true, std::fs::metadata(&data).expect("data dir").permissions().mode() & 0o777));
    let open: Vec<_> = found
        .iter()
        .filter(|(_, dir, mode)| *mode != if *dir { 0o700 } else { 0o600 })
        .map(|(p, _, mode)| format!("{} {mode:o}", p.display()))
        .collect();
    assert!(open.is_empty(), "readable by others: {open:?}");
    gw.stop().await;
}

/// A TCP forwarder to the shared Redis that drops the connection instead of passing on a command carrying
/// `done`: the dedup record written after a confirmed publish fails, everything before it works.
async fn redis_refusing_done() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(upstream) = tokio::net::TcpStream::connect("127.0.0.1:6379").await else { return };
                let ((mut cr, mut cw), (mut ur, mut uw)) = (client.into_split(), upstream.into_split());
                let up = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = cr.read(&mut buf).await {
                        let chunk = &buf[..n];
                        if chunk.windows(10).any(|w| w == b"$4\r\ndone\r\n") || uw.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! { () = up => {}, _ = tokio::io::copy(&mut ur, &mut cw) => {} }
            });
        }
    });
    addr
}

/// The event is confirmed, then its shared dedup record cannot be written: still `200 Stored`, and the failure
/// is counted (`hookgate_dedup_record_failures_total{store="shared"}`), not only logged. The local record holds,
/// so this replica still answers the provider's retry `200 Duplicate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dedup_record_after_a_confirmed_publish_is_counted() {
    let prefix = crate::support::unique("hookgate-record");
    let redis = redis_refusing_done().await;
    let storage = format!("shared = \"redis://{redis}\"\nshared_prefix = \"{prefix}\"\n");
    let opts = crate::support::Opts { storage, ..Default::default() };
    let gw = Gateway::start_opts(GENERIC, &crate::support::amqp_url(), Default::default(), opts).await;
    let mut q = gw.queue("generic.#").await;
    let body = br#"{"event":"recorded"}"#;
    assert_eq!(gw.post("/webhooks/generic", &JSON, body).await.reason, "Stored");
    assert_eq!(q.exactly_one(WAIT).await.body, body);
    // The record is written after the answer (`docs/delivery-semantics.md`): its failure is counted shortly after.
    gw.wait_metric("hookgate_dedup_record_failures_total{store=\"shared\"}", 1.0).await;
    assert_eq!(gw.metric("hookgate_dedup_record_failures_total{store=\"local\"}").await, 0.0);
    assert_eq!(gw.post("/webhooks/generic", &JSON, body).await.reason, "Duplicate");
    q.close().await;
    gw.stop().await;
    crate::shared::cleanup(&prefix).await;
}
