//! The spool: a crash-safe, encrypted, append-only log of events the broker did not confirm in time, from which
//! the drainer publishes them later, in receipt order.
//!
//! # Invariants
//!
//! - An append returns `Ok` only after its record is written *and fsynced* (file, and the directory entry of a new
//!   segment). Concurrent appends share one fsync (group commit): the first waiter syncs everything written so
//!   far, the others find their record already durable.
//! - Records get consecutive sequence numbers (`seq`) in append order; the drainer publishes in `seq` order and
//!   moves the durable cursor past a record only after the broker confirmed it. A crash can therefore republish
//!   records confirmed since the last cursor write (at most [`CURSOR_EVERY`]), never lose one.
//! - A segment is deleted only when every record in it is behind the durable cursor.
//! - The spool never holds more than `storage.spool_max_bytes` of undrained records; past that an append fails
//!   with [`SpoolError::Full`] (the caller answers 503, the provider retries).
//! - After a write error the partial record is cut; if that fails too, the spool refuses appends until restart.
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

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

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

/// The spool. Cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    cipher: Option<Cipher>,
    max_bytes: u64,
    segment_bytes: u64,
    state: Mutex<State>,
    /// Held by the one task running an fsync; the others queue behind it (group commit).
    sync_lock: tokio::sync::Mutex<()>,
    /// Every record with a smaller seq is durable.
    synced: AtomicU64,
    /// Wakes the drainer when records arrive.
    pub(crate) arrived: Notify,
}

struct State {
    queue: VecDeque<Loc>,
    bytes: u64,
    next_seq: u64,
    /// The segment appends go to (none until the first append after open or after the spool ran empty).
    active: Option<Active>,
    drained_since_cursor: u64,
    poisoned: bool,
}

struct Active {
    id: u64,
    file: Arc<File>,
    len: u64,
}

impl Spool {
    /// Opens (creating) the spool in `dir`, recovering from any crash point.
    ///
    /// # Errors
    /// The directory cannot be created or read, or a record cannot be decrypted with `cipher`.
    pub fn open(dir: &Path, cipher: Option<Cipher>, max_bytes: u64) -> Result<(Spool, Recovery), SpoolError> {
        std::fs::create_dir_all(dir)?;
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
        let state = State { queue, bytes, next_seq, active: None, drained_since_cursor: 0, poisoned: false };
        let inner = Inner {
            dir: dir.to_path_buf(),
            cipher,
            max_bytes,
            segment_bytes: SEGMENT_BYTES.min(max_bytes.max(4096)),
            state: Mutex::new(state),
            sync_lock: tokio::sync::Mutex::new(()),
            synced: AtomicU64::new(next_seq),
            arrived: Notify::new(),
        };
        Ok((Spool { inner: Arc::new(inner) }, report))
    }

