//! SIGTERM under steady load, on the real process (SPEC §5): `/readyz` answers 503 from the signal until the
//! process is gone, every request in flight is answered, every 200 is in RabbitMQ, and the exit code is 0 within
//! `drain_timeout`. A critical task that stops takes the gateway down (`hookgate::supervise`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::support::{amqp_url, delete_exchange, proc_config, unique, Client, Proc, Queue, GENERIC, JSON};

const WORKERS: usize = 4;

/// One outcome of the load: the body and whether it was answered 200 (`None`: no answer), and whether its
/// connection was made before the signal was sent.
type Outcome = (Vec<u8>, Option<u16>, bool);

async fn load(client: Client, signalled: Arc<AtomicBool>, answered: Arc<AtomicUsize>) -> Vec<Outcome> {
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (signalled, answered) = (signalled.clone(), answered.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                for n in 0..2000 {
                    let body = format!(r#"{{"event":"drain","w":{w},"n":{n}}}"#).into_bytes();
                    // Read once connected: a connection refused came after the listener closed, and a task
                    // that stalls between reading the flag and connecting must not count as sent before.
                    let stream = TcpStream::connect(client.addr).await;
                    let before = !signalled.load(Ordering::Acquire);
                    let r = match stream {
                        Ok(s) => Client::try_post_on(s, "/webhooks/generic", &JSON, &body).await.map(|r| r.status),
                        Err(_) => None,
                    };
                    answered.fetch_add(1, Ordering::Relaxed);
                    let stop = r.is_none();
                    out.push((body, r, before));
                    if stop {
                        break;
                    }
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    all
}

/// A request whose head and half its body are sent before the signal; the rest after it.
async fn slow_request(client: Client, body: &[u8], rest_after: CancellationToken) -> String {
    let mut s = TcpStream::connect(client.addr).await.expect("connect");
    let head = format!(
        "POST /webhooks/generic HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let (first, second) = body.split_at(body.len() / 2);
    s.write_all(head.as_bytes()).await.expect("head");
    s.write_all(first).await.expect("first half");
    rest_after.cancelled().await;
    s.write_all(second).await.expect("second half");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Probes `/readyz` every 10 ms until the admin listener is gone; the statuses seen (0: no answer).
async fn probe(admin: Client) -> Vec<u16> {
    let mut seen = Vec::new();
    loop {
        let status = admin.try_get("/readyz").await.map_or(0, |(s, _)| s);
        seen.push(status);
        if status == 0 {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_in_flight_requests_then_exits_0_with_readyz_503_until_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = unique("hookgate-drain");
    let mut q = Queue::bind(&exchange, "#").await;
    let config = proc_config(dir.path(), &exchange, &amqp_url(), GENERIC, "");
    let mut gw = Proc::spawn(&config).await;
    let (signalled, answered) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let load = tokio::spawn(load(gw.client, signalled.clone(), answered.clone()));
    let rest = CancellationToken::new();
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let (client, rest) = (gw.client, rest.clone());
            let body = format!(r#"{{"event":"drain.slow","i":{i}}}"#).into_bytes();
            tokio::spawn(async move { (slow_request(client, &body, rest).await, body) })
        })
        .collect();
    while answered.load(Ordering::Relaxed) < 40 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gw.admin.try_get("/readyz").await.map(|(s, _)| s), Some(200));
    let prober = tokio::spawn(probe(gw.admin));
    signalled.store(true, Ordering::Release);
    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    rest.cancel();
    let probes = tokio::time::timeout(Duration::from_secs(15), prober).await.expect("admin gone in time").unwrap();
    // From the first 503 on, every probe is 503 until the admin listener is gone — and then so is the process.
    let first_503 = probes.iter().position(|&s| s == 503).unwrap_or_else(|| panic!("no 503: {probes:?}"));
    assert!(probes[first_503..probes.len() - 1].iter().all(|&s| s == 503), "{probes:?}");
    assert!(probes[..first_503].iter().all(|&s| s == 200), "{probes:?}");
    let code = gw.wait_exit(Duration::from_millis(1500)).await;
    assert_eq!(code, Some(0), "exited 0 right after the admin listener closed\n{}", gw.output());
    for t in slow {
        let (answer, body) = t.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 Stored"), "in-flight request answered: {answer:?}");
        let _ = body;
    }
    let outcomes = load.await.unwrap();
    let stored: BTreeSet<Vec<u8>> = outcomes.iter().filter(|o| o.1 == Some(200)).map(|o| o.0.clone()).collect();
    for (body, status, before) in &outcomes {
        match status {
            Some(s) => assert_eq!(*s, 200, "{}", String::from_utf8_lossy(body)),
            None => assert!(!before, "a request sent before SIGTERM got no answer"),
        }
    }
    let mut got = BTreeSet::new();
    while let Some(m) = q.next(Duration::from_secs(2)).await {
        got.insert(m.body);
    }
    let missing: Vec<_> = stored.difference(&got).map(|b| String::from_utf8_lossy(b).into_owned()).collect();
    assert!(missing.is_empty(), "200s not in RabbitMQ: {missing:?}");
    assert!(got.iter().filter(|b| b.starts_with(br#"{"event":"drain.slow""#)).count() == 2);
    assert!(stored.len() >= 40);
    q.close().await;
    delete_exchange(&exchange).await;
}

/// SIGTERM while the gateway is still starting — here waiting for a shared store (Redis) that accepts and never
/// answers — stops it at once with exit 0, as a drain would (SPEC §5), not by the signal's default action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_starting_exits_0_at_once() {
    let blackhole = tokio::net::TcpListener::bind(("127.0.0.1", crate::support::free_port())).await.expect("bind");
    let port = blackhole.local_addr().expect("addr").port();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((socket, _)) = blackhole.accept().await {
            let _ = accepted_tx.send(socket).await;
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = unique("hookgate-test-start-term");
    let storage = format!("shared = \"redis://127.0.0.1:{port}\"\n");
    let path = proc_config(dir.path(), &exchange, &amqp_url(), GENERIC, &storage);
    let mut p = Proc::launch(&path);
    let held = tokio::time::timeout(Duration::from_secs(10), accepted.recv()).await;
    assert!(held.is_ok_and(|s| s.is_some()), "the gateway reached the shared store:\n{}", p.output());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(p.exited(), None, "still starting (the store never answers):\n{}", p.output());
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(3)).await, Some(0), "{}", p.output());
    assert!(p.output().contains("stopped while starting"), "{}", p.output());
    delete_exchange(&exchange).await;
}

/// SPEC §5: `SIGINT` drains as `SIGTERM` does: `/readyz` 503 at once, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_and_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = unique("hookgate-test-sigint");
    let path = proc_config(dir.path(), &exchange, &amqp_url(), GENERIC, "");
    let mut p = Proc::spawn(&path).await;
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(10)).await, Some(0), "{}", p.output());
    let out = p.output();
    assert!(out.contains("shutdown requested; draining") && out.contains("SIGINT"), "{out}");
    assert!(out.contains("hookgate stopped"), "{out}");
    // SPEC §5: without a spool key "the gateway warns at every start".
    assert!(out.contains("WARN") && out.contains("the spool is written UNENCRYPTED"), "{out}");
    delete_exchange(&exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_task_that_stops_shuts_the_gateway_down_and_is_named() {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let tasks =
        vec![("listener", tokio::spawn(async move { stop.cancelled().await })), ("publisher", tokio::spawn(async {}))];
    let failed = tokio::time::timeout(Duration::from_secs(5), hookgate::supervise(tasks, &shutdown)).await;
    assert_eq!(failed.expect("the rest drained"), Some("publisher"));
    assert!(shutdown.is_cancelled(), "the death started the drain");
    // A task that ends after shutdown is a clean stop.
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let tasks = vec![("listener", tokio::spawn(async {}))];
    assert_eq!(hookgate::supervise(tasks, &shutdown).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stalled_broker_spools_pending_confirms_and_exits_0_promptly_with_readyz_503() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = unique("hookgate-drain");
    let mut q = Queue::bind(&exchange, "#").await;
    let proxy = crate::support::Proxy::start().await;
    let config = proc_config(dir.path(), &exchange, &proxy.url(), GENERIC, "");
    let mut gw = Proc::spawn(&config).await;
    // Confirms stop arriving: the requests below wait for them (publish_timeout = 1 s), then are spooled.
    proxy.stall(true);
    let bodies: Vec<Vec<u8>> = (0..4).map(|i| format!(r#"{{"event":"drain.stalled","i":{i}}}"#).into_bytes()).collect();
    let posts: Vec<_> = bodies
        .iter()
        .map(|b| {
            let (client, b) = (gw.client, b.clone());
            tokio::spawn(async move { client.try_post("/webhooks/generic", &JSON, &b).await.map(|r| r.reason) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let prober = tokio::spawn(probe(gw.admin));
    let signalled = tokio::time::Instant::now();
    gw.signal("TERM");
    let probes = tokio::time::timeout(Duration::from_secs(15), prober).await.expect("admin gone in time").unwrap();
    let first_503 = probes.iter().position(|&s| s == 503).unwrap_or_else(|| panic!("no 503: {probes:?}"));
    assert!(probes[first_503..probes.len() - 1].iter().all(|&s| s == 503), "{probes:?}");
    // The admin listener is the last thing to stop: the process is gone right after it.
    let code = gw.wait_exit(Duration::from_millis(500)).await;
    assert_eq!(code, Some(0), "process still up after /readyz stopped answering\n{}", gw.output());
    assert!(signalled.elapsed() < Duration::from_secs(5), "within drain_timeout: {:?}", signalled.elapsed());
    for p in posts {
        assert_eq!(p.await.unwrap().as_deref(), Some("Stored"), "every in-flight request answered 200");
    }
    // The spooled events are published at the next start, once the broker answers again.
    proxy.stall(false);
    let gw = Proc::spawn(&config).await;
    let mut got = BTreeSet::new();
    while got.len() < bodies.len() {
        let m = q.next(Duration::from_secs(15)).await.expect("every 200 reaches RabbitMQ");
        got.insert(m.body);
    }
    assert_eq!(got, bodies.iter().cloned().collect());
    drop(gw);
    q.close().await;
    delete_exchange(&exchange).await;
}
