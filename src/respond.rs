//! The one mapping from an outcome to an HTTP answer (SPEC §2): status, reason phrase, and the headers some
//! answers need (`WWW-Authenticate`, `Allow`, `Retry-After`). The phrase and body never echo a secret, a
//! payload field or an internal error text.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper::ext::ReasonPhrase;

use crate::auth::AuthError;
use crate::error::{Class, PipelineError};
use crate::parse::ParseError;

/// What happened to an accepted delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// New event, durable.
    Stored,
    /// A retry of an event already stored.
    Duplicate,
}

/// Status and phrase of a result. `retry_status` is the source's (503 by default, 500 for Tyro).
pub fn status_of(result: &Result<Stored, PipelineError>, retry_status: StatusCode) -> (StatusCode, &'static str) {
    let err = match result {
        Ok(Stored::Stored) => return (StatusCode::OK, "Stored"),
        Ok(Stored::Duplicate) => return (StatusCode::OK, "Duplicate"),
        Err(e) => e,
    };
    match err {
        PipelineError::NotFound => (StatusCode::NOT_FOUND, "Not Found"),
        PipelineError::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
        PipelineError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large"),
        PipelineError::HeadersTooLarge => {
            (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "Request Header Fields Too Large")
        }
        PipelineError::Overloaded => (retry_status, "Server Busy"),
        PipelineError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "Request Timeout"),
        PipelineError::BadFraming | PipelineError::BodyRead | PipelineError::Unpublishable(_) => {
            (StatusCode::BAD_REQUEST, "Bad Request")
        }
        PipelineError::Parse(ParseError::UnsupportedMediaType) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type")
        }
        PipelineError::Parse(ParseError::Malformed(..)) => (StatusCode::BAD_REQUEST, "Malformed Body"),
        PipelineError::Auth(AuthError::Unauthorized { .. }) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
        PipelineError::Auth(AuthError::Forbidden { .. }) => (StatusCode::FORBIDDEN, "Forbidden"),
        PipelineError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests"),
        e => match e.class() {
            Class::Unavailable => (retry_status, "Store Unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "Internal Error"),
        },
    }
}

