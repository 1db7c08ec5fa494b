//! The spool: a crash-safe, encrypted, append-only log of events the broker did not confirm in time, from which
//! the drainer publishes them later, in receipt order.
//!
//! # Invariants
//!
//! - An append returns `Ok` only after its record is written *and fsynced* (file, and the directory entry of a new
//!   segment). Appends are written by one writer thread ([`writer`]); every append waiting when it starts a batch
//!   shares one fsync (group commit).
//! - No tokio worker does disk I/O or waits for a lock held across it: the drainer's reads, cursor writes and
//!   deletions run in `spawn_blocking`, and the request path's checks read atomics.
//! - Records get consecutive sequence numbers (`seq`) in append order; the drainer publishes in `seq` order and
//!   moves the durable cursor past a record only after the broker confirmed it. A crash can therefore republish
//!   records confirmed since the last cursor write (at most [`CURSOR_EVERY`]), never lose one.
//! - A segment is deleted only when every record in it is behind the durable cursor.
//! - The spool never holds more than `storage.spool_max_bytes` of undrained records; past that an append fails
//!   with [`SpoolError::Full`] (the caller answers 503, the provider retries).
//! - After a write error the partial record is cut; if that fails too, the spool refuses appends until restart.
//! - A record that can never be read back is copied to `quarantine/` and passed, at start and while draining.
//!
//! # On disk (`<data_dir>/spool/`)
//!
//! `NNNNNNNNNNNNNNNNNNNN.seg` segments named by the seq of their first record, `cursor` (next seq to drain + its
//! CRC), `quarantine/` (corrupt ranges found at open), `parked/` (a spool of the same format holding spooled
//! events that turned out unroutable). The byte format is in [`format`]; recovery in [`segment`].

pub mod command;
pub mod crypto;
pub mod drain;
pub mod format;
pub mod segment;
mod writer;

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, Notify};

pub use crypto::Cipher;
pub use drain::{Drainer, PARKED_RETRY};
pub use segment::Recovery;

use crate::event::Event;

/// The drainer persists its cursor after this many confirmed records (and whenever the spool runs empty).
pub const CURSOR_EVERY: u64 = 64;
/// Largest segment file before a new one is started.
const SEGMENT_BYTES: u64 = 32 << 20;

/// Why an append (or opening the spool) failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool full (storage.spool_max_bytes)")]
    Full,
    #[error("spool disk error: {0}")]
    Io(#[from] std::io::Error),
    #[error("spool refuses writes after an unrepaired write error")]
    Poisoned,
    #[error("event cannot be encrypted")]
    Crypto,
    /// The record can never be read back (checksum, decryption or decoding fails, or its bytes are gone).
    #[error("spool record {0} is unreadable")]
    Corrupt(u64),
}

/// Where one undrained record lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub seq: u64,
    pub segment: u64,
    pub offset: u64,
    pub len: u64,
    pub encrypted: bool,
}

/// `hookgate spool stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub records: usize,
    pub bytes: u64,
    pub oldest: Option<DateTime<Utc>>,
}

/// The spool. Cheap to clone. Appends go to one writer thread (see [`writer`]); the request path's checks
/// ([`Spool::is_empty`], [`Spool::can_take`], ...) read atomics and never take a lock.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
    appends: mpsc::Sender<writer::Job>,
}

