//! `broker.urls`: two "nodes" (two harness proxies in front of the shared broker). Cutting the one the gateway is
//! connected to, under load, makes it reconnect through the other; every delivery answered `200` reaches the queue
//! (lost = 0), none more than once beyond the publishes in flight at the cut, and every answer leaves before the
//! source's deadline. The nodes may also come from the environment or a file (`urls_env`, `urls_file`: a cluster's
//! credentials kept out of the config file).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::support::{amqp_url, free_port, urls_form, Gateway, Opts, Proxy, JSON};

/// The load comes from one client address, well above the default `per_client` limit (1,000/s) once publishes
/// are quick: this test is about failover, not the limiter.
const SOURCES: &str = r#"
[rate_limits]
per_client = { per_second = 100000, burst = 100000 }

[sources.generic]
preset = "generic"
unauthenticated = true
"#;

/// generic's ack_timeout is 10 s; every answer must leave before it, with a margin.
const ANSWER_WITHIN: Duration = Duration::from_secs(9);
const WORKERS: usize = 8;

struct Answer {
    body: Vec<u8>,
    status: Option<u16>,
    took: Duration,
    after_cut: bool,
}

/// `WORKERS` keep-alive clients posting unique events until `stop`.
fn load(gw: &Gateway, stop: Arc<AtomicBool>, cut: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<Answer>>> {
    (0..WORKERS)
        .map(|w| {
            let c = Gateway::client_for(gw.addr);
            let (stop, cut) = (stop.clone(), cut.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut n = 0u32;
                while !stop.load(Ordering::Acquire) {
                    let body = format!(r#"{{"event":"failover","w":{w},"n":{n}}}"#).into_bytes();
                    let after_cut = cut.load(Ordering::Acquire);
                    let started = Instant::now();
                    let status = c.try_post("/webhooks/generic", &JSON, &body).await.map(|r| r.status);
                    answers.push(Answer { body, status, took: started.elapsed(), after_cut });
                    n += 1;
                }
                answers
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_the_connected_node_fails_over_to_the_next_without_losing_an_acknowledged_event() {
    let (a, b) = (Proxy::start().await, Proxy::start().await);
    let gw = Gateway::start_with(SOURCES, &urls_form(&[a.url(), b.url()]), HashMap::new()).await;
    gw.wait_ready().await;
    let mut q = gw.queue("#").await;

    let (stop, cut) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let workers = load(&gw, stop.clone(), cut.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The gateway is on the first node (it is up): cut it, connections and all.
    assert!(a.open_connections() >= 1 && b.open_connections() == 0, "connected through the first node only");
    a.cut();
    cut.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Reconnected through the second node while the first stays down.
    gw.wait_metric("hookgate_broker_connected", 1.0).await;
    assert!(b.open_connections() >= 1, "reconnected through the second node");
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Release);
    let mut answers = Vec::new();
    for w in workers {
        answers.extend(w.await.expect("worker"));
    }
    gw.wait_metric("hookgate_spool_events", 0.0).await;

    let mut acked = BTreeMap::new();
    for a in &answers {
        assert!(a.took < ANSWER_WITHIN, "an answer took {:?}", a.took);
        match a.status {
            Some(200) => {
                acked.insert(a.body.clone(), ());
            }
            // 503 asks the provider to retry: not acknowledged, so it may or may not be in the queue.
            Some(503) | None => {}
            Some(other) => panic!("unexpected answer {other}"),
        }
    }
    let after_cut = answers.iter().filter(|a| a.after_cut && a.status == Some(200)).count();
    assert!(after_cut >= WORKERS, "deliveries kept being acknowledged after the cut ({after_cut})");

    let mut copies: BTreeMap<Vec<u8>, (usize, Option<String>)> = BTreeMap::new();
    while let Some(m) = q.next(Duration::from_secs(2)).await {
        let id = m.props.message_id().as_ref().map(|s| s.as_str().to_string());
        let e = copies.entry(m.body).or_insert((0, id.clone()));
        e.0 += 1;
        assert_eq!(e.1, id, "a duplicate carries the same message_id");
    }
    let lost: Vec<_> = acked.keys().filter(|b| !copies.contains_key(*b)).collect();
    assert!(lost.is_empty(), "{} acknowledged events lost of {}", lost.len(), acked.len());
    let sent: BTreeMap<_, _> = answers.iter().map(|a| (a.body.clone(), ())).collect();
    assert!(copies.keys().all(|b| sent.contains_key(b)), "nothing unexpected in the queue");
    // A publish in flight on the cut connection has an unknown outcome: it is spooled and published again through
    // the second node. That is the only way to a second copy, so at most one per request in flight at the cut.
    let duplicates: usize = copies.values().map(|(n, _)| n - 1).sum();
    assert!(duplicates <= WORKERS, "{duplicates} duplicates, more than the {WORKERS} requests in flight at the cut");
    assert!(copies.values().all(|(n, _)| *n <= 2));
    q.close().await;
    gw.stop().await;
    b.cut();
}

/// `broker.urls_env`: the nodes come from the environment (a Kubernetes Secret, say), tried in order — the first
/// refuses connections, the second is the broker — and a delivery is published through the second.
#[tokio::test]
async fn nodes_from_the_environment_are_tried_in_order() {
    let refused = free_port();
    let nodes = format!("amqp://guest:guest@127.0.0.1:{refused}/%2f, {}", amqp_url());
    let env = HashMap::from([("HOOKGATE_TEST_BROKERS".to_string(), nodes)]);
    let opts = Opts { broker: "urls_env = \"HOOKGATE_TEST_BROKERS\"\n".into(), ..Opts::default() };
    let gw = Gateway::start_opts(SOURCES, "", env, opts).await;
    gw.wait_ready().await;
    let mut q = gw.queue("#").await;
    let body = br#"{"event":"nodes-from-env","n":1}"#;
    let r = gw.post("/webhooks/generic", &JSON, body).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    let m = q.next(Duration::from_secs(5)).await.expect("published through the second node");
    assert_eq!(m.body, body);
    q.close().await;
    gw.stop().await;
}

/// The nodes are tried in the order given: with both up, the gateway connects to the first and leaves the second
/// alone (the test above cannot tell order from reverse order: its first node refuses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_node_up_the_first_one_is_used() {
    let (a, b) = (Proxy::start().await, Proxy::start().await);
    let env = HashMap::from([("HOOKGATE_TEST_BROKERS".to_string(), format!("{},{}", a.url(), b.url()))]);
    let opts = Opts { broker: "urls_env = \"HOOKGATE_TEST_BROKERS\"\n".into(), ..Opts::default() };
    let gw = Gateway::start_opts(SOURCES, "", env, opts).await;
    gw.wait_ready().await;
    let r = gw.post("/webhooks/generic", &JSON, br#"{"event":"first-node"}"#).await;
    assert_eq!((r.status, r.reason.as_str()), (200, "Stored"));
    assert!(a.open_connections() >= 1, "connected through the first node");
    assert_eq!(b.open_connections(), 0, "the second node is not used while the first answers");
    gw.stop().await;
    a.cut();
    b.cut();
}
