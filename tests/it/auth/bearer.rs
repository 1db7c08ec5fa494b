//! `bearer`: JWTs checked against a JWKS served over HTTP by the test, and against an HS256 secret.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{expect, expect_published};
use crate::support::{Gateway, Pki};

const ISS: &str = "https://sso.instamed.example";

/// A JWKS document served at http://addr/jwks; the test may change it, slow the answers down, count the hits.
struct Jwks {
    url: String,
    doc: Arc<Mutex<Value>>,
    delay: Arc<Mutex<Duration>>,
    hits: Arc<AtomicUsize>,
}

impl Jwks {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn serve_jwks(keys: Vec<Value>) -> Jwks {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/jwks", listener.local_addr().expect("addr"));
    let doc = Arc::new(Mutex::new(json!({ "keys": keys })));
    let (delay, hits) = (Arc::new(Mutex::new(Duration::ZERO)), Arc::new(AtomicUsize::new(0)));
    let (served, slow, counted) = (doc.clone(), delay.clone(), hits.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let body = served.lock().expect("lock").to_string();
            let (slow, counted) = (slow.clone(), counted.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") && read < buf.len() {
                    match conn.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let pause = *slow.lock().expect("lock");
                tokio::time::sleep(pause).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(format!("{head}{body}").as_bytes()).await;
            });
        }
    });
    Jwks { url, doc, delay, hits }
}

