//! `hookgate tail`: a development aid that binds a temporary queue to the exchange and prints each event as one
//! JSON line (routing key, AMQP properties, `cloudEvents_*` headers, and the body's size and SHA-256), so an
//! integrator can see what the queue subscribers receive. The body itself carries card and patient data and is
//! never printed; compare its hash with `sha256sum` of the file that was posted.

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use serde_json::{json, Map, Value};

use crate::config::{secret::Env, Config};

/// Connects to the first node of `broker.urls` that answers.
async fn connect_any(urls: &[String]) -> anyhow::Result<Connection> {
    let mut last = None;
    for url in urls {
        match Connection::connect(url, ConnectionProperties::default()).await {
            Ok(conn) => return Ok(conn),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no broker node configured"), anyhow::Error::from))
}

/// Prints events bound by `pattern` until `count` have arrived (or forever).
///
/// # Errors
/// When the broker cannot be reached or the queue cannot be set up.
pub async fn run(config: &Config, env: &dyn Env, pattern: &str, count: Option<u64>) -> anyhow::Result<()> {
    let conn = connect_any(&config.broker_urls(env)?).await?;
    // The same declaration as the gateway's (alternate exchange included), so tail may start first.
    crate::publish::declare(&conn, &crate::publish_settings(config, env)?).await?;
    let ch = conn.create_channel().await?;
    let exchange = config.broker.exchange.as_str();
    let qopts = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let queue = ch.queue_declare("".into(), qopts, FieldTable::default()).await?;
    ch.queue_bind(
        queue.name().clone(),
        exchange.into(),
        pattern.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    eprintln!("hookgate tail: bound a temporary queue to exchange {exchange:?} with {pattern:?}; waiting for events");
    let consume = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut consumer =
        ch.basic_consume(queue.name().clone(), "hookgate-tail".into(), consume, FieldTable::default()).await?;
    let mut seen = 0;
    while count.is_none_or(|n| seen < n) {
        let Some(delivery) = consumer.next().await else { break };
        let d = delivery?;
        println!("{}", describe(d.routing_key.as_str(), &d.properties, &d.data));
        seen += 1;
    }
    let _ = conn.close(200, "tail done".into()).await;
    Ok(())
}

fn describe(routing_key: &str, p: &lapin::BasicProperties, body: &[u8]) -> Value {
    let headers: Map<String, Value> = p
        .headers()
        .as_ref()
        .map(|h| h.inner().iter().map(|(k, v)| (k.as_str().to_string(), amqp_value(v))).collect())
        .unwrap_or_default();
    json!({
        "routing_key": routing_key,
        "message_id": p.message_id().as_ref().map(|s| s.as_str()),
        "content_type": p.content_type().as_ref().map(|s| s.as_str()),
        "delivery_mode": p.delivery_mode(),
        "timestamp": p.timestamp(),
        "headers": headers,
        "body_bytes": body.len(),
        "body_sha256": crate::normalize::sha256_hex(body),
    })
}

fn amqp_value(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::Boolean(b) => json!(b),
        other => json!(format!("{other:?}")),
    }
}
