//! `[pollers.NAME]` (SPEC §8): InstaMed polling — where internal services register SSO tokens, how to reach
//! InstaMed, the credentials, the cadence and the registration endpoint's `auth`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::source::Auth;
use super::types::{Dur, InlineSecret};
use super::ConfigError;

/// InstaMed's production SSO web service (`GetSSOTokenStatus`).
pub const DEFAULT_SSO_URL: &str = "https://online.instamed.com/Forms/WebServices/SSOService.asmx";
/// InstaMed's production NVP endpoint (`ViewReceipt`).
pub const DEFAULT_NVP_URL: &str = "https://online.instamed.com/payment/NVP.aspx";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Poller {
    /// The source whose events the results are (same preset, same dedup, same routing keys).
    pub source: String,
    /// Where tokens are registered; default `/poll/<name>`.
    pub path: Option<String>,
    #[serde(default = "default_sso_url", serialize_with = "super::server::serialize_http_url")]
    pub sso_url: String,
    #[serde(default = "default_nvp_url", serialize_with = "super::server::serialize_http_url")]
    pub nvp_url: String,
    pub account_id: String,
    pub alias: String,
    pub password: Option<InlineSecret>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub merchant_id: String,
    pub store_id: String,
    pub terminal_id: String,
    /// Time between two `GetSSOTokenStatus` calls for one token.
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// A token's life, from registration: past it the job ends (`expired`, or `failed` after upstream errors).
    #[serde(default = "default_token_ttl")]
    pub token_ttl: Dur,
    /// Each call to InstaMed (connect, TLS, request, answer) must finish within this.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Dur,
    /// Calls to InstaMed in flight at once, for this poller.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Pending jobs at most; a registration past it is answered 503.
    #[serde(default = "default_max_jobs")]
    pub max_jobs: usize,
    #[serde(default)]
    pub unauthenticated: bool,
    #[serde(default)]
    pub auth: Auth,
}

fn default_sso_url() -> String {
    DEFAULT_SSO_URL.to_string()
}

fn default_nvp_url() -> String {
    DEFAULT_NVP_URL.to_string()
}

fn default_interval() -> Dur {
    Dur::secs(10)
}

fn default_token_ttl() -> Dur {
    Dur::secs(15 * 60)
}

fn default_request_timeout() -> Dur {
    Dur::secs(10)
}

fn default_max_in_flight() -> usize {
    16
}

fn default_max_jobs() -> usize {
    100_000
}

impl Poller {
    /// Checks one poller's own keys (the rules that involve sources are in `Config::validate`).
    pub(super) fn validate(&mut self, name: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("pollers.{name}.{k}");
        super::validate::validate_name("pollers", "a poller", name)?;
        self.validate_endpoints(name, &key)?;
        self.validate_credentials(&key)?;
        self.validate_limits(&key)?;
        super::validate::validate_auth(&format!("pollers.{name}"), &self.auth, self.unauthenticated)
    }

    /// `path` (defaulted to `/poll/NAME`, literal), `sso_url` and `nvp_url`.
    fn validate_endpoints(&mut self, name: &str, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let path = self.path.get_or_insert_with(|| format!("/poll/{name}")).clone();
        let pattern = crate::router::PathPattern::parse(&path).map_err(|r| ConfigError::key(&key("path"), r))?;
        if !pattern.is_literal() {
            return Err(ConfigError::key(&key("path"), "must be a literal path (no {name} segments)"));
        }
        for (k, url) in [("sso_url", &self.sso_url), ("nvp_url", &self.nvp_url)] {
            let ok = url.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("https" | "http")) && u.host().is_some_and(|h| !h.is_empty())
            });
            if !ok {
                return Err(ConfigError::key(&key(k), "must be an https:// (or http://) URL"));
            }
        }
        Ok(())
    }

    /// The InstaMed account fields are given, and exactly one form of the password.
    fn validate_credentials(&self, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        for (k, v) in [
            ("account_id", &self.account_id),
            ("alias", &self.alias),
            ("merchant_id", &self.merchant_id),
            ("store_id", &self.store_id),
            ("terminal_id", &self.terminal_id),
        ] {
            if v.trim().is_empty() {
                return Err(ConfigError::key(&key(k), "must not be empty"));
            }
        }
        let given = usize::from(self.password.is_some())
            + usize::from(self.password_env.is_some())
            + usize::from(self.password_file.is_some());
        if given != 1 {
            return Err(ConfigError::key(
                &key("password"),
                "give exactly one of `password`, `password_env` or `password_file`",
            ));
        }
        Ok(())
    }

    /// `interval`, `token_ttl`, `request_timeout`, `max_in_flight`, `max_jobs`.
    fn validate_limits(&self, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let ms = std::time::Duration::from_millis;
        if self.interval.0 < ms(10) {
            return Err(ConfigError::key(&key("interval"), "must be at least 10ms"));
        }
        if self.token_ttl.0 < self.interval.0 {
            return Err(ConfigError::key(&key("token_ttl"), "must be at least `interval`"));
        }
        if self.request_timeout.0 < ms(10) {
            return Err(ConfigError::key(&key("request_timeout"), "must be at least 10ms"));
        }
        if self.max_in_flight == 0 || self.max_in_flight > 1024 {
            return Err(ConfigError::key(&key("max_in_flight"), "must be between 1 and 1024"));
        }
        if self.max_jobs == 0 {
            return Err(ConfigError::key(&key("max_jobs"), "must be at least 1"));
        }
        Ok(())
    }
}
