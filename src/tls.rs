//! The rustls server configuration: certificate chain, key, optional client-CA verifier (mutual TLS), ALPN.
//!
//! Client certificates are *optional* at the handshake, so sources without `client_cert` share the port; the
//! verifier only authenticates a presented certificate against `client_ca` (and `crls`, when given), and each
//! source authorizes (`auth/mtls.rs`).
//!
//! The served config is a [`Current`]: a reload (`src/reload.rs`) swaps it whole, and each new connection takes
//! the config current at its accept, so connections already open keep the session they negotiated.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::{self, ConfigError};

/// The TLS config new connections are accepted with; a reload replaces it.
#[derive(Clone)]
pub struct Current(Arc<ArcSwap<ServerConfig>>);

impl Current {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Current(Arc::new(ArcSwap::new(config)))
    }

    /// An acceptor with the config current now (for one new connection).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.0.load_full())
    }

    /// Serves `config` to every connection accepted from now on.
    pub fn store(&self, config: Arc<ServerConfig>) {
        self.0.store(config);
    }
}

/// Builds the server TLS config from `[server.tls]`.
///
/// # Errors
/// A [`ConfigError`] naming the key whose file cannot be read or used.
pub fn server_config(tls: &config::Tls) -> Result<Arc<ServerConfig>, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = load_certs("server.tls.cert", &tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
        ConfigError::key("server.tls.key", format!("cannot read a private key from {}: {e}", tls.key.display()))
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::key("server.tls", e.to_string()))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs("server.tls.client_ca", ca)? {
                roots.add(cert).map_err(|e| {
                    ConfigError::key("server.tls.client_ca", format!("not a usable CA certificate: {e}"))
                })?;
            }
            let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(load_crls(&tls.crls)?)
                .allow_unauthenticated();
            if !tls.crls.is_empty() {
                // The CRLs are the client CAs' own: intermediates are not checked, and an expired CRL fails closed.
                verifier = verifier.only_check_end_entity_revocation().enforce_revocation_expiration();
            }
            let verifier = verifier.build().map_err(|e| ConfigError::key("server.tls.crls", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None if !tls.crls.is_empty() => {
            return Err(ConfigError::key("server.tls.crls", "needs server.tls.client_ca"));
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError::key("server.tls.key", format!("does not match the certificate: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The `notAfter` of the served (first) certificate of `server.tls.cert`, in Unix seconds, for
/// `hookgate_tls_cert_expiry_timestamp_seconds`. `None` when the file cannot be read or parsed (which
/// [`server_config`] reports as a config error).
pub fn not_after(tls: &config::Tls) -> Option<i64> {
    let cert = CertificateDer::pem_file_iter(&tls.cert).ok()?.next()?.ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// Sets `hookgate_tls_cert_expiry_timestamp_seconds{listener="public"}` from `tls`.
pub fn record_expiry(metrics: &crate::metrics::Metrics, not_after: Option<i64>) {
    if let Some(t) = not_after {
        metrics.tls_cert_expiry.with_label_values(&["public"]).set(t);
    }
}

fn load_crls(paths: &[std::path::PathBuf]) -> Result<Vec<CertificateRevocationListDer<'static>>, ConfigError> {
    let mut crls = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let found = CertificateRevocationListDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                ConfigError::key(
                    &format!("server.tls.crls[{i}]"),
                    format!("cannot read CRLs from {}: {e}", path.display()),
                )
            })?;
        if found.is_empty() {
            return Err(ConfigError::key(&format!("server.tls.crls[{i}]"), format!("{} holds no CRL", path.display())));
        }
        crls.extend(found);
    }
    Ok(crls)
}

fn load_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConfigError::key(key, format!("cannot read certificates from {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::key(key, format!("{} holds no certificate", path.display())));
    }
    Ok(certs)
}
