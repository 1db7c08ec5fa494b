//! A measurement, not a timed unit test (ignored by default; run it alone):
//!
//! ```sh
//! cargo test --test it poll::load -- --ignored --nocapture
//! POLL_LOAD_WINDOWS=24 cargo test --test it poll::load -- --ignored --nocapture   # 4 minutes of polling
//! ```
//!
//! 2,000 registered jobs against a fake that answers `NEW` forever: the gateway process's CPU time per window
//! and its resident memory are sampled from `/proc` while it polls, and printed. Flat means: no growth from one
//! window to the next (no task or timer per job, bounded queues).

use std::time::Duration;

use super::{config, svc_auth, token, Fake, Reply};
use crate::support::{amqp_url, delete_exchange, proc_config, unique, Proc};

const JOBS: usize = 2000;
const WINDOW: Duration = Duration::from_secs(10);
/// Windows sampled; `POLL_LOAD_WINDOWS` overrides (a longer run, to see memory settle).
const WINDOWS: usize = 8;

/// (utime + stime in clock ticks, resident set in KiB) of a process.
fn usage(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about 2 minutes); run it alone with --ignored --nocapture"]
async fn two_thousand_new_jobs_keep_cpu_and_memory_flat() {
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = unique("hookgate-poll-load");
    let text = config(&fake, None, "interval = \"5s\"\ntoken_ttl = \"15m\"\nrequest_timeout = \"5s\"");
    let path = proc_config(dir.path(), &exchange, &amqp_url(), &text, "");
    let gw = Proc::spawn(&path).await;
    let pid = gw.pid();
    let (ticks0, rss0) = usage(pid);
    eprintln!("idle: rss {rss0} KiB");
    let auth = svc_auth();
    let started = tokio::time::Instant::now();
    let tokens: Vec<String> = (0..JOBS).map(|_| token()).collect();
    for chunk in tokens.chunks(50) {
        let sends = chunk.iter().map(|t| {
            fake.script(t, vec![Reply::Status("NEW")]);
            let body = serde_json::json!({ "token": t }).to_string();
            let auth = auth.clone();
            let client = gw.client;
            async move {
                let headers = [("content-type", "application/json"), ("authorization", auth.as_str())];
                client.try_post("/poll/instamed", &headers, body.as_bytes()).await.map_or(0, |r| r.status)
            }
        });
        let statuses = futures_util::future::join_all(sends).await;
        assert!(statuses.iter().all(|s| *s == 202), "registered: {statuses:?}");
    }
    let (ticks1, rss1) = usage(pid);
    eprintln!(
        "registered {JOBS} in {:?}: cpu {:.2} s, rss {rss1} KiB",
        started.elapsed(),
        (ticks1 - ticks0) as f64 / 100.0
    );
    assert_eq!(gw.metric(&super::jobs("pending")).await, JOBS as f64);
    let mut last = usage(pid);
    let mut calls_before = gw.metric(&super::requests("token_status", "new")).await;
    let mut rows = Vec::new();
    let windows = std::env::var("POLL_LOAD_WINDOWS").ok().and_then(|v| v.parse().ok()).unwrap_or(WINDOWS);
    for w in 0..windows {
        tokio::time::sleep(WINDOW).await;
        let now = usage(pid);
        let calls = gw.metric(&super::requests("token_status", "new")).await;
        let cpu = (now.0 - last.0) as f64 / 100.0;
        eprintln!(
            "window {w}: {:.0} status calls, cpu {cpu:.2} s per {WINDOW:?} ({:.0} % of one core), rss {} KiB",
            calls - calls_before,
            cpu * 100.0 / WINDOW.as_secs_f64(),
            now.1
        );
        rows.push((cpu, now.1));
        calls_before = calls;
        last = now;
    }
    let rss: Vec<u64> = rows.iter().map(|r| r.1).collect();
    let (min, max) = (rss.iter().min().copied().unwrap_or(0), rss.iter().max().copied().unwrap_or(0));
    eprintln!("rss over the windows: {min}..{max} KiB");
    assert_eq!(gw.metric(&super::jobs("pending")).await, JOBS as f64, "all still pending (NEW)");
    drop(gw);
    delete_exchange(&exchange).await;
}
