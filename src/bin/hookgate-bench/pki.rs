//! Certificates generated at run time: a CA, a server certificate for 127.0.0.1, a client certificate.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The files the gateway reads and the client side's rustls config.
pub struct Pki {
    pub server_toml: String,
    pub client: Arc<rustls::ClientConfig>,
}

fn ca() -> anyhow::Result<(rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>)> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "hookgate-bench CA");
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert, rcgen::Issuer::new(params, key)))
}

fn leaf(issuer: &rcgen::Issuer<'static, rcgen::KeyPair>, name: &str) -> anyhow::Result<(String, String)> {
    let mut p = rcgen::CertificateParams::new(vec![name.to_string()])?;
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `server.crt`, `server.key` and `ca.crt` into `dir`; with `mutual`, the gateway verifies client
/// certificates of the CA and the client presents one.
pub fn generate(dir: &Path, mutual: bool) -> anyhow::Result<Pki> {
    let (ca, issuer) = ca()?;
    let (server_pem, server_key) = leaf(&issuer, "127.0.0.1")?;
    std::fs::write(dir.join("server.crt"), &server_pem)?;
    std::fs::write(dir.join("server.key"), &server_key)?;
    std::fs::write(dir.join("ca.crt"), ca.pem())?;
    let d = dir.display();
    let mut server_toml = format!("[server.tls]\ncert = \"{d}/server.crt\"\nkey = \"{d}/server.key\"\n");
    if mutual {
        server_toml.push_str(&format!("client_ca = \"{d}/ca.crt\"\n"));
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der().to_vec())).context("CA")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let client = if mutual {
        let (pem, key) = leaf(&issuer, "bench-client")?;
        let chain = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes())?)?
    } else {
        builder.with_no_client_auth()
    };
    Ok(Pki { server_toml, client: Arc::new(client) })
}
