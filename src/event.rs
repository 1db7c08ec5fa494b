//! The event envelope: what one accepted delivery becomes, and what the publisher (or, later, the spool) sends.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

/// One event, ready to be stored.
#[derive(Clone, Debug)]
pub struct Event {
    /// The source's configured name.
    pub source: Arc<str>,
    /// The dedup key (SPEC §3), also the AMQP `message_id` and `cloudEvents_id`.
    pub id: String,
    /// Normalized type, lower-case and dotted (`payment.approved`).
    pub kind: String,
    pub subject: Option<String>,
    /// The provider's event time, when the delivery carries one.
    pub time: Option<DateTime<Utc>>,
    /// Position in the preset's status order, for out-of-order detection.
    pub rank: Option<u8>,
    pub received_at: DateTime<Utc>,
    /// The request's `Content-Type` (`application/json` for a body-less delivery).
    pub content_type: String,
    /// The provider's bytes, unchanged (or the JSON of path and query for a body-less delivery).
    pub body: Bytes,
    /// Set when a later event for the same subject was stored first.
    pub out_of_order: bool,
}

impl Event {
    /// `<source>.<type>`: the routing key and the CloudEvents `type`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.source, self.kind)
    }

    /// `/sources/<source>`: the CloudEvents `source`.
    pub fn ce_source(&self) -> String {
        format!("/sources/{}", self.source)
    }

    /// The CloudEvents `time`: the provider's event time, else the receipt time (RFC 3339).
    pub fn ce_time(&self) -> String {
        self.time.unwrap_or(self.received_at).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    }
}
