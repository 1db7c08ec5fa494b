//! RabbitMQ side of the bench: the confirmed-publish ceilings (raw, and of the contract's message), the queue
//! bound to the gateway's exchange that is drained and checked after each phase, and a TCP proxy in front of the
//! broker that the spool scenario cuts.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::traffic::{key_of, Delivery, Traffic};

/// The gateway's confirm channels (`CONFIRM_CHANNELS` in src/lib.rs): the ceiling uses as many.
const CHANNELS: usize = 4;

pub async fn connect(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default()).await.context("connecting to RabbitMQ")
}

/// What a ceiling publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// The reference: the body alone (persistent, a message id) through the default exchange straight to
    /// the queue.
    Raw,
    /// The contract's message (SPEC §4), made by the gateway's own `amqp_message`: CloudEvents headers, timestamp,
    /// routing key `<source>.<type>`, through a durable topic exchange bound to the queue with `#`.
    Contract,
}

/// Where a publisher's messages go.
#[derive(Clone)]
struct Dest {
    queue: String,
    /// The topic exchange of [`Shape::Contract`].
    exchange: Option<String>,
}

/// The ceiling: confirmed persistent publishes per second with `in_flight` outstanding, to a durable classic
/// queue, of bodies from the same traffic generator, shaped as `shape`; and the confirm latency.
pub async fn ceiling(
    url: &str,
    in_flight: usize,
    duration: Duration,
    shape: Shape,
    traffic: impl Fn(u64) -> Traffic,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let (conn, channels, dest) = publisher(url, "ceiling", shape).await?;
    let count = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?));
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for i in 0..in_flight {
        let ch = channels[i % CHANNELS].clone();
        let (dest, count, hist) = (dest.clone(), count.clone(), hist.clone());
        let mut t = traffic(10_000 + i as u64);
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
            while Instant::now() < end {
                let sent = Instant::now();
                if !publish_confirmed(&ch, &dest, &t.fresh()).await {
                    break;
                }
                let _ = local.record(micros(sent.elapsed()));
                count.fetch_add(1, Ordering::Relaxed);
            }
            if let Ok(mut h) = hist.lock() {
                let _ = h.add(&local);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    remove(&channels[0], &dest).await;
    let _ = conn.close(200, "done".into()).await;
    let h = hist.lock().map(|h| h.clone()).map_err(|_| anyhow::anyhow!("histogram lock"))?;
    Ok((count.load(Ordering::Relaxed) as f64 / secs, h))
}

/// The broker alone at a fixed rate: the ceiling's publishes, shaped as `shape`, publish *i* due at start + *i* /
/// `rate`, each one's latency counted from its due time to its confirm — the `fixed` scenario's open loop without
/// the gateway, so the gateway's latency at that rate can be read against the broker's own on the same machine.
pub async fn paced(
    url: &str,
    shape: Shape,
    rate: u64,
    duration: Duration,
    traffic: impl Fn(u64) -> Traffic,
) -> anyhow::Result<Histogram<u64>> {
    let (conn, channels, dest) = publisher(url, "paced", shape).await?;
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?));
    let start = Instant::now() + Duration::from_millis(50);
    let total = rate.saturating_mul(duration.as_millis() as u64) / 1000;
    let mut t = traffic(20_000);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = start + Duration::from_nanos(i.saturating_mul(1_000_000_000) / rate.max(1));
        tokio::time::sleep_until(due).await;
        let (ch, dest, hist, d) = (channels[i as usize % CHANNELS].clone(), dest.clone(), hist.clone(), t.fresh());
        tasks.spawn(async move {
            if publish_confirmed(&ch, &dest, &d).await {
                if let Ok(mut h) = hist.lock() {
                    let _ = h.record(micros(due.elapsed()));
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    remove(&channels[0], &dest).await;
    let _ = conn.close(200, "done".into()).await;
    let h = hist.lock().map(|h| h.clone()).map_err(|_| anyhow::anyhow!("histogram lock"))?;
    Ok(h)
}

/// A connection with [`CHANNELS`] confirm channels and a durable classic queue of its own (behind a topic
/// exchange of its own for [`Shape::Contract`]).
async fn publisher(url: &str, what: &str, shape: Shape) -> anyhow::Result<(Connection, Vec<lapin::Channel>, Dest)> {
    let conn = connect(url).await?;
    let queue = format!("hookgate-bench-{what}-{}", std::process::id());
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(ch);
    }
    let qopts = QueueDeclareOptions { durable: true, ..Default::default() };
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), lapin::types::AMQPValue::LongString("classic".into()));
    channels[0].queue_declare(queue.as_str().into(), qopts, args).await?;
    let mut dest = Dest { queue, exchange: None };
    if shape == Shape::Contract {
        let exchange = format!("{}-x", dest.queue);
        let eopts = ExchangeDeclareOptions { durable: true, ..Default::default() };
        let ch = &channels[0];
        ch.exchange_declare(exchange.as_str().into(), ExchangeKind::Topic, eopts, FieldTable::default()).await?;
        let (q, x) = (dest.queue.as_str().into(), exchange.as_str().into());
        ch.queue_bind(q, x, "#".into(), QueueBindOptions::default(), FieldTable::default()).await?;
        dest.exchange = Some(exchange);
    }
    Ok((conn, channels, dest))
}

