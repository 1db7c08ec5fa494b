//! Nothing sensitive leaks (issue 12, item 5). Canary values — a card number, a patient's name, a secret — are
//! driven through every refusal path and through an event the broker returns as unroutable (a real
//! `basic.return`, which lapin logs with the whole message), against a real gateway process in JSON and in text
//! format, at the default level, at `RUST_LOG=trace`, at `logging.level = "trace"` and with `RUST_LOG` naming each
//! dependency at trace. Its logs, its metrics and every answer body are then
//! searched for each canary as text, hex, base64 (every alignment) and as a decimal byte list.

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use tokio::net::TcpStream;

use crate::support::{amqp_url, base_config, broker, free_port, unique, Client, Proc, JSON};

const CARD: &str = "4929381726354012";
const PATIENT: &str = "Quilla Marchbanks";
const SECRET: &str = "cnry-s3cr3t-7f1e9a42";
const CANARIES: [&str; 3] = [CARD, PATIENT, SECRET];

/// One source per refusal path, plus `open`, whose accepted events are unroutable (nothing is bound).
const SOURCES: &str = r#"
[sources.basic]
preset = "generic"
[sources.basic.auth]
basic = [{ username = "provider", password = "the-right-password" }]
[sources.bearer]
preset = "generic"
[sources.bearer.auth]
bearer = { hs256_secret = "the-right-hs256-secret", audience = "hookgate" }
[sources.hdr]
preset = "generic"
[sources.hdr.auth]
headers = { sessionKey = { value = "the-right-session-key" } }
[sources.signed]
preset = "generic"
[sources.signed.auth]
hmac = { scheme = "x-signature", secrets = ["the-right-hmac-secret"] }
[sources.ip]
preset = "generic"
[sources.ip.auth]
ip_allow = ["203.0.113.0/24"]
[sources.open]
preset = "generic"
unauthenticated = true
max_body_bytes = 1024
[sources.limited]
preset = "generic"
unauthenticated = true
rate_limit = { per_second = 1, burst = 1 }
"#;

