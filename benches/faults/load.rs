//! Steady load: `WORKERS` senders, each a delivery every few milliseconds, one in five a provider retry (of an
//! event not yet answered 200, or of one that was: a `Duplicate`). Every answer is recorded with its latency.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

pub const WORKERS: usize = 4;
const PAUSE: Duration = Duration::from_millis(15);

pub struct Answer {
    pub phase: usize,
    pub body: Arc<str>,
    pub status: Option<u16>,
    pub reason: String,
    pub took: Duration,
    /// When the answer came.
    pub at: Instant,
}

#[derive(Clone)]
pub struct Load {
    pub phase: Arc<AtomicUsize>,
    pub stop: Arc<AtomicBool>,
    pub answers: Arc<Mutex<Vec<Answer>>>,
    /// body → the phase it was first sent in.
    pub sent: Arc<Mutex<std::collections::HashMap<Arc<str>, usize>>>,
}

impl Load {
    pub fn new() -> Load {
        Load { phase: Arc::default(), stop: Arc::default(), answers: Arc::default(), sent: Arc::default() }
    }

    pub fn spawn(&self, addr: SocketAddr) -> Vec<tokio::task::JoinHandle<()>> {
        (0..WORKERS).map(|w| tokio::spawn(self.clone().worker(addr, w))).collect()
    }

    async fn worker(self, addr: SocketAddr, w: usize) {
        let pad = "x".repeat(700);
        let mut pending: Vec<Arc<str>> = Vec::new();
        let mut done: Vec<Arc<str>> = Vec::new();
        let mut n = 0usize;
        while !self.stop.load(Ordering::Acquire) {
            let phase = self.phase.load(Ordering::Acquire);
            let body: Arc<str> = if n % 5 == 4 && !pending.is_empty() {
                pending.remove(0)
            } else if n % 10 == 9 && !done.is_empty() {
                done[n % done.len()].clone()
            } else {
                format!(r#"{{"event":"fault","phase":{phase},"w":{w},"n":{n},"pad":"{pad}"}}"#).into()
            };
            n += 1;
            if let Ok(mut s) = self.sent.lock() {
                s.entry(body.clone()).or_insert(phase);
            }
            let started = Instant::now();
            let answer = crate::gateway::request(addr, "POST", "/webhooks/generic", body.as_bytes()).await;
            let took = started.elapsed();
            let (status, reason) = answer.map_or((None, String::new()), |(s, r)| (Some(s), r));
            if status == Some(200) {
                done.push(body.clone());
            } else if pending.len() < 1000 {
                pending.push(body.clone());
            }
            if let Ok(mut a) = self.answers.lock() {
                a.push(Answer { phase, body, status, reason, took, at: Instant::now() });
            }
            // A refused connection (the gateway is down) is retried a little later, like a provider would.
            let pause = if status.is_none() && took < PAUSE { PAUSE * 4 } else { PAUSE };
            tokio::time::sleep(pause).await;
        }
    }
}
