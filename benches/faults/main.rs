//! The fault-injection run (issue 14): `benches/faults.sh` builds this driver and the gateway and runs it.
//!
//! It starts a RabbitMQ node of its own (never the shared one), a gateway process in front of it through a TCP
//! proxy, drives steady load, and injects in turn: `kill -9` of the gateway ×10 (restarted on the same data_dir),
//! `kill -9` of the broker node and a restart, a memory alarm, a network cut, a full spool. Then it drains the queue
//! and checks, per fault: every event answered 200 was consumed (lost = 0), nothing unexpected was consumed, every
//! answer left before the source's deadline (10 s); duplicates are counted against the bound of
//! docs/delivery-semantics.md.

mod cluster;
mod gateway;
mod load;
mod node;
#[path = "../../tests/it/support/ports.rs"]
mod ports;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use gateway::Gateway;
use load::{Load, WORKERS};
use node::{Node, Proxy};

pub(crate) const EXCHANGE: &str = "hookgate-faults";
const QUEUE: &str = "hookgate-faults-all";
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);
pub(crate) const SPOOL: u64 = 64 * 1024 * 1024;
const SMALL_SPOOL: u64 = 16 * 1024;
/// docs/delivery-semantics.md: a crash republishes at most this many spool records passed since the cursor write,
const CURSOR_EVERY: usize = 64;
/// and every record of the drainer's window (sent, not yet passed: `spool::drain::WINDOW`).
const DRAIN_WINDOW: usize = 128;
/// docs/delivery-semantics.md: a crash forgets at most the dedup records of the commit not yet on disk (≤ 512).
const GROUP_COMMIT: usize = 512;

struct Phase {
    name: &'static str,
    /// The duplicate bound of docs/delivery-semantics.md for what this phase does.
    bound: usize,
    spooled: f64,
    note: String,
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

pub(crate) fn sleep(ms: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(ms))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let bin = PathBuf::from(arg("--hookgate").unwrap_or_else(|| "target/debug/hookgate".into()));
    let work = PathBuf::from(arg("--work").ok_or_else(|| anyhow::anyhow!("--work DIR is required"))?);
    if std::env::args().any(|a| a == "--cluster") {
        return if cluster::run(&bin, &work).await? { Ok(()) } else { anyhow::bail!("the oracle failed") };
    }
    let name = arg("--node").unwrap_or_else(|| format!("hookgate-faults-{}@localhost", std::process::id()));
    let (port, dist) = (gateway::free_port()?, gateway::free_port()?);
    let mut node = Node::new(&work, &name, port, dist)?;
    let took = node.start().await?;
    eprintln!("faults: node {name} on 127.0.0.1:{port} (dist {dist}) up in {took:.1?}");
    let upstream = SocketAddr::from(([127, 0, 0, 1], port));
    let proxy = Proxy::start(upstream).await?;
    let mut gw = Gateway::new(&bin, &work)?;
    gw.start(&proxy.url(), EXCHANGE, SPOOL).await?;
    wait_connected(&gw).await;
    bind_queue(&node.url()).await?;

    let load = Load::new();
    let workers = load.spawn(gw.addr);
    let mut phases = Vec::new();
    let result = run_phases(&mut node, &proxy, &mut gw, &load, &mut phases).await;
    load.stop.store(true, Ordering::Release);
    for w in workers {
        let _ = w.await;
    }
    result?;
    wait_drained(&gw).await;
    let consumed = drain(&node.url()).await?;
    let ok = report(&load, &phases, &consumed);
    gw.stop().await;
    node.stop();
    if ok {
        Ok(())
    } else {
        anyhow::bail!("the oracle failed (see the table)")
    }
}

