//! Which digests `state.redb` may hold, in memory: the claim of an event id the index has never seen (nearly
//! every new event) and the order lookup of a subject it has never seen are answered without a read of the file.
//! Such a read runs off the runtime (`spawn_blocking`: a thread hand-off and two wake-ups per read), and without
//! this filter every new event paid one or two of them: about a quarter of the gateway's CPU per event
//! (`docs/benchmarks.md`).
//!
//! # Invariants
//!
//! - No false negatives. A digest of a committed row is in the filter of its slot, or the slot has no filter
//!   (not built yet), and then every lookup in it reads the file. So "no" from [`Filter::may_hold`] means "not in
//!   the file", and every answer is the one the file would give. A false positive (about 1% of the lookups of a
//!   slot within its capacity) is a read, as before.
//! - The writer adds the digests of a commit after the commit returns and before it tells the waiters (the
//!   dedup id stays in flight until then, so no claim of it can slip between). A rebuild of a slot registers the
//!   new filter as `building` *before* it opens its read snapshot, and the writer adds to both filters: a row is
//!   either in the snapshot (and scanned) or committed after it (and added).
//! - One Bloom filter per slice of the digest space (the purge's [`SLICES`]), sized from the rows of its slice,
//!   so memory follows the index; each one at most `storage.filter_bytes / SLICES` (while a slot is rebuilt its
//!   old and new filters both exist: at most two slots at a time, the purge's and the filter thread's). Past its
//!   capacity a filter fills up and answers "maybe" more often (more reads), never wrongly.
//! - Expired rows keep their bits until their slot is rebuilt: the purge's sweep rebuilds each slot it scans
//!   (every slot once per sweep), and a slot past its capacity is rebuilt at once by the filter thread.
//! - At start the filter thread builds every slot from the file; until then the gateway answers as before.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use arc_swap::ArcSwapOption;
use fastbloom::AtomicBloomFilter;

use super::sweep::SLICES;
use super::Digest;

/// `storage.filter_bytes` when nothing is configured: about 13 million rows at 1% false positives.
pub const DEFAULT_FILTER_BYTES: u64 = 16 << 20;
/// Bits per row a filter is sized with: with [`HASHES`] probes, about 1% false positives at capacity.
const BITS_PER_ROW: u64 = 10;
const HASHES: u32 = 7;
/// The smallest capacity of a slot (about 5 KiB; in tests 64 rows, so tests see slots fill up and grow).
pub(crate) const MIN_ROWS: u64 = if cfg!(test) { 64 } else { 4096 };

/// The filters of every slot.
pub struct Filter {
    slots: Vec<Slot>,
    /// The largest filter of one slot, in bits.
    max_bits: u64,
    /// Rebuild requests to the filter thread (slots past their capacity).
    requests: Mutex<Option<mpsc::Sender<usize>>>,
}

#[derive(Default)]
struct Slot {
    /// What lookups use; `None`: not built yet (every lookup reads).
    current: ArcSwapOption<Bloom>,
    /// A rebuild in progress: the writer adds to it too.
    building: ArcSwapOption<Bloom>,
    /// A rebuild was requested and has not finished.
    requested: AtomicBool,
    /// Held by the one rebuild of this slot in progress ([`Filter::begin`]).
    rebuilding: Mutex<()>,
}

/// A rebuild of one slot in progress: [`Rebuild::add`] the rows of the scan, then [`Rebuild::finish`]; dropped
/// unfinished (the scan failed), the filter in use stays.
pub struct Rebuild<'f> {
    slot: &'f Slot,
    bloom: Arc<Bloom>,
    done: bool,
    _lock: MutexGuard<'f, ()>,
}

/// One slot's Bloom filter.
pub struct Bloom {
    bits: AtomicBloomFilter,
    /// Rows it was sized for.
    capacity: u64,
    /// Rows added since it was created (by its build's scan, then by commits).
    added: AtomicU64,
    /// Rows its build's scan added (set when it is put in use).
    scanned: AtomicU64,
}

/// The slot of a digest: its first byte, as the purge slices the digest space.
pub fn slot_of(d: &Digest) -> usize {
    usize::from(d[0]) * SLICES / 256
}

/// The Bloom hash of a digest: bytes the slot does not depend on (digests are uniform SHA-256 prefixes).
fn hash_of(d: &Digest) -> u64 {
    let mut h = [0u8; 8];
    h.copy_from_slice(&d[8..16]);
    u64::from_le_bytes(h)
}

