//! `hookgate sign` prints the headers a provider would send; a delivery with them is accepted.

use std::collections::HashMap;
use std::process::Command;

use super::{expect, expect_published};
use crate::support::{amqp_url, Gateway};

const SOURCES: &str = r#"
[sources.tyro]
preset = "generic"
[sources.tyro.auth]
hmac = { scheme = "tyro", secrets_env = ["HOOKGATE_TEST_TYRO_SECRET"] }
[sources.sw]
preset = "generic"
[sources.sw.auth]
hmac = { scheme = "standard-webhooks", secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] }
[sources.open]
preset = "generic"
unauthenticated = true
"#;

fn sign(config: &str, source: &str, body: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["sign", "--config", config, "--source", source, "--body", body])
        .env("HOOKGATE_TEST_TYRO_SECRET", "tyro-secret")
        .output()
        .expect("run hookgate");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_headers_are_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("hookgate.toml");
    std::fs::write(&config, SOURCES).expect("write");
    let config = config.to_str().expect("path");
    let env = HashMap::from([("HOOKGATE_TEST_TYRO_SECRET".to_string(), "tyro-secret".to_string())]);
    let gw = Gateway::start_with(SOURCES, &amqp_url(), env).await;
    let mut q = gw.queue("#").await;
    let mut published = Vec::new();
    for (n, source) in ["tyro", "sw"].into_iter().enumerate() {
        let body = format!("{{\n  \"event\": \"signed.by-cli\",\n  \"n\": {n}\n}}\n");
        let file = dir.path().join(format!("{source}.json"));
        std::fs::write(&file, &body).expect("write");
        let (code, out, err) = sign(config, source, file.to_str().expect("path"));
        assert_eq!(code, 0, "{err}");
        let headers: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once(": ")).collect();
        assert!(headers.len() >= 2, "{out}");
        let mut all = headers.clone();
        all.push(("content-type", "application/json"));
        expect(&gw.post(&format!("/webhooks/{source}"), &all, body.as_bytes()).await, 200, "Stored", source);
        published.push(body.into_bytes());
    }
    expect_published(&mut q, &published).await;
    q.close().await;
    gw.stop().await;
    let body = dir.path().join("tyro.json");
    let body = body.to_str().expect("path");
    for (source, file, expected) in [
        ("nope", body, "no source named"),
        ("open", body, "has no hmac method"),
        ("tyro", "/nonexistent/body.json", "cannot read the body file"),
    ] {
        let (code, _, err) = sign(config, source, file);
        assert_eq!(code, 64, "{source}: {err}");
        assert!(err.contains(expected), "{source}: {err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_hookgate")).args(["sign", "--config", config]).output().expect("run");
    assert_eq!(out.status.code(), Some(64), "--source and --body are required");
}
