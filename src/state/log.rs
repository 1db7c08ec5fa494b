//! The record log: where a group commit's dedup and order rows become durable (`<data_dir>/state.log.<n>`).
//!
//! A group commit appends one frame holding its rows and fsyncs it: one sequential write, where a commit to the
//! tree rewrote a 4 KiB leaf per new row (random digests over a large tree). The rows are then served from
//! memory ([`super::memory`]) until they are folded into `state.redb`.
//!
//! ```text
//! file   := "HGSTLOG1" (8 bytes) frame*
//! frame  := len u32 LE | crc u32 LE | seq u64 LE | row*      (the spool's record frame: `spool::format`)
//! row    := 'd' digest(16) expiry_ms u64 LE
//!         | 'o' digest(16) time_ms i64 LE rank u8 expiry_ms u64 LE
//! ```
//!
//! # Invariants
//!
//! - The newest file is the one appended to; the older ones (at most one, but a restart reads any number) hold
//!   the frozen generation, and are deleted only after every one of their rows is committed to the tree. A crash
//!   anywhere leaves each row in a file or in the tree (or both: folding a row twice writes the same value).
//! - A frame that is torn or fails its checksum ends a file's rows: it was never fsynced, so no one was told its
//!   rows were stored. The newest file is cut back to its last whole frame at open, and after a failed append,
//!   before the next one.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::memory::Rows;
use super::{err, Digest, Row, StateError};
use crate::spool::format::{frame_into, unframe};

const MAGIC: &[u8; 8] = b"HGSTLOG1";
const PREFIX: &str = "state.log.";
const DONE: u8 = b'd';
const ORDER: u8 = b'o';

/// The open log.
pub(super) struct Log {
    dir: PathBuf,
    file: File,
    /// The newest file's number.
    number: u64,
    /// Its length up to its last whole frame.
    len: u64,
    /// Whether bytes past `len` may be there (a failed append).
    torn: bool,
    /// Rows in the newest file, repeats of a key included (what its size follows).
    rows: u64,
    /// The older files, whose rows are the frozen generation.
    folding: Vec<u64>,
    /// The next frame's sequence number.
    seq: u64,
    buf: Vec<u8>,
}

/// What a log's files hold at open.
pub(super) struct Replayed {
    pub(super) log: Log,
    pub(super) active: Rows,
    pub(super) frozen: Rows,
}

pub(super) fn path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{number}"))
}

/// The numbers of the log files in `dir`, oldest first.
fn numbers(dir: &Path) -> Result<Vec<u64>, StateError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let name = entry.map_err(err)?.file_name();
        if let Some(n) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)).and_then(|n| n.parse().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

impl Log {
    /// Opens the log in `dir` (creating its first file): reads every file's rows (the newest into `active`, the
    /// others into `frozen`) and cuts the newest back to its last whole frame.
    ///
    /// # Errors
    /// A file cannot be read, created or cut, or is not a record log.
    pub(super) fn open(dir: &Path) -> Result<Replayed, StateError> {
        let mut numbers = numbers(dir)?;
        let newest = match numbers.pop() {
            Some(n) => n,
            None => {
                create(dir, 1)?;
                1
            }
        };
        let mut frozen = Rows::default();
        for n in &numbers {
            read(&path(dir, *n), &mut frozen)?;
        }
        let mut active = Rows::default();
        let (len, rows) = read(&path(dir, newest), &mut active)?;
        let mut file = crate::private_fs::file_options().write(true).open(path(dir, newest)).map_err(err)?;
        file.set_len(len).map_err(err)?;
        file.seek(SeekFrom::Start(len)).map_err(err)?;
        let log = Log {
            dir: dir.to_path_buf(),
            file,
            number: newest,
            len,
            torn: false,
            rows,
            folding: numbers,
            seq: 0,
            buf: Vec::new(),
        };
        Ok(Replayed { log, active, frozen })
    }

    /// Appends `rows` as one frame and fsyncs it.
    ///
    /// # Errors
    /// The write or the fsync failed (the frame is cut off before the next append).
    pub(super) fn append(&mut self, rows: &[(Digest, Row)]) -> Result<(), StateError> {
        if self.torn {
            self.file.set_len(self.len).map_err(err)?;
            self.file.seek(SeekFrom::Start(self.len)).map_err(err)?;
            self.torn = false;
        }
        self.buf.clear();
        frame_into(&mut self.buf, self.seq, |out| {
            rows.iter().for_each(|(d, row)| encode(out, d, row));
            Some(())
        });
        self.seq += 1;
        self.torn = true;
        self.file.write_all(&self.buf).map_err(err)?;
        self.file.sync_data().map_err(err)?;
        self.torn = false;
        self.len += self.buf.len() as u64;
        self.rows += rows.len() as u64;
        Ok(())
    }

    /// Rows appended to the newest file (a key written twice counts twice).
    pub(super) fn rows(&self) -> u64 {
        self.rows
    }

    /// Starts a new file; the current one's rows become the frozen generation.
    ///
    /// # Errors
    /// The new file cannot be created (the current one stays in use).
    pub(super) fn rotate(&mut self) -> Result<(), StateError> {
        let number = self.number + 1;
        let file = create(&self.dir, number)?;
        self.folding.push(self.number);
        (self.file, self.number, self.len, self.torn, self.rows) = (file, number, MAGIC.len() as u64, false, 0);
        Ok(())
    }

    /// Whether older files hold a frozen generation (at open: a fold a stop cut short).
    pub(super) fn has_folding(&self) -> bool {
        !self.folding.is_empty()
    }

    /// Deletes the older files: every row they hold is in the tree.
    pub(super) fn folded(&mut self) {
        for n in std::mem::take(&mut self.folding) {
            if let Err(error) = std::fs::remove_file(path(&self.dir, n)) {
                // Read again at the next start and folded again (the same values): no harm, some work.
                tracing::warn!(%error, file = n, "state log: a folded file was not deleted");
            }
        }
    }
}

/// Creates file `number` holding only the magic, durably (file and directory entry); returns it open for
/// appending after the magic.
fn create(dir: &Path, number: u64) -> Result<File, StateError> {
    let p = path(dir, number);
    let mut f = crate::private_fs::file_options().write(true).create(true).truncate(true).open(&p).map_err(err)?;
    f.write_all(MAGIC).map_err(err)?;
    f.sync_all().map_err(err)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(f)
}

/// Adds the rows of the file at `p` to `into`; returns its length up to its last whole frame and the rows read.
fn read(p: &Path, into: &mut Rows) -> Result<(u64, u64), StateError> {
    let mut bytes = Vec::new();
    File::open(p).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(err)?;
    if bytes.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err(StateError(format!("{} is not a state record log", p.display())));
    }
    let (mut at, mut rows) = (MAGIC.len(), 0);
    while let Some((_, payload, used)) = bytes.get(at..).and_then(unframe) {
        // A frame whose rows do not decode was not written by us: its checksum held, so stop here as if torn.
        let Some(n) = decode(payload, into) else { break };
        at += used;
        rows += n;
    }
    Ok((at as u64, rows))
}

