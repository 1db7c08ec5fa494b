//! Storage measurement behind docs/architecture.md, "Storage": durable appends per second of 1 KiB events,
//! redb (one fsynced commit per event, and group commits of 32) against the spool's segment log (one fsync
//! per append, and 32 concurrent appenders sharing fsyncs).
//!
//! Run: `cargo bench --bench storage` (prints a table; takes a few seconds).
//!
//! With `INDEX_EVENTS=N` it also grows the dedup index by N `prepaid-card` events through the gateway's state
//! code, in commits of `state::BATCH` records, once with the rows a card event wrote before issue 14 (a dedup
//! row and an order row) and once with what it writes now (the dedup row), and prints the bytes per event of
//! `state.redb` (a minute or more per million events: every commit is fsynced).

use std::sync::Arc;
use tokio::time::Instant;

use bytes::Bytes;
use hookgate::event::Event;
use hookgate::spool::{Cipher, Spool};
use redb::{Database, Durability, TableDefinition};

const N: usize = 2000;
const CONCURRENCY: usize = 32;
const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");

fn event(n: usize) -> Event {
    Event {
        source: Arc::from("instamed"),
        id: format!("tx{n}:payment.approved"),
        kind: "payment.approved".into(),
        subject: Some(format!("tx{n}")),
        time: None,
        rank: Some(1),
        received_at: chrono::Utc::now(),
        content_type: "application/json".into(),
        body: Bytes::from(vec![b'x'; 1024]),
        out_of_order: false,
    }
}

fn redb_commits(batch: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::create(dir.path().join("bench.redb")).expect("redb");
    let started = Instant::now();
    for chunk in 0..N / batch {
        // Sealed like a spool record, so both sides pay for AES-256-GCM.
        let value = sealed(chunk);
        let mut txn = db.begin_write().expect("txn");
        txn.set_durability(Durability::Immediate);
        {
            let mut t = txn.open_table(TABLE).expect("table");
            for i in 0..batch {
                t.insert((chunk * batch + i) as u64, value.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    N as f64 / started.elapsed().as_secs_f64()
}

fn sealed(n: usize) -> Vec<u8> {
    let plain = hookgate::spool::format::encode(&event(n));
    Cipher::new(&[1u8; 32]).seal(n as u64, &plain).expect("seal")
}

/// A spool in redb: fill in group commits of 32, drain in commits of 64 deletes; events/s and bytes left.
fn redb_fill_drain() -> (f64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.redb");
    let db = Database::create(&path).expect("redb");
    let started = Instant::now();
    for chunk in 0..N / CONCURRENCY {
        let value = sealed(chunk);
        let mut txn = db.begin_write().expect("txn");
        txn.set_durability(Durability::Immediate);
        {
            let mut t = txn.open_table(TABLE).expect("table");
            for i in 0..CONCURRENCY {
                t.insert((chunk * CONCURRENCY + i) as u64, value.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    for chunk in 0..N / 64 {
        let mut txn = db.begin_write().expect("txn");
        txn.set_durability(Durability::Immediate);
        {
            let mut t = txn.open_table(TABLE).expect("table");
            for i in 0..64 {
                t.remove((chunk * 64 + i) as u64).expect("remove");
            }
        }
        txn.commit().expect("commit");
    }
    let rate = N as f64 / started.elapsed().as_secs_f64();
    drop(db);
    (rate, std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0))
}

/// The spool log: 32 concurrent appenders, then drained record by record (cursor every 64); bytes left.
async fn spool_fill_drain() -> (f64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(dir.path(), Some(Cipher::new(&[1u8; 32])), 1 << 30).expect("spool");
    let started = Instant::now();
    fill(&spool, CONCURRENCY).await;
    while let Some((seq, _event)) = spool.front().expect("front") {
        spool.advance(seq).expect("advance");
    }
    let rate = N as f64 / started.elapsed().as_secs_f64();
    let left = std::fs::read_dir(dir.path()).expect("dir").flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len());
    (rate, left.sum())
}

async fn fill(spool: &Spool, concurrency: usize) {
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let spool = spool.clone();
            tokio::spawn(async move {
                for n in (w..N).step_by(concurrency) {
                    spool.append(&event(n)).await.expect("append");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
}

async fn spool_appends(concurrency: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(dir.path(), Some(Cipher::new(&[1u8; 32])), 1 << 30).expect("spool");
    let started = Instant::now();
    fill(&spool, concurrency).await;
    N as f64 / started.elapsed().as_secs_f64()
}

/// Grows an index by `n` card events (with or without their order row); bytes of `state.redb` per event.
async fn index_bytes(n: u64, order_rows: bool) -> (f64, f64) {
    use hookgate::state::{now_ms, Op, State, BATCH};
    let dir = tempfile::tempdir().expect("tempdir");
    let state = State::open(dir.path()).expect("state");
    let expires_ms = now_ms() + 72 * 3_600_000;
    let started = Instant::now();
    let per_event = if order_rows { 2 } else { 1 };
    let mut i = 0u64;
    while i < n {
        let mut ops = Vec::with_capacity(BATCH);
        while ops.len() + per_event <= BATCH && i < n {
            let key = hookgate::dedup::key("prepaid-card", &format!("00000000-0000-4000-8000-{i:012x}"));
            if order_rows {
                ops.push(Op::Order { key: key.clone(), time_ms: 1_700_000_000_000, rank: 0, expires_ms });
            }
            ops.push(Op::Done { key, expires_ms });
            i += 1;
        }
        state.write(ops).await.expect("write");
    }
    let secs = started.elapsed().as_secs_f64();
    drop(state);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let len = std::fs::metadata(dir.path().join("state.redb")).expect("state.redb").len();
    (len as f64 / n as f64, secs)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    if let Some(n) = std::env::var("INDEX_EVENTS").ok().and_then(|v| v.parse::<u64>().ok()) {
        for (label, order_rows) in [("dedup + order row (before)", true), ("dedup row (now)", false)] {
            let (per_event, secs) = rt.block_on(index_bytes(n, order_rows));
            println!("index of {n} card events, {label:<27} {per_event:>6.1} bytes/event ({secs:.0} s)");
        }
    }
    println!("{N} events of 1 KiB, durable (fsync) before each acknowledgement; events/s:");
    println!("redb, one commit per event          {:>10.0}", redb_commits(1));
    println!("redb, group commit of {CONCURRENCY}           {:>10.0}", redb_commits(CONCURRENCY));
    println!("spool log, one append at a time     {:>10.0}", rt.block_on(spool_appends(1)));
    println!("spool log, {CONCURRENCY} concurrent appenders   {:>10.0}", rt.block_on(spool_appends(CONCURRENCY)));
    let (rate, left) = redb_fill_drain();
    println!("redb, fill then drain               {rate:>10.0}   {left} bytes left on disk");
    let (rate, left) = rt.block_on(spool_fill_drain());
    println!("spool log, fill then drain          {rate:>10.0}   {left} bytes left on disk");
}
