//! Every hmac scheme: right secret (both active ones), and each way a signature can be wrong.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use hookgate::config::Hmac;

use super::{expect, expect_published};
use crate::support::{Gateway, Pki};

/// (source, hmac table with `SECRETS` standing for the secret list, timestamped)
const SCHEMES: [(&str, &str, bool); 7] = [
    ("tyro", r#"{ scheme = "tyro", secrets = SECRETS }"#, true),
    ("card", r#"{ scheme = "x-signature", secrets = SECRETS }"#, false),
    ("sw", r#"{ scheme = "standard-webhooks", secrets = SECRETS, tolerance = "5m" }"#, true),
    ("github", r#"{ scheme = "github", secrets = SECRETS }"#, false),
    ("stripe", r#"{ scheme = "stripe", secrets = SECRETS }"#, true),
    ("shopify", r#"{ scheme = "shopify", secrets = SECRETS }"#, false),
    (
        "partner",
        r#"{ scheme = "custom", header = "X-Partner-Signature", encoding = "hex", prefix = "sha256=", timestamp_header = "X-Partner-Timestamp", signed = "{timestamp}.{body}", secrets = SECRETS }"#,
        true,
    ),
];

fn secret(source: &str, word: &str) -> String {
    if source == "sw" {
        format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(word))
    } else {
        word.to_string()
    }
}

fn table(source: &str, template: &str, words: &[&str]) -> String {
    let list: Vec<String> = words.iter().map(|w| format!("\"{}\"", secret(source, w))).collect();
    template.replace("SECRETS", &format!("[{}]", list.join(", ")))
}

fn sources() -> String {
    let mut out = String::new();
    for (name, template, _) in SCHEMES {
        let hmac = table(name, template, &["current-secret", "next-secret"]);
        out.push_str(&format!("[sources.{name}]\npreset = \"generic\"\n[sources.{name}.auth]\nhmac = {hmac}\n"));
        if name == "tyro" {
            out.push_str("headers = { sessionKey = { value = \"tyro-session\" } }\n");
        }
    }
    out
}

/// The headers `hookgate sign` would print for `body`, signed with `word` at `now + offset` seconds.
fn signed(source: &str, word: &str, body: &[u8], offset: i64) -> Vec<(String, String)> {
    let (_, template, _) = SCHEMES.iter().find(|(n, ..)| *n == source).expect("scheme");
    let cfg: Hmac = toml::from_str(&format!("x = {}", table(source, template, &[word])))
        .map(|t: toml::Table| t["x"].clone().try_into().expect("hmac table"))
        .expect("toml");
    let now = SystemTime::now();
    let at = if offset >= 0 {
        now + Duration::from_secs(offset.unsigned_abs())
    } else {
        now - Duration::from_secs(offset.unsigned_abs())
    };
    let mut headers = hookgate::auth::hmac::sign("t", &cfg, &HashMap::new(), body, at).expect("sign");
    if source == "tyro" {
        headers.push(("sessionKey".into(), "tyro-session".into()));
    }
    headers
}

fn refs(h: &[(String, String)]) -> Vec<(&str, &str)> {
    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The signature header is the last one `sign` returns (before Tyro's sessionKey).
fn signature_index(source: &str, h: &[(String, String)]) -> usize {
    if source == "tyro" {
        h.len() - 2
    } else {
        h.len() - 1
    }
}

type Case = (&'static str, Vec<(String, String)>, Vec<u8>);

fn body(source: &str, n: u32) -> Vec<u8> {
    format!(r#"{{"event":"test.signed","source":"{source}","n":{n}}}"#).into_bytes()
}

/// Every wrong delivery for `source`: each must be a 401 and publish nothing.
fn failures(source: &'static str, timestamped: bool) -> Vec<Case> {
    let b = body(source, 0);
    let mut out = vec![
        ("wrong secret", signed(source, "wrong-secret", &b, 0), b.clone()),
        ("retired secret", signed(source, "retired-secret", &b, 0), b.clone()),
        ("tampered body", signed(source, "current-secret", &b, 0), body(source, 99)),
        ("no headers", Vec::new(), b.clone()),
    ];
    let good = signed(source, "current-secret", &b, 0);
    let i = signature_index(source, &good);
    let mut missing = good.clone();
    missing.remove(i);
    let mut empty = good.clone();
    empty[i].1.clear();
    let mut truncated = good.clone();
    let keep = truncated[i].1.len() - 4;
    truncated[i].1.truncate(keep);
    out.extend([("missing signature", missing, b.clone()), ("empty signature", empty, b.clone())]);
    out.push(("truncated signature", truncated, b.clone()));
    if timestamped {
        out.push(("stale", signed(source, "current-secret", &b, -600), b.clone()));
        out.push(("future", signed(source, "current-secret", &b, 600), b.clone()));
    }
    if source == "tyro" {
        let mut h = good;
        h.pop();
        out.push(("hmac right, sessionKey missing", h, b));
    }
    out
}

/// Deliveries that must be stored: one per active secret (and, for Tyro, a pretty-printed body).
fn successes(source: &'static str) -> Vec<Case> {
    let mut out: Vec<Case> = [(1, "current-secret"), (2, "next-secret")]
        .into_iter()
        .map(|(n, word)| (word, signed(source, word, &body(source, n), 0), body(source, n)))
        .collect();
    if source == "tyro" {
        // Signed over the compact JSON, sent pretty-printed.
        let pretty = serde_json::to_vec_pretty(&serde_json::json!({"event": "test.signed", "n": 3})).expect("json");
        out.push(("pretty body", signed(source, "current-secret", &pretty, 0), pretty));
    }
    out
}

async fn post(gw: &Gateway, source: &str, case: Case) -> crate::support::Resp {
    let mut headers = refs(&case.1);
    headers.push(("content-type", "application/json"));
    gw.post(&format!("/webhooks/{source}"), &headers, &case.2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scheme_passes_and_fails_as_it_should() {
    let pki = Pki::new();
    let mut gw = Gateway::start(&format!("{}{}", pki.server_toml(false), sources())).await;
    gw.tls = Some(pki.client_config(None, &[b"http/1.1"]));
    let mut q = gw.queue("#").await;
    for (source, _, timestamped) in SCHEMES {
        let refused = failures(source, timestamped);
        let count = refused.len();
        for case in refused {
            let name = case.0;
            expect(&post(&gw, source, case).await, 401, "Unauthorized", &format!("{source}: {name}"));
        }
        let mut published = Vec::new();
        for case in successes(source) {
            let (name, body) = (case.0, case.2.clone());
            expect(&post(&gw, source, case).await, 200, "Stored", &format!("{source}: {name}"));
            published.push(body);
        }
        expect_published(&mut q, &published).await;
        let series = format!("hookgate_posting_errors_total{{reason=\"auth\",source=\"{source}\"}}");
        assert_eq!(gw.metric(&series).await, count as f64, "{series}");
    }
    let hmac_failures = gw.metric("hookgate_auth_failures_total{method=\"hmac\",source=\"card\"}").await;
    assert_eq!(hmac_failures, 7.0);
    let header_failures = gw.metric("hookgate_auth_failures_total{method=\"headers\",source=\"tyro\"}").await;
    assert_eq!(header_failures, 2.0, "no headers, and sessionKey missing");
    q.close().await;
    gw.stop().await;
}
