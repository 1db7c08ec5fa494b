//! `hmac`: signed deliveries. Each scheme (in `hmac/`) says where the signature, the timestamp and the signed
//! bytes are; this module checks them the same way for all of them.
//!
//! Invariants:
//! - Every configured secret is tried (rotation), against every signature the delivery presents; the result
//!   does not say which one matched or which was wrong.
//! - A signature is decoded first and must have the digest's length; it is then compared with
//!   `Mac::verify_slice` (constant time). An empty, truncated, badly encoded or wrong-length signature is a
//!   401, never a 5xx or a panic.
//! - A scheme that signs a timestamp refuses one outside `tolerance` (default 5 minutes) of `now`, in either
//!   direction, so a captured delivery cannot be replayed later. `now` is passed in: the checks are pure.

mod scheme;
mod standard;
mod tyro;

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use hmac::Mac;
use sha2::Sha256;

use super::{AuthError, Check, Unverified};
use crate::config::{self, secret, secret::Env, ConfigError, HmacScheme};
pub use scheme::Scheme;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The replay window when `tolerance` is not set.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The length of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;

/// At most this many signatures of one delivery are tried (a header could list thousands).
const MAX_SIGNATURES: usize = 8;

/// One candidate signed message: the concatenation of these parts (the body among them, borrowed, not copied).
pub(crate) type Message<'a> = Vec<Cow<'a, [u8]>>;

/// What a delivery presents: the byte strings that may have been signed, its signatures and its timestamp.
#[derive(Debug, Default)]
pub(crate) struct Presented<'a> {
    /// Candidate signed messages (Tyro: the timestamp as sent and unquoted, each followed by the body).
    pub messages: Vec<Message<'a>>,
    /// Decoded HMAC-SHA256 tags, each exactly [`TAG_LEN`] bytes.
    pub tags: Vec<Vec<u8>>,
    /// Decoded Ed25519 signatures (Standard Webhooks `v1a`), each 64 bytes.
    pub ed25519: Vec<Vec<u8>>,
    /// Unix seconds, for schemes that sign a timestamp.
    pub timestamp: Option<i64>,
}

impl Presented<'_> {
    pub fn push_tag(&mut self, tag: Option<Vec<u8>>) {
        if let Some(tag) = tag.filter(|t| t.len() == TAG_LEN) {
            if self.tags.len() < MAX_SIGNATURES {
                self.tags.push(tag);
            }
        }
    }
}

/// The `hmac` check of one source.
#[derive(Debug)]
pub struct HmacCheck {
    scheme: Scheme,
    secrets: Vec<secret::Secret>,
    /// One HMAC state per secret, keyed once at build (each check clones one instead of keying it again).
    keyed: Keyed,
    public_keys: Vec<Vec<u8>>,
    tolerance: Duration,
}

/// HMAC-SHA256 states keyed with the secrets; their `Debug` shows only how many there are.
struct Keyed(Vec<HmacSha256>);

impl fmt::Debug for Keyed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keyed({} secrets, redacted)", self.0.len())
    }
}

impl HmacCheck {
    /// Validates `[sources.NAME.auth] hmac` and resolves its secrets. `key` is `sources.NAME.auth.hmac`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key that is missing, not allowed for the scheme, or unusable.
    pub fn build(key: &str, cfg: &config::Hmac, env: &dyn Env) -> Result<Self, ConfigError> {
        let scheme = Scheme::build(key, cfg)?;
        if cfg.public_keys.is_some() && cfg.scheme != HmacScheme::StandardWebhooks {
            return Err(ConfigError::key(&format!("{key}.public_keys"), "only for scheme = \"standard-webhooks\""));
        }
        let public_keys = match &cfg.public_keys {
            Some(keys) => standard::public_keys(&format!("{key}.public_keys"), keys)?,
            None => Vec::new(),
        };
        let secrets = if public_keys.is_empty() || has_secrets(cfg) {
            let raw = resolve_secrets(key, cfg, env)?;
            if cfg.scheme == HmacScheme::StandardWebhooks {
                standard::decode_secrets(&format!("{key}.secrets"), raw)?
            } else {
                raw
            }
        } else {
            Vec::new()
        };
        let tolerance = cfg.tolerance.map_or(DEFAULT_TOLERANCE, |d| d.0);
        if tolerance.is_zero() {
            return Err(ConfigError::key(&format!("{key}.tolerance"), "must be greater than zero"));
        }
        let keyed = Keyed(secrets.iter().filter_map(|s| HmacSha256::new_from_slice(s.expose()).ok()).collect());
        Ok(HmacCheck { scheme, secrets, keyed, public_keys, tolerance })
    }

    /// The headers the signature covers besides the body.
    pub fn signed_headers(&self) -> Vec<http::HeaderName> {
        self.scheme.signed_headers()
    }