fn encode(out: &mut Vec<u8>, d: &Digest, row: &Row) {
    match row {
        Row::Done(expires_ms) => {
            out.push(DONE);
            out.extend_from_slice(d);
            out.extend_from_slice(&expires_ms.to_le_bytes());
        }
        Row::Order((time_ms, rank, expires_ms)) => {
            out.push(ORDER);
            out.extend_from_slice(d);
            out.extend_from_slice(&time_ms.to_le_bytes());
            out.push(*rank);
            out.extend_from_slice(&expires_ms.to_le_bytes());
        }
    }
}

/// Adds the rows of one frame to `into` and returns how many; `None` (and nothing added) when they do not decode.
fn decode(mut payload: &[u8], into: &mut Rows) -> Option<u64> {
    let mut rows = Vec::new();
    while let Some((&tag, rest)) = payload.split_first() {
        let (row, used) = match tag {
            DONE if rest.len() >= 24 => (Row::Done(le_u64(&rest[16..24])), 24),
            ORDER if rest.len() >= 33 => {
                let time = i64::from_le_bytes(rest[16..24].try_into().unwrap_or_default());
                (Row::Order((time, rest[24], le_u64(&rest[25..33]))), 33)
            }
            _ => return None,
        };
        let mut d = [0u8; 16];
        d.copy_from_slice(&rest[..16]);
        rows.push((d, row));
        payload = &rest[used..];
    }
    let n = rows.len() as u64;
    rows.into_iter().for_each(|(d, row)| into.insert(d, row));
    Some(n)
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(rows: &Rows) -> Vec<(Digest, Row)> {
        rows.slices(0..super::super::sweep::SLICES, 0)
    }

    /// Each file's rows come back at open: the older ones as the frozen generation, the newest as the active one
    /// (appended to from its last whole frame).
    #[test]
    fn files_are_read_back_oldest_frozen_newest_active() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path()).unwrap().log;
        log.append(&[([1; 16], Row::Done(10)), ([2; 16], Row::Order((-5, 3, 11)))]).unwrap();
        log.rotate().unwrap();
        log.append(&[([1; 16], Row::Done(20))]).unwrap();
        drop(log);
        let Replayed { mut log, active, frozen } = Log::open(dir.path()).unwrap();
        assert!(log.has_folding());
        assert_eq!(rows(&frozen), vec![([1; 16], Row::Done(10)), ([2; 16], Row::Order((-5, 3, 11)))]);
        assert_eq!(rows(&active), vec![([1; 16], Row::Done(20))]);
        log.append(&[([3; 16], Row::Done(30))]).unwrap();
        log.folded();
        drop(log);
        assert_eq!(numbers(dir.path()).unwrap(), vec![2], "the folded file is gone");
        let Replayed { log, active, frozen } = Log::open(dir.path()).unwrap();
        assert!(!log.has_folding());
        assert_eq!(frozen.len(), 0);
        assert_eq!(rows(&active), vec![([1; 16], Row::Done(20)), ([3; 16], Row::Done(30))]);
    }

    /// A frame torn by a crash (never fsynced, so never acknowledged) ends the rows; the file is cut back to the
    /// last whole frame, so what is appended after it is read at the next open.
    #[test]
    fn a_torn_frame_is_cut_off_and_later_appends_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path()).unwrap().log;
        log.append(&[([1; 16], Row::Done(10))]).unwrap();
        log.append(&[([2; 16], Row::Done(20))]).unwrap();
        drop(log);
        let p = path(dir.path(), 1);
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len - 3).unwrap();
        let Replayed { mut log, active, .. } = Log::open(dir.path()).unwrap();
        assert_eq!(rows(&active), vec![([1; 16], Row::Done(10))]);
        log.append(&[([3; 16], Row::Done(30))]).unwrap();
        drop(log);
        let active = Log::open(dir.path()).unwrap().active;
        assert_eq!(rows(&active), vec![([1; 16], Row::Done(10)), ([3; 16], Row::Done(30))]);
    }

    /// A file of that name that is not a record log stops the open, naming the file.
    #[test]
    fn a_file_that_is_not_a_log_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path(), 7), b"something else").unwrap();
        let Err(e) = Log::open(dir.path()) else { panic!("opened") };
        assert!(e.to_string().contains("state.log.7") && e.to_string().contains("not a state record log"), "{e}");
    }
}
