//! Tributary speed layer.
//!
//! Owns the incremental half of every view: it reads the event log in micro-batches,
//! runs each view's compiled *partial* plan over them, and keeps the resulting
//! aggregate states in memory, segmented by `_ingest_ts` bucket ([`store`]). It ignores
//! events below the batch cutoff it was told about and drops the segments a cutoff
//! covers; a view joining two streams keeps both streams' events above the cutoff and
//! pairs each new event with them and with the master table's events below it
//! (`join`). It is disposable: on start it rebuilds from the log, starting at the batch
//! cutoff.

#![warn(missing_docs)]

mod consume;
pub mod decode;
pub mod dedup;
pub mod follow;
mod join;
pub mod remote;
pub mod server;
pub mod sharded;
pub mod snapshot;
pub mod source;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use datafusion::arrow::array::TimestampMicrosecondArray;
use datafusion::arrow::record_batch::RecordBatch;
use serde::Serialize;
use thiserror::Error;
use tributary_core::CoreError;
use tributary_core::config::{Shard, SpeedConfig};
use tributary_core::dead_letter::{DeadLetter, DeadLetterSink};
use tributary_core::log::EventLog;
use tributary_core::pipeline::Pipeline;
use tributary_core::quarantine;
use tributary_core::view::{SOURCE_SPEED, tag_source};

pub use consume::run;
pub use dedup::Deduplicator;
pub use sharded::ShardedSpeed;
pub use source::{Coverage, Snapshot, SpeedSource};
pub use store::{SpeedSnapshot, StateStore, ViewStats, ViewStore};

/// Why the speed layer stopped.
#[derive(Debug, Error)]
pub enum SpeedError {
    /// A partition of a stream could not be read from the log.
    #[error("reading stream `{stream}` partition {partition}: {source}")]
    Read {
        /// The stream.
        stream: String,
        /// The partition.
        partition: u32,
        /// What the log said.
        source: CoreError,
    },
    /// A view's partial plan could not be set up or run.
    #[error("view `{view}`: {source}")]
    View {
        /// The view.
        view: String,
        /// What failed.
        source: CoreError,
    },
}

impl SpeedError {
    fn read(stream: &str, partition: u32, source: CoreError) -> Self {
        SpeedError::Read {
            stream: stream.to_string(),
            partition,
            source,
        }
    }
}

/// The consumer name under which the speed layer reports its positions to the log.
pub const SPEED_GROUP: &str = "tributary-speed";

/// Progress of the speed layer over one stream.
#[derive(Debug, Default)]
pub struct StreamProgress {
    /// Newest `_ingest_ts` processed.
    pub ingest_ts: AtomicI64,
    /// Events read since start.
    pub events: AtomicU64,
    /// Records that did not validate against the stream's schema.
    pub invalid: AtomicU64,
    /// Records counted once already under the stream's dedup rule.
    pub duplicates: AtomicU64,
    /// Events in the last micro-batch.
    pub last_batch_events: AtomicU64,
    /// How long the last micro-batch took, in microseconds.
    pub last_batch_micros: AtomicU64,
    /// Records in the log not yet read, over all partitions (sampled each second).
    pub lag: AtomicU64,
    /// The same per partition, in partition order.
    pub lag_by_partition: std::sync::Mutex<Vec<u64>>,
    /// Events read per second over the last sampling interval.
    pub events_per_second: AtomicU64,
    /// Per partition this process holds, the next offset after the records its states
    /// hold (published once a micro-batch's states are in).
    pub positions: std::sync::Mutex<BTreeMap<u32, u64>>,
}

/// The speed layer's figures: per stream and per view.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SpeedStats {
    /// Per stream, by name.
    pub streams: BTreeMap<String, StreamStats>,
    /// Per view.
    pub views: Vec<ViewStats>,
    /// How long the layer took from its start to reach the end of the log (rebuilding
    /// its states from the batch cutoff); `None` while it is still catching up.
    pub recovery_ms: Option<u64>,
    /// Whether it resumed from a snapshot rather than from the batch cutoff alone.
    #[serde(default)]
    pub restored_from_snapshot: bool,
    /// The partitions each process holds (`speed.shard`), by shard; one entry for
    /// a single speed process. Each says where its process is reached (`None`:
    /// in this process) and whether it answered.
    #[serde(default)]
    pub shards: Vec<ShardStats>,
}

