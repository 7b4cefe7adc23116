//! The embedded log passes the shared log suite, and keeps its data across reopen.

use tributary_core::log::EventLog;
use tributary_ingest::log::{EmbeddedLog, conformance};

#[tokio::test]
async fn embedded_log_passes_the_shared_suite() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), &[("s".into(), 2)]).unwrap();
    conformance::run_all(&log).await;
}

#[tokio::test]
async fn embedded_log_survives_reopen_with_monotonic_clock() {
    let dir = tempfile::tempdir().unwrap();
    let last_ts = {
        let log = EmbeddedLog::open(dir.path(), &[("s".into(), 1)]).unwrap();
        let ack = log.append("s", 0, vec![b"{}".to_vec(); 3]).await.unwrap();
        log.commit_position("c", "s", 0, 2).await.unwrap();
        ack.ingest_ts
    };
    let log = EmbeddedLog::open(dir.path(), &[("s".into(), 1)]).unwrap();
    assert_eq!(log.end_offset("s", 0).await.unwrap(), 3);
    assert_eq!(log.position("c", "s", 0).await.unwrap(), Some(2));
    let ack = log.append("s", 0, vec![b"{}".to_vec()]).await.unwrap();
    assert_eq!(ack.first_offset, 3);
    assert!(ack.ingest_ts >= last_ts);
}

#[tokio::test]
async fn second_open_of_the_same_log_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedLog::open(dir.path(), &[("s".into(), 1)]).unwrap();
    let err = EmbeddedLog::open(dir.path(), &[("s".into(), 1)])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("another tributary process"), "{err}");
}

#[tokio::test]
async fn every_commit_wakes_a_reader_waiting_on_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), &[("s".into(), 1)]).unwrap();
    let mut appended = log
        .appended()
        .expect("the embedded log signals its appends");
    let before = *appended.borrow_and_update();
    log.append("s", 0, vec![b"{}".to_vec()]).await.unwrap();
    // The append returned after the commit, so the signal is already there.
    assert!(appended.has_changed().unwrap());
    assert_ne!(*appended.borrow_and_update(), before);
    // A reader that waits is woken by the next commit.
    let waiter = tokio::spawn(async move { appended.changed().await.is_ok() });
    log.append("s", 0, vec![b"{}".to_vec()]).await.unwrap();
    let woken = tokio::time::timeout(std::time::Duration::from_secs(30), waiter).await;
    assert!(woken.expect("woken").unwrap());
}

#[tokio::test]
async fn a_page_cache_smaller_than_the_log_reads_every_record_back() {
    let dir = tempfile::tempdir().unwrap();
    // 1 MiB of cache under about 6 MB of records.
    let log = EmbeddedLog::open_with_cache(dir.path(), &[("s".into(), 1)], 1 << 20).unwrap();
    let record = |i: usize| format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(280)).into_bytes();
    for chunk in (0..20_000).collect::<Vec<_>>().chunks(1_000) {
        log.append("s", 0, chunk.iter().map(|i| record(*i)).collect())
            .await
            .unwrap();
    }
    let mut from = 0;
    let mut n = 0;
    loop {
        let batch = log.read("s", 0, from, 5_000).await.unwrap();
        if batch.records.is_empty() {
            break;
        }
        for r in &batch.records {
            assert_eq!(r.payload, record(n), "record {n}");
            n += 1;
        }
        from = batch.next_offset;
    }
    assert_eq!(n, 20_000);
}

#[tokio::test]
async fn truncation_removes_the_prefix_ingested_before_the_bound_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), &[("s".into(), 1)]).unwrap();
    let mut stamps = Vec::new();
    for _ in 0..5 {
        let ack = log.append("s", 0, vec![b"{}".to_vec(); 10]).await.unwrap();
        stamps.push(ack.ingest_ts);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    // Below offset 40, ingested before the third append: the first two appends go.
    assert_eq!(log.truncate("s", 0, 40, stamps[2]).await.unwrap(), 20);
    assert_eq!(log.first_offset("s", 0).await.unwrap(), 20);
    // Again with the same bound: nothing left to remove.
    assert_eq!(log.truncate("s", 0, 40, stamps[2]).await.unwrap(), 0);
    // Everything ingested, but only below offset 45, and the newest record always stays.
    assert_eq!(log.truncate("s", 0, 45, i64::MAX).await.unwrap(), 25);
    assert_eq!(log.truncate("s", 0, u64::MAX, i64::MAX).await.unwrap(), 4);
    assert_eq!(log.first_offset("s", 0).await.unwrap(), 49);
    assert_eq!(log.end_offset("s", 0).await.unwrap(), 50);
    let ack = log.append("s", 0, vec![b"{}".to_vec()]).await.unwrap();
    assert_eq!(ack.first_offset, 50);
}

