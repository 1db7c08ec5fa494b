//! Realistic deliveries of every preset become exactly one CloudEvent each; bad deliveries get SPEC §2's status
//! and publish nothing.

use std::time::Duration;

use base64::Engine;

use crate::support::{fixture, Gateway, Message, Queue};

const SOURCES: &str = r#"
[sources.instamed]
preset = "instamed"
[sources.instamed.auth]
basic = [{ username = "instamed", password = "s3cret-pw" }]

[sources.tyro]
preset = "tyro"
path = "/tyro/{transactionId}/{event}"
[sources.tyro.auth]
headers = { sessionKey = { value = "tyro-session" } }

[sources.tyro-post]
preset = "tyro"
path = "/webhooks/tyro"
[sources.tyro-post.auth]
headers = { sessionKey = { value = "tyro-session" } }

[sources.card]
preset = "prepaid-card"
unauthenticated = true

[sources.sw]
preset = "standard-webhooks"
unauthenticated = true

[sources.generic]
preset = "generic"
unauthenticated = true
max_body_bytes = 1024
"#;

/// method, path, headers, body, expected status, expected reason.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);

const WAIT: Duration = Duration::from_secs(5);

fn basic(user: &str, pw: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}")))
}

async fn gateway() -> (Gateway, Queue) {
    let gw = Gateway::start(SOURCES).await;
    let q = gw.queue("#").await;
    (gw, q)
}

/// Every CloudEvents attribute of SPEC §4.
fn assert_cloudevent(m: &Message, source: &str, kind: &str, id: &str, subject: Option<&str>, ct: &str, body: &[u8]) {
    let rk = format!("{source}.{kind}");
    assert_eq!(m.routing_key, rk);
    assert_eq!(m.body, body, "body bytes unchanged");
    assert_eq!(m.props.content_type().as_ref().map(|s| s.as_str()), Some(ct));
    assert_eq!(m.props.message_id().as_ref().map(|s| s.as_str()), Some(id));
    assert_eq!(m.props.delivery_mode(), &Some(2), "persistent");
    let now = chrono::Utc::now().timestamp() as u64;
    let ts = m.props.timestamp().expect("timestamp");
    assert!(ts <= now && now - ts < 60, "timestamp is the receipt time");
    assert_eq!(m.text("cloudEvents_specversion").as_deref(), Some("1.0"));
    assert_eq!(m.text("cloudEvents_id").as_deref(), Some(id));
    assert_eq!(m.text("cloudEvents_source"), Some(format!("/sources/{source}")));
    assert_eq!(m.text("cloudEvents_type"), Some(rk));
    assert_eq!(m.text("cloudEvents_subject").as_deref(), subject);
    let time = m.text("cloudEvents_time").expect("cloudEvents_time");
    chrono::DateTime::parse_from_rfc3339(&time).expect("RFC 3339 time");
    assert_eq!(m.header("cloudEvents_outoforder"), None);
}

/// An event answered `200 Stored` from the spool during an outage is published later with every attribute of
/// SPEC §4, as a direct publish would be: the receipt time as `timestamp`, the provider's time, subject, type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_spooled_in_an_outage_is_published_with_every_attribute() {
    let proxy = crate::support::Proxy::start().await;
    let gw = Gateway::start_opts(SOURCES, &proxy.url(), Default::default(), Default::default()).await;
    gw.wait_ready().await;
    let mut q = gw.queue("#").await;
    proxy.cut();
    gw.wait_metric("hookgate_broker_connected", 0.0).await;
    let body = fixture("prepaid-card-purchase.json");
    let r = gw.post("/webhooks/card", &[("content-type", "application/json")], &body).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    assert_eq!(gw.metric("hookgate_spool_events").await, 1.0, "answered from the spool");
    proxy.restore().await;
    let m = q.exactly_one(WAIT).await;
    assert_card_purchase(&m, &body);
    q.close().await;
    gw.stop().await;
}

