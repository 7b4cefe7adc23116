//! The archiver and the cutoff rule against a real embedded log and real Delta tables:
//! a batch run covers exactly the events below its cutoff, and the archived positions
//! come from the master table.

use std::sync::Arc;
use std::time::Duration;

use tributary_batch::archiver::{archived_positions, open_master};
use tributary_batch::{Batch, views};
use tributary_core::config::{self, BatchConfig};
use tributary_core::log::EventLog;
use tributary_core::pipeline::Pipeline;
use tributary_core::shutdown::Shutdown;
use tributary_core::storage::Storage;
use tributary_ingest::dead_letter::DeadLetterSink;
use tributary_ingest::log::EmbeddedLog;

const CONFIG: &str = r#"
[[streams]]
name = "clicks"
event-time = "ts"
partitions = 2
fields = [{ name = "page", type = "string" }, { name = "ts", type = "timestamp" }]

[[views]]
name = "per_page"
sql = "SELECT page, date_bin(INTERVAL '1 hour', ts) AS hour, count(*) AS n FROM clicks GROUP BY page, hour"
"#;

fn quick_flush() -> BatchConfig {
    BatchConfig {
        archive_flush_ms: 20,
        archive_flush_records: 1000,
        schedule: None,
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
        .try_start(Arc::new(|_: &str, _: u64, _: u64| {}))
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
        .try_start(Arc::new(|_: &str, _: u64, _: u64| {}))
        .unwrap();
    let rec = run.await.unwrap();
    assert_eq!(rec.rows_in, 3, "{rec:?}");
    let view = pipeline.view("per_page").unwrap();
    let stored = views::load(&storage, view).await.unwrap().unwrap();
    assert_eq!(Some(stored.cutoff), rec.cutoff_micros);
    let rows: usize = stored.states.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 2, "one state row per page");

    // A run while another is in progress is refused.
    let (_, slow) = batch
        .try_start(Arc::new(|_: &str, _: u64, _: u64| {}))
        .unwrap();
    assert!(matches!(
        batch.try_start(Arc::new(|_: &str, _: u64, _: u64| {})),
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
        .try_start(Arc::new(|_: &str, _: u64, _: u64| {}))
        .unwrap();
    assert_eq!(run.await.unwrap().rows_in, 3);
}
