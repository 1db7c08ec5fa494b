//! SPEC §7 conformance: after a scenario that produces every answer this gateway gives (stored, duplicate,
//! stored in the alternate exchange, out of order, 400, 401, 403, 404, 405, 413, 415) and a reload, `/metrics`
//! holds each SPEC §7 family with its type and each series with the expected value, as exact exposition lines;
//! and every non-2xx answer is counted in `hookgate_posting_errors_total`.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;

use crate::support::{amqp_url, metric_value, Gateway, Pki};

const SOURCES: &str = r#"
[sources.generic]
preset = "generic"
unauthenticated = true
max_body_bytes = 64

[sources.basic]
preset = "generic"
[sources.basic.auth]
basic = [{ username = "u", password = "right" }]

[sources.ip]
preset = "generic"
[sources.ip.auth]
ip_allow = ["192.0.2.0/24"]

[sources.im]
preset = "instamed"
unauthenticated = true
"#;

/// SPEC §7 families owned by the gateway core, with their Prometheus types.
const FAMILIES: [(&str, &str); 14] = [
    ("hookgate_requests_total", "counter"),
    ("hookgate_request_duration_seconds", "histogram"),
    ("hookgate_events_total", "counter"),
    ("hookgate_retries_total", "counter"),
    ("hookgate_posting_errors_total", "counter"),
    ("hookgate_out_of_order_total", "counter"),
    ("hookgate_publish_retries_total", "counter"),
    ("hookgate_publish_confirm_seconds", "histogram"),
    ("hookgate_spool_events", "gauge"),
    ("hookgate_broker_connected", "gauge"),
    ("hookgate_unroutable_total", "counter"),
    ("hookgate_config_reloads_total", "counter"),
    ("hookgate_tls_cert_expiry_timestamp_seconds", "gauge"),
    ("hookgate_build_info", "gauge"),
];

/// Path, headers, body, expected status and phrase.
type Case = (&'static str, Vec<(&'static str, String)>, &'static [u8], (u16, &'static str));

