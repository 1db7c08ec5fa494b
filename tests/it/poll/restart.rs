//! SIGKILL of the real process with jobs pending: after the restart they complete; the jobs that had completed
//! before the kill are not polled or published again.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{config, svc_auth, token, Fake, Reply};
use crate::support::{amqp_url, delete_exchange, proc_config, unique, Client, Proc, Queue};

async fn register(client: Client, t: &str) -> u16 {
    let auth = svc_auth();
    let body = serde_json::json!({ "token": t }).to_string();
    let headers = [("content-type", "application/json"), ("authorization", auth.as_str())];
    client.try_post("/poll/instamed", &headers, body.as_bytes()).await.map_or(0, |r| r.status)
}

async fn collect(q: &mut Queue, want: usize) -> BTreeMap<String, usize> {
    let mut got = BTreeMap::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < until {
        let wait =
            if got.values().sum::<usize>() >= want { Duration::from_millis(800) } else { Duration::from_secs(2) };
        match q.next(wait).await {
            Some(m) => {
                *got.entry(m.props.message_id().as_ref().map(|s| s.to_string()).unwrap_or_default()).or_insert(0) += 1
            }
            None if got.values().sum::<usize>() >= want => break,
            None => {}
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_jobs_pending_resumes_them_and_publishes_nothing_twice() {
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = unique("hookgate-poll-crash");
    let mut q = Queue::bind(&exchange, "instamed.#").await;
    let sources = config(&fake, None, "token_ttl = \"60s\"");
    let path = proc_config(dir.path(), &exchange, &amqp_url(), &sources, "");
    let mut first = Proc::spawn(&path).await;

    let done: Vec<String> = (0..2).map(|_| token()).collect();
    let pending: Vec<String> = (0..5).map(|_| token()).collect();
    for (i, t) in done.iter().chain(&pending).enumerate() {
        fake.transaction(t, &format!("{i:032x}"));
        let script = if done.contains(t) { "COMPLETE" } else { "NEW" };
        fake.script(t, vec![Reply::Status(script)]);
        assert_eq!(register(first.client, t).await, 202, "{}", first.output());
    }
    let before = collect(&mut q, 2).await;
    assert_eq!(before.len(), 2, "the two complete tokens published before the kill: {before:?}");
    assert!(pending.iter().all(|t| !fake.soap_calls(t).is_empty()), "the pending ones were being polled");
    first.kill();

    let done_calls: Vec<usize> = done.iter().map(|t| fake.soap_calls(t).len()).collect();
    for t in &pending {
        fake.script(t, vec![Reply::Status("COMPLETE")]);
    }
    let second = Proc::spawn(&path).await;
    let after = collect(&mut q, 5).await;
    let mut all = before.clone();
    for (id, n) in &after {
        *all.entry(id.clone()).or_insert(0) += n;
    }
    assert_eq!(all.len(), 7, "every job published: {all:?}\n{}", second.output());
    assert!(all.values().all(|n| *n == 1), "nothing published twice: {all:?}");
    let done_after: Vec<usize> = done.iter().map(|t| fake.soap_calls(t).len()).collect();
    assert_eq!(done_after, done_calls, "completed jobs are not polled again after the restart");
    assert_eq!(second.metric(&super::jobs("complete")).await, 7.0);
    assert_eq!(second.metric(&super::jobs("pending")).await, 0.0);
    let logs = format!("{}{}", first.output(), second.output());
    assert!(logs.contains("poll job finished"), "the processes log the jobs:\n{logs}");
    for secret in done.iter().chain(&pending).map(String::as_str).chain([super::SSO_PASSWORD, super::SVC_PASSWORD]) {
        assert!(!logs.contains(secret), "a token or password in the logs");
    }
    q.close().await;
    drop(second);
    delete_exchange(&exchange).await;
}
