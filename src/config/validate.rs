//! The rules that span fields (run by [`Config::validate`] after parsing): each names the key it is about, never the
//! value found there. Preset defaults are filled in here, so the validated value is the effective configuration.

use std::collections::HashSet;

use super::server::Bucket;
use super::source::{self, Source};
use super::{ack_margin, types, Config, ConfigError, Preset};

impl Config {
    /// Checks rules across fields and fills in preset defaults.
    pub fn validate(mut self) -> Result<Config, ConfigError> {
        self.validate_broker()?;
        let exchange = &self.broker.exchange;
        self.broker.alternate_exchange.get_or_insert_with(|| format!("{exchange}.unrouted"));
        if let Some(ae) = self.broker.alternate() {
            if ae == exchange || ae.len() > 255 {
                return Err(ConfigError::key(
                    "broker.alternate_exchange",
                    "must differ from broker.exchange and be at most 255 bytes (\"\" turns it off)",
                ));
            }
        }
        self.validate_storage()?;
        self.validate_limits()?;
        self.server.max_inflight_body_bytes_per_client = Some(self.server.body_share());
        self.validate_rate_limits()?;
        if self.sources.is_empty() {
            return Err(ConfigError::key("sources", "no source is configured; add a [sources.NAME] table"));
        }
        let mut paths = HashSet::new();
        let client_ca = self.server.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        let publish_timeout = self.broker.publish_timeout.0;
        for (name, source) in &mut self.sources {
            validate_source(name, source, client_ca, publish_timeout)?;
            validate_body_cap(name, source.max_body_bytes, self.server.max_inflight_body_bytes)?;
            let path = source.path.clone().unwrap_or_default();
            if !paths.insert(path.clone()) {
                return Err(ConfigError::key(
                    &format!("sources.{name}.path"),
                    format!("{path} is used by another source"),
                ));
            }
        }
        self.validate_pollers(client_ca)?;
        tracing_subscriber::EnvFilter::try_new(&self.logging.level)
            .map_err(|e| ConfigError::key("logging.level", format!("not a valid filter directive: {e}")))?;
        Ok(self)
    }

