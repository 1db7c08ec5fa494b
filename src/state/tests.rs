use std::time::Duration;

use redb::TableHandle;
use tokio::time::Instant;

use super::*;
use crate::dedup::{Claim, Dedup};

const OLD_DEDUP: TableDefinition<&str, u64> = TableDefinition::new("dedup");
const OLD_ORDER: TableDefinition<&str, (i64, u8, u64)> = TableDefinition::new("order");

#[tokio::test]
async fn writes_are_read_back_and_purged() {
    let dir = tempfile::tempdir().unwrap();
    let s = State::open(dir.path()).unwrap();
    let now = now_ms();
    s.write(vec![
        Op::Done { key: "a\u{1f}1".into(), expires_ms: now + 60_000 },
        Op::Done { key: "a\u{1f}2".into(), expires_ms: now - 1 },
        Op::Order { key: "a\u{1f}tx".into(), time_ms: 5, rank: 2, expires_ms: now - 1 },
    ])
    .await
    .unwrap();
    assert_eq!(s.done_until("a\u{1f}1").unwrap(), Some(now + 60_000));
    assert_eq!(s.order_of("a\u{1f}tx").unwrap(), Some((5, 2, now - 1)));
    s.purge_all(now).await.unwrap();
    assert_eq!(s.done_until("a\u{1f}2").unwrap(), None);
    assert_eq!(s.order_of("a\u{1f}tx").unwrap(), None);
    assert!(s.done_until("a\u{1f}1").unwrap().is_some());
}

#[tokio::test]
async fn poll_jobs_are_listed_by_poller_and_purged_after_their_last_write() {
    let dir = tempfile::tempdir().unwrap();
    let s = State::open(dir.path()).unwrap();
    let now = now_ms();
    let job =
        |key: &str, record: &[u8], expires_ms| Op::PollJob { key: key.into(), record: record.to_vec(), expires_ms };
    s.write(vec![
        job("p\u{1f}t1", b"one", now - 1),
        job("p\u{1f}t2", b"two", now + 60_000),
        job("q\u{1f}t", b"q", now - 5),
    ])
    .await
    .unwrap();
    // Written again with a later expiry: the old index entry must not purge it.
    s.write(vec![job("p\u{1f}t1", b"one again", now + 60_000)]).await.unwrap();
    // One purge call (one slice of the index, nothing expired in it) still purges the polling jobs.
    s.purge(now).await.unwrap();
    let listed = s.poll_jobs("p\u{1f}").unwrap();
    assert_eq!(listed, vec![("p\u{1f}t1".into(), b"one again".to_vec()), ("p\u{1f}t2".into(), b"two".to_vec())]);
    assert_eq!(s.poll_job("q\u{1f}t").unwrap(), None);
}

#[tokio::test]
async fn the_sweeping_purge_keeps_what_a_later_write_extended() {
    let dir = tempfile::tempdir().unwrap();
    let s = State::open(dir.path()).unwrap();
    let now = now_ms();
    let ops = (0..1000).map(|i| Op::Done { key: format!("a\u{1f}{i}"), expires_ms: now - 1 + (i % 2) * 60_000 });
    s.write(ops.collect()).await.unwrap();
    s.purge_all(now).await.unwrap();
    assert_eq!(rows(&s).unwrap(), (500, 0));
    assert_eq!(s.done_until("a\u{1f}1").unwrap(), Some(now + 59_999));
    assert_eq!(s.done_until("a\u{1f}0").unwrap(), None);
}

#[tokio::test]
async fn each_purge_sweeps_one_slice_and_a_round_sweeps_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let s = State::open(dir.path()).unwrap();
    let now = now_ms();
    // More rows than one removal commit holds, in both tables, folded into the file, then expired.
    let n = 40 * sweep::REMOVE_CHUNK as u64;
    let done = (0..n).map(|i| Op::Done { key: format!("a\u{1f}{i}"), expires_ms: now + 60_000 });
    let order =
        (0..n / 4).map(|i| Op::Order { key: format!("a\u{1f}s{i}"), time_ms: 1, rank: 0, expires_ms: now + 60_000 });
    s.write(done.chain(order).collect()).await.unwrap();
    s.folded().await;
    let now = now + 60_000;
    s.purge(now).await.unwrap();
    let (d, o) = rows(&s).unwrap();
    // Slice 0 of 32 holds about 1/32 of the (uniform) digests: 5,120 dedup rows give or take a few hundred.
    let swept = n - d;
    assert!((4_500..5_800).contains(&swept), "one slice removed {swept} of {n}");
    assert!((n / 4 - o) > 900 && (n / 4 - o) < 1_700, "order rows removed: {}", n / 4 - o);
    for _ in 1..sweep::SLICES {
        s.purge(now).await.unwrap();
    }
    assert_eq!(rows(&s).unwrap(), (0, 0), "a round of purges covers the whole digest space");
}

