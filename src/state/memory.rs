//! The dedup and order rows that are in the record log ([`super::log`]) but not yet in `state.redb`.
//!
//! Two generations: `active` takes the rows of every group commit (as the log's newest file does); once it holds
//! [`fold_rows`] rows it becomes `frozen` (the log starts a new file), and the writer folds `frozen` into the tree
//! one slice of the digest space at a time, in sorted commits. A lookup asks `active`, then `frozen`, then the
//! tree: a newer write of a key is always found before an older one.
//!
//! Each generation is split by digest slice (as the purge and the filter slice it), so a slice is folded and
//! dropped without scanning the others.

use std::collections::BTreeMap;
use std::ops::Range;

use super::filter::slot_of;
use super::sweep::SLICES;
use super::{Digest, Row};

/// Fewest rows a generation holds before it is folded.
const MIN_FOLD_ROWS: u64 = if cfg!(test) { 64 } else { 4096 };
/// Most rows a generation holds before it is folded: memory is bounded whatever the index holds (two
/// generations of at most this many rows, about 40 bytes each: ~10 MiB).
pub(super) const MAX_FOLD_ROWS: u64 = 131_072;
/// A generation is folded once it holds this share of the tree's rows: a fold then writes each leaf of the tree
/// about once for several rows (digests are uniform: a fold of 1/32 of the tree's rows, ~100 rows per leaf,
/// adds ~3 rows to each leaf), where a group commit wrote one leaf per row.
const FOLD_SHARE: u64 = 32;

/// Rows a generation holds before it is folded, for a tree of `tree_rows` rows.
pub(super) fn fold_rows(tree_rows: u64) -> u64 {
    (tree_rows / FOLD_SHARE).clamp(MIN_FOLD_ROWS, MAX_FOLD_ROWS)
}

/// Rows of the tree one fold commit may span (~330 leaves, ~1.3 MiB of pages): a commit rewrites about every
/// leaf of the slices it covers and holds them in memory until it is written, so a large tree is folded one
/// slice per commit (its pages bounded, and the file does not grow by the pages it frees), a small one in fewer
/// commits, each an fsync sharing the disk with the broker's. A fold of a 240 k-row tree in one commit raised
/// the peak RSS of a 120 s run at 2,000/s by 3 MiB.
const FOLD_COMMIT_TREE_ROWS: u64 = 32 * 1024;

/// Slices of the digest space one fold commit covers, for a tree of `tree_rows` rows.
pub(super) fn slices_per_commit(tree_rows: u64) -> usize {
    let slices = (SLICES as u64 * FOLD_COMMIT_TREE_ROWS / tree_rows.max(1)).clamp(1, SLICES as u64);
    usize::try_from(slices).unwrap_or(1)
}

/// One slice of a generation.
#[derive(Default)]
struct Part {
    dedup: BTreeMap<Digest, u64>,
    order: BTreeMap<Digest, (i64, u8, u64)>,
}

/// One generation, one part per slice of the digest space (a digest's part is its filter slot).
pub(super) struct Rows {
    parts: Vec<Part>,
}

impl Default for Rows {
    fn default() -> Rows {
        Rows { parts: (0..SLICES).map(|_| Part::default()).collect() }
    }
}

impl Rows {
    /// Sets `d`'s row (a later write of a key replaces an earlier one).
    pub(super) fn insert(&mut self, d: Digest, row: Row) {
        let part = &mut self.parts[slot_of(&d)];
        match row {
            Row::Done(expires_ms) => part.dedup.insert(d, expires_ms).map(drop),
            Row::Order(value) => part.order.insert(d, value).map(drop),
        };
    }

    /// Rows held.
    pub(super) fn len(&self) -> u64 {
        self.parts.iter().map(|p| (p.dedup.len() + p.order.len()) as u64).sum()
    }

    fn done(&self, d: &Digest) -> Option<u64> {
        self.parts[slot_of(d)].dedup.get(d).copied()
    }

    fn order(&self, d: &Digest) -> Option<(i64, u8, u64)> {
        self.parts[slot_of(d)].order.get(d).copied()
    }

    /// The rows of `slices` still alive at `now_ms` (dedup rows, then order rows, of each slice in turn).
    pub(super) fn slices(&self, slices: Range<usize>, now_ms: u64) -> Vec<(Digest, Row)> {
        let mut out = Vec::new();
        for part in &self.parts[slices] {
            out.extend(part.dedup.iter().filter(|(_, e)| **e > now_ms).map(|(d, e)| (*d, Row::Done(*e))));
            out.extend(part.order.iter().filter(|(_, v)| v.2 > now_ms).map(|(d, v)| (*d, Row::Order(*v))));
        }
        out
    }

    /// Drops the rows of `slices` (once they are in the tree).
    pub(super) fn clear(&mut self, slices: Range<usize>) {
        self.parts[slices].iter_mut().for_each(|part| *part = Part::default());
    }

    /// Drops the rows that expired at `now_ms` (they are never answered from; the log may still hold them, and a
    /// replay skips nothing, but a fold does).
    fn prune(&mut self, now_ms: u64) {
        for part in &mut self.parts {
            part.dedup.retain(|_, e| *e > now_ms);
            part.order.retain(|_, v| v.2 > now_ms);
        }
    }

    /// Every digest held (dedup, order), for [`super::rows`].
    pub(super) fn digests(&self) -> (Vec<Digest>, Vec<Digest>) {
        let dedup = self.parts.iter().flat_map(|p| p.dedup.keys().copied()).collect();
        let order = self.parts.iter().flat_map(|p| p.order.keys().copied()).collect();
        (dedup, order)
    }
}

/// Both generations (in a mutex shared by the writer and the lookups; no I/O is done under it).
#[derive(Default)]
pub(super) struct Memory {
    pub(super) active: Rows,
    pub(super) frozen: Rows,
}

impl Memory {
    /// The newest expiry of a done record held in memory.
    pub(super) fn done(&self, d: &Digest) -> Option<u64> {
        self.active.done(d).or_else(|| self.frozen.done(d))
    }

    /// The newest order row held in memory.
    pub(super) fn order(&self, d: &Digest) -> Option<(i64, u8, u64)> {
        self.active.order(d).or_else(|| self.frozen.order(d))
    }

    /// Drops the rows that expired at `now_ms` from both generations.
    pub(super) fn prune(&mut self, now_ms: u64) {
        self.active.prune(now_ms);
        self.frozen.prune(now_ms);
    }
}