#[tokio::test]
async fn a_request_larger_than_a_chunk_reads_back_from_any_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), &[("s".into(), 1)]).unwrap();
    // 3 MB in one request: several chunks (1 MiB each), then two small requests.
    let record =
        |i: usize| format!("{{\"i\":{i},\"pad\":\"{}\"}}", "y".repeat(i % 700)).into_bytes();
    let ack = log
        .append("s", 0, (0..9_000).map(record).collect())
        .await
        .unwrap();
    assert_eq!((ack.first_offset, ack.count), (0, 9_000));
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    log.append("s", 0, (9_000..9_003).map(record).collect())
        .await
        .unwrap();
    log.append("s", 0, vec![record(9_003)]).await.unwrap();
    assert_eq!(log.end_offset("s", 0).await.unwrap(), 9_004);
    for (from, max) in [
        (0, 9_004),
        (1, 3),
        (2_999, 5_000),
        (8_999, 2),
        (9_001, 10),
        (9_003, 1),
    ] {
        let batch = log.read("s", 0, from, max).await.unwrap();
        let want: Vec<u64> = (from..(from + max as u64).min(9_004)).collect();
        let got: Vec<u64> = batch.records.iter().map(|r| r.offset).collect();
        assert_eq!(got, want, "read({from}, {max})");
        for r in &batch.records {
            assert_eq!(r.payload, record(r.offset as usize), "record {}", r.offset);
        }
        assert_eq!(batch.next_offset, *want.last().unwrap() + 1);
        assert_eq!(batch.expired, None);
    }
    assert!(
        log.read("s", 0, 9_004, 10)
            .await
            .unwrap()
            .records
            .is_empty()
    );
    // Truncation inside the big request keeps the rest readable at the same offsets.
    assert_eq!(log.truncate("s", 0, 4_321, i64::MAX).await.unwrap(), 4_321);
    assert_eq!(log.first_offset("s", 0).await.unwrap(), 4_321);
    let after = log.read("s", 0, 4_000, 2).await.unwrap();
    assert_eq!(
        after.expired,
        Some(4_000..4_321),
        "a read below the new start says so"
    );
    assert_eq!(after.records[0].offset, 4_321);
    assert_eq!(after.records[0].payload, record(4_321));
    let stamp = after.records[0].ingest_ts;
    assert_eq!(
        log.offset_for_ingest_ts("s", 0, stamp).await.unwrap(),
        4_321
    );
    assert_eq!(
        log.offset_for_ingest_ts("s", 0, stamp + 1).await.unwrap(),
        9_000
    );
}

#[tokio::test]
async fn a_log_written_one_value_per_record_opens_with_every_record() {
    use redb::{Database, TableDefinition};
    let dir = tempfile::tempdir().unwrap();
    let old: Vec<(u64, i64, String)> = (0..2_500u64)
        .map(|o| (o, 1_000 + (o / 1_000) as i64, format!("{{\"o\":{o}}}")))
        .collect();
    {
        // The first layout: table `p/<stream>/<partition>`, value = stamp (8 bytes, LE) + record.
        let db = Database::create(dir.path().join("events.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: TableDefinition<u64, &[u8]> = TableDefinition::new("p/s/1");
            let mut t = txn.open_table(def).unwrap();
            for (o, ts, r) in &old[500..] {
                let mut v = ts.to_le_bytes().to_vec();
                v.extend_from_slice(r.as_bytes());
                t.insert(*o, v.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let log = EmbeddedLog::open(dir.path(), &[("s".into(), 2)]).unwrap();
    assert_eq!(
        log.first_offset("s", 1).await.unwrap(),
        500,
        "retention's removals stay removed"
    );
    assert_eq!(log.end_offset("s", 1).await.unwrap(), 2_500);
    assert_eq!(log.end_offset("s", 0).await.unwrap(), 0);
    let back = log.read("s", 1, 0, 10_000).await.unwrap();
    assert_eq!(back.expired, Some(0..500));
    let got: Vec<(u64, i64, String)> = back
        .records
        .iter()
        .map(|r| {
            (
                r.offset,
                r.ingest_ts,
                String::from_utf8(r.payload.clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(got, old[500..].to_vec());
    // The clock continues from the newest stamp, and appends continue the offsets.
    let ack = log.append("s", 1, vec![b"{}".to_vec()]).await.unwrap();
    assert_eq!(ack.first_offset, 2_500);
    assert!(ack.ingest_ts >= 1_002);
    drop(log);
    // Opened again: nothing is moved twice.
    let log = EmbeddedLog::open(dir.path(), &[("s".into(), 2)]).unwrap();
    assert_eq!(log.end_offset("s", 1).await.unwrap(), 2_501);
    assert_eq!(
        log.read("s", 1, 0, 10_000).await.unwrap().records.len(),
        2_001
    );
}
