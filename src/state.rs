//! The embedded state database (`<data_dir>/state.redb`, redb): the dedup index, the per-subject order
//! state and the polling jobs. The spool is not in here: it is its own append-only log (see
//! `docs/architecture.md`, "Storage").
//!
//! # Invariants
//!
//! - Every write goes through one writer thread that commits batches: all writes waiting when a commit starts
//!   share it (group commit) and each commit is fsynced before any waiter is told. Its dedup and order rows go
//!   to the record log ([`log`], `state.log.<n>`), are answered from memory ([`memory`]) and are folded into the
//!   tables later in sorted commits; its other writes are a commit to the file (`Durability::Immediate`).
//! - Keys are `<source>\u{1f}<id or subject>` (the unit separator cannot appear in a source name), stored as
//!   their [`Digest`]: the first 16 bytes of their SHA-256. Fixed-width rows keep the index small on disk
//!   (`docs/benchmarks.md`: under 100 bytes per event with its order row); a collision of two ids (about 2^-64
//!   for 2^32 ids) would answer the second `Duplicate`.
//! - Tables: `dedup_v2` (digest → expiry, ms since the epoch) and `order_v2` (digest → (max time ms, max rank,
//!   expiry ms)). No expiry index for them: [`State::purge`] sweeps one of [`sweep::SLICES`] slices of the
//!   digest space per call (digests are uniform, so each slice holds about the same share of the rows) in a
//!   read transaction, which never blocks the writer, and removes the rows still expired in commits of at most
//!   [`sweep::REMOVE_CHUNK`] rows. A purge reads a bounded share of the index however large it is, and no
//!   commit rewrites most of the tree (which would leave as many pages free and the file twice as large); a
//!   row may outlive its expiry by one sweep (lookups compare the expiry, so it is never answered from).
//!   The string-keyed tables of earlier versions (`dedup`, `order`) are converted once at open.
//! - `poll_jobs` (`<poller>\u{1f}<token>` → (expiry ms, the job record: JSON, see `poll/job.rs`)) keeps string
//!   keys (listed by prefix) and its entries in `expiry` ((expiry ms, `p` + key) → ()), which the purge walks.
//! - No tokio worker touches the file: writes go to the writer thread over a bounded channel, and the request
//!   path reads through [`State::lookup_done`] / [`State::lookup_order`] (`spawn_blocking`). redb takes no lock
//!   a reader needs while a commit fsyncs.
//! - Those lookups first ask the record log's rows in memory (newest first), then [`filter`] (in memory)
//!   whether the file may hold the digest at all: for an id or subject never stored, the answer comes without a
//!   read. A folded row enters the filter after its commit and leaves memory after that.
//! - redb's page cache is bounded by `storage.cache_bytes`, the filter by `storage.filter_bytes`, the rows in
//!   memory by two generations of at most [`memory::MAX_FOLD_ROWS`] rows.
//!
//! Layout: [`writer`] the writer thread and its commits; [`log`] the record log's files; [`memory`] its rows
//! until folded; [`sweep`] the purge (and rebuilds the filter of each slice it scans); [`filter`] the in-memory
//! filter, built by a thread of its own at start ([`open`], with the opening of the file).

pub mod filter;
mod log;
mod memory;
mod open;
mod sweep;
#[cfg(test)]
mod tests;
mod writer;

use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{Database, ReadableTableMetadata, TableDefinition};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};

use self::filter::Filter;
use self::log::{Log, Replayed};
use self::memory::Memory;
use self::open::{build_filter, convert_old_tables, open_db};
use self::writer::{Job, Reply, Row, Writer};

/// The stored form of a key.
pub type Digest = [u8; 16];

