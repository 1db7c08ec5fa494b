//! Case-insensitive field lookup across the body, path parameters, query parameters and headers.

use crate::parse::{Json, Payload};

/// Everything a delivery says, for field lookup.
pub struct Fields<'a> {
    pub payload: &'a Payload<'a>,
    pub params: &'a [(String, String)],
    pub query: &'a [(String, String)],
    pub headers: &'a http::HeaderMap,
}

impl Fields<'_> {
    /// The first non-empty value of `name`, looked up in the body, then path, query and headers.
    pub fn get(&self, name: &str) -> Option<String> {
        self.body(name)
            .or_else(|| pair(self.params, name))
            .or_else(|| pair(self.query, name))
            .or_else(|| self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string))
            .filter(|v| !v.trim().is_empty())
    }

    /// The first of several candidate names that has a value.
    pub fn first(&self, names: &[&str]) -> Option<String> {
        names.iter().find_map(|n| self.get(n))
    }

    fn body(&self, name: &str) -> Option<String> {
        match self.payload {
            Payload::Json(v) => json_path(v, name),
            Payload::Pairs(pairs) => pair(pairs, name),
            Payload::Empty => None,
        }
    }
}

fn pair(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs.iter().find(|(k, v)| k.eq_ignore_ascii_case(name) && !v.trim().is_empty()).map(|(_, v)| v.clone())
}

/// Looks up `a` or a dotted path `a.b.c` in JSON objects, matching keys case-insensitively.
fn json_path(root: &Json<'_>, name: &str) -> Option<String> {
    let exact = root.get(name);
    if exact.is_some() || !name.contains('.') {
        return exact.and_then(Json::scalar);
    }
    name.split('.').try_fold(root, |v, key| v.get(key)).and_then(Json::scalar)
}