    /// Each poller's keys, its `source` (which must exist and use the `instamed` preset) and its `path` (which
    /// must not collide with a source's or another poller's).
    fn validate_pollers(&mut self, client_ca: bool) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (name, poller) in &mut self.pollers {
            poller.validate(name)?;
            let key = |k: &str| format!("pollers.{name}.{k}");
            match self.sources.get(&poller.source) {
                None => {
                    return Err(ConfigError::key(
                        &key("source"),
                        format!("no source named {:?} is configured", poller.source),
                    ))
                }
                Some(s) if s.preset != Preset::Instamed => {
                    return Err(ConfigError::key(
                        &key("source"),
                        format!("the source {:?} must use preset = \"instamed\" (it is {})", poller.source, s.preset),
                    ))
                }
                Some(_) => {}
            }
            let path = poller.path.clone().unwrap_or_default();
            let token_path = format!("{path}/token");
            for (source_name, source) in &self.sources {
                let pattern = crate::router::PathPattern::parse(source.path.as_deref().unwrap_or_default())
                    .map_err(|r| ConfigError::key(&format!("sources.{source_name}.path"), r))?;
                if pattern.matches(&path).is_some() || pattern.matches(&token_path).is_some() {
                    return Err(ConfigError::key(
                        &key("path"),
                        format!("{path} collides with the path of source {source_name}"),
                    ));
                }
            }
            if !seen.insert(path.clone()) {
                return Err(ConfigError::key(&key("path"), format!("{path} is used by another poller")));
            }
            if poller.auth.client_cert.is_some() && !client_ca {
                return Err(ConfigError::key(
                    &key("auth.client_cert"),
                    "needs server.tls.client_ca to verify client certificates",
                ));
            }
        }
        Ok(())
    }

    fn validate_broker(&self) -> Result<(), ConfigError> {
        let b = &self.broker;
        let given = [b.url.is_some(), b.url_env.is_some(), b.url_file.is_some()];
        let given_many = [b.urls.is_some(), b.urls_env.is_some(), b.urls_file.is_some()];
        let forms = given.iter().chain(&given_many).filter(|g| **g).count();
        if forms > 1 {
            return Err(ConfigError::key(
                "broker.url",
                "give one of `url`, `url_env`, `url_file`, `urls`, `urls_env` or `urls_file`",
            ));
        }
        if let Some((_, reason)) = b.url.as_ref().and_then(|url| nodes_fault(&[url])) {
            return Err(ConfigError::key("broker.url", reason));
        }
        if let Some((node, reason)) = b.urls.as_deref().and_then(nodes_fault) {
            let key = node.map_or_else(|| "broker.urls".to_string(), |i| format!("broker.urls[{i}]"));
            return Err(ConfigError::key(&key, reason));
        }
        if self.broker.exchange.is_empty() || self.broker.exchange.len() > 240 {
            return Err(ConfigError::key("broker.exchange", "must be 1 to 240 bytes"));
        }
        if self.broker.publish_timeout.0.is_zero() {
            return Err(ConfigError::key("broker.publish_timeout", "must be greater than zero"));
        }
        Ok(())
    }

    fn validate_storage(&self) -> Result<(), ConfigError> {
        let s = &self.storage;
        let forms = [s.shared.is_some(), s.shared_env.is_some(), s.shared_file.is_some()];
        if forms.into_iter().filter(|given| *given).count() > 1 {
            return Err(ConfigError::key("storage.shared", "give one of `shared`, `shared_env` or `shared_file`"));
        }
        if s.shared.as_deref().is_some_and(|url| !super::is_redis(url)) {
            return Err(ConfigError::key("storage.shared", "must start with redis:// or rediss://"));
        }
        if s.shared_prefix.is_empty() {
            return Err(ConfigError::key("storage.shared_prefix", "must not be empty"));
        }
        if s.spool_key_file.is_some() && s.spool_key_env.is_some() {
            return Err(ConfigError::key("storage.spool_key_file", "give either spool_key_file or spool_key_env"));
        }
        if s.spool_max_bytes < 4096 {
            return Err(ConfigError::key("storage.spool_max_bytes", "must be at least 4096"));
        }
        if s.cache_bytes < 1 << 20 {
            return Err(ConfigError::key("storage.cache_bytes", "must be at least 1048576 (1 MiB)"));
        }
        if s.filter_bytes < 1 << 16 {
            return Err(ConfigError::key("storage.filter_bytes", "must be at least 65536 (64 KiB)"));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.max_connections == 0 {
            return Err(ConfigError::key("server.max_connections", "must be at least 1"));
        }
        if s.proxy_protocol && s.trusted_proxies.is_empty() {
            return Err(ConfigError::key(
                "server.proxy_protocol",
                "needs server.trusted_proxies: a PROXY header is only believed from a trusted proxy",
            ));
        }
        if s.tls.as_ref().is_some_and(|t| !t.crls.is_empty() && t.client_ca.is_none()) {
            return Err(ConfigError::key("server.tls.crls", "needs server.tls.client_ca"));
        }
        if s.max_header_bytes < 1024 {
            return Err(ConfigError::key("server.max_header_bytes", "must be at least 1024"));
        }
        if s.http2_max_concurrent_streams == 0 {
            return Err(ConfigError::key("server.http2_max_concurrent_streams", "must be at least 1"));
        }
        if s.max_inflight_body_bytes < 65_536 {
            return Err(ConfigError::key("server.max_inflight_body_bytes", "must be at least 65536"));
        }
        if s.max_inflight_body_bytes_per_client.is_some_and(|n| n > s.max_inflight_body_bytes) {
            return Err(ConfigError::key(
                "server.max_inflight_body_bytes_per_client",
                "must be at most server.max_inflight_body_bytes (0 turns the per-client share off)",
            ));
        }
        for (key, d) in [
            ("server.tls_handshake_timeout", s.tls_handshake_timeout),
            ("server.header_read_timeout", s.header_read_timeout),
            ("server.body_read_timeout", s.body_read_timeout),
            ("server.idle_timeout", s.idle_timeout),
            ("server.drain_timeout", s.drain_timeout),
        ] {
            if d.0.is_zero() {
                return Err(ConfigError::key(key, "must be greater than zero"));
            }
        }
        Ok(())
    }

    fn validate_rate_limits(&self) -> Result<(), ConfigError> {
        for (key, b) in
            [("rate_limits.global", self.rate_limits.global), ("rate_limits.per_client", self.rate_limits.per_client)]
        {
            validate_bucket(key, b)?;
        }
        if !(1..=10_000_000).contains(&self.rate_limits.max_clients) {
            return Err(ConfigError::key("rate_limits.max_clients", "must be between 1 and 10000000"));
        }
        Ok(())
    }
}

