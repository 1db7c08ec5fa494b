use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::*;

fn check(toml_text: &str) -> HmacCheck {
    let cfg: config::Hmac = toml::from_str(toml_text).unwrap();
    HmacCheck::build("sources.s.auth.hmac", &cfg, &HashMap::new()).unwrap()
}

fn build_err(toml_text: &str) -> String {
    let cfg: config::Hmac = toml::from_str(toml_text).unwrap();
    HmacCheck::build("sources.s.auth.hmac", &cfg, &HashMap::new()).unwrap_err().to_string()
}

fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
}

fn headers(pairs: &[(String, String)]) -> http::HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| (http::HeaderName::from_bytes(k.as_bytes()).unwrap(), http::HeaderValue::from_str(v).unwrap()))
        .collect()
}

fn signed(c: &HmacCheck, secret: &str, body: &[u8], now: i64) -> http::HeaderMap {
    headers(&c.scheme.sign(secret.as_bytes(), body, now))
}

const NOW: i64 = 1_764_000_000;
const BODY: &[u8] = br#"{"transactionId":"t-1","event":"healthFundPaidInvoice"}"#;

const SCHEMES: [&str; 6] = [
    r#"scheme = "tyro""#,
    r#"scheme = "x-signature""#,
    r#"scheme = "github""#,
    r#"scheme = "stripe""#,
    r#"scheme = "shopify""#,
    r#"scheme = "custom"
header = "X-Partner-Signature"
prefix = "sha256="
encoding = "base64"
timestamp_header = "X-Partner-Timestamp"
signed = "{timestamp}.{body}""#,
];

#[test]
fn every_scheme_accepts_its_own_signature_with_any_active_secret() {
    for scheme in SCHEMES {
        let c = check(&format!("{scheme}\nsecrets = [\"old-secret\", \"new-secret\"]"));
        for secret in ["old-secret", "new-secret"] {
            assert!(c.accepts(&signed(&c, secret, BODY, NOW), BODY, at(NOW)), "{scheme} {secret}");
        }
        assert!(!c.accepts(&signed(&c, "retired-secret", BODY, NOW), BODY, at(NOW)), "{scheme}: wrong secret");
        assert!(!c.accepts(&signed(&c, "new-secret", BODY, NOW), b"{\"tampered\":1}", at(NOW)), "{scheme}: body");
        assert!(!c.accepts(&http::HeaderMap::new(), BODY, at(NOW)), "{scheme}: no headers");
    }
}

/// HMAC-SHA256 computed here, not by the scheme under test: the signer and the verifier must not share a mistake.
fn by_hand(secret: &str, parts: &[&[u8]]) -> Vec<u8> {
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    for part in parts {
        m.update(part);
    }
    m.finalize().into_bytes().to_vec()
}

#[test]
fn stripe_shopify_and_custom_accept_signatures_made_as_their_senders_make_them() {
    let t = NOW.to_string();
    // Stripe: `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`; the secret is the whole `whsec_` string; a
    // `v0` entry and a second `v1` (a secret being rolled) may stand beside the good one.
    let c = check("scheme = \"stripe\"\nsecrets = [\"whsec_dGVzdA\"]");
    let v1 = hex::encode(by_hand("whsec_dGVzdA", &[t.as_bytes(), b".", BODY]));
    for value in [
        format!("t={t},v1={v1}"),
        format!("t={t},v1={v1},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"),
        format!("t={t},v1={},v1={v1}", "00".repeat(32)),
    ] {
        let h = headers(&[("Stripe-Signature".into(), value.clone())]);
        assert!(c.accepts(&h, BODY, at(NOW)), "stripe: {value}");
    }
    let h = headers(&[("Stripe-Signature".into(), format!("t={},v1={v1}", NOW + 1))]);
    assert!(!c.accepts(&h, BODY, at(NOW)), "stripe: the signed timestamp is the header's");
    // Shopify: `X-Shopify-Hmac-Sha256: base64(HMAC-SHA256(secret, body))`.
    let c = check("scheme = \"shopify\"\nsecrets = [\"shpss_k\"]");
    let h = headers(&[("X-Shopify-Hmac-Sha256".into(), B64.encode(by_hand("shpss_k", &[BODY])))]);
    assert!(c.accepts(&h, BODY, at(NOW)), "shopify");
    let h = headers(&[("X-Shopify-Hmac-Sha256".into(), hex::encode(by_hand("shpss_k", &[BODY])))]);
    assert!(!c.accepts(&h, BODY, at(NOW)), "shopify: base64, not hex");
    // Custom: the configured header, prefix, encoding and template, filled in by hand.
    let c = check(&format!("{}\nsecrets = [\"k\"]", SCHEMES[5]));
    let sig = format!("sha256={}", B64.encode(by_hand("k", &[t.as_bytes(), b".", BODY])));
    let h = headers(&[("X-Partner-Signature".into(), sig), ("X-Partner-Timestamp".into(), t.clone())]);
    assert!(c.accepts(&h, BODY, at(NOW)), "custom");
    let unprefixed = B64.encode(by_hand("k", &[BODY]));
    let h = headers(&[("X-Partner-Signature".into(), unprefixed), ("X-Partner-Timestamp".into(), t)]);
    assert!(!c.accepts(&h, BODY, at(NOW)), "custom: the template signs the timestamp too");
}

