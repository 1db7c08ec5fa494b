//! The spool's writer thread: every append is framed, sealed, written and fsynced here, so no tokio worker ever
//! waits on the disk.
//!
//! Appenders send their record over a bounded channel ([`QUEUE`]; past it they wait asynchronously, which is the
//! backpressure). The thread takes every job waiting (up to [`BATCH`]), frames and seals them into one buffer
//! (nonces from one call to the OS generator), writes it with one `write` per segment touched, then makes them
//! durable with one `fdatasync` before it answers any of them (group commit). A record is answered `Ok` only
//! after that fsync; after a failed fsync the spool refuses appends (the page cache state is unknown).

use std::fs::File;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use tokio::sync::{mpsc, oneshot};

use super::crypto::{Cipher, NONCE_LEN};
use super::{format, segment, Active, Inner, Loc, SpoolError, State};

/// Appends queued for the writer before appenders wait.
const QUEUE: usize = 1024;
/// Most appends sharing one fsync.
const BATCH: usize = 256;
/// The batch buffer is kept between batches up to this size (a batch of large bodies is not held after it).
const BUF_KEEP: usize = 1 << 20;

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
    let mut buf = Vec::new();
    while let Some(jobs) = crate::state::next_batch(&mut rx, BATCH) {
        let plains: Vec<&[u8]> = jobs.iter().map(|j| j.plain.as_slice()).collect();
        let written = inner.write_batch(&plains, &mut buf);
        let synced = if written.iter().any(Result::is_ok) { inner.sync_written() } else { Ok(()) };
        let stored = synced.is_ok() && written.iter().any(Result::is_ok);
        for (job, result) in jobs.into_iter().zip(written) {
            let answer = match (result, &synced) {
                (Ok(seq), Ok(())) => Ok(seq),
                (Ok(_), Err(e)) => Err(io_copy(e)),
                (Err(e), _) => Err(e),
            };
            // The appender may be gone (a cancelled request): its record stays, durable, for the drainer.
            let _ = job.done.send(answer);
        }
        if stored {
            inner.arrived.notify_one();
        }
        // A burst's buffer is not kept for the quiet that follows.
        if buf.capacity() > BUF_KEEP {
            buf = Vec::new();
        }
    }
}

/// The same I/O error for every record it failed.
fn io_copy(e: &std::io::Error) -> SpoolError {
    SpoolError::Io(std::io::Error::new(e.kind(), e.to_string()))
}

fn copy(e: &SpoolError) -> SpoolError {
    match e {
        SpoolError::Io(e) => io_copy(e),
        SpoolError::Full => SpoolError::Full,
        SpoolError::Poisoned => SpoolError::Poisoned,
        SpoolError::Crypto => SpoolError::Crypto,
        SpoolError::Corrupt(seq) => SpoolError::Corrupt(*seq),
    }
}

/// The records of a batch framed for the active segment but not yet written, and those written so far.
struct Chunk<'a> {
    buf: &'a mut Vec<u8>,
    /// (index in the batch, where the record will lie)
    framed: Vec<(usize, Loc)>,
    /// (index in the batch, seq) of the records written
    written: Vec<(usize, u64)>,
}

// === impl Inner ===

impl Inner {
    /// Frames, seals and writes `plains` in order at the end of the active segment (not yet fsynced), one write
    /// per segment. Blocking. Each record's result: its seq, or why it was not written ([`SpoolError::Full`] for
    /// one that does not fit; after a disk error, every record not yet written fails with it).
    pub(super) fn write_batch(&self, plains: &[&[u8]], buf: &mut Vec<u8>) -> Vec<Result<u64, SpoolError>> {
        if self.poisoned.load(Ordering::Acquire) {
            return plains.iter().map(|_| Err(SpoolError::Poisoned)).collect();
        }
        let mut nonces = vec![0u8; if self.cipher.is_some() { plains.len() * NONCE_LEN } else { 0 }];
        if Cipher::fill_nonces(&mut nonces).is_none() {
            return plains.iter().map(|_| Err(SpoolError::Crypto)).collect();
        }
        let mut results: Vec<Result<u64, SpoolError>> = plains.iter().map(|_| Err(SpoolError::Poisoned)).collect();
        buf.clear();
        let mut st = self.state();
        let mut chunk = Chunk { buf, framed: Vec::new(), written: Vec::new() };
        let mut failed = None;
        for (i, plain) in plains.iter().enumerate() {
            let nonce = nonces.get(i * NONCE_LEN..(i + 1) * NONCE_LEN).unwrap_or_default();
            match self.frame(&mut st, &mut chunk, i, plain, nonce) {
                Ok(()) => {}
                Err(e @ (SpoolError::Full | SpoolError::Crypto)) => results[i] = Err(e),
                Err(e) => {
                    failed = Some((i, e));
                    break;
                }
            }
        }
        if failed.is_none() {
            if let Err(e) = self.flush(&mut st, &mut chunk) {
                failed = Some((plains.len(), SpoolError::Io(e)));
            }
        }
        drop(st);
        if let Some((at, e)) = failed {
            // Nothing framed but unwritten, and nothing after a disk error, is stored.
            let unwritten = chunk.framed.iter().map(|(i, _)| *i).chain(at..plains.len());
            for i in unwritten {
                results[i] = Err(copy(&e));
            }
        }
        for (i, seq) in chunk.written {
            results[i] = Ok(seq);
        }
        results
    }