fn validate_bucket(key: &str, b: Bucket) -> Result<(), ConfigError> {
    if b.per_second == 0 || b.burst == 0 {
        return Err(ConfigError::key(key, "per_second and burst must both be at least 1"));
    }
    Ok(())
}

/// A source's `max_body_bytes` must fit in one spool record and in the in-flight budget, or a body of that size
/// could be accepted but never stored (or never read).
fn validate_body_cap(name: &str, max_body_bytes: u64, inflight: u64) -> Result<(), ConfigError> {
    let key = format!("sources.{name}.max_body_bytes");
    let record = crate::spool::format::MAX_BODY_BYTES;
    if max_body_bytes > record {
        return Err(ConfigError::key(
            &key,
            format!("{max_body_bytes} is larger than a spool record can hold ({record} bytes)"),
        ));
    }
    if max_body_bytes > inflight {
        return Err(ConfigError::key(
            &key,
            format!("{max_body_bytes} is larger than server.max_inflight_body_bytes ({inflight})"),
        ));
    }
    Ok(())
}

/// The most broker nodes `broker.urls` may list (a cluster is a handful of nodes).
const MAX_BROKER_URLS: usize = 16;

/// The first fault of a list of broker nodes, if any: `(None, reason)` for its length, `(Some(i), reason)` for node
/// `i` (0-based) whose URL is not `amqp://` or `amqps://`. The reason never holds a URL (it may hold a password).
/// Every form of `[broker]` is checked by it: inline here, `_env`/`_file` when they are read.
pub(super) fn nodes_fault<S: AsRef<str>>(urls: &[S]) -> Option<(Option<usize>, String)> {
    if urls.is_empty() || urls.len() > MAX_BROKER_URLS {
        return Some((None, format!("must list 1 to {MAX_BROKER_URLS} nodes")));
    }
    let i = urls.iter().position(|u| !super::is_amqp(u.as_ref()))?;
    Some((Some(i), "must start with amqp:// or amqps://".to_string()))
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

/// The name of a `[sources.NAME]` or `[pollers.NAME]` table (`what`: "a source", "a poller"): 1 to 64 characters of
/// a-z, 0-9, '-' and '_' (it becomes a label value, a routing key prefix and part of store keys).
pub(super) fn validate_name(table: &str, what: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(ConfigError::key(
            &format!("{table}.{name}"),
            format!("{what} name is 1 to 64 characters of a-z, 0-9, '-' and '_'"),
        ));
    }
    Ok(())
}

/// `table` (`sources.NAME`, `pollers.NAME`) has auth methods or says `unauthenticated = true`, not both, and its
/// methods are valid.
pub(super) fn validate_auth(table: &str, auth: &source::Auth, unauthenticated: bool) -> Result<(), ConfigError> {
    match (auth.is_empty(), unauthenticated) {
        (true, false) => Err(ConfigError::key(
            &format!("{table}.auth"),
            "no authentication method is configured; add one or set `unauthenticated = true`",
        )),
        (false, true) => Err(ConfigError::key(
            &format!("{table}.unauthenticated"),
            "is true but auth methods are configured; remove one",
        )),
        _ => crate::auth::Verifier::validate(table, auth),
    }
}