#[test]
fn timestamped_schemes_refuse_stale_and_future_deliveries() {
    for scheme in [SCHEMES[0], SCHEMES[3], SCHEMES[5]] {
        let c = check(&format!("{scheme}\nsecrets = [\"k\"]\ntolerance = \"5m\""));
        let h = signed(&c, "k", BODY, NOW);
        assert!(c.accepts(&h, BODY, at(NOW + 299)), "{scheme}");
        assert!(c.accepts(&h, BODY, at(NOW - 299)), "{scheme}");
        assert!(!c.accepts(&h, BODY, at(NOW + 301)), "{scheme}: stale");
        assert!(!c.accepts(&h, BODY, at(NOW - 301)), "{scheme}: from the future");
    }
}

#[test]
fn empty_truncated_and_badly_encoded_signatures_are_refused() {
    let c = check("scheme = \"github\"\nsecrets = [\"k\"]");
    let good = signed(&c, "k", BODY, NOW)["x-hub-signature-256"].to_str().unwrap().to_string();
    for bad in ["", "sha256=", &good[..good.len() - 2], &format!("{good}00"), "sha256=zz", "md5=00", "sha256=é"] {
        let h = headers(&[("x-hub-signature-256".into(), bad.into())]);
        assert!(!c.accepts(&h, BODY, at(NOW)), "{bad:?}");
    }
    let sw = check("scheme = \"standard-webhooks\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]");
    for bad in ["v1,", "v1", "v1,!!!", "v1,AAAA", "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="] {
        let h = headers(&[
            ("webhook-id".into(), "msg_p5jXN8AQM9LWM0D4loKWxJek".into()),
            ("webhook-timestamp".into(), "1614265330".into()),
            ("webhook-signature".into(), bad.into()),
        ]);
        assert!(!sw.accepts(&h, br#"{"test": 2432232314}"#, at(1_614_265_330)), "{bad:?}");
    }
}

#[test]
fn published_test_vectors() {
    // Standard Webhooks reference libraries' vector.
    let sw = check("scheme = \"standard-webhooks\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]");
    let h = headers(&[
        ("webhook-id".into(), "msg_p5jXN8AQM9LWM0D4loKWxJek".into()),
        ("webhook-timestamp".into(), "1614265330".into()),
        (
            "webhook-signature".into(),
            "v1,bm9ldHUjKzFob2VudXRob2VodWUzMjRvdWVvdW9ldQo= v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into(),
        ),
    ]);
    assert!(sw.accepts(&h, br#"{"test": 2432232314}"#, at(1_614_265_330)));
    // GitHub's documentation example.
    let gh = check("scheme = \"github\"\nsecrets = [\"It's a Secret to Everybody\"]");
    let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert!(gh.accepts(&headers(&[("x-hub-signature-256".into(), sig.into())]), b"Hello, World!", at(NOW)));
}

#[test]
fn tyro_accepts_pretty_bodies_and_quoted_timestamps() {
    let c = check("scheme = \"tyro\"\nsecrets = [\"k\"]");
    let ts = "2025-11-24T16:00:00.659Z";
    let now = parse_timestamp(ts).unwrap();
    let tag = hex::encode(mac(b"k", &[ts.as_bytes(), BODY].concat()));
    let pretty = serde_json::to_vec_pretty(&serde_json::from_slice::<serde_json::Value>(BODY).unwrap()).unwrap();
    for stamp in [ts.to_string(), format!("\"{ts}\"")] {
        let h = headers(&[("x-sender-timestamp".into(), stamp.clone()), ("x-sender-signature".into(), tag.clone())]);
        assert!(c.accepts(&h, BODY, at(now)), "{stamp}");
        assert!(c.accepts(&h, &pretty, at(now)), "pretty body, {stamp}");
        assert!(!c.accepts(&h, br#"{"event":"healthFundPaidInvoice","transactionId":"t-1"}"#, at(now)), "key order");
    }
    let bad_ts = headers(&[("x-sender-timestamp".into(), "yesterday".into()), ("x-sender-signature".into(), tag)]);
    assert!(!c.accepts(&bad_ts, BODY, at(now)));
}

#[test]
fn x_signature_takes_hex_or_base64_with_an_optional_prefix() {
    let c = check("scheme = \"x-signature\"\nsecrets = [\"k\"]");
    let tag = mac(b"k", BODY);
    for value in [hex::encode(&tag), B64.encode(&tag), format!("sha256={}", hex::encode(&tag))] {
        assert!(c.accepts(&headers(&[("x-signature".into(), value.clone())]), BODY, at(NOW)), "{value}");
    }
}

#[test]
fn standard_webhooks_v1a_ed25519() {
    use ring::signature::KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let pk = format!("whpk_{}", B64.encode(pair.public_key().as_ref()));
    let c = check(&format!("scheme = \"standard-webhooks\"\npublic_keys = [\"{pk}\"]"));
    let ts = NOW.to_string();
    let sig = |body: &[u8]| B64.encode(pair.sign(&[b"msg_1.", ts.as_bytes(), b".", body].concat()).as_ref());
    let h = |sig: String| {
        headers(&[
            ("webhook-id".into(), "msg_1".into()),
            ("webhook-timestamp".into(), ts.clone()),
            ("webhook-signature".into(), format!("v1,AAAA v1a,{sig}")),
        ])
    };
    assert!(c.accepts(&h(sig(BODY)), BODY, at(NOW)));
    assert!(!c.accepts(&h(sig(b"other")), BODY, at(NOW)));
    assert!(!c.accepts(&h(sig(BODY)), BODY, at(NOW + 600)));
}

#[test]
fn config_mistakes_name_the_key() {
    let cases = [
        ("scheme = \"custom\"\nsecrets = [\"k\"]\nsigned = \"{body}\"", "sources.s.auth.hmac.header"),
        ("scheme = \"custom\"\nsecrets = [\"k\"]\nheader = \"X-S\"", "sources.s.auth.hmac.signed"),
        ("scheme = \"custom\"\nsecrets = [\"k\"]\nheader = \"X-S\"\nsigned = \"{timestamp}.{body}\"", "timestamp_header"),
        ("scheme = \"custom\"\nsecrets = [\"k\"]\nheader = \"X-S\"\nsigned = \"{time}.{body}\"", "unknown placeholder"),
        ("scheme = \"custom\"\nsecrets = [\"k\"]\nheader = \"X-S\"\nsigned = \"{timestamp}\"\ntimestamp_header = \"T\"", "{body} exactly once"),
        ("scheme = \"tyro\"\nsecrets = [\"k\"]\nheader = \"X-S\"", "sources.s.auth.hmac.header`: only for scheme"),
        ("scheme = \"github\"\nsecrets = [\"k\"]\nencoding = \"hex\"", "sources.s.auth.hmac.encoding"),
        ("scheme = \"github\"", "sources.s.auth.hmac.secrets"),
        ("scheme = \"github\"\nsecrets = [\"k\"]\npublic_keys = [\"x\"]", "sources.s.auth.hmac.public_keys"),
        ("scheme = \"standard-webhooks\"\nsecrets = [\"whsec_!!\"]", "whsec_"),
        ("scheme = \"standard-webhooks\"\npublic_keys = [\"whpk_AAAA\"]", "32 bytes"),
        ("scheme = \"github\"\nsecrets = [\"k\"]\ntolerance = \"0s\"", "tolerance"),
    ];
    for (text, expected) in cases {
        let e = build_err(text);
        assert!(e.contains(expected), "{text}: {e}");
    }
}

#[test]
fn sign_uses_the_first_secret() {
    let cfg: config::Hmac = toml::from_str("scheme = \"github\"\nsecrets = [\"a\", \"b\"]").unwrap();
    let out = sign("k", &cfg, &HashMap::new(), b"x", at(NOW)).unwrap();
    assert_eq!(out, vec![("X-Hub-Signature-256".to_string(), format!("sha256={}", hex::encode(mac(b"a", b"x"))))]);
    let cfg: config::Hmac = toml::from_str(
        "scheme = \"standard-webhooks\"\npublic_keys = [\"whpk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]",
    )
    .unwrap();
    assert!(sign("k", &cfg, &HashMap::new(), b"x", at(NOW)).unwrap_err().to_string().contains("no HMAC secret"));
}

#[test]
fn an_empty_body_is_never_accepted_even_correctly_signed() {
    for scheme in SCHEMES {
        let c = check(&format!("{scheme}\nsecrets = [\"k1\"]"));
        assert!(c.accepts(&signed(&c, "k1", BODY, NOW), BODY, at(NOW)), "{scheme}: a signed body passes");
        let h = signed(&c, "k1", b"", NOW);
        assert!(!c.accepts(&h, b"", at(NOW)), "{scheme}: a signed empty body covers no path or query");
    }
    let sw = check("scheme = \"standard-webhooks\"\nsecrets = [\"whsec_czNjcjN0\"]");
    let names: Vec<_> = sw.signed_headers().iter().map(|h| h.as_str().to_string()).collect();
    assert_eq!(names, ["webhook-id", "webhook-timestamp"]);
    assert!(check("scheme = \"x-signature\"\nsecrets = [\"k\"]").signed_headers().is_empty());
}
