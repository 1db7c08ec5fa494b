use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::*;
use crate::auth::Peer;
use crate::event::Event;
use crate::store::StoreError;

/// A sink whose stores finish only when the test lets them (a disk stuck in `fsync`, say).
struct Stuck(Arc<Semaphore>);

impl Sink for Stuck {
    fn store<'a>(&'a self, _: &'a Event, _: Instant) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let _ = self.0.acquire().await.map(|p| p.forget());
            Ok(())
        })
    }

    fn ready(&self) -> bool {
        true
    }
}

/// Three bodies fit in the budget (65,536 bytes), a fourth does not.
const BODY: usize = 21_000;

const CONFIG: &str = "[server]\nmax_inflight_body_bytes = 65536\n[broker]\npublish_timeout = \"200ms\"\n\
                      [sources.g]\npreset = \"generic\"\nunauthenticated = true\nack_timeout = \"1s\"\nmax_body_bytes = 32768\n";

fn gateway(dir: &std::path::Path, sink: Arc<dyn Sink>) -> Gateway {
    let config = crate::config::Config::parse(CONFIG).and_then(crate::config::Config::validate).expect("config");
    let sources = crate::source::build_all(&config, &HashMap::<String, String>::new()).expect("sources");
    let state = crate::state::State::open(dir).expect("state");
    let metrics = Metrics::new();
    let stores = (Dedup::new(state.clone(), None), Order::new(state, None));
    let limits = Arc::new(RateLimits::new(&config.rate_limits, metrics.rate_limiter_keys.clone()));
    let reading = RequestLimits {
        body_read_timeout: config.server.body_read_timeout.0,
        max_header_bytes: config.server.max_header_bytes,
        bodies: crate::http::BodyBudget::new(config.server.max_inflight_body_bytes, config.server.body_share()),
    };
    Gateway::new(crate::router::Router::new(sources), sink, stores, metrics, limits, reading)
}

async fn post(gw: &Gateway, n: usize) -> (u16, String, Duration) {
    // Each delivery from a client of its own: the global budget is the subject, not a client's share.
    post_from(gw, n, u8::try_from(n).expect("a few deliveries")).await
}

/// Delivery `n` from client 127.0.0.`client`.
async fn post_from(gw: &Gateway, n: usize, client: u8) -> (u16, String, Duration) {
    let head = format!(r#"{{"event":"e{n}","pad":""#);
    let body = format!("{head}{}\"}}", "x".repeat(BODY - head.len() - 2));
    assert_eq!(body.len(), BODY);
    let req = Request::post("/webhooks/g")
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let started = Instant::now();
    let answer: Response<Full<Bytes>> = gw.handle(req, Peer::plain(([127, 0, 0, client], 4000).into())).await;
    let status = answer.status().as_u16();
    let text = answer.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    (status, String::from_utf8_lossy(&text).trim_end().to_string(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_outlives_its_answer_keeps_its_body_in_the_inflight_budget() {
    // A store that does not finish by the deadline is answered, and goes on (an event is never abandoned half-way
    // into its store); its body stays in `max_inflight_body_bytes` until it ends, so a stuck disk fills the budget
    // and turns new deliveries away at once instead of piling up tasks that each hold an event.
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Arc::new(Semaphore::new(0));
    let gw = Arc::new(gateway(dir.path(), Arc::new(Stuck(gate.clone()))));
    let waits: Vec<_> = (1..=3)
        .map(|n| {
            let gw = gw.clone();
            tokio::spawn(async move { post(&gw, n).await })
        })
        .collect();
    for wait in waits {
        let (status, reason, _) = wait.await.expect("task");
        assert_eq!((status, reason.as_str()), (503, "Store Unavailable"));
    }
    assert_eq!(gw.reading.bodies.available(), 65_536 - 3 * BODY, "three stuck stores hold their bodies");
    let (status, reason, took) = post(&gw, 4).await;
    assert_eq!((status, reason.as_str()), (503, "Server Busy"));
    assert!(took < Duration::from_millis(500), "turned away at once, not at the deadline: {took:?}");
    // The stores end: their bytes come back.
    gate.add_permits(3);
    let until = Instant::now() + Duration::from_secs(5);
    while gw.reading.bodies.available() < 65_536 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((gw.reading.bodies.available(), gw.reading.bodies.clients()), (65_536, 0));
}

/// A store that outlives its answer keeps its client's share too: that client's next body, over its share
/// (16,384 bytes: a quarter), is turned away at once; another client's still fits the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_store_holds_its_clients_share() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Arc::new(Semaphore::new(0));
    let gw = Arc::new(gateway(dir.path(), Arc::new(Stuck(gate.clone()))));
    let (status, reason, _) = post_from(&gw, 1, 7).await;
    assert_eq!((status, reason.as_str()), (503, "Store Unavailable"), "its only body: past the share is allowed");
    let (status, reason, took) = post_from(&gw, 2, 7).await;
    assert_eq!((status, reason.as_str()), (503, "Server Busy"));
    assert!(took < Duration::from_millis(500), "turned away at once: {took:?}");
    let (status, reason, _) = post_from(&gw, 3, 8).await;
    assert_eq!((status, reason.as_str()), (503, "Store Unavailable"), "another client's body was read");
    assert_eq!((gw.reading.bodies.available(), gw.reading.bodies.clients()), (65_536 - 2 * BODY, 2));
    gate.add_permits(2);
    let until = Instant::now() + Duration::from_secs(5);
    while gw.reading.bodies.clients() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((gw.reading.bodies.available(), gw.reading.bodies.clients()), (65_536, 0));
}
