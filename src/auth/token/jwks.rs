//! JSON Web Key Sets (RFC 7517): the parsed set, from a file or fetched from a URL (see [`super::remote`]).

use std::str::FromStr;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Ed),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => None,
    }
}

struct Entry {
    kid: Option<String>,
    alg: Option<Algorithm>,
    family: Family,
    key: DecodingKey,
}

/// The usable public keys of a JWKS. Symmetric (`oct`) and encryption (`use: enc`) keys are left out.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Entry>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySet({} keys)", self.keys.len())
    }
}

impl KeySet {
    /// # Errors
    /// A reason when the text is not a JWKS or holds no usable public key.
    pub fn parse(text: &[u8]) -> Result<KeySet, String> {
        let doc: serde_json::Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
        let list = doc.get("keys").and_then(|k| k.as_array()).ok_or("not a JWKS: no \"keys\" array")?;
        let keys: Vec<Entry> = list.iter().filter_map(entry).collect();
        if keys.is_empty() {
            return Err("the JWKS holds no usable public key (RSA, EC or OKP)".into());
        }
        Ok(KeySet { keys })
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|e| e.kid.as_deref() == Some(kid))
    }

    /// Keys that may have signed a token with this `kid` (any, when the token names none) and algorithm.
    pub fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<DecodingKey> {
        let Some(fam) = family(alg) else { return Vec::new() };
        self.keys
            .iter()
            .filter(|e| e.family == fam && e.alg.is_none_or(|a| a == alg))
            .filter(|e| kid.is_none_or(|k| e.kid.as_deref() == Some(k)))
            .map(|e| e.key.clone())
            .collect()
    }
}

fn entry(value: &serde_json::Value) -> Option<Entry> {
    if value.get("use").and_then(|u| u.as_str()).is_some_and(|u| u != "sig") {
        return None;
    }
    let family = match value.get("kty")?.as_str()? {
        "RSA" => Family::Rsa,
        "EC" => Family::Ec,
        "OKP" => Family::Ed,
        _ => return None,
    };
    let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
    let alg = match value.get("alg").and_then(|a| a.as_str()) {
        Some(name) => Some(Algorithm::from_str(name).ok().filter(|a| self::family(*a) == Some(family))?),
        None => None,
    };
    Some(Entry { kid: jwk.common.key_id.clone(), alg, family, key: DecodingKey::from_jwk(&jwk).ok()? })
}

/// An absolute `https://` (or `http://`) URL with a host.
///
/// # Errors
/// Why it is not.
pub fn check_url(url: &str) -> Result<http::Uri, String> {
    let url: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme_str(), Some("https" | "http")) {
        return Err("must start with https:// (or http:// for a local identity provider)".into());
    }
    if url.host().is_none() {
        return Err("needs a host".into());
    }
    Ok(url)
}
