//! Storage measurement behind docs/architecture.md, "Storage": durable appends per second of 1 KiB events,
//! redb (one fsynced commit per event, and group commits of 32) against the spool's segment log (one fsync
//! per append, and 32 concurrent appenders sharing fsyncs).
//!
//! Run: `cargo bench --bench storage` (prints a table; takes a few seconds).

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

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
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
