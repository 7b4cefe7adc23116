//! Batch runs: pick a provably complete cutoff T, run every view's partial plan over
//! the master table's events with `_ingest_ts < T`, and commit the states with T.
//!
//! Choosing T (ARCHITECTURE.md, "The merge invariant"): `_ingest_ts` never decreases within a partition, so for a
//! partition whose archived position is `a` (from the master table's `txn` actions),
//! every event below the log's `ingest_ts_bound(a)` is archived: the stamp of the
//! first unarchived record, or, if there is none, a time every later append is
//! stamped at or after. T is the minimum over partitions, rounded down to the speed
//! layer's segment width so that serving can take whole speed segments at or above T.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{cast, col, lit};
use datafusion::scalar::ScalarValue;
use serde::Serialize;
use tokio::sync::{Mutex, watch};
use tributary_core::log::EventLog;
use tributary_core::pipeline::Pipeline;
use tributary_core::schema::{INGEST_TS, StreamSchema, UTC};
use tributary_core::storage::Storage;
use tributary_core::time::{now_micros, rfc3339};
use tributary_core::view::{CompiledView, SOURCE_BATCH, SOURCE_COLUMN};

use crate::archiver::{archived_positions, open_master};
use crate::dedup::without_repeats;
use crate::error::BatchError;
use crate::history::{append_history, load_history};
use crate::isolate::{is_storage_error, partial_isolating_stream};
use crate::scan::{Meter, MeteredTable, range_files};
use crate::views;

/// A full run recomputes every view from the whole master table; an incremental one
/// merges the states of the events since each view's last cutoff into its states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Full,
    Incremental,
}

impl RunKind {
    pub fn name(self) -> &'static str {
        match self {
            RunKind::Full => "full",
            RunKind::Incremental => "incremental",
        }
    }

    pub fn parse(s: &str) -> Option<RunKind> {
        match s {
            "full" => Some(RunKind::Full),
            "incremental" => Some(RunKind::Incremental),
            _ => None,
        }
    }
}

/// Progress of a run, reported as it goes (for progress bars and the API).
pub trait Progress: Send + Sync {
    fn stage(&self, message: &str, done: u64, total: u64);
}

impl<F: Fn(&str, u64, u64) + Send + Sync> Progress for F {
    fn stage(&self, message: &str, done: u64, total: u64) {
        self(message, done, total)
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
}

/// One batch run, as the run history shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub kind: String,
    pub views: Vec<String>,
    pub status: RunStatus,
    pub cutoff: Option<String>,
    pub cutoff_micros: Option<i64>,
    /// Events the run read from the master table.
    pub rows_in: u64,
    /// State rows it wrote (an incremental run: those of the window days it replaced).
    pub rows_out: u64,
    /// Data files it wrote to the batch-view tables.
    #[serde(default)]
    pub files: u64,
    pub started_at: String,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
    /// Where a running run is; the last stage reached once it has ended.
    #[serde(default)]
    pub progress: Option<RunProgress>,
    /// How many times it ran: transient storage errors are retried with backoff.
    #[serde(default = "one")]
    pub attempts: u32,
}

fn one() -> u32 {
    1
}

/// What a successful run did: its (smallest) cutoff and its counts.
struct Done {
    cutoff: i64,
    rows_in: u64,
    rows_out: u64,
    files: u64,
}

/// A run is tried this many times at most, waiting [`RETRY_BACKOFF`], then twice that, …
const RUN_ATTEMPTS: u32 = 3;
const RETRY_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// A run's current stage, out of `total`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RunProgress {
    pub stage: String,
    pub done: u64,
    pub total: u64,
}

/// The batch layer's run coordinator: one run at a time, a history of runs, and a
/// signal for readers when a run commits.
pub struct Batch {
    pipeline: Pipeline,
    storage: Storage,
    log: Arc<dyn EventLog>,
    segment_width: i64,
    running: Arc<Mutex<()>>,
    history: std::sync::Mutex<Vec<RunRecord>>,
    next_id: AtomicU64,
    committed: watch::Sender<u64>,
    maintenance: crate::maintenance::Settings,
    /// The last log-retention pass, for status.
    retention: std::sync::Mutex<Option<crate::retention::RetentionReport>>,
    /// Finished runs kept in the history (`batch.history-limit`).
    history_limit: usize,
}

