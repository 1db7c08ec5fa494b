//! Provider retries are duplicates (every preset, at the same moment, after a restart, until the window ends);
//! events that arrive after a later one for the same subject are flagged out of order.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use lapin::types::AMQPValue;

use crate::support::{amqp_url, fixture, Gateway, Opts};

const SOURCES: &str = r#"
[sources.instamed]
preset = "instamed"
[sources.instamed.auth]
basic = [{ username = "instamed", password = "s3cret-pw" }]

[sources.tyro]
preset = "tyro"
path = "/tyro/{transactionId}/{event}"
unauthenticated = true

[sources.tyro-post]
preset = "tyro"
path = "/webhooks/tyro"
unauthenticated = true

[sources.card]
preset = "prepaid-card"
unauthenticated = true

[sources.sw]
preset = "standard-webhooks"
unauthenticated = true

[sources.generic]
preset = "generic"
unauthenticated = true

[sources.short]
preset = "generic"
unauthenticated = true
dedup_window = "1s"
"#;

/// source, path, headers, body.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>);

const WAIT: Duration = Duration::from_secs(5);
const JSON: (&str, &str) = ("content-type", "application/json");

fn basic() -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("instamed:s3cret-pw"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_every_preset_are_duplicates_and_not_published() {
    let gw = Gateway::start(SOURCES).await;
    let mut q = gw.queue("#").await;
    let auth = basic();
    let sw = [JSON, ("webhook-id", "msg_retry_1"), ("webhook-timestamp", "1714564800")];
    let cases: Vec<Case> = vec![
        ("instamed", "/webhooks/instamed", vec![JSON, ("authorization", &auth)], fixture("instamed-approved.json")),
        (
            "instamed",
            "/webhooks/instamed",
            vec![("content-type", "application/xml"), ("authorization", &auth)],
            fixture("instamed-settlement.xml"),
        ),
        ("tyro-post", "/webhooks/tyro", vec![JSON], fixture("tyro-approved.json")),
        ("card", "/webhooks/card", vec![JSON], fixture("prepaid-card-purchase.json")),
        ("sw", "/webhooks/sw", sw.to_vec(), fixture("standard-webhooks.json")),
        ("generic", "/webhooks/generic", vec![JSON], br#"{"event":"x","n":1}"#.to_vec()),
    ];
    for (source, path, headers, body) in &cases {
        let r = gw.post(path, headers, body).await;
        assert_eq!((r.status, r.reason.as_str()), (200, "Stored"), "{source}");
        assert_eq!(q.exactly_one(WAIT).await.body, *body);
        for _ in 0..2 {
            let r = gw.post(path, headers, body).await;
            assert_eq!((r.status, r.reason.as_str()), (200, "Duplicate"), "{source}");
        }
    }
    // Tyro by GET: the same transaction and event again is a retry.
    for reason in ["Stored", "Duplicate"] {
        let r = gw.request("GET", "/tyro/tx-9/paid", &[], b"").await;
        assert_eq!((r.status, r.reason.as_str()), (200, reason));
    }
    q.exactly_one(WAIT).await;
    assert!(q.next(Duration::from_millis(300)).await.is_none(), "no retry was published");
    for (source, retries) in [("instamed", 4.0), ("tyro-post", 2.0), ("tyro", 1.0), ("card", 2.0), ("sw", 2.0)] {
        assert_eq!(gw.metric(&format!("hookgate_retries_total{{source=\"{source}\"}}")).await, retries, "{source}");
    }
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_identical_deliveries_at_the_same_moment_publish_once() {
    let gw = Gateway::start(SOURCES).await;
    let mut q = gw.queue("#").await;
    let body = fixture("prepaid-card-purchase.json");
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (c, body, start) = (Gateway::client_for(gw.addr), body.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let r = c.post("/webhooks/card", &[JSON], &body).await;
                (r.status, r.reason)
            })
        })
        .collect();
    let mut reasons = HashMap::new();
    for t in tasks {
        let (status, reason) = t.await.unwrap();
        assert_eq!(status, 200);
        *reasons.entry(reason).or_insert(0) += 1;
    }
    assert_eq!(reasons.get("Stored"), Some(&1), "{reasons:?}");
    assert_eq!(reasons.get("Duplicate"), Some(&19), "{reasons:?}");
    q.exactly_one(WAIT).await;
    assert_eq!(gw.metric("hookgate_retries_total{source=\"card\"}").await, 19.0);
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_survives_a_restart() {
    let mut gw = Gateway::start(SOURCES).await;
    let data = gw.keep_data().expect("temp data dir");
    let exchange = gw.exchange.clone();
    let mut q = gw.queue("#").await;
    let body = fixture("prepaid-card-purchase.json");
    assert_eq!(gw.post("/webhooks/card", &[JSON], &body).await.reason, "Stored");
    q.exactly_one(WAIT).await;
    gw.halt().await;
    let opts = Opts { data_dir: Some(data.path().to_path_buf()), exchange: Some(exchange), ..Opts::default() };
    let gw = Gateway::start_opts(SOURCES, &amqp_url(), HashMap::new(), opts).await;
    let r = gw.post("/webhooks/card", &[JSON], &body).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Duplicate"));
    assert!(q.next(Duration::from_millis(500)).await.is_none());
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_window_the_id_is_admitted_again() {
    let gw = Gateway::start(SOURCES).await;
    let mut q = gw.queue("#").await;
    let body = br#"{"event":"short","n":1}"#;
    assert_eq!(gw.post("/webhooks/short", &[JSON], body).await.reason, "Stored");
    assert_eq!(gw.post("/webhooks/short", &[JSON], body).await.reason, "Duplicate");
    q.exactly_one(WAIT).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(gw.post("/webhooks/short", &[JSON], body).await.reason, "Stored");
    q.exactly_one(WAIT).await;
    q.close().await;
    gw.stop().await;
}

fn flagged(m: &crate::support::Message) -> bool {
    m.header("cloudEvents_outoforder") == Some(AMQPValue::Boolean(true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instamed_settlement_before_approval_flags_the_approval() {
    let gw = Gateway::start(SOURCES).await;
    let mut q = gw.queue("#").await;
    let auth = basic();
    let hdrs = [JSON, ("authorization", auth.as_str())];
    let event = |status: &str, date: &str| {
        format!(r#"{{"TransactionID":"OOO-1","TransactionStatus":"{status}","TransactionDate":"{date}"}}"#)
    };
    for (status, date, late) in [
        ("Settlement", "2024-05-02T00:00:00Z", false),
        ("Approved", "2024-05-01T10:00:00Z", true),
        ("Refunded", "2024-05-03T00:00:00Z", false),
    ] {
        let r = gw.post("/webhooks/instamed", &hdrs, event(status, date).as_bytes()).await;
        assert_eq!((r.status, r.reason.as_str()), (200, "Stored"), "{status}");
        let m = q.exactly_one(WAIT).await;
        assert_eq!(flagged(&m), late, "{status}");
        if !late {
            assert_eq!(m.header("cloudEvents_outoforder"), None);
        }
    }
    // Rank alone (SPEC §3: "or whose rank is below"): an approval dated after the settlement is still late.
    let event = |status: &str, date: &str| {
        format!(r#"{{"TransactionID":"OOO-2","TransactionStatus":"{status}","TransactionDate":"{date}"}}"#)
    };
    for (status, date, late) in
        [("Settlement", "2024-05-02T00:00:00Z", false), ("Approved", "2024-05-04T00:00:00Z", true)]
    {
        let r = gw.post("/webhooks/instamed", &hdrs, event(status, date).as_bytes()).await;
        assert_eq!((r.status, r.reason.as_str()), (200, "Stored"), "{status}");
        assert_eq!(flagged(&q.exactly_one(WAIT).await), late, "{status} by rank");
    }
    assert_eq!(gw.metric("hookgate_out_of_order_total{source=\"instamed\"}").await, 2.0);
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tyro_events_older_by_modified_are_flagged() {
    let gw = Gateway::start(SOURCES).await;
    let mut q = gw.queue("#").await;
    let event =
        |name: &str, modified: &str| format!(r#"{{"event":"{name}","transactionId":"OOO-T","modified":"{modified}"}}"#);
    for (name, modified, late) in [
        ("healthFundPaidInvoice", "2024-05-01T10:00:00.000Z", false),
        ("healthFundApprovedInvoice", "2024-05-01T09:00:00.000Z", true), // paid arrived first
        ("healthFundPaidInvoice", "2024-05-01T09:30:00.000Z", true),     // an older `modified`
        ("healthFundRejectedInvoice", "2024-05-01T11:00:00.000Z", false),
        ("healthFundPaidInvoice", "2024-05-01T12:00:00.000Z", true), // rejected is final
    ] {
        let r = gw.post("/webhooks/tyro", &[JSON], event(name, modified).as_bytes()).await;
        assert_eq!((r.status, r.reason.as_str()), (200, "Stored"), "{name} {modified}");
        assert_eq!(flagged(&q.exactly_one(WAIT).await), late, "{name} {modified}");
    }
    assert_eq!(gw.metric("hookgate_out_of_order_total{source=\"tyro-post\"}").await, 3.0);
    q.close().await;
    gw.stop().await;
}
