//! The writer thread: every write to the state goes through it, in the order it was queued.
//!
//! A group of jobs is applied at once: its dedup and order rows are appended to the record log ([`super::log`])
//! and fsynced, then held in memory ([`super::memory`]); its other writes (polling jobs, purges) are one durable
//! commit to `state.redb`. Only then is any job of the group told. Between groups, once the active generation
//! is large enough, it is frozen (the log starts a new file) and folded into the tree one slice per group (or
//! while the queue is empty), each slice one sorted commit; its rows enter the filter after that commit and
//! leave memory after that, so a lookup finds them in one place or the other throughout.

use std::sync::{Arc, Mutex, MutexGuard};

use redb::{Database, Durability, ReadableTableMetadata};
use tokio::sync::{mpsc, oneshot};

use super::filter::Filter;
use super::log::Log;
use super::memory::{fold_rows, slices_per_commit, Memory, MAX_FOLD_ROWS};
use super::sweep::{self, SLICES};
use super::{
    digest, err, next_batch, now_ms, take_waiting, Digest, Op, StateError, BATCH, DEDUP, EXPIRY, LINGER, LINGER_BELOW,
    ORDER, POLL_JOBS,
};

/// One write job: its ops and whom to tell once they are committed.
pub(super) struct Job {
    pub(super) ops: Vec<Op>,
    pub(super) done: Option<Reply>,
}

/// What the writer does with the outcome of a job's commit.
pub(super) enum Reply {
    /// Sends it to the task awaiting [`super::State::write`].
    Wait(oneshot::Sender<Result<(), StateError>>),
    /// Runs this on the writer thread ([`super::State::write_then`]).
    Then(Box<dyn FnOnce(Result<(), StateError>) + Send>),
}

impl Reply {
    pub(super) fn send(self, result: Result<(), StateError>) {
        match self {
            Reply::Wait(tx) => {
                let _ = tx.send(result);
            }
            Reply::Then(then) => then(result),
        }
    }
}

/// A dedup or order row as the log and a commit write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Row {
    Done(u64),
    Order((i64, u8, u64)),
}

pub(super) struct Writer {
    db: Arc<Database>,
    filter: Arc<Filter>,
    memory: Arc<Mutex<Memory>>,
    log: Log,
    /// Rows in the tree when last counted (after each fold): the fold's sizes follow from it.
    tree_rows: u64,
    /// The next slice of the frozen generation to fold, while there is one.
    next_fold: Option<usize>,
}

impl Writer {
    pub(super) fn new(
        db: Arc<Database>,
        filter: Arc<Filter>,
        memory: Arc<Mutex<Memory>>,
        log: Log,
    ) -> Result<Writer, StateError> {
        let tree_rows = tree_rows(&db)?;
        let next_fold = log.has_folding().then_some(0);
        Ok(Writer { db, filter, memory, log, tree_rows, next_fold })
    }

    /// Runs until every sender is gone and the queue is empty. A frozen generation left unfolded stays in its
    /// log file and is folded after the next start.
    pub(super) fn run(&mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(mut jobs) = self.next_group(&mut rx) {
            if jobs.len() < LINGER_BELOW {
                std::thread::sleep(LINGER);
                take_waiting(&mut rx, &mut jobs, BATCH);
            }
            let result = self.apply(&jobs);
            if let Err(e) = &result {
                tracing::error!(error = %e, "state commit failed");
            }
            for job in jobs {
                if let Some(done) = job.done {
                    done.send(result.clone());
                }
            }
            // A failure is logged and the fold tried again after the next group.
            let _ = self.fold_next();
        }
    }

    /// The next group of jobs; while a generation is being folded, an empty queue folds a slice instead of
    /// waiting (and a full active generation is frozen first).
    fn next_group(&mut self, rx: &mut mpsc::Receiver<Job>) -> Option<Vec<Job>> {
        loop {
            self.freeze_if_full();
            if self.next_fold.is_none() {
                return next_batch(rx, BATCH);
            }
            match rx.try_recv() {
                Ok(job) => {
                    let mut jobs = vec![job];
                    take_waiting(rx, &mut jobs, BATCH);
                    return Some(jobs);
                }
                // A fold that fails waits for the next job before it is tried again (no busy loop).
                Err(mpsc::error::TryRecvError::Empty) if !self.fold_next() => return next_batch(rx, BATCH),
                Err(mpsc::error::TryRecvError::Empty) => {}
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
            }
        }
    }

    fn memory(&self) -> MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends the group's rows to the log (then memory) and commits its other writes.
    fn apply(&mut self, jobs: &[Job]) -> Result<(), StateError> {
        let mut rows = Vec::new();
        let mut others = Vec::new();
        for op in jobs.iter().flat_map(|j| j.ops.iter()) {
            match op {
                Op::Done { key, expires_ms } => rows.push((digest(key), Row::Done(*expires_ms))),
                Op::Order { key, time_ms, rank, expires_ms } => {
                    rows.push((digest(key), Row::Order((*time_ms, *rank, *expires_ms))));
                }
                Op::PollJob { .. } | Op::Remove { .. } => others.push(op),
            }
        }
        let mut result = Ok(());
        if !rows.is_empty() {
            result = self.log_rows(&rows);
        }
        if !others.is_empty() {
            result = result.and(commit(&self.db, Vec::new(), &others).map(drop));
            if let Some(now_ms) = others.iter().find_map(|op| match op {
                Op::Remove { now_ms, .. } => Some(*now_ms),
                _ => None,
            }) {
                self.memory().prune(now_ms);
            }
        }
        result
    }

