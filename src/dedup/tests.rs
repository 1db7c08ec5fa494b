//! Tests of the idempotency index against a real `state.redb` in a temporary directory.

use super::*;

fn far() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

const TTL: Duration = Duration::from_secs(10);

#[tokio::test]
async fn queued_records_are_capped_and_every_slot_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = Dedup::new(State::open(dir.path()).unwrap(), None);
    // More completions than the cap: each slot is returned once its record is written, so none waits forever.
    let all = async {
        for i in 0..MAX_PENDING_RECORDS + 100 {
            let Claim::New(g) = d.claim("s", &i.to_string(), TTL, far()).await else { panic!("claim {i}") };
            g.complete(Duration::from_secs(60), drop).await;
        }
        d.flush().await;
    };
    tokio::time::timeout(Duration::from_secs(60), all).await.expect("no completion waits for ever");
    assert_eq!(d.inner.pending.available_permits(), MAX_PENDING_RECORDS);
    assert!(matches!(d.claim("s", "0", TTL, far()).await, Claim::Duplicate));
}

#[tokio::test]
async fn second_claim_is_a_duplicate_until_the_window_ends_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let d = Dedup::new(State::open(dir.path()).unwrap(), None);
    let Claim::New(g) = d.claim("s", "a", TTL, far()).await else { panic!("first claim") };
    let (tx, rx) = tokio::sync::oneshot::channel();
    g.complete(Duration::from_millis(300), move |f| {
        let _ = tx.send(f);
    })
    .await;
    assert!(matches!(d.claim("s", "a", TTL, far()).await, Claim::Duplicate));
    assert_eq!(rx.await.unwrap(), RecordFailures::default());
    assert!(matches!(d.claim("s", "a", TTL, far()).await, Claim::Duplicate));
    assert!(matches!(d.claim("other", "a", TTL, far()).await, Claim::New(_)));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(matches!(d.claim("s", "a", TTL, far()).await, Claim::New(_)));
    let Claim::New(g) = d.claim("s", "b", TTL, far()).await else { panic!("claim b") };
    g.complete(Duration::from_secs(60), drop).await;
    drop(d);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let d = Dedup::new(State::open(dir.path()).unwrap(), None);
    assert!(matches!(d.claim("s", "b", TTL, far()).await, Claim::Duplicate), "survives a restart");
}

#[tokio::test]
async fn a_completed_id_is_never_admitted_again_and_flush_makes_it_durable() {
    let dir = tempfile::tempdir().unwrap();
    let d = Dedup::new(State::open(dir.path()).unwrap(), None);
    // `complete` does not wait for the commit; an identical delivery right after it waits for the commit and
    // is a duplicate, never admitted a second time.
    let mut claims = Vec::new();
    for i in 0..200 {
        let d = d.clone();
        claims.push(tokio::spawn(async move {
            let id = format!("e{i}");
            let Claim::New(g) = d.claim("s", &id, TTL, far()).await else { return false };
            g.complete(Duration::from_secs(60), drop).await;
            matches!(d.claim("s", &id, TTL, far()).await, Claim::Duplicate)
        }));
    }
    for c in claims {
        assert!(c.await.unwrap(), "a completed id was admitted again");
    }
    let Claim::New(g) = d.claim("s", "last", TTL, far()).await else { panic!("claim last") };
    g.complete(Duration::from_secs(60), drop).await;
    d.flush().await;
    // After flush every record is committed: readable from the file by another handle, and after a restart.
    assert!(d.inner.state.done_until(&key("s", "last")).unwrap().is_some());
    drop(d);
    let d = Dedup::new(State::open(dir.path()).unwrap(), None);
    assert!(matches!(d.claim("s", "last", TTL, far()).await, Claim::Duplicate), "flushed record survives");
    assert!(matches!(d.claim("s", "e7", TTL, far()).await, Claim::Duplicate));
}

fn index_reads(d: &Dedup) -> usize {
    d.inner.index_reads.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn retries_of_committed_records_are_answered_without_reading_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let d = Dedup::new(State::open(dir.path()).unwrap(), None);
    let Claim::New(g) = d.claim("s", "a", TTL, far()).await else { panic!("first claim") };
    g.complete(Duration::from_millis(400), drop).await;
    d.flush().await;
    let reads = index_reads(&d);
    for _ in 0..100 {
        assert!(matches!(d.claim("s", "a", TTL, far()).await, Claim::Duplicate));
    }
    assert_eq!(index_reads(&d), reads, "a committed record is a hit in memory");
    // Another source's id of the same value is not that record.
    assert!(matches!(d.claim("other", "a", TTL, far()).await, Claim::New(_)));
    // The window ends for the memory as for the file: the id is admitted again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(matches!(d.claim("s", "a", TTL, far()).await, Claim::New(_)));
    // After a restart the record is read from the file once, then answered from memory.
    let Claim::New(g) = d.claim("s", "b", TTL, far()).await else { panic!("claim b") };
    g.complete(Duration::from_secs(60), drop).await;
    d.flush().await;
    drop(d);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let d = Dedup::new(State::open(dir.path()).unwrap(), None);
    assert!(matches!(d.claim("s", "b", TTL, far()).await, Claim::Duplicate));
    assert!(matches!(d.claim("s", "b", TTL, far()).await, Claim::Duplicate));
    assert_eq!(index_reads(&d), 1);
}

#[tokio::test]
async fn a_failed_store_leaves_nothing_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let d = Dedup::new(State::open(dir.path()).unwrap(), None);
    let Claim::New(g) = d.claim("s", "a", TTL, far()).await else { panic!("first claim") };
    drop(g);
    assert_eq!(d.inner.recent.held(), 0);
    assert!(matches!(d.claim("s", "a", TTL, far()).await, Claim::New(_)), "the retry is admitted");
}

#[tokio::test]
async fn waiters_follow_the_first_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let d = Dedup::new(State::open(dir.path()).unwrap(), None);
    let Claim::New(g) = d.claim("s", "a", TTL, far()).await else { panic!("first claim") };
    let d2 = d.clone();
    let waiter = tokio::spawn(async move { matches!(d2.claim("s", "a", TTL, far()).await, Claim::New(_)) });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(g); // the first store failed: the waiter gets the claim
    assert!(waiter.await.unwrap());
    let soon = Instant::now() + Duration::from_millis(20);
    let Claim::New(g) = d.claim("s", "b", TTL, far()).await else { panic!("claim b") };
    assert!(matches!(d.claim("s", "b", TTL, soon).await, Claim::Busy));
    let d3 = d.clone();
    let waiter = tokio::spawn(async move { matches!(d3.claim("s", "b", TTL, far()).await, Claim::Duplicate) });
    tokio::time::sleep(Duration::from_millis(20)).await;
    g.complete(Duration::from_secs(60), drop).await;
    assert!(waiter.await.unwrap(), "a waiter sees the first one's success as a duplicate");
}
