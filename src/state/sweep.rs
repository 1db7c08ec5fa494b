//! The purge: one slice of the digest space per call, scanned in a read transaction, its expired rows removed
//! in commits of at most [`REMOVE_CHUNK`] rows.
//!
//! Digests are SHA-256 prefixes, so the rows spread evenly over the [`SLICES`] slices (by their first byte): a
//! call reads about 1/`SLICES` of the index however large it is, and every row is looked at once per `SLICES`
//! calls (the gateway purges every minute: a full sweep each 32 minutes).

use std::ops::Bound;
use std::sync::atomic::Ordering;

use redb::{Database, ReadableTable};

use super::filter::{Filter, Rebuild};
use super::{err, Digest, Op, State, StateError, Table, DEDUP, ORDER};

/// Slices of the digest space (a divisor of 256).
pub const SLICES: usize = 32;
/// Most rows removed in one commit: a commit that removes most rows rewrites most pages, and the pages it frees
/// are reused only after it, so the file would grow to twice the index (a gateway stopped for longer than the
/// window finds every row expired at once). The writer commits other writes between these.
pub const REMOVE_CHUNK: usize = 4096;

type Range = (Bound<Digest>, Bound<Digest>);

/// The digests whose first byte falls in slice `slice` (of [`SLICES`]).
pub(super) fn bounds(slice: usize) -> Range {
    let first = |s: usize| {
        let mut d = [0u8; 16];
        d[0] = u8::try_from(s * (256 / SLICES)).unwrap_or(u8::MAX);
        d
    };
    let end = if slice + 1 >= SLICES { Bound::Unbounded } else { Bound::Excluded(first(slice + 1)) };
    (Bound::Included(first(slice)), end)
}

impl State {
    /// Drops the entries of the next slice that expired before `now_ms`: the scan runs in a read transaction
    /// off the runtime (the writer keeps committing meanwhile), then commits remove the rows found, if still
    /// expired, and the polling jobs due.
    ///
    /// # Errors
    /// The scan or a commit failed.
    pub async fn purge(&self, now_ms: u64) -> Result<(), StateError> {
        let slice = self.next_slice.fetch_add(1, Ordering::Relaxed) % SLICES;
        let this = self.clone();
        let (mut dedup, mut order) =
            tokio::task::spawn_blocking(move || this.expired(slice, now_ms)).await.map_err(err)??;
        // At least one commit, even with nothing to remove here: it purges the polling jobs due.
        loop {
            let d = dedup.split_off(dedup.len().saturating_sub(REMOVE_CHUNK));
            let o = order.split_off(order.len().saturating_sub(REMOVE_CHUNK - d.len()));
            self.write(vec![Op::Remove { now_ms, dedup: d, order: o }]).await?;
            if dedup.is_empty() && order.is_empty() {
                return Ok(());
            }
        }
    }

    /// Every slice in turn.
    #[cfg(test)]
    pub(crate) async fn purge_all(&self, now_ms: u64) -> Result<(), StateError> {
        for _ in 0..SLICES {
            self.purge(now_ms).await?;
        }
        Ok(())
    }

    fn expired(&self, slice: usize, now_ms: u64) -> Result<(Vec<Digest>, Vec<Digest>), StateError> {
        rebuild(&self.db, &self.filter, slice, now_ms)
    }
}

/// Scans slice `slice` of the dedup and order tables in one read transaction: rebuilds the slice's filter from
/// the rows alive at `now_ms`, and returns the rows that expired (dedup, order).
///
/// # Errors
/// A read failed (the slice keeps its filter).
pub(super) fn rebuild(
    db: &Database,
    filter: &Filter,
    slice: usize,
    now_ms: u64,
) -> Result<(Vec<Digest>, Vec<Digest>), StateError> {
    // Registered before the snapshot is taken: what is committed after it is added to the new filter too. The
    // estimate is read once the slot is ours (another rebuild of it may have just finished).
    let rows = || filter.rows_hint(slice).or_else(|| slice_rows(db).ok()).unwrap_or(0);
    let Some(rebuild) = filter.begin(slice, rows) else { return Ok((Vec::new(), Vec::new())) };
    let range = bounds(slice);
    let txn = db.begin_read().map_err(err)?;
    let dedup = scan(&txn.open_table(DEDUP).map_err(err)?, range, now_ms, |e| e, &rebuild)?;
    let order = scan(&txn.open_table(ORDER).map_err(err)?, range, now_ms, |(_, _, e)| e, &rebuild)?;
    // Only a whole scan replaces the filter in use (an error above drops the rebuild unfinished).
    rebuild.finish();
    Ok((dedup, order))
}

/// About the rows of one slice (digests are uniform).
fn slice_rows(db: &Database) -> Result<u64, StateError> {
    Ok(super::writer::tree_rows(db)? / SLICES as u64)
}

/// The rows in `range` that expired before `now_ms`; the others are added to `alive`.
fn scan<V: redb::Value + 'static>(
    table: &impl ReadableTable<Digest, V>,
    range: Range,
    now_ms: u64,
    expiry_ms: impl for<'v> Fn(V::SelfType<'v>) -> u64,
    alive: &Rebuild<'_>,
) -> Result<Vec<Digest>, StateError> {
    let mut out = Vec::new();
    for entry in table.range::<Digest>(range).map_err(err)? {
        let (k, v) = entry.map_err(err)?;
        if expiry_ms(v.value()) <= now_ms {
            out.push(k.value());
        } else {
            alive.add(&k.value());
        }
    }
    Ok(out)
}

/// Removes the listed rows that are still expired (a later write may have extended one since the scan).
pub(super) fn remove(
    dedup: &mut Table<Digest, u64>,
    order: &mut Table<Digest, (i64, u8, u64)>,
    now_ms: u64,
    d: &[Digest],
    o: &[Digest],
) -> Result<(), StateError> {
    for k in d {
        if dedup.get(k).map_err(err)?.is_some_and(|v| v.value() <= now_ms) {
            dedup.remove(k).map_err(err)?;
        }
    }
    for k in o {
        if order.get(k).map_err(err)?.is_some_and(|v| v.value().2 <= now_ms) {
            order.remove(k).map_err(err)?;
        }
    }
    Ok(())
}

/// Drops the polling jobs whose last write expired (and every due `expiry` entry, including those of the
/// string-keyed tables of earlier versions).
pub(super) fn purge_jobs(
    jobs: &mut Table<&str, (u64, &[u8])>,
    expiry: &mut Table<(u64, &str), ()>,
    now_ms: u64,
) -> Result<(), StateError> {
    let mut due = Vec::new();
    for entry in expiry.range((0, "")..(now_ms, "")).map_err(err)? {
        let (k, _) = entry.map_err(err)?;
        let (at, tagged) = k.value();
        due.push((at, tagged.to_string()));
    }
    for (at, tagged) in due {
        expiry.remove((at, tagged.as_str())).map_err(err)?;
        let key = tagged.get(1..).unwrap_or_default();
        // A later write may have extended the job: only remove what really expired.
        if tagged.starts_with('p') && jobs.get(key).map_err(err)?.is_some_and(|v| v.value().0 <= now_ms) {
            jobs.remove(key).map_err(err)?;
        }
    }
    Ok(())
}