    /// Frames record `i` of the batch into `chunk`, first writing the chunk and starting a new segment when the
    /// record does not fit the active one.
    fn frame(
        &self,
        st: &mut MutexGuard<'_, State>,
        chunk: &mut Chunk<'_>,
        i: usize,
        plain: &[u8],
        nonce: &[u8],
    ) -> Result<(), SpoolError> {
        let encrypted = self.cipher.is_some();
        let len = format::record_len(plain.len(), encrypted);
        let pending = chunk.buf.len() as u64;
        if st.bytes + pending + len > self.max_bytes {
            self.refused_at.store(st.bytes, Ordering::Release);
            return Err(SpoolError::Full);
        }
        let used = st.active.as_ref().map(|a| a.len + pending);
        if used.is_none_or(|used| used + len > self.segment_bytes && used > format::HEADER_LEN) {
            self.rotate(st, chunk)?;
        }
        let Some(active) = st.active.as_ref() else { return Err(SpoolError::Poisoned) };
        let seq = st.next_seq + chunk.framed.len() as u64;
        let offset = active.len + chunk.buf.len() as u64;
        let loc = Loc { seq, segment: active.id, offset, len, encrypted };
        let sealed = format::frame_into(chunk.buf, seq, |out| match &self.cipher {
            Some(c) => c.seal_into(seq, nonce, plain, out),
            None => {
                out.extend_from_slice(plain);
                Some(())
            }
        });
        sealed.ok_or(SpoolError::Crypto)?;
        chunk.framed.push((i, loc));
        Ok(())
    }

    /// Writes the chunk to the active segment, fsyncs that segment and starts a new one named by the next seq.
    fn rotate(&self, st: &mut MutexGuard<'_, State>, chunk: &mut Chunk<'_>) -> Result<(), SpoolError> {
        self.flush(st, chunk)?;
        if let Some(old) = &st.active {
            old.file.sync_data()?;
        }
        let file = segment::create(&self.dir, st.next_seq, self.cipher.is_some())?;
        st.active = Some(Active { id: st.next_seq, file: Arc::new(file), len: format::HEADER_LEN });
        Ok(())
    }

    /// Writes the framed records with one write at the end of the active segment and queues them for the
    /// drainer (behind [`Inner::synced`] until the fsync). After a failed write the partial bytes are cut; if
    /// that fails too, the spool is poisoned.
    fn flush(&self, st: &mut MutexGuard<'_, State>, chunk: &mut Chunk<'_>) -> std::io::Result<()> {
        let Some(active) = st.active.as_mut() else { return Ok(()) };
        if chunk.framed.is_empty() {
            return Ok(());
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = (&*active.file).write_all(chunk.buf) {
            if active.file.set_len(active.len).is_err() {
                self.poisoned.store(true, Ordering::Release);
            }
            return Err(e);
        }
        active.len += chunk.buf.len() as u64;
        chunk.buf.clear();
        for (i, loc) in chunk.framed.drain(..) {
            st.bytes += loc.len;
            st.next_seq = loc.seq + 1;
            st.queue.push_back(loc);
            chunk.written.push((i, loc.seq));
        }
        self.mirror(st);
        Ok(())
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
            self.commits.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = file.sync_data() {
                self.poisoned.store(true, Ordering::Release);
                return Err(e);
            }
        }
        self.synced.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }
}