    pub fn encrypted(&self) -> bool {
        self.inner.cipher.is_some()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Undrained records.
    pub fn len(&self) -> usize {
        self.state().queue.len()
    }

    /// Bytes of undrained records (what `storage.spool_max_bytes` caps).
    pub fn bytes(&self) -> u64 {
        self.state().bytes
    }

    pub fn is_empty(&self) -> bool {
        self.state().queue.is_empty()
    }

    /// Whether an append could succeed now (for `/readyz`).
    pub fn can_take(&self) -> bool {
        let st = self.state();
        !st.poisoned && st.bytes < self.inner.max_bytes
    }

    /// Appends `event` and returns once it is durable.
    ///
    /// # Errors
    /// [`SpoolError::Full`], a disk error, or a spool poisoned by an earlier unrepaired error.
    pub async fn append(&self, event: &Event) -> Result<u64, SpoolError> {
        let plain = format::encode(event);
        let this = self.clone();
        let (seq, file) = tokio::task::spawn_blocking(move || this.write(&plain))
            .await
            .map_err(|_| SpoolError::Io(std::io::Error::other("spool writer task failed")))??;
        self.sync_to(seq + 1, file).await?;
        self.inner.arrived.notify_one();
        Ok(seq)
    }

    /// Frames and writes one record at the end of the active segment (not yet fsynced).
    fn write(&self, plain: &[u8]) -> Result<(u64, Arc<File>), SpoolError> {
        let mut st = self.state();
        if st.poisoned {
            return Err(SpoolError::Poisoned);
        }
        let seq = st.next_seq;
        let payload = match &self.inner.cipher {
            Some(c) => c.seal(seq, plain).ok_or(SpoolError::Crypto)?,
            None => plain.to_vec(),
        };
        let record = format::frame(seq, &payload);
        let len = record.len() as u64;
        if st.bytes + len > self.inner.max_bytes {
            return Err(SpoolError::Full);
        }
        let encrypted = self.inner.cipher.is_some();
        if st.active.as_ref().is_none_or(|a| a.len + len > self.inner.segment_bytes && a.len > format::HEADER_LEN) {
            if let Some(old) = &st.active {
                old.file.sync_data()?;
            }
            let file = segment::create(&self.inner.dir, seq, encrypted)?;
            st.active = Some(Active { id: seq, file: Arc::new(file), len: format::HEADER_LEN });
        }
        let Some(active) = st.active.as_mut() else { return Err(SpoolError::Poisoned) };
        let (id, offset, file) = (active.id, active.len, active.file.clone());
        if let Err(e) = (&*file).write_all(&record) {
            // Cut the partial record so the next append does not follow garbage; if even that fails, stop.
            if file.set_len(offset).is_err() {
                st.poisoned = true;
            }
            return Err(SpoolError::Io(e));
        }
        active.len += len;
        st.queue.push_back(Loc { seq, segment: id, offset, len, encrypted });
        st.bytes += len;
        st.next_seq = seq + 1;
        Ok((seq, file))
    }

    /// Group commit: returns once every record below `target` is durable.
    async fn sync_to(&self, target: u64, file: Arc<File>) -> Result<(), SpoolError> {
        let _one_syncer = self.inner.sync_lock.lock().await;
        if self.inner.synced.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        // Everything written so far is in `file` or in an older segment fsynced when it was rotated.
        let (upto, file) = {
            let st = self.state();
            (st.next_seq, st.active.as_ref().map_or(file, |a| a.file.clone()))
        };
        let synced = tokio::task::spawn_blocking(move || file.sync_data()).await;
        match synced {
            Ok(Ok(())) => {
                self.inner.synced.fetch_max(upto, Ordering::AcqRel);
                Ok(())
            }
            Ok(Err(e)) => {
                // After a failed fsync the page cache state is unknown: refuse further appends.
                self.state().poisoned = true;
                Err(SpoolError::Io(e))
            }
            Err(_) => Err(SpoolError::Io(std::io::Error::other("fsync task failed"))),
        }
    }

    /// Makes every written record durable. An append whose caller went away (a cancelled request) between its
    /// write and its fsync leaves a record the drainer cannot take yet; the drainer calls this to take it.
    ///
    /// # Errors
    /// The fsync failed.
    pub async fn flush(&self) -> Result<(), SpoolError> {
        let (target, file) = {
            let st = self.state();
            (st.next_seq, st.active.as_ref().map(|a| a.file.clone()))
        };
        match file {
            Some(file) if self.inner.synced.load(Ordering::Acquire) < target => self.sync_to(target, file).await,
            _ => Ok(()),
        }
    }

    /// The oldest durable undrained record and its event.
    ///
    /// # Errors
    /// The record cannot be read back (disk error, or it no longer decrypts).
    pub fn front(&self) -> Result<Option<(u64, Event)>, SpoolError> {
        let loc = {
            let st = self.state();
            match st.queue.front() {
                Some(l) if l.seq < self.inner.synced.load(Ordering::Acquire) => *l,
                _ => return Ok(None),
            }
        };
        self.read(loc).map(|e| Some((loc.seq, e)))
    }

    fn read(&self, loc: Loc) -> Result<Event, SpoolError> {
        let file = File::open(segment::path(&self.inner.dir, loc.segment))?;
        let mut buf = vec![0u8; usize::try_from(loc.len).unwrap_or(0)];
        file.read_exact_at(&mut buf, loc.offset)?;
        let bad = || SpoolError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, "spool record unreadable"));
        let (_, payload, _) = format::unframe(&buf).ok_or_else(bad)?;
        let plain = match (&self.inner.cipher, loc.encrypted) {
            (Some(c), true) => c.open(loc.seq, payload).ok_or_else(bad)?,
            (None, true) => return Err(bad()),
            (_, false) => payload.to_vec(),
        };
        format::decode(&plain).map_err(|_| bad())
    }

    /// Moves past record `seq` once the broker confirmed it. Persists the cursor every [`CURSOR_EVERY`] records
    /// and when the spool runs empty, then deletes segments left wholly behind it.
    ///
    /// # Errors
    /// The cursor cannot be written (the record stays drained in memory; a restart may republish it).
    pub fn advance(&self, seq: u64) -> Result<(), SpoolError> {
        let mut st = self.state();
        if st.queue.front().map(|l| l.seq) != Some(seq) {
            return Ok(());
        }
        if let Some(loc) = st.queue.pop_front() {
            st.bytes -= loc.len;
        }
        st.drained_since_cursor += 1;
        if !st.queue.is_empty() && st.drained_since_cursor < CURSOR_EVERY {
            return Ok(());
        }
        let next = st.queue.front().map_or(st.next_seq, |l| l.seq);
        segment::write_cursor(&self.inner.dir, next)?;
        st.drained_since_cursor = 0;
        let keep_from = st.queue.front().map(|l| l.segment);
        if keep_from.is_none() {
            st.active = None;
        }
        for id in segment::list(&self.inner.dir)? {
            if keep_from.is_none_or(|k| id < k) && st.active.as_ref().is_none_or(|a| a.id != id) {
                std::fs::remove_file(segment::path(&self.inner.dir, id))?;
            }
        }
        Ok(())
    }

    /// Records, bytes and the receipt time of the oldest record.
    pub fn stats(&self) -> Stats {
        let (records, bytes, first) = {
            let st = self.state();
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

#[cfg(test)]
mod tests;
