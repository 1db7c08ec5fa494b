use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use rustls_pki_types::pem::PemObject;
use serde_json::json;

use super::*;

const NOW: u64 = 1_764_000_000;

fn rsa() -> (EncodingKey, serde_json::Value, Vec<u8>) {
    let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt-rsa.pem")).unwrap();
    let der = rustls_pki_types::PrivatePkcs1KeyDer::from_pem_slice(&pem).unwrap();
    let pair = ring::rsa::KeyPair::from_der(der.secret_pkcs1_der()).unwrap();
    let parts = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
    let jwk =
        json!({"kty": "RSA", "kid": "rsa-1", "use": "sig", "n": B64URL.encode(&parts.n), "e": B64URL.encode(&parts.e)});
    (EncodingKey::from_rsa_der(der.secret_pkcs1_der()), jwk, pair.public().as_ref().to_vec())
}

fn jwks_file(keys: &[serde_json::Value]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), json!({ "keys": keys }).to_string()).unwrap();
    f
}

fn bearer(text: &str) -> Result<Bearer, ConfigError> {
    let cfg: config::Bearer = toml::from_str(text).unwrap();
    Bearer::build("sources.s.auth.bearer", &cfg, &HashMap::new())
}

fn claims(exp: u64) -> serde_json::Value {
    json!({"iss": "https://idp.example", "aud": ["other", "hookgate"], "sub": "instamed", "exp": exp, "iat": NOW})
}

fn token(alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value, key: &EncodingKey) -> String {
    let header = Header { alg, kid: kid.map(String::from), ..Header::default() };
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

async fn accepts(b: &Bearer, token: &str, now: u64) -> bool {
    let value = http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
    b.accepts(Some(&value), UNIX_EPOCH + Duration::from_secs(now)).await
}

fn jwks_bearer(file: &tempfile::NamedTempFile) -> Bearer {
    let path = file.path().display();
    bearer(&format!("jwks_file = \"{path}\"\nissuer = \"https://idp.example\"\naudience = \"hookgate\"")).unwrap()
}

#[tokio::test]
async fn rs256_from_a_jwks_file() {
    let (key, jwk, _) = rsa();
    let file = jwks_file(&[jwk]);
    let b = jwks_bearer(&file);
    assert!(accepts(&b, &token(Algorithm::RS256, Some("rsa-1"), &claims(NOW + 600), &key), NOW).await);
    assert!(accepts(&b, &token(Algorithm::RS256, None, &claims(NOW + 600), &key), NOW).await, "no kid: try all");
    assert!(!accepts(&b, &token(Algorithm::RS256, Some("rsa-2"), &claims(NOW + 600), &key), NOW).await, "unknown kid");
}

#[tokio::test]
async fn claims_are_checked_at_now_with_leeway() {
    let (key, jwk, _) = rsa();
    let file = jwks_bearer_file(jwk);
    let b = jwks_bearer(&file);
    let t = |c: &serde_json::Value| token(Algorithm::RS256, Some("rsa-1"), c, &key);
    assert!(accepts(&b, &t(&claims(NOW - 30)), NOW).await, "expired within leeway");
    assert!(!accepts(&b, &t(&claims(NOW - 61)), NOW).await, "expired");
    let mut c = claims(NOW + 600);
    c["nbf"] = json!(NOW + 120);
    assert!(!accepts(&b, &t(&c), NOW).await, "not yet valid");
    c["nbf"] = json!(NOW + 30);
    assert!(accepts(&b, &t(&c), NOW).await, "nbf within leeway");
    for (claim, value) in [("aud", json!("other")), ("iss", json!("https://evil.example")), ("exp", json!(null))] {
        let mut c = claims(NOW + 600);
        c[claim] = value;
        assert!(!accepts(&b, &t(&c), NOW).await, "{claim}");
    }
    let mut c = claims(NOW + 600);
    c.as_object_mut().unwrap().remove("aud");
    assert!(!accepts(&b, &t(&c), NOW).await, "no aud");
}

fn jwks_bearer_file(jwk: serde_json::Value) -> tempfile::NamedTempFile {
    jwks_file(&[jwk])
}

/// SPEC §8's own example gives a JWKS and an audience, no issuer: the audience alone scopes the tokens then, and
/// any (or no) `iss` is taken.
#[tokio::test]
async fn a_jwks_without_an_issuer_checks_the_audience_alone() {
    let (key, jwk, _) = rsa();
    let file = jwks_file(&[jwk]);
    let b = bearer(&format!("jwks_file = \"{}\"\naudience = \"hookgate\"", file.path().display())).unwrap();
    let t = |c: &serde_json::Value| token(Algorithm::RS256, Some("rsa-1"), c, &key);
    let mut c = claims(NOW + 600);
    assert!(accepts(&b, &t(&c), NOW).await, "the usual issuer");
    c["iss"] = json!("https://another-idp.example");
    assert!(accepts(&b, &t(&c), NOW).await, "any issuer");
    c.as_object_mut().unwrap().remove("iss");
    assert!(accepts(&b, &t(&c), NOW).await, "no issuer");
    c["aud"] = json!("other");
    assert!(!accepts(&b, &t(&c), NOW).await, "another audience");
    c.as_object_mut().unwrap().remove("aud");
    assert!(!accepts(&b, &t(&c), NOW).await, "no audience");
}

#[tokio::test]
async fn algorithm_confusion_and_none_are_refused() {
    let (key, jwk, public_der) = rsa();
    let file = jwks_file(&[jwk]);
    let b = jwks_bearer(&file);
    let c = claims(NOW + 600);
    // HS256 "signed" with the RSA public key, as an attacker who knows it would.
    let forged = token(Algorithm::HS256, Some("rsa-1"), &c, &EncodingKey::from_secret(&public_der));
    assert!(!accepts(&b, &forged, NOW).await);
    let payload = B64URL.encode(c.to_string());
    for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"None"}"#] {
        let unsigned = format!("{}.{payload}.", B64URL.encode(header));
        assert!(!accepts(&b, &unsigned, NOW).await, "{header}");
    }
    let good = token(Algorithm::RS256, Some("rsa-1"), &c, &key);
    let (head, _) = good.rsplit_once('.').unwrap();
    assert!(!accepts(&b, &format!("{head}."), NOW).await, "signature stripped");
    assert!(!accepts(&b, &format!("{head}.AAAA"), NOW).await, "truncated signature");
    assert!(!accepts(&b, "not-a-jwt", NOW).await);
    let v = http::HeaderValue::from_static("Basic abc");
    assert!(!b.accepts(Some(&v), UNIX_EPOCH + Duration::from_secs(NOW)).await);
    assert!(!b.accepts(None, UNIX_EPOCH + Duration::from_secs(NOW)).await);
}

