//! The spool's writer thread: every append is framed, sealed, written and fsynced here, so no tokio worker ever
//! waits on the disk.
//!
//! Appenders send their record over a bounded channel ([`QUEUE`]; past it they wait asynchronously, which is the
//! backpressure). The thread takes every job waiting (up to [`BATCH`]), writes them in order, then makes them
//! durable with one `fsync` before it answers any of them (group commit). A record is answered `Ok` only after
//! that fsync; after a failed fsync the spool refuses appends (the page cache state is unknown).

use std::fs::File;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{format, segment, Active, Inner, Loc, SpoolError};

/// Appends queued for the writer before appenders wait.
const QUEUE: usize = 1024;
/// Most appends sharing one fsync.
const BATCH: usize = 256;

/// One append: the encoded event, and where to answer with its seq.
pub(super) struct Job {
    pub plain: Vec<u8>,
    pub done: oneshot::Sender<Result<u64, SpoolError>>,
}

/// Starts the writer thread of `inner`; it stops when every sender (every `Spool` clone) is gone.
pub(super) fn start(inner: Arc<Inner>) -> std::io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    std::thread::Builder::new().name("hookgate-spool".into()).spawn(move || run(&inner, rx))?;
    Ok(tx)
}

fn run(inner: &Inner, mut rx: mpsc::Receiver<Job>) {
    while let Some(jobs) = crate::state::next_batch(&mut rx, BATCH) {
        let written: Vec<Result<u64, SpoolError>> = jobs.iter().map(|j| inner.write(&j.plain)).collect();
        let synced = if written.iter().any(Result::is_ok) { inner.sync_written() } else { Ok(()) };
        for (job, result) in jobs.into_iter().zip(written) {
            let answer = match (result, &synced) {
                (Ok(seq), Ok(())) => Ok(seq),
                (Ok(_), Err(e)) => Err(SpoolError::Io(std::io::Error::new(e.kind(), e.to_string()))),
                (Err(e), _) => Err(e),
            };
            // The appender may be gone (a cancelled request): its record stays, durable, for the drainer.
            let _ = job.done.send(answer);
        }
    }
}

// === impl Inner ===

impl Inner {
    /// Frames and writes one record at the end of the active segment (not yet fsynced). Blocking.
    pub(super) fn write(&self, plain: &[u8]) -> Result<u64, SpoolError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(SpoolError::Poisoned);
        }
        let mut st = self.state();
        let seq = st.next_seq;
        let payload = match &self.cipher {
            Some(c) => c.seal(seq, plain).ok_or(SpoolError::Crypto)?,
            None => plain.to_vec(),
        };
        let record = format::frame(seq, &payload);
        let len = record.len() as u64;
        if st.bytes + len > self.max_bytes {
            return Err(SpoolError::Full);
        }
        let encrypted = self.cipher.is_some();
        if st.active.as_ref().is_none_or(|a| a.len + len > self.segment_bytes && a.len > format::HEADER_LEN) {
            if let Some(old) = &st.active {
                old.file.sync_data()?;
            }
            let file = segment::create(&self.dir, seq, encrypted)?;
            st.active = Some(Active { id: seq, file: Arc::new(file), len: format::HEADER_LEN });
        }
        let Some(active) = st.active.as_mut() else { return Err(SpoolError::Poisoned) };
        let (id, offset, file) = (active.id, active.len, active.file.clone());
        if let Err(e) = (&*file).write_all(&record) {
            // Cut the partial record so the next append does not follow garbage; if even that fails, stop.
            if file.set_len(offset).is_err() {
                self.poisoned.store(true, Ordering::Release);
            }
            return Err(SpoolError::Io(e));
        }
        active.len += len;
        st.queue.push_back(Loc { seq, segment: id, offset, len, encrypted });
        st.bytes += len;
        st.next_seq = seq + 1;
        self.mirror(&st);
        Ok(seq)
    }

    /// Fsyncs everything written so far, outside the state lock. Blocking.
    pub(super) fn sync_written(&self) -> std::io::Result<()> {
        // Everything written so far is in the active segment or in an older one fsynced when it was rotated.
        let (upto, file): (u64, Option<Arc<File>>) = {
            let st = self.state();
            (st.next_seq, st.active.as_ref().map(|a| a.file.clone()))
        };
        if self.synced.load(Ordering::Acquire) >= upto {
            return Ok(());
        }
        if let Some(file) = file {
            if let Err(e) = file.sync_data() {
                self.poisoned.store(true, Ordering::Release);
                return Err(e);
            }
        }
        self.synced.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }
}
