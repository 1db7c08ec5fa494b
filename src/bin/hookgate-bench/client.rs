//! HTTP/1.1 keep-alive clients (plain, TLS, mutual TLS) and the two loops: closed (each connection sends its
//! next request when the answer comes) and open (request i is due at start + i / rate; its latency counts from
//! then, so a stall of the gateway shows as latency instead of as fewer requests).
//!
//! A connection is driven by the one task that sends on it: the request is written whole, the answer's head
//! parsed with httparse (hyper's parser), its body read by `Content-Length` and dropped. A generator sharing
//! two cores with what it measures must cost little per request; hyper's client (a connection task, a channel
//! and two wake-ups per request) took about a third more of the machine for the same answers.

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::traffic::{Delivery, Traffic};

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The most an answer's head may take.
const MAX_HEAD: usize = 16 << 10;

/// One keep-alive connection.
struct Conn {
    io: Box<dyn Io>,
    /// The request being sent (head and body), reused.
    out: Vec<u8>,
    /// What has been read of the answer.
    input: Vec<u8>,
    /// The last answer said `Connection: close`.
    closed: bool,
}

/// What an answer said.
struct Answer {
    status: u16,
    duplicate: bool,
    retry_after: bool,
}

async fn connect(t: &Target) -> anyhow::Result<Conn> {
    let tcp = TcpStream::connect(t.addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let io: Box<dyn Io> = match &t.tls {
        None => Box::new(tcp),
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::IpAddress(t.addr.ip().into());
            let connector = tokio_rustls::TlsConnector::from(cfg.clone());
            Box::new(connector.connect(name, tcp).await.context("TLS handshake")?)
        }
    };
    Ok(Conn { io, out: Vec::with_capacity(4096), input: Vec::with_capacity(4096), closed: false })
}

impl Conn {
    /// Sends `d` and reads its answer.
    async fn exchange(&mut self, d: &Delivery, xff: Option<&str>) -> anyhow::Result<Answer> {
        self.encode(d, xff)?;
        self.io.write_all(&self.out).await?;
        self.io.flush().await?;
        self.input.clear();
        let (answer, head, body) = loop {
            if let Some(parsed) = self.parse_head()? {
                break parsed;
            }
            if self.input.len() > MAX_HEAD {
                bail!("answer head past {MAX_HEAD} bytes");
            }
            self.read_more().await?;
        };
        while self.input.len() < head + body {
            self.read_more().await?;
        }
        Ok(answer)
    }

    fn encode(&mut self, d: &Delivery, xff: Option<&str>) -> std::io::Result<()> {
        let out = &mut self.out;
        out.clear();
        write!(out, "POST {} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {}\r\n", d.path, d.content_type)?;
        write!(out, "content-length: {}\r\n", d.body.len())?;
        for (k, v) in &d.headers {
            write!(out, "{k}: {v}\r\n")?;
        }
        if let Some(x) = xff {
            write!(out, "x-forwarded-for: {x}\r\n")?;
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&d.body);
        Ok(())
    }

    /// The answer, the head's length and the body's, once the head is all in.
    fn parse_head(&mut self) -> anyhow::Result<Option<(Answer, usize, usize)>> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head) = resp.parse(&self.input)? else {
            return Ok(None);
        };
        let mut body = None;
        let mut retry_after = false;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                body = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
            } else if h.name.eq_ignore_ascii_case("retry-after") {
                retry_after = true;
            } else if h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close") {
                self.closed = true;
            }
        }
        let Some(body) = body else { bail!("answer without Content-Length") };
        let status = resp.code.unwrap_or(0);
        let answer = Answer { status, duplicate: resp.reason == Some("Duplicate"), retry_after };
        Ok(Some((answer, head, body)))
    }

    async fn read_more(&mut self) -> anyhow::Result<()> {
        self.input.reserve(4096);
        if self.io.read_buf(&mut self.input).await? == 0 {
            bail!("connection closed before the answer");
        }
        Ok(())
    }
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
    let mut conns = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        conns.push(connect(&load.target).await?);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + load.duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let w = Worker {
            target: load.target.clone(),
            conn,
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
    conn: Conn,
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
        if self.conn.closed {
            self.reconnect().await;
        }
        match self.conn.exchange(d, xff.as_deref()).await {
            Ok(a) => {
                let micros = crate::broker::micros(due.elapsed());
                let _ = self.tally.hist.record(micros.min(120_000_000));
                self.tally.answered += 1;
                *self.tally.statuses.entry(a.status).or_default() += 1;
                if a.status == 200 {
                    self.tally.ok_keys.insert(d.key);
                    if a.duplicate {
                        self.tally.duplicate += 1;
                    } else {
                        self.tally.stored += 1;
                    }
                }
                if a.status == 429 && !a.retry_after {
                    self.tally.no_retry_after += 1;
                }
            }
            Err(_) => {
                self.tally.errors += 1;
                self.reconnect().await;
            }
        }
    }

    async fn reconnect(&mut self) {
        match connect(&self.target).await {
            Ok(c) => self.conn = c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