    fn log_rows(&mut self, rows: &[(Digest, Row)]) -> Result<(), StateError> {
        // Only when freezing or folding keeps failing: memory stays bounded, the records are refused as a
        // failed commit would refuse them.
        if self.memory().active.len() >= 2 * MAX_FOLD_ROWS {
            return Err(StateError("record log full: its rows cannot be folded into the file".into()));
        }
        self.log.append(rows)?;
        let mut memory = self.memory();
        rows.iter().for_each(|(d, row)| memory.active.insert(*d, *row));
        Ok(())
    }

    /// Freezes the active generation once its file holds enough rows (repeats of a key count: the file grows with
    /// them) and the last one is folded.
    fn freeze_if_full(&mut self) {
        if self.next_fold.is_some() || self.log.rows() < fold_rows(self.tree_rows) {
            return;
        }
        if let Err(error) = self.log.rotate() {
            tracing::error!(%error, "state log: cannot start a new file; its rows stay in memory");
            return;
        }
        let mut memory = self.memory();
        memory.frozen = std::mem::take(&mut memory.active);
        drop(memory);
        self.next_fold = Some(0);
    }

    /// Folds the next slices of the frozen generation into the tree in one commit; after the last, deletes its
    /// log files. `false` when the commit failed (the slices stay in memory and are tried again).
    fn fold_next(&mut self) -> bool {
        let Some(first) = self.next_fold else { return true };
        let slices = first..(first + slices_per_commit(self.tree_rows)).min(SLICES);
        let rows = self.memory().frozen.slices(slices.clone(), now_ms());
        if !rows.is_empty() {
            match commit(&self.db, rows, &[]) {
                // Committed rows enter the filter before they leave memory (see `filter`'s invariants).
                Ok(written) => written.iter().for_each(|d| self.filter.add(d)),
                Err(error) => {
                    tracing::error!(%error, first, "state fold failed; tried again after the next commit");
                    return false;
                }
            }
        }
        self.memory().frozen.clear(slices.clone());
        if slices.end < SLICES {
            self.next_fold = Some(slices.end);
            return true;
        }
        self.log.folded();
        self.next_fold = None;
        match tree_rows(&self.db) {
            Ok(rows) => self.tree_rows = rows,
            Err(error) => tracing::warn!(%error, "state: rows not counted; the fold sizes stay"),
        }
        true
    }
}

/// Rows in the dedup and order tables of the file.
pub(super) fn tree_rows(db: &Database) -> Result<u64, StateError> {
    let txn = db.begin_read().map_err(err)?;
    let dedup = txn.open_table(DEDUP).map_err(err)?.len().map_err(err)?;
    let order = txn.open_table(ORDER).map_err(err)?.len().map_err(err)?;
    Ok(dedup + order)
}

/// Writes `rows` and applies `others` in one durable commit; returns the digests of the rows written.
///
/// The rows go in in digest order (a stable sort: two writes of one key keep their order), so the inserts of a
/// commit walk the tree once from left to right instead of jumping between random leaves. The other writes keep
/// their place after them: a purge's removal re-checks expiry row by row, so a row written in the same commit
/// with a later expiry is kept whichever comes first.
pub(super) fn commit(db: &Database, mut rows: Vec<(Digest, Row)>, others: &[&Op]) -> Result<Vec<Digest>, StateError> {
    rows.sort_by_key(|(d, _)| *d);
    let mut txn = db.begin_write().map_err(err)?;
    txn.set_durability(Durability::Immediate);
    {
        let mut dedup = txn.open_table(DEDUP).map_err(err)?;
        let mut order = txn.open_table(ORDER).map_err(err)?;
        for (d, row) in &rows {
            match row {
                Row::Done(expires_ms) => dedup.insert(d, *expires_ms).map(drop),
                Row::Order(value) => order.insert(d, *value).map(drop),
            }
            .map_err(err)?;
        }
        let mut expiry = txn.open_table(EXPIRY).map_err(err)?;
        let mut jobs = txn.open_table(POLL_JOBS).map_err(err)?;
        for op in others {
            match op {
                Op::PollJob { key, record, expires_ms } => {
                    jobs.insert(key.as_str(), (*expires_ms, record.as_slice())).map_err(err)?;
                    expiry.insert((*expires_ms, format!("p{key}").as_str()), ()).map_err(err)?;
                }
                Op::Remove { now_ms, dedup: d, order: o } => {
                    sweep::remove(&mut dedup, &mut order, *now_ms, d, o)?;
                    sweep::purge_jobs(&mut jobs, &mut expiry, *now_ms)?;
                }
                // Rows go to the record log; they reach this commit as `rows`, when folded.
                Op::Done { .. } | Op::Order { .. } => {}
            }
        }
    }
    txn.commit().map_err(err)?;
    Ok(rows.into_iter().map(|(d, _)| d).collect())
}
