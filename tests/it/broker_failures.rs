//! The broker down, stalled or unable to route. Down or stalled: every delivery is spooled and answered
//! `200 Stored` inside its deadline, and after recovery each event arrives exactly once, in receipt order.
//! Unroutable without an alternate exchange: returned by the broker, parked, `200 Stored`, published once a queue
//! is bound (the alternate exchange itself: `unroutable.rs`).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::support::{amqp_url, Gateway, Opts, Proxy, JSON};

const SOURCES: &str = r#"
[sources.generic]
preset = "generic"
unauthenticated = true

[sources.tyro]
preset = "tyro"
path = "/webhooks/tyro"
unauthenticated = true
"#;

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
async fn broker_outage_spools_and_delivers_each_event_once_in_receipt_order() {
    let proxy = Proxy::start().await;
    let gw = Gateway::start_with(SOURCES, &proxy.url(), HashMap::new()).await;
    gw.wait_ready().await;
    let mut q = gw.queue("#").await;
    let r = gw.post("/webhooks/generic", &JSON, br#"{"event":"a","n":-1}"#).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    assert_eq!(q.exactly_one(Duration::from_secs(5)).await.body, br#"{"event":"a","n":-1}"#);

    proxy.cut();
    gw.wait_metric("hookgate_broker_connected", 0.0).await;
    let mut sent = Vec::new();
    for n in 0..30 {
        let (path, body) = if n % 3 == 0 {
            ("/webhooks/tyro", format!(r#"{{"event":"paid","transactionId":"t{n}"}}"#))
        } else {
            ("/webhooks/generic", format!(r#"{{"event":"b","n":{n}}}"#))
        };
        let started = Instant::now();
        let r = gw.post(path, &JSON, body.as_bytes()).await;
        assert_eq!((r.status, r.reason.as_str()), (200, "Stored"), "{path} {n}");
        assert!(started.elapsed() < ANSWER_WITHIN, "answered inside the deadline");
        sent.push(body.into_bytes());
    }
    // Concurrent deliveries during the outage are spooled too.
    let tasks: Vec<_> = (0..20)
        .map(|n| {
            let c = Gateway::client_for(gw.addr);
            tokio::spawn(async move {
                let body = format!(r#"{{"event":"c","n":{n}}}"#);
                let started = Instant::now();
                let r = c.post("/webhooks/generic", &JSON, body.as_bytes()).await;
                (r.status, started.elapsed(), body.into_bytes())
            })
        })
        .collect();
    let mut concurrent = BTreeSet::new();
    for t in tasks {
        let (status, took, body) = t.await.unwrap();
        assert_eq!(status, 200);
        assert!(took < ANSWER_WITHIN);
        concurrent.insert(body);
    }
    assert_eq!(gw.metric("hookgate_spool_events").await, 50.0);
    assert_eq!(gw.admin_get("/readyz").await.0, 200, "the spool can take events");

    proxy.restore().await;
    for (i, want) in sent.iter().enumerate() {
        let m = q.next(Duration::from_secs(10)).await.unwrap_or_else(|| panic!("event {i} not delivered"));
        assert_eq!(&m.body, want, "receipt order");
    }
    let mut got = BTreeSet::new();
    for _ in 0..20 {
        got.insert(q.next(Duration::from_secs(5)).await.expect("concurrent event delivered").body);
    }
    assert_eq!(got, concurrent);
    assert!(q.next(Duration::from_millis(500)).await.is_none(), "each event exactly once");
    gw.wait_metric("hookgate_spool_events", 0.0).await;
    assert!(gw.metric("hookgate_publish_retries_total").await >= 50.0);
    assert!(gw.metric("hookgate_spooled_total{reason=\"not_connected\"}").await >= 1.0);
    assert!(gw.metric("hookgate_spooled_total{reason=\"behind_spool\"}").await >= 40.0);
    // Retries of spooled events are duplicates.
    let r = gw.post("/webhooks/generic", &JSON, &sent[1]).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Duplicate"));
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_never_confirms_gets_the_event_spooled_before_the_deadline() {
    let proxy = Proxy::start().await;
    let gw = Gateway::start_with(SOURCES, &proxy.url(), HashMap::new()).await;
    gw.wait_ready().await;
    let mut q = gw.queue("generic.stalled").await;
    proxy.stall(true);
    let started = Instant::now();
    let r = gw.post("/webhooks/generic", &JSON, br#"{"event":"stalled"}"#).await;
    let took = started.elapsed();
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    // publish_timeout is 1 s in the test config: the answer waits for it, and no longer than the deadline.
    assert!(took >= Duration::from_millis(900) && took < ANSWER_WITHIN, "answered after {took:?}");
    assert_eq!(gw.metric("hookgate_amqp_publishes_total{outcome=\"timeout\"}").await, 1.0);
    assert_eq!(gw.metric("hookgate_spooled_total{reason=\"timeout\"}").await, 1.0);
    // Providers that hang up mid-publish cancel their requests; the channels must not wait for them later.
    for i in 0..4 {
        let client = Gateway::client_for(gw.addr);
        let body = format!(r#"{{"event":"abandoned","i":{i}}}"#);
        let _ =
            tokio::time::timeout(Duration::from_millis(200), client.post("/webhooks/generic", &JSON, body.as_bytes()))
                .await;
    }
    proxy.stall(false);
    let mut after = gw.queue("generic.after").await;
    for i in 0..8 {
        let started = Instant::now();
        let r = gw.post("/webhooks/generic", &JSON, format!(r#"{{"event":"after","i":{i}}}"#).as_bytes()).await;
        assert_eq!((r.status, r.reason.as_str()), (200, "Stored"), "delivery {i}");
        assert!(started.elapsed() < Duration::from_millis(900), "delivery {i} waited {:?}", started.elapsed());
        after.exactly_one(Duration::from_secs(5)).await;
    }
    // The timed-out publish may still land, besides the spooled copy: at least once, at most twice
    // (docs/delivery-semantics.md).
    let m = q.next(Duration::from_secs(10)).await.expect("delivered after the stall");
    assert_eq!(m.body, br#"{"event":"stalled"}"#);
    if let Some(second) = q.next(Duration::from_secs(2)).await {
        assert_eq!(second.body, m.body);
    }
    assert!(q.next(Duration::from_millis(300)).await.is_none());
    gw.wait_metric("hookgate_spool_events", 0.0).await;
    after.close().await;
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_unreachable_at_start() {
    let proxy = Proxy::start().await;
    proxy.cut();
    let gw = Gateway::start_with(SOURCES, &proxy.url(), HashMap::new()).await;
    assert_eq!(gw.admin_get("/healthz").await.0, 200);
    wait_status(&gw, "/readyz", 200).await; // the spool can take events
    let started = Instant::now();
    let r = gw.post("/webhooks/generic", &JSON, br#"{"event":"early"}"#).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    assert!(started.elapsed() < Duration::from_secs(2));
    let mut q = gw.queue("#").await;
    proxy.restore().await;
    assert_eq!(q.exactly_one(Duration::from_secs(10)).await.body, br#"{"event":"early"}"#);
    let r = gw.post("/webhooks/generic", &JSON, br#"{"event":"early"}"#).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Duplicate"));
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_events_are_parked_answered_200_and_published_once_bound() {
    // No queue is bound to this gateway's exchange and it has no alternate exchange.
    let opts = Opts { broker: "alternate_exchange = \"\"\n".into(), ..Opts::default() };
    let gw = Gateway::start_opts(SOURCES, &amqp_url(), HashMap::new(), opts).await;
    let r = gw.post("/webhooks/generic", &JSON, br#"{"event":"late"}"#).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    let r = gw.post("/webhooks/tyro", &JSON, br#"{"event":"paid","transactionId":"late"}"#).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    assert_eq!(gw.metric("hookgate_unroutable_total{source=\"generic\"}").await, 1.0);
    assert_eq!(gw.metric("hookgate_unroutable_total{source=\"tyro\"}").await, 1.0);
    // At least these two; the drainer's retries of the parked events are returned too.
    assert!(gw.metric("hookgate_amqp_publishes_total{outcome=\"returned\"}").await >= 2.0);
    assert_eq!(gw.metric("hookgate_spool_parked_events").await, 2.0);
    // SPEC §4/§7: parked in the spool, so among the events waiting there; the parked gauge is that share.
    assert_eq!(gw.metric("hookgate_spool_events").await, 2.0, "parked events wait in the spool");
    // Concurrent unroutable and routable publishes on the same channels are told apart by message id.
    let mut q = gw.queue("generic.routed").await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let kind = if i % 2 == 0 { "routed" } else { "dropped" };
        let body = format!(r#"{{"event":"{kind}","i":{i}}}"#);
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let gw = crate::support::Gateway::client_for(addr);
            gw.post("/webhooks/generic", &JSON, body.as_bytes()).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let body = |kind: &str, i: usize| format!(r#"{{"event":"{kind}","i":{i}}}"#).into_bytes();
    let mut routed = Vec::new();
    while let Some(m) = q.next(Duration::from_millis(500)).await {
        routed.push(m.body.to_vec());
    }
    routed.sort();
    let mut want: Vec<_> = (0..40).step_by(2).map(|i| body("routed", i)).collect();
    want.sort();
    assert_eq!(routed, want, "each routed event reached the routed queue once, and nothing else did");
    assert_eq!(gw.metric("hookgate_unroutable_total{source=\"generic\"}").await, 21.0);
    // Once a queue is bound, every parked event is published once, with its headers, and the parked spool empties.
    let mut all = gw.queue("#").await;
    let mut late = BTreeSet::new();
    for _ in 0..22 {
        let m = all.next(Duration::from_secs(15)).await.expect("a parked event published");
        let source = if m.routing_key.starts_with("tyro.") { "/sources/tyro" } else { "/sources/generic" };
        assert_eq!(m.text("cloudEvents_source").as_deref(), Some(source));
        assert_eq!(m.text("cloudEvents_id"), m.props.message_id().as_ref().map(|s| s.to_string()));
        assert!(late.insert((m.routing_key, m.body.to_vec())), "published twice");
    }
    assert!(all.next(Duration::from_millis(500)).await.is_none(), "nothing past the 22 parked events");
    let mut want = BTreeSet::from([
        ("generic.late".to_string(), br#"{"event":"late"}"#.to_vec()),
        ("tyro.healthfundpaidinvoice".to_string(), br#"{"event":"paid","transactionId":"late"}"#.to_vec()),
    ]);
    want.extend((1..40).step_by(2).map(|i| ("generic.dropped".to_string(), body("dropped", i))));
    assert_eq!(late, want);
    gw.wait_metric("hookgate_spool_parked_events", 0.0).await;
    q.close().await;
    all.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_broker_gets_events_spooled_then_delivered_once_unblocked() {
    let proxy = Proxy::start().await;
    let gw = Gateway::start_with(SOURCES, &proxy.url(), HashMap::new()).await;
    gw.wait_ready().await;
    let mut q = gw.queue("generic.#").await;
    // A resource alarm: RabbitMQ sends connection.blocked and stops reading publishes.
    proxy.block("low on memory");
    gw.wait_metric("hookgate_broker_blocked", 1.0).await;
    for i in 0..3 {
        let started = Instant::now();
        let r = gw.post("/webhooks/generic", &JSON, format!(r#"{{"event":"blocked","i":{i}}}"#).as_bytes()).await;
        assert_eq!((r.status, r.reason.as_str()), (200, "Stored"), "delivery {i}");
        assert!(started.elapsed() < Duration::from_millis(500), "spooled at once, not after a timeout");
    }
    assert_eq!(gw.metric("hookgate_spooled_total{reason=\"blocked\"}").await, 1.0);
    assert_eq!(gw.metric("hookgate_spool_events").await, 3.0);
    assert_eq!(gw.admin_get("/readyz").await.0, 200, "the spool can take events");
    assert!(q.next(Duration::from_millis(500)).await.is_none(), "nothing published while blocked");

    proxy.unblock();
    gw.wait_metric("hookgate_broker_blocked", 0.0).await;
    for i in 0..3 {
        let m = q.next(Duration::from_secs(10)).await.expect("delivered once unblocked");
        assert_eq!(m.body, format!(r#"{{"event":"blocked","i":{i}}}"#).as_bytes(), "receipt order");
    }
    assert!(q.next(Duration::from_millis(500)).await.is_none(), "each exactly once");
    gw.wait_metric("hookgate_spool_events", 0.0).await;
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_publish_is_spooled_never_reported_confirmed() {
    let proxy = Proxy::start().await;
    let gw = Gateway::start_with(SOURCES, &proxy.url(), HashMap::new()).await;
    gw.wait_ready().await;
    let mut q = gw.queue("generic.#").await;
    proxy.nack_confirms(true);
    let r = gw.post("/webhooks/generic", &JSON, br#"{"event":"nacked"}"#).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    // The answer's publish was nacked (the drainer's retries may add more nacks).
    assert!(gw.metric("hookgate_amqp_publishes_total{outcome=\"nack\"}").await >= 1.0);
    assert_eq!(gw.metric("hookgate_spooled_total{reason=\"nack\"}").await, 1.0);
    proxy.nack_confirms(false);
    gw.wait_metric("hookgate_spool_events", 0.0).await;
    // The broker did take the nacked copies (the proxy only rewrote its confirms): at least once, and every copy
    // carries the same message_id for consumers to deduplicate (docs/delivery-semantics.md).
    let first = q.next(Duration::from_secs(5)).await.expect("delivered");
    assert_eq!(first.body, br#"{"event":"nacked"}"#);
    // The generic preset's id: the SHA-256 of the body (SPEC §3), computed here, not by the gateway's code.
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(br#"{"event":"nacked"}"#));
    assert_eq!(first.props.message_id().as_ref().map(|s| s.to_string()), Some(digest));
    while let Some(m) = q.next(Duration::from_millis(500)).await {
        assert_eq!((m.props.message_id(), &m.body), (first.props.message_id(), &first.body));
    }
    q.close().await;
    gw.stop().await;
}