// === impl Bloom ===

impl Bloom {
    fn new(capacity: u64, max_bits: u64) -> Bloom {
        let bits = (capacity.saturating_mul(BITS_PER_ROW)).clamp(64 * 64, max_bits.max(64 * 64));
        let bits = usize::try_from(bits).unwrap_or(usize::MAX);
        let bits = AtomicBloomFilter::with_num_bits(bits).seed(&0).hashes(HASHES);
        Bloom { bits, capacity, added: AtomicU64::new(0), scanned: AtomicU64::new(0) }
    }

    pub fn add(&self, d: &Digest) {
        self.bits.insert_hash(hash_of(d));
        self.added.fetch_add(1, Ordering::Relaxed);
    }

    fn contains(&self, d: &Digest) -> bool {
        self.bits.contains_hash(hash_of(d))
    }

    fn full(&self) -> bool {
        self.added.load(Ordering::Relaxed) > self.capacity
    }

    /// Bytes of its bit vector.
    fn bytes(&self) -> u64 {
        self.bits.num_bits() as u64 / 8
    }
}

// === impl Rebuild ===

impl Rebuild<'_> {
    /// Adds a row found by the scan.
    pub fn add(&self, d: &Digest) {
        self.bloom.add(d);
    }

    /// Puts the rebuilt filter in use.
    pub fn finish(mut self) {
        self.bloom.scanned.store(self.bloom.added.load(Ordering::Relaxed), Ordering::Relaxed);
        self.slot.current.store(Some(self.bloom.clone()));
        self.done = true;
    }
}

impl Drop for Rebuild<'_> {
    fn drop(&mut self) {
        // Finished or not, nothing is added to this filter any more except through `current`.
        self.slot.building.store(None);
        self.slot.requested.store(false, Ordering::Release);
        if !self.done {
            tracing::debug!("state filter: a rebuild was given up; the filter in use stays");
        }
    }
}

// === impl Filter ===

impl Filter {
    /// Empty slots (every lookup reads until a slot is built), at most `max_bytes` in all.
    pub fn new(max_bytes: u64) -> Filter {
        let slots = (0..SLICES).map(|_| Slot::default()).collect();
        let max_bits = (max_bytes.saturating_mul(8) / SLICES as u64).max(64 * 64);
        Filter { slots, max_bits, requests: Mutex::new(None) }
    }

    /// Where the filter thread takes rebuild requests.
    pub fn requests_to(&self, tx: mpsc::Sender<usize>) {
        *self.requests.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }

    /// Whether `state.redb` may hold a row with digest `d`; `false` only when it does not.
    pub fn may_hold(&self, d: &Digest) -> bool {
        let Some(slot) = self.slots.get(slot_of(d)) else { return true };
        slot.current.load().as_ref().is_none_or(|b| b.contains(d))
    }

    /// Adds the digest of a committed row.
    pub fn add(&self, d: &Digest) {
        let i = slot_of(d);
        let Some(slot) = self.slots.get(i) else { return };
        if let Some(b) = slot.building.load().as_ref() {
            b.add(d);
        }
        let current = slot.current.load();
        let Some(b) = current.as_ref() else { return };
        b.add(d);
        // A full filter that a rebuild can make larger: ask for one (once).
        if b.full() && b.bytes() * 8 < self.max_bits && !slot.requested.swap(true, Ordering::AcqRel) {
            let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            if requests.as_ref().is_none_or(|tx| tx.send(i).is_err()) {
                slot.requested.store(false, Ordering::Release);
            }
        }
    }