/// One speed process as serving sees it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ShardStats {
    /// Its `speed.shard`, `I/N`.
    pub shard: String,
    /// Where serving reaches it (`None`: in this process).
    pub url: Option<String>,
    /// Whether it answered the last time it was asked.
    pub reachable: bool,
    /// Whether it has reached the end of the log since it started.
    pub caught_up: bool,
    /// How long it took to get there (see [`SpeedStats::recovery_ms`]).
    pub recovery_ms: Option<u64>,
    /// Per stream, the partitions it holds.
    pub partitions: BTreeMap<String, Vec<u32>>,
}

/// One stream's figures, as [`StreamProgress`] holds them at one moment.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StreamStats {
    /// Newest `_ingest_ts` processed (microseconds).
    pub ingest_ts: i64,
    /// Events read since start.
    pub events: u64,
    /// Records that did not validate.
    pub invalid: u64,
    /// Records counted once already under the stream's dedup rule.
    pub duplicates: u64,
    /// Events in the last micro-batch.
    pub last_batch_events: u64,
    /// How long the last micro-batch took, in microseconds.
    pub last_batch_micros: u64,
    /// Records in the log not yet read, over all partitions.
    pub lag: u64,
    /// Lag per partition, in partition order.
    #[serde(default)]
    pub lag_by_partition: Vec<u64>,
    /// Events read per second over the last sampling interval.
    pub events_per_second: u64,
}

/// A handle on a running speed layer: its states and progress.
#[derive(Debug, Clone)]
pub struct SpeedLayer {
    /// Every view's states.
    pub store: StateStore,
    progress: Arc<HashMap<String, StreamProgress>>,
    segment_width: i64,
    /// `u64::MAX` until the first time the layer reaches the end of the log.
    recovery_ms: Arc<AtomicU64>,
    /// Whether the layer resumed from a snapshot at start.
    restored: Arc<std::sync::atomic::AtomicBool>,
    /// Where records a view cannot process are dead-lettered (none: only counted).
    dead_letters: Option<DeadLetterSink>,
    /// The partitions of every stream this process holds (`speed.shard`).
    shard: Shard,
    /// Where the master tables are: a view joining two streams finds the partners of
    /// a new event below the batch cutoff there (none: such partners are not looked
    /// up, which only a layer that never learns of a cutoff may do, as in benches).
    master: Option<tributary_core::storage::Storage>,
    /// Random per start: added to the store's generations where other processes see
    /// them, so a restarted process (whose generations start again) never matches a
    /// generation a serving process kept from before.
    instance: u64,
}

impl SpeedLayer {
    /// `cutoffs` are the batch cutoffs per view known at start.
    pub fn new(pipeline: &Pipeline, config: &SpeedConfig, cutoffs: &HashMap<String, i64>) -> Self {
        SpeedLayer {
            store: StateStore::new(&pipeline.views.snapshot(), cutoffs),
            progress: Arc::new(
                pipeline
                    .streams
                    .iter()
                    .map(|s| (s.name.clone(), StreamProgress::default()))
                    .collect(),
            ),
            segment_width: config.segment_width_ms.max(1) as i64 * 1000,
            recovery_ms: Arc::new(AtomicU64::new(u64::MAX)),
            restored: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            dead_letters: None,
            shard: config.shard,
            master: None,
            instance: {
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
            },
        }
    }

    /// A store generation as other processes see it (unique to this start).
    pub fn published_generation(&self, generation: u64) -> u64 {
        generation.wrapping_add(self.instance)
    }

    /// The store generation behind a published one (garbage for another start's).
    pub fn local_generation(&self, published: u64) -> u64 {
        published.wrapping_sub(self.instance)
    }

    /// The partitions of every stream this process holds.
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// Whether the layer has reached the end of the log since it started: before, the
    /// states of its partitions are still being rebuilt.
    pub fn caught_up(&self) -> bool {
        self.recovery_ms.load(Ordering::Relaxed) != u64::MAX
    }