    /// Whether `req` carries a valid signature, checked at `now`. An empty body never does: no scheme signs the
    /// method, path or query, so a body-less request (Tyro's `GET`/`DELETE`) would let one captured signature
    /// be replayed to any path inside the tolerance as a new event.
    pub fn accepts(&self, headers: &http::HeaderMap, body: &[u8], now: SystemTime) -> bool {
        if body.is_empty() {
            return false;
        }
        let Some(p) = self.scheme.present(headers, body) else {
            return false;
        };
        if let Some(ts) = p.timestamp {
            if !fresh(ts, now, self.tolerance) {
                return false;
            }
        } else if self.scheme.timestamped() {
            return false;
        }
        if self.matches(&p) {
            return true;
        }
        // Tyro: a sender that pretty-printed the body signed its compact form. Only built when the body as sent
        // did not match (it is a parse and a serialization of the whole body).
        matches!(self.scheme, Scheme::Tyro) && tyro::present_compact(headers, body).is_some_and(|c| self.matches(&c))
    }

    /// Whether any presented signature is one of any secret (or public key) over any candidate message; every
    /// combination is tried, whatever matched first.
    fn matches(&self, p: &Presented<'_>) -> bool {
        let mut ok = false;
        for keyed in &self.keyed.0 {
            for msg in &p.messages {
                for tag in &p.tags {
                    ok |= keyed_matches(keyed, msg, tag);
                }
            }
        }
        if !self.public_keys.is_empty() {
            for msg in &p.messages {
                let whole = msg.concat();
                for pk in &self.public_keys {
                    for sig in &p.ed25519 {
                        ok |= standard::ed25519_matches(pk, &whole, sig);
                    }
                }
            }
        }
        ok
    }
}

impl Check for HmacCheck {
    fn method(&self) -> &'static str {
        "hmac"
    }

    fn verify<'a>(&'a self, req: &'a Unverified) -> BoxFuture<'a, Result<(), AuthError>> {
        let ok = self.accepts(&req.parts.headers, &req.body, req.now);
        Box::pin(async move {
            if ok {
                Ok(())
            } else {
                Err(AuthError::Unauthorized { method: "hmac", challenge: None })
            }
        })
    }
}

/// The headers a provider would send with `body` at `now`, signed with the first configured secret
/// (`hookgate sign`).
///
/// # Errors
/// A [`ConfigError`] when the config is invalid or has no HMAC secret to sign with.
pub fn sign(
    key: &str,
    cfg: &config::Hmac,
    env: &dyn Env,
    body: &[u8],
    now: SystemTime,
) -> Result<Vec<(String, String)>, ConfigError> {
    let check = HmacCheck::build(key, cfg, env)?;
    let secret = check.secrets.first().ok_or_else(|| {
        ConfigError::key(&format!("{key}.secrets"), "no HMAC secret to sign with (v1a public keys cannot sign)")
    })?;
    Ok(check.scheme.sign(secret.expose(), body, unix_secs(now)))
}

fn has_secrets(cfg: &config::Hmac) -> bool {
    cfg.secrets.is_some() || cfg.secrets_env.is_some() || cfg.secrets_file.is_some()
}

fn resolve_secrets(key: &str, cfg: &config::Hmac, env: &dyn Env) -> Result<Vec<secret::Secret>, ConfigError> {
    let inline = cfg.secrets.iter().flatten().map(|s| s.0.as_str());
    let envs = cfg.secrets_env.iter().flat_map(|e| e.iter());
    let files = cfg.secrets_file.iter().flat_map(|f| f.iter());
    secret::resolve_many(&format!("{key}.secrets"), inline, envs, files, env)
}

/// HMAC-SHA256 of the parts of `msg` under an already keyed state, compared with `tag` in constant time.
fn keyed_matches(keyed: &HmacSha256, msg: &[Cow<'_, [u8]>], tag: &[u8]) -> bool {
    let mut mac = keyed.clone();
    msg.iter().for_each(|part| mac.update(part));
    mac.verify_slice(tag).is_ok()
}

/// HMAC-SHA256 of `msg` under `key` (for signing).
pub(crate) fn mac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    match HmacSha256::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(msg);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Whether `ts` (Unix seconds) is within `tolerance` of `now`, before or after.
pub(crate) fn fresh(ts: i64, now: SystemTime, tolerance: Duration) -> bool {
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    unix_secs(now).checked_sub(ts).is_some_and(|age| age.checked_abs().is_some_and(|a| a <= tolerance))
}

pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// A timestamp header: Unix seconds, or an RFC 3339 / ISO-8601 date (quotes tolerated).
pub(crate) fn parse_timestamp(value: &str) -> Option<i64> {
    let v = value.trim().trim_matches('"');
    if let Ok(secs) = v.parse::<i64>() {
        return Some(secs);
    }
    chrono::DateTime::parse_from_rfc3339(v).ok().map(|t| t.timestamp())
}

#[cfg(test)]
mod tests;
