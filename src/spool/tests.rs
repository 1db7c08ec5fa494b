use std::sync::Arc;

use bytes::Bytes;

use super::*;

fn event(n: u32) -> Event {
    Event {
        source: Arc::from("instamed"),
        id: format!("tx{n}:payment.approved"),
        kind: "payment.approved".into(),
        subject: Some(format!("tx{n}")),
        time: None,
        rank: Some(1),
        received_at: chrono::Utc::now(),
        content_type: "application/json".into(),
        body: Bytes::from(format!("{{\"PatientName\":\"MARKER-{n}\"}}")),
        out_of_order: false,
    }
}

fn cipher() -> Option<Cipher> {
    Some(Cipher::new(&[3u8; 32]))
}

fn drain_all(spool: &Spool) -> Vec<String> {
    let mut ids = Vec::new();
    while let Some((seq, e)) = spool.front().unwrap() {
        ids.push(e.id);
        spool.advance(seq).unwrap();
    }
    ids
}

fn segment_bytes(dir: &Path) -> Vec<u8> {
    segment::list(dir).unwrap().iter().flat_map(|id| std::fs::read(segment::path(dir, *id)).unwrap()).collect()
}

#[tokio::test]
async fn appends_survive_reopen_in_order_and_drained_records_do_not_return() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), cipher(), 1 << 20).unwrap();
    for n in 0..5 {
        spool.append(&event(n)).await.unwrap();
    }
    let (seq, first) = spool.front().unwrap().unwrap();
    assert_eq!(first.id, "tx0:payment.approved");
    spool.advance(seq).unwrap();
    drop(spool);
    // Without a cursor write since, the drained record may come back (bounded by CURSOR_EVERY); never a loss.
    let (spool, report) = Spool::open(dir.path(), cipher(), 1 << 20).unwrap();
    assert_eq!(report, Recovery::default());
    let ids = drain_all(&spool);
    assert_eq!(ids.last().map(String::as_str), Some("tx4:payment.approved"));
    assert!(ids.len() == 4 || ids.len() == 5);
    assert!(segment::list(dir.path()).unwrap().is_empty(), "an empty spool keeps no segment");
    let (spool, _) = Spool::open(dir.path(), cipher(), 1 << 20).unwrap();
    assert!(spool.is_empty(), "the cursor was written when the spool ran empty");
    assert_eq!(spool.append(&event(9)).await.unwrap(), 5, "seq continues after the cursor");
}

#[tokio::test]
async fn payloads_are_encrypted_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), cipher(), 1 << 20).unwrap();
    spool.append(&event(1)).await.unwrap();
    let bytes = segment_bytes(dir.path());
    assert!(!bytes.windows(8).any(|w| w == b"MARKER-1"), "plaintext on disk");
    drop(spool);
    let e = Spool::open(dir.path(), Some(Cipher::new(&[4u8; 32])), 1 << 20).err().unwrap().to_string();
    assert!(e.contains("spool_key"), "a wrong key is an error, never a truncation: {e}");
    assert_eq!(Spool::open(dir.path(), cipher(), 1 << 20).unwrap().0.len(), 1);
}

#[tokio::test]
async fn torn_tail_is_cut_and_corrupt_middle_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), None, 1 << 20).unwrap();
    for n in 0..3 {
        spool.append(&event(n)).await.unwrap();
    }
    drop(spool);
    let id = segment::list(dir.path()).unwrap()[0];
    let path = segment::path(dir.path(), id);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 5).unwrap();
    let (spool, report) = Spool::open(dir.path(), None, 1 << 20).unwrap();
    assert!(report.truncated_bytes > 0 && report.quarantined.is_empty(), "{report:?}");
    assert_eq!(spool.len(), 2);
    spool.append(&event(3)).await.unwrap();
    drop(spool);
    // Flip a byte inside the first record of the first segment.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[format::HEADER_LEN as usize + 20] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let (spool, report) = Spool::open(dir.path(), None, 1 << 20).unwrap();
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    assert!(report.quarantined[0].exists());
    assert_eq!(drain_all(&spool), ["tx1:payment.approved", "tx3:payment.approved"]);
}

