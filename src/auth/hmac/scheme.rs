//! Where each scheme puts its signature, its timestamp and what it signs; how `hookgate sign` produces them.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use http::{HeaderMap, HeaderName};

use super::{mac, parse_timestamp, standard, tyro, Message, Presented};
use crate::config::{self, ConfigError, Encoding, HmacScheme};

/// A configured scheme.
#[derive(Debug)]
pub enum Scheme {
    /// `X-Sender-Signature` = hex HMAC of the `X-Sender-Timestamp` value followed by the JSON payload.
    Tyro,
    /// `X-Signature` = HMAC of the body, hex or base64 (`encoding`; absent: either), optional `sha256=`.
    XSignature {
        encoding: Option<Encoding>,
    },
    /// `webhook-signature` = `v1,<base64>` (or `v1a,<base64 ed25519>`) over `id.timestamp.body`.
    StandardWebhooks,
    /// `X-Hub-Signature-256: sha256=<hex>` over the body.
    Github,
    /// `Stripe-Signature: t=<unix>,v1=<hex>` over `t.body`.
    Stripe,
    /// `X-Shopify-Hmac-Sha256: <base64>` over the body.
    Shopify,
    Custom(Custom),
}

/// `scheme = "custom"`: everything from configuration.
#[derive(Debug)]
pub struct Custom {
    header: HeaderName,
    encoding: Encoding,
    prefix: String,
    timestamp_header: Option<HeaderName>,
    signed: Vec<Part>,
}

#[derive(Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Timestamp,
    Body,
}

const CUSTOM_ONLY: [&str; 4] = ["header", "prefix", "timestamp_header", "signed"];

impl Scheme {
    /// # Errors
    /// A key that the scheme needs and lacks, or one it does not use.
    pub fn build(key: &str, cfg: &config::Hmac) -> Result<Self, ConfigError> {
        if cfg.scheme != HmacScheme::Custom {
            let given =
                [cfg.header.is_some(), cfg.prefix.is_some(), cfg.timestamp_header.is_some(), cfg.signed.is_some()];
            if let Some((name, _)) = CUSTOM_ONLY.iter().zip(given).find(|(_, g)| *g) {
                return Err(ConfigError::key(&format!("{key}.{name}"), "only for scheme = \"custom\""));
            }
            if cfg.encoding.is_some() && cfg.scheme != HmacScheme::XSignature {
                return Err(ConfigError::key(
                    &format!("{key}.encoding"),
                    "only for scheme = \"custom\" or \"x-signature\"",
                ));
            }
        }
        Ok(match cfg.scheme {
            HmacScheme::Tyro => Scheme::Tyro,
            HmacScheme::XSignature => Scheme::XSignature { encoding: cfg.encoding },
            HmacScheme::StandardWebhooks => Scheme::StandardWebhooks,
            HmacScheme::Github => Scheme::Github,
            HmacScheme::Stripe => Scheme::Stripe,
            HmacScheme::Shopify => Scheme::Shopify,
            HmacScheme::Custom => Scheme::Custom(Custom::build(key, cfg)?),
        })
    }

    /// Whether the scheme signs a timestamp (so a delivery without one is refused).
    pub fn timestamped(&self) -> bool {
        match self {
            Scheme::Tyro | Scheme::StandardWebhooks | Scheme::Stripe => true,
            Scheme::Custom(c) => c.timestamp_header.is_some(),
            _ => false,
        }
    }

    /// The request headers the signature covers besides the body (event fields may come from these alone).
    pub fn signed_headers(&self) -> Vec<HeaderName> {
        match self {
            Scheme::Tyro => vec![HeaderName::from_static("x-sender-timestamp")],
            Scheme::StandardWebhooks => {
                vec![HeaderName::from_static("webhook-id"), HeaderName::from_static("webhook-timestamp")]
            }
            Scheme::Custom(c) => c.timestamp_header.iter().cloned().collect(),
            Scheme::XSignature { .. } | Scheme::Github | Scheme::Stripe | Scheme::Shopify => Vec::new(),
        }
    }

