//! Standard Webhooks (<https://www.standardwebhooks.com>): `webhook-id`, `webhook-timestamp` (Unix seconds) and
//! `webhook-signature`, a space-separated list of `v1,<base64 HMAC-SHA256>` and `v1a,<base64 Ed25519>` over
//! `id.timestamp.body`. HMAC secrets are `whsec_` + base64 (the decoded bytes are the key); Ed25519 public keys
//! are `whpk_` + base64.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use http::HeaderMap;

use super::scheme::header;
use super::{mac, Presented};
use crate::config::{secret::Secret, ConfigError};

const MAX_ED25519: usize = 8;

pub(super) fn present<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Option<Presented<'a>> {
    let id = header(headers, "webhook-id")?;
    let ts = header(headers, "webhook-timestamp")?;
    let signatures = header(headers, "webhook-signature")?;
    let mut p = Presented { timestamp: Some(ts.parse().ok()?), ..Presented::default() };
    let parts: [&'a [u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", body];
    p.messages.push(parts.into_iter().map(Cow::Borrowed).collect());
    for item in signatures.split_ascii_whitespace() {
        match item.split_once(',') {
            Some(("v1", sig)) => p.push_tag(B64.decode(sig).ok()),
            Some(("v1a", sig)) => {
                if let Some(sig) = B64.decode(sig).ok().filter(|s| s.len() == 64) {
                    if p.ed25519.len() < MAX_ED25519 {
                        p.ed25519.push(sig);
                    }
                }
            }
            _ => {}
        }
    }
    Some(p)
}

/// `whsec_<base64>` → the key bytes.
pub(super) fn decode_secrets(key: &str, secrets: Vec<Secret>) -> Result<Vec<Secret>, ConfigError> {
    secrets
        .into_iter()
        .map(|s| {
            let text = std::str::from_utf8(s.expose()).map_err(|_| ConfigError::key(key, "not text"))?;
            let b64 = text.trim().strip_prefix("whsec_").unwrap_or(text.trim());
            B64.decode(b64)
                .ok()
                .filter(|k| !k.is_empty())
                .map(Secret::new)
                .ok_or_else(|| ConfigError::key(key, "a Standard Webhooks secret is `whsec_` followed by base64"))
        })
        .collect()
}

/// `whpk_<base64>` → 32-byte Ed25519 public keys.
pub(super) fn public_keys(key: &str, keys: &[String]) -> Result<Vec<Vec<u8>>, ConfigError> {
    if keys.is_empty() {
        return Err(ConfigError::key(key, "list at least one key, or leave the key out"));
    }
    keys.iter()
        .map(|k| {
            let b64 = k.trim().strip_prefix("whpk_").unwrap_or(k.trim());
            B64.decode(b64)
                .ok()
                .filter(|k| k.len() == 32)
                .ok_or_else(|| ConfigError::key(key, "an Ed25519 public key is `whpk_` followed by 32 bytes in base64"))
        })
        .collect()
}

pub(super) fn ed25519_matches(public_key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key).verify(msg, sig).is_ok()
}

/// Signs with the (decoded) secret; the message id is derived from the body and the time.
pub(super) fn sign(secret: &[u8], body: &[u8], now: i64) -> Vec<(String, String)> {
    let digest = mac(b"hookgate sign", &[now.to_string().as_bytes(), body].concat());
    let id = format!("msg_{}", hex::encode(digest.get(..12).unwrap_or_default()));
    let ts = now.to_string();
    let tag = mac(secret, &[id.as_bytes(), b".", ts.as_bytes(), b".", body].concat());
    vec![
        ("webhook-id".into(), id),
        ("webhook-timestamp".into(), ts),
        ("webhook-signature".into(), format!("v1,{}", B64.encode(tag))),
    ]
}