#[tokio::test]
async fn a_full_spool_refuses_and_recovers_after_draining() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), cipher(), 4096).unwrap();
    let mut stored = 0;
    loop {
        match spool.append(&event(stored)).await {
            Ok(_) => stored += 1,
            Err(SpoolError::Full) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(stored > 10);
    assert_eq!(drain_all(&spool).len(), stored as usize);
    spool.append(&event(99)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs_and_keep_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), cipher(), 1 << 24).unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let s = spool.clone();
            tokio::spawn(async move { s.append(&event(n)).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut seen = drain_all(&spool);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_waiting_together_share_one_write_and_one_fsync_and_each_is_answered_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), cipher(), 1 << 24).unwrap();
    spool.append(&event(1000)).await.unwrap(); // the segment exists: its creation is not counted below
    let (writes, commits) = (spool.inner.writes.load(Ordering::Relaxed), spool.inner.commits.load(Ordering::Relaxed));
    // The writer is held (as by a slow disk) while 200 appends queue behind it.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let holder = {
        let s = spool.clone();
        let (locked, wait) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            let _st = s.state();
            locked.send(()).unwrap();
            held.recv().unwrap();
        });
        wait.recv().unwrap();
        h
    };
    let appends = (0..200).map(|n| {
        let s = spool.clone();
        async move {
            let seq = s.append(&event(n)).await.unwrap();
            // Answered only once its record is durable: every seq below `synced` is fsynced.
            assert!(s.inner.synced.load(Ordering::Acquire) > seq, "record {seq} answered before its fsync");
            seq
        }
    });
    let mut all = Box::pin(futures_util::future::join_all(appends));
    // One poll sends all 200 (the queue has room); none can be answered while the writer is held.
    assert!(tokio::time::timeout(std::time::Duration::from_millis(200), &mut all).await.is_err());
    release.send(()).unwrap();
    holder.join().unwrap();
    let mut seqs = all.await;
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    // At most two batches: what the writer took before it was held, and everything queued behind it.
    let writes = spool.inner.writes.load(Ordering::Relaxed) - writes;
    let commits = spool.inner.commits.load(Ordering::Relaxed) - commits;
    assert!(writes <= 2 && commits <= 2, "200 appends took {writes} writes and {commits} fsyncs");
    drop(spool);
    let (spool, report) = Spool::open(dir.path(), cipher(), 1 << 24).unwrap();
    assert_eq!(report, Recovery::default());
    let mut ids = drain_all(&spool);
    ids.sort();
    let mut want: Vec<String> = (0..200).chain([1000]).map(|n| event(n).id).collect();
    want.sort();
    assert_eq!(ids, want);
}

#[tokio::test]
async fn a_batch_crossing_a_segment_boundary_keeps_every_record_and_its_order() {
    let dir = tempfile::tempdir().unwrap();
    // 4,096-byte segments: a batch of 60 records (about 190 bytes each) spans three of them; 8,000 bytes in all.
    let (spool, _) = Spool::open_sized(dir.path(), cipher(), 8000, 4096).unwrap();
    let plains: Vec<Vec<u8>> = (0..60).map(|n| format::encode(&event(n))).collect();
    let refs: Vec<&[u8]> = plains.iter().map(Vec::as_slice).collect();
    let written = spool.inner.write_batch(&refs, &mut Vec::new());
    spool.inner.sync_written().unwrap();
    let ok = written.iter().filter(|r| r.is_ok()).count();
    assert!(ok > 10 && written[ok..].iter().all(|r| matches!(r, Err(SpoolError::Full))), "{written:?}");
    assert_eq!(segment::list(dir.path()).unwrap().len(), 2, "the batch rotated segments");
    drop(spool);
    let (spool, report) = Spool::open(dir.path(), cipher(), 8000).unwrap();
    assert_eq!(report, Recovery::default());
    let want: Vec<String> = (0..ok as u32).map(|n| event(n).id).collect();
    assert_eq!(drain_all(&spool), want);
}

