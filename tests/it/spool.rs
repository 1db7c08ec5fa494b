//! The spool under pressure: full, unwritable, encrypted at rest, a torn tail, and the `spool` CLI.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine;

use crate::support::{amqp_url, base_config, delete_exchange, proc_config, Gateway, Opts, Proc, Proxy, JSON};

/// The generic source, and a Tyro one (its retry status is 500: Tyro retries only a timeout or a 500).
const SOURCES: &str = concat!(
    "[sources.generic]\npreset = \"generic\"\nunauthenticated = true\n",
    "[sources.tyro]\npreset = \"tyro\"\npath = \"/webhooks/tyro\"\nunauthenticated = true\n"
);

async fn down_gateway(storage: &str, env: HashMap<String, String>) -> (Proxy, Gateway) {
    down_gateway_opts(Opts { storage: storage.to_string(), ..Opts::default() }, env).await
}

async fn down_gateway_opts(opts: Opts, env: HashMap<String, String>) -> (Proxy, Gateway) {
    let proxy = Proxy::start().await;
    let gw = Gateway::start_opts(SOURCES, &proxy.url(), env, opts).await;
    gw.wait_ready().await;
    proxy.cut();
    gw.wait_metric("hookgate_broker_connected", 0.0).await;
    (proxy, gw)
}