#[tokio::test]
async fn es256_key_generated_here() {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256",
        "x": B64URL.encode(&point[1..33]), "y": B64URL.encode(&point[33..65])});
    let file = jwks_file(&[jwk]);
    let b = jwks_bearer(&file);
    let key = EncodingKey::from_ec_der(pkcs8.as_ref());
    assert!(accepts(&b, &token(Algorithm::ES256, Some("ec-1"), &claims(NOW + 60), &key), NOW).await);
}

#[tokio::test]
async fn hs256_secret() {
    let b = bearer("hs256_secret = \"shared\"\naudience = [\"hookgate\"]").unwrap();
    let c = claims(NOW + 600);
    assert!(accepts(&b, &token(Algorithm::HS256, None, &c, &EncodingKey::from_secret(b"shared")), NOW).await);
    assert!(!accepts(&b, &token(Algorithm::HS256, None, &c, &EncodingKey::from_secret(b"other")), NOW).await);
    assert!(!accepts(&b, &token(Algorithm::HS384, None, &c, &EncodingKey::from_secret(b"shared")), NOW).await);
}

#[test]
fn config_mistakes_name_the_key() {
    let (_, jwk, _) = rsa();
    let file = jwks_file(&[jwk]);
    let p = file.path().display();
    let cases = [
        (String::new(), "`sources.s.auth.bearer`: give exactly one"),
        (format!("jwks_file = \"{p}\"\nhs256_secret = \"x\""), "give exactly one"),
        (format!("jwks_file = \"{p}\"\nissuer = \"i\""), "sources.s.auth.bearer.audience"),
        (
            format!("jwks_file = \"{p}\"\nissuer = \"i\"\naudience = \"a\"\nalgorithms = [\"HS256\"]"),
            "bearer.algorithms",
        ),
        (
            format!("jwks_file = \"{p}\"\nissuer = \"i\"\naudience = \"a\"\nalgorithms = [\"none\"]"),
            "none is never allowed",
        ),
        ("hs256_secret = \"x\"\nalgorithms = [\"RS256\"]".into(), "needs a public key"),
        ("jwks_file = \"/nonexistent/jwks.json\"\nissuer = \"i\"\naudience = \"a\"".into(), "bearer.jwks_file"),
        ("jwks_url = \"ftp://idp/jwks\"\nissuer = \"i\"\naudience = \"a\"".into(), "bearer.jwks_url"),
        ("hs256_secret_env = \"NOPE\"".into(), "hs256_secret_env"),
    ];
    for (text, expected) in cases {
        let e = bearer(&text).unwrap_err().to_string();
        assert!(e.contains(expected), "{text}: {e}");
    }
}

#[test]
fn unknown_kids_are_remembered_within_bounds() {
    use remote::{Misses, MAX_KID, MAX_MISSES, MISS_TTL};
    let now = tokio::time::Instant::now();
    let mut misses = Misses::default();
    misses.insert("gone", now);
    assert!(misses.contains("gone", now + Duration::from_secs(1)));
    assert!(!misses.contains("gone", now + MISS_TTL), "expired");
    assert!(!misses.contains("other", now));
    misses.insert(&"k".repeat(MAX_KID + 1), now);
    assert_eq!(misses.len(), 1, "an over-long kid is not stored");
    for n in 0..100_000 {
        misses.insert(&format!("flood-{n}"), now);
        assert!(misses.len() <= MAX_MISSES);
    }
    // Past the cap, expired kids go first.
    let mut misses = Misses::default();
    misses.insert("old", now);
    for n in 1..MAX_MISSES {
        misses.insert(&format!("k{n}"), now + MISS_TTL);
    }
    misses.insert("new", now + MISS_TTL);
    assert_eq!(misses.len(), MAX_MISSES);
    assert!(misses.contains("k1", now + MISS_TTL) && misses.contains("new", now + MISS_TTL));
}