#[tokio::test]
async fn an_unwritable_directory_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let (spool, _) = Spool::open(&spool_dir, None, 1 << 20).unwrap();
    std::fs::remove_dir_all(&spool_dir).unwrap();
    std::fs::write(&spool_dir, b"not a directory").unwrap();
    assert!(matches!(spool.append(&event(1)).await, Err(SpoolError::Io(_))));
    std::fs::remove_file(&spool_dir).unwrap();
    std::fs::create_dir(&spool_dir).unwrap();
    spool.append(&event(2)).await.unwrap();
}

#[tokio::test]
async fn a_segment_left_empty_by_a_crash_does_not_block_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), None, 1 << 20).unwrap();
    spool.append(&event(1)).await.unwrap();
    assert_eq!(drain_all(&spool).len(), 1);
    drop(spool);
    // A crash right after the next segment was created, before its first record.
    segment::create(dir.path(), 1, false).unwrap();
    let (spool, _) = Spool::open(dir.path(), None, 1 << 20).unwrap();
    assert!(spool.is_empty());
    assert_eq!(spool.append(&event(2)).await.unwrap(), 1);
    assert_eq!(drain_all(&spool), ["tx2:payment.approved"]);
}

#[tokio::test]
async fn a_record_whose_append_was_cancelled_before_its_fsync_is_flushed_by_the_drainer() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), None, 1 << 20).unwrap();
    let written = spool.inner.write_batch(&[&format::encode(&event(1))], &mut Vec::new()); // not yet fsynced
    assert!(matches!(written[..], [Ok(0)]));
    assert!(spool.front().unwrap().is_none() && !spool.is_empty());
    spool.flush().await.unwrap();
    assert_eq!(drain_all(&spool), ["tx1:payment.approved"]);
}

/// A thread holding the spool's lock as long as a slow fsync under it would (a rotation, a cursor write).
fn hold_lock(spool: &Spool, hold: std::time::Duration) -> std::thread::JoinHandle<()> {
    let s = spool.clone();
    let (held, wait) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let _st = s.state();
        held.send(()).unwrap();
        std::thread::sleep(hold);
    });
    wait.recv().unwrap();
    holder
}

/// Counts 10 ms ticks of a task sharing the runtime.
fn ticker() -> Arc<std::sync::atomic::AtomicU32> {
    let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let t = ticks.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            t.fetch_add(1, Ordering::Relaxed);
        }
    });
    ticks
}

#[tokio::test(flavor = "current_thread")]
async fn request_path_checks_do_not_wait_while_the_spool_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), None, 1 << 20).unwrap();
    spool.append(&event(1)).await.unwrap();
    let ticks = ticker();
    let holder = hold_lock(&spool, std::time::Duration::from_secs(2));
    let started = tokio::time::Instant::now();
    let checks = (spool.is_empty(), spool.len(), spool.bytes() > 0, spool.can_take());
    let took = started.elapsed();
    assert_eq!(checks, (false, 1, true, true));
    assert!(took < std::time::Duration::from_millis(500), "the request path waited {took:?} for the spool lock");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(ticks.load(Ordering::Relaxed) >= 5, "the runtime's other tasks stalled");
    holder.join().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn the_drainer_reads_records_off_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), None, 1 << 20).unwrap();
    spool.append(&event(1)).await.unwrap();
    let ticks = ticker();
    let holder = hold_lock(&spool, std::time::Duration::from_secs(1));
    let (_, e) = spool.peek().await.unwrap().unwrap();
    assert_eq!(e.id, "tx1:payment.approved");
    assert!(ticks.load(Ordering::Relaxed) >= 20, "the runtime stalled while the read waited");
    holder.join().unwrap();
}

