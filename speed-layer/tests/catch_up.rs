//! When the speed layer counts as caught up with the log (its states complete for the
//! partitions it holds): once a round of micro-batches has read every partition to the
//! end of what the log held, even when records keep arriving so that no round ever
//! reads nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tributary_core::config::{ConfigSource, from_toml_str};
use tributary_core::error::Result;
use tributary_core::log::{AppendAck, Assignment, EventLog, LogBatch, NewRecord};
use tributary_core::pipeline::Pipeline;
use tributary_core::shutdown::Shutdown;
use tributary_ingest::log::embedded::EmbeddedLog;
use tributary_speed::SpeedLayer;

mod common;

/// Small reads, so the backlog takes many rounds.
const SPEED: &str = "[speed]\nmax-batch-records = 50\npoll-interval-ms = 1\n";

fn records(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!(r#"{{"k": "k{}", "ts": "2026-01-01T00:00:00Z"}}"#, i % 7).into_bytes())
        .collect()
}

/// The embedded log under steady traffic: a record arrives in a partition just before
/// every read of it, so no read ever finds a partition with nothing new.
struct Busy {
    log: EmbeddedLog,
    arrived: AtomicU64,
}

#[async_trait]
impl EventLog for Busy {
    async fn append_records(&self, s: &str, p: u32, r: Vec<NewRecord>) -> Result<AppendAck> {
        self.log.append_records(s, p, r).await
    }
    async fn read(&self, s: &str, p: u32, from: u64, max: usize) -> Result<LogBatch> {
        self.log.append(s, p, records(1)).await?;
        self.arrived.fetch_add(1, Ordering::Relaxed);
        self.log.read(s, p, from, max).await
    }
    async fn end_offset(&self, s: &str, p: u32) -> Result<u64> {
        self.log.end_offset(s, p).await
    }
    async fn first_offset(&self, s: &str, p: u32) -> Result<u64> {
        self.log.first_offset(s, p).await
    }
    async fn offset_for_ingest_ts(&self, s: &str, p: u32, ts: i64) -> Result<u64> {
        self.log.offset_for_ingest_ts(s, p, ts).await
    }
    async fn ingest_ts_bound(&self, s: &str, p: u32, offset: u64) -> Result<i64> {
        self.log.ingest_ts_bound(s, p, offset).await
    }
    async fn commit_position(&self, c: &str, s: &str, p: u32, offset: u64) -> Result<()> {
        self.log.commit_position(c, s, p, offset).await
    }
    async fn position(&self, c: &str, s: &str, p: u32) -> Result<Option<u64>> {
        self.log.position(c, s, p).await
    }
    async fn assignment(&self, group: &str, s: &str) -> Result<Assignment> {
        self.log.assignment(group, s).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_under_steady_traffic_catches_up_once_it_reached_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let config = from_toml_str(&format!("{}{SPEED}", common::CONFIG)).unwrap();
    let pipeline = Pipeline::from_config(&config, &ConfigSource::File("t.toml".into()))
        .await
        .unwrap();
    let embedded = EmbeddedLog::open(dir.path(), &[("r".into(), 2)]).unwrap();
    // A backlog of many full reads, so the layer starts behind.
    for p in 0..2 {
        embedded.append("r", p, records(2_000)).await.unwrap();
    }
    let busy = Arc::new(Busy {
        log: embedded,
        arrived: AtomicU64::new(0),
    });
    let layer = SpeedLayer::new(&pipeline, &config.speed, &Default::default());
    let shutdown = Shutdown::new();
    let consumer = tokio::spawn(tributary_speed::run(
        config.speed.clone(),
        pipeline,
        busy.clone(),
        layer.clone(),
        None,
        shutdown.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !layer.caught_up() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let caught_up = layer.caught_up();
    let processed = layer.stats().streams["r"].events;
    shutdown.cancel();
    consumer.await.unwrap().unwrap();
    assert!(busy.arrived.load(Ordering::Relaxed) > 0);
    assert!(
        caught_up,
        "not caught up after 30 s under steady traffic ({processed} events processed)"
    );
    assert!(
        processed >= 4_000,
        "caught up with {processed} of the 4,000 records of the backlog read"
    );
}