/// Builds the answer: the phrase is also the (plain text) body.
pub fn response(result: &Result<Stored, PipelineError>, retry_status: StatusCode) -> Response<Full<Bytes>> {
    let (status, phrase) = status_of(result, retry_status);
    let mut resp = Response::new(Full::new(Bytes::from(format!("{phrase}\n"))));
    *resp.status_mut() = status;
    resp.extensions_mut().insert(ReasonPhrase::from_static(phrase.as_bytes()));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match result {
        Err(PipelineError::Auth(AuthError::Unauthorized { challenge: Some(c), .. })) => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        Err(PipelineError::MethodNotAllowed { allow }) => {
            if let Ok(v) = HeaderValue::from_str(allow) {
                headers.insert(header::ALLOW, v);
            }
        }
        Err(PipelineError::RateLimited { retry_after_secs, .. }) => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from((*retry_after_secs).max(1)));
        }
        // The budget frees as soon as other bodies are answered.
        Err(PipelineError::Overloaded) => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
        }
        _ => {}
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::PublishError;

    fn row(r: Result<Stored, PipelineError>) -> (u16, &'static str, String) {
        let resp = response(&r, StatusCode::SERVICE_UNAVAILABLE);
        let (status, phrase) = status_of(&r, StatusCode::SERVICE_UNAVAILABLE);
        let reason = r.as_ref().err().map(|e| e.reason().to_string()).unwrap_or_default();
        assert_eq!(resp.status(), status);
        (status.as_u16(), phrase, reason)
    }

    #[test]
    fn one_row_per_outcome() {
        assert_eq!(row(Ok(Stored::Stored)), (200, "Stored", String::new()));
        assert_eq!(row(Ok(Stored::Duplicate)), (200, "Duplicate", String::new()));
        assert_eq!(row(Err(PipelineError::NotFound)), (404, "Not Found", "not_found".into()));
        let m = PipelineError::MethodNotAllowed { allow: "POST".into() };
        assert_eq!(row(Err(m)), (405, "Method Not Allowed", "method_not_allowed".into()));
        assert_eq!(row(Err(PipelineError::TooLarge)), (413, "Payload Too Large", "too_large".into()));
        assert_eq!(row(Err(PipelineError::BodyTimeout)), (408, "Request Timeout", "timeout".into()));
        assert_eq!(row(Err(PipelineError::BadFraming)), (400, "Bad Request", "malformed".into()));
        let h = PipelineError::HeadersTooLarge;
        assert_eq!(row(Err(h)), (431, "Request Header Fields Too Large", "headers_too_large".into()));
        assert_eq!(row(Err(PipelineError::Overloaded)), (503, "Server Busy", "overloaded".into()));
        let u = PipelineError::Parse(ParseError::UnsupportedMediaType);
        assert_eq!(row(Err(u)), (415, "Unsupported Media Type", "unsupported_media_type".into()));
        let m = PipelineError::Parse(ParseError::Malformed("JSON", "x"));
        assert_eq!(row(Err(m)), (400, "Malformed Body", "malformed".into()));
        let a = PipelineError::Auth(AuthError::Unauthorized { method: "basic", challenge: None });
        assert_eq!(row(Err(a)), (401, "Unauthorized", "auth".into()));
        let f = PipelineError::Auth(AuthError::Forbidden { method: "ip_allow" });
        assert_eq!(row(Err(f)), (403, "Forbidden", "forbidden".into()));
        let r = PipelineError::RateLimited { limit: crate::ratelimit::Limit::Global, retry_after_secs: 0 };
        assert_eq!(row(Err(r)), (429, "Too Many Requests", "rate_limited".into()));
        let u = PipelineError::Unavailable(PublishError::NotConnected);
        assert_eq!(row(Err(u)), (503, "Store Unavailable", "unavailable".into()));
        let u = PipelineError::Unavailable(PublishError::Returned);
        assert_eq!(row(Err(u)), (503, "Store Unavailable", "unroutable".into()));
        assert_eq!(row(Err(PipelineError::Deadline)), (503, "Store Unavailable", "unavailable".into()));
        let f = PipelineError::Spool(crate::spool::SpoolError::Full);
        assert_eq!(row(Err(f)), (503, "Store Unavailable", "spool_full".into()));
        let d = PipelineError::Spool(crate::spool::SpoolError::Io(std::io::Error::other("disk")));
        assert_eq!(row(Err(d)), (503, "Store Unavailable", "spool_error".into()));
        assert_eq!(row(Err(PipelineError::DedupUnavailable)), (503, "Store Unavailable", "unavailable".into()));
        let encode = crate::store::StoreError::Publish(PublishError::Encode("routing key too long"));
        assert_eq!(row(Err(encode.into())), (400, "Bad Request", "unpublishable".into()));
    }

    #[test]
    fn tyro_retry_status_and_headers() {
        let r = Err(PipelineError::Unavailable(PublishError::Timeout));
        assert_eq!(status_of(&r, StatusCode::INTERNAL_SERVER_ERROR).0, 500);
        let a =
            Err(PipelineError::Auth(AuthError::Unauthorized { method: "basic", challenge: Some("Basic realm=\"x\"") }));
        assert_eq!(
            response(&a, StatusCode::SERVICE_UNAVAILABLE).headers()[header::WWW_AUTHENTICATE],
            "Basic realm=\"x\""
        );
        let r = Err(PipelineError::RateLimited { limit: crate::ratelimit::Limit::Global, retry_after_secs: 0 });
        assert_eq!(response(&r, StatusCode::SERVICE_UNAVAILABLE).headers()[header::RETRY_AFTER], "1");
        let o = Err(PipelineError::Overloaded);
        let resp = response(&o, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!((resp.status().as_u16(), resp.headers()[header::RETRY_AFTER].to_str().unwrap()), (500, "1"));
        let m = Err(PipelineError::MethodNotAllowed { allow: "POST, GET".into() });
        assert_eq!(response(&m, StatusCode::SERVICE_UNAVAILABLE).headers()[header::ALLOW], "POST, GET");
    }
}
