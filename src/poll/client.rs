//! The HTTP client to InstaMed: hyper-util's pooled client over hyper-rustls (rustls with ring, the system's
//! trust roots), `https://` and, for tests and local fakes, `http://`. Every call is bounded in time
//! (`request_timeout`, connect included) and in answer size.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// An answer larger than this is garbage.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// Idle pooled connections per host are closed after this.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Why a call produced no answer to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallError {
    /// No answer (or no whole answer) within `request_timeout`.
    Timeout,
    /// Could not connect, TLS failed, or the connection broke.
    Connect,
    /// The answer was over [`MAX_ANSWER_BYTES`].
    TooLarge,
}

/// A pooled client.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl HttpClient {
    /// # Errors
    /// No trusted root certificate could be loaded from the system.
    pub fn new(timeout: Duration) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.with_root_certificates(native_roots()?).with_no_client_auth())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).build(connector);
        Ok(HttpClient { inner, timeout })
    }

    /// POSTs `body` to `url` and reads the whole answer (status, body) within the timeout.
    ///
    /// # Errors
    /// A [`CallError`]; never the error's text (it could hold a URL with credentials in it).
    pub async fn post(
        &self,
        url: &Uri,
        content_type: &'static str,
        extra: Option<(&'static str, &'static str)>,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), CallError> {
        let mut req = Request::post(url.clone())
            .header(header::CONTENT_TYPE, HeaderValue::from_static(content_type))
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| CallError::Connect)?;
        if let Some((name, value)) = extra {
            req.headers_mut().insert(name, HeaderValue::from_static(value));
        }
        let call = async {
            let resp = self.inner.request(req).await.map_err(|_| CallError::Connect)?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES).collect().await.map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    CallError::TooLarge
                } else {
                    CallError::Connect
                }
            })?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(self.timeout, call).await.map_err(|_| CallError::Timeout)?
    }
}

fn native_roots() -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("no trusted root certificates found on this system for https".into());
    }
    Ok(roots)
}