fn body() -> String {
    format!(r#"{{"event":"canary","card":"{CARD}","patient":"{PATIENT}","note":"{SECRET}"}}"#)
}

/// Every encoding of `canary` the search looks for.
fn forms(canary: &str) -> Vec<String> {
    let b = canary.as_bytes();
    let decimal = |sep: &str| b.iter().map(u8::to_string).collect::<Vec<_>>().join(sep);
    let mut out = vec![canary.to_string(), hex::encode(b), hex::encode_upper(b), decimal(", "), decimal(",")];
    // Base64 of the canary inside a longer value depends on its offset mod 3: keep the characters that only
    // the canary's own bits determine, at each offset.
    for shift in 0..3 {
        let padded = [vec![0u8; shift], b.to_vec()].concat();
        let (start, end) = ((8 * shift).div_ceil(6), (8 * (shift + b.len())) / 6);
        for engine in [STANDARD, URL_SAFE] {
            let encoded = engine.encode(&padded);
            out.push(encoded[start..end].to_string());
        }
    }
    out
}

/// The canaries (in any form) found in `text`, with what was searched, for the failure message.
fn leaks(what: &str, text: &str) -> Vec<String> {
    CANARIES
        .iter()
        .flat_map(|c| forms(c).into_iter().map(move |f| (c, f)))
        .filter(|(_, form)| text.contains(form.as_str()))
        .map(|(c, form)| format!("{what}: {c:?} as {form:?}"))
        .collect()
}

/// Declares the exchange the gateway publishes to (it only checks it: `declare_exchange = false`), with no
/// binding and no alternate exchange, so every accepted event comes back as a `basic.return`.
async fn bare_exchange(name: &str) {
    let conn = broker().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.exchange_declare(name.into(), ExchangeKind::Topic, ExchangeDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare");
    let _ = conn.close(200, "done".into()).await;
}

async fn delete(name: &str) {
    let conn = broker().await;
    if let Ok(ch) = conn.create_channel().await {
        let _ = ch.exchange_delete(name.into(), ExchangeDeleteOptions::default()).await;
    }
    let _ = conn.close(200, "done".into()).await;
}

fn config(dir: &std::path::Path, exchange: &str, format: &str, level: &str) -> std::path::PathBuf {
    let (port, admin) = (free_port(), free_port());
    let base = base_config(exchange, &amqp_url(), &format!("listen = \"127.0.0.1:{port}\"\n")).replacen(
        "[server]\n",
        "declare_exchange = false\n[server]\n",
        1,
    );
    let text = format!(
        "{base}{SOURCES}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[logging]\nformat = \"{format}\"\nlevel = \"{level}\"\n\
         [storage]\ndata_dir = \"{}\"\n",
        dir.join("data").display()
    );
    let path = dir.join(format!("{format}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

/// A named request: path, headers, body.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a [u8]);

/// Every refusal path and the unroutable event; returns the answer bodies (and statuses, for the message).
async fn drive(client: &Client) -> Vec<(String, u16, Bytes)> {
    let body = body();
    let b = body.as_bytes();
    let basic = format!("Basic {}", STANDARD.encode(format!("provider:{SECRET}")));
    let basic_user = format!("Basic {}", STANDARD.encode(format!("{PATIENT}:{SECRET}")));
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwt = format!(
        "{}.{}.{}",
        b64url.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64url.encode(format!(r#"{{"sub":"{CARD}","name":"{PATIENT}","aud":"hookgate","exp":4102444800}}"#)),
        b64url.encode(SECRET)
    );
    let bearer = format!("Bearer {SECRET}");
    let jwt_bearer = format!("Bearer {jwt}");
    let odd_type = format!("application/x-{SECRET}");
    let large = format!("{body}{}", " ".repeat(2048));
    let not_found = format!("/webhooks/none?card={CARD}&name={SECRET}");
    let cases: Vec<Case> = vec![
        ("basic password", "/webhooks/basic", vec![("authorization", basic.as_str()), JSON[0]], b),
        ("basic user", "/webhooks/basic", vec![("authorization", basic_user.as_str()), JSON[0]], b),
        ("bearer opaque", "/webhooks/bearer", vec![("authorization", bearer.as_str()), JSON[0]], b),
        ("bearer jwt", "/webhooks/bearer", vec![("authorization", jwt_bearer.as_str()), JSON[0]], b),
        ("static header", "/webhooks/hdr", vec![("sessionkey", SECRET), JSON[0]], b),
        ("hmac", "/webhooks/signed", vec![("x-signature", SECRET), JSON[0]], b),
        ("ip_allow", "/webhooks/ip", vec![("x-forwarded-for", "203.0.113.9"), JSON[0]], b),
        ("malformed", "/webhooks/open", JSON.to_vec(), &b[..b.len() - 1]),
        ("too large", "/webhooks/open", JSON.to_vec(), large.as_bytes()),
        ("unsupported type", "/webhooks/open", vec![("content-type", odd_type.as_str())], b),
        ("not found", not_found.as_str(), JSON.to_vec(), b),
        ("unroutable", "/webhooks/open", JSON.to_vec(), b),
        ("unroutable, limited source", "/webhooks/limited", JSON.to_vec(), b),
        ("rate limited", "/webhooks/limited", JSON.to_vec(), b),
    ];
    let mut answers = Vec::new();
    for (case, path, headers, body) in cases {
        let r = client.post(path, &headers, body).await;
        answers.push((case.to_string(), r.status, r.body));
    }
    let (status, body) = h2_refusal(client).await;
    answers.push(("http/2 static header".into(), status, body));
    answers
}

/// A refused HTTP/2 (h2c) request carrying the secret in a header and the card in the query.
async fn h2_refusal(client: &Client) -> (u16, Bytes) {
    let stream = TcpStream::connect(client.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2c");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost/webhooks/hdr?card={CARD}"))
        .header("sessionkey", SECRET)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body())))
        .expect("request");
    let resp = sender.send_request(req).await.expect("h2 answer");
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default())
}

/// One gateway process in `format` at `level` / `rust_log`: drive everything, then search logs, metrics and
/// answers.
async fn run(format: &str, level: &str, rust_log: Option<&str>) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = unique("canary");
    bare_exchange(&exchange).await;
    let mut gw = Proc::spawn_rust_log(&config(dir.path(), &exchange, format, level), rust_log).await;
    let answers = drive(&gw.client).await;
    // The unroutable event really came back from the broker as a basic.return.
    let mut returned = 0.0;
    for _ in 0..100 {
        returned = gw.metric("hookgate_amqp_publishes_total{outcome=\"returned\"}").await
            + gw.metric("hookgate_unroutable_total{source=\"open\"}").await;
        if returned >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = gw.admin.try_get("/metrics").await.map(|(_, t)| t).unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.kill();
    let log = gw.output();
    delete(&exchange).await;
    let run = format!("{format} level={level} RUST_LOG={rust_log:?}");
    assert!(returned >= 1.0, "{run}: the broker returned nothing; answers {answers:?}\n{log}");
    assert!(log.contains("delivery refused"), "{run}: the process logged its refusals:\n{log}");
    let refused: Vec<_> = answers.iter().filter(|(case, s, _)| !case.starts_with("unroutable") && *s == 200).collect();
    assert!(refused.is_empty(), "{run}: every refusal path refused: {refused:?}");
    let limited = answers.iter().find(|(case, ..)| case == "rate limited").map(|(_, s, _)| *s);
    assert_eq!(limited, Some(429), "{run}: the rate-limit path was taken");
    let mut found = leaks(&format!("{run} log"), &log);
    found.extend(leaks(&format!("{run} metrics"), &metrics));
    for (case, status, body) in &answers {
        found.extend(leaks(&format!("{run} answer to {case} ({status})"), &String::from_utf8_lossy(body)));
    }
    found
}

#[test]
fn every_form_of_a_canary_is_searched() {
    let f = forms("ab");
    assert!(f.contains(&"6162".to_string()) && f.contains(&"97, 98".to_string()) && f.contains(&"97,98".to_string()));
    // "xab" encodes as eGFi: the canary alone determines "GFi" at offset 1... and "YW" at offset 0.
    assert!(f.iter().any(|s| s == "YW"), "{f:?}");
    assert!(leaks("t", &format!("[{}]", forms(CARD)[3])).len() == 1);
}

#[tokio::test]
async fn canaries_never_reach_logs_metrics_or_answers() {
    let mut found = Vec::new();
    // Default level, `RUST_LOG=trace`, `logging.level = "trace"`, and directives naming each dependency.
    let by_name = "trace,lapin=trace,amq_protocol=trace,h2=trace,hyper=trace,rustls=trace,redis=trace";
    let runs = [
        ("json", "info", None),
        ("text", "info", None),
        ("json", "info", Some("trace")),
        ("text", "info", Some("trace")),
        ("json", "trace", None),
        ("text", "info", Some(by_name)),
    ];
    for (format, level, rust_log) in runs {
        found.extend(run(format, level, rust_log).await);
    }
    assert!(found.is_empty(), "canaries leaked:\n{}", found.join("\n"));
}

/// A POST over TLS with `cfg`: the status and body, or why there was none (a refused handshake).
async fn tls_post(
    addr: std::net::SocketAddr,
    cfg: std::sync::Arc<rustls::ClientConfig>,
) -> Result<(u16, Bytes), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, stream).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri("/webhooks/cert")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body())))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default()))
}