impl Batch {
    /// One log-retention pass (see [`crate::retention`]); its report is kept for status.
    pub async fn enforce_retention(&self, hours: u64, mb: u64) -> Result<(), BatchError> {
        let report =
            crate::retention::enforce(&self.pipeline, &self.storage, &self.log, hours, mb).await?;
        if report.removed_records > 0 {
            tracing::info!(
                removed = report.removed_records,
                "log retention removed archived records"
            );
        }
        if report.over_size_and_blocked {
            tracing::warn!(waiting_for = ?report.waiting_for, "the log is over log.retention-mb and nothing is safe to remove yet");
        }
        *self.retention.lock().expect("retention lock") = Some(report);
        Ok(())
    }

    /// The last retention pass's report, if one ran.
    pub fn retention(&self) -> Option<crate::retention::RetentionReport> {
        self.retention.lock().expect("retention lock").clone()
    }

    pub fn new(
        pipeline: Pipeline,
        storage: Storage,
        log: Arc<dyn EventLog>,
        segment_width_ms: u64,
    ) -> Self {
        let (committed, _) = watch::channel(0);
        let history = load_history(&storage, crate::history::DEFAULT_LIMIT);
        let history_len = history.len() as u64;
        Batch {
            pipeline,
            storage,
            log,
            segment_width: segment_width_ms.max(1) as i64 * 1000,
            running: Arc::new(Mutex::new(())),
            history: std::sync::Mutex::new(history),
            next_id: AtomicU64::new(history_len + 1),
            committed,
            maintenance: Default::default(),
            retention: std::sync::Mutex::new(None),
            history_limit: crate::history::DEFAULT_LIMIT,
        }
    }

    /// Keep at most `limit` finished runs in the history (older ones are forgotten,
    /// in memory and in the history file).
    pub fn with_history_limit(mut self, limit: usize) -> Self {
        self.history_limit = limit.max(1);
        let history = load_history(&self.storage, self.history_limit);
        *self.history.lock().expect("history lock") = history;
        self
    }

    /// How [`Batch::maintain`] compacts and vacuums.
    pub fn with_maintenance(mut self, settings: crate::maintenance::Settings) -> Self {
        self.maintenance = settings;
        self
    }

    /// Compact, checkpoint and vacuum every table once, waiting for a running batch run
    /// to end first (they never overlap).
    pub async fn maintain(&self) -> Result<Vec<crate::maintenance::TableReport>, BatchError> {
        let _guard = self.running.lock().await;
        crate::maintenance::run_once(&self.storage, &self.pipeline, self.maintenance).await
    }