/// Reads `n` messages and returns their bodies, asserting no more follow.
async fn drain_queue(q: &mut crate::support::Queue, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    for i in 0..n {
        got.push(q.next(Duration::from_secs(10)).await.unwrap_or_else(|| panic!("message {i} of {n} missing")).body);
    }
    assert!(q.next(Duration::from_millis(500)).await.is_none(), "more than {n} messages");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_answers_503_and_loses_nothing() {
    let (proxy, gw) = down_gateway("spool_max_bytes = 4096\n", HashMap::new()).await;
    let mut q = gw.queue("#").await;
    let (mut stored, mut refused) = (Vec::new(), Vec::new());
    for n in 0..60 {
        let body = format!(r#"{{"event":"fill","n":{n},"pad":"{}"}}"#, "x".repeat(100));
        let r = gw.post("/webhooks/generic", &JSON, body.as_bytes()).await;
        match (r.status, r.reason.as_str()) {
            (200, "Stored") => stored.push(body.into_bytes()),
            (503, "Store Unavailable") => refused.push(body.into_bytes()),
            other => panic!("{other:?}"),
        }
    }
    assert!(stored.len() >= 10 && refused.len() >= 10, "{} stored, {} refused", stored.len(), refused.len());
    let bytes = gw.metric("hookgate_spool_bytes").await;
    assert!(bytes > 3000.0 && bytes <= 4096.0, "{bytes}");
    let full = gw.metric("hookgate_posting_errors_total{reason=\"spool_full\",source=\"generic\"}").await;
    assert_eq!(full, refused.len() as f64);
    // SPEC §2: the status that asks a provider to retry is its source's (`tyro`: 500). A larger body than the
    // ones refused, so it cannot fit either.
    let tyro = format!(r#"{{"event":"paid","transactionId":"full","pad":"{}"}}"#, "x".repeat(200));
    let r = gw.post("/webhooks/tyro", &JSON, tyro.as_bytes()).await;
    assert_eq!((r.status, r.reason.as_str()), (500, "Store Unavailable"));
    // SPEC §7: ready "when the broker or the spool can take events" — neither can now.
    assert_eq!(gw.admin_get("/readyz").await.0, 503, "a full spool and no broker: not ready");
    proxy.restore().await;
    assert_eq!(drain_queue(&mut q, stored.len()).await, stored, "every stored event, in order");
    gw.wait_metric("hookgate_spool_events", 0.0).await;
    assert_eq!(gw.admin_get("/readyz").await.0, 200, "ready again");
    // The providers retry what was refused: now stored, each once.
    for body in &refused {
        assert_eq!(gw.post("/webhooks/generic", &JSON, body).await.reason, "Stored");
    }
    assert_eq!(drain_queue(&mut q, refused.len()).await, refused);
    q.close().await;
    gw.stop().await;
}

/// An outage refuses every delivery: the log gets one ERROR line per 10 s with the count, not one per request
/// (the rest go to `debug`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_logs_one_error_line_with_a_count_not_one_per_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = crate::support::unique("hookgate-spool-log");
    let proxy = Proxy::start().await;
    let config = proc_config(dir.path(), &exchange, &proxy.url(), SOURCES, "spool_max_bytes = 4096\n");
    let gw = Proc::spawn(&config).await;
    proxy.cut();
    gw.wait_metric("hookgate_broker_connected", 0.0).await;
    let mut refused = 0;
    for n in 0..60 {
        let body = format!(r#"{{"event":"fill","n":{n},"pad":"{}"}}"#, "x".repeat(100));
        if gw.client.post("/webhooks/generic", &JSON, body.as_bytes()).await.status == 503 {
            refused += 1;
        }
    }
    assert!(refused >= 20, "{refused} refused");
    let series = "hookgate_posting_errors_total{reason=\"spool_full\",source=\"generic\"}";
    assert_eq!(gw.metric(series).await, f64::from(refused));
    let log = gw.output();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("delivery not stored")).collect();
    assert_eq!(lines.len(), 1, "one ERROR line for {refused} refusals: {lines:#?}");
    assert!(
        lines[0].contains("ERROR") && lines[0].contains("spool_full") && lines[0].contains("failed=1"),
        "{}",
        lines[0]
    );
    drop(gw);
    delete_exchange(&exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_spool_directory_answers_503_and_loses_nothing() {
    let (proxy, gw) = down_gateway("", HashMap::new()).await;
    let mut q = gw.queue("#").await;
    let spool = gw.data_dir.join("spool");
    std::fs::remove_dir_all(&spool).unwrap();
    std::fs::write(&spool, b"not a directory").unwrap();
    let body = br#"{"event":"disk","n":1}"#;
    let r = gw.post("/webhooks/generic", &JSON, body).await;
    assert_eq!((r.status, r.reason.as_str()), (503, "Store Unavailable"));
    assert_eq!(gw.metric("hookgate_posting_errors_total{reason=\"spool_error\",source=\"generic\"}").await, 1.0);
    std::fs::remove_file(&spool).unwrap();
    std::fs::create_dir(&spool).unwrap();
    // The provider's retry is admitted (the failure released the claim) and spooled.
    assert_eq!(gw.post("/webhooks/generic", &JSON, body).await.reason, "Stored");
    proxy.restore().await;
    assert_eq!(drain_queue(&mut q, 1).await, [body.to_vec()]);
    q.close().await;
    gw.stop().await;
}

fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).expect("readable dir").flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            files_contain(&p, needle)
        } else {
            std::fs::read(&p).unwrap_or_default().windows(needle.len()).any(|w| w == needle)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_payloads_are_encrypted_at_rest() {
    let key = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
    let env = HashMap::from([("HOOKGATE_TEST_SPOOL_KEY".to_string(), key)]);
    let (proxy, gw) = down_gateway("spool_key_env = \"HOOKGATE_TEST_SPOOL_KEY\"\n", env).await;
    let mut q = gw.queue("#").await;
    let body = br#"{"event":"phi","PatientName":"ZEBRA-MARKER-4711","Card":"4111111111111111"}"#;
    assert_eq!(gw.post("/webhooks/generic", &JSON, body).await.reason, "Stored");
    assert_eq!(gw.metric("hookgate_spool_events").await, 1.0);
    assert!(!files_contain(&gw.data_dir, b"ZEBRA-MARKER-4711"), "plaintext marker found under data_dir");
    assert!(!files_contain(&gw.data_dir, b"4111111111111111"));
    proxy.restore().await;
    assert_eq!(drain_queue(&mut q, 1).await, [body.to_vec()]);
    q.close().await;
    gw.stop().await;
}

fn hookgate(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate")).args(args).output().expect("run hookgate");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_and_the_cli_reports_and_replays_the_rest() {
    let (proxy, mut gw) = down_gateway("", HashMap::new()).await;
    let data = gw.keep_data().expect("temp data dir");
    let mut q = gw.queue("#").await;
    let bodies: Vec<Vec<u8>> = (0..3).map(|n| format!(r#"{{"event":"torn","n":{n}}}"#).into_bytes()).collect();
    for b in &bodies {
        assert_eq!(gw.post("/webhooks/generic", &JSON, b).await.reason, "Stored");
    }
    gw.halt().await;
    // A crash in the middle of the last write (one that was never acknowledged): cut its last bytes.
    let spool = data.path().join("spool");
    let seg = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"));
    let seg = seg.expect("a segment");
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 7).unwrap();
    let config = data.path().join("hookgate.toml");
    let text = format!(
        "{}{SOURCES}[storage]\ndata_dir = \"{}\"\n",
        base_config(&gw.exchange, &amqp_url(), ""),
        data.path().display()
    );
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap();
    let (code, out, err) = hookgate(&["spool", "stats", "--config", config]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("records: 2"), "{out}\n{err}");
    assert!(err.contains("torn bytes cut"), "{err}");
    let (code, out, err) = hookgate(&["spool", "replay", "--config", config]);
    assert_eq!((code, out.trim()), (0, "replayed: 2"), "{err}");
    assert_eq!(drain_queue(&mut q, 2).await, bodies[..2].to_vec());
    let (code, out, _) = hookgate(&["spool", "stats", "--config", config]);
    assert_eq!(code, 0);
    assert!(out.contains("records: 0"), "{out}");
    let (code, out, _) = hookgate(&["spool", "replay", "--config", config]);
    assert_eq!((code, out.trim()), (0, "replayed: 0"));
    drop(proxy);
    q.close().await;
    delete_exchange(&gw.exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_spooled_event_is_parked_without_blocking_the_rest() {
    // No alternate exchange, so the broker returns what no queue is bound for.
    let no_ae = || Opts { broker: "alternate_exchange = \"\"\n".into(), ..Opts::default() };
    let (proxy, mut gw) = down_gateway_opts(no_ae(), HashMap::new()).await;
    let data = gw.keep_data().expect("temp data dir");
    let mut routed = gw.queue("generic.routed").await;
    // During the outage nothing can tell that no queue is bound for `unrouted`: both are acknowledged.
    assert_eq!(gw.post("/webhooks/generic", &JSON, br#"{"event":"unrouted"}"#).await.reason, "Stored");
    assert_eq!(gw.post("/webhooks/generic", &JSON, br#"{"event":"routed"}"#).await.reason, "Stored");
    proxy.restore().await;
    assert_eq!(routed.exactly_one(Duration::from_secs(10)).await.body, br#"{"event":"routed"}"#);
    gw.wait_metric("hookgate_spool_parked_events", 1.0).await;
    gw.wait_metric("hookgate_spool_events", 1.0).await;
    assert_eq!(gw.metric("hookgate_unroutable_total{source=\"generic\"}").await, 1.0);
    // Once a route exists, the parked event is published (retried at start and then at growing intervals).
    let mut late = gw.queue("generic.unrouted").await;
    gw.halt().await;
    let opts = Opts { data_dir: Some(data.path().to_path_buf()), exchange: Some(gw.exchange.clone()), ..no_ae() };
    let gw = Gateway::start_opts(SOURCES, &amqp_url(), HashMap::new(), opts).await;
    assert_eq!(late.exactly_one(Duration::from_secs(10)).await.body, br#"{"event":"unrouted"}"#);
    gw.wait_metric("hookgate_spool_parked_events", 0.0).await;
    gw.wait_metric("hookgate_spool_events", 0.0).await;
    routed.close().await;
    late.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_during_a_broker_outage_it_is_ready_and_new_events_queue_behind_the_replay() {
    let (proxy, mut gw) = down_gateway("", HashMap::new()).await;
    let data = gw.keep_data().expect("temp data dir");
    let mut q = gw.queue("#").await;
    let bodies: Vec<Vec<u8>> = (0..3).map(|n| format!(r#"{{"event":"replay","n":{n}}}"#).into_bytes()).collect();
    for b in &bodies[..2] {
        assert_eq!(gw.post("/webhooks/generic", &JSON, b).await.reason, "Stored");
    }
    gw.halt().await;
    // Restarted while the broker is still down: the spool is not replayed yet, but it can take events, so the
    // gateway is ready (SPEC: `/readyz` 200 when the broker or the spool can take events). Were it not, a pod
    // restarted during a broker outage would leave the Service for the rest of the outage.
    let opts =
        Opts { data_dir: Some(data.path().to_path_buf()), exchange: Some(gw.exchange.clone()), ..Opts::default() };
    let gw = Gateway::start_opts(SOURCES, &proxy.url(), HashMap::new(), opts).await;
    assert_eq!(gw.metric("hookgate_spool_events").await, 2.0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.admin_get("/readyz").await, (200, "ready\n".to_string()), "the spool can take events");
    assert_eq!(gw.post("/webhooks/generic", &JSON, &bodies[2]).await.reason, "Stored");
    assert_eq!(gw.metric("hookgate_spooled_total{reason=\"behind_spool\"}").await, 1.0);
    proxy.restore().await;
    gw.wait_ready().await;
    assert_eq!(drain_queue(&mut q, 3).await, bodies, "the replayed events first, then the new one");
    q.close().await;
    gw.stop().await;
}

/// Flips a byte inside the payload of record `index` (0-based) of the only spool segment under `data_dir`.
fn corrupt_spooled_record(data_dir: &Path, index: usize) {
    let spool = data_dir.join("spool");
    let seg = std::fs::read_dir(&spool)
        .expect("spool dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"));
    let seg = seg.expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("segment");
    let mut at = 16; // the segment header
    for _ in 0..index {
        at += 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
    }
    bytes[at + 16 + 4] ^= 0xff; // past len, crc, seq: inside the payload
    std::fs::write(&seg, bytes).expect("segment written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_is_quarantined_while_running_and_the_rest_is_delivered() {
    let (proxy, gw) = down_gateway("", HashMap::new()).await;
    let mut q = gw.queue("#").await;
    let bodies: Vec<Vec<u8>> = (0..4).map(|n| format!(r#"{{"event":"rot","n":{n}}}"#).into_bytes()).collect();
    for b in &bodies {
        assert_eq!(gw.post("/webhooks/generic", &JSON, b).await.reason, "Stored");
    }
    // The disk rots the second record under the running gateway.
    corrupt_spooled_record(&gw.data_dir, 1);
    proxy.restore().await;
    let expected = vec![bodies[0].clone(), bodies[2].clone(), bodies[3].clone()];
    assert_eq!(drain_queue(&mut q, 3).await, expected, "the events behind the unreadable one, in order");
    gw.wait_metric("hookgate_spool_events", 0.0).await;
    assert_eq!(gw.metric("hookgate_spool_quarantined_total").await, 1.0);
    let quarantined = std::fs::read_dir(gw.data_dir.join("spool").join("quarantine")).unwrap().count();
    assert_eq!(quarantined, 1);
    // Later events go straight through again.
    assert_eq!(gw.post("/webhooks/generic", &JSON, br#"{"event":"after"}"#).await.reason, "Stored");
    assert_eq!(drain_queue(&mut q, 1).await, [br#"{"event":"after"}"#.to_vec()]);
    q.close().await;
    gw.stop().await;
}
