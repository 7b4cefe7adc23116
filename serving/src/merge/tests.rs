//! The merged-rows cache: requests of one (batch version, speed generation) share one
//! copy of the speed states and one computation, including after a computation failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use tributary_core::config::{ConfigSource, EMBEDDED_DEFAULT, from_toml_str};
use tributary_core::error::CoreError;
use tributary_core::pipeline::Pipeline;
use tributary_core::schema::{BatchDecoder, LogPosition};
use tributary_core::storage::Storage;
use tributary_core::view::{SOURCE_SPEED, tag_source};
use tributary_speed::SpeedStats;
use tributary_speed::{Snapshot, SpeedSource};

use super::{Merger, finalize};

const VIEW: &str = "signal_by_type";

/// A speed layer holding fixed states at a generation the test moves, counting the
/// snapshots that copied the states.
struct Fake {
    states: Vec<RecordBatch>,
    generation: AtomicU64,
    copies: AtomicUsize,
    revision: i64,
}

#[async_trait]
impl SpeedSource for Fake {
    async fn snapshot(&self, _: &str, _: i64, known: Option<u64>) -> Result<Snapshot, CoreError> {
        let generation = self.generation.load(Ordering::SeqCst);
        let unchanged = known == Some(generation);
        if !unchanged {
            self.copies.fetch_add(1, Ordering::SeqCst);
        }
        // A copy takes a while, so concurrent requests overlap it.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        Ok(Snapshot {
            states: if unchanged {
                Vec::new()
            } else {
                self.states.clone()
            },
            max_event_ts: None,
            ingest_position: None,
            segments: 1,
            generation: Some(generation),
            coverage: Vec::new(),
            revision: self.revision,
        })
    }
    async fn release(&self, _: &str, _: i64) -> Result<(), CoreError> {
        Ok(())
    }
    async fn stats(&self) -> Result<SpeedStats, CoreError> {
        Err(CoreError::LogUnavailable("no figures in this test".into()))
    }
}

async fn merger() -> (Arc<Merger>, Arc<Fake>, Vec<RecordBatch>, tempfile::TempDir) {
    let config = from_toml_str(EMBEDDED_DEFAULT).unwrap();
    let pipeline = Pipeline::from_config(&config, &ConfigSource::EmbeddedDefault)
        .await
        .unwrap();
    let view = pipeline.view(VIEW).unwrap().clone();
    let stream = pipeline.stream("readings").unwrap();
    let mut decoder = BatchDecoder::new(stream, false);
    for (i, (kind, signal)) in [("pump", 16.0), ("fan", 25.0), ("pump", 40.0)]
        .iter()
        .enumerate()
    {
        let record = serde_json::json!({
            "device": format!("d{i}"), "device_type": kind, "signal": signal,
            "ts": 1_767_225_600_000i64 + i as i64,
        });
        let pos = LogPosition {
            partition: 0,
            offset: i as u64,
            ingest_ts: 1_767_225_600_000_000,
        };
        decoder.push(&record, pos).unwrap();
    }
    let batch = tag_source(&decoder.flush().unwrap(), SOURCE_SPEED, &view.input_schema).unwrap();
    let states = view.run_partial_batches(vec![batch]).await.unwrap();
    let (expected, _) = finalize(&view, states.clone()).await.unwrap();
    let fake = Arc::new(Fake {
        states,
        generation: AtomicU64::new(7),
        copies: AtomicUsize::new(0),
        revision: view.revision,
    });
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let merger = Merger::new(pipeline, storage, fake.clone(), Default::default());
    (Arc::new(merger), fake, expected, dir)
}

fn text(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches).unwrap().to_string()
}

async fn ask_together(merger: &Arc<Merger>, n: usize) -> Vec<String> {
    let asks = (0..n).map(|_| {
        let merger = merger.clone();
        tokio::spawn(async move { merger.merged_once(VIEW).await.map(|m| text(&m.rows)) })
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect()
}

/// A cell registered for the current generation but empty (its computation failed, or
/// is under way) makes the requests wait for it, not copy the states each: one of them
/// computes it from states it copies then, and every answer is the full merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_one_generation_copy_the_speed_states_once() {
    let (merger, fake, expected, _dir) = merger().await;
    let expected = text(&expected);
    assert!(
        expected.contains("pump") && expected.contains("fan"),
        "{expected}"
    );
    // As a computation that failed leaves it: registered, empty.
    let cell = merger.cell_for(VIEW, Some((None, 7)));
    assert!(!cell.initialized());

    let answers = ask_together(&merger, 16).await;
    assert!(answers.iter().all(|a| *a == expected), "{answers:?}");
    assert_eq!(fake.copies.load(Ordering::SeqCst), 1);
    assert_eq!(merger.merges.load(Ordering::SeqCst), 1);

    // Nothing moved: nothing copied, nothing computed.
    ask_together(&merger, 4).await;
    assert_eq!(fake.copies.load(Ordering::SeqCst), 1);
    // The speed states moved: copied and merged again, once per request that saw the
    // move before the new generation's cell was registered.
    fake.generation.store(8, Ordering::SeqCst);
    let answers = ask_together(&merger, 1).await;
    assert_eq!(answers, [expected]);
    assert_eq!(fake.copies.load(Ordering::SeqCst), 2);
    assert_eq!(merger.merges.load(Ordering::SeqCst), 2);
}
