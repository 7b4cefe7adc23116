//! The archiver and the cutoff rule against a real embedded log and real Delta tables:
//! a batch run covers exactly the events below its cutoff, and the archived positions
//! come from the master table.

use std::sync::Arc;
use std::time::Duration;

use tributary_batch::archiver::{archived_positions, open_master};
use tributary_batch::{Batch, RunKind, views};
use tributary_core::config::{self, BatchConfig};
use tributary_core::dead_letter::DeadLetterSink;
use tributary_core::log::EventLog;
use tributary_core::pipeline::Pipeline;
use tributary_core::shutdown::Shutdown;
use tributary_core::storage::Storage;
use tributary_ingest::log::EmbeddedLog;

mod common;

use common::CLICKS as CONFIG;

fn quick_flush() -> BatchConfig {
    BatchConfig {
        archive_flush_ms: 20,
        archive_flush_records: 1000,
        schedule: None,
        ..BatchConfig::default()
    }
}

fn click(page: &str) -> Vec<u8> {
    format!("{{\"page\":\"{page}\",\"ts\":\"2026-01-01T00:30:00Z\"}}").into_bytes()
}

#[tokio::test]
async fn batch_run_covers_exactly_the_archived_events_below_its_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config::from_toml_str(CONFIG).unwrap();
    let pipeline = Pipeline::from_config(&cfg, &config::ConfigSource::EmbeddedDefault)
        .await
        .unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let log: Arc<dyn EventLog> =
        Arc::new(EmbeddedLog::open(&storage.log_dir(), &[("clicks".into(), 2)]).unwrap());
    let stream = pipeline.stream("clicks").unwrap().clone();

    // Nothing archived yet: the run's cutoff stays below the first event.
    log.append("clicks", 0, vec![click("a"), click("a")])
        .await
        .unwrap();
    log.append("clicks", 1, vec![click("b")]).await.unwrap();
    let batch = Arc::new(Batch::new(
        pipeline.clone(),
        storage.clone(),
        log.clone(),
        1,
    ));
    let (_, run) = batch
        .try_start(RunKind::Full, Arc::new(|_: &str, _: u64, _: u64| {}))
        .unwrap();
    let rec = run.await.unwrap();
    assert_eq!(
        rec.rows_in, 0,
        "unarchived events are not below the cutoff: {rec:?}"
    );
    let first = log.read("clicks", 0, 0, 1).await.unwrap().records[0].ingest_ts;
    assert!(rec.cutoff_micros.unwrap() <= first);

    // Archive, then run again: every event is covered and counted once.
    let shutdown = Shutdown::new();
    let sink = DeadLetterSink::new(storage.clone(), ["clicks".to_string()]);
    let archiver = tokio::spawn(tributary_batch::archiver::run_stream(
        quick_flush(),
        stream.clone(),
        storage.clone(),
        log.clone(),
        sink,
        shutdown.clone(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let master = open_master(&storage, "clicks").await.unwrap();
        if archived_positions(master.as_ref(), &stream).await.unwrap() == vec![2, 1] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "archiver did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_, run) = batch
        .try_start(RunKind::Full, Arc::new(|_: &str, _: u64, _: u64| {}))
        .unwrap();
    let rec = run.await.unwrap();
    assert_eq!(rec.rows_in, 3, "{rec:?}");
    let view = pipeline.view("per_page").unwrap();
    let stored = views::load(&storage, &view).await.unwrap().unwrap();
    assert_eq!(Some(stored.cutoff), rec.cutoff_micros);
    let rows: usize = stored.states.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 2, "one state row per page");

    // A run while another is in progress is refused.
    let (_, slow) = batch
        .try_start(RunKind::Full, Arc::new(|_: &str, _: u64, _: u64| {}))
        .unwrap();
    assert!(matches!(
        batch.try_start(RunKind::Full, Arc::new(|_: &str, _: u64, _: u64| {})),
        Err(tributary_batch::BatchError::RunInProgress)
    ));
    slow.await.unwrap();

    // Replaying the archiver from the table's positions adds nothing.
    shutdown.cancel();
    archiver.await.unwrap().unwrap();
    let shutdown = Shutdown::new();
    let again = tokio::spawn(tributary_batch::archiver::run_stream(
        quick_flush(),
        stream.clone(),
        storage.clone(),
        log.clone(),
        DeadLetterSink::new(storage.clone(), ["clicks".to_string()]),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.cancel();
    again.await.unwrap().unwrap();
    let (_, run) = batch
        .try_start(RunKind::Full, Arc::new(|_: &str, _: u64, _: u64| {}))
        .unwrap();
    assert_eq!(run.await.unwrap().rows_in, 3);
}

/// Archive until the master table holds `positions`.
async fn archived(
    storage: &Storage,
    stream: &tributary_core::schema::StreamSchema,
    positions: Vec<u64>,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let master = open_master(storage, &stream.name).await.unwrap();
        if archived_positions(master.as_ref(), stream).await.unwrap() == positions {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "archiver did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stored states of `per_page`, as sorted text rows.
async fn stored_rows(storage: &Storage, pipeline: &Pipeline) -> Vec<String> {
    let view = pipeline.view("per_page").unwrap();
    let stored = views::load(storage, &view).await.unwrap().unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&stored.states)
        .unwrap()
        .to_string();
    let mut rows: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("| "))
        .skip(1)
        .map(str::to_string)
        .collect();
    rows.sort();
    rows
}

async fn run(batch: &Arc<Batch>, kind: RunKind) -> (tributary_batch::RunRecord, Vec<String>) {
    let stages = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = stages.clone();
    let (_, run) = batch
        .try_start(
            kind,
            Arc::new(move |s: &str, _: u64, _: u64| seen.lock().unwrap().push(s.to_string())),
        )
        .unwrap();
    let rec = run.await.unwrap();
    let stages = stages.lock().unwrap().clone();
    (rec, stages)
}

/// A `clicks` pipeline on an embedded log, its archiver running, and a batch layer.
struct Rig {
    _dir: tempfile::TempDir,
    pipeline: Pipeline,
    storage: Storage,
    log: Arc<dyn EventLog>,
    stream: tributary_core::schema::StreamSchema,
    shutdown: Shutdown,
    archiver: tokio::task::JoinHandle<Result<(), tributary_batch::BatchError>>,
    batch: Arc<Batch>,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config::from_toml_str(CONFIG).unwrap();
    let pipeline = Pipeline::from_config(&cfg, &config::ConfigSource::EmbeddedDefault)
        .await
        .unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let log: Arc<dyn EventLog> =
        Arc::new(EmbeddedLog::open(&storage.log_dir(), &[("clicks".into(), 2)]).unwrap());
    let stream = pipeline.stream("clicks").unwrap().clone();
    let shutdown = Shutdown::new();
    let archiver = tokio::spawn(tributary_batch::archiver::run_stream(
        quick_flush(),
        stream.clone(),
        storage.clone(),
        log.clone(),
        DeadLetterSink::new(storage.clone(), ["clicks".to_string()]),
        shutdown.clone(),
    ));
    let batch = Arc::new(Batch::new(
        pipeline.clone(),
        storage.clone(),
        log.clone(),
        1,
    ));
    Rig {
        _dir: dir,
        pipeline,
        storage,
        log,
        stream,
        shutdown,
        archiver,
        batch,
    }
}

#[tokio::test]
async fn incremental_runs_read_only_new_events_and_changed_views_are_recomputed_in_full() {
    let Rig {
        _dir,
        pipeline,
        storage,
        log,
        stream,
        shutdown,
        archiver,
        batch,
    } = rig().await;

    log.append("clicks", 0, vec![click("a"), click("a")])
        .await
        .unwrap();
    log.append("clicks", 1, vec![click("b")]).await.unwrap();
    archived(&storage, &stream, vec![2, 1]).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The first incremental run has no states to add to: it computes them in full.
    let (rec, stages) = run(&batch, RunKind::Incremental).await;
    assert_eq!(rec.rows_in, 3, "{rec:?}");
    assert!(
        stages
            .iter()
            .any(|s| s == "view per_page: full (no batch states yet)"),
        "{stages:?}"
    );

    log.append("clicks", 0, vec![click("a")]).await.unwrap();
    log.append("clicks", 1, vec![click("c")]).await.unwrap();
    archived(&storage, &stream, vec![3, 2]).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (rec, stages) = run(&batch, RunKind::Incremental).await;
    assert_eq!(rec.kind, "incremental");
    assert_eq!(rec.rows_in, 2, "only the new events are read: {rec:?}");
    assert!(
        stages.iter().any(|s| s == "view per_page: incremental"),
        "{stages:?}"
    );
    let incremental = stored_rows(&storage, &pipeline).await;
    assert_eq!(incremental.len(), 3, "{incremental:?}");

    // A full run over the same events stores the same states.
    let (rec, _) = run(&batch, RunKind::Full).await;
    assert_eq!(rec.rows_in, 5, "{rec:?}");
    assert_eq!(stored_rows(&storage, &pipeline).await, incremental);

    // Nothing new (the cutoff may still move on with the clock): the states stay.
    let (rec, _) = run(&batch, RunKind::Incremental).await;
    assert_eq!(rec.rows_in, 0, "{rec:?}");
    assert_eq!(stored_rows(&storage, &pipeline).await, incremental);

    // The view's SQL changed: its old states cannot be added to.
    let changed = CONFIG.replace("count(*) AS n", "count(page) AS n");
    let cfg = config::from_toml_str(&changed).unwrap();
    let changed = Pipeline::from_config(&cfg, &config::ConfigSource::EmbeddedDefault)
        .await
        .unwrap();
    let batch = Arc::new(Batch::new(changed, storage.clone(), log.clone(), 1));
    let (rec, stages) = run(&batch, RunKind::Incremental).await;
    assert_eq!(rec.rows_in, 5, "{rec:?}");
    assert!(
        stages
            .iter()
            .any(|s| s == "view per_page: full (definition changed)"),
        "{stages:?}"
    );
    shutdown.cancel();
    archiver.await.unwrap().unwrap();
}

fn click_at(page: &str, ts: &str) -> Vec<u8> {
    format!("{{\"page\":\"{page}\",\"ts\":\"{ts}\"}}").into_bytes()
}

/// The batch-view table's data files, as `(window day, path)`.
async fn view_files(storage: &Storage) -> Vec<(String, String)> {
    let table = tributary_core::delta::open(storage.batch_view_table("per_page"))
        .await
        .unwrap();
    let mut files: Vec<(String, String)> = table
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| {
            let path = f.path().to_string();
            let day = path
                .split('/')
                .find_map(|p| p.strip_prefix("_window_day="))
                .expect("files sit in window-day partitions")
                .to_string();
            (day, path)
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn an_incremental_run_rewrites_only_the_window_days_of_its_new_events() {
    let Rig {
        _dir,
        pipeline,
        storage,
        log,
        stream,
        shutdown,
        archiver,
        batch,
    } = rig().await;
    log.append(
        "clicks",
        0,
        vec![
            click_at("a", "2026-01-01T10:00:00Z"),
            click_at("a", "2026-01-02T10:00:00Z"),
        ],
    )
    .await
    .unwrap();
    archived(&storage, &stream, vec![2, 0]).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (rec, _) = run(&batch, RunKind::Full).await;
    assert_eq!(rec.files, 2, "one file per window day: {rec:?}");
    let before = view_files(&storage).await;
    let days: Vec<&str> = before.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(days, ["2026-01-01", "2026-01-02"], "{before:?}");

    // A late event for the second day only.
    log.append("clicks", 1, vec![click_at("b", "2026-01-02T11:00:00Z")])
        .await
        .unwrap();
    archived(&storage, &stream, vec![2, 1]).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (rec, _) = run(&batch, RunKind::Incremental).await;
    assert_eq!((rec.rows_in, rec.rows_out, rec.files), (1, 2, 1), "{rec:?}");
    let after = view_files(&storage).await;
    assert_eq!(after[0], before[0], "the first day's file stays: {after:?}");
    assert_eq!(after.len(), 2, "{after:?}");
    assert_ne!(after[1].1, before[1].1, "the second day's is replaced");
    let incremental = stored_rows(&storage, &pipeline).await;
    assert_eq!(incremental.len(), 3, "{incremental:?}");

    // The same states as a full run's.
    run(&batch, RunKind::Full).await;
    assert_eq!(stored_rows(&storage, &pipeline).await, incremental);
    shutdown.cancel();
    archiver.await.unwrap().unwrap();
}