#[test]
fn the_slices_cover_the_digest_space_once() {
    let mut covered = [0u32; 256];
    for slice in 0..sweep::SLICES {
        for b in 0..=255u8 {
            let mut d = [0u8; 16];
            d[0] = b;
            d[15] = 0xff;
            if std::ops::RangeBounds::contains(&sweep::bounds(slice), &d) {
                covered[usize::from(b)] += 1;
            }
        }
    }
    assert!(covered.iter().all(|c| *c == 1), "{covered:?}");
}

#[test]
fn string_keyed_tables_of_an_earlier_version_are_converted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    write_string_tables(dir.path(), "a\u{1f}1", 77);
    let s = State::open(dir.path()).unwrap();
    assert_eq!(s.done_until("a\u{1f}1").unwrap(), Some(77));
    assert_eq!(s.order_of("a\u{1f}tx").unwrap(), Some((5, 2, 88)));
    let txn = s.db.begin_read().unwrap();
    let names: Vec<String> = txn.list_tables().unwrap().map(|t| t.name().to_string()).collect();
    assert!(!names.iter().any(|n| n == "dedup" || n == "order"), "{names:?}");
}

/// A file as the first versions wrote it: string keys, and their entries in `expiry`.
fn write_string_tables(dir: &Path, key: &str, expires_ms: u64) {
    let db = Database::create(dir.join("state.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(OLD_DEDUP).unwrap().insert(key, expires_ms).unwrap();
    txn.open_table(OLD_ORDER).unwrap().insert("a\u{1f}tx", (5i64, 2u8, 88u64)).unwrap();
    txn.open_table(EXPIRY).unwrap().insert((expires_ms, format!("d{key}").as_str()), ()).unwrap();
    txn.commit().unwrap();
}

const TTL: Duration = Duration::from_secs(10);

fn far() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// The dedup promise over this file: a retry inside the window is answered `Duplicate` after a restart (with
/// purges in between, which must keep what is inside its window) and after the conversion of a file of the
/// first versions; a new id is admitted.
#[tokio::test]
async fn a_retry_inside_the_window_is_a_duplicate_after_restart_purge_and_conversion() {
    let dir = tempfile::tempdir().unwrap();
    write_string_tables(dir.path(), &crate::dedup::key("card", "old-1"), now_ms() + 3_600_000);
    {
        let d = Dedup::new(State::open(dir.path()).unwrap(), None);
        let Claim::New(g) = d.claim("card", "new-1", TTL, far()).await else { panic!("first claim") };
        g.complete(Duration::from_secs(3600), drop).await;
        d.flush().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = State::open(dir.path()).unwrap();
    s.purge_all(now_ms()).await.unwrap();
    let d = Dedup::new(s, None);
    for id in ["new-1", "old-1"] {
        assert!(matches!(d.claim("card", id, TTL, far()).await, Claim::Duplicate), "{id}");
    }
    assert!(matches!(d.claim("card", "new-2", TTL, far()).await, Claim::New(_)));
}

/// The filter (`filter.rs`): an id or subject never stored costs no read of the file once the filter is built;
/// a stored one is read as before.
#[tokio::test]
async fn a_lookup_of_a_key_never_stored_reads_nothing_once_the_filter_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let s = State::open(dir.path()).unwrap();
    let now = now_ms();
    let others = (0..100).map(|i| Op::Done { key: format!("a\u{1f}other-{i}"), expires_ms: now + 60_000 });
    s.write(
        [
            Op::Done { key: "a\u{1f}1".into(), expires_ms: now + 60_000 },
            Op::Order { key: "a\u{1f}tx".into(), time_ms: 5, rank: 2, expires_ms: now + 60_000 },
        ]
        .into_iter()
        .chain(others)
        .collect(),
    )
    .await
    .unwrap();
    // In the file, not only in the record log (whose rows are answered from memory).
    s.folded().await;
    s.filter_built().await;
    let reads = || s.reads.load(std::sync::atomic::Ordering::Relaxed);
    for i in 0..1000 {
        assert_eq!(s.lookup_done(&format!("a\u{1f}new-{i}")).await.unwrap(), None);
        assert_eq!(s.lookup_order(&format!("a\u{1f}subject-{i}")).await.unwrap(), None);
    }
    // About 1% false positives: a read each, answered as before.
    assert!(reads() < 60, "{} reads for 2,000 keys never stored", reads());
    let before = reads();
    assert_eq!(s.lookup_done("a\u{1f}1").await.unwrap(), Some(now + 60_000));
    assert_eq!(s.lookup_order("a\u{1f}tx").await.unwrap(), Some((5, 2, now + 60_000)));
    assert_eq!(reads(), before + 2, "a stored key is read");
}

/// No false negatives: rows stored before a restart (found by the build at open), committed while the filter
/// thread builds, and after it, are all in the filter — and again after every slice was rebuilt by the purge.
/// In tests a slot starts small (`filter::MIN_ROWS`), so slots also fill up and are rebuilt larger on the way.
#[tokio::test]
async fn every_stored_row_is_in_the_filter_whenever_it_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    let key = |i: u64| format!("a\u{1f}{i}");
    let done = |range: std::ops::Range<u64>| {
        range.map(|i| Op::Done { key: key(i), expires_ms: now + 3_600_000 }).collect::<Vec<_>>()
    };
    {
        let s = State::open(dir.path()).unwrap();
        s.write(done(0..8_000)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = State::open(dir.path()).unwrap();
    for chunk in 0..10 {
        s.write(done(8_000 + chunk * 800..8_800 + chunk * 800)).await.unwrap();
    }
    s.filter_built().await;
    s.write(done(16_000..20_000)).await.unwrap();
    // A row is in the record log (answered from memory) or in the file and then in the filter.
    let visible = |s: &State, d: &Digest| s.memory().done(d).is_some() || s.filter.may_hold(d);
    let missing = |s: &State| (0..20_000).filter(|i| !visible(s, &digest(&key(*i)))).count();
    assert_eq!(missing(&s), 0);
    s.folded().await;
    assert_eq!(missing(&s), 0, "once the record log is folded into the file");
    // First size: 32 slots of 4,096 bits (16 KiB).
    assert!(s.filter_bytes() > 24 * 1024, "slots grew past their first size: {} bytes", s.filter_bytes());
    s.purge_all(now_ms()).await.unwrap();
    assert_eq!(missing(&s), 0, "after the purge rebuilt every slot");
    for i in [0, 9_999, 19_999] {
        assert_eq!(s.lookup_done(&key(i)).await.unwrap(), Some(now + 3_600_000));
    }
}

/// The filter stays under `storage.filter_bytes` however many rows the file holds.
#[tokio::test]
async fn the_filter_stays_under_its_configured_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = State::open_with(dir.path(), DEFAULT_CACHE_BYTES, 1 << 16).unwrap();
    let now = now_ms();
    s.write((0..20_000).map(|i| Op::Done { key: format!("a\u{1f}{i}"), expires_ms: now + 60_000 }).collect())
        .await
        .unwrap();
    s.filter_built().await;
    s.purge_all(now).await.unwrap();
    assert!(s.filter_bytes() <= 1 << 16, "{} bytes", s.filter_bytes());
    assert_eq!(s.lookup_done("a\u{1f}7").await.unwrap(), Some(now + 60_000));
}

/// The record log (`log.rs`): a group commit's rows are appended to `state.log.<n>` and answered from memory,
/// and reach `state.redb` only when their generation is folded — in one sorted pass for many rows, not a leaf
/// rewrite per row. Before it, every group commit wrote its rows into the file.
#[tokio::test]
async fn rows_are_logged_first_and_folded_into_the_file_later() {
    let dir = tempfile::tempdir().unwrap();
    let s = State::open(dir.path()).unwrap();
    let now = now_ms();
    let key = |i: u64| format!("a\u{1f}{i}");
    let done = |range: std::ops::Range<u64>| {
        range.map(|i| Op::Done { key: key(i), expires_ms: now + 60_000 }).collect::<Vec<_>>()
    };
    s.write(done(0..10)).await.unwrap();
    assert_eq!(writer::tree_rows(&s.db).unwrap(), 0, "nothing in the file yet");
    assert_eq!(rows(&s).unwrap(), (10, 0));
    assert_eq!(s.log_rows(), 10);
    assert!(log::path(dir.path(), 1).exists());
    assert_eq!(s.lookup_done(&key(3)).await.unwrap(), Some(now + 60_000));
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // After a restart the log is read back: the rows are answered as before.
    let s = State::open(dir.path()).unwrap();
    assert_eq!(s.done_until(&key(9)).unwrap(), Some(now + 60_000));
    // Past the fold size (64 rows in tests) the generation is frozen, folded, and its file deleted.
    s.write(done(10..100)).await.unwrap();
    s.folded().await;
    assert_eq!(s.log_rows(), 0);
    assert_eq!(writer::tree_rows(&s.db).unwrap(), 100);
    assert!(!log::path(dir.path(), 1).exists(), "the folded file is deleted");
    assert!(log::path(dir.path(), 2).exists(), "a new file takes the next rows");
    for i in [0, 50, 99] {
        assert_eq!(s.lookup_done(&key(i)).await.unwrap(), Some(now + 60_000));
    }
}

/// A stop in the middle of a fold leaves the frozen file: the next start folds it again (the same values), and a
/// newer row of the same key, in the newest file, is the one answered — and the one the file ends up with.
#[tokio::test]
async fn a_fold_cut_short_is_finished_after_a_restart_and_the_newest_row_wins() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    let k = digest("a\u{1f}k");
    {
        let mut log = log::Log::open(dir.path()).unwrap().log;
        let others: Vec<_> = (0..20u64).map(|i| (digest(&format!("a\u{1f}{i}")), Row::Done(now + 1_000))).collect();
        log.append(&[(k, Row::Done(now + 10_000))]).unwrap();
        log.append(&others).unwrap();
        log.rotate().unwrap();
        log.append(&[(k, Row::Done(now + 20_000))]).unwrap();
    }
    let s = State::open(dir.path()).unwrap();
    for _ in 0..2000 {
        if !log::path(dir.path(), 1).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!log::path(dir.path(), 1).exists(), "the frozen file was folded and deleted");
    assert_eq!(s.file_done(&k).unwrap(), Some(now + 10_000), "the frozen row is in the file");
    assert_eq!(s.done_until("a\u{1f}k").unwrap(), Some(now + 20_000), "the newest row is answered");
    assert_eq!(s.done_until("a\u{1f}7").unwrap(), Some(now + 1_000));
    s.write((0..100).map(|i| Op::Done { key: format!("a\u{1f}n{i}"), expires_ms: now + 60_000 }).collect())
        .await
        .unwrap();
    s.folded().await;
    assert_eq!(s.file_done(&k).unwrap(), Some(now + 20_000), "the newest row reached the file last");
}

/// The log's file grows with every row appended, repeats of a key too (an order row is written again for each
/// event of its subject): it is rotated and folded by the rows it holds, not only by the distinct keys in memory.
#[tokio::test]
async fn a_key_written_again_and_again_still_rotates_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = State::open(dir.path()).unwrap();
    let now = now_ms();
    for time_ms in 0..2 {
        let ops =
            (0..50).map(|_| Op::Order { key: "a\u{1f}card-1".into(), time_ms, rank: 0, expires_ms: now + 60_000 });
        s.write(ops.collect()).await.unwrap();
    }
    for _ in 0..2000 {
        if !log::path(dir.path(), 1).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!log::path(dir.path(), 1).exists(), "100 rows of one key rotate the file (64 rows in tests)");
    assert_eq!(s.file_order(&digest("a\u{1f}card-1")).unwrap(), Some((1, 0, now + 60_000)), "folded");
}

