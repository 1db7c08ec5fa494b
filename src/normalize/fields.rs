//! Case-insensitive field lookup across the body, path parameters, query parameters and headers.

use crate::parse::Payload;

/// Everything a delivery says, for field lookup.
pub struct Fields<'a> {
    pub payload: &'a Payload,
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
fn json_path(root: &serde_json::Value, name: &str) -> Option<String> {
    let exact = lookup(root, name);
    if exact.is_some() || !name.contains('.') {
        return exact.and_then(scalar);
    }
    name.split('.').try_fold(root, lookup).and_then(scalar)
}

fn lookup<'v>(v: &'v serde_json::Value, key: &str) -> Option<&'v serde_json::Value> {
    let obj = v.as_object()?;
    obj.get(key).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
