//! JSON bodies. serde_json refuses nesting past 128 levels itself; we cap at [`super::MAX_DEPTH`].

use super::{ParseError, MAX_DEPTH};

pub fn parse(body: &[u8]) -> Result<serde_json::Value, ParseError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| ParseError::Malformed("JSON", "not valid JSON"))?;
    if depth(&value) > MAX_DEPTH {
        return Err(ParseError::Malformed("JSON", "nested too deeply"));
    }
    Ok(value)
}

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
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
}