async fn run_phases(
    node: &mut Node,
    proxy: &Proxy,
    gw: &mut Gateway,
    load: &Load,
    phases: &mut Vec<Phase>,
) -> anyhow::Result<()> {
    let begin = |load: &Load, phases: &mut Vec<Phase>, name, bound| {
        load.phase.store(phases.len(), Ordering::Release);
        eprintln!("faults: {name}");
        phases.push(Phase { name, bound, spooled: 0.0, note: String::new() });
    };
    begin(load, phases, "steady (no fault)", 0);
    sleep(3000).await;

    begin(load, phases, "gateway kill -9 ×10", 10 * (WORKERS + CURSOR_EVERY + DRAIN_WINDOW + GROUP_COMMIT));
    let mut restarts = Vec::new();
    for _ in 0..10 {
        sleep(1200).await;
        let spooled = gw.metric("hookgate_spooled_total").await;
        gw.kill9();
        restarts.push(gw.start(&proxy.url(), EXCHANGE, SPOOL).await?);
        if let Some(p) = phases.last_mut() {
            p.spooled += spooled;
        }
    }
    let worst = restarts.iter().max().copied().unwrap_or_default();
    let total: Duration = restarts.iter().sum();
    note(phases, format!("restart to ready: mean {:.0?}, max {worst:.0?}", total / 10));
    sleep(1500).await;

    let base = baseline(gw).await;
    begin(load, phases, "broker kill -9 + restart", 0);
    sleep(1000).await;
    node.kill9();
    sleep(2000).await;
    let up = node.start().await?;
    wait_connected(gw).await;
    sleep(2000).await;
    finish(gw, phases, base, format!("node back in {up:.1?}")).await;

    let base = baseline(gw).await;
    begin(load, phases, "memory alarm (watermark 0, 4 s)", 0);
    sleep(1000).await;
    node.ctl(&["set_vm_memory_high_watermark", "0"])?;
    sleep(4000).await;
    node.ctl(&["set_vm_memory_high_watermark", "0.4"])?;
    sleep(3000).await;
    finish(gw, phases, base, String::new()).await;

    let base = baseline(gw).await;
    begin(load, phases, "network cut (proxy, 4 s)", 0);
    sleep(1000).await;
    proxy.cut();
    sleep(4000).await;
    proxy.restore().await?;
    wait_connected(gw).await;
    sleep(2000).await;
    finish(gw, phases, base, String::new()).await;

    begin(load, phases, "full spool (16 KiB cap, cut 4 s)", 0);
    gw.stop().await;
    gw.start(&proxy.url(), EXCHANGE, SMALL_SPOOL).await?;
    sleep(500).await;
    proxy.cut();
    sleep(4000).await;
    proxy.restore().await?;
    wait_connected(gw).await;
    sleep(2000).await;
    finish(gw, phases, (0.0, 0.0), String::new()).await;
    Ok(())
}

fn note(phases: &mut [Phase], text: String) {
    if let Some(p) = phases.last_mut() {
        p.note = text;
    }
}

/// Publishes whose outcome is unknown (a timeout, or the connection or channel failed): each may have landed.
async fn unknown_outcomes(gw: &Gateway) -> f64 {
    gw.metric("hookgate_amqp_publishes_total{outcome=\"timeout\"}").await
        + gw.metric("hookgate_amqp_publishes_total{outcome=\"error\"}").await
}

async fn baseline(gw: &Gateway) -> (f64, f64) {
    (gw.metric("hookgate_spooled_total").await, unknown_outcomes(gw).await)
}

/// Records the events spooled in the phase; the bound of a broker-side fault (docs/delivery-semantics.md) is one
/// copy per request in flight at the fault plus one per publish — of a request or of the drainer — whose outcome
/// was unknown (it may have landed). The phase ends only once the spool has drained, so every copy of its events
/// was published while its counters were read (a drain that ran on into the next phase once charged that phase's
/// failures, and the restart of the full-spool phase, to this one's events).
async fn finish(gw: &Gateway, phases: &mut [Phase], base: (f64, f64), text: String) {
    wait_drained(gw).await;
    let spooled = gw.metric("hookgate_spooled_total").await - base.0;
    let unknown = unknown_outcomes(gw).await - base.1;
    if let Some(p) = phases.last_mut() {
        p.spooled = spooled;
        p.bound = WORKERS + unknown.max(0.0) as usize;
        p.note = text;
    }
}

pub(crate) async fn wait_connected(gw: &Gateway) {
    wait_for(gw, "hookgate_broker_connected", 1.0, "the gateway did not reconnect").await;
}

pub(crate) async fn wait_drained(gw: &Gateway) {
    wait_for(gw, "hookgate_spool_events", 0.0, "the spool did not drain").await;
}

/// Polls `series` until it reads `value`, for up to 60 s; past that says `what` and goes on.
async fn wait_for(gw: &Gateway, series: &str, value: f64, what: &str) {
    for _ in 0..600 {
        if gw.metric(series).await == value {
            return;
        }
        sleep(100).await;
    }
    eprintln!("faults: {what} within 60 s");
}

/// A durable queue bound to every routing key, declared after the gateway declared the exchange.
async fn bind_queue(url: &str) -> anyhow::Result<()> {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let opts = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(QUEUE.into(), opts, FieldTable::default()).await?;
    ch.queue_bind(QUEUE.into(), EXCHANGE.into(), "#".into(), QueueBindOptions::default(), FieldTable::default())
        .await?;
    let _ = conn.close(200, "bound".into()).await;
    Ok(())
}

