//! When the log's retention removes records before the archiver reaches them (Kafka or
//! Event Hubs retention shorter than the archiver's lag), the loss is never silent:
//! status shows the archiver behind retention, the archiver writes a dead letter that
//! names the partition and the offsets lost, and it goes on with the records that are
//! still there, each archived exactly once. Real embedded log (truncated under the
//! archiver) and real Delta tables.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary_batch::Batch;
use tributary_batch::archiver::{archived_positions, open_master};
use tributary_core::config::{self, BatchConfig};
use tributary_core::dead_letter::DeadLetterSink;
use tributary_core::log::EventLog;
use tributary_core::pipeline::Pipeline;
use tributary_core::shutdown::Shutdown;
use tributary_core::storage::Storage;
use tributary_ingest::log::EmbeddedLog;

const CONFIG: &str = r#"
[[streams]]
name = "events"
event-time = "ts"
partitions = 2
fields = [
  { name = "n", type = "int64" },
  { name = "ts", type = "timestamp" },
]
"#;

fn record(n: u64) -> Vec<u8> {
    format!("{{\"n\":{n},\"ts\":\"2026-01-01T00:30:00Z\"}}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_expired_before_archiving_are_reported_lost_and_the_rest_archived() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config::from_toml_str(CONFIG).unwrap();
    let pipeline = Pipeline::from_config(&cfg, &config::ConfigSource::EmbeddedDefault)
        .await
        .unwrap();
    let stream = pipeline.stream("events").unwrap().clone();
    let storage = Storage::open(dir.path()).unwrap();
    let log: Arc<dyn EventLog> =
        Arc::new(EmbeddedLog::open(&storage.log_dir(), &[("events".into(), 2)]).unwrap());
    for p in 0..2u32 {
        log.append("events", p, (0..100).map(record).collect())
            .await
            .unwrap();
    }
    // Retention removes the first 40 records of partition 1 before any was archived.
    let removed = log.truncate("events", 1, 40, i64::MAX).await.unwrap();
    assert_eq!(removed, 40);

    let batch = Batch::new(pipeline.clone(), storage.clone(), log.clone(), 1_000);
    let lag = batch.archiver_lag(&stream).await.unwrap();
    assert_eq!(lag.behind_retention.len(), 1, "{lag:?}");
    let gap = &lag.behind_retention[0];
    assert_eq!(
        (gap.partition, gap.archived, gap.first_retained),
        (1, 0, 40)
    );

    let shutdown = Shutdown::new();
    let sink = DeadLetterSink::new(storage.clone(), ["events".to_string()]);
    let config = BatchConfig {
        archive_flush_ms: 100,
        ..BatchConfig::default()
    };
    let run = tributary_batch::archiver::run_stream(
        config,
        stream.clone(),
        storage.clone(),
        log.clone(),
        sink.clone(),
        shutdown.clone(),
    );
    let archiver = tokio::spawn(run);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let master = open_master(&storage, "events").await.unwrap();
        let positions = archived_positions(master.as_ref(), &stream).await.unwrap();
        if positions == [100, 100] {
            break;
        }
        assert!(Instant::now() < deadline, "archived {positions:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    archiver.await.unwrap().unwrap();

    // The records still in the log are in the master table once each: 100 + 60.
    let master = open_master(&storage, "events").await.unwrap().unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    master.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("m", master.table_provider().await.unwrap())
        .unwrap();
    for (partition, rows, first) in [(0, 100, 0), (1, 60, 40)] {
        let sql = format!(
            "SELECT count(*), count(DISTINCT _offset), min(_offset) FROM m WHERE _partition = {partition}"
        );
        let out = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let value = |c: usize| {
            out[0]
                .column(c)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .unwrap()
                .value(0)
        };
        assert_eq!(
            (value(0), value(1), value(2)),
            (rows, rows, first),
            "partition {partition}: rows, distinct offsets, first offset"
        );
    }

    // The loss is kept where operators look: a dead letter naming it.
    let letters = sink.read_all("events").await.unwrap();
    let lost: Vec<_> = letters
        .iter()
        .filter(|l| l.source == "log-retention")
        .collect();
    assert_eq!(lost.len(), 1, "{letters:?}");
    assert_eq!((lost[0].partition, lost[0].index), (Some(1), Some(0)));
    assert!(
        lost[0].reason.contains("0..40") && lost[0].reason.contains("40 records expired"),
        "{}",
        lost[0].reason
    );
    // Once past the gap, status no longer reports it.
    let lag = batch.archiver_lag(&stream).await.unwrap();
    assert!(lag.behind_retention.is_empty(), "{lag:?}");
}
