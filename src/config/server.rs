//! `[server]`, `[admin]`, `[broker]`, `[storage]`, `[rate_limits]` and `[logging]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::types::Dur;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Absent: plain HTTP, for development only (logged loudly at start).
    pub tls: Option<Tls>,
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    #[serde(default)]
    pub proxy_protocol: bool,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_10s")]
    pub tls_handshake_timeout: Dur,
    #[serde(default = "default_10s")]
    pub header_read_timeout: Dur,
    #[serde(default = "default_10s")]
    pub body_read_timeout: Dur,
    /// All request headers together (names and values); past it `431`.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// A keep-alive HTTP/1.1 or an HTTP/2 connection with no request in flight this long is closed.
    #[serde(default = "default_60s")]
    pub idle_timeout: Dur,
    /// Request-body bytes held at once by all connections together; past it the source's `retry_status`.
    #[serde(default = "default_max_inflight_body_bytes")]
    pub max_inflight_body_bytes: u64,
    /// What one client's bodies together may hold of `max_inflight_body_bytes` (a client's only body excepted);
    /// `0`: no per-client share. Absent: a quarter of the budget, filled in by `Config::validate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflight_body_bytes_per_client: Option<u64>,
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
    #[serde(default = "default_20s")]
    pub drain_timeout: Dur,
}

impl Server {
    /// What one client's bodies together may hold of the in-flight budget (`0`: no per-client share).
    pub fn body_share(&self) -> u64 {
        self.max_inflight_body_bytes_per_client.unwrap_or(self.max_inflight_body_bytes / 4)
    }
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: default_listen(),
            tls: None,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            max_connections: default_max_connections(),
            tls_handshake_timeout: default_10s(),
            header_read_timeout: default_10s(),
            body_read_timeout: default_10s(),
            max_header_bytes: default_max_header_bytes(),
            idle_timeout: default_60s(),
            max_inflight_body_bytes: default_max_inflight_body_bytes(),
            max_inflight_body_bytes_per_client: None,
            http2_max_concurrent_streams: default_http2_max_concurrent_streams(),
            drain_timeout: default_20s(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Enables client-certificate verification (optional at the handshake; sources decide).
    pub client_ca: Option<PathBuf>,
    /// PEM certificate revocation lists of the client CAs; a certificate they revoke fails the handshake, and so
    /// does any client certificate once a CRL has passed its `nextUpdate`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crls: Vec<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

impl Default for Admin {
    fn default() -> Self {
        Admin { listen: default_admin_listen() }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    /// The AMQP URL; it may hold a password, so it is printed with the password redacted.
    #[serde(serialize_with = "serialize_url", skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub url_env: Option<String>,
    /// A file holding the URL (a mounted secret; a trailing newline is not part of it).
    pub url_file: Option<PathBuf>,
    /// The nodes of a cluster, tried in order and in turn on reconnect; each printed with its password redacted.
    #[serde(serialize_with = "serialize_urls", skip_serializing_if = "Option::is_none", default)]
    pub urls: Option<Vec<String>>,
    /// An environment variable holding the nodes' URLs, separated by commas or whitespace.
    pub urls_env: Option<String>,
    /// A file holding the nodes' URLs (a mounted secret), separated by newlines, commas or whitespace.
    pub urls_file: Option<PathBuf>,
    #[serde(default = "default_exchange")]
    pub exchange: String,
    #[serde(default = "default_true")]
    pub declare_exchange: bool,
    /// The fanout exchange (and durable queue of the same name) unroutable events go to; absent:
    /// `<exchange>.unrouted`, filled in by validation; `""`: none.
    pub alternate_exchange: Option<String>,
    #[serde(default = "default_publish_timeout")]
    pub publish_timeout: Dur,
}

impl Default for Broker {
    fn default() -> Self {
        Broker {
            url: None,
            url_env: None,
            url_file: None,
            urls: None,
            urls_env: None,
            urls_file: None,
            exchange: default_exchange(),
            declare_exchange: true,
            alternate_exchange: None,
            publish_timeout: default_publish_timeout(),
        }
    }
}

/// The default broker URL when no form of `url` or `urls` is given.
pub const DEFAULT_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Replaces the password of `scheme://user:password@host` with `<redacted>`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_string(),
    }
}

/// An `http(s)://` URL as `check-config` prints it: the password of its user info and its whole query (either
/// may hold a credential, as a JWKS or an InstaMed endpoint may) replaced by `<redacted>`.
pub fn redact_http_url(url: &str) -> String {
    match url.split_once(['?', '#']) {
        Some((base, _)) => format!("{}?<redacted>", redact_url(base)),
        None => redact_url(url),
    }
}

pub(super) fn serialize_http_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_http_url(url))
}

