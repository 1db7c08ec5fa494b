//! The normalizer (`hookgate::normalize`): any payload, path, query and headers give an event id, type and
//! subject within their bounds, and never a panic.

use hookgate::config::{EventFields, Preset};
use hookgate::normalize::{parse_time, slug, FieldRules, Fields};
use hookgate::parse::Payload;
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

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        pairs(12).prop_map(Payload::Pairs),
        pairs(12).prop_map(|p| {
            let mut obj = serde_json::Map::new();
            for (k, v) in p {
                let v = v.parse::<i64>().map_or(serde_json::Value::String(v), serde_json::Value::from);
                obj.insert(k, v);
            }
            Payload::Json(serde_json::json!({ "data": { "object": obj.clone() }, "top": obj }))
        }),
        json().prop_map(Payload::Json),
        Just(Payload::Empty),
    ]
}

/// Any JSON value, nested up to 8 levels, with the presets' field names as keys.
fn json() -> impl Strategy<Value = serde_json::Value> {
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

fn longest(payload: &Payload, lists: &[&[(String, String)]]) -> usize {
    let from_lists = lists.iter().flat_map(|l| l.iter()).map(|(_, v)| v.len()).max().unwrap_or(0);
    let from_body = match payload {
        Payload::Json(v) => v.to_string().len(),
        Payload::Pairs(p) => p.iter().map(|(_, v)| v.len()).max().unwrap_or(0),
        Payload::Empty => 0,
    };
    from_lists.max(from_body)
}

proptest! {
    #[test]
    fn events_are_bounded_and_never_panic(
        preset in preset(),
        overrides in overrides(),
        payload in payload(),
        params in pairs(4),
        query in pairs(6),
        header_pairs in pairs(6),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let headers = headers(&header_pairs);
        let fields = Fields { payload: &payload, params: &params, query: &query, headers: &headers };
        let meta = FieldRules::new(preset, &overrides).extract(&fields, &body);
        prop_assert!(!meta.id.is_empty() && meta.id.len() <= 200, "id of {} bytes", meta.id.len());
        // One slug (≤ 120 bytes), or two joined by a preset (`<message>.<code>`).
        prop_assert!(!meta.kind.is_empty() && meta.kind.len() <= 2 * 120 + 1, "type of {} bytes", meta.kind.len());
        prop_assert!(meta.kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'));
        prop_assert!(!meta.kind.starts_with('.') && !meta.kind.ends_with('.'));
        if let Some(subject) = &meta.subject {
            prop_assert!(subject.len() <= longest(&payload, &[&params, &query, &header_pairs]));
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