    /// Changes each time a run commits new batch views.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    pub fn history(&self) -> Vec<RunRecord> {
        let mut h = self.history.lock().expect("history lock").clone();
        h.reverse();
        h
    }

    pub fn run_record(&self, id: &str) -> Option<RunRecord> {
        self.history
            .lock()
            .expect("history lock")
            .iter()
            .find(|r| r.id == id)
            .cloned()
    }

    /// Start a run now, or refuse if one is running. The returned id names it in the
    /// history; the future completes when the run ends.
    pub fn try_start(
        self: &Arc<Self>,
        kind: RunKind,
        progress: Arc<dyn Progress>,
    ) -> Result<
        (
            String,
            impl Future<Output = Result<RunRecord, BatchError>> + use<>,
        ),
        BatchError,
    > {
        self.try_start_views(kind, None, progress)
    }

    /// [`Batch::try_start`] for some views only (`None`: every view). An unknown view is
    /// refused with the names there are.
    pub fn try_start_views(
        self: &Arc<Self>,
        kind: RunKind,
        only: Option<Vec<String>>,
        progress: Arc<dyn Progress>,
    ) -> Result<
        (
            String,
            impl Future<Output = Result<RunRecord, BatchError>> + use<>,
        ),
        BatchError,
    > {
        let names: Vec<String> = match only {
            None => self.pipeline.views.iter().map(|v| v.name.clone()).collect(),
            Some(names) => {
                if let Some(unknown) = names.iter().find(|n| self.pipeline.view(n).is_none()) {
                    let known: Vec<_> = self
                        .pipeline
                        .views
                        .iter()
                        .map(|v| v.name.as_str())
                        .collect();
                    return Err(BatchError::View(
                        unknown.clone(),
                        format!("no such view; there are: {}", known.join(", ")),
                    ));
                }
                names
            }
        };
        let guard = self
            .running
            .clone()
            .try_lock_owned()
            .map_err(|_| BatchError::RunInProgress)?;
        let id = format!(
            "run-{}-{}",
            Utc::now().format("%Y%m%dT%H%M%S"),
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let record = RunRecord {
            id: id.clone(),
            kind: kind.name().into(),
            views: names.clone(),
            status: RunStatus::Running,
            cutoff: None,
            cutoff_micros: None,
            rows_in: 0,
            rows_out: 0,
            files: 0,
            started_at: rfc3339(now_micros()),
            duration_ms: None,
            error: None,
            progress: None,
            attempts: 1,
        };
        {
            let mut history = self.history.lock().expect("history lock");
            history.push(record);
            crate::history::trim(&mut history, self.history_limit);
        }
        let this = self.clone();
        let run_id = id.clone();
        let fut = async move {
            let _guard = guard;
            let started = std::time::Instant::now();
            let tracked = |stage: &str, done: u64, total: u64| {
                this.set_progress(&run_id, stage, done, total);
                progress.stage(stage, done, total);
            };
            let mut attempt = 1;
            let result = loop {
                match this.run(&run_id, kind, &names, &tracked).await {
                    // Storage and log hiccups pass; a run is all-or-nothing (each view's
                    // states commit with their cutoff), so trying again is safe.
                    Err(e) if e.is_transient() && attempt < RUN_ATTEMPTS => {
                        let wait = RETRY_BACKOFF * 2u32.pow(attempt - 1);
                        tracing::warn!(run = %run_id, attempt, error = %e, ?wait, "batch run failed; retrying");
                        tracked(&format!("retrying in {wait:?} after: {e}"), 0, 1);
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    other => break other,
                }
            };
            let mut history = this.history.lock().expect("history lock");
            let rec = history
                .iter_mut()
                .find(|r| r.id == run_id)
                .expect("run recorded at start");
            rec.duration_ms = Some(started.elapsed().as_millis() as u64);
            rec.attempts = attempt;
            match &result {
                Ok(done) => {
                    rec.status = RunStatus::Succeeded;
                    rec.cutoff = Some(rfc3339(done.cutoff));
                    rec.cutoff_micros = Some(done.cutoff);
                    rec.rows_in = done.rows_in;
                    rec.rows_out = done.rows_out;
                    rec.files = done.files;
                }
                Err(e) => {
                    rec.status = RunStatus::Failed;
                    rec.error = Some(e.to_string());
                }
            }
            let rec = rec.clone();
            drop(history);
            if let Err(e) = append_history(&this.storage, &rec) {
                tracing::warn!(error = %e, run = %rec.id, "could not record the run in the history file");
            }
            if result.is_ok() {
                this.committed.send_modify(|n| *n += 1);
            }
            result.map(|_| rec)
        };
        Ok((id, fut))
    }

    fn set_progress(&self, id: &str, stage: &str, done: u64, total: u64) {
        if let Some(rec) = self
            .history
            .lock()
            .expect("history lock")
            .iter_mut()
            .find(|r| r.id == id)
        {
            rec.progress = Some(RunProgress {
                stage: stage.to_string(),
                done,
                total,
            });
        }
    }

    /// How many records of `stream` the log holds that the archiver has not yet
    /// committed to the master table, per partition.
    pub async fn archiver_lag(&self, stream: &StreamSchema) -> Result<Vec<u64>, BatchError> {
        let master = open_master(&self.storage, &stream.name).await?;
        let archived = archived_positions(master.as_ref(), stream).await?;
        let mut lag = Vec::with_capacity(archived.len());
        for (p, pos) in archived.iter().enumerate() {
            let end = self
                .log
                .end_offset(&stream.name, p as u32)
                .await
                .map_err(|e| BatchError::Log(stream.name.clone(), e))?;
            lag.push(end.saturating_sub(*pos));
        }
        Ok(lag)
    }

    fn stream_of(&self, view: &CompiledView) -> &StreamSchema {
        self.pipeline
            .streams
            .iter()
            .find(|s| s.name == view.stream)
            .expect("views read declared streams")
    }

    async fn run(
        &self,
        run_id: &str,
        kind: RunKind,
        only: &[String],
        progress: &dyn Progress,
    ) -> Result<Done, BatchError> {
        let views: Vec<&CompiledView> = self
            .pipeline
            .views
            .iter()
            .filter(|v| only.contains(&v.name))
            .map(|v| v.as_ref())
            .collect();
        let total = views.len() as u64 + 1;
        progress.stage("choosing the cutoff", 0, total);
        self.pipeline.refresh_tables().await;
        let mut cutoffs = std::collections::HashMap::new();
        for s in &self.pipeline.streams {
            cutoffs.insert(s.name.clone(), self.stream_cutoff(s).await?);
        }
        let mut done = Done {
            cutoff: i64::MAX,
            rows_in: 0,
            rows_out: 0,
            files: 0,
        };
        for (i, view) in views.into_iter().enumerate() {
            let stream = self.stream_of(view);
            let definition = views::definition_hash(view, stream.dedup.as_ref());
            let previous = match kind {
                RunKind::Full => None,
                RunKind::Incremental => views::head(&self.storage, view).await?,
            };
            // Incremental only on top of states of the same definition; anything else
            // (no states yet, SQL or dedup rule changed) is a full recompute of the view.
            let (base, why_full) = match previous {
                _ if kind == RunKind::Full => (None, "requested"),
                None => (None, "no batch states yet"),
                Some(p) if p.definition != Some(definition) => (None, "definition changed"),
                Some(p) => (Some(p), ""),
            };
            let mut cutoff = cutoffs[&view.stream];
            // Never move a view's cutoff backwards (a clock step back could).
            let prev_cutoff = match &base {
                Some(b) => Some(b.cutoff),
                None => views::load_cutoff(&self.storage, view).await?,
            };
            if let Some(prev) = prev_cutoff {
                cutoff = cutoff.max(prev);
            }
            done.cutoff = done.cutoff.min(cutoff);
            let verr =
                |e: tributary_core::CoreError| BatchError::View(view.name.clone(), e.to_string());
            let (states, scope, n, max_event_ts, view_kind) = match base {
                Some(b) if b.cutoff == cutoff => {
                    progress.stage(
                        &format!("view {}: nothing new", view.name),
                        i as u64 + 1,
                        total,
                    );
                    continue;
                }
                Some(b) => {
                    progress.stage(
                        &format!("view {}: incremental", view.name),
                        i as u64 + 1,
                        total,
                    );
                    let (new, n, max) = self
                        .partial_over_master(view, Some(b.cutoff), cutoff)
                        .await?;
                    // Only the window days the new events fall in are read, merged and
                    // replaced (all of a table from before the day partitions).
                    let scope = if b.by_day {
                        views::Scope::Days(views::days_of(view, &new)?)
                    } else {
                        views::Scope::All
                    };
                    let days = match &scope {
                        views::Scope::Days(d) => Some(d.as_slice()),
                        views::Scope::All => None,
                    };
                    let mut all = views::load_days(&self.storage, view, days).await?;
                    all.extend(new);
                    let merged = view.reduce(all).await.map_err(verr)?;
                    (merged, scope, n, max.max(b.max_event_ts), "incremental")
                }
                None => {
                    progress.stage(
                        &format!("view {}: full ({why_full})", view.name),
                        i as u64 + 1,
                        total,
                    );
                    let (states, n, max) = self.partial_over_master(view, None, cutoff).await?;
                    (states, views::Scope::All, n, max, "full")
                }
            };
            done.rows_in += n;
            done.rows_out += states.iter().map(|b| b.num_rows() as u64).sum::<u64>();
            let stamp = views::Stamp {
                cutoff,
                max_event_ts,
                definition,
                run_id,
                kind: view_kind,
            };
            done.files += views::write(&self.storage, view, stamp, scope, states)
                .await?
                .files;
        }
        progress.stage("done", total, total);
        Ok(done)
    }

    /// The largest T (aligned to segment width) such that every event of `stream`
    /// with `_ingest_ts < T` is in the master table.
    pub async fn stream_cutoff(&self, stream: &StreamSchema) -> Result<i64, BatchError> {
        let master = open_master(&self.storage, &stream.name).await?;
        let archived = archived_positions(master.as_ref(), stream).await?;
        let mut bound = i64::MAX;
        for (p, a) in archived.iter().enumerate() {
            let b = self
                .log
                .ingest_ts_bound(&stream.name, p as u32, *a)
                .await
                .map_err(|e| BatchError::Log(stream.name.clone(), e))?;
            bound = bound.min(b);
        }
        Ok(bound - bound.rem_euclid(self.segment_width))
    }

    /// The view's partial states over the master table's events with `_ingest_ts` in
    /// `[from, cutoff)` (from the beginning when `from` is `None`), how many events that
    /// was, and the newest event time among them.
    async fn partial_over_master(
        &self,
        view: &CompiledView,
        from: Option<i64>,
        cutoff: i64,
    ) -> Result<(Vec<RecordBatch>, u64, Option<i64>), BatchError> {
        let verr = |e: datafusion::error::DataFusionError| {
            BatchError::View(view.name.clone(), e.to_string())
        };
        let Some(master) = open_master(&self.storage, &view.stream).await? else {
            return Ok((Vec::new(), 0, None));
        };
        let stream = self.stream_of(view);
        let ts = |t: i64| lit(ScalarValue::TimestampMicrosecond(Some(t), Some(UTC.into())));
        let cutoff_lit = ts(cutoff);
        let in_range = match from {
            Some(f) => col(INGEST_TS)
                .gt_eq(ts(f))
                .and(col(INGEST_TS).lt(cutoff_lit.clone())),
            None => col(INGEST_TS).lt(cutoff_lit.clone()),
        };
        let columns: Vec<_> = view
            .input_schema
            .fields()
            .iter()
            .filter(|f| f.name() != SOURCE_COLUMN)
            // Exactly the speed layer's input types: Parquet hands strings back as
            // views, and some sketches (approx_distinct) hash views and strings apart.
            .map(|f| cast(col(f.name().as_str()), f.data_type().clone()).alias(f.name()))
            .chain(std::iter::once(lit(SOURCE_BATCH).alias(SOURCE_COLUMN)))
            .collect();
        let what = || format!("master table of `{}`", view.stream);
        // An ordinary session plans the read (the file scan split over every core, the
        // dedup rule's sort); strings come as plain Utf8, the speed layer's type, so
        // sketches hash them alike.
        let mut config = datafusion::prelude::SessionConfig::new();
        config
            .options_mut()
            .execution
            .parquet
            .schema_force_view_types = false;
        let reader = datafusion::prelude::SessionContext::new_with_config_rt(
            config,
            tributary_core::cloud::runtime(),
        );
        master
            .update_datafusion_session(&reader.state())
            .map_err(|e| BatchError::delta(what(), e))?;
        let provider = |files: Option<Vec<String>>| {
            let mut builder = master
                .table_provider()
                .with_session(Arc::new(reader.state()));
            if let Some(files) = files {
                builder = builder.with_file_paths(files);
            }
            builder
        };
        let df = match &stream.dedup {
            None => {
                // Files wholly inside the range skip the range filter; only those on
                // its edges go through it.
                let files =
                    range_files(&master, from, cutoff).map_err(|e| BatchError::delta(what(), e))?;
                let mut parts = Vec::new();
                for (paths, filtered) in [(files.inside, false), (files.edge, true)] {
                    if paths.is_empty() {
                        continue;
                    }
                    let table = provider(Some(paths))
                        .await
                        .map_err(|e| BatchError::delta(what(), e))?;
                    let part = reader.read_table(table).map_err(verr)?;
                    let part = if filtered {
                        part.filter(in_range.clone()).map_err(verr)?
                    } else {
                        part
                    };
                    parts.push(part.select(columns.clone()).map_err(verr)?);
                }
                let mut parts = parts.into_iter();
                let Some(first) = parts.next() else {
                    return Ok((Vec::new(), 0, None));
                };
                parts
                    .try_fold(first, |all, part| all.union(part))
                    .map_err(verr)?
            }
            Some(spec) => {
                let rows = reader
                    .read_table(
                        provider(None)
                            .await
                            .map_err(|e| BatchError::delta(what(), e))?,
                    )
                    .map_err(verr)?;
                // The rule looks back one horizon: an incremental run reads that much
                // before its range so a repeat of an older copy is still dropped.
                let window = match from.map(|f| f - spec.horizon_us) {
                    Some(f) => col(INGEST_TS)
                        .gt_eq(ts(f))
                        .and(col(INGEST_TS).lt(cutoff_lit.clone())),
                    None => col(INGEST_TS).lt(cutoff_lit.clone()),
                };
                rows.filter(window)
                    .and_then(|df| without_repeats(df, spec))
                    .and_then(|df| df.filter(in_range))
                    .and_then(|df| df.select(columns))
                    .map_err(verr)?
            }
        };
        let meter = Arc::new(Meter::default());
        let table = MeteredTable::new(
            df.clone(),
            &view.event_time,
            stream.max_event_lead_us,
            meter.clone(),
        );
        let states = match view.run_partial(Arc::new(table)).await {
            Ok(states) => states,
            Err(e) if !is_storage_error(&e) => {
                // A row the view cannot process must not fail every run for ever: go
                // through the rows again, setting aside those that fail alone, as the
                // speed layer does (core::quarantine), so both layers leave out the
                // same records.
                tracing::warn!(view = %view.name, error = %e, "batch run failed on its rows; isolating them");
                let meter = Arc::new(Meter::default());
                let table = MeteredTable::new(
                    df,
                    &view.event_time,
                    stream.max_event_lead_us,
                    meter.clone(),
                );
                let states = partial_isolating_stream(view, Arc::new(table)).await?;
                let (rows, max_event_ts) = meter.read();
                return Ok((states, rows, max_event_ts));
            }
            Err(e) => return Err(BatchError::View(view.name.clone(), e.to_string())),
        };
        let (rows, max_event_ts) = meter.read();
        Ok((states, rows, max_event_ts))
    }
}
