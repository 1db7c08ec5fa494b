//! `PipelineError`: every way a delivery can fail, classified by who is at fault and whether a retry helps.

use crate::auth::AuthError;
use crate::parse::ParseError;
use crate::publish::PublishError;
use crate::ratelimit::{Limit, Limited};
use crate::spool::SpoolError;
use crate::store::StoreError;

/// Who is at fault, and what the provider should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// 4xx: the delivery itself is wrong; a retry of the same bytes will fail again.
    Client,
    /// 429: slow down and retry.
    RateLimited,
    /// The source's `retry_status` (503, or 500 for Tyro): not stored; the provider retries.
    Unavailable,
    /// 500: a defect of ours.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("no source at this path")]
    NotFound,
    #[error("method not allowed for the source")]
    MethodNotAllowed { allow: String },
    #[error("body over the source's limit")]
    TooLarge,
    #[error("body not received in time")]
    BodyTimeout,
    #[error("the Content-Length is not a length")]
    BadFraming,
    #[error("could not read the request body")]
    BodyRead,
    #[error("request headers over server.max_header_bytes")]
    HeadersTooLarge,
    #[error("request bodies in flight over server.max_inflight_body_bytes")]
    Overloaded,
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("rate limited ({})", limit.as_str())]
    RateLimited { limit: Limit, retry_after_secs: u64 },
    #[error("event not stored: {0}")]
    Unavailable(#[from] PublishError),
    #[error("the answer deadline passed before the event was stored")]
    Deadline,
    #[error("an identical delivery is still being stored")]
    InFlight,
    #[error("the store task failed")]
    StoreTaskFailed,
    #[error("event not spooled: {0}")]
    Spool(SpoolError),
    #[error("the shared dedup store is unavailable")]
    DedupUnavailable,
    /// The event cannot be an AMQP message (a routing key over 255 bytes): no retry can ever publish it.
    #[error("event cannot be published: {0}")]
    Unpublishable(&'static str),
}

impl From<Limited> for PipelineError {
    fn from(l: Limited) -> Self {
        PipelineError::RateLimited { limit: l.limit, retry_after_secs: l.retry_after_secs }
    }
}

impl From<StoreError> for PipelineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Publish(PublishError::Encode(what)) => PipelineError::Unpublishable(what),
            StoreError::Publish(e) => PipelineError::Unavailable(e),
            StoreError::Spool(e) => PipelineError::Spool(e),
        }
    }
}

impl PipelineError {
    pub fn class(&self) -> Class {
        match self {
            PipelineError::RateLimited { .. } => Class::RateLimited,
            PipelineError::Unavailable(_)
            | PipelineError::Deadline
            | PipelineError::InFlight
            | PipelineError::Overloaded
            | PipelineError::Spool(_)
            | PipelineError::DedupUnavailable => Class::Unavailable,
            PipelineError::StoreTaskFailed => Class::Internal,
            _ => Class::Client,
        }
    }

    /// The closed set of `reason` label values of `hookgate_posting_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            PipelineError::NotFound => "not_found",
            PipelineError::MethodNotAllowed { .. } => "method_not_allowed",
            PipelineError::TooLarge => "too_large",
            PipelineError::BodyTimeout => "timeout",
            PipelineError::BadFraming | PipelineError::BodyRead => "malformed",
            PipelineError::HeadersTooLarge => "headers_too_large",
            PipelineError::Overloaded => "overloaded",
            PipelineError::Parse(ParseError::UnsupportedMediaType) => "unsupported_media_type",
            PipelineError::Parse(ParseError::Malformed(..)) => "malformed",
            PipelineError::Auth(AuthError::Unauthorized { .. }) => "auth",
            PipelineError::Auth(AuthError::Forbidden { .. }) => "forbidden",
            PipelineError::RateLimited { .. } => "rate_limited",
            PipelineError::Unavailable(PublishError::Returned) => "unroutable",
            PipelineError::Spool(SpoolError::Full) => "spool_full",
            PipelineError::Spool(_) => "spool_error",
            PipelineError::Unavailable(_)
            | PipelineError::Deadline
            | PipelineError::InFlight
            | PipelineError::DedupUnavailable => "unavailable",
            PipelineError::StoreTaskFailed => "internal",
            PipelineError::Unpublishable(_) => "unpublishable",
        }
    }
}
