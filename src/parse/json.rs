//! JSON bodies, as a tree borrowed from the body: a string without escapes points into the body, an object is a
//! list of its members in the order sent. Parsing a provider's body costs one allocation per object or array
//! (and per escaped string), where `serde_json::Value` cost one per key and per string value, and as many frees;
//! the request path only reads a few fields (`normalize/fields.rs`).
//!
//! serde_json refuses nesting past 128 levels itself; we cap at [`super::MAX_DEPTH`].

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{ParseError, MAX_DEPTH};

/// A JSON value borrowed from the body it was parsed from.
#[derive(Clone, Debug, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    /// serde_json's number: written back (`to_string`) exactly as `serde_json::Value` would.
    Number(serde_json::Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// The members in the order sent; a key sent twice is kept twice (see [`Json::get`]).
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

/// Parses a body.
///
/// # Errors
/// [`ParseError::Malformed`]: not JSON, or nested deeper than [`MAX_DEPTH`].
pub fn parse(body: &[u8]) -> Result<Json<'_>, ParseError> {
    let value: Json<'_> = serde_json::from_slice(body).map_err(|_| ParseError::Malformed("JSON", "not valid JSON"))?;
    if value.depth() > MAX_DEPTH {
        return Err(ParseError::Malformed("JSON", "nested too deeply"));
    }
    Ok(value)
}

// === impl Json ===

impl<'a> Json<'a> {
    /// Levels of arrays and objects.
    pub fn depth(&self) -> usize {
        match self {
            Json::Array(a) => 1 + a.iter().map(Json::depth).max().unwrap_or(0),
            Json::Object(o) => 1 + o.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// The member `key` of an object, as `serde_json::Value` answers it: an exact key first, else the first key
    /// equal to it ignoring ASCII case; of a key sent twice, its last value.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        let Json::Object(members) = self else { return None };
        let last = |k: &str| members.iter().rev().find(|(m, _)| m == k).map(|(_, v)| v);
        last(key).or_else(|| members.iter().find(|(m, _)| m.eq_ignore_ascii_case(key)).and_then(|(m, _)| last(m)))
    }

    /// A string, number or boolean as text; `None` for null, arrays and objects.
    pub fn scalar(&self) -> Option<String> {
        match self {
            Json::String(s) => Some(s.to_string()),
            Json::Number(n) => Some(n.to_string()),
            Json::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Json<'de>, E> {
        // As serde_json::Value: a float JSON cannot hold (never parsed from text) is null.
        Ok(serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s)))
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        Json::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(fitted(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(Key(key)) = map.next_key()? {
            members.push((key, map.next_value()?));
        }
        Ok(Json::Object(fitted(members)))
    }
}

/// A list with at most twice the room it uses. serde_json gives no size hint, so a list grows from four slots: a
/// body of many one-member objects (`[{"a":0},...]`, 8 bytes each) would otherwise cost ~30 times its size.
fn fitted<T>(mut list: Vec<T>) -> Vec<T> {
    if list.capacity() > 2 * list.len() {
        list.shrink_to_fit();
    }
    list
}

/// An object key, borrowed from the body when it has no escapes (serde's own `Cow<str>` always copies).
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_json_and_refuses_junk() {
        assert!(parse(br#"{"a":1}"#).is_ok());
        for bad in [&b"{"[..], b"{\"a\":}", b"", b"\xff", b"{} x"] {
            assert_eq!(parse(bad), Err(ParseError::Malformed("JSON", "not valid JSON")));
        }
        let deep = format!("{}1{}", "[".repeat(70), "]".repeat(70));
        assert_eq!(parse(deep.as_bytes()), Err(ParseError::Malformed("JSON", "nested too deeply")));
    }

    #[test]
    fn plain_strings_are_borrowed_and_escaped_ones_decoded() {
        let body = br#"{"Id":"tx-1","name":"a\"b\u00e9","n":[1,-2,1.5e2,true,null]}"#;
        let doc = parse(body).unwrap();
        assert!(matches!(doc.get("Id"), Some(Json::String(Cow::Borrowed("tx-1")))));
        assert_eq!(doc.get("name").and_then(Json::scalar).as_deref(), Some("a\"b\u{e9}"));
        assert_eq!(doc.depth(), 2);
    }

    /// Field values read as `serde_json::Value` read them (ids made of them must not change): numbers written
    /// back the same way, a key sent twice answered with its last value, other case found after exact case.
    #[test]
    fn values_read_as_serde_json_value_reads_them() {
        let body =
            br#"{"a":1.50,"b":100000000000000000000,"c":-0,"d":1e2,"id":"first","ID":"upper","id":"last","Sub":true}"#;
        let ours = parse(body).unwrap();
        let theirs: serde_json::Value = serde_json::from_slice(body).unwrap();
        for key in ["a", "b", "c", "d", "id", "ID", "iD", "sub", "SUB", "missing"] {
            let want = theirs.as_object().and_then(|o| {
                o.get(key).or_else(|| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
            });
            let want = want.and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                serde_json::Value::Bool(b) => Some(b.to_string()),
                _ => None,
            });
            assert_eq!(ours.get(key).and_then(Json::scalar), want, "{key}");
        }
    }
}
