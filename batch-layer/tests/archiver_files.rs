//! When the archiver commits, against a real embedded log and real Delta tables: files
//! are cut at `target-file-mb` while records keep coming, a trickle commits once its
//! oldest record has waited `archive-flush-ms` (not before), and a graceful stop commits
//! what is left; every record lands exactly once either way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::Int64Array;
use datafusion::prelude::SessionContext;
use rand::Rng;
use tributary_batch::archiver::{archived_positions, open_master};
use tributary_core::config::{self, BatchConfig};
use tributary_core::dead_letter::DeadLetterSink;
use tributary_core::log::EventLog;
use tributary_core::pipeline::Pipeline;
use tributary_core::schema::StreamSchema;
use tributary_core::shutdown::Shutdown;
use tributary_core::storage::Storage;
use tributary_ingest::log::EmbeddedLog;

const CONFIG: &str = r#"
[[streams]]
name = "blobs"
event-time = "ts"
partitions = 1
fields = [
  { name = "n", type = "int64" },
  { name = "noise", type = "string" },
  { name = "ts", type = "timestamp" },
]
"#;

/// Record `n` with 100 random hex digits, which Parquet cannot squeeze much: about
/// 115 bytes a row, so one read of the archiver (16,384 records) is about 1.9 MB.
fn blob(n: i64) -> Vec<u8> {
    let mut rng = rand::rng();
    let noise: String = (0..100)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap())
        .collect();
    format!("{{\"n\":{n},\"noise\":\"{noise}\",\"ts\":\"2026-01-01T00:30:00Z\"}}").into_bytes()
}

struct Setup {
    _dir: tempfile::TempDir,
    storage: Storage,
    log: Arc<dyn EventLog>,
    stream: StreamSchema,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config::from_toml_str(CONFIG).unwrap();
    let pipeline = Pipeline::from_config(&cfg, &config::ConfigSource::EmbeddedDefault)
        .await
        .unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let log: Arc<dyn EventLog> =
        Arc::new(EmbeddedLog::open(&storage.log_dir(), &[("blobs".into(), 1)]).unwrap());
    let stream = pipeline.stream("blobs").unwrap().clone();
    Setup {
        _dir: dir,
        storage,
        log,
        stream,
    }
}

impl Setup {
    fn archive(&self, config: BatchConfig, shutdown: &Shutdown) -> tokio::task::JoinHandle<()> {
        let run = tributary_batch::archiver::run_stream(
            config,
            self.stream.clone(),
            self.storage.clone(),
            self.log.clone(),
            DeadLetterSink::new(self.storage.clone(), ["blobs".to_string()]),
            shutdown.clone(),
        );
        tokio::spawn(async move { run.await.expect("the archiver fails") })
    }

    async fn archived(&self) -> u64 {
        let master = open_master(&self.storage, "blobs").await.unwrap();
        archived_positions(master.as_ref(), &self.stream)
            .await
            .unwrap()[0]
    }

    async fn wait_archived(&self, at_least: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let a = self.archived().await;
            if a >= at_least {
                return a;
            }
            assert!(Instant::now() < deadline, "archived {a}, want {at_least}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sizes of the table's data files, in bytes.
    async fn file_sizes(&self) -> Vec<i64> {
        let master = open_master(&self.storage, "blobs").await.unwrap().unwrap();
        let snapshot = master.snapshot().unwrap();
        snapshot.log_data().iter().map(|f| f.size()).collect()
    }

    /// The compression of every column chunk of the master table's Parquet files.
    fn codecs(&self) -> Vec<deltalake::parquet::basic::Compression> {
        use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
        let mut dirs = vec![self._dir.path().to_path_buf()];
        let mut out = Vec::new();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "parquet") {
                    let reader =
                        SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
                    for group in reader.metadata().row_groups() {
                        out.extend(group.columns().iter().map(|c| c.compression()));
                    }
                }
            }
        }
        out
    }

    /// Rows of the master table and distinct `n`s among them.
    async fn rows_and_distinct(&self) -> (i64, i64) {
        let master = open_master(&self.storage, "blobs").await.unwrap().unwrap();
        let ctx = SessionContext::new();
        master.update_datafusion_session(&ctx.state()).unwrap();
        ctx.register_table("m", master.table_provider().await.unwrap())
            .unwrap();
        let out = ctx
            .sql("SELECT count(*), count(DISTINCT n) FROM m")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let v = |i: usize| {
            out[0]
                .column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0)
        };
        (v(0), v(1))
    }
}

#[tokio::test]
async fn files_are_cut_by_size_and_a_graceful_stop_commits_the_rest() {
    let s = setup().await;
    const TOTAL: i64 = 40_000; // two reads over 1 MB each, then a tail under 1 MB
    for chunk in (0..TOTAL).collect::<Vec<_>>().chunks(5_000) {
        s.log
            .append("blobs", 0, chunk.iter().map(|n| blob(*n)).collect())
            .await
            .unwrap();
    }
    let shutdown = Shutdown::new();
    // Time never triggers a commit here: only size can.
    let config = BatchConfig {
        archive_flush_ms: 600_000,
        target_file_mb: 1,
        schedule: None,
        maintenance_schedule: None,
        ..BatchConfig::default()
    };
    let task = s.archive(config, &shutdown);
    let first = s.wait_archived(1).await;
    assert!(
        first < TOTAL as u64,
        "a 1 MB file holds a part of the backlog, not all of it ({first})"
    );
    let sizes = s.file_sizes().await;
    assert!(!sizes.is_empty());
    for size in &sizes {
        assert!(
            *size >= 900 * 1024,
            "files are cut near target-file-mb, not smaller: {sizes:?}"
        );
        // A commit overshoots the size by at most one read.
        assert!(*size <= 4 * 1024 * 1024, "{sizes:?}");
    }
    // The tail stays open (no size reached, no time passed) until the stop.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before_stop = s.archived().await;
    assert!(before_stop < TOTAL as u64, "{before_stop}");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the archiver stops")
        .unwrap();
    assert_eq!(s.archived().await, TOTAL as u64);
    assert_eq!(s.rows_and_distinct().await, (TOTAL, TOTAL));
    // Every batch run decodes these files whole: LZ4, not delta-rs's default Snappy.
    let codecs = s.codecs();
    assert!(!codecs.is_empty());
    assert!(
        codecs
            .iter()
            .all(|c| *c == deltalake::parquet::basic::Compression::LZ4_RAW),
        "{codecs:?}"
    );
}

