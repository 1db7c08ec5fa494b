//! `bearer`: an OAuth 2.0 access token that is a JWT (RFC 7519), the way InstaMed's identity service issues them.
//!
//! Invariants:
//! - The algorithm comes from the token header but must be in the source's allowlist, and the allowlist never
//!   mixes families with the key source: a JWKS source accepts only asymmetric algorithms, an `hs256_secret`
//!   source only HMAC ones, so a token "HS256-signed with the RSA public key" is refused. `alg: none` does not
//!   parse. The key's own family (and its JWK `alg`, when given) must match the header's algorithm too.
//! - `exp` is required; `exp` and `nbf` are checked against the `now` passed in, with `leeway` (default 60 s);
//!   `iss` and `aud` against the configured values.
//! - Any failure, including a JWKS that cannot be fetched, is a 401 with `WWW-Authenticate: Bearer
//!   error="invalid_token"`, never a 5xx.

mod fetch;
mod jwks;
mod remote;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{AuthError, Check, Unverified};
use crate::config::{self, secret, secret::Env, ConfigError};
use jwks::KeySet;
use remote::RemoteJwks;

const CHALLENGE: &str = "Bearer error=\"invalid_token\"";

/// The leeway on `exp` and `nbf` when `leeway` is not set.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

const ASYMMETRIC: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
];

enum Keys {
    Secret(DecodingKey),
    Static(Arc<KeySet>),
    Remote(RemoteJwks),
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keys::Secret(_) => f.write_str("Secret(<redacted>)"),
            Keys::Static(set) => set.fmt(f),
            Keys::Remote(remote) => remote.fmt(f),
        }
    }
}

/// The `bearer` check of one source.
#[derive(Debug)]
pub struct Bearer {
    keys: Keys,
    algorithms: Vec<Algorithm>,
    issuer: Option<String>,
    audience: Vec<String>,
    leeway: Duration,
}

impl Bearer {
    /// Validates `bearer` and loads its key source. `key` is `sources.NAME.auth.bearer`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key that is missing, contradictory or unusable.
    pub fn build(key: &str, cfg: &config::Bearer, env: &dyn Env) -> Result<Self, ConfigError> {
        let Rules { algorithms, issuer, audience, leeway } = Rules::from_config(key, cfg)?;
        if issuer.is_none() && !has_secret(cfg) {
            tracing::warn!(
                key,
                "bearer without `issuer`: a token of any issuer the key set signs is taken for its audience"
            );
        }
        Ok(Bearer { keys: load_keys(key, cfg, env)?, algorithms, issuer, audience, leeway })
    }

    /// Verifies a `Authorization` header value at `now`.
    pub async fn accepts(&self, authorization: Option<&http::HeaderValue>, now: SystemTime) -> bool {
        let Some(token) = bearer_token(authorization) else {
            return false;
        };
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return false;
        };
        if !self.algorithms.contains(&header.alg) {
            return false;
        }
        let candidates: Vec<DecodingKey> = match &self.keys {
            Keys::Secret(key) => vec![key.clone()],
            Keys::Static(set) => set.candidates(header.kid.as_deref(), header.alg),
            Keys::Remote(remote) => remote.candidates(header.kid.as_deref(), header.alg).await,
        };
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        candidates.iter().any(|key| {
            jsonwebtoken::decode::<serde_json::Value>(token, key, &validation)
                .is_ok_and(|data| self.claims_ok(&data.claims, now))
        })
    }

    fn claims_ok(&self, claims: &serde_json::Value, now: SystemTime) -> bool {
        let now = super::hmac::unix_secs(now) as f64;
        let leeway = self.leeway.as_secs_f64();
        let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_f64) else {
            return false;
        };
        if exp + leeway < now {
            return false;
        }
        match claims.get("nbf") {
            None => {}
            Some(nbf) => match nbf.as_f64() {
                Some(nbf) if nbf - leeway <= now => {}
                _ => return false,
            },
        }
        if let Some(iss) = &self.issuer {
            if claims.get("iss").and_then(serde_json::Value::as_str) != Some(iss.as_str()) {
                return false;
            }
        }
        self.audience.is_empty() || audiences(claims).iter().any(|a| self.audience.iter().any(|want| want == a))
    }
}

impl Check for Bearer {
    fn method(&self) -> &'static str {
        "bearer"
    }

    fn head_only(&self) -> bool {
        true
    }

    fn verify<'a>(&'a self, req: &'a Unverified) -> BoxFuture<'a, Result<(), AuthError>> {
        Box::pin(async move {
            if self.accepts(req.parts.headers.get(http::header::AUTHORIZATION), req.now).await {
                Ok(())
            } else {
                Err(AuthError::Unauthorized { method: "bearer", challenge: Some(CHALLENGE) })
            }
        })
    }
}

/// The parts of `bearer` that need no secret or file: checked by `Config::validate` too.
struct Rules {
    algorithms: Vec<Algorithm>,
    issuer: Option<String>,
    audience: Vec<String>,
    leeway: Duration,
}