async fn drain(url: &str) -> anyhow::Result<HashMap<String, usize>> {
    drain_queue(url, QUEUE).await
}

/// Every message in `queue`: body → copies.
pub(crate) async fn drain_queue(url: &str, queue: &str) -> anyhow::Result<HashMap<String, usize>> {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut consumer = ch.basic_consume(queue.into(), "faults".into(), opts, FieldTable::default()).await?;
    let mut copies = HashMap::new();
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(3), consumer.next()).await {
        *copies.entry(String::from_utf8_lossy(&d.data).into_owned()).or_insert(0) += 1;
    }
    let _ = conn.close(200, "drained".into()).await;
    Ok(copies)
}

#[derive(Default)]
struct Row {
    requests: usize,
    acked: usize,
    retries_seen: usize,
    refused: usize,
    unanswered: usize,
    late: usize,
    lost: usize,
    duplicates: usize,
    max: Duration,
}

/// Names every duplicated event on stderr (phase first sent, copies, the event id the gateway logs), so a run's
/// duplicates can be traced in the gateway log (`KEEP_WORK=1`, `RUST_LOG=info`).
fn dump_duplicates(sent: &HashMap<Arc<str>, usize>, consumed: &HashMap<String, usize>) {
    let mut dups: Vec<(usize, &str, usize)> = sent
        .iter()
        .filter_map(|(body, phase)| consumed.get(&**body).filter(|n| **n > 1).map(|n| (*phase, &**body, *n)))
        .collect();
    dups.sort_unstable();
    for (phase, body, copies) in dups.iter().take(200) {
        let id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
        let tag: String = body.split(",\"pad\"").next().unwrap_or_default().chars().take(60).collect();
        eprintln!("faults: duplicate phase={phase} copies={copies} event_id={id} {tag}");
    }
}

/// Prints the summary table (markdown); returns whether the oracle held.
fn report(load: &Load, phases: &[Phase], consumed: &HashMap<String, usize>) -> bool {
    let answers = load.answers.lock().map(|mut a| std::mem::take(&mut *a)).unwrap_or_default();
    let sent = load.sent.lock().map(|s| s.clone()).unwrap_or_default();
    let mut rows: Vec<Row> = phases.iter().map(|_| Row::default()).collect();
    let mut acked: HashMap<Arc<str>, ()> = HashMap::new();
    for a in &answers {
        let Some(r) = rows.get_mut(a.phase) else { continue };
        r.requests += 1;
        r.max = r.max.max(a.took);
        match a.status {
            Some(200) => {
                acked.insert(a.body.clone(), ());
                r.retries_seen += usize::from(a.reason == "Duplicate");
            }
            Some(_) => r.refused += 1,
            None => r.unanswered += 1,
        }
        if a.status.is_some() && a.took >= DEADLINE {
            r.late += 1;
        }
    }
    for (body, phase) in &sent {
        let Some(r) = rows.get_mut(*phase) else { continue };
        if acked.contains_key(body) {
            r.acked += 1;
            if !consumed.contains_key(&**body) {
                r.lost += 1;
            }
        }
        r.duplicates += consumed.get(&**body).map_or(0, |n| n.saturating_sub(1));
    }
    let unexpected = consumed.keys().filter(|b| !sent.contains_key(b.as_str())).count();
    dump_duplicates(&sent, consumed);
    println!("\n| fault | requests | events answered 200 | 200 Duplicate | other answers | no answer | late (≥ 10 s) | max latency | lost | duplicates (bound) | spooled | notes |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut ok = unexpected == 0;
    for (p, r) in phases.iter().zip(&rows) {
        ok &= r.lost == 0 && r.late == 0 && r.duplicates <= p.bound;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.0?} | {} | {} ({}) | {} | {} |",
            p.name,
            r.requests,
            r.acked,
            r.retries_seen,
            r.refused,
            r.unanswered,
            r.late,
            r.max,
            r.lost,
            r.duplicates,
            p.bound,
            p.spooled,
            p.note
        );
    }
    let total_acked: usize = rows.iter().map(|r| r.acked).sum();
    let total_lost: usize = rows.iter().map(|r| r.lost).sum();
    println!(
        "\nconsumed {} distinct events ({} messages); answered 200: {total_acked}; lost: {total_lost}; unexpected: {unexpected}; oracle: {}",
        consumed.len(),
        consumed.values().sum::<usize>(),
        if ok { "PASS" } else { "FAIL" }
    );
    ok
}
