//! The merge: batch states below the cutoff T plus speed states at or above T, run
//! through the view's final plan, so every event is counted exactly once.
//!
//! Consistency: a query reads the batch view and takes its speed snapshot under one
//! read lock; a refresh swaps in a new batch view under the write lock and only then
//! lets the speed layer drop the segments the new cutoff covers. A query can thus
//! never combine an old cutoff with speed states that were already dropped.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::RwLock;

use datafusion::arrow::array::RecordBatch;
use serde::Serialize;
use serde_json::{Map, Value};
use tributary_batch::views::{self, BatchView};
use tributary_core::delta::AsOf;
use tributary_core::pipeline::Pipeline;
use tributary_core::storage::Storage;
use tributary_core::time::{now_micros, rfc3339};
use tributary_core::view::CompiledView;
use tributary_speed::SpeedSource;

mod rows;
#[cfg(test)]
mod tests;

use rows::{JsonRows, json_rows, to_rows};

use crate::error::ServingError;

/// Filters, order and paging of one view query.
#[derive(Debug, Clone)]
pub struct ViewQuery {
    /// Windows starting at or after this (micros).
    pub from: Option<i64>,
    /// Windows starting before this.
    pub to: Option<i64>,
    /// Key column and the values it may take (one value: equality; several: IN).
    pub keys: Vec<(String, Vec<String>)>,
    /// Column to order by and whether descending; default window, then keys.
    pub order: Option<(String, bool)>,
    /// Rows to skip, after ordering.
    pub offset: usize,
    /// Most rows to return.
    pub limit: Option<usize>,
    /// Whether rows carry `_source` and `complete` beside their values.
    pub meta: bool,
    /// Time travel: the view as a past batch run left it (batch layer only).
    pub as_of: Option<AsOf>,
}

impl Default for ViewQuery {
    fn default() -> Self {
        ViewQuery {
            from: None,
            to: None,
            keys: Vec::new(),
            order: None,
            offset: 0,
            limit: None,
            meta: true,
            as_of: None,
        }
    }
}

/// A view's merged answer, as the API returns it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ViewAnswer {
    /// The view's name.
    pub view: String,
    /// Batch cutoff T: events ingested before it come from the batch layer.
    pub cutoff: Option<String>,
    /// The view's event-time watermark: the newest event time either layer has seen,
    /// minus the view's allowed lateness. Windows ending at or before it are `complete`.
    pub speed_watermark: Option<String>,
    /// Newest event time either layer has seen for the view.
    pub max_event_time: Option<String>,
    /// Newest ingest time the speed layer has processed.
    pub speed_position: Option<String>,
    /// Age of the speed layer's position, in milliseconds.
    pub freshness_ms: Option<i64>,
    /// The batch-view table's version the batch states were read at.
    pub batch_version: Option<i64>,
    /// Partitions of the view's stream whose speed states are not in this answer: no
    /// speed process that answered holds them, or the one that does is still
    /// rebuilding them. Rows may then undercount events at or above the cutoff, and
    /// none is `complete`. Empty when the answer is whole.
    pub speed_missing_partitions: Vec<u32>,
    /// Groups whose row the view's SQL cannot compute (an expression over the
    /// aggregates or keys fails for them alone, e.g. a division by zero): each with its
    /// `keys` (key columns and window start) and the `error`. They are left out of
    /// `rows` and of `total_rows`; every other row is as exact as ever. Absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub failed_rows: Vec<Value>,
    /// Rows matching the filters, before `offset` and `limit`.
    pub total_rows: usize,
    /// Where the next page starts, if there is one.
    pub next_offset: Option<usize>,
    /// Keys, window start and values per row, with `_source` and `complete` unless
    /// `meta=false`.
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<Map<String, Value>>,
}

/// Why a view does not answer.
#[derive(Debug, Clone)]
pub enum NotReady {
    /// Its first batch run has not committed yet: asking again shortly will do.
    Backfilling(String),
    /// Paused or failed: it answers only once changed (resumed, replaced, fixed).
    Inactive(String),
    /// Its batch states could not be read (a damaged table, storage down at start): it
    /// answers again once a refresh reads them.
    Unreadable(String),
}