fn rsa() -> (EncodingKey, Value, Vec<u8>) {
    let pem = crate::support::fixture("jwt-rsa.pem");
    let der = rustls_pki_types::PrivatePkcs1KeyDer::from_pem_slice(&pem).expect("pem");
    let pair = ring::rsa::KeyPair::from_der(der.secret_pkcs1_der()).expect("rsa");
    let parts = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
    let jwk = json!({"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "n": B64URL.encode(&parts.n), "e": B64URL.encode(&parts.e)});
    (EncodingKey::from_rsa_der(der.secret_pkcs1_der()), jwk, pair.public().as_ref().to_vec())
}

fn ec(kid: &str) -> (EncodingKey, Value) {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("key");
    let p = pair.public_key().as_ref();
    let jwk =
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": B64URL.encode(&p[1..33]), "y": B64URL.encode(&p[33..65])});
    (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
}

fn claims(exp_in: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": ISS, "aud": "hookgate", "sub": "instamed", "iat": now, "exp": now + exp_in})
}

fn jwt(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let header = Header { alg, kid: kid.map(String::from), ..Header::default() };
    format!("Bearer {}", jsonwebtoken::encode(&header, claims, key).expect("encode"))
}

fn sources(jwks: &str, down: &str) -> String {
    format!(
        r#"
[sources.oauth]
preset = "generic"
[sources.oauth.auth]
bearer = {{ jwks_url = "{jwks}", issuer = "{ISS}", audience = "hookgate" }}
[sources.oauth-down]
preset = "generic"
[sources.oauth-down.auth]
bearer = {{ jwks_url = "{down}", issuer = "{ISS}", audience = "hookgate" }}
[sources.oauth-hs]
preset = "generic"
[sources.oauth-hs.auth]
bearer = {{ hs256_secret = "shared-hs-secret", audience = "hookgate" }}
"#
    )
}

struct Setup {
    gw: Gateway,
    q: crate::support::Queue,
    jwks: Jwks,
    rsa_key: EncodingKey,
    rsa_public: Vec<u8>,
    _pki: Pki,
}

async fn setup() -> Setup {
    let (rsa_key, rsa_jwk, rsa_public) = rsa();
    let jwks = serve_jwks(vec![rsa_jwk]).await;
    let closed = format!("127.0.0.1:{}", crate::support::free_port());
    let pki = Pki::new();
    let extra = format!("{}{}", pki.server_toml(false), sources(&jwks.url, &format!("http://{closed}/jwks")));
    let mut gw = Gateway::start(&extra).await;
    gw.tls = Some(pki.client_config(None, &[b"http/1.1"]));
    let q = gw.queue("#").await;
    Setup { gw, q, jwks, rsa_key, rsa_public, _pki: pki }
}

fn body(n: u32) -> Vec<u8> {
    format!(r#"{{"event":"token.test","n":{n}}}"#).into_bytes()
}

async fn post(gw: &Gateway, path: &str, auth: &str, n: u32) -> crate::support::Resp {
    gw.post(path, &[("content-type", "application/json"), ("authorization", auth)], &body(n)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused() {
    let Setup { gw, mut q, rsa_key, rsa_public, .. } = setup().await;
    let rs256 = |c: &Value, kid: &str| jwt(Algorithm::RS256, Some(kid), c, &rsa_key);
    let mut wrong_aud = claims(300);
    wrong_aud["aud"] = json!("another-service");
    let mut wrong_iss = claims(300);
    wrong_iss["iss"] = json!("https://evil.example");
    let unsigned = format!(
        "Bearer {}.{}.",
        B64URL.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64URL.encode(claims(300).to_string())
    );
    let confused = jwt(Algorithm::HS256, Some("rsa-1"), &claims(300), &EncodingKey::from_secret(&rsa_public));
    let failures = [
        ("expired", rs256(&claims(-120), "rsa-1")),
        ("wrong audience", rs256(&wrong_aud, "rsa-1")),
        ("wrong issuer", rs256(&wrong_iss, "rsa-1")),
        ("unknown kid", rs256(&claims(300), "rsa-9")),
        ("alg none", unsigned),
        ("HS256 with the RSA public key", confused),
        ("basic instead", "Basic aW5zdGFtZWQ6cHc=".to_string()),
        ("empty", String::new()),
    ];
    for (case, auth) in failures {
        let r = post(&gw, "/webhooks/oauth", &auth, 0).await;
        expect(&r, 401, "Unauthorized", case);
        assert_eq!(r.headers["www-authenticate"], "Bearer error=\"invalid_token\"", "{case}");
    }
    expect(&post(&gw, "/webhooks/oauth", &rs256(&claims(300), "rsa-1"), 1).await, 200, "Stored", "valid RS256");
    expect_published(&mut q, &[body(1)]).await;
    assert_eq!(gw.metric("hookgate_auth_failures_total{method=\"bearer\",source=\"oauth\"}").await, 8.0);
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_outage_and_shared_secret() {
    let Setup { gw, mut q, jwks, rsa_key, .. } = setup().await;
    let ok = jwt(Algorithm::RS256, Some("rsa-1"), &claims(300), &rsa_key);
    expect(&post(&gw, "/webhooks/oauth", &ok, 1).await, 200, "Stored", "valid RS256");
    // The identity provider rotates in a new key: a token with its kid makes the gateway fetch the JWKS again.
    let (ec_key, ec_jwk) = ec("ec-2");
    jwks.doc.lock().expect("lock")["keys"].as_array_mut().expect("keys").push(ec_jwk);
    let rotated = jwt(Algorithm::ES256, Some("ec-2"), &claims(300), &ec_key);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    expect(&post(&gw, "/webhooks/oauth", &rotated, 2).await, 200, "Stored", "new kid after refresh");
    // A JWKS that cannot be fetched is a 401, not a 5xx.
    expect(&post(&gw, "/webhooks/oauth-down", &ok, 3).await, 401, "Unauthorized", "JWKS unreachable");
    let hs = |secret: &[u8]| jwt(Algorithm::HS256, None, &claims(300), &EncodingKey::from_secret(secret));
    expect(&post(&gw, "/webhooks/oauth-hs", &hs(b"wrong"), 4).await, 401, "Unauthorized", "HS256 wrong secret");
    let mut expired = claims(-120);
    expired["aud"] = json!(["hookgate"]);
    let old = jwt(Algorithm::HS256, None, &expired, &EncodingKey::from_secret(b"shared-hs-secret"));
    expect(&post(&gw, "/webhooks/oauth-hs", &old, 4).await, 401, "Unauthorized", "HS256 expired");
    expect(&post(&gw, "/webhooks/oauth-hs", &hs(b"shared-hs-secret"), 5).await, 200, "Stored", "HS256");
    expect_published(&mut q, &[body(1), body(2), body(5)]).await;
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_identity_provider_stalls_no_known_kid_and_unknown_kids_fetch_once() {
    let Setup { gw, mut q, jwks, rsa_key, .. } = setup().await;
    let ok = jwt(Algorithm::RS256, Some("rsa-1"), &claims(300), &rsa_key);
    expect(&post(&gw, "/webhooks/oauth", &ok, 0).await, 200, "Stored", "the first token fetches the set");
    assert_eq!(jwks.hits(), 1);
    // The identity provider hangs (longer than the gateway's fetch timeout); the refresh interval has passed.
    *jwks.delay.lock().expect("lock") = Duration::from_secs(5);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let g = &gw;
    let flood = futures_util::future::join_all((0..20).map(|i| {
        let token = jwt(Algorithm::RS256, Some(&format!("flood-{i}")), &claims(300), &rsa_key);
        async move { post(g, "/webhooks/oauth", &token, 100 + i).await }
    }));
    let known = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut slowest = Duration::ZERO;
        for n in 1..=5 {
            let started = tokio::time::Instant::now();
            expect(&post(g, "/webhooks/oauth", &ok, n).await, 200, "Stored", "known kid while the IdP hangs");
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        slowest
    };
    let (flooded, slowest) = tokio::join!(flood, known);
    for r in &flooded {
        expect(r, 401, "Unauthorized", "unknown kid");
    }
    assert!(slowest < Duration::from_millis(1500), "a known kid waited {slowest:?} for the JWKS fetch");
    assert_eq!(jwks.hits(), 2, "20 unknown kids: one fetch");
    // The fetch failed: the last good set keeps serving, and more unknown kids fetch nothing (the IdP is back).
    *jwks.delay.lock().expect("lock") = Duration::ZERO;
    for i in 0..5 {
        let token = jwt(Algorithm::RS256, Some(&format!("again-{i}")), &claims(300), &rsa_key);
        expect(&post(&gw, "/webhooks/oauth", &token, 200).await, 401, "Unauthorized", "unknown kid, no fetch");
    }
    expect(&post(&gw, "/webhooks/oauth", &ok, 6).await, 200, "Stored", "the last good set");
    assert_eq!(jwks.hits(), 2);
    expect_published(&mut q, &(0..=6).map(body).collect::<Vec<_>>()).await;
    q.close().await;
    gw.stop().await;
}
