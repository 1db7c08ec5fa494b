//! The normalizer (`hookgate::normalize`): any payload, path, query and headers give an event id, type and
//! subject within their bounds, and never a panic.

use hookgate::config::{EventFields, Preset};
use hookgate::normalize::{parse_time, slug, FieldRules, Fields};
use hookgate::parse::{self, Format, Payload};
use proptest::prelude::*;

/// The field names the presets read, so generated inputs hit them.
const NAMES: &[&str] = &[
    "TransactionId",
    "transactionStatus",
    "EventType",
    "event",
    "type",
    "id",
    "webhook-id",
    "subject",
    "time",
    "timestamp",
    "created",
    "status",
    "invoice_id",
    "card_id",
    "data.id",
    "data.object.id",
    "a.b",
    "PatientName",
];

fn name() -> impl Strategy<Value = String> {
    prop_oneof![3 => proptest::sample::select(NAMES).prop_map(String::from), 1 => ".{0,24}"]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,14}",
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})?",
        "[0-1][0-9]/[0-3][0-9]/[0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2}( [AP]M)?",
        ".{0,40}",
        "[a-zA-Z_./: -]{0,300}",
    ]
}

fn pairs(max: usize) -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((name(), value()), 0..max)
}

/// A delivery's body as generated: its parsed form borrows from it (JSON), so the test parses it.
#[derive(Clone, Debug)]
enum Body {
    Pairs(Vec<(String, String)>),
    Json(Vec<u8>),
    Empty,
}

impl Body {
    fn payload(&self) -> Payload<'_> {
        match self {
            Body::Pairs(p) => Payload::Pairs(p.clone()),
            Body::Json(bytes) => parse::parse(Format::Json, bytes).expect("generated JSON parses"),
            Body::Empty => Payload::Empty,
        }
    }
}

fn payload() -> impl Strategy<Value = Body> {
    let json = |v: serde_json::Value| Body::Json(serde_json::to_vec(&v).expect("a Value serializes"));
    prop_oneof![
        pairs(12).prop_map(Body::Pairs),
        pairs(12).prop_map(move |p| {
            let mut obj = serde_json::Map::new();
            for (k, v) in p {
                let v = v.parse::<i64>().map_or(serde_json::Value::String(v), serde_json::Value::from);
                obj.insert(k, v);
            }
            json(serde_json::json!({ "data": { "object": obj.clone() }, "top": obj }))
        }),
        json_value().prop_map(json),
        Just(Body::Empty),
    ]
}

/// Any JSON value, nested up to 8 levels, with the presets' field names as keys.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        value().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(8, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
            proptest::collection::vec((name(), inner), 0..8)
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn preset() -> impl Strategy<Value = Preset> {
    proptest::sample::select(vec![
        Preset::Instamed,
        Preset::Tyro,
        Preset::PrepaidCard,
        Preset::StandardWebhooks,
        Preset::Generic,
    ])
}

fn overrides() -> impl Strategy<Value = EventFields> {
    (
        proptest::option::of(proptest::collection::vec(name(), 0..4)),
        proptest::option::of(name()),
        proptest::option::of(name()),
        proptest::option::of(name()),
    )
        .prop_map(|(id, kind, subject, time)| EventFields { id, kind, subject, time })
}

fn headers(pairs: &[(String, String)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (http::HeaderName::try_from(k.as_str()), http::HeaderValue::try_from(v.as_str())) {
            map.append(k, v);
        }
    }
    map
}

fn longest(body: &Body, lists: &[&[(String, String)]]) -> usize {
    let from_lists = lists.iter().flat_map(|l| l.iter()).map(|(_, v)| v.len()).max().unwrap_or(0);
    let from_body = match body {
        Body::Json(bytes) => bytes.len(),
        Body::Pairs(p) => p.iter().map(|(_, v)| v.len()).max().unwrap_or(0),
        Body::Empty => 0,
    };
    from_lists.max(from_body)
}

proptest! {
    #[test]
    fn events_are_bounded_and_never_panic(
        preset in preset(),
        overrides in overrides(),
        generated in payload(),
        params in pairs(4),
        query in pairs(6),
        header_pairs in pairs(6),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let headers = headers(&header_pairs);
        let payload = generated.payload();
        let fields = Fields { payload: &payload, params: &params, query: &query, headers: &headers };
        let meta = FieldRules::new(preset, &overrides).extract(&fields, &body);
        prop_assert!(!meta.id.is_empty() && meta.id.len() <= 200, "id of {} bytes", meta.id.len());
        // One slug (≤ 120 bytes), or two joined by a preset (`<message>.<code>`).
        prop_assert!(!meta.kind.is_empty() && meta.kind.len() <= 2 * 120 + 1, "type of {} bytes", meta.kind.len());
        prop_assert!(meta.kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'));
        prop_assert!(!meta.kind.starts_with('.') && !meta.kind.ends_with('.'));
        if let Some(subject) = &meta.subject {
            prop_assert!(subject.len() <= longest(&generated, &[&params, &query, &header_pairs]));
        }
    }

    #[test]
    fn slugs_are_routing_key_safe(raw in ".{0,400}") {
        let s = slug(&raw);
        prop_assert!(s.len() <= 120);
        prop_assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'));
        prop_assert!(!s.starts_with('.') && !s.ends_with('.') && !s.contains(".."));
    }

    #[test]
    fn times_never_panic(raw in value()) {
        let _ = parse_time(&raw);
    }

    #[test]
    fn arbitrary_times_never_panic(raw in ".{0,64}") {
        let _ = parse_time(&raw);
    }
}

/// The field lookup of `serde_json::Value` trees, as hookgate read JSON bodies before it kept them borrowed: ids
/// and subjects made of body fields must not change across that change.
fn value_path(root: &serde_json::Value, name: &str) -> Option<String> {
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
    let exact = lookup(root, name);
    if exact.is_some() || !name.contains('.') {
        return exact.and_then(scalar);
    }
    name.split('.').try_fold(root, lookup).and_then(scalar)
}

proptest! {
    #[test]
    fn json_fields_read_as_a_serde_json_value_reads_them(generated in payload(), names in proptest::collection::vec(name(), 1..8)) {
        let Body::Json(bytes) = &generated else { return Ok(()) };
        let value: serde_json::Value = serde_json::from_slice(bytes).expect("generated JSON parses");
        let payload = generated.payload();
        let headers = http::HeaderMap::new();
        let fields = Fields { payload: &payload, params: &[], query: &[], headers: &headers };
        for name in names.iter().map(String::as_str).chain(NAMES.iter().copied()) {
            let want = value_path(&value, name).filter(|v| !v.trim().is_empty());
            prop_assert_eq!(fields.get(name), want, "field {}", name);
        }
    }
}
