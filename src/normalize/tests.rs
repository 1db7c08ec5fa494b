use super::*;
use crate::parse::{self, Format, Payload};

fn meta(preset: Preset, format: Format, body: &[u8], params: &[(&str, &str)], headers: &[(&str, &str)]) -> EventMeta {
    meta_with(preset, &EventFields::default(), format, body, params, headers)
}

fn meta_with(
    preset: Preset,
    overrides: &EventFields,
    format: Format,
    body: &[u8],
    params: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> EventMeta {
    let payload = parse::parse(format, body).unwrap();
    let params: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        map.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    let fields = Fields { payload: &payload, params: &params, query: &[], headers: &map };
    FieldRules::new(preset, overrides).extract(&fields, body)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn prepaid_card_sample() {
    let m = meta(Preset::PrepaidCard, Format::Json, &fixture("prepaid-card-purchase.json"), &[], &[]);
    assert_eq!(m.id, "967297ae-e208-4268-a0ea-e1bea1d1b75d");
    assert_eq!(m.kind, "transaction.purchase");
    assert_eq!(m.subject.as_deref(), Some("967297ae-e208-4268-a0ea-e1bea1d1b75d"));
    assert_eq!(m.time.map(|t| t.to_rfc3339()).as_deref(), Some("2025-04-18T14:55:28+00:00"));
}

#[test]
fn prepaid_card_codes() {
    for (code, kind) in [
        ("PP00DS", "transaction.authorization"),
        ("XP31DS", "transaction.balance-inquiry"),
        ("XP20DS", "transaction.reload"),
        ("XP25DS", "transaction.unload"),
        ("AP01DS", "transaction.atm-withdrawal"),
        ("ZZ99", "transaction.zz99"),
    ] {
        let body = format!(r#"{{"MessageType":"Transaction","TransactionCode":"{code}","TransactionId":"t1"}}"#);
        assert_eq!(meta(Preset::PrepaidCard, Format::Json, body.as_bytes(), &[], &[]).kind, kind);
    }
}

#[test]
fn instamed_in_every_format() {
    let j = meta(Preset::Instamed, Format::Json, &fixture("instamed-approved.json"), &[], &[]);
    assert_eq!(j.id, "0ca7530a86084b468fff132ab7f04491:payment.approved");
    assert_eq!((j.kind.as_str(), j.rank), ("payment.approved", Some(1)));
    let x = meta(Preset::Instamed, Format::Xml, &fixture("instamed-settlement.xml"), &[], &[]);
    assert_eq!((x.kind.as_str(), x.rank), ("payment.settlement", Some(2)));
    assert_eq!(x.subject.as_deref(), Some("7f3c2a1b9e8d4c6fa0b1c2d3e4f5a6b7"));
    let n = meta(Preset::Instamed, Format::Nvp, &fixture("instamed-refunded.nvp"), &[], &[]);
    assert_eq!((n.kind.as_str(), n.rank), ("payment.refunded", Some(3)));
    assert_eq!(n.time.map(|t| t.to_rfc3339()).as_deref(), Some("2016-01-17T10:00:00+00:00"));
}

#[test]
fn instamed_payment_plans_and_triggers() {
    let m = meta(Preset::Instamed, Format::Json, br#"{"PaymentPlanID":"PP-9","EventType":"Created"}"#, &[], &[]);
    assert_eq!((m.kind.as_str(), m.subject.as_deref()), ("paymentplan.created", Some("PP-9")));
    assert_eq!(m.id, "PP-9:paymentplan.created");
    let m = meta(Preset::Instamed, Format::Json, br#"{"transactionid":"T","trigger":"Chargeback"}"#, &[], &[]);
    assert_eq!(m.kind, "payment.chargeback");
}

#[test]
fn tyro_by_body_and_by_path() {
    let m = meta(Preset::Tyro, Format::Json, &fixture("tyro-approved.json"), &[], &[]);
    assert_eq!(m.kind, "healthfundapprovedinvoice");
    assert_eq!(m.subject.as_deref(), Some("5f7b1c2e9a3d4b0012345678"));
    assert_eq!(m.id, "5f7b1c2e9a3d4b0012345678:healthfundapprovedinvoice:2021-01-13T04:23:50.659Z");
    assert_eq!(m.rank, Some(1));
    let body = br#"{"transactionId":"tx9","event":"healthFundPaidInvoice"}"#;
    let p = meta(Preset::Tyro, Format::Empty, b"", &[("transactionId", "tx9"), ("event", "paid")], &[]);
    assert_eq!((p.kind.as_str(), p.subject.as_deref(), p.rank), ("healthfundpaidinvoice", Some("tx9"), Some(2)));
    assert_eq!(meta(Preset::Tyro, Format::Json, body, &[], &[]).kind, p.kind);
}

#[test]
fn standard_webhooks_reads_headers() {
    let hdrs = [("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"), ("webhook-timestamp", "1714564800")];
    let m = meta(Preset::StandardWebhooks, Format::Json, &fixture("standard-webhooks.json"), &[], &hdrs);
    assert_eq!((m.id.as_str(), m.kind.as_str()), ("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", "invoice.paid"));
    assert_eq!(m.time.map(|t| t.to_rfc3339()).as_deref(), Some("2024-05-01T12:00:00+00:00"));
}

#[test]
fn generic_hashes_the_body() {
    let body = br#"{"event":"Order Shipped","n":1}"#;
    let m = meta(Preset::Generic, Format::Json, body, &[], &[]);
    assert_eq!(m.id, sha256_hex(body));
    assert_eq!(m.kind, "order.shipped");
    assert_eq!(meta(Preset::Generic, Format::Json, b"[1]", &[], &[]).kind, "unknown");
}

#[test]
fn overrides_replace_preset_fields() {
    let o = EventFields {
        id: Some(vec!["ref".into(), "type".into()]),
        kind: Some("kind".into()),
        subject: Some("data.customer".into()),
        time: Some("at".into()),
    };
    let body = br#"{"ref":"r1","kind":"Customer_Updated","data":{"customer":"c9"},"at":"2024-01-01T00:00:00Z"}"#;
    let m = meta_with(Preset::Generic, &o, Format::Json, body, &[], &[]);
    assert_eq!((m.id.as_str(), m.kind.as_str()), ("r1:customer.updated", "customer.updated"));
    assert_eq!(m.subject.as_deref(), Some("c9"));
    assert_eq!(m.time.map(|t| t.to_rfc3339()), Some("2024-01-01T00:00:00+00:00".to_string()));
    // A missing id field falls back to the body hash rather than a partial id.
    let m = meta_with(Preset::Generic, &o, Format::Json, br#"{"kind":"x"}"#, &[], &[]);
    assert_eq!(m.id, sha256_hex(br#"{"kind":"x"}"#));
}

#[test]
fn an_empty_id_field_list_never_gives_an_empty_id() {
    // Found by fuzz/ (normalize): config validation refuses `event.id = []`, but the normalizer must not rely on it.
    let o = EventFields { id: Some(Vec::new()), ..EventFields::default() };
    let m = meta_with(Preset::Generic, &o, Format::Json, br#"{"id":"x"}"#, &[], &[]);
    assert_eq!(m.id, sha256_hex(br#"{"id":"x"}"#));
}

#[test]
fn a_status_with_nothing_usable_gives_no_dot_at_either_end() {
    // Found by fuzz/ (normalize): a status with nothing usable in it gave the type `payment.` (a trailing dot).
    let m = meta(Preset::Instamed, Format::Nvp, b"transactionStatus=%5B", &[], &[]);
    assert_eq!(m.kind, "payment.unknown");
    // And a card message type that slugs to nothing gave `.purchase`.
    let body = br#"{"TransactionId":"t1","MessageType":"[]","TransactionCode":"PP80DS"}"#;
    assert_eq!(meta(Preset::PrepaidCard, Format::Json, body, &[], &[]).kind, "purchase");
}

#[test]
fn slugs_are_routing_key_safe() {
    assert_eq!(slug(" Payment Plan/Created "), "payment.plan.created");
    assert_eq!(slug("a.#.*b"), "a.b");
    assert_eq!(slug("__x__"), "x");
    assert_eq!(slug("Balance-Inquiry"), "balance-inquiry");
    let _ = Payload::Empty;
}

#[test]
fn long_ids_and_subjects_are_hashed_not_kept() {
    let tx = "T".repeat(5000);
    let body = format!(r#"{{"TransactionId":"{tx}","MessageType":"Transaction","TransactionCode":"PP80DS"}}"#);
    let m = meta(Preset::PrepaidCard, Format::Json, body.as_bytes(), &[], &[]);
    let hashed = format!("sha256:{}", sha256_hex(tx.as_bytes()));
    assert_eq!(m.id, hashed);
    assert_eq!(m.subject.as_deref(), Some(hashed.as_str()), "subject capped like the id");
    let short = meta(Preset::PrepaidCard, Format::Json, &fixture("prepaid-card-purchase.json"), &[], &[]);
    assert_eq!(short.subject.as_deref(), Some("967297ae-e208-4268-a0ea-e1bea1d1b75d"), "short ones stay as sent");
    let edge = "s".repeat(200);
    let body = format!(r#"{{"TransactionId":"{edge}","MessageType":"Transaction","TransactionCode":"PP80DS"}}"#);
    assert_eq!(meta(Preset::PrepaidCard, Format::Json, body.as_bytes(), &[], &[]).subject, Some(edge));
}