    /// What the delivery presents; `None` when a header is missing or unreadable.
    pub(crate) fn present<'a>(&'a self, headers: &'a HeaderMap, body: &'a [u8]) -> Option<Presented<'a>> {
        match self {
            Scheme::Tyro => tyro::present(headers, body),
            Scheme::StandardWebhooks => standard::present(headers, body),
            Scheme::XSignature { encoding } => {
                let value = header(headers, "x-signature")?;
                let value = strip_prefix_ci(value, "sha256=");
                let tag = match encoding {
                    Some(e) => decode(*e, value),
                    None => decode_either(value),
                };
                Some(body_only(body, tag))
            }
            Scheme::Github => {
                let value = header(headers, "x-hub-signature-256")?;
                Some(body_only(body, value.strip_prefix("sha256=").and_then(|v| decode(Encoding::Hex, v))))
            }
            Scheme::Shopify => {
                Some(body_only(body, decode(Encoding::Base64, header(headers, "x-shopify-hmac-sha256")?)))
            }
            Scheme::Stripe => stripe(headers, body),
            Scheme::Custom(c) => c.present(headers, body),
        }
    }

    /// The headers a provider sends for `body` at `now` (Unix seconds), signed with `secret`.
    pub fn sign(&self, secret: &[u8], body: &[u8], now: i64) -> Vec<(String, String)> {
        let hex = |msg: &[u8]| hex::encode(mac(secret, msg));
        match self {
            Scheme::Tyro => tyro::sign(secret, body, now),
            Scheme::StandardWebhooks => standard::sign(secret, body, now),
            Scheme::XSignature { encoding } => {
                let tag = mac(secret, body);
                let value = match encoding {
                    Some(Encoding::Base64) => B64.encode(tag),
                    _ => hex::encode(tag),
                };
                vec![("X-Signature".into(), value)]
            }
            Scheme::Github => vec![("X-Hub-Signature-256".into(), format!("sha256={}", hex(body)))],
            Scheme::Shopify => vec![("X-Shopify-Hmac-Sha256".into(), B64.encode(mac(secret, body)))],
            Scheme::Stripe => {
                let msg = [format!("{now}.").as_bytes(), body].concat();
                vec![("Stripe-Signature".into(), format!("t={now},v1={}", hex(&msg)))]
            }
            Scheme::Custom(c) => c.sign(secret, body, now),
        }
    }
}

impl Custom {
    fn build(key: &str, cfg: &config::Hmac) -> Result<Self, ConfigError> {
        let name = |k: &str, v: &str| {
            HeaderName::from_bytes(v.as_bytes())
                .map_err(|_| ConfigError::key(&format!("{key}.{k}"), "not a valid header name"))
        };
        let header = cfg
            .header
            .as_deref()
            .ok_or_else(|| ConfigError::key(&format!("{key}.header"), "scheme = \"custom\" needs the signature header"))
            .and_then(|h| name("header", h))?;
        let timestamp_header = cfg.timestamp_header.as_deref().map(|h| name("timestamp_header", h)).transpose()?;
        let template = cfg.signed.as_deref().ok_or_else(|| {
            ConfigError::key(
                &format!("{key}.signed"),
                "scheme = \"custom\" needs a template such as \"{timestamp}.{body}\"",
            )
        })?;
        let signed = parse_template(&format!("{key}.signed"), template)?;
        match (signed.contains(&Part::Timestamp), timestamp_header.is_some()) {
            (true, false) => {
                return Err(ConfigError::key(
                    &format!("{key}.timestamp_header"),
                    "`signed` uses {timestamp}; name its header",
                ))
            }
            (false, true) => {
                return Err(ConfigError::key(
                    &format!("{key}.signed"),
                    "timestamp_header is set but the template does not sign {timestamp}",
                ))
            }
            _ => {}
        }
        let encoding = cfg.encoding.unwrap_or(Encoding::Hex);
        Ok(Custom { header, encoding, prefix: cfg.prefix.clone().unwrap_or_default(), timestamp_header, signed })
    }

