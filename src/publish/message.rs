//! The CloudEvents 1.0 AMQP binding, binary mode (SPEC §4): the body is the provider's bytes; the attributes are
//! message properties and `cloudEvents_*` application properties (headers).

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use super::PublishError;
use crate::event::Event;

/// AMQP `delivery_mode` 2: persistent, so the broker writes it to disk before confirming (on durable queues).
const PERSISTENT: u8 = 2;

/// The routing key and properties of `event`.
///
/// # Errors
/// [`PublishError::Encode`] when a value does not fit an AMQP short string (255 bytes).
pub fn amqp_message(event: &Event) -> Result<(ShortString, BasicProperties), PublishError> {
    let short = |s: String, what: &'static str| ShortString::try_new(s).map_err(|_| PublishError::Encode(what));
    let routing_key = short(event.routing_key(), "routing key too long")?;
    let mut headers = FieldTable::default();
    let mut put = |k: &str, v: String| {
        headers.insert(ShortString::from(k), AMQPValue::LongString(LongString::from(v)));
    };
    put("cloudEvents_specversion", "1.0".into());
    put("cloudEvents_id", event.id.clone());
    put("cloudEvents_source", event.ce_source());
    put("cloudEvents_type", event.routing_key());
    put("cloudEvents_time", event.ce_time());
    if let Some(subject) = &event.subject {
        put("cloudEvents_subject", subject.clone());
    }
    if event.out_of_order {
        headers.insert(ShortString::from("cloudEvents_outoforder"), AMQPValue::Boolean(true));
    }
    let timestamp = u64::try_from(event.received_at.timestamp()).unwrap_or(0);
    let props = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type(short(event.content_type.clone(), "content type too long")?)
        .with_message_id(short(event.id.clone(), "event id too long")?)
        .with_timestamp(timestamp)
        .with_headers(headers);
    Ok((routing_key, props))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn event() -> Event {
        Event {
            source: Arc::from("tyro"),
            id: "tx1:healthfundpaidinvoice".into(),
            kind: "healthfundpaidinvoice".into(),
            subject: Some("tx1".into()),
            time: None,
            rank: Some(2),
            received_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            content_type: "application/json".into(),
            body: bytes::Bytes::from_static(b"{}"),
            out_of_order: true,
        }
    }

    #[test]
    fn binary_mode_attributes() {
        let (rk, p) = amqp_message(&event()).unwrap();
        assert_eq!(rk.as_str(), "tyro.healthfundpaidinvoice");
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("tx1:healthfundpaidinvoice"));
        assert_eq!(p.timestamp(), &Some(1_700_000_000));
        let h = p.headers().clone().unwrap();
        let get = |k: &str| h.inner().get(k).cloned();
        assert_eq!(get("cloudEvents_type"), Some(AMQPValue::LongString("tyro.healthfundpaidinvoice".into())));
        assert_eq!(get("cloudEvents_time"), Some(AMQPValue::LongString("2023-11-14T22:13:20Z".into())));
        assert_eq!(get("cloudEvents_outoforder"), Some(AMQPValue::Boolean(true)));
    }

    #[test]
    fn oversized_values_are_errors_not_panics() {
        let mut e = event();
        e.id = "x".repeat(300);
        assert_eq!(amqp_message(&e).err(), Some(PublishError::Encode("event id too long")));
    }
}
