//! (method, path) → the configured source. Unknown path → 404; known path, method not listed → 405.
//!
//! A source's `path` may hold named segments (`/tyro/{transactionId}/{event}`); their values become fields of
//! the delivery, like query parameters.

use std::sync::Arc;

use http::Method;

use crate::source::Source;

/// One segment of a path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A parsed `path` such as `/webhooks/tyro/{transactionId}/{event}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<Segment>,
}

impl PathPattern {
    /// # Errors
    /// A reason when the pattern is not an absolute path of literal or `{name}` segments.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let rest = pattern.strip_prefix('/').ok_or_else(|| format!("{pattern:?} must start with '/'"))?;
        let mut segments = Vec::new();
        for raw in rest.split('/') {
            if raw.is_empty() {
                return Err(format!("{pattern:?} has an empty segment"));
            }
            let segment = match raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                Some(name) if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                    Segment::Param(name.to_string())
                }
                Some(_) => return Err(format!("{raw:?} is not a valid {{name}} segment")),
                None if raw.contains(['{', '}', '?', '#']) => return Err(format!("{raw:?} is not a valid segment")),
                None => Segment::Literal(raw.to_string()),
            };
            segments.push(segment);
        }
        Ok(PathPattern { segments })
    }

    /// Matches a request path; on success, the named segments' values (percent-decoded).
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let rest = path.strip_prefix('/')?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let mut params = Vec::new();
        let mut parts = rest.split('/');
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(lit) if lit == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(_) if part.is_empty() => return None,
                Segment::Param(name) => params.push((name.clone(), percent_decode(part))),
            }
        }
        parts.next().is_none().then_some(params)
    }

    /// Whether every segment is a literal (no `{name}` parameter).
    pub fn is_literal(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Literal(_)))
    }

    /// Literal segments count more than parameters, so `/a/b` wins over `/a/{x}`.
    fn specificity(&self) -> usize {
        self.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count()
    }
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("v={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// What the router found for a request.
pub enum Route {
    Matched { source: Arc<Source>, params: Vec<(String, String)> },
    MethodNotAllowed { source: Arc<Source> },
    NotFound,
}

/// The routing table, most specific pattern first.
#[derive(Default)]
pub struct Router {
    routes: Vec<(PathPattern, Arc<Source>)>,
}

impl Router {
    pub fn new(sources: impl IntoIterator<Item = Arc<Source>>) -> Self {
        let mut routes: Vec<_> = sources.into_iter().map(|s| (s.pattern.clone(), s)).collect();
        routes.sort_by_key(|(p, _)| std::cmp::Reverse(p.specificity()));
        Router { routes }
    }

    pub fn route(&self, method: &Method, path: &str) -> Route {
        for (pattern, source) in &self.routes {
            if let Some(params) = pattern.matches(path) {
                if source.methods.contains(method) {
                    return Route::Matched { source: source.clone(), params };
                }
                return Route::MethodNotAllowed { source: source.clone() };
            }
        }
        Route::NotFound
    }

    pub fn sources(&self) -> impl Iterator<Item = &Arc<Source>> {
        self.routes.iter().map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_segments_capture_values() {
        let p = PathPattern::parse("/tyro/{transactionId}/{event}").unwrap();
        assert_eq!(
            p.matches("/tyro/tx%201/approved"),
            Some(vec![("transactionId".into(), "tx 1".into()), ("event".into(), "approved".into())])
        );
        assert_eq!(p.matches("/tyro/tx1"), None);
        assert_eq!(p.matches("/tyro/tx1/approved/extra"), None);
        assert_eq!(p.matches("/tyro//approved"), None);
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(PathPattern::parse("webhooks").is_err());
        assert!(PathPattern::parse("/a//b").is_err());
        assert!(PathPattern::parse("/a/{}").is_err());
        assert!(PathPattern::parse("/a/{x-y}").is_err());
        assert!(PathPattern::parse("/a/b?c").is_err());
    }
}
