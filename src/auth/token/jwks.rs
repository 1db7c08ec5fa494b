//! JSON Web Key Sets (RFC 7517): parsed once from a file, or fetched from a URL, cached, and fetched again when a
//! token names a `kid` the cached set does not have (at most once per [`MIN_REFRESH`], so unknown `kid`s cannot
//! make the gateway hammer the identity provider).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::fetch;

/// A fetched set is used for this long before it is fetched again.
const MAX_AGE: Duration = Duration::from_secs(600);

/// The least time between two fetches.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

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

#[derive(Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    fetched_at: Option<Instant>,
    tried_at: Option<Instant>,
}

/// A JWKS at a URL, cached.
pub struct RemoteJwks {
    url: http::Uri,
    tls: Option<TlsConnector>,
    state: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteJwks({})", self.url)
    }
}

impl RemoteJwks {
    /// # Errors
    /// A reason when the URL is not an absolute http(s) URL.
    pub fn new(url: &str) -> Result<Self, String> {
        let url = check_url(url)?;
        let tls = if url.scheme_str() == Some("https") { Some(fetch::tls_connector()?) } else { None };
        Ok(RemoteJwks { url, tls, state: tokio::sync::Mutex::default() })
    }

    /// Like [`KeySet::candidates`], fetching the set first when it is missing, old, or lacks `kid`.
    pub async fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<DecodingKey> {
        let mut st = self.state.lock().await;
        let stale = st.fetched_at.is_none_or(|t| t.elapsed() > MAX_AGE);
        let unknown = kid.is_some_and(|k| !st.keys.as_ref().is_some_and(|s| s.has_kid(k)));
        let may_try = st.tried_at.is_none_or(|t| t.elapsed() >= MIN_REFRESH);
        if (stale || unknown) && may_try {
            st.tried_at = Some(Instant::now());
            match fetch::get(&self.url, self.tls.as_ref()).await.and_then(|body| KeySet::parse(&body)) {
                Ok(set) => {
                    st.keys = Some(Arc::new(set));
                    st.fetched_at = Some(Instant::now());
                }
                Err(error) => tracing::warn!(url = %self.url, %error, "cannot fetch the JWKS"),
            }
        }
        st.keys.as_ref().map(|s| s.candidates(kid, alg)).unwrap_or_default()
    }
}
