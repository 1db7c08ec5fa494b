//! A small HTTP(S) GET for JWKS documents: one request per connection, bounded in time and size.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The whole fetch (connect, TLS, request, body) must finish within this.
const TIMEOUT: Duration = Duration::from_secs(3);

/// A JWKS larger than this is refused.
const MAX_BYTES: usize = 256 * 1024;

/// A TLS client trusting the system's roots.
///
/// # Errors
/// When no trusted root can be loaded.
pub fn tls_connector() -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("no trusted root certificates found on this system for https".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// GETs `url`; only a `200` is a success.
///
/// # Errors
/// A short reason (for the log).
pub async fn get(url: &http::Uri, tls: Option<&TlsConnector>) -> Result<Bytes, String> {
    tokio::time::timeout(TIMEOUT, get_inner(url, tls)).await.map_err(|_| "timed out".to_string())?
}

async fn get_inner(url: &http::Uri, tls: Option<&TlsConnector>) -> Result<Bytes, String> {
    let host = url.host().ok_or("no host")?;
    let port = url.port_u16().unwrap_or(if tls.is_some() { 443 } else { 80 });
    let tcp =
        TcpStream::connect((host.trim_matches(|c| c == '[' || c == ']'), port)).await.map_err(|e| e.to_string())?;
    match tls {
        None => request(tcp, url).await,
        Some(connector) => {
            let name = rustls_pki_types::ServerName::try_from(host.trim_matches(|c| c == '[' || c == ']').to_string())
                .map_err(|e| e.to_string())?;
            let stream = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
            request(stream, url).await
        }
    }
}

async fn request<S>(io: S, url: &http::Uri) -> Result<Bytes, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let authority = url.authority().map(|a| a.as_str()).unwrap_or_default();
    let req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != http::StatusCode::OK {
        conn.abort();
        return Err(format!("answered {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_BYTES).collect().await.map_err(|e| e.to_string());
    conn.abort();
    Ok(body?.to_bytes())
}
