//! InstaMed polling (SPEC §8) end to end: a real gateway, the real RabbitMQ, and a fake of InstaMed's SOAP and
//! NVP endpoints over real HTTP (`poll/fake.rs`). Intervals and lives are short (100 ms / a few seconds).

mod fake;
mod load;
mod outcomes;
mod register;
mod restart;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;

use crate::support::{Gateway, Resp};
pub use fake::{Fake, Reply, SAMPLE_TOKEN, SAMPLE_TX};

/// Credentials of the registering service (`[pollers.instamed.auth] basic`).
pub const SVC_USER: &str = "billing-svc";
pub const SVC_PASSWORD: &str = "svc-secret-7f3a";
/// The SSO password the poller sends InstaMed.
pub const SSO_PASSWORD: &str = "sso-pass-<&>-91";
pub const INSTAMED_PASSWORD: &str = "im-webhook-pw";

/// The instamed source and its poller against `fake`; `extra` goes into `[pollers.instamed]`.
pub fn config(fake: &Fake, sso_url: Option<&str>, extra: &str) -> String {
    format!(
        "[sources.instamed]\npreset = \"instamed\"\n[sources.instamed.auth]\n\
         basic = [{{ username = \"instamed\", password = \"{INSTAMED_PASSWORD}\" }}]\n\
         [pollers.instamed]\nsource = \"instamed\"\nsso_url = \"{}\"\nnvp_url = \"{}\"\naccount_id = \"acct-1001\"\n\
         alias = \"hookgate-alias\"\npassword = \"{}\"\nmerchant_id = \"6011000551245\"\nstore_id = \"001\"\n\
         terminal_id = \"002\"\n{}{extra}\n\
         [pollers.instamed.auth]\nbasic = [{{ username = \"{SVC_USER}\", password = \"{SVC_PASSWORD}\" }}]\n",
        sso_url.map(str::to_string).unwrap_or_else(|| fake.sso_url()),
        fake.nvp_url(),
        SSO_PASSWORD,
        defaults(extra),
    )
}

/// The short test cadence, minus the keys `extra` sets itself.
fn defaults(extra: &str) -> String {
    [("interval", "\"100ms\""), ("token_ttl", "\"2s\""), ("request_timeout", "\"300ms\"")]
        .iter()
        .filter(|(k, _)| !extra.lines().any(|l| l.trim_start().starts_with(&format!("{k} "))))
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect()
}

pub async fn start(fake: &Fake, extra: &str) -> Gateway {
    Gateway::start_with(&config(fake, None, extra), &crate::support::amqp_url(), HashMap::new()).await
}

pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

pub fn svc_auth() -> String {
    basic(SVC_USER, SVC_PASSWORD)
}

/// `POST /poll/instamed` with `{"token": token}` as the registering service.
pub async fn register(gw: &Gateway, token: &str) -> Resp {
    let auth = svc_auth();
    let body = serde_json::json!({ "token": token }).to_string();
    gw.post("/poll/instamed", &[("content-type", "application/json"), ("authorization", &auth)], body.as_bytes()).await
}

/// `GET /poll/instamed/<token>`: status and the JSON answer.
pub async fn job(gw: &Gateway, token: &str) -> (u16, serde_json::Value) {
    let auth = svc_auth();
    let r = gw.request("GET", &format!("/poll/instamed/{token}"), &[("authorization", &auth)], b"").await;
    (r.status, serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null))
}

/// Waits (up to 15 s) until the job is in `state`; returns its JSON.
pub async fn wait_state(gw: &Gateway, token: &str, state: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..300 {
        let (status, json) = job(gw, token).await;
        if status == 200 && json["state"] == state {
            return json;
        }
        last = json;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job did not reach {state} within 15 s: {last}");
}

/// A token no other test uses (base64-ish, like InstaMed's).
pub fn token() -> String {
    base64::engine::general_purpose::STANDARD.encode(crate::support::unique("sso"))
}

pub fn requests(call: &str, outcome: &str) -> String {
    format!("hookgate_poll_requests_total{{call=\"{call}\",outcome=\"{outcome}\",poller=\"instamed\"}}")
}

pub fn jobs(state: &str) -> String {
    format!("hookgate_poll_jobs{{poller=\"instamed\",state=\"{state}\"}}")
}
