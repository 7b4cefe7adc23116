//! The sink's unit tests: group commit, the spool's durability and exactly-once move into
//! Delta, slots and orphans.

use super::*;

fn letter(i: i64) -> DeadLetter {
    DeadLetter {
        source: "http".into(),
        index: Some(i),
        partition: None,
        field: Some("ts".into()),
        reason: "bad".into(),
        raw: format!("{{\"i\":{i}}}"),
    }
}

#[tokio::test]
async fn concurrent_writers_share_commits_and_every_letter_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let sink = DeadLetterSink::new(storage.clone(), ["s".to_string()]);
    let writers = (0..64).map(|i| {
        let sink = sink.clone();
        tokio::spawn(async move { sink.write("s", vec![letter(i)]).await })
    });
    for w in futures::future::join_all(writers).await {
        w.unwrap().unwrap();
    }
    assert_eq!(stored_indexes(&sink).await, (0..64).collect::<Vec<_>>());
    let table = crate::delta::open(storage.dead_letter_table("s"))
        .await
        .unwrap();
    let commits = table.version().unwrap() + 1;
    assert!(
        commits < 64,
        "64 writers made {commits} commits: no group commit"
    );
}

fn spooled_sink(storage: &Storage, path: &Path) -> DeadLetterSink {
    // Built by hand, and marked as flushing, so that no background flush runs:
    // each step is the test's own.
    let sink = DeadLetterSink {
        spool: Some(Arc::new(Spool::open(path).unwrap().unwrap())),
        ..DeadLetterSink::new(storage.clone(), ["s".to_string()])
    };
    sink.queues["s"].flushing.store(true, Ordering::SeqCst);
    sink
}

async fn stored_count(sink: &DeadLetterSink) -> usize {
    sink.read_all("s").await.unwrap().len()
}

/// The request indexes of every letter in the table, sorted.
async fn stored_indexes(sink: &DeadLetterSink) -> Vec<i64> {
    let mut indexes: Vec<i64> = sink
        .read_all("s")
        .await
        .unwrap()
        .iter()
        .filter_map(|l| l.index)
        .collect();
    indexes.sort();
    indexes
}

#[tokio::test]
async fn spooled_letters_are_durable_before_delta_and_reach_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&dir.path().join("root")).unwrap();
    let path = dir.path().join("spool.redb");
    let sink = spooled_sink(&storage, &path);
    let writers = (0..32).map(|i| {
        let sink = sink.clone();
        tokio::spawn(async move { sink.write("s", vec![letter(i)]).await })
    });
    for w in futures::future::join_all(writers).await {
        w.unwrap().unwrap();
    }
    assert_eq!(sink.spooled("s").await.unwrap(), 32);
    assert_eq!(stored_count(&sink).await, 0, "acknowledged before Delta");
    sink.flush("s").await.unwrap();
    assert_eq!(sink.spooled("s").await.unwrap(), 0);
    assert_eq!(stored_indexes(&sink).await, (0..32).collect::<Vec<_>>());
    let table = crate::delta::open(storage.dead_letter_table("s"))
        .await
        .unwrap();
    assert_eq!(table.version(), Some(0), "32 letters, one Delta commit");

    // Numbers go on after a reopen: new letters are not taken for committed ones.
    drop(sink);
    let sink = spooled_sink(&storage, &path);
    sink.write("s", vec![letter(99)]).await.unwrap();
    sink.flush("s").await.unwrap();
    assert_eq!(stored_count(&sink).await, 33);
}

#[tokio::test]
async fn a_crash_between_the_delta_commit_and_the_spool_cleanup_adds_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&dir.path().join("root")).unwrap();
    let path = dir.path().join("spool.redb");
    let sink = spooled_sink(&storage, &path);
    sink.write("s", (0..5).map(letter).collect()).await.unwrap();
    // What a flush does, up to the Delta commit: the crash comes before the spool
    // forgets the letters.
    let spool = sink.spool.clone().unwrap();
    let batch = spool.oldest("s", 100, 1 << 20).await.unwrap();
    let letters: Vec<StoredLetter> = batch.iter().map(|(_, l)| l.clone()).collect();
    let mut table = None;
    sink.commit_with(
        "s",
        &letters,
        SaveMode::Append,
        &mut table,
        Some((spool.app_id(), batch.last().unwrap().0 as i64)),
    )
    .await
    .unwrap();
    drop((spool, sink));

    let sink = spooled_sink(&storage, &path);
    assert_eq!(sink.spooled("s").await.unwrap(), 5);
    sink.write("s", vec![letter(5)]).await.unwrap();
    sink.flush("s").await.unwrap();
    assert_eq!(stored_indexes(&sink).await, (0..6).collect::<Vec<_>>());
    assert_eq!(sink.spooled("s").await.unwrap(), 0);
}

