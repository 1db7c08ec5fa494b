//! The typed configuration (SPEC §5): parsed strictly from TOML, then validated across fields.
//!
//! Loading is two steps. [`Config::parse`] deserializes (unknown keys are errors) and [`Config::validate`] checks
//! the rules that span fields and fills in each source's preset defaults, so that the value printed by
//! `hookgate check-config` is the effective configuration. Secrets are not resolved here: the stages that use
//! them resolve them through [`secret::Env`] when they are built, and name the key when that fails.

mod poller;
pub mod secret;
mod server;
mod source;
mod types;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use poller::{Poller, DEFAULT_NVP_URL, DEFAULT_SSO_URL};
pub use server::{
    redact_url, Admin, Broker, Bucket, LogFormat, Logging, RateLimits, Server, Storage, Tls, DEFAULT_BROKER_URL,
};
pub use source::{
    Auth, BasicCredential, Bearer, ClientCert, Encoding, EventFields, HeaderSecret, Hmac, HmacScheme, Preset, Source,
};
pub use types::{Dur, InlineSecret, OneOrMany};

/// The whole configuration file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub broker: Broker,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub rate_limits: RateLimits,
    #[serde(default)]
    pub logging: Logging,
    #[serde(default)]
    pub sources: BTreeMap<String, Source>,
    /// InstaMed polling (SPEC §8).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pollers: BTreeMap<String, Poller>,
}

/// A configuration mistake: the file, the key and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn key(key: &str, reason: impl Into<String>) -> Self {
        ConfigError { file: None, key: key.to_string(), reason: reason.into() }
    }

    /// Attaches the file the key was read from.
    pub fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_path_buf());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if self.key.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "`{}`: {}", self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The margin kept between the answer and a source's `ack_timeout`, so a provider never sees a timeout.
pub fn ack_margin(ack_timeout: std::time::Duration) -> std::time::Duration {
    (ack_timeout / 10).clamp(std::time::Duration::from_millis(200), std::time::Duration::from_secs(2))
}

impl Config {
    /// Reads, parses and validates a file; every error names the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::key("", format!("cannot read the configuration file: {e}")).in_file(path))?;
        Config::parse(&text).and_then(Config::validate).map_err(|e| e.in_file(path))
    }

    /// Deserializes TOML text; unknown keys and wrong types are errors naming the key (and the line), never the
    /// value found there: it may be a secret written under the wrong key.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let reason = without_value(e.message());
            let at = e.span().map(|span| line_of(text, span.start)).map(|l| format!(" (line {l})")).unwrap_or_default();
            ConfigError::key(&key_at(text, e.span()), format!("{reason}{at}"))
        })
    }

    /// The broker nodes, in the order they are tried: `urls`; the nodes in the variable or file named by
    /// `urls_env` / `urls_file` (separated by commas or whitespace); the one URL of `url`, `url_env` or `url_file`;
    /// or the local default. Validation allows one form at most.
    pub fn broker_urls(&self, env: &dyn secret::Env) -> Result<Vec<String>, ConfigError> {
        let b = &self.broker;
        if let Some(urls) = &b.urls {
            // Checked by validation (`broker.urls[i]`).
            return Ok(urls.clone());
        }
        if let Some((key, text)) = secret_text("broker.urls", b.urls_env.as_deref(), b.urls_file.as_deref(), env)? {
            let urls = split_nodes(&text);
            if let Some((node, reason)) = validate::nodes_fault(&urls) {
                let reason = node.map_or_else(|| reason.clone(), |i| format!("node {} {reason}", i + 1));
                return Err(ConfigError::key(&key, reason));
            }
            return Ok(urls);
        }
        if let Some((key, text)) = secret_text("broker.url", b.url_env.as_deref(), b.url_file.as_deref(), env)? {
            let url = text.trim().to_string();
            if let Some((_, reason)) = validate::nodes_fault(&[&url]) {
                return Err(ConfigError::key(&key, reason));
            }
            return Ok(vec![url]);
        }
        Ok(vec![b.url.clone().unwrap_or_else(|| DEFAULT_BROKER_URL.to_string())])
    }

    /// The shared store's URL (`storage.shared`, or the variable or file named by `shared_env` / `shared_file`),
    /// if replicas share state. An error names the key, never the URL (it may hold a password).
    pub fn shared_url(&self, env: &dyn secret::Env) -> Result<Option<String>, ConfigError> {
        let s = &self.storage;
        if let Some(url) = &s.shared {
            // Checked by validation.
            return Ok(Some(url.clone()));
        }
        let Some((key, text)) = secret_text("storage.shared", s.shared_env.as_deref(), s.shared_file.as_deref(), env)?
        else {
            return Ok(None);
        };
        let url = text.trim().to_string();
        if !is_redis(&url) {
            return Err(ConfigError::key(&key, "must start with redis:// or rediss://"));
        }
        Ok(Some(url))
    }

    /// The effective configuration as TOML, every secret redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
    }
}