#[tokio::test]
async fn a_trickle_commits_once_its_oldest_record_has_waited_the_flush_interval() {
    let s = setup().await;
    let shutdown = Shutdown::new();
    let config = BatchConfig {
        archive_flush_ms: 1_500,
        schedule: None,
        maintenance_schedule: None,
        ..BatchConfig::default()
    };
    let task = s.archive(config, &shutdown);
    let appended = Instant::now();
    s.log
        .append("blobs", 0, (0..10).map(blob).collect())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Ten small records are far from 128 MB: they wait for the interval.
    assert_eq!(s.archived().await, 0, "committed before archive-flush-ms");
    s.log
        .append("blobs", 0, (10..20).map(blob).collect())
        .await
        .unwrap();
    s.wait_archived(10).await;
    assert!(appended.elapsed() >= Duration::from_millis(1_500));
    s.wait_archived(20).await;
    assert_eq!(s.rows_and_distinct().await, (20, 20));
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(s.rows_and_distinct().await, (20, 20));
}

#[tokio::test]
async fn a_window_of_only_invalid_records_moves_the_positions_past_them() {
    let s = setup().await;
    let shutdown = Shutdown::new();
    let config = BatchConfig {
        archive_flush_ms: 100,
        schedule: None,
        maintenance_schedule: None,
        ..BatchConfig::default()
    };
    let task = s.archive(config, &shutdown);
    let bad = |n: i64| format!("{{\"n\":{n},\"noise\":\"x\"}}").into_bytes();
    s.log
        .append("blobs", 0, vec![bad(1), bad(2), bad(3)])
        .await
        .unwrap();
    // No row to write, yet the commit records the position after them: a restart
    // does not read them again.
    s.wait_archived(3).await;
    assert_eq!(s.rows_and_distinct().await, (0, 0));
    let letters = DeadLetterSink::new(s.storage.clone(), ["blobs".to_string()])
        .read_all("blobs")
        .await
        .unwrap();
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert!(
        letters.iter().all(|l| l.field.as_deref() == Some("ts")),
        "{letters:?}"
    );
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn file_statistics_sort_files_into_inside_edge_and_outside_a_range() {
    use tributary_batch::scan::range_files;
    let s = setup().await;
    let shutdown = Shutdown::new();
    let config = BatchConfig {
        archive_flush_ms: 300,
        schedule: None,
        maintenance_schedule: None,
        ..BatchConfig::default()
    };
    let task = s.archive(config, &shutdown);
    // File A: two records 20 ms apart; file B: one record well after them.
    s.log.append("blobs", 0, vec![blob(1)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.log.append("blobs", 0, vec![blob(2)]).await.unwrap();
    s.wait_archived(2).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.log.append("blobs", 0, vec![blob(3)]).await.unwrap();
    s.wait_archived(3).await;
    shutdown.cancel();
    task.await.unwrap();
    let stamps: Vec<i64> = s
        .log
        .read("blobs", 0, 0, 10)
        .await
        .unwrap()
        .records
        .iter()
        .map(|r| r.ingest_ts)
        .collect();
    let (t1, t2, t3) = (stamps[0], stamps[1], stamps[2]);
    let table = open_master(&s.storage, "blobs").await.unwrap().unwrap();
    let files = |from, cutoff| {
        let f = range_files(&table, from, cutoff).unwrap();
        (f.inside.len(), f.edge.len())
    };
    // Cutting through A: A is read through the filter, B not at all.
    assert_eq!(files(None, t2), (0, 1));
    // Past both: both read whole, no filter.
    assert_eq!(files(None, t3 + 2_000), (2, 0));
    // From B on (statistics keep milliseconds): B whole, A left out.
    assert_eq!(files(Some(t3 - t3 % 1_000), t3 + 2_000), (1, 0));
    // Before everything: nothing.
    assert_eq!(files(None, t1 - 2_000), (0, 0));
}

#[tokio::test]
async fn records_over_many_event_dates_commit_at_max_open_files_not_at_the_interval() {
    let s = setup().await;
    let shutdown = Shutdown::new();
    let config = BatchConfig {
        archive_flush_ms: 600_000,
        max_open_files: 3,
        schedule: None,
        maintenance_schedule: None,
        ..BatchConfig::default()
    };
    let task = s.archive(config, &shutdown);
    // Ten records on ten different days: each day is a file the archiver holds open.
    let records = (0..10)
        .map(|d| {
            format!(
                "{{\"n\":{d},\"noise\":\"x\",\"ts\":\"2026-01-{:02}T00:00:00Z\"}}",
                d + 1
            )
            .into_bytes()
        })
        .collect();
    s.log.append("blobs", 0, records).await.unwrap();
    // Far before the ten-minute interval: committed because of the dates.
    s.wait_archived(10).await;
    assert_eq!(s.rows_and_distinct().await, (10, 10));
    shutdown.cancel();
    task.await.unwrap();
}
