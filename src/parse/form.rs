//! NVP bodies: `application/x-www-form-urlencoded` name=value pairs (InstaMed's NVP format).
//!
//! Read as the WHATWG form parser reads them (`form_urlencoded`, what browsers do): InstaMed's own page prints
//! NVP with values not percent-encoded (`responseMessage=Partially Approved $1.00`), so a `%` that starts no
//! escape is taken as itself and a piece without `=` as a name with an empty value — a provider's event is not
//! refused for a quirk of its encoding (the published body is its bytes, unchanged; only the fields the presets
//! read come from here). Malformed: a body with no `name=value` piece at all (empty, or most JSON sent as a form),
//! and one whose names or values, decoded, are not UTF-8 — replacing such bytes would give two different ids the
//! same text, and the second event would be taken for a retry of the first.

use super::ParseError;

const MALFORMED: ParseError = ParseError::Malformed("NVP", "not name=value pairs");

pub fn parse(body: &[u8]) -> Result<Vec<(String, String)>, ParseError> {
    let end = body.iter().rposition(|b| !matches!(b, b'\r' | b'\n')).map_or(0, |i| i + 1);
    let text = body.get(..end).unwrap_or_default();
    let named_pair = |piece: &[u8]| piece.iter().position(|b| *b == b'=').is_some_and(|i| i > 0);
    if !text.split(|b| *b == b'&').any(named_pair) {
        return Err(MALFORMED);
    }
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(text).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    if pairs.iter().any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}')) {
        return Err(MALFORMED);
    }
    Ok(pairs)
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
    fn refuses_what_is_not_pairs() {
        let not_utf8 = [&b"TransactionID=\xfe"[..], b"TransactionID=%FE", b"a\xff=1"];
        let not_pairs = [&b""[..], b"\r\n", b"novalue", b"{\"TransactionID\":\"1\"}", b"&&", b"=x"];
        for bad in not_pairs.into_iter().chain(not_utf8) {
            assert_eq!(parse(bad), Err(MALFORMED), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// As the WHATWG form parser (what a browser submits and reads): an escape that is not one is its own text, a
    /// piece without `=` is a name with an empty value.
    #[test]
    fn reads_raw_values_as_browsers_do() {
        let pairs = parse(b"a=%zz&b=100%&c=%4&d=Smith & Sons&e=caf%C3%A9&f=%41").unwrap();
        let want =
            [("a", "%zz"), ("b", "100%"), ("c", "%4"), ("d", "Smith "), (" Sons", ""), ("e", "caf\u{e9}"), ("f", "A")];
        let want: Vec<(String, String)> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(pairs, want);
    }
}
