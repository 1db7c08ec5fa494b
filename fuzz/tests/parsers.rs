//! The body parsers (`hookgate::parse`): never panic on any bytes, and what they return is bounded by the input.

use hookgate::parse::{self, Format, Payload, MAX_DEPTH};
use proptest::prelude::*;

const JSON: &[&str] =
    &["{", "}", "[", "]", ",", ":", "\"", "\"a\"", "\"id\":", "1", "-0.5e9", "true", "null", "\\u0000", "\\ud800", " "];
const XML: &[&str] = &[
    "<",
    ">",
    "</",
    "/>",
    "<a>",
    "</a>",
    "<R>",
    "</R>",
    "<x:y>",
    "</x:y>",
    "&amp;",
    "&lt;",
    "&#x41;",
    "&#1114111;",
    "&#xD800;",
    "&bogus;",
    "<![CDATA[",
    "]]>",
    "<!--",
    "-->",
    "<?xml version=\"1.0\"?>",
    "<!DOCTYPE r>",
    "=\"v\"",
];
const NVP: &[&str] = &["=", "&", "%", "%2", "%41", "%C3%A9", "%FF", "+", "a", "Id", "\r\n"];

fn pair_bytes(p: &Payload) -> usize {
    match p {
        Payload::Pairs(pairs) => pairs.iter().map(|(k, v)| k.len() + v.len()).sum(),
        _ => 0,
    }
}

fn check(format: Format, body: &[u8]) {
    match parse::parse(format, body) {
        Ok(Payload::Json(v)) => assert!(v.depth() <= MAX_DEPTH, "JSON deeper than the cap"),
        Ok(p @ Payload::Pairs(_)) => assert!(pair_bytes(&p) <= body.len(), "more field bytes than body bytes"),
        Ok(Payload::Empty) => assert_eq!(format, Format::Empty),
        Err(e) => assert!(e.to_string().len() < 64, "an error message must not carry the body"),
    }
}

proptest! {
    #[test]
    fn json_never_panics(body in hookgate_fuzz::shaped(JSON, 64)) {
        check(Format::Json, &body);
    }

    #[test]
    fn deep_json_is_refused_not_overflowed(n in 0usize..4000, objects in any::<bool>()) {
        let (open, close) = if objects { ("{\"a\":", "}") } else { ("[", "]") };
        let body = format!("{}1{}", open.repeat(n), close.repeat(n));
        check(Format::Json, body.as_bytes());
    }

    #[test]
    fn xml_never_panics(body in hookgate_fuzz::shaped(XML, 64)) {
        check(Format::Xml, &body);
    }

    #[test]
    fn nvp_never_panics(body in hookgate_fuzz::shaped(NVP, 64)) {
        check(Format::Nvp, &body);
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        for format in [Format::Json, Format::Xml, Format::Nvp, Format::Empty] {
            check(format, &body);
        }
    }

    #[test]
    fn content_types_never_panic(ct in proptest::option::of(".{0,80}"), len in 0usize..4) {
        let _ = parse::format_of(ct.as_deref(), len);
    }
}