/// A view's merged rows and their sources.
pub struct Merged {
    /// The view.
    pub view: Arc<CompiledView>,
    /// The merged rows: the final plan over batch and speed states, with `_src`.
    pub rows: Vec<RecordBatch>,
    /// The groups whose row the final plan could not compute (see
    /// [`ViewAnswer::failed_rows`]); `rows` holds every other group.
    pub failed: Arc<Vec<Value>>,
    /// The batch states used, when a batch run has committed some.
    pub batch: Option<Arc<BatchView>>,
    /// The speed states used.
    pub speed: tributary_speed::Snapshot,
    /// The rows as JSON, built on first use and shared by every request of the same
    /// (batch version, speed generation) when the speed source numbers its generations.
    json: Arc<std::sync::OnceLock<Arc<JsonRows>>>,
}

/// Merges each view's batch states with its speed states into one exact answer.
pub struct Merger {
    pipeline: Pipeline,
    storage: Storage,
    speed: Arc<dyn SpeedSource>,
    batch_views: RwLock<HashMap<String, Arc<BatchView>>>,
    /// Per view, the last merged rows, their JSON form (sorted by window, then keys,
    /// built on first use) and the (batch version, speed generation) they were computed
    /// from: requests between two micro-batches share one final plan and one conversion,
    /// and each only filters, orders and pages the rows.
    /// One computation per key: requests that arrive while it runs wait for it rather
    /// than each finalizing the same states (under load they would all compute at once,
    /// and answers would fall behind for good).
    merged_cache: std::sync::Mutex<HashMap<String, (MergeKey, MergeCell)>>,
    /// Final plans run over merged states since start (status shows it: the cache's
    /// share of answers is requests over this).
    merges: std::sync::atomic::AtomicU64,
    /// Views that must not answer, and why (backfilling, paused, failed): their states
    /// would not be exact.
    not_ready: std::sync::RwLock<HashMap<String, NotReady>>,
}

/// A view's merged rows and, once a request asked for it, their JSON form.
type CachedRows = (
    Vec<RecordBatch>,
    Arc<Vec<Value>>,
    Arc<std::sync::OnceLock<Arc<JsonRows>>>,
);

type MergeKey = (Option<i64>, u64);
/// The merged rows of one key, computed by the first request that needs them.
type MergeCell = Arc<tokio::sync::OnceCell<CachedRows>>;

impl Merger {
    /// A merger over `pipeline`'s views, starting from the batch views `loaded` at start.
    pub fn new(
        pipeline: Pipeline,
        storage: Storage,
        speed: Arc<dyn SpeedSource>,
        loaded: HashMap<String, BatchView>,
    ) -> Self {
        Merger {
            pipeline,
            storage,
            speed,
            batch_views: RwLock::new(loaded.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()),
            merged_cache: Default::default(),
            merges: Default::default(),
            not_ready: Default::default(),
        }
    }

    /// The pipeline it serves.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The storage its tables are in.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The speed layer it reads.
    pub fn speed(&self) -> &Arc<dyn SpeedSource> {
        &self.speed
    }

    /// The batch view serving currently uses for `view`.
    pub async fn batch_view(&self, view: &str) -> Option<Arc<BatchView>> {
        self.batch_views.read().await.get(view).cloned()
    }

    /// Whether the batch states held for `view` were computed by another definition
    /// (its SQL or its stream's dedup rule changed since). Without waiting: `false`
    /// while the states are being swapped.
    pub fn holds_other_definition(&self, view: &CompiledView) -> bool {
        let dedup = self
            .pipeline
            .stream(&view.stream)
            .and_then(|s| s.dedup.as_ref());
        let Ok(held) = self.batch_views.try_read() else {
            return false;
        };
        held.get(&view.name)
            .and_then(|b| b.definition)
            .is_some_and(|d| d != views::definition_hash(view, dedup))
    }