/// A row is found by a lookup at every moment while it moves from the record log's memory into the file: a
/// reader that looks up every acknowledged key, over and over while writes freeze and fold generation after
/// generation (64 rows each in tests), never misses one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_never_misses_a_row_while_it_is_folded() {
    let dir = tempfile::tempdir().unwrap();
    let s = State::open(dir.path()).unwrap();
    let now = now_ms();
    let acked = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (s, acked) = (s.clone(), acked.clone());
        tokio::spawn(async move {
            let mut lookups = 0u64;
            while acked.load(std::sync::atomic::Ordering::Acquire) < 3_000 {
                let upto = acked.load(std::sync::atomic::Ordering::Acquire);
                for i in (0..upto).rev().take(200) {
                    let found = s.lookup_done(&format!("a\u{1f}{i}")).await.unwrap();
                    assert_eq!(found, Some(now + 60_000), "row {i} of {upto} acknowledged was missed");
                    lookups += 1;
                }
                tokio::task::yield_now().await;
            }
            lookups
        })
    };
    for chunk in 0..30 {
        let ops =
            (chunk * 100..chunk * 100 + 100).map(|i| Op::Done { key: format!("a\u{1f}{i}"), expires_ms: now + 60_000 });
        s.write(ops.collect()).await.unwrap();
        acked.store(chunk * 100 + 100, std::sync::atomic::Ordering::Release);
    }
    let lookups = reader.await.unwrap();
    assert!(lookups > 1_000, "the reader ran alongside the folds ({lookups} lookups)");
    s.folded().await;
    assert_eq!(writer::tree_rows(&s.db).unwrap(), 3_000);
}
