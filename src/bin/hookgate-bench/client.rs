//! HTTP/1.1 keep-alive clients (plain, TLS, mutual TLS) and the two loops: closed (each connection sends its
//! next request when the answer comes) and open (request i is due at start + i / rate; its latency counts from
//! then, so a stall of the gateway shows as latency instead of as fewer requests).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::traffic::{Delivery, Traffic};

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

async fn connect(t: &Target) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect(t.addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let Some(cfg) = &t.tls else {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        return Ok(sender);
    };
    let name = rustls::pki_types::ServerName::IpAddress(t.addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp).await.context("TLS handshake")?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// What one loop saw.
pub struct Tally {
    /// Microseconds, request sent (closed loop) or due (open loop) to answer read.
    pub hist: Histogram<u64>,
    /// Events answered 200 (`Stored` or `Duplicate`).
    pub ok_keys: HashSet<u64>,
    pub stored: u64,
    pub duplicate: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// Connection or protocol errors (the connection is opened again).
    pub errors: u64,
    /// 429 answers without `Retry-After`.
    pub no_retry_after: u64,
    pub answered: u64,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            ok_keys: HashSet::new(),
            stored: 0,
            duplicate: 0,
            statuses: BTreeMap::new(),
            errors: 0,
            no_retry_after: 0,
            answered: 0,
        }
    }

    pub fn merge(&mut self, o: Tally) {
        let _ = self.hist.add(&o.hist);
        self.ok_keys.extend(o.ok_keys);
        self.stored += o.stored;
        self.duplicate += o.duplicate;
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.errors += o.errors;
        self.no_retry_after += o.no_retry_after;
        self.answered += o.answered;
    }
}

/// Client addresses sent in `X-Forwarded-For`: each chosen address sends `per_address` requests in a row.
#[derive(Clone, Copy)]
pub struct Forwarded {
    pub clients: u32,
    pub per_address: u32,
}

/// How requests are paced.
#[derive(Clone, Copy)]
pub enum Pace {
    Closed,
    Open { rate: u64 },
}

/// One load phase.
pub struct Load {
    pub target: Target,
    pub connections: usize,
    pub duration: Duration,
    pub pace: Pace,
    pub forwarded: Option<Forwarded>,
}

/// Runs `load` with one [`Traffic`] per connection (made by `traffic(i)`).
pub async fn run(load: &Load, traffic: impl Fn(u64) -> Traffic) -> anyhow::Result<(Tally, Duration)> {
    let mut senders = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        senders.push(connect(&load.target).await?);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + load.duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, sender) in senders.into_iter().enumerate() {
        let w = Worker {
            target: load.target.clone(),
            sender,
            traffic: traffic(i as u64),
            tally: Tally::new(),
            forwarded: load.forwarded.map(|f| (f, 0u32, 0u32)),
        };
        let next = next.clone();
        let pace = load.pace;
        tasks.push(tokio::spawn(async move { w.run(pace, start, end, next).await }));
    }
    let mut total = Tally::new();
    for t in tasks {
        total.merge(t.await.context("worker")?);
    }
    Ok((total, end.saturating_duration_since(start)))
}

struct Worker {
    target: Target,
    sender: Sender,
    traffic: Traffic,
    tally: Tally,
    forwarded: Option<(Forwarded, u32, u32)>,
}

impl Worker {
    async fn run(mut self, pace: Pace, start: Instant, end: Instant, next: Arc<AtomicU64>) -> Tally {
        tokio::time::sleep_until(start).await;
        loop {
            let due = match pace {
                Pace::Closed => Instant::now(),
                Pace::Open { rate } => {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    start + Duration::from_nanos(i.saturating_mul(1_000_000_000) / rate.max(1))
                }
            };
            if due >= end {
                break;
            }
            tokio::time::sleep_until(due).await;
            let d = self.traffic.next();
            let xff = self.next_forwarded();
            self.send(&d, xff, due).await;
        }
        self.tally
    }

    fn next_forwarded(&mut self) -> Option<String> {
        let (f, addr, left) = self.forwarded.as_mut()?;
        if *left == 0 {
            *addr = u32::try_from(self.traffic.rng().below(u64::from(f.clients))).unwrap_or(0);
            *left = f.per_address;
        }
        *left -= 1;
        let a = 0x0a00_0000u32 + *addr;
        Some(std::net::Ipv4Addr::from(a).to_string())
    }

    async fn send(&mut self, d: &Delivery, xff: Option<String>, due: Instant) {
        let mut b = http::Request::post(d.path).header("host", "127.0.0.1").header("content-type", d.content_type);
        for (k, v) in &d.headers {
            b = b.header(*k, v.as_str());
        }
        if let Some(x) = &xff {
            b = b.header("x-forwarded-for", x.as_str());
        }
        let Ok(req) = b.body(Full::new(d.body.clone())) else {
            self.tally.errors += 1;
            return;
        };
        match self.exchange(req).await {
            Ok((status, reason, retry_after)) => {
                let micros = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
                let _ = self.tally.hist.record(micros.min(120_000_000));
                self.tally.answered += 1;
                *self.tally.statuses.entry(status).or_default() += 1;
                if status == 200 {
                    self.tally.ok_keys.insert(d.key);
                    if reason == "Duplicate" {
                        self.tally.duplicate += 1;
                    } else {
                        self.tally.stored += 1;
                    }
                }
                if status == 429 && !retry_after {
                    self.tally.no_retry_after += 1;
                }
            }
            Err(_) => {
                self.tally.errors += 1;
                if let Ok(s) = connect(&self.target).await {
                    self.sender = s;
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn exchange(&mut self, req: http::Request<Full<Bytes>>) -> anyhow::Result<(u16, String, bool)> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
            .unwrap_or_default();
        let retry_after = resp.headers().contains_key("retry-after");
        resp.into_body().collect().await?;
        Ok((status, reason, retry_after))
    }
}
