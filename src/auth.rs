//! Authentication: an [`Unverified`] delivery becomes [`Authenticated`] only by passing every check its source
//! configures (SPEC §5: "All configured methods must pass").
//!
//! Each method is one [`Check`] in `auth/`: `ip.rs` (`ip_allow`), `mtls.rs` (`client_cert`), `basic.rs`,
//! `token.rs` (`bearer`: JWT, JWKS), `headers.rs` and `hmac.rs` (one file per scheme family under `hmac/`).
//! Checks never say which secret or value was wrong: they return the method that failed and, for Basic and
//! Bearer, the challenge to send. A source without checks must have said `unauthenticated = true` (config
//! validation refuses anything else). Checks take the time from [`Unverified::now`], so they are pure.

mod basic;
mod headers;
pub mod hmac;
pub mod ip;
mod mtls;
pub mod token;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use ipnet::IpNet;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{self, secret::Env, ConfigError};

/// What the connection knows about its peer.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The socket's remote address.
    pub addr: SocketAddr,
    /// The verified client certificate chain (end entity first), when the client presented one.
    pub client_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The source address of the connection's PROXY v2 header (only ever read from a trusted proxy).
    pub proxied: Option<SocketAddr>,
    /// `server.trusted_proxies`: whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<[IpNet]>,
}

impl Peer {
    pub fn plain(addr: SocketAddr) -> Self {
        Peer { addr, client_certs: None, proxied: None, trusted_proxies: Arc::from(Vec::new()) }
    }

    /// The client address of a request on this connection (see `client_addr.rs`).
    pub fn client_ip(&self, headers: &http::HeaderMap) -> IpAddr {
        let direct = self.proxied.map_or(self.addr.ip(), |a| a.ip());
        crate::client_addr::client_ip(direct, headers, &self.trusted_proxies)
    }
}

/// A delivery whose body has been read but not yet authenticated.
pub struct Unverified {
    pub parts: http::request::Parts,
    pub body: Bytes,
    pub peer: Peer,
    /// The client address used for allowlists (the socket's, unless a trusted proxy said otherwise).
    pub client_ip: IpAddr,
    pub now: SystemTime,
}

/// A delivery that passed every check of its source. Only [`Verifier::verify`] builds one.
pub struct Authenticated {
    inner: Unverified,
}

impl Authenticated {
    pub fn parts(&self) -> &http::request::Parts {
        &self.inner.parts
    }

    pub fn body(&self) -> &Bytes {
        &self.inner.body
    }
}

/// Why a delivery was refused. Carries the method, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// 401; `challenge` is the `WWW-Authenticate` value for Basic and Bearer.
    #[error("authentication failed ({method})")]
    Unauthorized { method: &'static str, challenge: Option<&'static str> },
    /// 403: the address or client certificate is not allowed.
    #[error("not allowed ({method})")]
    Forbidden { method: &'static str },
}

impl AuthError {
    pub fn method(&self) -> &'static str {
        match self {
            AuthError::Unauthorized { method, .. } | AuthError::Forbidden { method } => method,
        }
    }
}

/// One authentication method of a source.
pub trait Check: Send + Sync + fmt::Debug {
    /// The method's config name (`basic`, `hmac`, `ip_allow`, ...), used in logs and metrics.
    fn method(&self) -> &'static str;

    /// Whether this check needs only the request head (so it can run before the body is read).
    fn head_only(&self) -> bool {
        false
    }

    fn verify<'a>(&'a self, req: &'a Unverified) -> BoxFuture<'a, Result<(), AuthError>>;
}

/// The checks of one source, run in a fixed order: address and certificate first, then credentials.
#[derive(Debug, Default)]
pub struct Verifier {
    checks: Vec<Box<dyn Check>>,
    /// With `hmac`: the headers its signature covers. Event fields then come only from the body and these.
    signed_headers: Option<Vec<http::HeaderName>>,
}

