//! How serving reaches the speed layer's states: in the same process, or over HTTP
//! from a separate `tributary speed` process (`remote.rs`).

use std::collections::BTreeMap;
use std::io::Cursor;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use tributary_core::CoreError;

use crate::{SpeedLayer, SpeedStats};

/// A view's speed states at or above a cutoff, and how far the speed layer has got.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The states, in the view's state schema.
    pub states: Vec<RecordBatch>,
    /// Newest event time seen for the view.
    pub max_event_ts: Option<i64>,
    /// Newest `_ingest_ts` processed from the view's stream.
    pub ingest_position: Option<i64>,
    /// How many segments the states came from.
    pub segments: usize,
    /// Identifies the states exactly (same generation, same states), when known: lets
    /// serving reuse a merged answer.
    pub generation: Option<u64>,
    /// What the states cover, one entry per speed process they came from.
    pub coverage: Vec<Coverage>,
    /// The catalog revision of the view the states were computed for (see
    /// `CompiledView::revision`): a serving process that holds another revision of the
    /// view must not merge them.
    pub revision: i64,
}

/// Which part of a stream's log one speed process's states hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Coverage {
    /// The partitions it holds, each with its position: the states hold at least the
    /// records before that offset (read before the states, so never more than they hold).
    pub partitions: BTreeMap<u32, u64>,
    /// Whether the process has reached the end of the log since it started; before
    /// that, the states of its partitions are still being rebuilt and undercount.
    pub caught_up: bool,
}

impl Snapshot {
    /// The partitions of a stream of `partitions` whose states are not all there: held
    /// by no process that answered, or by one still rebuilding them.
    pub fn missing_partitions(&self, partitions: u32) -> Vec<u32> {
        (0..partitions)
            .filter(|p| {
                !self
                    .coverage
                    .iter()
                    .any(|c| c.caught_up && c.partitions.contains_key(p))
            })
            .collect()
    }
}

/// The speed layer as serving sees it.
#[async_trait]
pub trait SpeedSource: Send + Sync {
    /// States of `view` in segments at or above `cutoff`. When they are still those of
    /// generation `known` they are left out (`states` empty, `generation` = `known`):
    /// the caller holds what it computed from them.
    async fn snapshot(
        &self,
        view: &str,
        cutoff: i64,
        known: Option<u64>,
    ) -> Result<Snapshot, CoreError>;
    /// Serving now answers from a batch view at `cutoff`: segments below it can go.
    async fn release(&self, view: &str, cutoff: i64) -> Result<(), CoreError>;
    /// The speed layer's figures.
    async fn stats(&self) -> Result<SpeedStats, CoreError>;
    /// Where the speed layer holds revision `revision` of `view` from: the cutoff of its
    /// store of that revision, once every process that reads the view's stream has one
    /// (`None` before). A new view's batch states must reach this before it answers.
    async fn holds_from(&self, view: &str, revision: i64) -> Result<Option<i64>, CoreError> {
        let stats = self.stats().await?;
        Ok(stats
            .views
            .iter()
            .find(|v| v.view == view && v.revision == revision)
            .map(|v| v.cutoff))
    }
}

#[async_trait]
impl SpeedSource for SpeedLayer {
    async fn snapshot(
        &self,
        view: &str,
        cutoff: i64,
        known: Option<u64>,
    ) -> Result<Snapshot, CoreError> {
        let store = self
            .store
            .view(view)
            .ok_or_else(|| CoreError::UnknownView(view.to_string()))?;
        // Read before the states: they hold at least what the positions say.
        let coverage = self.coverage(&store.view.stream);
        let released = store.cutoff();
        if cutoff < released {
            // Segments between the two are gone: the asker's older batch view does not
            // hold them either, so the sum would miss them.
            return Err(CoreError::StaleCutoff {
                view: view.to_string(),
                requested: cutoff,
                released,
            });
        }
        let s = store.snapshot_since(cutoff, known.filter(|_| coverage.caught_up));
        Ok(Snapshot {
            // While rebuilding, states may change under an unchanged generation's
            // coverage: nothing computed from them is kept.
            generation: coverage.caught_up.then_some(s.generation),
            states: s.states,
            max_event_ts: s.max_event_ts,
            ingest_position: self.ingest_position(&store.view.stream),
            segments: s.segments,
            coverage: vec![coverage],
            revision: store.view.revision,
        })
    }

    async fn release(&self, view: &str, cutoff: i64) -> Result<(), CoreError> {
        if let Some(store) = self.store.view(view) {
            store.release_below(cutoff);
        }
        Ok(())
    }

    async fn stats(&self) -> Result<SpeedStats, CoreError> {
        Ok(SpeedLayer::stats(self))
    }
}

/// Arrow IPC stream bytes of `batches` (schema written even when there are none).
pub fn to_ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, CoreError> {
    let mut writer = StreamWriter::try_new(Vec::new(), schema)?;
    for b in batches {
        writer.write(b)?;
    }
    writer.finish()?;
    Ok(writer.into_inner()?)
}

/// Read state batches written by [`to_ipc`].
pub fn from_ipc(bytes: &[u8]) -> Result<Vec<RecordBatch>, CoreError> {
    let reader = StreamReader::try_new(Cursor::new(bytes), None)?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}
