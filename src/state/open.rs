//! Opening `state.redb`: waiting out the lock of a writer that is stopping, converting the tables of earlier
//! versions, and the filter thread that builds the filter from the file.

use std::path::Path;
use std::sync::Weak;

use redb::{Database, Durability, ReadableTable, TableDefinition, TableHandle, WriteTransaction};

use super::filter::Filter;
use super::{digest, err, now_ms, sweep, Digest, StateError, DEDUP, OLD_DEDUP, OLD_ORDER, ORDER};

/// Opens the file; a database still held by a writer thread that is stopping is waited for briefly.
pub(super) fn open_db(path: &Path, cache_bytes: usize) -> Result<Database, StateError> {
    let mut tries = 0;
    loop {
        match Database::builder().set_cache_size(cache_bytes).create(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if tries < 40 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StateError("already open by another process (is a gateway running?)".into()))
            }
            other => return other.map_err(err),
        }
    }
}

/// Moves the rows of the string-keyed tables of earlier versions into the digest tables, once.
pub(super) fn convert_old_tables(db: &Database) -> Result<(), StateError> {
    let names: Vec<String> = {
        let txn = db.begin_read().map_err(err)?;
        let names = txn.list_tables().map_err(err)?.map(|t| t.name().to_string()).collect();
        names
    };
    if !names.iter().any(|n| n == "dedup" || n == "order") {
        return Ok(());
    }
    let mut txn = db.begin_write().map_err(err)?;
    txn.set_durability(Durability::Immediate);
    let mut rows = 0;
    if names.iter().any(|n| n == "dedup") {
        rows += copy_rows(&txn, OLD_DEDUP, DEDUP)?;
    }
    if names.iter().any(|n| n == "order") {
        rows += copy_rows(&txn, OLD_ORDER, ORDER)?;
    }
    txn.delete_table(OLD_DEDUP).map_err(err)?;
    txn.delete_table(OLD_ORDER).map_err(err)?;
    // Their entries in `expiry` (tags `d`, `o`) are dropped by the purge as they come due.
    txn.commit().map_err(err)?;
    tracing::info!(rows, "state: index converted to the digest tables");
    Ok(())
}

/// Copies every row of the string-keyed table `old` into `new` under the key's digest; the rows copied.
fn copy_rows<V: redb::Value + 'static>(
    txn: &WriteTransaction,
    old: TableDefinition<&str, V>,
    new: TableDefinition<Digest, V>,
) -> Result<u64, StateError> {
    let old = txn.open_table(old).map_err(err)?;
    let mut new = txn.open_table(new).map_err(err)?;
    let mut rows = 0;
    for entry in old.iter().map_err(err)? {
        let (k, v) = entry.map_err(err)?;
        new.insert(digest(k.value()), v.value()).map_err(err)?;
        rows += 1;
    }
    Ok(rows)
}

/// The filter thread: builds every slot from the file (those the purge has not built first), then rebuilds the
/// slots that fill up, as asked. Holds the database only while it scans, so it never keeps a closed state open;
/// it ends with the last [`State`] (and the writer), when the request channel closes.
pub(super) fn build_filter(db: &Weak<Database>, filter: &Weak<Filter>, requests: &std::sync::mpsc::Receiver<usize>) {
    let scan = |slice: usize, only_unbuilt: bool| {
        let (Some(db), Some(filter)) = (db.upgrade(), filter.upgrade()) else { return false };
        if !(only_unbuilt && filter.rows_hint(slice).is_some()) {
            if let Err(error) = sweep::rebuild(&db, &filter, slice, now_ms()) {
                tracing::warn!(%error, slice, "state filter: slice not built; its lookups read the file");
            }
        }
        true
    };
    for slice in 0..sweep::SLICES {
        if !scan(slice, true) {
            return;
        }
    }
    while let Ok(slice) = requests.recv() {
        if !scan(slice, false) {
            return;
        }
    }
}
