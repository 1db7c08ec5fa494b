//! Provider payload → event metadata (SPEC §3): the dedup `id`, the normalized `type`, the `subject` and the
//! provider's `time`, plus an order `rank` for presets whose statuses have an order. Pure: no I/O.
//!
//! Field names match case-insensitively at the top level of JSON (or as a dotted path into it), under the root
//! element of XML, or as NVP keys; then among path parameters, query parameters and, last, request headers
//! (Standard Webhooks' `webhook-id`). `[sources.NAME.event]` overrides the preset's field names.

mod fields;
mod instamed;
mod presets;
mod time;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

pub use fields::Fields;
pub use time::parse_time;

use crate::config::{EventFields, Preset};

/// What normalization found in a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventMeta {
    /// The dedup key: the preset's id fields joined with `:`, else the SHA-256 of the body (hex).
    pub id: String,
    /// Lower-case, dotted (`payment.approved`); `unknown` when the delivery names none.
    pub kind: String,
    pub subject: Option<String>,
    pub time: Option<DateTime<Utc>>,
    /// Position in the preset's status order (higher = later); `None` when unordered.
    pub rank: Option<u8>,
}

/// What a preset reads before overrides apply.
#[derive(Debug, Default)]
struct Extracted {
    id_parts: Option<Vec<String>>,
    kind: Option<String>,
    subject: Option<String>,
    time: Option<String>,
}

/// A source's rules: its preset and the field names that override it.
#[derive(Clone, Debug)]
pub struct FieldRules {
    preset: Preset,
    overrides: EventFields,
}

impl FieldRules {
    pub fn new(preset: Preset, overrides: &EventFields) -> Self {
        FieldRules { preset, overrides: overrides.clone() }
    }

    /// Reads the event metadata of one delivery. `body` is the bytes that will be published.
    pub fn extract(&self, f: &Fields<'_>, body: &[u8]) -> EventMeta {
        let mut x = match self.preset {
            Preset::Instamed => instamed::extract(f),
            Preset::Tyro => presets::tyro(f),
            Preset::PrepaidCard => presets::prepaid_card(f),
            Preset::StandardWebhooks => presets::standard_webhooks(f),
            Preset::Generic => presets::generic(f),
        };
        let o = &self.overrides;
        if let Some(name) = &o.kind {
            x.kind = f.get(name).map(|v| slug(&v));
        }
        if let Some(name) = &o.subject {
            x.subject = f.get(name);
        }
        if let Some(name) = &o.time {
            x.time = f.get(name);
        }
        // A preset that joins parts (`payment.<status>`, `<message>.<code>`) must not leave a dot at either end
        // when a part slugged to nothing. (A joined type may pass MAX_TYPE_BYTES; a routing key that then passes
        // 255 bytes is refused `400` by the pipeline.)
        let kind = x.kind.map(|k| k.trim_matches('.').to_string());
        let kind = kind.filter(|k| !k.is_empty()).unwrap_or_else(|| "unknown".to_string());
        if let Some(names) = &o.id {
            x.id_parts = names
                .iter()
                .map(|n| if n.eq_ignore_ascii_case("type") { Some(kind.clone()) } else { f.get(n) })
                .collect();
        }
        let id = match x.id_parts {
            Some(parts) if !parts.is_empty() && parts.iter().all(|p| !p.is_empty()) => parts.join(":"),
            _ => sha256_hex(body),
        };
        // The id is the AMQP message_id, a short string: a long one is replaced by its hash.
        let id = capped(id, MAX_ID_BYTES);
        // The subject is a header of every message and a key of the order state: bounded the same way.
        let subject = x.subject.map(|s| capped(s, MAX_SUBJECT_BYTES));
        let rank = match self.preset {
            Preset::Instamed => instamed::rank(&kind),
            Preset::Tyro => presets::tyro_rank(&kind),
            _ => None,
        };
        EventMeta { id, rank, time: x.time.as_deref().and_then(parse_time), subject, kind }
    }
}

/// Longest id kept as is (AMQP short strings hold 255 bytes).
const MAX_ID_BYTES: usize = 200;
/// Longest subject kept as is; a longer one is replaced by its hash, like an id.
const MAX_SUBJECT_BYTES: usize = 200;
/// Longest normalized type, so `<source>.<type>` fits a routing key.
const MAX_TYPE_BYTES: usize = 120;

/// Lower-case and dotted: runs of spaces, `_`, `/` and `:` become one `.`; characters other than
/// `a-z 0-9 . -` are dropped, so the type is safe inside a routing key.
pub fn slug(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.trim().chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
            out.push(c);
        } else if matches!(c, '.' | ' ' | '_' | '/' | ':' | '\t') && !out.ends_with('.') && !out.is_empty() {
            out.push('.');
        }
    }
    out.truncate(MAX_TYPE_BYTES);
    while out.ends_with('.') {
        out.pop();
    }
    out
}

/// `value`, or `sha256:<hex of value>` when it is longer than `max` bytes (equal values stay equal).
fn capped(value: String, max: usize) -> String {
    if value.len() > max {
        format!("sha256:{}", sha256_hex(value.as_bytes()))
    } else {
        value
    }
}

pub fn sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

#[cfg(test)]
mod tests;