impl Rules {
    fn from_config(key: &str, cfg: &config::Bearer) -> Result<Rules, ConfigError> {
        let k = |s: &str| format!("{key}.{s}");
        let secret = has_secret(cfg);
        let given = usize::from(cfg.jwks_file.is_some()) + usize::from(cfg.jwks_url.is_some()) + usize::from(secret);
        if given != 1 {
            return Err(ConfigError::key(key, "give exactly one of `jwks_file`, `jwks_url` or `hs256_secret*`"));
        }
        if let Some(url) = &cfg.jwks_url {
            jwks::check_url(url).map_err(|reason| ConfigError::key(&k("jwks_url"), reason))?;
        }
        let algorithms = algorithms(&k("algorithms"), cfg.algorithms.as_deref(), secret)?;
        let audience: Vec<String> = cfg.audience.iter().flat_map(|a| a.iter().cloned()).collect();
        // SPEC §8's example gives a JWKS with an audience and no issuer: the audience is what tells this gateway's
        // tokens from those the identity provider signs for other services; `issuer`, when given, is checked too.
        if !secret && audience.is_empty() {
            return Err(ConfigError::key(
                &k("audience"),
                "is required with a JWKS: the identity provider signs tokens for other services too",
            ));
        }
        let leeway = cfg.leeway.map_or(DEFAULT_LEEWAY, |d| d.0);
        if leeway > Duration::from_secs(300) {
            return Err(ConfigError::key(&k("leeway"), "must be at most 5m"));
        }
        Ok(Rules { algorithms, issuer: cfg.issuer.clone(), audience, leeway })
    }
}

/// Checks what can be checked without secrets or files. `key` is `sources.NAME.auth.bearer`.
///
/// # Errors
/// A [`ConfigError`] naming the key.
pub fn validate(key: &str, cfg: &config::Bearer) -> Result<(), ConfigError> {
    Rules::from_config(key, cfg).map(|_| ())
}

fn has_secret(cfg: &config::Bearer) -> bool {
    cfg.hs256_secret.is_some() || cfg.hs256_secret_env.is_some() || cfg.hs256_secret_file.is_some()
}

fn load_keys(key: &str, cfg: &config::Bearer, env: &dyn Env) -> Result<Keys, ConfigError> {
    let k = |s: &str| format!("{key}.{s}");
    if has_secret(cfg) {
        let s = secret::resolve_one(
            &k("hs256_secret"),
            cfg.hs256_secret.as_ref().map(|s| s.0.as_str()),
            cfg.hs256_secret_env.as_deref(),
            cfg.hs256_secret_file.as_deref(),
            env,
        )?;
        return Ok(Keys::Secret(DecodingKey::from_secret(s.expose())));
    }
    if let Some(path) = &cfg.jwks_file {
        let text = std::fs::read(path)
            .map_err(|e| ConfigError::key(&k("jwks_file"), format!("cannot read {}: {e}", path.display())))?;
        let set = KeySet::parse(&text).map_err(|reason| ConfigError::key(&k("jwks_file"), reason))?;
        return Ok(Keys::Static(Arc::new(set)));
    }
    let url = cfg.jwks_url.as_deref().unwrap_or_default();
    Ok(Keys::Remote(RemoteJwks::new(url).map_err(|reason| ConfigError::key(&k("jwks_url"), reason))?))
}

fn bearer_token(header: Option<&http::HeaderValue>) -> Option<&str> {
    let value = header?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

fn audiences(claims: &serde_json::Value) -> Vec<&str> {
    match claims.get("aud") {
        Some(serde_json::Value::String(a)) => vec![a.as_str()],
        Some(serde_json::Value::Array(list)) => list.iter().filter_map(serde_json::Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The allowlist: configured, or every asymmetric algorithm (JWKS) / HS256 (secret). Never `none`, never a
/// family that does not match the key source.
fn algorithms(key: &str, configured: Option<&[String]>, secret: bool) -> Result<Vec<Algorithm>, ConfigError> {
    let Some(names) = configured else {
        let mut all = ASYMMETRIC.to_vec();
        all.extend([Algorithm::ES384, Algorithm::EdDSA]);
        return Ok(if secret { vec![Algorithm::HS256] } else { all });
    };
    if names.is_empty() {
        return Err(ConfigError::key(key, "list at least one algorithm"));
    }
    names
        .iter()
        .map(|name| {
            let alg = Algorithm::from_str(name).map_err(|_| {
                ConfigError::key(key, format!("{name} is not a supported JWS algorithm (none is never allowed)"))
            })?;
            let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
            match (secret, hmac) {
                (true, false) => Err(ConfigError::key(
                    key,
                    format!("{name} needs a public key; hs256_secret allows HS256, HS384, HS512"),
                )),
                (false, true) => Err(ConfigError::key(
                    key,
                    format!("{name} is an HMAC algorithm; a JWKS source allows only public-key algorithms"),
                )),
                _ => Ok(alg),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