/// A source's `path` (defaulted to `/webhooks/NAME`) and `methods` (defaulted to its preset's, upper-cased).
fn validate_route(name: &str, s: &mut Source, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    let path = s.path.get_or_insert_with(|| format!("/webhooks/{name}")).clone();
    crate::router::PathPattern::parse(&path).map_err(|reason| ConfigError::key(&key("path"), reason))?;
    let methods = s.methods.get_or_insert_with(|| s.preset.default_methods());
    if methods.is_empty() {
        return Err(ConfigError::key(&key("methods"), "list at least one method"));
    }
    for m in methods.iter_mut() {
        m.make_ascii_uppercase();
        if !METHODS.contains(&m.as_str()) {
            return Err(ConfigError::key(&key("methods"), format!("{m} is not one of {}", METHODS.join(", "))));
        }
    }
    Ok(())
}

fn validate_source(
    name: &str,
    s: &mut Source,
    client_ca: bool,
    publish_timeout: std::time::Duration,
) -> Result<(), ConfigError> {
    let key = |k: &str| format!("sources.{name}.{k}");
    validate_name("sources", "a source", name)?;
    validate_route(name, s, &key)?;
    validate_answer(s, publish_timeout, &key)?;
    if let Some(b) = s.rate_limit {
        validate_bucket(&key("rate_limit"), b)?;
    }
    if let Some(types) = &mut s.content_types {
        validate_content_types(&key("content_types"), types)?;
    }
    if let Some(ids) = &s.event.id {
        if ids.is_empty() {
            return Err(ConfigError::key(&key("event.id"), "list at least one field name"));
        }
    }
    validate_auth(&format!("sources.{name}"), &s.auth, s.unauthenticated)?;
    if s.auth.client_cert.is_some() && !client_ca {
        return Err(ConfigError::key(
            &key("auth.client_cert"),
            "needs server.tls.client_ca to verify client certificates",
        ));
    }
    Ok(())
}

/// Each entry must be a media type hookgate reads (JSON, XML or form-encoded); stored as its lower-case essence.
fn validate_content_types(key: &str, types: &mut [String]) -> Result<(), ConfigError> {
    if types.is_empty() {
        return Err(ConfigError::key(key, "list at least one media type, e.g. [\"application/json\"]"));
    }
    for t in types.iter_mut() {
        let essence = crate::parse::essence(t);
        if t.contains(';') || !essence.contains('/') || crate::parse::format_of(Some(&essence), 1).is_err() {
            return Err(ConfigError::key(
                key,
                format!("{t:?} is not a JSON, XML or form-encoded media type (application/json, application/xml, text/xml, application/x-www-form-urlencoded, */*+json, */*+xml)"),
            ));
        }
        *t = essence;
    }
    Ok(())
}

/// A source's answer and body settings: `ack_timeout` (defaulted to its preset's) leaves room for a publish,
/// `retry_status` makes the provider retry, and the body and dedup window are not zero.
fn validate_answer(
    s: &mut Source,
    publish_timeout: std::time::Duration,
    key: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let ack = *s.ack_timeout.get_or_insert(s.preset.default_ack_timeout());
    if ack.0 < std::time::Duration::from_secs(1) || ack.0 > std::time::Duration::from_secs(300) {
        return Err(ConfigError::key(&key("ack_timeout"), "must be between 1s and 5m"));
    }
    if publish_timeout + ack_margin(ack.0) >= ack.0 {
        return Err(ConfigError::key(
            &key("ack_timeout"),
            format!("must leave room for broker.publish_timeout ({:?}) plus a margin", types::Dur(publish_timeout)),
        ));
    }
    let status = *s.retry_status.get_or_insert(s.preset.default_retry_status());
    if !(500..=599).contains(&status) {
        return Err(ConfigError::key(&key("retry_status"), "must be a 5xx status (one that makes the provider retry)"));
    }
    if s.max_body_bytes == 0 {
        return Err(ConfigError::key(&key("max_body_bytes"), "must be at least 1"));
    }
    if s.dedup_window.0.is_zero() {
        return Err(ConfigError::key(&key("dedup_window"), "must be greater than zero"));
    }
    Ok(())
}
