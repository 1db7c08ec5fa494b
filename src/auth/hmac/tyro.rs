//! Tyro Health: `X-Sender-Signature` = hex HMAC-SHA256 of the `X-Sender-Timestamp` value followed by the
//! JSON-stringified payload (`JSON.stringify`, so compact, keys in the order sent).
//!
//! A sender that pretty-prints the body still signs the compact form, so the signature is checked against the
//! raw body and, when that is not compact JSON, against its compact re-serialization (serde_json keeps key
//! order: `preserve_order`). The sample in Tyro's guide shows the timestamp quoted (`"2021-01-13T04:23:50.659Z"`):
//! both the value as sent and the unquoted value are tried as signed text.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat};
use http::HeaderMap;

use super::scheme::{decode, header};
use super::{mac, parse_timestamp, Presented};
use crate::config::Encoding;

pub(super) fn present<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Option<Presented<'a>> {
    presented(headers, Cow::Borrowed(body))
}

/// What the delivery presents with its body in compact form (when it is JSON and not compact already): tried
/// only when the body as sent does not match.
pub(super) fn present_compact<'a>(headers: &'a HeaderMap, body: &[u8]) -> Option<Presented<'a>> {
    let compact = compact(body).filter(|c| c.as_slice() != body)?;
    presented(headers, Cow::Owned(compact))
}

fn presented<'a>(headers: &'a HeaderMap, body: Cow<'a, [u8]>) -> Option<Presented<'a>> {
    let raw_ts = header(headers, "x-sender-timestamp")?;
    let signature = header(headers, "x-sender-signature")?.trim_matches('"');
    let mut p = Presented { timestamp: Some(parse_timestamp(raw_ts)?), ..Presented::default() };
    p.push_tag(decode(Encoding::Hex, signature));
    let unquoted = raw_ts.trim_matches('"');
    p.messages.push(vec![Cow::Borrowed(raw_ts.as_bytes()), body.clone()]);
    if unquoted != raw_ts {
        p.messages.push(vec![Cow::Borrowed(unquoted.as_bytes()), body]);
    }
    Some(p)
}

/// The body as `JSON.stringify` would write it, when it is JSON.
fn compact(body: &[u8]) -> Option<Vec<u8>> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    serde_json::to_vec(&value).ok()
}

pub(super) fn sign(secret: &[u8], body: &[u8], now: i64) -> Vec<(String, String)> {
    let ts =
        DateTime::from_timestamp(now, 0).map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)).unwrap_or_default();
    let payload = compact(body).unwrap_or_else(|| body.to_vec());
    let tag = mac(secret, &[ts.as_bytes(), &payload].concat());
    vec![("X-Sender-Timestamp".into(), ts), ("X-Sender-Signature".into(), hex::encode(tag))]
}
