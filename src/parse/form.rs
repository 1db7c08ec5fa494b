//! NVP bodies: `application/x-www-form-urlencoded` name=value pairs (InstaMed's NVP format).
//!
//! Strict where `form_urlencoded` is lenient: a broken `%` escape, a pair without `=`, an empty name or bytes
//! that are not UTF-8 make the body malformed.

use super::ParseError;

const MALFORMED: ParseError = ParseError::Malformed("NVP", "not name=value pairs");

pub fn parse(body: &[u8]) -> Result<Vec<(String, String)>, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| MALFORMED)?;
    let text = text.trim_end_matches(['\r', '\n']);
    if text.is_empty() {
        return Err(MALFORMED);
    }
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (name, _) = pair.split_once('=').ok_or(MALFORMED)?;
        if name.is_empty() || !escapes_valid(pair) {
            return Err(MALFORMED);
        }
    }
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(text.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    if pairs.iter().any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}')) {
        return Err(MALFORMED);
    }
    Ok(pairs)
}

fn escapes_valid(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match (b.get(i + 1), b.get(i + 2)) {
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i += 3,
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_instamed_nvp() {
        let body = b"transactionID=0ca7530a&responseMessage=Partially Approved $1.00&cardHolderName= &transactionDate=2016-01-15T20%3A37%3A21Z";
        let pairs = parse(body).unwrap();
        assert_eq!(pairs[0], ("transactionID".into(), "0ca7530a".into()));
        assert_eq!(pairs[3].1, "2016-01-15T20:37:21Z");
    }

    #[test]
    fn refuses_broken_pairs() {
        for bad in [&b""[..], b"novalue", b"=x", b"a=%zz", b"a=%4", b"a=\xff", b"a=%FF"] {
            assert_eq!(parse(bad), Err(MALFORMED), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
