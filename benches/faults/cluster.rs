//! The scale-out run: a 3-node RabbitMQ cluster of the run's own (own node names, ports, data dirs; joined with
//! `rabbitmqctl join_cluster`), a quorum queue bound to the exchange, the gateway given all three in
//! `broker.urls`; under load the node the gateway is connected to is killed (`kill -9`). Reports lost,
//! unexpected, duplicates, late answers, the longest gap between two `200` answers, the events spooled, and whether
//! the alternate exchange's queue (`<exchange>.unrouted`, a quorum queue) is still there without the killed node.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

use crate::gateway::{free_port, Gateway};
use crate::load::{Load, WORKERS};
use crate::node::Node;
use crate::{drain_queue, sleep, wait_connected, wait_drained, DEADLINE, EXCHANGE, SPOOL};

const QUORUM: &str = "hookgate-faults-quorum";

pub async fn run(bin: &Path, work: &Path) -> anyhow::Result<bool> {
    let mut nodes = form(work).await?;
    let urls: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.url())).collect();
    let mut gw = Gateway::new(bin, &work.join("cluster"))?;
    gw.start(&format!("[{}]", urls.join(", ")), EXCHANGE, SPOOL).await?;
    wait_connected(&gw).await;
    bind_quorum(&nodes[1].url()).await?;

    let load = Load::new();
    let workers = load.spawn(gw.addr);
    sleep(3000).await;
    // The gateway connects to the first of broker.urls that is up: the first node (its log says which node it lost).
    let victim = 0;
    let spooled_before = gw.metric("hookgate_spooled_total").await;
    load.phase.store(1, Ordering::Release);
    let killed_at = tokio::time::Instant::now();
    nodes[victim].kill9();
    eprintln!("faults: killed {} (the gateway's node)", nodes[victim].name);
    // First the loss is noticed (the connected gauge drops), then the gateway is on another node.
    for _ in 0..100 {
        if gw.metric("hookgate_broker_connected").await == 0.0 {
            break;
        }
        sleep(20).await;
    }
    wait_connected(&gw).await;
    let reconnected = killed_at.elapsed();
    sleep(4000).await;
    load.stop.store(true, Ordering::Release);
    for w in workers {
        let _ = w.await;
    }
    wait_drained(&gw).await;
    let spooled = gw.metric("hookgate_spooled_total").await - spooled_before;
    let survivor = nodes.iter().enumerate().find(|(i, _)| *i != victim).map(|(_, n)| n.url()).unwrap_or_default();
    let consumed = drain_queue(&survivor, QUORUM).await?;
    let kept = unrouted_kept(&survivor).await?;
    println!(
        "\nthe alternate exchange's queue {EXCHANGE}.unrouted without the killed node: {}",
        if kept { "kept" } else { "NOT FOUND" }
    );
    let ok = report(&load, &consumed, killed_at, reconnected, spooled) && kept;
    println!("\noracle: {}", if ok { "PASS" } else { "FAIL" });
    gw.stop().await;
    for n in nodes.iter_mut().rev() {
        n.stop();
    }
    Ok(ok)
}

async fn bind_quorum(url: &str) -> anyhow::Result<()> {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let opts = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(QUORUM.into(), opts, args).await?;
    ch.queue_bind(QUORUM.into(), EXCHANGE.into(), "#".into(), QueueBindOptions::default(), FieldTable::default())
        .await?;
    let _ = conn.close(200, "bound".into()).await;
    Ok(())
}

/// Starts three nodes of the run's own and joins the second and third to the first.
async fn form(work: &Path) -> anyhow::Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let name = format!("hookgate-faults-c{i}-{}@localhost", std::process::id());
        let mut n = Node::new(work, &name, free_port()?, free_port()?)?;
        let took = n.start().await?;
        eprintln!("faults: cluster node {name} on 127.0.0.1:{} up in {took:.1?}", n.port);
        if i > 1 {
            let first = nodes.first().map(|f: &Node| f.name.clone()).unwrap_or_default();
            n.ctl(&["stop_app"])?;
            n.ctl(&["join_cluster", &first])?;
            n.ctl(&["start_app"])?;
        }
        nodes.push(n);
    }
    let status = nodes[0].ctl(&["cluster_status"])?;
    let running = nodes.iter().filter(|n| status.contains(&n.name)).count();
    eprintln!("faults: cluster formed ({running} nodes in cluster_status)");
    Ok(nodes)
}

/// Whether the alternate exchange's queue outlived the killed node (its declare on a surviving node; a classic
/// queue whose home node is down answers NOT_FOUND).
async fn unrouted_kept(url: &str) -> anyhow::Result<bool> {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let queue = format!("{EXCHANGE}.unrouted");
    let kept = ch.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await.is_ok();
    let _ = conn.close(200, "checked".into()).await;
    Ok(kept)
}

fn report(
    load: &Load,
    consumed: &HashMap<String, usize>,
    killed_at: tokio::time::Instant,
    reconnected: Duration,
    spooled: f64,
) -> bool {
    let answers = load.answers.lock().map(|mut a| std::mem::take(&mut *a)).unwrap_or_default();
    let sent = load.sent.lock().map(|s| s.clone()).unwrap_or_default();
    let mut acked = HashMap::new();
    let (mut late, mut other, mut none, mut max) = (0, 0, 0, Duration::ZERO);
    let mut ok_times: Vec<tokio::time::Instant> = Vec::new();
    for a in &answers {
        max = max.max(a.took);
        match a.status {
            Some(200) => {
                acked.insert(a.body.clone(), ());
                ok_times.push(a.at);
            }
            Some(_) => other += 1,
            None => none += 1,
        }
        late += usize::from(a.status.is_some() && a.took >= DEADLINE);
    }
    ok_times.sort();
    let gap = ok_times.windows(2).filter(|w| w[1] >= killed_at).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let lost = acked.keys().filter(|b| !consumed.contains_key(&***b)).count();
    let unexpected = consumed.keys().filter(|b| !sent.contains_key(b.as_str())).count();
    let duplicates: usize = consumed.values().map(|n| n - 1).sum();
    let ok = lost == 0 && unexpected == 0 && late == 0 && duplicates <= WORKERS;
    println!("\n| cluster fault | requests | events answered 200 | other answers | no answer | late (≥ 10 s) | max latency | lost | unexpected | duplicates (bound) | longest gap in 200s | reconnected after | spooled |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| kill -9 of the gateway's node (3-node cluster, quorum queue) | {} | {} | {other} | {none} | {late} | {max:.0?} | {lost} | {unexpected} | {duplicates} ({WORKERS}) | {gap:.0?} | {reconnected:.1?} | {spooled} |",
        answers.len(),
        acked.len(),
    );
    ok
}
