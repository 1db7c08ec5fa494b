//! The registration API: 202 once durable, one job per token, 400/401/404/405/413 answers, job state as JSON.

use super::{basic, jobs, register, start, svc_auth, token, Fake, Reply};

#[tokio::test]
async fn registration_answers() {
    let fake = Fake::start().await;
    let gw = start(&fake, "token_ttl = \"60s\"\ninterval = \"1s\"").await;
    let t = token();
    fake.script(&t, vec![Reply::Status("NEW")]);

    let r = register(&gw, &t).await;
    assert_eq!((r.status, r.reason.as_str()), (202, "Accepted"));
    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(json["state"], "pending");
    assert!(json["registered_at"].as_str().is_some_and(|s| s.ends_with('Z')), "{json}");
    assert!(!String::from_utf8_lossy(&r.body).contains(&t), "the answer never echoes the token");
    // The same token again: the same job.
    let again = register(&gw, &t).await;
    assert_eq!(again.status, 202);
    let again: serde_json::Value = serde_json::from_slice(&again.body).unwrap();
    assert_eq!(again["registered_at"], json["registered_at"]);
    assert_eq!(gw.metric(&jobs("pending")).await, 1.0);

    let state = super::wait_state(&gw, &t, "pending").await;
    assert!(state["attempts"].as_u64().is_some(), "attempts is a number: {state}");

    let auth = svc_auth();
    let json_ct = ("content-type", "application/json");
    for (body, why) in [
        (b"{not json".to_vec(), "bad JSON"),
        (br#"{"tok":"abc"}"#.to_vec(), "no token"),
        (br#"{"token":""}"#.to_vec(), "empty token"),
        (br#"{"token":42}"#.to_vec(), "token not a string"),
        (format!(r#"{{"token":"{}"}}"#, "A".repeat(257)).into_bytes(), "oversized token"),
        (br#"{"token":"has space"}"#.to_vec(), "bad characters"),
    ] {
        let r = gw.post("/poll/instamed", &[json_ct, ("authorization", &auth)], &body).await;
        assert_eq!((r.status, r.reason.as_str()), (400, "Malformed Body"), "{why}");
    }
    let big = format!(r#"{{"token":"x","pad":"{}"}}"#, "p".repeat(5000));
    let r = gw.post("/poll/instamed", &[json_ct, ("authorization", &auth)], big.as_bytes()).await;
    assert_eq!((r.status, r.reason.as_str()), (413, "Payload Too Large"));

    let body = br#"{"token":"Zm9vYmFy"}"#;
    let r = gw.post("/poll/instamed", &[json_ct], body).await;
    assert_eq!((r.status, r.reason.as_str()), (401, "Unauthorized"));
    assert!(r.headers.get("www-authenticate").is_some_and(|v| v.to_str().unwrap().starts_with("Basic")));
    let wrong = basic(super::SVC_USER, "wrong");
    let r = gw.post("/poll/instamed", &[json_ct, ("authorization", &wrong)], body).await;
    assert_eq!(r.status, 401);
    // The webhook's credentials are not the registration's.
    let im = basic("instamed", super::INSTAMED_PASSWORD);
    assert_eq!(gw.post("/poll/instamed", &[json_ct, ("authorization", &im)], body).await.status, 401);
    let r = gw.request("GET", &format!("/poll/instamed/{t}"), &[], b"").await;
    assert_eq!(r.status, 401, "reading a job needs credentials too");
    assert_eq!(gw.metric("hookgate_auth_failures_total{method=\"basic\",source=\"instamed\"}").await, 4.0);

    let (status, _) = super::job(&gw, "Zm9vYmFy").await;
    assert_eq!(status, 404, "never registered");
    let r = gw.request("PUT", "/poll/instamed", &[("authorization", &auth)], b"{}").await;
    assert_eq!((r.status, r.headers.get("allow").map(|v| v.to_str().unwrap().to_string())), (405, Some("POST".into())));
    assert_eq!(gw.metric(&jobs("pending")).await, 1.0, "refused registrations make no job");
    assert!(fake.soap_calls("Zm9vYmFy").is_empty());
    gw.stop().await;
}

/// A token of base64's `+` and `/` is read back under its own path, one segment: its `/` percent-encoded.
#[tokio::test]
async fn a_token_holding_slash_and_plus_is_read_under_its_encoded_path() {
    let fake = Fake::start().await;
    let gw = start(&fake, "token_ttl = \"60s\"\ninterval = \"1s\"").await;
    let slashed = "Zm9v+YmFy/YmF6==";
    fake.script(slashed, vec![Reply::Status("NEW")]);
    assert_eq!(register(&gw, slashed).await.status, 202);
    for path in ["/poll/instamed/Zm9v+YmFy%2FYmF6==", "/poll/instamed/Zm9v%2BYmFy%2FYmF6%3D%3D"] {
        let r = gw.request("GET", path, &[("authorization", &svc_auth())], b"").await;
        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        assert_eq!((r.status, json["state"].as_str()), (200, Some("pending")), "{path}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn concurrent_registrations_of_one_token_are_one_job_and_max_jobs_holds() {
    let fake = Fake::start().await;
    let gw = start(&fake, "token_ttl = \"60s\"\ninterval = \"1s\"\nmax_jobs = 3").await;
    let t = token();
    let answers = futures_util::future::join_all((0..10).map(|_| register(&gw, &t))).await;
    let registered: Vec<_> = answers
        .iter()
        .map(|r| {
            assert_eq!(r.status, 202);
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["registered_at"].clone()
        })
        .collect();
    assert!(registered.iter().all(|r| *r == registered[0]), "one job: {registered:?}");
    assert_eq!(gw.metric(&jobs("pending")).await, 1.0);
    for _ in 0..2 {
        assert_eq!(register(&gw, &token()).await.status, 202);
    }
    let r = register(&gw, &token()).await;
    assert_eq!((r.status, r.reason.as_str()), (503, "Too Many Jobs"));
    assert_eq!(r.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("5"));
    assert_eq!(register(&gw, &t).await.status, 202, "a known token is still answered");
    assert_eq!(gw.metric(&jobs("pending")).await, 3.0);
    gw.stop().await;
}