fn not_after(der: &[u8]) -> i64 {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("certificate");
    cert.validity().not_after.timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spec_series_has_its_expected_value() {
    let pki = Pki::new();
    let extra = format!("{}{SOURCES}", pki.server_toml(false));
    let mut gw = Gateway::start_with(&extra, &amqp_url(), HashMap::new()).await;
    gw.tls = Some(pki.client_config(None, &[b"http/1.1"]));
    let mut routed = gw.queue("generic.a.b").await;
    let mut im = gw.queue("im.#").await;
    let post = |path: &'static str, headers: Vec<(&'static str, String)>, body: &'static [u8]| {
        let gw = &gw;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = gw.post(path, &h, body).await;
            (r.status, r.reason)
        }
    };
    let json = || vec![("content-type", "application/json".to_string())];
    let cases: Vec<Case> = vec![
        ("/webhooks/generic", json(), br#"{"event":"a.b","n":1}"#, (200, "Stored")),
        ("/webhooks/generic", json(), br#"{"event":"a.b","n":1}"#, (200, "Duplicate")),
        ("/webhooks/generic", json(), br#"{"event":"nobody"}"#, (200, "Stored")),
        ("/webhooks/generic", json(), br#"{"event":"#, (400, "Malformed Body")),
        ("/webhooks/generic", json(), &[b' '; 100], (413, "Payload Too Large")),
        ("/webhooks/generic", vec![("content-type", "text/plain".into())], b"hi", (415, "Unsupported Media Type")),
        ("/webhooks/nowhere", json(), b"{}", (404, "Not Found")),
        ("/webhooks/ip", json(), b"{}", (403, "Forbidden")),
        (
            "/webhooks/basic",
            vec![
                ("content-type", "application/json".into()),
                ("authorization", format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("u:wrong"))),
            ],
            b"{}",
            (401, "Unauthorized"),
        ),
        (
            "/webhooks/im",
            json(),
            br#"{"TransactionID":"oo-1","TransactionStatus":"Settlement","TransactionDate":"2024-01-02T00:00:00Z"}"#,
            (200, "Stored"),
        ),
        (
            "/webhooks/im",
            json(),
            br#"{"TransactionID":"oo-1","TransactionStatus":"Approved","TransactionDate":"2024-01-01T00:00:00Z"}"#,
            (200, "Stored"),
        ),
    ];
    for (path, headers, body, want) in cases {
        let (status, reason) = post(path, headers, body).await;
        assert_eq!((status, reason.as_str()), want, "{path}");
    }
    let r = gw.request("GET", "/webhooks/generic", &[], b"").await;
    assert_eq!((r.status, r.reason.as_str()), (405, "Method Not Allowed"));
    routed.exactly_one(Duration::from_secs(5)).await;
    for _ in 0..2 {
        im.next(Duration::from_secs(5)).await.expect("instamed event");
    }
    gw.wait_metric("hookgate_unroutable_total{source=\"generic\"}", 1.0).await;
    gw.reload().await.expect("reload applied");

    let (_, text) = gw.admin_get("/metrics").await;
    for (family, kind) in FAMILIES {
        let line = format!("# TYPE {family} {kind}");
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
    let expiry = not_after(&pki.server_der());
    let version = env!("CARGO_PKG_VERSION");
    let expected = [
        "hookgate_requests_total{code=\"200\",source=\"generic\"} 3".to_string(),
        "hookgate_requests_total{code=\"400\",source=\"generic\"} 1".into(),
        "hookgate_requests_total{code=\"413\",source=\"generic\"} 1".into(),
        "hookgate_requests_total{code=\"415\",source=\"generic\"} 1".into(),
        "hookgate_requests_total{code=\"405\",source=\"generic\"} 1".into(),
        "hookgate_requests_total{code=\"404\",source=\"unmatched\"} 1".into(),
        "hookgate_requests_total{code=\"403\",source=\"ip\"} 1".into(),
        "hookgate_requests_total{code=\"401\",source=\"basic\"} 1".into(),
        "hookgate_requests_total{code=\"200\",source=\"im\"} 2".into(),
        "hookgate_request_duration_seconds_count{source=\"generic\"} 7".into(),
        "hookgate_request_duration_seconds_count{source=\"im\"} 2".into(),
        "hookgate_request_duration_seconds_bucket{source=\"unmatched\",le=\"+Inf\"} 1".into(),
        "hookgate_events_total{source=\"generic\",type=\"a.b\"} 1".into(),
        "hookgate_events_total{source=\"generic\",type=\"nobody\"} 1".into(),
        "hookgate_events_total{source=\"im\",type=\"payment.settlement\"} 1".into(),
        "hookgate_events_total{source=\"im\",type=\"payment.approved\"} 1".into(),
        "hookgate_retries_total{source=\"generic\"} 1".into(),
        "hookgate_posting_errors_total{reason=\"malformed\",source=\"generic\"} 1".into(),
        "hookgate_posting_errors_total{reason=\"too_large\",source=\"generic\"} 1".into(),
        "hookgate_posting_errors_total{reason=\"unsupported_media_type\",source=\"generic\"} 1".into(),
        "hookgate_posting_errors_total{reason=\"method_not_allowed\",source=\"generic\"} 1".into(),
        "hookgate_posting_errors_total{reason=\"not_found\",source=\"unmatched\"} 1".into(),
        "hookgate_posting_errors_total{reason=\"forbidden\",source=\"ip\"} 1".into(),
        "hookgate_posting_errors_total{reason=\"auth\",source=\"basic\"} 1".into(),
        "hookgate_out_of_order_total{source=\"im\"} 1".into(),
        "hookgate_publish_retries_total 0".into(),
        // a.b, nobody (taken by the alternate exchange: an ordinary ack) and the two InstaMed events.
        "hookgate_publish_confirm_seconds_count 4".into(),
        "hookgate_spool_events 0".into(),
        "hookgate_broker_connected 1".into(),
        "hookgate_unroutable_total{source=\"generic\"} 1".into(),
        "hookgate_config_reloads_total{outcome=\"applied\"} 1".into(),
        format!("hookgate_tls_cert_expiry_timestamp_seconds{{listener=\"public\"}} {expiry}"),
        format!("hookgate_build_info{{version=\"{version}\"}} 1"),
    ];
    let missing: Vec<_> = expected.iter().filter(|line| !text.lines().any(|l| l == line.as_str())).collect();
    assert!(missing.is_empty(), "missing or different: {missing:#?}\n{text}");
    // The filter in front of state.redb: set by the first purge (at start), never past storage.filter_bytes.
    let filter = text.lines().find_map(|l| l.strip_prefix("hookgate_state_filter_bytes ")).map(|v| v.parse::<f64>());
    assert!(matches!(filter, Some(Ok(b)) if b > 0.0 && b <= 16.0 * 1024.0 * 1024.0), "{filter:?}");
    // The record log's rows in memory: set with it (no events yet at start, so none).
    assert!(text.lines().any(|l| l == "hookgate_state_log_rows 0"), "{text}");
    // Every answer a provider saw that was not 2xx is counted, once, with a reason.
    let sum = |prefix: &str, keep: &dyn Fn(&str) -> bool| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && keep(l))
            .map(|l| metric_value(l, l.split(' ').next().unwrap_or("")))
            .sum()
    };
    let non_2xx = sum("hookgate_requests_total{", &|l| !l.contains("code=\"2"));
    let errors = sum("hookgate_posting_errors_total{", &|_| true);
    assert_eq!((non_2xx, errors), (7.0, 7.0));
    routed.close().await;
    im.close().await;
    gw.stop().await;
}
