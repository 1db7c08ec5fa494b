//! Segment files on disk: naming, creation, the drain cursor, and recovery at open.
//!
//! Recovery reads each segment once, front to back. A record that fails its checksum (or decryption) is not
//! trusted: if a valid record follows it, the bytes in between are copied to `quarantine/` and reported (a
//! corrupt record in the middle); if none follows, they are a torn tail — the remains of a write cut by a crash —
//! and the file is truncated there. Every step moves forward through a finite file, so start-up never loops.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::crypto::Cipher;
use super::format::{self, HEADER_LEN};
use super::Loc;
use crate::private_fs;

/// What recovery found, for the start-up log and `spool stats`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Torn tails cut (bytes).
    pub truncated_bytes: u64,
    /// Corrupt ranges copied to `quarantine/`.
    pub quarantined: Vec<PathBuf>,
}

/// `<dir>/<first seq, 20 digits>.seg`.
pub fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// Segment ids in the directory, ascending.
pub fn list(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Creates a segment with its header, durable (file and directory entry fsynced).
pub fn create(dir: &Path, id: u64, encrypted: bool) -> std::io::Result<File> {
    let mut file = private_fs::file_options().create_new(true).read(true).append(true).open(path(dir, id))?;
    file.write_all(&format::header(encrypted))?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The drain cursor: the seq of the first record not yet confirmed by the broker (0 when absent or unreadable).
pub fn read_cursor(dir: &Path) -> u64 {
    let Ok(bytes) = fs::read(dir.join("cursor")) else { return 0 };
    let (Some(seq), Some(crc)) = (bytes.get(..8), bytes.get(8..12)) else { return 0 };
    let crc = u32::from_le_bytes(crc.try_into().unwrap_or_default());
    if crc32fast::hash(seq) != crc {
        return 0;
    }
    u64::from_le_bytes(seq.try_into().unwrap_or_default())
}

/// Replaces the cursor atomically (temp file, fsync, rename, fsync the directory).
pub fn write_cursor(dir: &Path, seq: u64) -> std::io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    let mut f = private_fs::file_options().write(true).create(true).truncate(true).open(&tmp)?;
    let bytes = seq.to_le_bytes();
    f.write_all(&bytes)?;
    f.write_all(&crc32fast::hash(&bytes).to_le_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join("cursor"))?;
    sync_dir(dir)
}

/// Scans segment `id`: the undrained records (seq ≥ `cursor`) in order. Cuts a torn tail and quarantines
/// corrupt ranges. Returns `None` for a segment that holds no header (a crash while creating it): it is removed.
///
/// # Errors
/// I/O errors reading or repairing the file.
pub fn recover(
    dir: &Path,
    id: u64,
    cursor: u64,
    cipher: Option<&Cipher>,
    report: &mut Recovery,
) -> std::io::Result<Option<Vec<Loc>>> {
    let p = path(dir, id);
    let bytes = fs::read(&p)?;
    let Some(encrypted) = format::parse_header(&bytes) else {
        fs::remove_file(&p)?;
        return Ok(None);
    };
    // The checksum decides what is a record; a checksummed record that does not open is a key problem, never
    // cut or quarantined (that would destroy events a correct key can still read).
    let valid = |at: usize| -> Option<(u64, &[u8], usize)> { format::unframe(bytes.get(at..)?) };
    let check = |seq: u64, payload: &[u8]| -> std::io::Result<()> {
        let plain = match (encrypted, cipher) {
            (true, Some(c)) => c.open(seq, payload),
            (true, None) => None,
            (false, _) => Some(payload.to_vec()),
        };
        match plain.map(|p| format::decode(&p)) {
            Some(Ok(_)) => Ok(()),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("spool record {seq} cannot be read: wrong or missing storage.spool_key_*"),
            )),
        }
    };
    let mut locs = Vec::new();
    let mut at = HEADER_LEN as usize;
    while at < bytes.len() {
        if let Some((seq, payload, len)) = valid(at) {
            if seq >= cursor {
                check(seq, payload)?;
                locs.push(Loc { seq, segment: id, offset: at as u64, len: len as u64, encrypted });
            }
            at += len;
            continue;
        }
        match (at + 1..bytes.len()).find(|&next| valid(next).is_some()) {
            Some(next) => {
                report.quarantined.push(quarantine(dir, id, at, &bytes[at..next])?);
                at = next;
            }
            None => {
                OpenOptions::new().write(true).open(&p)?.set_len(at as u64)?;
                report.truncated_bytes += (bytes.len() - at) as u64;
                break;
            }
        }
    }
    Ok(Some(locs))
}

/// Copies a corrupt range of segment `id` at `at` to `quarantine/`, fsynced, and logs it (without its bytes).
pub(super) fn quarantine(dir: &Path, id: u64, at: usize, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let qdir = dir.join("quarantine");
    private_fs::create_dir(&qdir)?;
    let q = qdir.join(format!("{id:020}.{at}.bad"));
    let mut f = private_fs::file_options().write(true).create(true).truncate(true).open(&q)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    tracing::error!(segment = id, offset = at, bytes = bytes.len(), file = %q.display(), "corrupt spool record quarantined");
    Ok(q)
}
