//! On an `hmac` source, event fields come only from signed input (issue 12, item 6). No scheme signs the
//! path or the query, so a captured signed delivery replayed to `/tyro/<other transaction>/paid` must not become
//! a new event: a body-less request is refused, and a signed body keeps its own id, type and subject.

use std::collections::HashMap;
use std::time::SystemTime;

use hookgate::config::Hmac;

use super::{expect, WAIT};
use crate::support::{Gateway, JSON};

const SECRET: &str = "tyro-signing-secret";

const TYRO: &str = r#"
[sources.tyro]
preset = "tyro"
path = "/tyro/{transactionId}/{event}"
[sources.tyro.auth]
hmac = { scheme = "tyro", secrets = ["tyro-signing-secret"], tolerance = "5m" }
headers = { sessionKey = { value = "tyro-session" } }
"#;

/// What Tyro sends for `body` now: its timestamp and signature headers, plus the static session key.
fn captured(body: &[u8]) -> Vec<(String, String)> {
    let cfg: Hmac = toml::from_str(&format!("scheme = \"tyro\"\nsecrets = [\"{SECRET}\"]")).expect("hmac table");
    let mut h = hookgate::auth::hmac::sign("t", &cfg, &HashMap::new(), body, SystemTime::now()).expect("sign");
    h.push(("sessionKey".into(), "tyro-session".into()));
    h
}

fn refs(h: &[(String, String)]) -> Vec<(&str, &str)> {
    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_body_less_tyro_get_replayed_to_another_transaction_is_refused() {
    let gw = Gateway::start(TYRO).await;
    let mut q = gw.queue("#").await;
    let get = captured(b"");
    let r = gw.request("GET", "/tyro/tx-100/approved", &refs(&get), b"").await;
    expect(&r, 401, "Unauthorized", "the signed body-less GET itself");
    let r = gw.request("GET", "/tyro/tx-666/paid", &refs(&get), b"").await;
    expect(&r, 401, "Unauthorized", "the replay to another transaction");
    let r = gw.request("DELETE", "/tyro/tx-666/rejected?x=1", &refs(&get), b"").await;
    expect(&r, 401, "Unauthorized", "a body-less DELETE");
    assert!(q.next(std::time::Duration::from_millis(500)).await.is_none(), "nothing published");
    assert_eq!(gw.metric("hookgate_posting_errors_total{reason=\"auth\",source=\"tyro\"}").await, 3.0);
    assert_eq!(gw.metric("hookgate_auth_failures_total{method=\"hmac\",source=\"tyro\"}").await, 3.0);
    q.close().await;
    gw.stop().await;
}

/// A signed body that names no transaction or event, replayed to another path: its fields are the body's
/// alone, so the replay is the same event (`200 Duplicate`), never `tx-666`'s `paid`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_body_replayed_to_another_path_stays_the_same_event() {
    let gw = Gateway::start(TYRO).await;
    let mut q = gw.queue("#").await;
    let body = br#"{"invoiceReference":"INV-7","businessStatus":"approved","modified":"2021-01-13T04:23:50.659Z"}"#;
    let mut headers = captured(body);
    headers.push(("content-type".into(), JSON[0].1.into()));
    let r = gw.post("/tyro/tx-100/approved", &refs(&headers), body).await;
    expect(&r, 200, "Stored", "the signed POST");
    let r = gw.post("/tyro/tx-666/paid?transactionId=tx-777", &refs(&headers), body).await;
    expect(&r, 200, "Duplicate", "the replay to another path and query");
    let m = q.exactly_one(WAIT).await;
    assert_eq!(m.body, body);
    assert_eq!(m.routing_key, "tyro.unknown", "the path's event is not signed, so not used");
    assert_eq!(m.text("cloudEvents_subject"), None, "nor the path's transaction id");
    q.close().await;
    gw.stop().await;
}
