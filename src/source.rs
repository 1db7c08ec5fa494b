//! A configured source at run time: its route, limits, deadline, auth checks and event rules, built once from
//! `[sources.NAME]` with every secret resolved.

use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::auth::Verifier;
use crate::config::{self, secret::Env, ConfigError, Preset};
use crate::normalize::FieldRules;
use crate::parse::Format;
use crate::ratelimit::{self, Limit};
use crate::router::PathPattern;

/// One provider endpoint.
#[derive(Debug)]
pub struct Source {
    pub name: Arc<str>,
    pub preset: Preset,
    pub pattern: PathPattern,
    pub methods: Vec<Method>,
    /// The provider's own deadline; every answer leaves `margin` before it.
    pub ack_timeout: Duration,
    pub margin: Duration,
    pub dedup_window: Duration,
    pub max_body_bytes: u64,
    /// The status that asks the provider to retry (`503`, or `500` for Tyro).
    pub retry_status: http::StatusCode,
    pub verifier: Verifier,
    pub rules: FieldRules,
    /// `rate_limit`: this source's own bucket (rebuilt with the source, so a reload resets it).
    pub rate_limit: Option<ratelimit::Bucket>,
    /// What bodies the source takes (`415` otherwise).
    pub accepts: Accepts,
}

/// The content types a source takes: its preset's formats (SPEC §1), or the `content_types` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepts {
    Formats(&'static [Format]),
    /// Lower-case media type essences.
    Types(Vec<String>),
}

impl Accepts {
    /// Whether a body of `format`, sent as `content_type`, is taken. A body-less delivery always is.
    pub fn allows(&self, format: Format, content_type: Option<&str>) -> bool {
        if format == Format::Empty {
            return true;
        }
        match self {
            Accepts::Formats(formats) => formats.contains(&format),
            Accepts::Types(types) => content_type.is_some_and(|ct| types.contains(&crate::parse::essence(ct))),
        }
    }
}

impl Source {
    /// Builds a source from its validated config, resolving its secrets.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key of a secret that cannot be loaded or a setting that cannot be used.
    pub fn build(
        name: &str,
        cfg: &config::Source,
        server: &config::Server,
        env: &dyn Env,
    ) -> Result<Self, ConfigError> {
        let key = format!("sources.{name}");
        let path = cfg.path.clone().unwrap_or_else(|| format!("/webhooks/{name}"));
        let pattern = PathPattern::parse(&path).map_err(|r| ConfigError::key(&format!("{key}.path"), r))?;
        let methods = cfg
            .methods
            .clone()
            .unwrap_or_else(|| cfg.preset.default_methods())
            .iter()
            .map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ConfigError::key(&format!("{key}.methods"), "not an HTTP method"))?;
        let ack_timeout = cfg.ack_timeout.unwrap_or(cfg.preset.default_ack_timeout()).0;
        let retry_status = http::StatusCode::from_u16(cfg.retry_status.unwrap_or(cfg.preset.default_retry_status()))
            .map_err(|_| ConfigError::key(&format!("{key}.retry_status"), "not an HTTP status"))?;
        Ok(Source {
            name: Arc::from(name),
            preset: cfg.preset,
            pattern,
            methods,
            ack_timeout,
            margin: config::ack_margin(ack_timeout),
            dedup_window: cfg.dedup_window.0,
            max_body_bytes: cfg.max_body_bytes,
            retry_status,
            verifier: Verifier::build(&key, &cfg.auth, server, env)?,
            rules: FieldRules::new(cfg.preset, &cfg.event),
            rate_limit: cfg.rate_limit.map(|b| ratelimit::Bucket::new(b, Limit::Source)),
            accepts: match &cfg.content_types {
                Some(types) => Accepts::Types(types.iter().map(|t| crate::parse::essence(t)).collect()),
                None => Accepts::Formats(cfg.preset.default_formats()),
            },
        })
    }

    /// How long after receipt the answer must be on its way.
    pub fn answer_within(&self) -> Duration {
        self.ack_timeout.saturating_sub(self.margin)
    }
}

/// Builds every configured source.
///
/// # Errors
/// The first source that cannot be built.
pub fn build_all(cfg: &config::Config, env: &dyn Env) -> Result<Vec<Arc<Source>>, ConfigError> {
    cfg.sources.iter().map(|(name, s)| Source::build(name, s, &cfg.server, env).map(Arc::new)).collect()
}