const DEDUP: TableDefinition<Digest, u64> = TableDefinition::new("dedup_v2");
const ORDER: TableDefinition<Digest, (i64, u8, u64)> = TableDefinition::new("order_v2");
const OLD_DEDUP: TableDefinition<&str, u64> = TableDefinition::new("dedup");
const OLD_ORDER: TableDefinition<&str, (i64, u8, u64)> = TableDefinition::new("order");
const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("expiry");
const POLL_JOBS: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("poll_jobs");
/// Writes queued for the writer before senders wait (backpressure, bounded memory).
const QUEUE: usize = 4096;
/// Most writes in one commit (each delivery's record is one write: a commit holds at most this many records).
pub const BATCH: usize = 512;
/// A group smaller than [`LINGER_BELOW`] waits this long for more writes before it commits: a commit is an
/// fsync whatever it holds (and, before the record log, a rewrite of the tree's path pages: the writer thread
/// was a fifth of the gateway's CPU at a few records per commit). The cost: a record becomes durable up to this
/// much later (answers do not wait for dedup records; see docs/delivery-semantics.md).
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(5);
/// Groups at least this large commit at once.
const LINGER_BELOW: usize = 64;
/// redb's page cache when nothing is configured (`storage.cache_bytes`). The filter answers most lookups and the
/// OS page cache holds the file, so a small cache costs no speed: with 1 M events indexed a 4 MiB cache ran
/// faster than 16 MiB (5,679 / 6,224 against 4,804 / 5,399 answers/s) for 28–32 MiB less RSS (docs/benchmarks.md).
pub const DEFAULT_CACHE_BYTES: usize = 4 << 20;

/// A failed state read or write.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state database: {0}")]
pub struct StateError(pub String);

fn err(e: impl std::fmt::Display) -> StateError {
    StateError(e.to_string())
}

/// The digest under which `key` is stored.
pub fn digest(key: &str) -> Digest {
    let full = Sha256::digest(key.as_bytes());
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    d
}

/// One write.
#[derive(Debug, Clone)]
pub enum Op {
    /// The event id is stored until `expires_ms`.
    Done { key: String, expires_ms: u64 },
    /// The latest (time, rank) seen for a subject, kept until `expires_ms`.
    Order { key: String, time_ms: i64, rank: u8, expires_ms: u64 },
    /// A polling job's record, kept until `expires_ms` (a later write of the same key replaces it).
    PollJob { key: String, record: Vec<u8>, expires_ms: u64 },
    /// Drops the listed rows that are still expired at `now_ms` (found by [`State::purge`]'s sweep), and the
    /// polling jobs due.
    Remove { now_ms: u64, dedup: Vec<Digest>, order: Vec<Digest> },
}

/// The open database and its writer. Cheap to clone.
#[derive(Clone)]
pub struct State {
    db: Arc<Database>,
    tx: mpsc::Sender<Job>,
    /// The slice the next purge sweeps.
    next_slice: Arc<AtomicUsize>,
    /// Which digests the file may hold.
    filter: Arc<Filter>,
    /// The rows in the record log not yet folded into the file.
    memory: Arc<Mutex<Memory>>,
    /// Reads of the file by [`State::lookup_done`] and [`State::lookup_order`] (for the tests).
    #[cfg(test)]
    pub(crate) reads: Arc<AtomicUsize>,
}

impl State {
    /// [`State::open_with`] with the default cache and filter sizes.
    ///
    /// # Errors
    /// See [`State::open_with`].
    pub fn open(data_dir: &Path) -> Result<State, StateError> {
        State::open_with(data_dir, DEFAULT_CACHE_BYTES, filter::DEFAULT_FILTER_BYTES)
    }

