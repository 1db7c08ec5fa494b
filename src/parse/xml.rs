//! XML bodies: the text of each element under the root becomes a field (`<Root><TransactionID>1</TransactionID>`).
//!
//! Hardened: a DOCTYPE (and so any entity definition) is refused, only the five predefined entities and
//! character references are resolved, nesting is capped at [`super::MAX_DEPTH`], end tags must match, and
//! exactly one root element must be present.

use quick_xml::events::Event;
use quick_xml::Reader;

use super::{ParseError, MAX_DEPTH};

const MALFORMED: ParseError = ParseError::Malformed("XML", "not well-formed XML");

pub fn parse(body: &[u8]) -> Result<Vec<(String, String)>, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| MALFORMED)?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut fields = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    let mut text_buf = String::new();
    let mut roots = 0;
    loop {
        match reader.read_event().map_err(|_| MALFORMED)? {
            Event::Start(e) => {
                if stack.is_empty() {
                    roots += 1;
                }
                if roots > 1 {
                    return Err(MALFORMED);
                }
                stack.push(local(&e));
                if stack.len() > MAX_DEPTH {
                    return Err(ParseError::Malformed("XML", "nested too deeply"));
                }
                text_buf.clear();
            }
            Event::Empty(e) => {
                if stack.is_empty() {
                    roots += 1;
                    if roots > 1 {
                        return Err(MALFORMED);
                    }
                } else if stack.len() == 1 {
                    fields.push((local(&e), String::new()));
                }
            }
            Event::End(_) => {
                let name = stack.pop().ok_or(MALFORMED)?;
                if stack.len() == 1 {
                    fields.push((name, text_buf.trim().to_string()));
                }
                text_buf.clear();
            }
            Event::Text(t) => {
                if stack.is_empty() && !t.trim().is_empty() {
                    return Err(MALFORMED);
                }
                text_buf.push_str(&t.xml10_content());
            }
            Event::CData(c) => text_buf.push_str(&c),
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref().map_err(|_| MALFORMED)? {
                    Some(c) => c,
                    None => predefined(&r).ok_or(ParseError::Malformed("XML", "entity references are not allowed"))?,
                };
                text_buf.push(c);
            }
            Event::DocType(_) => return Err(ParseError::Malformed("XML", "DOCTYPE is not allowed")),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if roots != 1 || !stack.is_empty() {
        return Err(MALFORMED);
    }
    Ok(fields)
}

fn local(e: &quick_xml::events::BytesStart<'_>) -> String {
    let name = e.local_name();
    let s: &str = name.as_ref();
    s.to_string()
}

fn predefined(name: &str) -> Option<char> {
    match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "apos" => Some('\''),
        "quot" => Some('"'),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_children_of_the_root() {
        let xml = b"<?xml version=\"1.0\"?><Webhook><TransactionID>T1</TransactionID><Note>a &amp; b &#65;</Note><Empty/><Patient><Name>x</Name></Patient></Webhook>";
        let f = parse(xml).unwrap();
        assert_eq!(f[0], ("TransactionID".into(), "T1".into()));
        assert_eq!(f[1], ("Note".into(), "a & b A".into()));
        assert_eq!(f[2], ("Empty".into(), String::new()));
    }

    #[test]
    fn refuses_entities_and_broken_documents() {
        let bomb = b"<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY a \"aaaa\">]><r>&a;</r>";
        assert_eq!(parse(bomb), Err(ParseError::Malformed("XML", "DOCTYPE is not allowed")));
        assert_eq!(parse(b"<r>&ext;</r>"), Err(ParseError::Malformed("XML", "entity references are not allowed")));
        for bad in [&b"<r><a></r>"[..], b"<r>", b"", b"<r/><r/>", b"text", b"<r></r>junk", b"<a></b>"] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = format!("{}{}", "<a>".repeat(70), "</a>".repeat(70));
        assert_eq!(parse(deep.as_bytes()), Err(ParseError::Malformed("XML", "nested too deeply")));
    }
}