/// Deletes what [`publisher`] declared.
async fn remove(ch: &lapin::Channel, dest: &Dest) {
    let _ = ch.queue_delete(dest.queue.as_str().into(), QueueDeleteOptions::default()).await;
    if let Some(x) = &dest.exchange {
        let _ = ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await;
    }
}

/// The gateway's message for `d` (a prepaid-card sale): routing key and properties.
fn contract_message(d: &Delivery) -> Option<(lapin::types::ShortString, BasicProperties)> {
    let id = format!("{:x}", d.key);
    let event = hookgate::event::Event {
        source: Arc::from("prepaid-card"),
        id: id.clone(),
        kind: "transaction.sale".into(),
        subject: Some(id),
        time: Some(chrono::Utc::now()),
        rank: None,
        received_at: chrono::Utc::now(),
        content_type: d.content_type.into(),
        body: d.body.clone(),
        out_of_order: false,
    };
    hookgate::publish::amqp_message(&event).ok()
}

/// One persistent, mandatory publish to `dest` and its confirm; false when either failed.
async fn publish_confirmed(ch: &lapin::Channel, dest: &Dest, d: &Delivery) -> bool {
    let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
    let published = match &dest.exchange {
        None => {
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(d.content_type.into())
                .with_message_id(format!("{:x}", d.key).into());
            ch.basic_publish("".into(), dest.queue.as_str().into(), opts, &d.body, props).await
        }
        Some(exchange) => {
            let Some((routing_key, props)) = contract_message(d) else { return false };
            ch.basic_publish(exchange.as_str().into(), routing_key, opts, &d.body, props).await
        }
    };
    match published {
        Ok(confirm) => confirm.await.is_ok(),
        Err(_) => false,
    }
}

/// Microseconds for a histogram (at least 1).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// A durable queue bound with `#` to the gateway's exchange, declared before the gateway starts.
pub struct Drain {
    conn: Connection,
    queue: String,
}

/// What the queue held, against what was answered 200.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Check {
    pub consumed: u64,
    pub distinct_ok: u64,
    /// Answered 200, never consumed.
    pub lost: u64,
    /// Consumed, never answered 200.
    pub unexpected: u64,
    /// Consumed more than once.
    pub duplicates: u64,
}

impl Drain {
    pub async fn bind(url: &str, exchange: &str) -> anyhow::Result<Drain> {
        let conn = connect(url).await?;
        let ch = conn.create_channel().await?;
        // Declared by the gateway (with its alternate exchange): bound after the gateway is ready.
        let queue = format!("{exchange}-drain");
        let qopts = QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(queue.as_str().into(), qopts, FieldTable::default()).await?;
        ch.queue_bind(
            queue.as_str().into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(Drain { conn, queue })
    }

    /// Consumes until the queue has been quiet for `quiet` after holding at least `expect` messages (or quiet
    /// for 10 s), then compares with `ok` (the events answered 200); deletes the queue and the exchange.
    pub async fn check(self, exchange: &str, ok: &HashSet<u64>, quiet: Duration) -> anyhow::Result<Check> {
        let ch = self.conn.create_channel().await?;
        ch.basic_qos(5000, BasicQosOptions::default()).await?;
        let consume = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let mut consumer =
            ch.basic_consume(self.queue.as_str().into(), "bench".into(), consume, FieldTable::default()).await?;
        let mut seen: HashMap<u64, u32> = HashMap::with_capacity(ok.len());
        let mut consumed = 0u64;
        loop {
            let wait = if consumed >= ok.len() as u64 { quiet } else { Duration::from_secs(10) };
            match tokio::time::timeout(wait, consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    consumed += 1;
                    *seen.entry(key_of(&d.data)).or_default() += 1;
                }
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(None) | Err(_) => break,
            }
        }
        let _ = ch.queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default()).await;
        let _ = ch.exchange_delete(exchange.into(), Default::default()).await;
        let unrouted = format!("{exchange}.unrouted");
        let _ = ch.queue_delete(unrouted.as_str().into(), QueueDeleteOptions::default()).await;
        let _ = ch.exchange_delete(unrouted.as_str().into(), Default::default()).await;
        let _ = self.conn.close(200, "done".into()).await;
        Ok(Check {
            consumed,
            distinct_ok: ok.len() as u64,
            lost: ok.iter().filter(|k| !seen.contains_key(k)).count() as u64,
            unexpected: seen.keys().filter(|k| !ok.contains(k)).count() as u64,
            duplicates: seen.values().map(|n| u64::from(n - 1)).sum(),
        })
    }
}

/// A TCP proxy to the broker: `cut` drops every connection and refuses new ones, `restore` accepts again.
pub struct Proxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let open = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let (o, g) = (open.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !o.load(Ordering::Acquire) {
                    continue; // dropped: the connection is closed at once
                }
                let (o, g) = (o.clone(), g.clone());
                tokio::spawn(pipe(client, upstream, o, g));
            }
        });
        Ok(Proxy { addr, open, generation })
    }

    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::Release);
    }
}

async fn pipe(mut client: TcpStream, upstream: SocketAddr, open: Arc<AtomicBool>, generation: Arc<AtomicU64>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let born = generation.load(Ordering::Acquire);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            _ = &mut copy => return,
            () = tokio::time::sleep(Duration::from_millis(20)) => {
                if generation.load(Ordering::Acquire) != born || !open.load(Ordering::Acquire) {
                    return; // cut: both sockets are dropped
                }
            }
        }
    }
}