pub(super) fn serialize_opt_http_url<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => serialize_http_url(url, s),
        None => s.serialize_none(),
    }
}

fn serialize_url<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => s.serialize_str(&redact_url(url)),
        None => s.serialize_none(),
    }
}

fn serialize_urls<S: serde::Serializer>(urls: &Option<Vec<String>>, s: S) -> Result<S::Ok, S::Error> {
    match urls {
        Some(urls) => s.collect_seq(urls.iter().map(|u| redact_url(u))),
        None => s.serialize_none(),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// `redis://` URL of the dedup and order state shared by replicas.
    #[serde(serialize_with = "serialize_url", skip_serializing_if = "Option::is_none", default)]
    pub shared: Option<String>,
    /// `shared` from an environment variable or a file (the URL may hold Redis's password).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub shared_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub shared_file: Option<PathBuf>,
    /// Prefix of every Redis key (`<prefix>:dedup:...`), so several deployments can share one Redis.
    #[serde(default = "default_shared_prefix")]
    pub shared_prefix: String,
    pub spool_key_file: Option<PathBuf>,
    pub spool_key_env: Option<String>,
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// Bytes of redb's page cache for `state.redb` (the dedup index and order state): bounds the memory the
    /// index takes, however many events it holds.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// Bytes of the in-memory filter that spares new events a read of `state.redb` (`state/filter.rs`).
    #[serde(default = "default_filter_bytes")]
    pub filter_bytes: u64,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            data_dir: default_data_dir(),
            shared: None,
            shared_env: None,
            shared_file: None,
            shared_prefix: default_shared_prefix(),
            spool_key_file: None,
            spool_key_env: None,
            spool_max_bytes: default_spool_max_bytes(),
            cache_bytes: default_cache_bytes(),
            filter_bytes: default_filter_bytes(),
        }
    }
}

/// A token bucket: `per_second` refills, `burst` is the bucket size.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default = "default_global_bucket")]
    pub global: Bucket,
    #[serde(default = "default_client_bucket")]
    pub per_client: Bucket,
    /// Client addresses the per-client limiter tracks at most (idle ones are pruned; past it, new addresses
    /// share one overflow bucket of the `per_client` size).
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            global: default_global_bucket(),
            per_client: default_client_bucket(),
            max_clients: default_max_clients(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    #[serde(default)]
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for Logging {
    fn default() -> Self {
        Logging { format: LogFormat::Json, level: default_level() }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8443))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_max_connections() -> usize {
    10_000
}
fn default_10s() -> Dur {
    Dur::secs(10)
}
fn default_20s() -> Dur {
    Dur::secs(20)
}
fn default_60s() -> Dur {
    Dur::secs(60)
}
fn default_max_header_bytes() -> usize {
    16_384
}
fn default_max_inflight_body_bytes() -> u64 {
    256 << 20
}
fn default_http2_max_concurrent_streams() -> u32 {
    32
}
impl Broker {
    /// The alternate exchange in use, if any (after validation filled in the default).
    pub fn alternate(&self) -> Option<&str> {
        match self.alternate_exchange.as_deref() {
            Some("") => None,
            Some(name) => Some(name),
            None => None,
        }
    }
}

fn default_exchange() -> String {
    "hookgate".into()
}
fn default_true() -> bool {
    true
}
fn default_publish_timeout() -> Dur {
    Dur::secs(2)
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_shared_prefix() -> String {
    "hookgate".into()
}
fn default_spool_max_bytes() -> u64 {
    1 << 30
}
fn default_cache_bytes() -> u64 {
    crate::state::DEFAULT_CACHE_BYTES as u64
}
fn default_filter_bytes() -> u64 {
    crate::state::filter::DEFAULT_FILTER_BYTES
}
fn default_global_bucket() -> Bucket {
    Bucket { per_second: 20_000, burst: 40_000 }
}
fn default_client_bucket() -> Bucket {
    Bucket { per_second: 1_000, burst: 2_000 }
}
fn default_max_clients() -> usize {
    100_000
}
fn default_level() -> String {
    "info".into()
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn url_password_is_redacted() {
        assert_eq!(redact_url("amqp://guest:pw@h:5672/%2f"), "amqp://guest:<redacted>@h:5672/%2f");
        assert_eq!(redact_url("amqp://h:5672"), "amqp://h:5672");
    }
}