/// Flips a byte inside the payload of record `index` (0-based) of the first segment.
fn corrupt_record(dir: &Path, index: usize) {
    let path = segment::path(dir, segment::list(dir).unwrap()[0]);
    let mut bytes = std::fs::read(&path).unwrap();
    let mut at = format::HEADER_LEN as usize;
    for _ in 0..index {
        at += 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    bytes[at + format::FRAME_LEN as usize + 4] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
}

#[tokio::test]
async fn an_unreadable_record_met_while_draining_is_quarantined_and_the_rest_drains() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), cipher(), 1 << 20).unwrap();
    for n in 0..3 {
        spool.append(&event(n)).await.unwrap();
    }
    corrupt_record(dir.path(), 1);
    let (seq, first) = spool.front().unwrap().unwrap();
    assert_eq!(first.id, "tx0:payment.approved");
    spool.advance(seq).unwrap();
    let Err(SpoolError::Corrupt(bad)) = spool.peek().await else { panic!("the flipped record read back") };
    assert_eq!(bad, 1);
    let file = spool.quarantine_front(bad).unwrap().expect("quarantined");
    assert!(file.starts_with(dir.path().join("quarantine")) && file.exists());
    assert_eq!(spool.quarantine_front(bad).unwrap(), None, "no longer the front");
    assert_eq!(segment::read_cursor(dir.path()), 2, "the cursor is past the quarantined record at once");
    assert_eq!(drain_all(&spool), ["tx2:payment.approved"]);
    drop(spool);
    let (spool, report) = Spool::open(dir.path(), cipher(), 1 << 20).unwrap();
    assert!(spool.is_empty() && report == Recovery::default(), "{report:?}");
}

#[tokio::test]
async fn a_record_whose_bytes_were_cut_is_unreadable_not_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), None, 1 << 20).unwrap();
    spool.append(&event(1)).await.unwrap();
    let path = segment::path(dir.path(), segment::list(dir.path()).unwrap()[0]);
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(format::HEADER_LEN + 10).unwrap();
    assert!(matches!(spool.front(), Err(SpoolError::Corrupt(0))));
    assert!(spool.quarantine_front(0).unwrap().is_some());
    assert!(spool.is_empty());
    spool.append(&event(2)).await.unwrap();
    assert_eq!(drain_all(&spool), ["tx2:payment.approved"]);
}

#[tokio::test]
async fn the_drainer_never_waits_on_the_writer_s_lock_on_a_runtime_thread() {
    // The writer holds the state lock across a segment's write and, at a rotation, its fsyncs; a drainer still
    // replaying must not block a runtime thread on it (here the only one).
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&dir.path().join("spool"), cipher(), 1 << 20).unwrap();
    let (parked, _) = Spool::open(&dir.path().join("parked"), cipher(), 1 << 20).unwrap();
    spool.append(&event(1)).await.unwrap();
    let settings = crate::publish::Settings {
        urls: vec!["amqp://guest:guest@127.0.0.1:1/%2f".into()],
        exchange: "hookgate-unit".into(),
        declare_exchange: false,
        alternate_exchange: None,
        publish_timeout: std::time::Duration::from_millis(100),
        channels: 1,
    };
    let (metrics, stop) = (crate::metrics::Metrics::new(), tokio_util::sync::CancellationToken::new());
    let (publisher, supervisor) = crate::publish::Publisher::start(settings, metrics.clone(), stop.clone());
    let replayed = Arc::new(AtomicBool::new(false));
    let drainer = Drainer { spool: spool.clone(), parked, publisher, metrics, replayed };
    let (held, release) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
    let inner = spool.inner.clone();
    let writer = std::thread::spawn(move || {
        let _st = inner.state();
        held.0.send(()).unwrap();
        let _ = release.1.recv_timeout(std::time::Duration::from_secs(1));
    });
    held.1.recv().unwrap();
    let drain = tokio::spawn(drainer.run(stop.clone(), false));
    let started = tokio::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let waited = started.elapsed();
    let _ = release.0.send(());
    writer.join().unwrap();
    stop.cancel();
    drain.await.unwrap();
    supervisor.await.unwrap();
    assert!(waited < std::time::Duration::from_millis(500), "the runtime thread was blocked for {waited:?}");
}