struct Inner {
    dir: PathBuf,
    cipher: Option<Cipher>,
    max_bytes: u64,
    segment_bytes: u64,
    /// Taken by the writer thread and by the drainer's blocking work: never by the request path, never on a runtime
    /// thread (the writer holds it across a segment's write and, at a rotation, its fsyncs).
    state: Mutex<State>,
    /// Held across a cursor write and the deletions after it (the fsyncs and the rename), never with `state`.
    cursor: Mutex<()>,
    /// Lock-free copies of `state` for the request path and the drainer's loop on the runtime: undrained records
    /// and their bytes, and the seq of the oldest undrained record (the next seq when none).
    records: AtomicUsize,
    bytes: AtomicU64,
    front: AtomicU64,
    /// The next seq when the spool was opened: every record below it was held at start (the start-up replay's end).
    opened_at: u64,
    poisoned: AtomicBool,
    /// The undrained bytes when an append last found no room (`u64::MAX`: never): the spool takes no event of that
    /// size until the drainer has freed some (`can_take`, so `/readyz`).
    refused_at: AtomicU64,
    /// Every record with a smaller seq is durable.
    synced: AtomicU64,
    /// Wakes the drainer when records arrive (once per group commit).
    pub(crate) arrived: Notify,
    /// Segment writes and fsyncs of records so far (one of each per group commit).
    writes: AtomicU64,
    commits: AtomicU64,
}

struct State {
    queue: VecDeque<Loc>,
    bytes: u64,
    next_seq: u64,
    /// The segment appends go to (none until the first append after open or after the spool ran empty).
    active: Option<Active>,
    drained_since_cursor: u64,
}

struct Active {
    id: u64,
    file: Arc<File>,
    len: u64,
}

impl Spool {
    /// Opens (creating) the spool in `dir`, recovering from any crash point, and starts its writer thread.
    ///
    /// # Errors
    /// The directory cannot be created or read, or a record cannot be decrypted with `cipher`.
    pub fn open(dir: &Path, cipher: Option<Cipher>, max_bytes: u64) -> Result<(Spool, Recovery), SpoolError> {
        Spool::open_sized(dir, cipher, max_bytes, SEGMENT_BYTES.min(max_bytes.max(4096)))
    }