    /// Answers of view `name` are refused with `reason` (`None`: it answers again).
    pub fn set_not_ready(&self, name: &str, reason: Option<NotReady>) {
        let mut held = self.not_ready.write().expect("readiness lock");
        match reason {
            Some(r) => held.insert(name.to_string(), r),
            None => held.remove(name),
        };
    }

    /// Why view `name` does not answer, if it does not.
    pub fn not_ready(&self, name: &str) -> Option<NotReady> {
        self.not_ready
            .read()
            .expect("readiness lock")
            .get(name)
            .cloned()
    }

    /// Forget what is held for view `name` (its batch view, its last merged rows): it
    /// was dropped, paused or replaced.
    pub async fn forget(&self, name: &str) {
        self.batch_views.write().await.remove(name);
        self.merged_cache
            .lock()
            .expect("merge cache lock")
            .remove(name);
    }

    /// A view whose batch states could not be read at start: it does not answer (the
    /// speed states alone would not be exact) until a refresh reads them.
    pub fn set_unreadable(&self, name: &str, error: &dyn std::fmt::Display) {
        let reason = format!(
            "unavailable: its batch states cannot be read ({error}); it answers once they can (repair or restore its table, or drop the view and create it again)"
        );
        self.set_not_ready(name, Some(NotReady::Unreadable(reason)));
    }