#[tokio::test]
async fn a_spool_made_anew_is_not_confused_with_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&dir.path().join("root")).unwrap();
    let path = dir.path().join("spool.redb");
    let sink = spooled_sink(&storage, &path);
    sink.write("s", (0..3).map(letter).collect()).await.unwrap();
    sink.flush("s").await.unwrap();
    drop(sink);
    std::fs::remove_file(&path).unwrap();
    // Its numbers start at zero again, below what the table says was committed.
    let sink = spooled_sink(&storage, &path);
    sink.write("s", vec![letter(3)]).await.unwrap();
    sink.flush("s").await.unwrap();
    assert_eq!(stored_count(&sink).await, 4);
}

#[tokio::test]
async fn the_background_flush_moves_the_spool_into_delta() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&dir.path().join("root")).unwrap();
    let sink = DeadLetterSink::new(storage.clone(), ["s".to_string()])
        .with_spool(dir.path(), "test")
        .unwrap();
    sink.write("s", (0..10).map(letter).collect())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sink.spooled("s").await.unwrap() > 0 {
        assert!(std::time::Instant::now() < deadline, "never flushed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored_count(&sink).await, 10);
}

#[tokio::test]
async fn processes_of_one_role_get_their_own_spools_and_orphans_are_moved() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&dir.path().join("root")).unwrap();
    let spools = dir.path().join("spool");
    // A process that is gone left letters in its spool.
    let gone = spooled_sink(&storage, &spools.join("dead-letters-ingest-0.redb"));
    gone.write("s", (0..7).map(letter).collect()).await.unwrap();
    drop(gone);
    let sink = |role: &str| {
        DeadLetterSink::new(storage.clone(), ["s".to_string()]).with_spool(&spools, role)
    };
    let first = sink("batch").unwrap();
    let second = sink("batch").unwrap();
    assert_ne!(
        first.spool.as_ref().unwrap().path(),
        second.spool.as_ref().unwrap().path(),
        "two processes of a role, two spools"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stored_count(&first).await < 7 {
        assert!(
            std::time::Instant::now() < deadline,
            "the orphan was not moved"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored_count(&first).await, 7, "moved once");
}

#[tokio::test]
async fn a_stop_moves_the_spool_once_and_the_shutdown_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&dir.path().join("root")).unwrap();
    let (tasks, stop) = (crate::shutdown::Tasks::new(), Shutdown::new());
    let sink = DeadLetterSink::new(storage.clone(), ["s".to_string()])
        .supervised(tasks.requests(), stop.clone())
        .with_spool(dir.path(), "test")
        .unwrap();
    sink.write("s", (0..5).map(letter).collect()).await.unwrap();
    assert!(
        !tasks.requests().is_empty(),
        "the flush runs among the supervised tasks"
    );
    // The stop comes before the flush's gathering wait is over: the flush must not
    // wait it out, nor leave without moving the letters.
    stop.cancel();
    let problems = tasks.join(Duration::from_secs(30)).await;
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(sink.spooled("s").await.unwrap(), 0);
    assert_eq!(stored_count(&sink).await, 5);
}

/// A damaged spool file (here: not a redb file at all) must not stop every start of the
/// process: it is left in place and the next slot holds the letters, durable as ever.
#[tokio::test]
async fn a_damaged_spool_is_left_in_place_and_the_next_one_used() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&dir.path().join("root")).unwrap();
    let spools = dir.path().join("spool");
    std::fs::create_dir_all(&spools).unwrap();
    let damaged = spools.join("dead-letters-ingest-0.redb");
    std::fs::write(&damaged, vec![0x5a; 5_000]).unwrap();
    let sink = DeadLetterSink::new(storage.clone(), ["s".to_string()])
        .with_spool(&spools, "ingest")
        .unwrap();
    let own = sink.spool.as_ref().unwrap().path().to_path_buf();
    assert_eq!(own, spools.join("dead-letters-ingest-1.redb"));
    assert_eq!(
        std::fs::read(&damaged).unwrap(),
        vec![0x5a; 5_000],
        "left as it was"
    );
    sink.write("s", (0..3).map(letter).collect()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stored_count(&sink).await < 3 {
        assert!(std::time::Instant::now() < deadline, "never flushed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