/// SPEC §5's default `max_body_bytes` (1048576), end to end on a source that does not set it: a body of exactly
/// that size is stored, one byte more is `413`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_body_cap_is_one_mebibyte() {
    let (gw, mut q) = gateway().await;
    let body = |len: usize| {
        let mut b = br#"{"TransactionId":"cap-1","MessageType":"0200","TransactionCode":"PP80DS","Pad":""#.to_vec();
        b.resize(len - 2, b'x');
        b.extend_from_slice(b"\"}");
        b
    };
    let hdrs = [("content-type", "application/json")];
    let r = gw.post("/webhooks/card", &hdrs, &body(1_048_577)).await;
    assert_eq!((r.status, r.reason.as_str()), (413, "Payload Too Large"));
    let r = gw.post("/webhooks/card", &hdrs, &body(1_048_576)).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    assert_eq!(q.exactly_one(WAIT).await.body.len(), 1_048_576);
    q.close().await;
    gw.stop().await;
}

/// The message of the card processor's published sample (`prepaid-card-purchase.json`), posted to `card`.
fn assert_card_purchase(m: &Message, body: &[u8]) {
    let id = "967297ae-e208-4268-a0ea-e1bea1d1b75d";
    assert_cloudevent(m, "card", "transaction.purchase", id, Some(id), "application/json", body);
    assert_eq!(m.text("cloudEvents_time").as_deref(), Some("2025-04-18T14:55:28Z"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepaid_card_transaction_sample() {
    let (gw, mut q) = gateway().await;
    let body = fixture("prepaid-card-purchase.json");
    let r = gw.post("/webhooks/card", &[("content-type", "application/json")], &body).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    let m = q.exactly_one(WAIT).await;
    assert_card_purchase(&m, &body);
    assert_eq!(gw.metric("hookgate_events_total{source=\"card\",type=\"transaction.purchase\"}").await, 1.0);
    assert_eq!(gw.metric("hookgate_requests_total{code=\"200\",source=\"card\"}").await, 1.0);
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instamed_json_xml_and_nvp() {
    let (gw, mut q) = gateway().await;
    let auth = basic("instamed", "s3cret-pw");
    let cases = [
        ("instamed-approved.json", "application/json", "payment.approved", "0ca7530a86084b468fff132ab7f04491"),
        (
            "instamed-settlement.xml",
            "application/xml; charset=utf-8",
            "payment.settlement",
            "7f3c2a1b9e8d4c6fa0b1c2d3e4f5a6b7",
        ),
        (
            "instamed-refunded.nvp",
            "application/x-www-form-urlencoded",
            "payment.refunded",
            "0ca7530a86084b468fff132ab7f04491",
        ),
    ];
    for (file, ct, kind, tx) in cases {
        let body = fixture(file);
        let r = gw.post("/webhooks/instamed", &[("content-type", ct), ("authorization", &auth)], &body).await;
        assert_eq!((r.status, r.reason.as_str()), (200, "Stored"), "{file}");
        let m = q.exactly_one(WAIT).await;
        assert_cloudevent(&m, "instamed", kind, &format!("{tx}:{kind}"), Some(tx), ct, &body);
    }
    // NVP as InstaMed's own page prints it, values not percent-encoded (spaces, `$`), and a `%` and an `&` inside
    // values: read as browsers read forms (a `%` that starts no escape is itself; a piece without `=` is a name),
    // so the event's fields still come through — not `400`, which InstaMed would retry and then give up on.
    let raw = "responseMessage=Partially Approved $1.00&authorizationText=I AGREE 100%&cardHolderName=Smith & Sons\
               &TransactionStatus=Voided&TransactionID=1f2e3d4c5b6a79880000000000000000";
    let ct = "application/x-www-form-urlencoded";
    let r = gw.post("/webhooks/instamed", &[("content-type", ct), ("authorization", &auth)], raw.as_bytes()).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    let (tx, kind) = ("1f2e3d4c5b6a79880000000000000000", "payment.voided");
    let m = q.exactly_one(WAIT).await;
    assert_cloudevent(&m, "instamed", kind, &format!("{tx}:{kind}"), Some(tx), ct, raw.as_bytes());
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tyro_by_post_and_by_get() {
    let (gw, mut q) = gateway().await;
    let body = fixture("tyro-approved.json");
    let hdrs = [("content-type", "application/json"), ("sessionKey", "tyro-session")];
    let r = gw.post("/webhooks/tyro", &hdrs, &body).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    let m = q.exactly_one(WAIT).await;
    let id = "5f7b1c2e9a3d4b0012345678:healthfundapprovedinvoice:2021-01-13T04:23:50.659Z";
    let tx = "5f7b1c2e9a3d4b0012345678";
    assert_cloudevent(&m, "tyro-post", "healthfundapprovedinvoice", id, Some(tx), "application/json", &body);
    assert_eq!(m.text("cloudEvents_time").as_deref(), Some("2021-01-13T04:23:50.659Z"));

    let r = gw.request("GET", "/tyro/tx-77/paid?attempt=2", &[("sessionKey", "tyro-session")], b"").await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    let m = q.exactly_one(WAIT).await;
    let published = br#"{"transactionId":"tx-77","event":"paid","attempt":"2"}"#;
    assert_cloudevent(
        &m,
        "tyro",
        "healthfundpaidinvoice",
        "tx-77:healthfundpaidinvoice",
        Some("tx-77"),
        "application/json",
        published,
    );
    let r = gw.request("DELETE", "/tyro/tx-77/rejected", &[("sessionKey", "tyro-session")], b"").await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    assert_eq!(q.exactly_one(WAIT).await.routing_key, "tyro.healthfundrejectedinvoice");
    // PUT, the fourth of Tyro's methods (SPEC §1), with a JSON body: published as sent.
    let put = br#"{"note":"by put"}"#;
    let hdrs = [("sessionKey", "tyro-session"), ("content-type", "application/json")];
    let r = gw.request("PUT", "/tyro/tx-80/approved", &hdrs, put).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    let m = q.exactly_one(WAIT).await;
    assert_eq!((m.routing_key.as_str(), m.body.as_slice()), ("tyro.healthfundapprovedinvoice", &put[..]));

    // Tyro sends the headers a client asked for with every webhook: a body-less GET that names a content type is
    // still body-less (published as its path and query), while an empty POST is a body that does not parse.
    let hdrs = [("sessionKey", "tyro-session"), ("content-type", "text/plain")];
    let r = gw.request("GET", "/tyro/tx-78/approved", &hdrs, b"").await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    let m = q.exactly_one(WAIT).await;
    assert_eq!(m.routing_key, "tyro.healthfundapprovedinvoice");
    assert_eq!(m.props.content_type().as_ref().map(|s| s.as_str()), Some("application/json"));
    assert_eq!(m.body, br#"{"transactionId":"tx-78","event":"approved"}"#);
    let hdrs = [("sessionKey", "tyro-session"), ("content-type", "application/json")];
    let r = gw.request("POST", "/tyro/tx-79/approved", &hdrs, b"").await;
    assert_eq!((r.status, r.reason.as_str()), (400, "Malformed Body"));
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_delivery() {
    let (gw, mut q) = gateway().await;
    let body = fixture("standard-webhooks.json");
    let hdrs = [
        ("content-type", "application/json"),
        ("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"),
        ("webhook-timestamp", "1714564800"),
    ];
    let r = gw.post("/webhooks/sw", &hdrs, &body).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    let m = q.exactly_one(WAIT).await;
    assert_cloudevent(&m, "sw", "invoice.paid", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", None, "application/json", &body);
    assert_eq!(m.text("cloudEvents_time").as_deref(), Some("2024-05-01T12:00:00Z"));
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_a_duplicate_and_is_not_published_again() {
    let (gw, mut q) = gateway().await;
    let body = fixture("prepaid-card-purchase.json");
    let r = gw.post("/webhooks/card", &[("content-type", "application/json")], &body).await;
    assert_eq!(r.status, 200);
    let r = gw.post("/webhooks/card", &[("content-type", "application/json")], &body).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Duplicate"));
    q.exactly_one(WAIT).await;
    assert_eq!(gw.metric("hookgate_retries_total{source=\"card\"}").await, 1.0);
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deliveries_get_their_status_and_publish_nothing() {
    let (gw, mut q) = gateway().await;
    let auth = basic("instamed", "s3cret-pw");
    let wrong = basic("instamed", "wrong");
    let json = [("content-type", "application/json")];
    let cases: Vec<Case> = vec![
        ("POST", "/webhooks/generic", json.to_vec(), b"{\"event\": ".to_vec(), 400, "Malformed Body"),
        (
            "POST",
            "/webhooks/instamed",
            vec![("content-type", "text/xml"), ("authorization", &auth)],
            b"<Webhook><TransactionID>1</Webhook>".to_vec(),
            400,
            "Malformed Body",
        ),
        (
            "POST",
            "/webhooks/instamed",
            vec![("content-type", "application/x-www-form-urlencoded"), ("authorization", &auth)],
            br#"{"TransactionID":"1"}"#.to_vec(),
            400,
            "Malformed Body",
        ),
        (
            "POST",
            "/webhooks/generic",
            vec![("content-type", "text/plain")],
            b"hello".to_vec(),
            415,
            "Unsupported Media Type",
        ),
        ("POST", "/webhooks/generic", vec![], b"{}".to_vec(), 415, "Unsupported Media Type"),
        ("POST", "/webhooks/generic", json.to_vec(), vec![b' '; 2048], 413, "Payload Too Large"),
        ("POST", "/webhooks/nowhere", json.to_vec(), b"{}".to_vec(), 404, "Not Found"),
        ("GET", "/webhooks/generic", vec![], vec![], 405, "Method Not Allowed"),
        (
            "POST",
            "/webhooks/instamed",
            vec![("content-type", "application/json"), ("authorization", &wrong)],
            fixture("instamed-approved.json"),
            401,
            "Unauthorized",
        ),
        (
            "POST",
            "/webhooks/tyro",
            vec![("content-type", "application/json"), ("sessionKey", "nope")],
            fixture("tyro-approved.json"),
            401,
            "Unauthorized",
        ),
    ];
    for (method, path, headers, body, status, reason) in &cases {
        let r = gw.request(method, path, headers, body).await;
        assert_eq!((r.status, r.reason.as_str()), (*status, *reason), "{method} {path}");
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains("TransactionID") && !text.contains("s3cret"), "answer echoes input: {text}");
    }
    let r = gw.request("GET", "/webhooks/generic", &[], b"").await;
    assert_eq!(r.headers["allow"], "POST");
    let r = gw.post("/webhooks/instamed", &[("content-type", "application/json")], b"{}").await;
    assert!(r.headers["www-authenticate"].to_str().unwrap().starts_with("Basic "));
    assert!(q.next(Duration::from_millis(500)).await.is_none(), "nothing published");
    assert_eq!(gw.metric("hookgate_posting_errors_total{reason=\"too_large\",source=\"generic\"}").await, 1.0);
    assert_eq!(gw.metric("hookgate_posting_errors_total{reason=\"malformed\",source=\"instamed\"}").await, 2.0);
    assert_eq!(gw.metric("hookgate_posting_errors_total{reason=\"not_found\",source=\"unmatched\"}").await, 1.0);
    assert_eq!(gw.metric("hookgate_auth_failures_total{method=\"basic\",source=\"instamed\"}").await, 2.0);
    q.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_chunked_body_and_ambiguous_framing() {
    let (gw, mut q) = gateway().await;
    let chunk = format!("400\r\n{}\r\n", "a".repeat(0x400));
    let req = format!(
        "POST /webhooks/generic HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n"
    );
    let answer = gw.raw(req.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413 Payload Too Large"), "{answer}");
    assert!(q.next(Duration::from_millis(300)).await.is_none(), "nothing published");
    // Both Content-Length and Transfer-Encoding: RFC 9112 §6.3 — refused, or read by Transfer-Encoding alone,
    // never framed by the Content-Length (which would cut the JSON to `{"eve`).
    let req = "POST /webhooks/generic HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\ne\r\n{\"event\":\"te\"}\r\n0\r\n\r\n";
    let answer = gw.raw(req.as_bytes()).await;
    if answer.starts_with("HTTP/1.1 200 Stored") {
        assert_eq!(q.exactly_one(Duration::from_secs(5)).await.body, br#"{"event":"te"}"#);
    } else {
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(q.next(Duration::from_millis(300)).await.is_none(), "nothing published");
    }
    q.close().await;
    gw.stop().await;
}
