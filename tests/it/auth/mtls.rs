//! `client_cert`: the listener verifies client certificates (optional at the handshake, CRLs enforced); each
//! source authorizes the subject.

use super::{expect, expect_published};
use crate::support::{Gateway, Pki};

const SOURCES: &str = r#"
[sources.instamed]
preset = "generic"
[sources.instamed.auth]
client_cert = { subjects = ["CN=webhooks.instamed.com"] }
basic = [{ username = "instamed", password = "s3cret-pw" }]
[sources.any-cert]
preset = "generic"
[sources.any-cert.auth]
client_cert = {}
[sources.open]
preset = "generic"
unauthenticated = true
"#;

const REVOKED: u64 = 666;

fn basic(pw: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("instamed:{pw}")))
}

async fn gateway(pki: &Pki, expired_crl: bool) -> Gateway {
    let crl = pki.dir.path().join(if expired_crl { "expired.crl" } else { "ca.crl" });
    std::fs::write(&crl, pki.crl(&[REVOKED], expired_crl)).expect("write CRL");
    let extra = format!("{}crls = [\"{}\"]\n{SOURCES}", pki.server_toml(true), crl.display());
    Gateway::start(&extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_verified_then_authorized() {
    let pki = Pki::new();
    let gw = gateway(&pki, false).await;
    let mut q = gw.queue("#").await;
    let alpn: &[&[u8]] = &[b"http/1.1"];
    let instamed = pki.client_config(Some(pki.client("webhooks.instamed.com")), alpn);
    let evil = pki.client_config(Some(pki.client("evil.example")), alpn);
    let none = pki.client_config(None, alpn);
    let foreign = pki.client_config(Some(Pki::new().client("webhooks.instamed.com")), alpn);
    let revoked = pki.client_config(Some(pki.client_with_serial("webhooks.instamed.com", REVOKED)), alpn);
    let body = |n: u32| format!(r#"{{"event":"mtls.test","n":{n}}}"#).into_bytes();
    let send = |tls, path: &'static str, auth: String, b: Vec<u8>| {
        let gw = &gw;
        async move {
            let headers = [("content-type", "application/json"), ("authorization", auth.as_str())];
            gw.try_request(Some(tls), "POST", path, &headers, &b).await
        }
    };
    let ok = basic("s3cret-pw");
    let r = send(instamed.clone(), "/webhooks/instamed", ok.clone(), body(1)).await.expect("answer");
    expect(&r, 200, "Stored", "right certificate and password");
    let r = send(instamed.clone(), "/webhooks/instamed", basic("wrong"), body(0)).await.expect("answer");
    expect(&r, 401, "Unauthorized", "right certificate, wrong password");
    let r = send(none.clone(), "/webhooks/instamed", ok.clone(), body(0)).await.expect("answer");
    expect(&r, 403, "Forbidden", "no client certificate");
    let r = send(evil.clone(), "/webhooks/instamed", ok.clone(), body(0)).await.expect("answer");
    expect(&r, 403, "Forbidden", "wrong subject");
    for (case, tls) in [("certificate from another CA", foreign.clone()), ("revoked certificate", revoked)] {
        let r = send(tls, "/webhooks/instamed", ok.clone(), body(0)).await;
        assert!(r.is_err(), "{case}: the handshake must fail, got {r:?}");
    }
    let r = send(foreign, "/webhooks/open", String::new(), body(0)).await;
    assert!(r.is_err(), "a certificate that does not verify is refused on every path: {r:?}");
    let r = send(evil, "/webhooks/any-cert", String::new(), body(2)).await.expect("answer");
    expect(&r, 200, "Stored", "any verified certificate");
    let r = send(none.clone(), "/webhooks/any-cert", String::new(), body(0)).await.expect("answer");
    expect(&r, 403, "Forbidden", "any-cert without a certificate");
    let r = send(none, "/webhooks/open", String::new(), body(3)).await.expect("answer");
    expect(&r, 200, "Stored", "sources without client_cert share the port");
    expect_published(&mut q, &[body(1), body(2), body(3)]).await;
    let forbidden = gw.metric("hookgate_posting_errors_total{reason=\"forbidden\",source=\"instamed\"}").await;
    assert_eq!(forbidden, 2.0);
    let failures = gw.metric("hookgate_auth_failures_total{method=\"client_cert\",source=\"instamed\"}").await;
    assert_eq!(failures, 2.0);
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_crl_fails_closed() {
    let pki = Pki::new();
    let gw = gateway(&pki, true).await;
    let mut q = gw.queue("#").await;
    let alpn: &[&[u8]] = &[b"http/1.1"];
    let instamed = pki.client_config(Some(pki.client("webhooks.instamed.com")), alpn);
    let headers = [("content-type", "application/json"), ("authorization", "x")];
    let r = gw.try_request(Some(instamed), "POST", "/webhooks/any-cert", &headers, b"{}").await;
    assert!(r.is_err(), "a CRL past its nextUpdate refuses every client certificate: {r:?}");
    let body = br#"{"event":"mtls.open"}"#.to_vec();
    let r = gw.try_request(Some(pki.client_config(None, alpn)), "POST", "/webhooks/open", &headers, &body).await;
    expect(&r.expect("answer"), 200, "Stored", "no certificate, open source");
    expect_published(&mut q, &[body]).await;
    q.close().await;
    gw.stop().await;
}
