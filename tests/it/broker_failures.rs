//! The broker down, stalled or unable to route: never a 200, always an answer inside the deadline, and
//! publishing resumes without a restart.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::support::{Gateway, Proxy};

const SOURCES: &str = r#"
[sources.generic]
preset = "generic"
unauthenticated = true

[sources.tyro]
preset = "tyro"
path = "/webhooks/tyro"
unauthenticated = true
"#;

const JSON: [(&str, &str); 1] = [("content-type", "application/json")];
/// generic's ack_timeout is 10 s; every answer must leave before it, with a margin.
const ANSWER_WITHIN: Duration = Duration::from_secs(9);

async fn wait_status(gw: &Gateway, path: &str, want: u16) {
    for _ in 0..300 {
        if gw.admin_get(path).await.0 == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} did not answer {want} within 15 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_gives_503_fast_and_recovery_needs_no_restart() {
    let proxy = Proxy::start().await;
    let gw = Gateway::start_with(SOURCES, &proxy.url(), HashMap::new()).await;
    gw.wait_ready().await;
    let mut q = gw.queue("#").await;
    let r = gw.post("/webhooks/generic", &JSON, br#"{"event":"a","n":1}"#).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    assert_eq!(q.exactly_one(Duration::from_secs(5)).await.body, br#"{"event":"a","n":1}"#);

    proxy.cut();
    wait_status(&gw, "/readyz", 503).await;
    assert_eq!(gw.metric("hookgate_broker_connected").await, 0.0);
    for (path, status) in [("/webhooks/generic", 503), ("/webhooks/tyro", 500)] {
        let started = Instant::now();
        let r = gw.post(path, &JSON, br#"{"event":"b","n":2}"#).await;
        assert_eq!((r.status, r.reason.as_str()), (status, "Store Unavailable"), "{path}");
        assert!(started.elapsed() < Duration::from_secs(2), "answered at once, not at the deadline");
    }
    assert_eq!(gw.metric("hookgate_posting_errors_total{reason=\"unavailable\",source=\"generic\"}").await, 1.0);

    proxy.restore().await;
    wait_status(&gw, "/readyz", 200).await;
    // The provider's retry of the failed delivery is admitted (the failure did not leave a dedup record).
    let r = gw.post("/webhooks/generic", &JSON, br#"{"event":"b","n":2}"#).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    let m = q.exactly_one(Duration::from_secs(5)).await;
    assert_eq!(m.body, br#"{"event":"b","n":2}"#);
    assert_eq!(gw.metric("hookgate_broker_connected").await, 1.0);
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_never_confirms_gives_503_before_the_deadline() {
    let proxy = Proxy::start().await;
    let gw = Gateway::start_with(SOURCES, &proxy.url(), HashMap::new()).await;
    gw.wait_ready().await;
    proxy.stall(true);
    let started = Instant::now();
    let r = gw.post("/webhooks/generic", &JSON, br#"{"event":"stalled"}"#).await;
    let took = started.elapsed();
    assert_eq!((r.status, r.reason.as_str()), (503, "Store Unavailable"));
    // publish_timeout is 1 s in the test config: the answer waits for it, and no longer than the deadline.
    assert!(took >= Duration::from_millis(900) && took < ANSWER_WITHIN, "answered after {took:?}");
    assert_eq!(gw.metric("hookgate_amqp_publishes_total{outcome=\"timeout\"}").await, 1.0);
    // Providers that hang up mid-publish cancel their requests; the channels must not wait for them later.
    for i in 0..4 {
        let client = Gateway::client_for(gw.addr);
        let body = format!(r#"{{"event":"abandoned","i":{i}}}"#);
        let _ =
            tokio::time::timeout(Duration::from_millis(200), client.post("/webhooks/generic", &JSON, body.as_bytes()))
                .await;
    }
    proxy.stall(false);
    let mut q = gw.queue("generic.after").await;
    for i in 0..8 {
        let started = Instant::now();
        let r = gw.post("/webhooks/generic", &JSON, format!(r#"{{"event":"after","i":{i}}}"#).as_bytes()).await;
        assert_eq!((r.status, r.reason.as_str()), (200, "Stored"), "delivery {i}");
        assert!(started.elapsed() < Duration::from_millis(900), "delivery {i} waited {:?}", started.elapsed());
        q.exactly_one(Duration::from_secs(5)).await;
    }
    q.close().await;
    proxy.cut();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_unreachable_at_start() {
    let proxy = Proxy::start().await;
    proxy.cut();
    let gw = Gateway::start_with(SOURCES, &proxy.url(), HashMap::new()).await;
    assert_eq!(gw.admin_get("/readyz").await.0, 503);
    assert_eq!(gw.admin_get("/healthz").await.0, 200);
    let started = Instant::now();
    let r = gw.post("/webhooks/generic", &JSON, br#"{"event":"early"}"#).await;
    assert_eq!((r.status, r.reason.as_str()), (503, "Store Unavailable"));
    assert!(started.elapsed() < Duration::from_secs(2));
    proxy.restore().await;
    wait_status(&gw, "/readyz", 200).await;
    let mut q = gw.queue("#").await;
    let r = gw.post("/webhooks/generic", &JSON, br#"{"event":"early"}"#).await;
    assert_eq!(r.status, 200);
    q.exactly_one(Duration::from_secs(5)).await;
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_events_are_never_acknowledged() {
    // No queue is bound to this gateway's exchange and it has no alternate exchange.
    let gw = Gateway::start(SOURCES).await;
    let r = gw.post("/webhooks/generic", &JSON, br#"{"event":"lost?"}"#).await;
    assert_eq!((r.status, r.reason.as_str()), (503, "Store Unavailable"));
    assert_eq!(gw.metric("hookgate_posting_errors_total{reason=\"unroutable\",source=\"generic\"}").await, 1.0);
    assert_eq!(gw.metric("hookgate_amqp_publishes_total{outcome=\"returned\"}").await, 1.0);
    // Concurrent unroutable and routable publishes on the same channels are told apart by message id.
    let mut q = gw.queue("generic.routed").await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let body = if i % 2 == 0 {
            format!(r#"{{"event":"routed","i":{i}}}"#)
        } else {
            format!(r#"{{"event":"dropped","i":{i}}}"#)
        };
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let gw = crate::support::Gateway::client_for(addr);
            (i, gw.post("/webhooks/generic", &JSON, body.as_bytes()).await.status)
        }));
    }
    for t in tasks {
        let (i, status) = t.await.unwrap();
        assert_eq!(status, if i % 2 == 0 { 200 } else { 503 }, "delivery {i}");
    }
    let mut got = 0;
    while q.next(Duration::from_millis(500)).await.is_some() {
        got += 1;
    }
    assert_eq!(got, 20);
    // Once a queue is bound, the provider's retry of the first delivery is stored.
    let r = gw.post("/webhooks/generic", &JSON, br#"{"event":"routed","i":-1}"#).await;
    assert_eq!(r.status, 200);
    q.close().await;
    gw.stop().await;
}
