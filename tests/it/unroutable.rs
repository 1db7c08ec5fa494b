//! SPEC §4: an event no queue is bound for is stored, not refused. By default it lands in the fanout alternate
//! exchange's durable queue `<exchange>.unrouted` (a quorum queue, or the classic queue an earlier version
//! declared), headers intact, and is counted; with `declare_exchange = false`
//! and an exchange that has no alternate exchange (or one declared before it had one), it is parked in the spool
//! and published once a queue is bound.

use std::collections::HashMap;
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;

use crate::support::{amqp_url, broker, delete_exchange, unique, Gateway, Opts, Queue, GENERIC, JSON};

const UNROUTABLE: &str = "hookgate_unroutable_total{source=\"generic\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_no_queue_is_bound_for_is_stored_in_the_alternate_exchange_and_counted() {
    let gw = Gateway::start(GENERIC).await;
    let body = br#"{"event":"nobody.listens","n":1}"#;
    let r = gw.post("/webhooks/generic", &JSON, body).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    let mut unrouted = Queue::consume(&format!("{}.unrouted", gw.exchange)).await;
    let m = unrouted.exactly_one(Duration::from_secs(5)).await;
    assert_eq!(m.routing_key, "generic.nobody.listens");
    assert_eq!(m.body, body);
    assert_eq!(m.props.delivery_mode(), &Some(2), "persistent");
    assert_eq!(m.text("cloudEvents_type").as_deref(), Some("generic.nobody.listens"));
    assert_eq!(m.text("cloudEvents_source").as_deref(), Some("/sources/generic"));
    assert_eq!(m.text("cloudEvents_specversion").as_deref(), Some("1.0"));
    let id = m.text("cloudEvents_id").expect("cloudEvents_id");
    // The generic preset's id: the SHA-256 of the body (SPEC §3), computed here, not by the gateway's code.
    assert_eq!(id, hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body)));
    assert_eq!(m.props.message_id().as_ref().map(|s| s.to_string()), Some(id));
    gw.wait_metric(UNROUTABLE, 1.0).await;
    assert_eq!(queue_type(&format!("{}.unrouted", gw.exchange)).await, "quorum", "replicated in a cluster");
    assert_eq!(gw.metric("hookgate_amqp_publishes_total{outcome=\"ack\"}").await, 1.0);
    assert_eq!(gw.metric("hookgate_spool_parked_events").await, 0.0);
    // A routed event is not counted.
    let mut bound = gw.queue("generic.routed").await;
    assert_eq!(gw.post("/webhooks/generic", &JSON, br#"{"event":"routed"}"#).await.status, 200);
    bound.exactly_one(Duration::from_secs(5)).await;
    assert!(unrouted.next(Duration::from_millis(300)).await.is_none());
    assert_eq!(gw.metric(UNROUTABLE).await, 1.0);
    bound.close().await;
    unrouted.close().await;
    gw.stop().await;
}

/// `broker.alternate_exchange` names the fanout alternate exchange and its durable queue (SPEC §4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_alternate_exchange_keeps_the_unroutable_event_in_its_queue() {
    let exchange = unique("hookgate-test");
    // `<name>.unrouted` for a `name` of its own, so that `delete_exchange(name)` removes it and its queue.
    let named = format!("{exchange}-named");
    let ae = format!("{named}.unrouted");
    let broker_keys = format!("alternate_exchange = \"{ae}\"\n");
    let opts = Opts { exchange: Some(exchange.clone()), broker: broker_keys, ..Opts::default() };
    let gw = Gateway::start_opts(GENERIC, &amqp_url(), HashMap::new(), opts).await;
    let r = gw.post("/webhooks/generic", &JSON, br#"{"event":"named.ae"}"#).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    let mut kept = Queue::consume(&ae).await;
    assert_eq!(kept.exactly_one(Duration::from_secs(5)).await.routing_key, "generic.named.ae");
    gw.wait_metric(UNROUTABLE, 1.0).await;
    kept.close().await;
    gw.stop().await;
    delete_exchange(&named).await;
    delete_exchange(&exchange).await;
}

/// The type of the existing durable queue `name`: RabbitMQ accepts a declare naming its type (`x-queue-type`) and
/// refuses any other with PRECONDITION_FAILED.
async fn queue_type(name: &str) -> &'static str {
    let conn = broker().await;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(name.into(), passive, FieldTable::default()).await.expect("the queue exists");
    let mut accepted = Vec::new();
    for kind in ["quorum", "classic"] {
        let ch = conn.create_channel().await.expect("channel");
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        if ch.queue_declare(name.into(), durable, args).await.is_ok() {
            accepted.push(kind);
        }
    }
    let _ = conn.close(200, "done".into()).await;
    assert_eq!(accepted.len(), 1, "{name}: a declare of exactly one type is accepted, not {accepted:?}");
    accepted[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_unrouted_queue_an_earlier_version_declared_is_used_as_it_is() {
    // What an earlier version declared: the fanout alternate exchange and a classic durable queue, bound.
    let exchange = unique("hookgate-test");
    let ae = format!("{exchange}.unrouted");
    let conn = broker().await;
    let ch = conn.create_channel().await.expect("channel");
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(ae.as_str().into(), ExchangeKind::Fanout, durable, FieldTable::default()).await.expect("ae");
    let queue = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(ae.as_str().into(), queue, FieldTable::default()).await.expect("classic queue");
    let bind = QueueBindOptions::default();
    ch.queue_bind(ae.as_str().into(), ae.as_str().into(), "".into(), bind, FieldTable::default()).await.expect("bind");
    let _ = conn.close(200, "done".into()).await;

    let opts = Opts { exchange: Some(exchange.clone()), ..Opts::default() };
    let gw = Gateway::start_opts(GENERIC, &amqp_url(), HashMap::new(), opts).await;
    let body = br#"{"event":"nobody.listens.yet"}"#;
    let r = gw.post("/webhooks/generic", &JSON, body).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    let mut unrouted = Queue::consume(&ae).await;
    let m = unrouted.exactly_one(Duration::from_secs(5)).await;
    assert_eq!((m.routing_key.as_str(), m.body.as_slice()), ("generic.nobody.listens.yet", &body[..]));
    gw.wait_metric(UNROUTABLE, 1.0).await;
    assert_eq!(gw.metric("hookgate_spool_parked_events").await, 0.0);
    assert_eq!(queue_type(&ae).await, "classic", "kept, with what it holds");
    unrouted.close().await;
    gw.stop().await;
    delete_exchange(&exchange).await;
}

/// Declares `name` as a plain durable topic exchange, without an alternate exchange.
async fn plain_exchange(name: &str) {
    let conn = broker().await;
    let ch = conn.create_channel().await.expect("channel");
    let opts = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(name.into(), ExchangeKind::Topic, opts, FieldTable::default()).await.expect("declare");
    let _ = conn.close(200, "done".into()).await;
}

/// Parked while no queue is bound, then published once one is.
async fn parked_then_published(broker_keys: &str) {
    let exchange = unique("hookgate-test");
    plain_exchange(&exchange).await;
    let opts = Opts { exchange: Some(exchange.clone()), broker: broker_keys.into(), ..Opts::default() };
    let gw = Gateway::start_opts(GENERIC, &amqp_url(), HashMap::new(), opts).await;
    let body = br#"{"event":"consumer.late"}"#;
    let r = gw.post("/webhooks/generic", &JSON, body).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    assert_eq!(gw.metric(UNROUTABLE).await, 1.0);
    assert_eq!(gw.metric("hookgate_spool_parked_events").await, 1.0);
    assert!(gw.metric("hookgate_amqp_publishes_total{outcome=\"returned\"}").await >= 1.0);
    let mut q = gw.queue("generic.#").await;
    let m = q.exactly_one(Duration::from_secs(15)).await;
    assert_eq!((m.routing_key.as_str(), m.body.as_slice()), ("generic.consumer.late", &body[..]));
    assert_eq!(m.text("cloudEvents_type").as_deref(), Some("generic.consumer.late"));
    gw.wait_metric("hookgate_spool_parked_events", 0.0).await;
    assert_eq!(gw.metric(UNROUTABLE).await, 1.0, "counted once");
    q.close().await;
    gw.stop().await;
    delete_exchange(&exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_alternate_exchange_a_returned_event_is_parked_then_published_once_bound() {
    parked_then_published("declare_exchange = false\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_declared_before_it_had_an_alternate_exchange_is_used_as_it_is() {
    // The redeclare with `alternate-exchange` fails with PRECONDITION_FAILED: the gateway still starts, and parks.
    parked_then_published("").await;
}
