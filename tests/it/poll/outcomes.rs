//! What a job publishes: the receipt once (NEW, NEW, COMPLETE), `sso.expired` (EXPIRED, or NEW past the life),
//! one message with a webhook of the same transaction, retries through upstream errors, `sso.expired` after them.

use std::time::Duration;

use super::fake::receipt;
use super::{jobs, register, requests, start, token, wait_state, Fake, Reply, SAMPLE_TOKEN, SAMPLE_TX};
use crate::support::Gateway;

const NVP: [(&str, &str); 1] = [("content-type", "application/x-www-form-urlencoded")];

#[tokio::test]
async fn new_new_complete_publishes_the_receipt_once() {
    let fake = Fake::start().await;
    let gw = start(&fake, "").await;
    let mut q = gw.queue("instamed.#").await;
    fake.script(SAMPLE_TOKEN, vec![Reply::Status("NEW"), Reply::Status("NEW"), Reply::Status("COMPLETE")]);
    assert_eq!(register(&gw, SAMPLE_TOKEN).await.status, 202);

    let m = q.exactly_one(Duration::from_secs(10)).await;
    assert_eq!(m.body, receipt(SAMPLE_TX).into_bytes(), "the NVP answer, unchanged");
    assert_eq!(m.routing_key, "instamed.payment.d", "transactionStatus=D of the sample");
    assert_eq!(m.props.message_id().as_ref().map(|s| s.as_str()), Some(format!("{SAMPLE_TX}:payment.d").as_str()));
    assert_eq!(m.props.content_type().as_ref().map(|s| s.as_str()), Some("application/x-www-form-urlencoded"));
    assert_eq!(m.props.delivery_mode(), &Some(2));
    assert_eq!(m.text("cloudEvents_specversion").as_deref(), Some("1.0"));
    assert_eq!(m.text("cloudEvents_source").as_deref(), Some("/sources/instamed"));
    assert_eq!(m.text("cloudEvents_type").as_deref(), Some("instamed.payment.d"));
    assert_eq!(m.text("cloudEvents_subject").as_deref(), Some(SAMPLE_TX));
    assert!(
        m.text("cloudEvents_time").is_some_and(|t| t.starts_with("2016-01-15T20:37:21")),
        "{:?}",
        m.text("cloudEvents_time")
    );

    let job = wait_state(&gw, SAMPLE_TOKEN, "complete").await;
    assert_eq!(job["attempts"], 4, "three status calls and one receipt: {job}");
    assert_eq!(job["event_id"], format!("{SAMPLE_TX}:payment.d"));
    assert_eq!(job["last_status"], "COMPLETE");
    assert!(job["finished_at"].is_string(), "{job}");

    let calls = fake.soap_calls(SAMPLE_TOKEN);
    assert_eq!(calls.len(), 3, "no status call after COMPLETE");
    for c in &calls {
        assert_eq!(c.soap_action.as_deref(), Some("\"http://tempuri.org/GetSSOTokenStatus\""));
        assert!(c.content_type.as_deref().is_some_and(|ct| ct.starts_with("text/xml")), "{:?}", c.content_type);
        assert!(c.body.contains("<soap:Envelope") && c.body.contains("http://schemas.xmlsoap.org/soap/envelope/"));
        assert!(c.body.contains("<GetSSOTokenStatus xmlns=\"http://tempuri.org/\">"), "{}", c.body);
        assert!(c.body.contains(&format!("<tokenID>{SAMPLE_TOKEN}</tokenID>")), "{}", c.body);
        assert!(c.body.contains("<accountID>acct-1001</accountID><alias>hookgate-alias</alias>"), "{}", c.body);
        assert!(c.body.contains("<password>sso-pass-&lt;&amp;&gt;-91</password>"), "escaped: {}", c.body);
    }
    let nvp = fake.nvp_calls();
    let expected: Vec<(String, String)> = [
        ("merchantID", "6011000551245"),
        ("storeID", "001"),
        ("terminalID", "002"),
        ("transactionAction", "ViewReceipt"),
        ("requestToken", "false"),
        ("singleSignOnToken", SAMPLE_TOKEN),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(nvp, vec![expected]);

    assert_eq!(gw.metric(&requests("token_status", "new")).await, 2.0);
    assert_eq!(gw.metric(&requests("token_status", "complete")).await, 1.0);
    assert_eq!(gw.metric(&requests("view_receipt", "ok")).await, 1.0);
    assert_eq!(gw.metric(&jobs("pending")).await, 0.0);
    assert_eq!(gw.metric(&jobs("complete")).await, 1.0);
    assert_eq!(gw.metric("hookgate_poll_duration_seconds_count{poller=\"instamed\"}").await, 1.0);
    assert_eq!(gw.metric("hookgate_events_total{source=\"instamed\",type=\"payment.d\"}").await, 1.0);
    q.close().await;
    gw.stop().await;
}

async fn expect_expired(gw: &Gateway, q: &mut crate::support::Queue, t: &str, last_status: &str) {
    let m = q.exactly_one(Duration::from_secs(10)).await;
    assert_eq!(m.routing_key, "instamed.sso.expired");
    assert_eq!(m.text("cloudEvents_type").as_deref(), Some("instamed.sso.expired"));
    assert_eq!(m.text("cloudEvents_subject").as_deref(), Some(t));
    assert_eq!(m.props.message_id().as_ref().map(|s| s.as_str()), Some(format!("{t}:sso.expired").as_str()));
    let body: serde_json::Value = serde_json::from_slice(&m.body).expect("JSON body");
    assert_eq!((body["state"].as_str(), body["token"].as_str()), (Some("expired"), Some(t)));
    let job = wait_state(gw, t, "expired").await;
    assert_eq!(job["last_status"], last_status);
}

#[tokio::test]
async fn expired_and_past_the_life_publish_sso_expired_once() {
    let fake = Fake::start().await;
    let gw = start(&fake, "token_ttl = \"1s\"").await;
    let mut q = gw.queue("instamed.#").await;
    let (gone, stays_new) = (token(), token());
    fake.script(&gone, vec![Reply::Status("NEW"), Reply::Status("expired")]);
    assert_eq!(register(&gw, &gone).await.status, 202);
    expect_expired(&gw, &mut q, &gone, "EXPIRED").await;
    assert_eq!(fake.soap_calls(&gone).len(), 2);

    fake.script(&stays_new, vec![Reply::Status("NEW")]);
    assert_eq!(register(&gw, &stays_new).await.status, 202);
    expect_expired(&gw, &mut q, &stays_new, "NEW").await;
    let calls = fake.soap_calls(&stays_new).len();
    assert!((5..=12).contains(&calls), "about one call per 100 ms for 1 s: {calls}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(fake.soap_calls(&stays_new).len(), calls, "no call after the job ended");
    assert!(fake.nvp_calls().is_empty());
    assert_eq!(gw.metric(&jobs("expired")).await, 2.0);
    q.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn a_webhook_and_a_poll_of_one_transaction_are_one_message() {
    let fake = Fake::start().await;
    let gw = start(&fake, "").await;
    let mut q = gw.queue("instamed.#").await;
    let auth = super::basic("instamed", super::INSTAMED_PASSWORD);
    let headers = [NVP[0], ("authorization", auth.as_str())];

    // The webhook first, then the poll.
    let (t1, tx1) = (token(), "1a2b3c4d5e6f40718293a4b5c6d7e8f9");
    fake.transaction(&t1, tx1);
    let r = gw.post("/webhooks/instamed", &headers, receipt(tx1).as_bytes()).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    fake.script(&t1, vec![Reply::Status("NEW"), Reply::Status("USED")]);
    assert_eq!(register(&gw, &t1).await.status, 202);
    let job = wait_state(&gw, &t1, "complete").await;
    assert_eq!(job["event_id"], format!("{tx1}:payment.d"));
    let m = q.exactly_one(Duration::from_secs(5)).await;
    assert_eq!(m.props.message_id().as_ref().map(|s| s.as_str()), Some(format!("{tx1}:payment.d").as_str()));
    assert_eq!(fake.nvp_calls().len(), 1, "the poll fetched the receipt, and found it stored");

    // The poll first, then the webhook (InstaMed's retry, or its post arriving late).
    let (t2, tx2) = (token(), "99887766554433221100ffeeddccbbaa");
    fake.transaction(&t2, tx2);
    fake.script(&t2, vec![Reply::Status("COMPLETE")]);
    assert_eq!(register(&gw, &t2).await.status, 202);
    wait_state(&gw, &t2, "complete").await;
    let r = gw.post("/webhooks/instamed", &headers, receipt(tx2).as_bytes()).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Duplicate"));
    let m = q.exactly_one(Duration::from_secs(5)).await;
    assert_eq!(m.props.message_id().as_ref().map(|s| s.as_str()), Some(format!("{tx2}:payment.d").as_str()));
    assert_eq!(gw.metric("hookgate_retries_total{source=\"instamed\"}").await, 2.0);
    q.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn upstream_errors_are_retried_then_the_receipt_is_published_once() {
    let fake = Fake::start().await;
    let gw = start(&fake, "token_ttl = \"10s\"").await;
    let mut q = gw.queue("instamed.#").await;
    let t = token();
    fake.script(
        &t,
        vec![
            Reply::Http500,
            Reply::Hang(Duration::from_millis(1500)),
            Reply::Fault,
            Reply::Garbage,
            Reply::Status("PENDING"),
            Reply::Status("Complete"),
        ],
    );
    fake.nvp_failures(vec![503]);
    assert_eq!(register(&gw, &t).await.status, 202);
    let m = q.exactly_one(Duration::from_secs(15)).await;
    assert_eq!(m.body, receipt(SAMPLE_TX).into_bytes());
    let job = wait_state(&gw, &t, "complete").await;
    assert!(job["last_error"].is_null(), "{job}");
    for (call, outcome) in [
        ("token_status", "http_5xx"),
        ("token_status", "timeout"),
        ("token_status", "soap_fault"),
        ("token_status", "invalid_answer"),
        ("token_status", "unknown_status"),
        ("view_receipt", "http_5xx"),
        ("view_receipt", "ok"),
    ] {
        assert_eq!(gw.metric(&requests(call, outcome)).await, 1.0, "{call} {outcome}");
    }
    // The receipt failure is retried from the status call (COMPLETE again, the last answer of the script).
    assert_eq!(gw.metric(&requests("token_status", "complete")).await, 2.0);
    q.close().await;
    gw.stop().await;
}

/// SPEC §8: "at `token_ttl` it publishes `<source>.sso.expired`", also when every call failed; the job's state
/// (`failed`) and the body's `state` and `last_error` say that hookgate could not tell what became of the payment.
#[tokio::test]
async fn upstream_down_for_the_whole_life_ends_failed_and_publishes_sso_expired() {
    let fake = Fake::start().await;
    let closed = format!("http://127.0.0.1:{}/Forms/WebServices/SSOService.asmx", crate::support::free_port());
    let text = super::config(&fake, Some(&closed), "token_ttl = \"1500ms\"");
    let gw = Gateway::start_with(&text, &crate::support::amqp_url(), Default::default()).await;
    let mut q = gw.queue("instamed.#").await;
    let t = token();
    assert_eq!(register(&gw, &t).await.status, 202);
    let m = q.exactly_one(Duration::from_secs(10)).await;
    assert_eq!(m.routing_key, "instamed.sso.expired");
    assert_eq!(m.text("cloudEvents_type").as_deref(), Some("instamed.sso.expired"));
    assert_eq!(m.props.message_id().as_ref().map(|s| s.as_str()), Some(format!("{t}:sso.expired").as_str()));
    assert_eq!(m.text("cloudEvents_subject").as_deref(), Some(t.as_str()));
    let body: serde_json::Value = serde_json::from_slice(&m.body).expect("JSON body");
    assert_eq!((body["state"].as_str(), body["last_error"].as_str()), (Some("failed"), Some("connect_error")));
    let job = wait_state(&gw, &t, "failed").await;
    assert_eq!(job["last_error"], "connect_error");
    let errors = gw.metric(&requests("token_status", "connect_error")).await;
    assert!((2.0..=10.0).contains(&errors), "retried with back-off, not in a tight loop: {errors}");
    assert_eq!(gw.metric(&jobs("failed")).await, 1.0);
    q.close().await;
    gw.stop().await;
}
