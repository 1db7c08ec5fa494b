//! `client_cert`: the listener verifies client certificates (optional at the handshake, CRLs enforced); each
//! source authorizes the subject.

use std::sync::Arc;

use rustls::ClientConfig;

use super::{expect, expect_published};
use crate::support::{Gateway, Pki, Resp};

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

fn body(n: u32) -> Vec<u8> {
    format!(r#"{{"event":"mtls.test","n":{n}}}"#).into_bytes()
}

async fn send(gw: &Gateway, tls: Arc<ClientConfig>, path: &str, auth: &str, n: u32) -> Result<Resp, String> {
    let headers = [("content-type", "application/json"), ("authorization", auth)];
    gw.try_request(Some(tls), "POST", path, &headers, &body(n)).await
}

const ALPN: &[&[u8]] = &[b"http/1.1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_authorize_the_verified_subject() {
    let pki = Pki::new();
    let gw = gateway(&pki, false).await;
    let mut q = gw.queue("#").await;
    let instamed = pki.client_config(Some(pki.client("webhooks.instamed.com")), ALPN);
    let evil = pki.client_config(Some(pki.client("evil.example")), ALPN);
    let none = pki.client_config(None, ALPN);
    let (ok, wrong) = (basic("s3cret-pw"), basic("wrong"));
    let cases = [
        ("right certificate and password", instamed.clone(), "/webhooks/instamed", &ok, 1, 200, "Stored"),
        ("right certificate, wrong password", instamed, "/webhooks/instamed", &wrong, 0, 401, "Unauthorized"),
        ("no client certificate", none.clone(), "/webhooks/instamed", &ok, 0, 403, "Forbidden"),
        ("wrong subject", evil.clone(), "/webhooks/instamed", &ok, 0, 403, "Forbidden"),
        ("any verified certificate", evil, "/webhooks/any-cert", &ok, 2, 200, "Stored"),
        ("any-cert without a certificate", none.clone(), "/webhooks/any-cert", &ok, 0, 403, "Forbidden"),
        ("sources without client_cert share the port", none, "/webhooks/open", &ok, 3, 200, "Stored"),
    ];
    for (case, tls, path, auth, n, status, reason) in cases {
        expect(&send(&gw, tls, path, auth, n).await.expect("an answer"), status, reason, case);
    }
    expect_published(&mut q, &[body(1), body(2), body(3)]).await;
    let forbidden = gw.metric("hookgate_posting_errors_total{reason=\"forbidden\",source=\"instamed\"}").await;
    assert_eq!(forbidden, 2.0);
    let failures = gw.metric("hookgate_auth_failures_total{method=\"client_cert\",source=\"instamed\"}").await;
    assert_eq!(failures, 2.0);
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_revoked_certificates_fail_the_handshake() {
    let pki = Pki::new();
    let gw = gateway(&pki, false).await;
    let mut q = gw.queue("#").await;
    let foreign = pki.client_config(Some(Pki::new().client("webhooks.instamed.com")), ALPN);
    let revoked = pki.client_config(Some(pki.client_with_serial("webhooks.instamed.com", REVOKED)), ALPN);
    let ok = basic("s3cret-pw");
    for (case, tls, path) in [
        ("certificate from another CA", foreign.clone(), "/webhooks/instamed"),
        ("revoked certificate", revoked, "/webhooks/instamed"),
        ("a certificate that does not verify is refused on every path", foreign, "/webhooks/open"),
    ] {
        let started = tokio::time::Instant::now();
        let r = send(&gw, tls, path, &ok, 0).await;
        super::refused_by_alert(case, r, started.elapsed());
    }
    expect_published(&mut q, &[]).await;
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
    let started = tokio::time::Instant::now();
    let r = gw.try_request(Some(instamed), "POST", "/webhooks/any-cert", &headers, b"{}").await;
    super::refused_by_alert("a CRL past its nextUpdate refuses every client certificate", r, started.elapsed());
    let body = br#"{"event":"mtls.open"}"#.to_vec();
    let r = gw.try_request(Some(pki.client_config(None, alpn)), "POST", "/webhooks/open", &headers, &body).await;
    expect(&r.expect("answer"), 200, "Stored", "no certificate, open source");
    expect_published(&mut q, &[body]).await;
    q.close().await;
    gw.stop().await;
}
