//! `[sources.NAME]`: one provider endpoint, its preset, limits and `auth` methods.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::server::Bucket;
use super::types::{Dur, InlineSecret, OneOrMany};

/// The provider family whose payload rules (id, type, subject, time) a source follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    Instamed,
    Tyro,
    PrepaidCard,
    StandardWebhooks,
    Generic,
}

impl Preset {
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Instamed => "instamed",
            Preset::Tyro => "tyro",
            Preset::PrepaidCard => "prepaid-card",
            Preset::StandardWebhooks => "standard-webhooks",
            Preset::Generic => "generic",
        }
    }

    pub fn default_methods(self) -> Vec<String> {
        match self {
            Preset::Tyro => ["POST", "GET", "PUT", "DELETE"].map(String::from).to_vec(),
            _ => vec!["POST".into()],
        }
    }

    pub fn default_ack_timeout(self) -> Dur {
        match self {
            Preset::Instamed => Dur::secs(20),
            _ => Dur::secs(10),
        }
    }

    /// The body formats the provider sends (SPEC §1); anything else is `415`.
    pub fn default_formats(self) -> &'static [crate::parse::Format] {
        use crate::parse::Format;
        match self {
            Preset::Instamed | Preset::Generic => &[Format::Json, Format::Xml, Format::Nvp],
            Preset::Tyro | Preset::PrepaidCard | Preset::StandardWebhooks => &[Format::Json],
        }
    }

    pub fn default_retry_status(self) -> u16 {
        match self {
            Preset::Tyro => 500,
            _ => 503,
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub preset: Preset,
    /// Default `/webhooks/<name>`; may hold named segments such as `/tyro/{transactionId}/{event}`.
    pub path: Option<String>,
    /// Default `["POST"]` (`tyro`: POST, GET, PUT, DELETE).
    pub methods: Option<Vec<String>>,
    pub ack_timeout: Option<Dur>,
    #[serde(default = "default_dedup_window")]
    pub dedup_window: Dur,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    pub retry_status: Option<u16>,
    pub rate_limit: Option<Bucket>,
    #[serde(default)]
    pub unauthenticated: bool,
    /// Media types accepted (`application/json`, ...), overriding the preset's formats; absent: the preset's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_types: Option<Vec<String>>,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub event: EventFields,
}

/// `[sources.NAME.event]`: field names overriding the preset's.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFields {
    /// Field names whose values, joined in order, form the dedup id.
    pub id: Option<Vec<String>>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub subject: Option<String>,
    pub time: Option<String>,
}

/// `[sources.NAME.auth]`: every configured method must pass.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub basic: Option<Vec<BasicCredential>>,
    pub bearer: Option<Bearer>,
    pub hmac: Option<Hmac>,
    pub headers: Option<BTreeMap<String, HeaderSecret>>,
    pub client_cert: Option<ClientCert>,
    pub ip_allow: Option<Vec<IpNet>>,
}

impl Auth {
    pub fn is_empty(&self) -> bool {
        self.basic.is_none()
            && self.bearer.is_none()
            && self.hmac.is_none()
            && self.headers.is_none()
            && self.client_cert.is_none()
            && self.ip_allow.is_none()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicCredential {
    pub username: String,
    pub password: Option<InlineSecret>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSecret {
    pub value: Option<InlineSecret>,
    pub value_env: Option<String>,
    pub value_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bearer {
    pub jwks_file: Option<PathBuf>,
    #[serde(
        serialize_with = "super::server::serialize_opt_http_url",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub jwks_url: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<OneOrMany<String>>,
    pub algorithms: Option<Vec<String>>,
    pub leeway: Option<Dur>,
    pub hs256_secret: Option<InlineSecret>,
    pub hs256_secret_env: Option<String>,
    pub hs256_secret_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HmacScheme {
    Tyro,
    XSignature,
    StandardWebhooks,
    Github,
    Stripe,
    Shopify,
    Custom,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Hex,
    Base64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hmac {
    pub scheme: HmacScheme,
    pub secrets: Option<Vec<InlineSecret>>,
    pub secrets_env: Option<OneOrMany<String>>,
    pub secrets_file: Option<OneOrMany<PathBuf>>,
    /// Replay window for schemes that sign a timestamp; default 5 minutes.
    pub tolerance: Option<Dur>,
    pub header: Option<String>,
    pub encoding: Option<Encoding>,
    pub prefix: Option<String>,
    pub timestamp_header: Option<String>,
    /// A template such as `"{timestamp}.{body}"`.
    pub signed: Option<String>,
    /// Standard Webhooks `v1a`: ed25519 public keys (`whpk_` + base64).
    pub public_keys: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCert {
    /// Allowed subjects: `CN=...` or a full DN; empty: any verified certificate.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Allowed subject alternative names (DNS names, e-mail addresses, URIs or IP addresses).
    #[serde(default)]
    pub sans: Vec<String>,
}

fn default_dedup_window() -> Dur {
    Dur::secs(72 * 3600)
}

fn default_max_body_bytes() -> u64 {
    1_048_576
}