    /// What the states of `stream` cover now: the partitions held and their positions.
    pub fn coverage(&self, stream: &str) -> Coverage {
        let partitions = self
            .progress
            .get(stream)
            .map(|p| p.positions.lock().expect("positions lock").clone())
            .unwrap_or_default();
        Coverage {
            partitions,
            caught_up: self.caught_up(),
        }
    }

    /// Dead-letter the records a view cannot process into `sink` (with their log
    /// partition and offset), besides counting them.
    pub fn with_dead_letters(mut self, sink: DeadLetterSink) -> Self {
        self.dead_letters = Some(sink);
        self
    }

    /// Read the master tables under `storage` for the partners of joined events below
    /// the batch cutoff.
    pub fn with_master(mut self, storage: tributary_core::storage::Storage) -> Self {
        self.master = Some(storage);
        self
    }

    /// Newest `_ingest_ts` the layer has processed for `stream`.
    pub fn ingest_position(&self, stream: &str) -> Option<i64> {
        self.progress
            .get(stream)
            .map(|p| p.ingest_ts.load(Ordering::Acquire))
            .filter(|t| *t > 0)
    }

    fn recovery(&self) -> Option<u64> {
        match self.recovery_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(ms),
        }
    }

    /// Events read so far over every stream: atomics only, for callers that poll
    /// (a benchmark waiting for the layer must not take the stores' locks as it waits).
    pub fn events_read(&self) -> u64 {
        self.progress
            .values()
            .map(|p| p.events.load(Ordering::Relaxed))
            .sum()
    }

    /// The layer's figures now.
    pub fn stats(&self) -> SpeedStats {
        SpeedStats {
            streams: self
                .progress
                .iter()
                .map(|(k, p)| {
                    (
                        k.clone(),
                        StreamStats {
                            ingest_ts: p.ingest_ts.load(Ordering::Relaxed),
                            events: p.events.load(Ordering::Relaxed),
                            invalid: p.invalid.load(Ordering::Relaxed),
                            duplicates: p.duplicates.load(Ordering::Relaxed),
                            last_batch_events: p.last_batch_events.load(Ordering::Relaxed),
                            last_batch_micros: p.last_batch_micros.load(Ordering::Relaxed),
                            lag: p.lag.load(Ordering::Relaxed),
                            lag_by_partition: p.lag_by_partition.lock().expect("lag lock").clone(),
                            events_per_second: p.events_per_second.load(Ordering::Relaxed),
                        },
                    )
                })
                .collect(),
            views: self.store.views().iter().map(|v| v.stats()).collect(),
            recovery_ms: self.recovery(),
            restored_from_snapshot: self.restored.load(Ordering::Relaxed),
            shards: vec![ShardStats {
                shard: self.shard.to_string(),
                url: None,
                reachable: true,
                caught_up: self.caught_up(),
                recovery_ms: self.recovery(),
                partitions: self
                    .progress
                    .iter()
                    .map(|(s, p)| {
                        let held = p.positions.lock().expect("positions lock");
                        (s.clone(), held.keys().copied().collect())
                    })
                    .collect(),
            }],
        }
    }
}

/// The batch's contribution to the watermark: event times capped at ingest time plus
/// the stream's lead, the rule the batch layer's meter applies too.
fn max_event_time(batch: &RecordBatch, column: &str, lead_us: i64) -> Option<i64> {
    let ts = |name: &str| {
        batch
            .column_by_name(name)?
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
    };
    tributary_core::schema::newest_watermark_time(
        ts(column)?,
        ts(tributary_core::schema::INGEST_TS),
        lead_us,
    )
}

