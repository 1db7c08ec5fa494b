//! The spool drainer at volume: a long spool drains to the queue exactly once and in receipt order, and a
//! graceful stop in the middle of a drain republishes nothing after the restart (the fault run's "memory alarm"
//! duplicates were the records confirmed since the drainer's last cursor write, republished after the SIGTERM
//! restart of the next phase).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::support::{Gateway, Opts, Proxy, Queue, GENERIC, JSON};

/// A gateway whose broker (through `proxy`) is cut, so every event goes to the spool.
async fn down_gateway(opts: Opts) -> (Proxy, Gateway) {
    let proxy = Proxy::start().await;
    let gw = Gateway::start_opts(GENERIC, &proxy.url(), HashMap::new(), opts).await;
    gw.wait_ready().await;
    proxy.cut();
    gw.wait_metric("hookgate_broker_connected", 0.0).await;
    (proxy, gw)
}

fn body(tag: &str, n: usize) -> Vec<u8> {
    format!(r#"{{"event":"{tag}","n":{n}}}"#).into_bytes()
}

/// Spools `n` events from `senders` concurrent senders; every answer must be `200 Stored`.
async fn spool_events(gw: &Gateway, tag: &'static str, n: usize, senders: usize) {
    let client = Gateway::client_for(gw.addr);
    let tasks: Vec<_> = (0..senders)
        .map(|s| {
            tokio::spawn(async move {
                for i in (s..n).step_by(senders) {
                    let r = client.post("/webhooks/generic", &JSON, &body(tag, i)).await;
                    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"), "event {i}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("sender");
    }
    assert_eq!(gw.metric("hookgate_spool_events").await, n as f64);
}

/// Every message until none arrives for `quiet`: body → copies.
async fn copies(q: &mut Queue, quiet: Duration) -> BTreeMap<Vec<u8>, usize> {
    let mut seen = BTreeMap::new();
    while let Some(m) = q.next(quiet).await {
        *seen.entry(m.body).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_spool_drains_each_event_exactly_once_in_receipt_order() {
    const N: usize = 3000;
    let (proxy, gw) = down_gateway(Opts::default()).await;
    let mut q = gw.queue("#").await;
    // One sender: receipt order is the order sent.
    spool_events(&gw, "order", N, 1).await;
    proxy.restore().await;
    let mut got = Vec::with_capacity(N);
    while got.len() < N {
        let m = q.next(Duration::from_secs(15)).await.unwrap_or_else(|| panic!("message {} of {N} missing", got.len()));
        got.push(m.body);
    }
    let want: Vec<Vec<u8>> = (0..N).map(|i| body("order", i)).collect();
    assert!(got == want, "every event once, in receipt order (first difference at {:?})", first_diff(&got, &want));
    assert!(q.next(Duration::from_millis(500)).await.is_none(), "no copy beyond the spooled events");
    gw.wait_metric("hookgate_spool_events", 0.0).await;
    assert_eq!(gw.metric("hookgate_amqp_publishes_total{outcome=\"ack\"}").await, N as f64);
    q.close().await;
    gw.stop().await;
}

fn first_diff(got: &[Vec<u8>], want: &[Vec<u8>]) -> Option<usize> {
    got.iter().zip(want).position(|(a, b)| a != b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_in_the_middle_of_a_drain_republishes_nothing() {
    const N: usize = 3000;
    let (proxy, mut gw) = down_gateway(Opts::default()).await;
    let data = gw.keep_data().expect("temp data dir");
    let mut q = gw.queue("#").await;
    spool_events(&gw, "stop", N, 8).await;
    proxy.restore().await;
    // Stop (as SIGTERM does) once the drain is under way, with most of the spool still to go.
    let mut first = BTreeMap::new();
    while first.len() < 100 {
        let m = q.next(Duration::from_secs(15)).await.expect("the drain starts");
        *first.entry(m.body).or_insert(0) += 1;
    }
    gw.halt().await;
    let mut all = copies(&mut q, Duration::from_secs(1)).await;
    for (b, n) in first {
        *all.entry(b).or_insert(0) += n;
    }
    assert!(all.len() < N, "stopped in the middle of the drain ({} of {N} delivered before the restart)", all.len());
    let opts =
        Opts { data_dir: Some(data.path().to_path_buf()), exchange: Some(gw.exchange.clone()), ..Opts::default() };
    let gw = Gateway::start_opts(GENERIC, &crate::support::amqp_url(), HashMap::new(), opts).await;
    for (b, n) in copies(&mut q, Duration::from_secs(2)).await {
        *all.entry(b).or_insert(0) += n;
    }
    let dups: Vec<String> =
        all.iter().filter(|(_, n)| **n > 1).map(|(b, n)| format!("{} ×{n}", String::from_utf8_lossy(b))).collect();
    assert!(
        dups.is_empty(),
        "{} events published twice after a graceful restart: {:?}",
        dups.len(),
        &dups[..dups.len().min(5)]
    );
    let missing = (0..N).filter(|i| !all.contains_key(&body("stop", *i))).count();
    assert_eq!((all.len(), missing), (N, 0), "every spooled event delivered");
    q.close().await;
    gw.stop().await;
    drop(proxy);
}