/// The client-certificate refusals, over TLS: a certificate of the trusted CA whose subject (the secret) and
/// serial number (the card number) the source does not allow (`403`), and one of a foreign CA (handshake
/// refused) — at `RUST_LOG` trace for every dependency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_in_client_certificates_never_reach_logs_or_answers() {
    let pki = crate::support::Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, admin) = (free_port(), free_port());
    let exchange = unique("canary-tls");
    let text = format!(
        "{}{}[sources.cert]\npreset = \"generic\"\n[sources.cert.auth]\nclient_cert = {{ subjects = [\"CN=allowed-sender\"] }}\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n[logging]\nformat = \"json\"\n[storage]\ndata_dir = \"{}\"\n",
        base_config(&exchange, &amqp_url(), &format!("listen = \"127.0.0.1:{port}\"\n")),
        pki.server_toml(true),
        dir.path().join("data").display()
    );
    let path = dir.path().join("tls.toml");
    std::fs::write(&path, text).expect("write config");
    let by_name = "trace,lapin=trace,h2=trace,hyper=trace,rustls=trace,tokio_rustls=trace";
    let mut gw = Proc::spawn_rust_log(&path, Some(by_name)).await;
    let card_serial: u64 = CARD.parse().expect("digits");
    let refused = pki.client_config(Some(pki.client_with_serial(SECRET, card_serial)), &[b"http/1.1"]);
    let (status, answer) = tls_post(gw.client.addr, refused).await.expect("an answer");
    assert_eq!(status, 403, "a subject the source does not allow");
    let foreign = crate::support::Pki::new();
    let stranger = pki.client_config(Some(foreign.client(SECRET)), &[b"http/1.1"]);
    assert!(tls_post(gw.client.addr, stranger).await.is_err(), "a foreign CA's certificate fails the handshake");
    let metrics = gw.admin.try_get("/metrics").await.map(|(_, t)| t).unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.kill();
    let log = gw.output();
    // The gateway declared this exchange, with its alternate exchange and queue: all three go.
    crate::support::delete_exchange(&exchange).await;
    assert!(log.contains("delivery refused"), "{log}");
    let serial = [card_serial.to_string(), format!("{card_serial:x}"), format!("{card_serial:X}")];
    let mut found = leaks("tls log", &log);
    found.extend(leaks("tls metrics", &metrics));
    found.extend(leaks("tls answer", &String::from_utf8_lossy(&answer)));
    found.extend(serial.iter().filter(|s| log.contains(s.as_str())).map(|s| format!("serial {s} in the log")));
    assert!(found.is_empty(), "canaries leaked:\n{}", found.join("\n"));
}