/// The view's partial states over one bucket's `batches` (master layout; the view reads
/// `view_columns` of them). A record the view cannot process is set aside, counted and
/// dead-lettered, never allowed to stop this view, the others or the process.
async fn states_setting_aside(
    layer: &SpeedLayer,
    log: &Arc<dyn EventLog>,
    stream: &str,
    view: &Arc<tributary_core::view::CompiledView>,
    batches: &[RecordBatch],
    view_columns: &[usize],
) -> Vec<RecordBatch> {
    let Some(store) = layer.store.view(&view.name) else {
        // Dropped while this micro-batch ran.
        return Vec::new();
    };
    let to_input = |b: &RecordBatch| {
        let b = b.project(view_columns)?;
        tag_source(&b, SOURCE_SPEED, &view.input_schema)
    };
    let (states, refused) =
        match quarantine::partial_isolating(view, batches.to_vec(), to_input).await {
            Ok(done) => done,
            // Even the good records' states would not merge: set the batch aside whole.
            Err(error) => {
                let all = batches
                    .iter()
                    .flat_map(|b| (0..b.num_rows()).map(move |i| b.slice(i, 1)))
                    .map(|row| quarantine::Refused {
                        row,
                        error: CoreError::View {
                            view: view.name.clone(),
                            message: error.to_string(),
                        },
                    })
                    .collect();
                (Vec::new(), all)
            }
        };
    if refused.is_empty() {
        store.processed_cleanly();
    } else {
        let last = refused
            .last()
            .map(|r| r.error.to_string())
            .unwrap_or_default();
        tracing::warn!(view = %view.name, records = refused.len(), error = %last, "records quarantined");
        let of = batches.iter().map(|b| b.num_rows() as u64).sum();
        store.quarantine(refused.len() as u64, of, last);
        dead_letter(layer, log.clone(), stream, &view.name, refused);
    }
    states
}

/// Merge the state batches of full segments. A failure leaves the segment as it is
/// (still exact, only bigger) rather than stopping the layer.
async fn compact(layer: &SpeedLayer, stream: &str) {
    for store in layer.store.views() {
        if !store.view.reads(stream) {
            continue;
        }
        let view = store.view.clone();
        for (bucket, states) in store.to_compact() {
            let n = states.len();
            match view.reduce(states).await {
                Ok(reduced) => store.replace(bucket, n, reduced),
                Err(e) => {
                    tracing::warn!(view = %view.name, error = %e, "could not compact a segment");
                }
            }
        }
    }
}

/// Dead-letter `refused` records of `view` in the background (with the raw record read
/// back from the log by partition and offset): rare, and not worth holding up the
/// micro-batch for a Delta commit. The records stay in the log and the master table.
fn dead_letter(
    layer: &SpeedLayer,
    log: Arc<dyn EventLog>,
    stream: &str,
    view: &str,
    refused: Vec<quarantine::Refused>,
) {
    let Some(sink) = layer.dead_letters.clone() else {
        return;
    };
    let (stream, view) = (stream.to_string(), view.to_string());
    let writer = sink.clone();
    writer.spawn_write(async move {
        let mut letters = Vec::with_capacity(refused.len());
        for r in refused {
            let position = |name: &str| {
                r.row
                    .column_by_name(name)
                    .and_then(|c| {
                        datafusion::arrow::compute::cast(
                            c,
                            &datafusion::arrow::datatypes::DataType::Int64,
                        )
                        .ok()
                    })
                    .and_then(|c| {
                        c.as_any()
                            .downcast_ref::<datafusion::arrow::array::Int64Array>()
                            .map(|a| a.value(0))
                    })
            };
            let (partition, offset) = (
                position(tributary_core::schema::PARTITION),
                position(tributary_core::schema::OFFSET),
            );
            let raw = match (partition, offset) {
                (Some(p), Some(o)) => log
                    .read(&stream, p as u32, o as u64, 1)
                    .await
                    .ok()
                    .and_then(|b| b.records.into_iter().find(|r| r.offset == o as u64))
                    .map(|r| String::from_utf8_lossy(&r.payload).into_owned()),
                _ => None,
            };
            letters.push(DeadLetter {
                source: format!("view:{view}"),
                index: offset,
                partition,
                field: None,
                reason: format!("view `{view}` cannot process this record: {}", r.error),
                raw: raw.unwrap_or_default(),
            });
        }
        if let Err(e) = sink.write(&stream, letters).await {
            tracing::error!(view, error = %e, "could not dead-letter quarantined records");
        }
    });
}