    /// Starts a rebuild of slot `i` for about `rows` rows (`rows` is asked for once the slot is ours): the new
    /// filter is registered before the caller opens its read snapshot, so rows committed from now on are added
    /// to it too. One rebuild of a slot at a time (the purge and the filter thread may both want one): a second
    /// waits here until the first is finished or dropped, else the first one's finish would unregister the
    /// second's filter while it still scans, and rows committed meanwhile would be missing from it.
    pub fn begin(&self, i: usize, rows: impl FnOnce() -> u64) -> Option<Rebuild<'_>> {
        let slot = self.slots.get(i)?;
        let lock = slot.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
        let rows = rows();
        // Room for the rows added meanwhile at the rate of the filter it replaces, and a quarter more.
        let recent = slot
            .current
            .load()
            .as_ref()
            .map_or(0, |b| b.added.load(Ordering::Relaxed).saturating_sub(b.scanned.load(Ordering::Relaxed)));
        let capacity = (rows + rows / 4 + 2 * recent).max(MIN_ROWS);
        let bloom = Arc::new(Bloom::new(capacity, self.max_bits));
        slot.building.store(Some(bloom.clone()));
        Some(Rebuild { slot, bloom, done: false, _lock: lock })
    }

    /// The rows slot `i` holds, as far as its filter knows (those its build scanned, and added since; expired rows
    /// included).
    pub fn rows_hint(&self, i: usize) -> Option<u64> {
        let slot = self.slots.get(i)?;
        slot.current.load().as_ref().map(|b| b.added.load(Ordering::Relaxed))
    }

    /// Whether every slot is built.
    pub fn built(&self) -> bool {
        self.slots.iter().all(|s| s.current.load().is_some())
    }

    /// Bytes of every filter in use.
    pub fn bytes(&self) -> u64 {
        self.slots.iter().filter_map(|s| s.current.load().as_ref().map(|b| b.bytes())).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(i: u64) -> Digest {
        super::super::digest(&format!("s\u{1f}{i}"))
    }

    #[test]
    fn an_unbuilt_slot_says_maybe_and_a_built_one_knows_what_was_added() {
        let f = Filter::new(1 << 20);
        assert!(f.may_hold(&digest(1)), "not built: every lookup reads");
        for i in 0..SLICES {
            f.begin(i, || 0).unwrap().finish();
        }
        assert!(f.built());
        for i in 0..2000 {
            f.add(&digest(i));
        }
        assert!((0..2000).all(|i| f.may_hold(&digest(i))), "no false negatives");
        let false_positives = (2000..102_000).filter(|i| f.may_hold(&digest(*i))).count();
        assert!(false_positives < 1000, "{false_positives} of 100,000");
    }

    #[test]
    fn a_rebuild_keeps_what_is_added_while_it_runs_and_a_full_slot_asks_for_one() {
        let f = Filter::new(1 << 20);
        let (tx, rx) = mpsc::channel();
        f.requests_to(tx);
        let d = digest(7);
        let i = slot_of(&d);
        f.begin(i, || 0).unwrap().finish();
        let next = f.begin(i, || 10).unwrap();
        f.add(&d); // committed while the rebuild scans: not in its snapshot
        next.finish();
        assert!(f.may_hold(&d));
        // Past its capacity, the slot asks the filter thread for a larger filter, once.
        let mut ours = (1_000_000..).map(digest).filter(|d| slot_of(d) == i);
        let mut n = 0;
        while rx.try_recv().is_err() {
            f.add(&ours.next().unwrap());
            n += 1;
            assert!(n <= MIN_ROWS + 10, "never asked");
        }
        assert_eq!(n, MIN_ROWS, "asked when past its capacity");
        let more = (0..1000).map(|k| digest(2_000_000 + k)).filter(|d| slot_of(d) == i);
        more.for_each(|d| f.add(&d));
        assert!(rx.try_recv().is_err(), "asked once until rebuilt");
    }

    /// Two rebuilds of one slot (the purge's and the filter thread's) never overlap: the second starts once the
    /// first is finished, so the first one's finish cannot unregister the second's filter while it scans.
    #[test]
    fn rebuilds_of_one_slot_take_turns_and_keep_every_row_added_meanwhile() {
        let f = Arc::new(Filter::new(1 << 20));
        let d = digest(9);
        let i = slot_of(&d);
        let first = f.begin(i, || 0).unwrap();
        let (tx, rx) = mpsc::channel();
        let second = {
            let f = f.clone();
            std::thread::spawn(move || {
                let rebuild = f.begin(i, || 0).unwrap();
                tx.send(()).unwrap();
                // This rebuild's scan would find `d` in the file: it was committed before the scan began.
                rebuild.add(&d);
                rebuild.finish();
            })
        };
        assert!(rx.recv_timeout(std::time::Duration::from_millis(100)).is_err(), "the second waits for the first");
        f.add(&d); // committed while the first rebuild scans
        first.finish();
        assert!(f.may_hold(&d), "the first rebuild's filter has it");
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        second.join().unwrap();
        assert!(f.may_hold(&d), "and so has the second's");
    }

    #[test]
    fn every_filter_stays_under_the_configured_bytes() {
        let f = Filter::new(64 << 10);
        for i in 0..SLICES {
            f.begin(i, || 10_000_000).unwrap().finish();
        }
        assert!(f.bytes() <= 64 << 10, "{}", f.bytes());
    }
}