/// The nodes of a `urls_env`/`urls_file` text, separated by whitespace or commas. A comma separates only where
/// the next URL starts (`amqp://`, `amqps://`): a password may hold a comma unencoded.
fn split_nodes(text: &str) -> Vec<String> {
    let mut nodes: Vec<String> = Vec::new();
    for word in text.split_whitespace().map(|w| w.trim_matches(',')).filter(|w| !w.is_empty()) {
        for (i, piece) in word.split(',').enumerate() {
            match nodes.last_mut() {
                Some(node) if i > 0 && !is_amqp(piece) => {
                    node.push(',');
                    node.push_str(piece);
                }
                _ => nodes.push(piece.to_string()),
            }
        }
    }
    nodes
}

/// `amqp://` or `amqps://`.
fn is_amqp(url: &str) -> bool {
    url.starts_with("amqp://") || url.starts_with("amqps://")
}

/// `redis://` or `rediss://` (`storage.shared` in any of its forms).
fn is_redis(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://")
}

/// The text given by `<key>_env` or `<key>_file` (none if neither is set), and which of the two keys gave it.
/// Errors name that key, never the text.
fn secret_text(
    key: &str,
    var: Option<&str>,
    file: Option<&Path>,
    env: &dyn secret::Env,
) -> Result<Option<(String, String)>, ConfigError> {
    if var.is_none() && file.is_none() {
        return Ok(None);
    }
    let which = format!("{key}{}", if var.is_some() { "_env" } else { "_file" });
    let secret = secret::resolve_one(key, None, var, file, env)?;
    let text = std::str::from_utf8(secret.expose()).map_err(|_| ConfigError::key(&which, "is not UTF-8 text"))?;
    Ok(Some((which, text.to_string())))
}

/// A deserializer's message without the value it is about: `invalid type: integer `42`, expected a string`
/// becomes `invalid type: integer (value not shown), expected a string`; the variant of `unknown variant` goes too.
fn without_value(message: &str) -> String {
    const HIDDEN: &str = "(value not shown)";
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
            let kind = found.split(['`', '"', '\'']).next().unwrap_or_default().trim();
            let expected = if expected.is_empty() { String::new() } else { format!(", expected {expected}") };
            return format!("{prefix}{kind} {HIDDEN}{expected}");
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let expected = rest.split_once(", expected ").map(|(_, e)| format!(", expected {e}")).unwrap_or_default();
        return format!("unknown variant {HIDDEN}{expected}");
    }
    message.to_string()
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map(|t| t.matches('\n').count() + 1).unwrap_or(1)
}

/// Best-effort dotted key at an error span: the table header above it plus the key on that line.
fn key_at(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else { return String::new() };
    let before = text.get(..span.start).unwrap_or("");
    let table = before.lines().rev().find_map(|l| {
        l.trim().strip_prefix('[').map(|h| h.trim_start_matches('[').split(']').next().unwrap_or("").trim().to_string())
    });
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text.get(line_start..).and_then(|l| l.lines().next()).unwrap_or("");
    // Only a `key = ...` line names a key; inside a list written over several lines the error's line holds a value
    // (a URL, a secret), and even a value with `=` in it must not be taken for a key.
    let key = line.split_once('=').map(|(k, _)| k.trim()).filter(|k| is_bare_key(k));
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (Some(t), None) => t,
        (None, Some(k)) => k.to_string(),
        (None, None) => String::new(),
    }
}

/// A bare (possibly dotted) TOML key: ASCII letters, digits, `_`, `-`, and `.` between parts.
fn is_bare_key(k: &str) -> bool {
    !k.is_empty()
        && k.split('.').all(|part| {
            let part = part.trim();
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

#[cfg(test)]
mod tests;