    fn present<'a>(&'a self, headers: &'a HeaderMap, body: &'a [u8]) -> Option<Presented<'a>> {
        let value = headers.get(&self.header)?.to_str().ok()?.trim();
        let value = value.strip_prefix(self.prefix.as_str())?;
        let (raw_ts, timestamp) = match &self.timestamp_header {
            Some(h) => {
                let raw = headers.get(h)?.to_str().ok()?.trim();
                (raw, Some(parse_timestamp(raw)?))
            }
            None => ("", None),
        };
        let message = self.parts(raw_ts, body);
        let mut p = Presented { messages: vec![message], timestamp, ..Presented::default() };
        p.push_tag(decode(self.encoding, value));
        Some(p)
    }

    /// The signed message as parts, borrowed from the template, the timestamp header and the body.
    fn parts<'a>(&'a self, timestamp: &'a str, body: &'a [u8]) -> Message<'a> {
        let part = |p: &'a Part| match p {
            Part::Text(t) => Cow::Borrowed(t.as_bytes()),
            Part::Timestamp => Cow::Borrowed(timestamp.as_bytes()),
            Part::Body => Cow::Borrowed(body),
        };
        self.signed.iter().map(part).collect()
    }

    fn sign(&self, secret: &[u8], body: &[u8], now: i64) -> Vec<(String, String)> {
        let ts = now.to_string();
        let tag = mac(secret, &self.parts(&ts, body).concat());
        let encoded = match self.encoding {
            Encoding::Hex => hex::encode(tag),
            Encoding::Base64 => B64.encode(tag),
        };
        let mut out = Vec::new();
        if let Some(h) = &self.timestamp_header {
            out.push((h.as_str().to_string(), ts));
        }
        out.push((self.header.as_str().to_string(), format!("{}{encoded}", self.prefix)));
        out
    }
}

fn parse_template(key: &str, template: &str) -> Result<Vec<Part>, ConfigError> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let close = rest[open..].find('}').ok_or_else(|| ConfigError::key(key, "an unclosed `{`"))? + open;
        parts.push(match &rest[open + 1..close] {
            "timestamp" => Part::Timestamp,
            "body" => Part::Body,
            other => {
                return Err(ConfigError::key(
                    key,
                    format!("unknown placeholder {{{other}}}; use {{timestamp}} or {{body}}"),
                ))
            }
        });
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    if parts.iter().filter(|p| **p == Part::Body).count() != 1 {
        return Err(ConfigError::key(key, "must contain {body} exactly once"));
    }
    Ok(parts)
}

fn stripe<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Option<Presented<'a>> {
    let value = header(headers, "stripe-signature")?;
    let mut p = Presented::default();
    let mut t = None;
    for item in value.split(',') {
        match item.trim().split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => p.push_tag(decode(Encoding::Hex, v)),
            _ => {}
        }
    }
    let t = t?;
    p.timestamp = Some(t.parse().ok()?);
    p.messages.push(vec![Cow::Borrowed(t.as_bytes()), Cow::Borrowed(b"."), Cow::Borrowed(body)]);
    Some(p)
}

fn body_only(body: &[u8], tag: Option<Vec<u8>>) -> Presented<'_> {
    let mut p = Presented { messages: vec![vec![Cow::Borrowed(body)]], ..Presented::default() };
    p.push_tag(tag);
    p
}

pub(crate) fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn strip_prefix_ci<'v>(value: &'v str, prefix: &str) -> &'v str {
    match value.get(..prefix.len()) {
        Some(p) if p.eq_ignore_ascii_case(prefix) => &value[prefix.len()..],
        _ => value,
    }
}

pub(crate) fn decode(encoding: Encoding, value: &str) -> Option<Vec<u8>> {
    match encoding {
        Encoding::Hex => hex::decode(value.trim()).ok(),
        Encoding::Base64 => B64.decode(value.trim()).ok(),
    }
}

/// Hex when it reads as 64 hex digits (an HMAC-SHA256 tag), else base64.
fn decode_either(value: &str) -> Option<Vec<u8>> {
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        decode(Encoding::Hex, value)
    } else {
        decode(Encoding::Base64, value)
    }
}
