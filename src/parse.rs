//! Content type → [`Payload`]: JSON, XML or NVP (form-encoded name=value pairs), with size and depth limits.
//!
//! Parsing only reads the fields the presets look at; the published body is always the provider's bytes,
//! unchanged. A body that does not parse as its declared type is a `400`; a type we do not read is a `415`.

mod form;
mod json;
mod xml;

pub use json::Json;

/// The body formats a source accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
    Nvp,
    /// No body (Tyro's GET and DELETE webhooks): the event is built from the path and query.
    Empty,
}

/// A parsed body: JSON keeps its tree, borrowed from the body (nested fields can be addressed as `a.b`); XML and
/// NVP are flat pairs.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload<'a> {
    Json(Json<'a>),
    Pairs(Vec<(String, String)>),
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unsupported content type")]
    UnsupportedMediaType,
    #[error("malformed {0} body: {1}")]
    Malformed(&'static str, &'static str),
}

/// Nesting deeper than this is refused (JSON and XML alike).
pub const MAX_DEPTH: usize = 64;

/// Picks the format from the `Content-Type` header. A body-less request may omit it.
///
/// # Errors
/// [`ParseError::UnsupportedMediaType`] for anything but JSON, XML or form-encoded pairs.
pub fn format_of(content_type: Option<&str>, body_len: usize) -> Result<Format, ParseError> {
    let Some(ct) = content_type else {
        return if body_len == 0 { Ok(Format::Empty) } else { Err(ParseError::UnsupportedMediaType) };
    };
    match essence(ct).as_str() {
        "application/json" | "text/json" => Ok(Format::Json),
        "application/xml" | "text/xml" => Ok(Format::Xml),
        "application/x-www-form-urlencoded" => Ok(Format::Nvp),
        e if e.ends_with("+json") => Ok(Format::Json),
        e if e.ends_with("+xml") => Ok(Format::Xml),
        _ => Err(ParseError::UnsupportedMediaType),
    }
}

/// The media type without parameters, lower-case (`Application/JSON; charset=utf-8` → `application/json`).
pub fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Parses a body of the given format.
///
/// # Errors
/// [`ParseError::Malformed`] naming the format and the kind of problem (never the content).
pub fn parse(format: Format, body: &[u8]) -> Result<Payload<'_>, ParseError> {
    match format {
        Format::Json => json::parse(body).map(Payload::Json),
        Format::Xml => xml::parse(body).map(Payload::Pairs),
        Format::Nvp => form::parse(body).map(Payload::Pairs),
        Format::Empty => Ok(Payload::Empty),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_pick_formats() {
        assert_eq!(format_of(Some("application/json; charset=utf-8"), 2), Ok(Format::Json));
        assert_eq!(format_of(Some("application/cloudevents+json"), 2), Ok(Format::Json));
        assert_eq!(format_of(Some("TEXT/XML"), 2), Ok(Format::Xml));
        assert_eq!(format_of(Some("application/x-www-form-urlencoded"), 2), Ok(Format::Nvp));
        assert_eq!(format_of(None, 0), Ok(Format::Empty));
        assert_eq!(format_of(None, 3), Err(ParseError::UnsupportedMediaType));
        assert_eq!(format_of(Some("text/plain"), 3), Err(ParseError::UnsupportedMediaType));
        assert_eq!(format_of(Some("multipart/form-data; boundary=x"), 3), Err(ParseError::UnsupportedMediaType));
    }
}
