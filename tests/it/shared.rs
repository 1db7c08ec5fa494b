//! Two gateways sharing Redis (`storage.shared`) behave as one: a delivery and its retry sent to different
//! replicas publish once, a claim left by a crashed replica expires, and order state is shared.

use std::collections::HashMap;
use std::time::Duration;

use lapin::types::AMQPValue;
use redis::AsyncCommands;

use crate::support::{amqp_url, unique, Gateway, Opts, JSON};

const REDIS: &str = "redis://127.0.0.1:6379";

const SOURCES: &str = r#"
[sources.card]
preset = "prepaid-card"
unauthenticated = true

[sources.tyro]
preset = "tyro"
path = "/webhooks/tyro"
unauthenticated = true
"#;

const WAIT: Duration = Duration::from_secs(5);

/// Two replicas on one exchange and one Redis key prefix (unique to the test), each with its own data dir.
async fn replicas() -> (Gateway, Gateway, String) {
    let prefix = unique("hookgate-it");
    let storage = format!("shared = \"{REDIS}\"\nshared_prefix = \"{prefix}\"\n");
    let opts = Opts { storage: storage.clone(), ..Opts::default() };
    let a = Gateway::start_opts(SOURCES, &amqp_url(), HashMap::new(), opts).await;
    let opts = Opts { storage, exchange: Some(a.exchange.clone()), ..Opts::default() };
    let b = Gateway::start_opts(SOURCES, &amqp_url(), HashMap::new(), opts).await;
    (a, b, prefix)
}

async fn redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(REDIS).expect("redis url");
    match client.get_multiplexed_async_connection().await {
        Ok(c) => c,
        Err(e) => panic!("Redis is not reachable at {REDIS} ({e}); start it with `bash .ci/services`"),
    }
}

/// Deletes the test's Redis keys (only its own prefix; never anything else).
pub async fn cleanup(prefix: &str) {
    let mut r = redis().await;
    let keys: Vec<String> = r.keys(format!("{prefix}:*")).await.unwrap_or_default();
    for k in keys {
        let _: Result<(), _> = r.del(k).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_and_its_retry_on_different_replicas_publish_once() {
    let (a, b, prefix) = replicas().await;
    let mut q = a.queue("#").await;
    let body = crate::support::fixture("prepaid-card-purchase.json");
    let r = a.post("/webhooks/card", &JSON, &body).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    let r = b.post("/webhooks/card", &JSON, &body).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Duplicate"));
    q.exactly_one(WAIT).await;
    assert_eq!(b.metric("hookgate_retries_total{source=\"card\"}").await, 1.0);
    // The same delivery to both at the same moment, ten times each: one message.
    let body = br#"{"TransactionId":"shared-race-1","MessageType":"transaction","TransactionCode":"PP80DS"}"#;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let c = Gateway::client_for(if i % 2 == 0 { a.addr } else { b.addr });
            tokio::spawn(async move { c.post("/webhooks/card", &JSON, body).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    q.exactly_one(WAIT).await;
    q.close().await;
    a.stop().await;
    b.halt_and_forget().await;
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_by_a_crashed_replica_expires() {
    let (a, b, prefix) = replicas().await;
    let mut q = a.queue("#").await;
    let body = br#"{"TransactionId":"orphan-1","MessageType":"transaction","TransactionCode":"PP80DS"}"#;
    // A replica claimed this id and died before storing it: its claim outlives it by its TTL only.
    let key = format!("{prefix}:dedup:card\u{1f}orphan-1");
    let _: () = redis().await.set_ex(&key, "dead-replica-token", 1).await.unwrap();
    let started = tokio::time::Instant::now();
    let r = b.post("/webhooks/card", &JSON, body).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    assert!(started.elapsed() >= Duration::from_millis(500), "waited for the orphaned claim");
    q.exactly_one(WAIT).await;
    let done: Option<String> = redis().await.get(&key).await.unwrap();
    assert_eq!(done.as_deref(), Some("done"));
    q.close().await;
    a.stop().await;
    b.halt_and_forget().await;
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_state_is_shared_between_replicas() {
    let (a, b, prefix) = replicas().await;
    let mut q = a.queue("#").await;
    let paid = br#"{"event":"healthFundPaidInvoice","transactionId":"SH-1","modified":"2024-05-01T10:00:00Z"}"#;
    let approved = br#"{"event":"healthFundApprovedInvoice","transactionId":"SH-1","modified":"2024-05-01T09:00:00Z"}"#;
    assert_eq!(a.post("/webhooks/tyro", &JSON, paid).await.reason, "Stored");
    assert_eq!(q.exactly_one(WAIT).await.header("cloudEvents_outoforder"), None);
    assert_eq!(b.post("/webhooks/tyro", &JSON, approved).await.reason, "Stored");
    let m = q.exactly_one(WAIT).await;
    assert_eq!(m.header("cloudEvents_outoforder"), Some(AMQPValue::Boolean(true)));
    assert_eq!(b.metric("hookgate_out_of_order_total{source=\"tyro\"}").await, 1.0);
    q.close().await;
    a.stop().await;
    b.halt_and_forget().await;
    cleanup(&prefix).await;
}
