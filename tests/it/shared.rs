//! Two gateways sharing Redis (`storage.shared`) behave as one: a delivery and its retry sent to different
//! replicas publish once, a claim left by a crashed replica expires, and order state is shared. Under concurrent
//! load with every delivery and its retries spread over both: each event is in the queue exactly once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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

/// Two replicas on one exchange and one Redis key prefix (unique to the test), each with its own data dir. The
/// second reads the Redis URL from the environment (`shared_env`, as the chart configures it).
async fn replicas() -> (Gateway, Gateway, String) {
    let prefix = unique("hookgate-it");
    let storage = format!("shared = \"{REDIS}\"\nshared_prefix = \"{prefix}\"\n");
    let opts = Opts { storage, ..Opts::default() };
    let a = Gateway::start_opts(SOURCES, &amqp_url(), HashMap::new(), opts).await;
    let storage = format!("shared_env = \"HOOKGATE_TEST_REDIS_URL\"\nshared_prefix = \"{prefix}\"\n");
    let opts = Opts { storage, exchange: Some(a.exchange.clone()), ..Opts::default() };
    let env = HashMap::from([("HOOKGATE_TEST_REDIS_URL".to_string(), REDIS.to_string())]);
    let b = Gateway::start_opts(SOURCES, &amqp_url(), env, opts).await;
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
            tokio::spawn(async move {
                let r = c.post("/webhooks/card", &JSON, body).await;
                (r.status, r.reason)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let stored = answers.iter().filter(|a| *a == &(200, "Stored".to_string())).count();
    let duplicates = answers.iter().filter(|a| *a == &(200, "Duplicate".to_string())).count();
    assert_eq!((stored, duplicates), (1, 19), "{answers:?}");
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

/// Distinct events of the load test, each delivered three times (the delivery and two retries).
const EVENTS: usize = 150;
const WORKERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_load_with_retries_on_both_replicas_has_no_cross_replica_duplicate() {
    let (a, b, prefix) = replicas().await;
    let mut q = a.queue("#").await;
    // Copies of one event sit next to each other in the job list, so they race on different replicas.
    let jobs: Arc<Vec<(usize, bool)>> =
        Arc::new((0..EVENTS).flat_map(|i| [(i, i % 2 == 0), (i, i % 2 == 1), (i, i % 3 == 0)]).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (ca, cb) = (Gateway::client_for(a.addr), Gateway::client_for(b.addr));
            let (jobs, next) = (jobs.clone(), next.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while let Some(&(i, to_a)) = jobs.get(next.fetch_add(1, Ordering::AcqRel)) {
                    let body = format!(
                        r#"{{"TransactionId":"load-{i}","MessageType":"transaction","TransactionCode":"PP80DS"}}"#
                    );
                    let c = if to_a { &ca } else { &cb };
                    let r = c.try_post("/webhooks/card", &JSON, body.as_bytes()).await;
                    answers.push((i, r.map(|r| (r.status, r.reason))));
                }
                answers
            })
        })
        .collect();
    let mut stored = BTreeMap::<usize, usize>::new();
    let mut acked = BTreeMap::<usize, ()>::new();
    for t in tasks {
        for (i, answer) in t.await.expect("worker") {
            match answer.as_ref().map(|(s, r)| (*s, r.as_str())) {
                Some((200, "Stored")) => *stored.entry(i).or_default() += 1,
                Some((200, "Duplicate")) => {}
                other => panic!("event {i}: unexpected answer {other:?}"),
            }
            acked.insert(i, ());
        }
    }
    assert_eq!(acked.len(), EVENTS);
    assert!(stored.values().all(|n| *n == 1), "each event stored by exactly one replica");
    assert_eq!(stored.len(), EVENTS);

    let mut copies = BTreeMap::<String, usize>::new();
    while let Some(m) = q.next(Duration::from_secs(2)).await {
        *copies
            .entry(m.props.message_id().as_ref().map(|s| s.as_str().to_string()).unwrap_or_default())
            .or_default() += 1;
    }
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    assert_eq!(duplicates, 0, "cross-replica duplicates");
    assert_eq!(copies.len(), EVENTS, "lost = 0: every acknowledged event is in the queue, nothing else");
    let retries = a.metric("hookgate_retries_total{source=\"card\"}").await
        + b.metric("hookgate_retries_total{source=\"card\"}").await;
    assert_eq!(retries, (2 * EVENTS) as f64, "every other copy answered 200 Duplicate");
    q.close().await;
    a.stop().await;
    b.halt_and_forget().await;
    cleanup(&prefix).await;
}
