//! `basic` (with rotation) and static `headers`.

use std::collections::HashMap;

use base64::Engine;

use super::{expect, expect_published};
use crate::support::{amqp_url, Gateway, Pki};

const SOURCES: &str = r#"
[sources.instamed]
preset = "generic"
[sources.instamed.auth]
basic = [
  { username = "instamed", password = "current-pw" },
  { username = "instamed", password_env = "HOOKGATE_TEST_NEXT_PW" },
]
[sources.tyro]
preset = "generic"
[sources.tyro.auth]
headers = { sessionKey = { value = "tyro-session" } }
"#;

fn basic(user: &str, pw: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}")))
}

fn body(n: u32) -> Vec<u8> {
    format!(r#"{{"event":"basic.test","n":{n}}}"#).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_credentials_and_static_headers() {
    let pki = Pki::new();
    let env = HashMap::from([("HOOKGATE_TEST_NEXT_PW".to_string(), "next-pw".to_string())]);
    let mut gw = Gateway::start_with(&format!("{}{SOURCES}", pki.server_toml(false)), &amqp_url(), env).await;
    gw.tls = Some(pki.client_config(None, &[b"http/1.1"]));
    let mut q = gw.queue("#").await;
    let post = |path: &'static str, header: Option<(&'static str, String)>, b: Vec<u8>| {
        let gw = &gw;
        async move {
            let mut headers = vec![("content-type", "application/json")];
            headers.extend(header.as_ref().map(|(k, v)| (*k, v.as_str())));
            gw.post(path, &headers, &b).await
        }
    };
    let auth = |v: String| Some(("authorization", v));
    for (case, value) in [
        ("retired password", auth(basic("instamed", "retired-pw"))),
        ("wrong user", auth(basic("someone", "current-pw"))),
        ("no credentials", None),
        ("not base64", auth("Basic !!!".into())),
        ("bearer instead", auth("Bearer abc".into())),
    ] {
        let r = post("/webhooks/instamed", value, body(0)).await;
        expect(&r, 401, "Unauthorized", case);
        let challenge = r.headers["www-authenticate"].to_str().expect("ascii");
        assert!(challenge.starts_with("Basic realm="), "{case}: {challenge}");
    }
    let session = |v: &str| Some(("sessionKey", v.to_string()));
    for (case, value) in
        [("wrong value", session("other")), ("longer value", session("tyro-session2")), ("missing", None)]
    {
        expect(&post("/webhooks/tyro", value, body(0)).await, 401, "Unauthorized", case);
    }
    expect(&post("/webhooks/instamed", auth(basic("instamed", "current-pw")), body(1)).await, 200, "Stored", "current");
    expect(&post("/webhooks/instamed", auth(basic("instamed", "next-pw")), body(2)).await, 200, "Stored", "next");
    expect(&post("/webhooks/tyro", session("tyro-session"), body(3)).await, 200, "Stored", "sessionKey");
    expect_published(&mut q, &[body(1), body(2), body(3)]).await;
    assert_eq!(gw.metric("hookgate_auth_failures_total{method=\"basic\",source=\"instamed\"}").await, 5.0);
    assert_eq!(gw.metric("hookgate_auth_failures_total{method=\"headers\",source=\"tyro\"}").await, 3.0);
    q.close().await;
    gw.stop().await;
}