    /// Final plans run over merged states since start.
    pub fn merges(&self) -> u64 {
        self.merges.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The cell of `view`'s rows for `key`: the cached one if it is of this key, else a
    /// new one that replaces it (no key: a cell of this request alone).
    fn cell_for(&self, view: &str, key: Option<MergeKey>) -> MergeCell {
        let Some(key) = key else {
            return Default::default();
        };
        let mut cache = self.merged_cache.lock().expect("merge cache lock");
        match cache.get(view) {
            Some((k, cell)) if *k == key => cell.clone(),
            _ => {
                let cell = MergeCell::default();
                cache.insert(view.to_string(), (key, cell.clone()));
                cell
            }
        }
    }

    /// Load the newest batch views; then release speed segments they cover. One view's
    /// table that cannot be read does not hold back the others: they are all tried, and
    /// the first failure is returned.
    pub async fn refresh(&self) -> Result<(), ServingError> {
        let mut first_failure = None;
        for view in &self.pipeline.views {
            if let Err(e) = self.refresh_view(&view).await {
                tracing::warn!(view = %view.name, error = %e, "could not load the view's batch states");
                first_failure.get_or_insert(e);
            }
        }
        match first_failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Load `view`'s newest batch states if they are new and of its definition.
    async fn refresh_view(&self, view: &Arc<CompiledView>) -> Result<(), ServingError> {
        let current = self.batch_view(&view.name).await.map(|b| b.version);
        if let Some(loaded) = views::load(&self.storage, view).await? {
            let dedup = self
                .pipeline
                .stream(&view.stream)
                .and_then(|s| s.dedup.as_ref());
            // States of another definition of the name are left until the process that
            // replaced it removes them: never this view's.
            let ours = loaded
                .definition
                .is_none_or(|d| d == views::definition_hash(view, dedup));
            if Some(loaded.version) != current && ours {
                let cutoff = loaded.cutoff;
                self.batch_views
                    .write()
                    .await
                    .insert(view.name.clone(), Arc::new(loaded));
                // Only after the swap: no query can pair the old cutoff with released
                // states.
                if let Err(e) = self.speed.release(&view.name, cutoff).await {
                    tracing::warn!(view = %view.name, error = %e, "could not release speed segments");
                }
            }
        }
        // Only once states are in: without them it would answer from the speed states
        // alone, which may lack events the log no longer holds (a table removed to
        // repair it waits for the batch run that writes it anew).
        let unreadable = matches!(self.not_ready(&view.name), Some(NotReady::Unreadable(_)));
        if unreadable && self.batch_view(&view.name).await.is_some() {
            tracing::info!(view = %view.name, "the view's batch states can be read again");
            self.set_not_ready(&view.name, None);
        }
        Ok(())
    }

    /// The merged rows of a view (final plan over batch and speed states, `_src` last),
    /// with what the answer was read from.
    pub async fn merged(&self, view_name: &str) -> Result<Merged, ServingError> {
        match self.merged_once(view_name).await {
            // Another serving process moved to a newer batch view and the speed layer
            // dropped what this one's older view still needed: load the newer one.
            Err(ServingError::Query {
                source: tributary_core::CoreError::StaleCutoff { .. },
                ..
            }) => {
                tracing::info!(
                    view = view_name,
                    "the speed layer released states below a newer cutoff; loading the newer batch view"
                );
                self.refresh().await?;
                self.merged_once(view_name).await
            }
            other => other,
        }
    }

    async fn merged_once(&self, view_name: &str) -> Result<Merged, ServingError> {
        if let Some(why) = self.not_ready(view_name) {
            return Err(ServingError::not_ready(view_name, why));
        }
        let view = self
            .pipeline
            .view(view_name)
            .ok_or_else(|| ServingError::UnknownView(view_name.to_string()))?
            .clone();
        let (batch, speed, held, cutoff) = {
            let guard = self.batch_views.read().await;
            let batch = guard.get(view_name).cloned();
            let cutoff = batch.as_ref().map(|b| b.cutoff).unwrap_or(i64::MIN);
            // The answer held for this batch version, if any: when the speed states are
            // still of its generation they are not copied again, and this answer (not a
            // later lookup, which another request may have replaced) is the one used.
            // A cell still being computed counts too: the requests that arrive meanwhile
            // wait for it instead of each copying every speed state (which, at 20 k
            // requests/s, was a tenth of the server's time).
            let version = batch.as_ref().map(|b| b.version);
            let held = self
                .merged_cache
                .lock()
                .expect("merge cache lock")
                .get(view_name)
                .filter(|((v, _), _)| *v == version)
                .cloned();
            let speed = self
                .speed
                .snapshot(view_name, cutoff, held.as_ref().map(|((_, g), _)| *g))
                .await
                .map_err(|source| ServingError::Query {
                    view: view_name.to_string(),
                    source,
                })?;
            (batch, speed, held, cutoff)
        };
        if speed.revision != view.revision {
            return Err(ServingError::Query {
                view: view_name.to_string(),
                source: tributary_core::CoreError::RevisionMismatch {
                    view: view_name.to_string(),
                    what: "the speed layer".into(),
                    ours: view.revision,
                    theirs: speed.revision,
                },
            });
        }
        let key: Option<MergeKey> = speed
            .generation
            .map(|g| (batch.as_ref().map(|b| b.version), g));
        let (cell, copied) = match held.filter(|(k, _)| Some(*k) == key) {
            Some((_, cell)) => (cell, false),
            None => (self.cell_for(view_name, key), true),
        };
        let compute = || async {
            let mut states = batch.as_ref().map(|b| b.states.clone()).unwrap_or_default();
            if copied {
                states.extend(speed.states.iter().cloned());
            } else {
                // The held cell's computation failed, so its rows are computed here, from
                // states copied now (of this generation or a newer one over the same
                // cutoff: as exact, and fresher).
                let now = self.speed.snapshot(view_name, cutoff, None).await;
                let now = now.map_err(|source| ServingError::Query {
                    view: view_name.to_string(),
                    source,
                })?;
                states.extend(now.states);
            }
            self.merges
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (rows, failed) = finalize(&view, states).await?;
            Ok::<CachedRows, ServingError>((rows, failed, Default::default()))
        };
        let (rows, failed, json) = cell.get_or_try_init(compute).await?.clone();
        Ok(Merged {
            view,
            rows,
            failed,
            batch,
            speed,
            json,
        })
    }

    /// The merged answer of `view_name`, filtered, ordered and paged as `q` asks.
    pub async fn query(&self, view_name: &str, q: &ViewQuery) -> Result<ViewAnswer, ServingError> {
        if let Some(at) = &q.as_of {
            if let Some(why) = self.not_ready(view_name) {
                return Err(ServingError::not_ready(view_name, why));
            }
            return self.query_as_of(view_name, q, at).await;
        }
        let merged = self.merged(view_name).await?;
        let max_event_ts = merged
            .speed
            .max_event_ts
            .into_iter()
            .chain(merged.batch.as_ref().and_then(|b| b.max_event_ts))
            .max();
        let watermark = merged.view.watermark(max_event_ts);
        let missing = self.missing_partitions(&merged);
        // With a partition's speed states absent, no window can be called complete.
        let complete_below = watermark.filter(|_| missing.is_empty());
        let (total_rows, rows) = to_rows(
            merged
                .json
                .get_or_init(|| Arc::new(json_rows(&merged.view, &merged.rows, complete_below))),
            q,
        );
        let Merged {
            view,
            batch,
            speed,
            failed,
            ..
        } = merged;
        let next = q.offset + rows.len();
        let position = speed.ingest_position;
        Ok(ViewAnswer {
            view: view.name.clone(),
            cutoff: batch.as_ref().map(|b| rfc3339(b.cutoff)),
            speed_watermark: watermark.map(rfc3339),
            max_event_time: max_event_ts.map(rfc3339),
            speed_position: position.map(rfc3339),
            freshness_ms: position.map(|p| (now_micros() - p).max(0) / 1000),
            batch_version: batch.as_ref().map(|b| b.version),
            speed_missing_partitions: missing,
            failed_rows: failed.to_vec(),
            total_rows,
            next_offset: (next < total_rows).then_some(next),
            rows,
        })
    }

    /// The partitions of `merged`'s stream its speed states do not cover.
    pub fn missing_partitions(&self, merged: &Merged) -> Vec<u32> {
        let partitions = self
            .pipeline
            .stream(&merged.view.stream)
            .map_or(0, |s| s.partitions);
        merged.speed.missing_partitions(partitions)
    }
}

impl Merger {
    /// A view's answer from the batch states a past run left (the speed layer keeps no
    /// history): the Delta version `at` of its batch-view table, or the latest at a time.
    async fn query_as_of(
        &self,
        view_name: &str,
        q: &ViewQuery,
        at: &AsOf,
    ) -> Result<ViewAnswer, ServingError> {
        let view = self
            .pipeline
            .view(view_name)
            .ok_or_else(|| ServingError::UnknownView(view_name.to_string()))?;
        let batch = match views::load_as_of(&self.storage, &view, at).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                return Err(ServingError::bad(
                    "as_of",
                    format!("`{view_name}` had no batch states as of {at}"),
                ));
            }
            Err(e) => {
                return Err(ServingError::bad(
                    "as_of",
                    format!("`{view_name}` has no batch states as of {at}: {e}"),
                ));
            }
        };
        let (out, failed) = finalize(&view, batch.states).await?;
        let watermark = view.watermark(batch.max_event_ts);
        let (total_rows, rows) = to_rows(&json_rows(&view, &out, watermark), q);
        let next = q.offset + rows.len();
        Ok(ViewAnswer {
            view: view.name.clone(),
            cutoff: Some(rfc3339(batch.cutoff)),
            speed_watermark: watermark.map(rfc3339),
            max_event_time: batch.max_event_ts.map(rfc3339),
            speed_position: None,
            freshness_ms: None,
            batch_version: Some(batch.version),
            // A past batch version is whole by itself: no speed states join it.
            speed_missing_partitions: Vec::new(),
            failed_rows: failed.to_vec(),
            total_rows,
            next_offset: (next < total_rows).then_some(next),
            rows,
        })
    }
}

/// The view's final rows over `states`, and the groups left out as failing alone.
pub(crate) async fn finalize(
    view: &CompiledView,
    states: Vec<RecordBatch>,
) -> Result<(Vec<RecordBatch>, Arc<Vec<Value>>), ServingError> {
    let (rows, failed) = tributary_core::quarantine::finalize_isolating(view, states)
        .await
        .map_err(|source| ServingError::Query {
            view: view.name.clone(),
            source,
        })?;
    Ok((rows, Arc::new(crate::json::failed_rows(&failed))))
}