    /// [`Spool::open`] with segments of at most `segment_bytes` (records permitting).
    fn open_sized(
        dir: &Path,
        cipher: Option<Cipher>,
        max_bytes: u64,
        segment_bytes: u64,
    ) -> Result<(Spool, Recovery), SpoolError> {
        crate::private_fs::create_dir(dir)?;
        let cursor = segment::read_cursor(dir);
        let mut report = Recovery::default();
        let mut queue = VecDeque::new();
        let mut next_seq = cursor;
        for id in segment::list(dir)? {
            let Some(locs) = segment::recover(dir, id, cursor, cipher.as_ref(), &mut report)? else { continue };
            // Nothing left to drain (all behind the cursor, or a crash right after creating it): appends start a
            // new segment, which may reuse this id.
            let Some(last) = locs.last() else {
                std::fs::remove_file(segment::path(dir, id))?;
                continue;
            };
            next_seq = next_seq.max(last.seq + 1);
            queue.extend(locs);
        }
        let bytes = queue.iter().map(|l| l.len).sum();
        let (records, front) = (queue.len(), queue.front().map_or(next_seq, |l| l.seq));
        let state = State { queue, bytes, next_seq, active: None, drained_since_cursor: 0 };
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            cipher,
            max_bytes,
            segment_bytes,
            state: Mutex::new(state),
            cursor: Mutex::new(()),
            records: AtomicUsize::new(records),
            bytes: AtomicU64::new(bytes),
            front: AtomicU64::new(front),
            opened_at: next_seq,
            poisoned: AtomicBool::new(false),
            refused_at: AtomicU64::new(u64::MAX),
            synced: AtomicU64::new(next_seq),
            arrived: Notify::new(),
            writes: AtomicU64::new(0),
            commits: AtomicU64::new(0),
        });
        let appends = writer::start(inner.clone())?;
        Ok((Spool { inner, appends }, report))
    }

    pub fn encrypted(&self) -> bool {
        self.inner.cipher.is_some()
    }

    #[cfg(test)]
    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state()
    }

    /// Undrained records.
    pub fn len(&self) -> usize {
        self.inner.records.load(Ordering::Acquire)
    }

    /// Bytes of undrained records (what `storage.spool_max_bytes` caps).
    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an append could succeed now (for `/readyz`): not poisoned, under `spool_max_bytes`, and, since an
    /// append last found no room, below what the spool held then (the drainer has freed some).
    pub fn can_take(&self) -> bool {
        let bytes = self.bytes();
        !self.inner.poisoned.load(Ordering::Acquire)
            && bytes < self.inner.max_bytes
            && bytes < self.inner.refused_at.load(Ordering::Acquire)
    }

    /// Appends `event` and returns once it is durable. The record is written and fsynced by the writer thread,
    /// together with every other append waiting at that moment (group commit).
    ///
    /// # Errors
    /// [`SpoolError::Full`], a disk error, or a spool poisoned by an earlier unrepaired error.
    pub async fn append(&self, event: &Event) -> Result<u64, SpoolError> {
        let stopped = || SpoolError::Io(std::io::Error::other("spool writer stopped"));
        let (done, answer) = oneshot::channel();
        self.appends.send(writer::Job { plain: format::encode(event), done }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Makes every written record durable (off the runtime). A record written but not fsynced — the writer's
    /// fsync failed, or is about to run — is not handed to the drainer until then.
    ///
    /// # Errors
    /// The fsync failed.
    pub async fn flush(&self) -> Result<(), SpoolError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.sync_written())
            .await
            .map_err(|_| SpoolError::Io(std::io::Error::other("fsync task failed")))?
            .map_err(SpoolError::Io)
    }

    /// [`Spool::front`] off the runtime (a file read).
    ///
    /// # Errors
    /// As [`Spool::front`].
    pub async fn peek(&self) -> Result<Option<(u64, Event)>, SpoolError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.front())
            .await
            .map_err(|_| SpoolError::Io(std::io::Error::other("spool read task failed")))?
    }

    /// The oldest durable undrained record and its event. Blocking: reads a file.
    ///
    /// # Errors
    /// [`SpoolError::Corrupt`] when the record can never be read back (see [`Spool::quarantine_front`]), an I/O
    /// error when it cannot be read now.
    pub fn front(&self) -> Result<Option<(u64, Event)>, SpoolError> {
        let loc = {
            let st = self.inner.state();
            match st.queue.front() {
                Some(l) if l.seq < self.inner.synced.load(Ordering::Acquire) => *l,
                _ => return Ok(None),
            }
        };
        self.read(loc).map(|e| Some((loc.seq, e)))
    }

    fn read(&self, loc: Loc) -> Result<Event, SpoolError> {
        let corrupt = SpoolError::Corrupt(loc.seq);
        let mut buf = vec![0u8; usize::try_from(loc.len).unwrap_or(0)];
        let read =
            File::open(segment::path(&self.inner.dir, loc.segment)).and_then(|f| f.read_exact_at(&mut buf, loc.offset));
        match read {
            Ok(()) => {}
            // The segment lost the record's bytes (cut or removed): they cannot come back.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::NotFound) => {
                return Err(corrupt)
            }
            Err(e) => return Err(SpoolError::Io(e)),
        }
        let Some((seq, payload, _)) = format::unframe(&buf).filter(|(seq, _, _)| *seq == loc.seq) else {
            return Err(corrupt);
        };
        let plain = match (&self.inner.cipher, loc.encrypted) {
            (Some(c), true) => c.open(seq, payload).ok_or(corrupt)?,
            (None, true) => return Err(corrupt),
            (_, false) => payload.to_vec(),
        };
        format::decode(&plain).map_err(|_| SpoolError::Corrupt(seq))
    }

    /// Copies the front record `seq`, which [`Spool::front`] found unreadable, to `quarantine/` (as recovery does
    /// at start), moves past it and persists the cursor at once, so a restart does not meet it again. Blocking.
    /// Returns the quarantine file, or `None` when `seq` is no longer the front.
    ///
    /// # Errors
    /// The quarantine copy or the cursor cannot be written.
    pub fn quarantine_front(&self, seq: u64) -> Result<Option<PathBuf>, SpoolError> {
        let loc = match self.inner.state().queue.front() {
            Some(l) if l.seq == seq => *l,
            _ => return Ok(None),
        };
        let mut bytes = vec![0u8; usize::try_from(loc.len).unwrap_or(0)];
        let kept = File::open(segment::path(&self.inner.dir, loc.segment))
            .and_then(|f| f.read_at(&mut bytes, loc.offset))
            .unwrap_or(0);
        bytes.truncate(kept);
        let offset = usize::try_from(loc.offset).unwrap_or(usize::MAX);
        let file = segment::quarantine(&self.inner.dir, loc.segment, offset, &bytes)?;
        self.pass(seq, true)?;
        Ok(Some(file))
    }

    /// Moves past record `seq` once the broker confirmed it. Persists the cursor every [`CURSOR_EVERY`] records
    /// and when the spool runs empty, then deletes segments left wholly behind it. Blocking (fsyncs, a rename).
    ///
    /// # Errors
    /// The cursor cannot be written (the record stays drained in memory; a restart may republish it).
    pub fn advance(&self, seq: u64) -> Result<(), SpoolError> {
        self.pass(seq, false)
    }

    fn pass(&self, seq: u64, persist: bool) -> Result<(), SpoolError> {
        let _cursor = self.inner.cursor.lock().unwrap_or_else(|e| e.into_inner());
        // Decided under the state lock; the disk work after it runs without it.
        let (next, below) = {
            let mut st = self.inner.state();
            if st.queue.front().map(|l| l.seq) != Some(seq) {
                return Ok(());
            }
            if let Some(loc) = st.queue.pop_front() {
                st.bytes -= loc.len;
            }
            st.drained_since_cursor += 1;
            self.inner.mirror(&st);
            if !persist && !st.queue.is_empty() && st.drained_since_cursor < CURSOR_EVERY {
                return Ok(());
            }
            st.drained_since_cursor = 0;
            let next = st.queue.front().map_or(st.next_seq, |l| l.seq);
            // Segments below the front record's are drained. New segments are named by a seq ≥ next_seq, so a
            // concurrent append never creates one below the bound.
            let below = st.queue.front().map_or(st.next_seq, |l| l.segment);
            if st.active.as_ref().is_some_and(|a| a.id < below) {
                st.active = None;
            }
            (next, below)
        };
        if let Err(e) = segment::write_cursor(&self.inner.dir, next) {
            self.inner.state().drained_since_cursor = CURSOR_EVERY;
            return Err(e.into());
        }
        for id in segment::list(&self.inner.dir)? {
            if id < below {
                std::fs::remove_file(segment::path(&self.inner.dir, id))?;
            }
        }
        Ok(())
    }

    /// Records, bytes and the receipt time of the oldest record.
    pub fn stats(&self) -> Stats {
        let (records, bytes, first) = {
            let st = self.inner.state();
            (st.queue.len(), st.bytes, st.queue.front().copied())
        };
        let oldest = first.and_then(|l| self.read(l).ok()).map(|e| e.received_at);
        Stats { records, bytes, oldest }
    }

    /// The spool directory of a data dir.
    pub fn dir_of(data_dir: &Path) -> PathBuf {
        data_dir.join("spool")
    }

    /// Where unroutable spooled events wait for a route (see [`Drainer`]).
    pub fn parked_dir_of(data_dir: &Path) -> PathBuf {
        data_dir.join("spool").join("parked")
    }
}

// === impl Inner ===

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the queue's size and ends to the lock-free copies (called with the lock held, after a change).
    fn mirror(&self, st: &State) {
        self.records.store(st.queue.len(), Ordering::Release);
        self.bytes.store(st.bytes, Ordering::Release);
        self.front.store(st.queue.front().map_or(st.next_seq, |l| l.seq), Ordering::Release);
    }
}

#[cfg(test)]
mod tests;