    /// Opens (creating) `<data_dir>/state.redb` with a page cache of at most `cache_bytes`, converts tables of
    /// an earlier version, and starts the writer thread and the filter thread (which builds the filter of at
    /// most `filter_bytes` from the file).
    ///
    /// # Errors
    /// The file cannot be created or opened (also: another process holds it).
    pub fn open_with(data_dir: &Path, cache_bytes: usize, filter_bytes: u64) -> Result<State, StateError> {
        crate::private_fs::create_dir(data_dir).map_err(err)?;
        let path = data_dir.join("state.redb");
        // Created (or tightened) 0600 before redb opens it: redb itself would create it with the umask.
        crate::private_fs::ensure_file(&path).map_err(err)?;
        let db = Arc::new(open_db(&path, cache_bytes)?);
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(DEDUP).map_err(err)?;
        txn.open_table(ORDER).map_err(err)?;
        txn.open_table(EXPIRY).map_err(err)?;
        txn.open_table(POLL_JOBS).map_err(err)?;
        txn.commit().map_err(err)?;
        convert_old_tables(&db)?;
        let Replayed { log, active, frozen } = Log::open(data_dir)?;
        let memory = Arc::new(Mutex::new(Memory { active, frozen }));
        let filter = Arc::new(Filter::new(filter_bytes));
        let (requests, rebuilds) = std::sync::mpsc::channel();
        filter.requests_to(requests);
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut writer = Writer::new(db.clone(), filter.clone(), memory.clone(), log)?;
        std::thread::Builder::new().name("hookgate-state".into()).spawn(move || writer.run(rx)).map_err(err)?;
        let (weak_db, weak_filter) = (Arc::downgrade(&db), Arc::downgrade(&filter));
        std::thread::Builder::new()
            .name("hookgate-filter".into())
            .spawn(move || build_filter(&weak_db, &weak_filter, &rebuilds))
            .map_err(err)?;
        Ok(State {
            db,
            tx,
            next_slice: Arc::default(),
            filter,
            memory,
            #[cfg(test)]
            reads: Arc::default(),
        })
    }

    /// Applies `ops` durably; returns after the fsync of the commit that holds them.
    ///
    /// # Errors
    /// The commit failed, or the writer is gone.
    pub async fn write(&self, ops: Vec<Op>) -> Result<(), StateError> {
        let (done, wait) = oneshot::channel();
        let job = Job { ops, done: Some(Reply::Wait(done)) };
        self.tx.send(job).await.map_err(|_| StateError("writer stopped".into()))?;
        wait.await.map_err(|_| StateError("writer stopped".into()))?
    }

    /// Queues `ops` (waiting only while the queue is full) and returns; once their commit is fsynced (or failed),
    /// the writer thread runs `then` with the outcome — no task waits for it. `then` must be short and never
    /// block: it runs between commits. Jobs are committed in the order they are queued, so a later
    /// [`State::write`] returns after `then` has run.
    pub async fn write_then(&self, ops: Vec<Op>, then: impl FnOnce(Result<(), StateError>) + Send + 'static) {
        let job = Job { ops, done: Some(Reply::Then(Box::new(then))) };
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job).await {
            if let Some(reply) = job.done {
                reply.send(Err(StateError("writer stopped".into())));
            }
        }
    }

    /// Whether the writer thread still runs (a critical task: the gateway stops without it).
    pub fn writer_alive(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Queues `ops` without waiting (advisory state, e.g. order maxima); dropped when the queue is full.
    pub fn write_later(&self, ops: Vec<Op>) {
        let _ = self.tx.try_send(Job { ops, done: None });
    }

    /// [`State::done_until`]: from memory when the record log holds the row, else off the runtime (a read that
    /// misses redb's cache goes to the disk), unless the filter knows the file has no such row.
    ///
    /// # Errors
    /// The read failed.
    pub async fn lookup_done(&self, key: &str) -> Result<Option<u64>, StateError> {
        let d = digest(key);
        if let Some(expires_ms) = self.memory().done(&d) {
            return Ok(Some(expires_ms));
        }
        if !self.filter.may_hold(&d) {
            return Ok(None);
        }
        let this = self.clone();
        #[cfg(test)]
        self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || this.file_done(&d)).await.map_err(err)?
    }

    /// [`State::order_of`]: from memory, else off the runtime unless the filter knows the file has no such row.
    ///
    /// # Errors
    /// The read failed.
    pub async fn lookup_order(&self, key: &str) -> Result<Option<(i64, u8, u64)>, StateError> {
        let d = digest(key);
        if let Some(row) = self.memory().order(&d) {
            return Ok(Some(row));
        }
        if !self.filter.may_hold(&d) {
            return Ok(None);
        }
        let this = self.clone();
        #[cfg(test)]
        self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || this.file_order(&d)).await.map_err(err)?
    }

    fn memory(&self) -> MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rows the record log holds in memory now (both generations): what is not yet folded into the file.
    pub fn log_rows(&self) -> u64 {
        let memory = self.memory();
        memory.active.len() + memory.frozen.len()
    }

    /// Bytes the filter takes now.
    pub fn filter_bytes(&self) -> u64 {
        self.filter.bytes()
    }

    /// Waits until the record log's rows are all folded into the file (tests: a generation is frozen once it
    /// holds 64 rows).
    #[cfg(test)]
    pub(crate) async fn folded(&self) {
        for _ in 0..2000 {
            if self.log_rows() == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("the record log's rows were not folded within 10 s");
    }

    /// Waits until the filter thread has built every slot (tests).
    #[cfg(test)]
    pub(crate) async fn filter_built(&self) {
        while !self.filter.built() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// The expiry of a stored event id. Blocking.
    ///
    /// # Errors
    /// The read failed.
    pub fn done_until(&self, key: &str) -> Result<Option<u64>, StateError> {
        let d = digest(key);
        match self.memory().done(&d) {
            Some(expires_ms) => Ok(Some(expires_ms)),
            None => self.file_done(&d),
        }
    }

    /// The stored (max time ms, max rank, expiry ms) of a subject. Blocking.
    ///
    /// # Errors
    /// The read failed.
    pub fn order_of(&self, key: &str) -> Result<Option<(i64, u8, u64)>, StateError> {
        let d = digest(key);
        match self.memory().order(&d) {
            Some(row) => Ok(Some(row)),
            None => self.file_order(&d),
        }
    }

    /// A done row in the file (not in memory: a row the record log holds is newer). Blocking.
    fn file_done(&self, d: &Digest) -> Result<Option<u64>, StateError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(DEDUP).map_err(err)?;
        Ok(table.get(d).map_err(err)?.map(|v| v.value()))
    }

    /// An order row in the file. Blocking.
    fn file_order(&self, d: &Digest) -> Result<Option<(i64, u8, u64)>, StateError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(ORDER).map_err(err)?;
        Ok(table.get(d).map_err(err)?.map(|v| v.value()))
    }

    /// The record of one polling job.
    ///
    /// # Errors
    /// The read failed.
    pub fn poll_job(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(POLL_JOBS).map_err(err)?;
        Ok(table.get(key).map_err(err)?.map(|v| v.value().1.to_vec()))
    }

    /// Every polling job whose key starts with `prefix`, as (key, record).
    ///
    /// # Errors
    /// The read failed.
    pub fn poll_jobs(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(POLL_JOBS).map_err(err)?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), v.value().1.to_vec()));
        }
        Ok(out)
    }
}

