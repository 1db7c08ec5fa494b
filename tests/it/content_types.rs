//! Each preset takes the content types its provider sends (SPEC §1, §2); anything else is `415 Unsupported Media
//! Type`, counted, and nothing is published. A source's `content_types` list overrides the preset's.

use std::time::Duration;

use crate::support::{fixture, Gateway};

const SOURCES: &str = r#"
[sources.card]
preset = "prepaid-card"
unauthenticated = true

[sources.tyro]
preset = "tyro"
path = "/webhooks/tyro"
unauthenticated = true

[sources.card-xml]
preset = "prepaid-card"
unauthenticated = true
content_types = ["Application/XML", "application/json"]

[sources.generic]
preset = "generic"
unauthenticated = true
"#;

const XML: &[u8] = b"<Transaction><TransactionId>ct-1</TransactionId><MessageType>PP</MessageType></Transaction>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_preset_takes_its_providers_types_and_content_types_overrides() {
    let gw = Gateway::start(SOURCES).await;
    let mut q = gw.queue("#").await;
    let refused = [
        ("/webhooks/card", "application/xml", XML.to_vec()),
        ("/webhooks/card", "application/x-www-form-urlencoded", b"TransactionId=ct-2".to_vec()),
        ("/webhooks/tyro", "text/xml", XML.to_vec()),
        // The override lists exact types: text/xml is not application/xml.
        ("/webhooks/card-xml", "text/xml", XML.to_vec()),
    ];
    for (path, ct, body) in &refused {
        let r = gw.post(path, &[("content-type", ct)], body).await;
        assert_eq!((r.status, r.reason.as_str()), (415, "Unsupported Media Type"), "{ct} to {path}");
    }
    assert!(q.next(Duration::from_millis(300)).await.is_none(), "nothing published");
    let reason = |s: &str| format!("hookgate_posting_errors_total{{reason=\"unsupported_media_type\",source=\"{s}\"}}");
    assert_eq!(gw.metric(&reason("card")).await, 2.0);
    assert_eq!(gw.metric(&reason("tyro")).await, 1.0);
    assert_eq!(gw.metric(&reason("card-xml")).await, 1.0);
    assert_eq!(gw.metric("hookgate_requests_total{code=\"415\",source=\"card\"}").await, 2.0);

    let accepted = [
        ("/webhooks/card", "application/json", fixture("prepaid-card-purchase.json")),
        ("/webhooks/card-xml", "application/xml; charset=utf-8", XML.to_vec()),
        ("/webhooks/generic", "text/xml", XML.to_vec()),
        ("/webhooks/generic", "application/x-www-form-urlencoded", b"event=a.b&id=1".to_vec()),
    ];
    for (path, ct, body) in &accepted {
        let r = gw.post(path, &[("content-type", ct)], body).await;
        assert_eq!((r.status, r.reason.as_str()), (200, "Stored"), "{ct} to {path}");
        let m = q.next(Duration::from_secs(5)).await.expect("published");
        assert_eq!(&m.body, body);
        assert_eq!(m.props.content_type().as_ref().map(|s| s.as_str()), Some(*ct));
    }
    q.close().await;
    gw.stop().await;
}