impl Verifier {
    /// Builds the checks of `[sources.NAME.auth]`, resolving their secrets.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key that cannot be used.
    pub fn build(key: &str, auth: &config::Auth, _server: &config::Server, env: &dyn Env) -> Result<Self, ConfigError> {
        let mut checks: Vec<Box<dyn Check>> = Vec::new();
        if let Some(nets) = &auth.ip_allow {
            checks.push(Box::new(ip::IpAllow::new(nets.clone())));
        }
        if let Some(cfg) = &auth.client_cert {
            checks.push(Box::new(mtls::ClientCertCheck::build(&format!("{key}.auth.client_cert"), cfg)?));
        }
        if let Some(creds) = &auth.basic {
            checks.push(Box::new(basic::Basic::build(&format!("{key}.auth.basic"), creds, env)?));
        }
        if let Some(cfg) = &auth.bearer {
            checks.push(Box::new(token::Bearer::build(&format!("{key}.auth.bearer"), cfg, env)?));
        }
        if let Some(headers) = &auth.headers {
            checks.push(Box::new(headers::StaticHeaders::build(&format!("{key}.auth.headers"), headers, env)?));
        }
        let mut signed_headers = None;
        if let Some(cfg) = &auth.hmac {
            let check = hmac::HmacCheck::build(&format!("{key}.auth.hmac"), cfg, env)?;
            signed_headers = Some(check.signed_headers());
            checks.push(Box::new(check));
        }
        Ok(Verifier { checks, signed_headers })
    }

    /// Checks what can be checked without secrets or files (called by `Config::validate`, so that
    /// `check-config` and a reload name the key before anything is resolved).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key.
    pub fn validate(key: &str, auth: &config::Auth) -> Result<(), ConfigError> {
        if let Some(cfg) = &auth.client_cert {
            mtls::ClientCertCheck::build(&format!("{key}.auth.client_cert"), cfg)?;
        }
        if let Some(cfg) = &auth.bearer {
            token::validate(&format!("{key}.auth.bearer"), cfg)?;
        }
        if let Some(cfg) = &auth.hmac {
            hmac::Scheme::build(&format!("{key}.auth.hmac"), cfg)?;
        }
        if auth.basic.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::key(&format!("{key}.auth.basic"), "list at least one credential"));
        }
        if auth.ip_allow.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::key(&format!("{key}.auth.ip_allow"), "list at least one address range"));
        }
        Ok(())
    }

    /// The checks that can run on the request head alone, before the body is read.
    ///
    /// # Errors
    /// The first check that fails.
    pub async fn verify_head(&self, req: &Unverified) -> Result<(), AuthError> {
        for check in self.checks.iter().filter(|c| c.head_only()) {
            check.verify(req).await?;
        }
        Ok(())
    }

    /// Runs every check; the delivery is [`Authenticated`] only if all pass.
    ///
    /// # Errors
    /// The first check that fails.
    pub async fn verify(&self, req: Unverified) -> Result<Authenticated, AuthError> {
        for check in &self.checks {
            check.verify(&req).await?;
        }
        Ok(Authenticated { inner: req })
    }

    /// `Some` (the signed headers) when the source authenticates with `hmac`: then the signature covers the
    /// body and these headers only, never the path, the query or other headers, and event fields must come
    /// from what it covers.
    pub fn signed_headers(&self) -> Option<&[http::HeaderName]> {
        self.signed_headers.as_deref()
    }

    /// The configured methods, for logs.
    pub fn methods(&self) -> Vec<&'static str> {
        self.checks.iter().map(|c| c.method()).collect()
    }
}

/// Compares two secrets in constant time, including their lengths (both are hashed first).
pub fn secret_eq(presented: &[u8], expected: &[u8]) -> bool {
    let a = Sha256::digest(presented);
    let b = Sha256::digest(expected);
    a.ct_eq(&b).into()
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub fn request(headers: &[(&str, &str)], body: &[u8], ip: &str) -> Unverified {
        let mut builder = http::Request::builder().method("POST").uri("/webhooks/x");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        let addr = SocketAddr::new(ip.parse().unwrap(), 40000);
        Unverified {
            parts,
            body: Bytes::copy_from_slice(body),
            peer: Peer::plain(addr),
            client_ip: addr.ip(),
            now: SystemTime::now(),
        }
    }
}