/// The next group of a writer thread: blocks for one job, then takes the others already waiting, `max` at most.
/// `None` once every sender is gone and the queue is empty.
pub(crate) fn next_batch<T>(rx: &mut mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let mut jobs = vec![rx.blocking_recv()?];
    take_waiting(rx, &mut jobs, max);
    Some(jobs)
}

/// Moves the jobs already waiting into `jobs`, up to `max` in all.
fn take_waiting<T>(rx: &mut mpsc::Receiver<T>, jobs: &mut Vec<T>, max: usize) {
    while jobs.len() < max {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
}

type Table<'t, K, V> = redb::Table<'t, K, V>;

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

/// Distinct dedup and order rows stored, in the file or the record log (for the benchmark and tests).
///
/// # Errors
/// The read failed.
pub fn rows(state: &State) -> Result<(u64, u64), StateError> {
    let (mut dedup, mut order) = state.memory().active.digests();
    let (frozen_dedup, frozen_order) = state.memory().frozen.digests();
    dedup.extend(frozen_dedup);
    order.extend(frozen_order);
    dedup.sort_unstable();
    dedup.dedup();
    order.sort_unstable();
    order.dedup();
    let txn = state.db.begin_read().map_err(err)?;
    let (dt, ot) = (txn.open_table(DEDUP).map_err(err)?, txn.open_table(ORDER).map_err(err)?);
    let mut d = dt.len().map_err(err)?;
    let mut o = ot.len().map_err(err)?;
    for k in &dedup {
        d += u64::from(dt.get(k).map_err(err)?.is_none());
    }
    for k in &order {
        o += u64::from(ot.get(k).map_err(err)?.is_none());
    }
    Ok((d, o))
}
