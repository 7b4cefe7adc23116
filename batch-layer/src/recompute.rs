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

use std::collections::HashMap;

use chrono::Utc;
use tokio::sync::{Mutex, watch};
use tributary_core::log::EventLog;
use tributary_core::pipeline::Pipeline;
use tributary_core::schema::StreamSchema;
use tributary_core::storage::Storage;
use tributary_core::time::rfc3339;
use tributary_core::view::CompiledView;

use crate::archiver::{archived_positions, open_master};
use crate::engine::Engine;
use crate::error::BatchError;
use crate::history::{append_history, load_history};
use crate::run::{Progress, RunKind, RunProgress, RunRecord, RunStatus};
use crate::view_run::Masters;

/// What a successful run did: its (smallest) cutoff and its counts.
pub(crate) struct Done {
    pub(crate) cutoff: i64,
    pub(crate) rows_in: u64,
    pub(crate) rows_out: u64,
    pub(crate) files: u64,
}

/// A run is tried this many times at most, waiting [`RETRY_BACKOFF`], then twice that, …
const RUN_ATTEMPTS: u32 = 3;
const RETRY_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// The batch layer's run coordinator: one run at a time, a history of runs, and a
/// signal for readers when a run commits.
pub struct Batch {
    pipeline: Pipeline,
    storage: Storage,
    /// The event log: cutoffs are read from it, and the archiver's lag (`lag.rs`).
    pub(crate) log: Arc<dyn EventLog>,
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
    /// Where runs execute their partial plans (`batch.engine`).
    engine: Engine,
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

    /// The coordinator of batch runs over `pipeline`'s views (cutoffs aligned to `segment_width_ms`).
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
            engine: Engine::Local,
        }
    }

    /// Run partial plans on `engine` rather than in this process.
    pub fn with_engine(mut self, engine: Engine) -> Self {
        self.engine = engine;
        self
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

    /// Runs so far, newest first.
    pub fn history(&self) -> Vec<RunRecord> {
        let mut h = self.history.lock().expect("history lock").clone();
        h.reverse();
        h
    }

    /// The run called `id`.
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
        let names = self.view_names(only)?;
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
        {
            let mut history = self.history.lock().expect("history lock");
            history.push(RunRecord::started(
                &id,
                kind,
                names.clone(),
                self.engine.name(),
            ));
            crate::history::trim(&mut history, self.history_limit);
        }
        let this = self.clone();
        let run_id = id.clone();
        let fut = async move {
            let _guard = guard;
            let started = std::time::Instant::now();
            if let Engine::Ballista(cluster) = &this.engine {
                // Jobs of a run that was refused before this one started are not its.
                cluster.take_usage();
            }
            let tracked = |stage: &str, done: u64, total: u64| {
                this.set_progress(&run_id, stage, done, total);
                progress.stage(stage, done, total);
            };
            let (result, attempts) = this.run_with_retries(&run_id, kind, &names, &tracked).await;
            let rec = this.finish(&run_id, started, attempts, &result);
            result.map(|_| rec)
        };
        Ok((id, fut))
    }

    /// The views a run covers: `only`, each checked, or every view.
    fn view_names(&self, only: Option<Vec<String>>) -> Result<Vec<String>, BatchError> {
        let Some(names) = only else {
            return Ok(self.pipeline.views.iter().map(|v| v.name.clone()).collect());
        };
        if let Some(unknown) = names.iter().find(|n| self.pipeline.view(n).is_none()) {
            let known: Vec<_> = self.pipeline.views.iter().map(|v| v.name.clone()).collect();
            return Err(BatchError::View(
                unknown.clone(),
                format!("no such view; there are: {}", known.join(", ")),
            ));
        }
        Ok(names)
    }

    /// The run, tried again after transient failures; its result and the attempts made.
    async fn run_with_retries(
        &self,
        run_id: &str,
        kind: RunKind,
        names: &[String],
        progress: &dyn Progress,
    ) -> (Result<Done, BatchError>, u32) {
        let mut attempt = 1;
        loop {
            match self.run(run_id, kind, names, progress).await {
                // Storage and log hiccups pass; a run is all-or-nothing (each view's
                // states commit with their cutoff), so trying again is safe.
                Err(e) if e.is_transient() && attempt < RUN_ATTEMPTS => {
                    let wait = RETRY_BACKOFF * 2u32.pow(attempt - 1);
                    tracing::warn!(run = %run_id, attempt, error = %e, ?wait, "batch run failed; retrying");
                    progress.stage(&format!("retrying in {wait:?} after: {e}"), 0, 1);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return (other, attempt),
            }
        }
    }

    /// Record how the run ended (in memory and in the history file) and tell readers
    /// when it committed.
    fn finish(
        &self,
        run_id: &str,
        started: std::time::Instant,
        attempts: u32,
        result: &Result<Done, BatchError>,
    ) -> RunRecord {
        let mut history = self.history.lock().expect("history lock");
        let rec = history
            .iter_mut()
            .find(|r| r.id == run_id)
            .expect("run recorded at start");
        rec.duration_ms = Some(started.elapsed().as_millis() as u64);
        rec.attempts = attempts;
        if let Engine::Ballista(cluster) = &self.engine {
            let usage = cluster.take_usage();
            if usage.fell_back.is_some() {
                rec.engine = Engine::Local.name().into();
            }
            rec.cluster = Some(usage);
        }
        match result {
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
        if let Err(e) = append_history(&self.storage, &rec) {
            tracing::warn!(error = %e, run = %rec.id, "could not record the run in the history file");
        }
        if result.is_ok() {
            self.committed.send_modify(|n| *n += 1);
        }
        rec
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

    pub(crate) fn stream_of(&self, view: &CompiledView) -> &StreamSchema {
        self.stream_named(&view.stream)
    }

    pub(crate) fn stream_named(&self, name: &str) -> &StreamSchema {
        self.pipeline
            .streams
            .iter()
            .find(|s| s.name == name)
            .expect("views read declared streams")
    }

    async fn run(
        &self,
        run_id: &str,
        kind: RunKind,
        only: &[String],
        progress: &dyn Progress,
    ) -> Result<Done, BatchError> {
        let held: Vec<Arc<CompiledView>> = self
            .pipeline
            .views
            .iter()
            .filter(|v| only.contains(&v.name))
            .collect();
        let views: Vec<&CompiledView> = held.iter().map(|v| v.as_ref()).collect();
        let total = views.len() as u64 + 1;
        progress.stage("choosing the cutoff", 0, total);
        self.pipeline.refresh_tables().await;
        let mut cutoffs = HashMap::new();
        let mut masters = Masters::new();
        let t = std::time::Instant::now();
        for s in &self.pipeline.streams {
            let master = open_master(&self.storage, &s.name).await?;
            cutoffs.insert(s.name.clone(), self.cutoff_of(s, master.as_ref()).await?);
            masters.insert(s.name.clone(), master);
        }
        tracing::debug!(
            run = run_id,
            ms = crate::view_run::ms(t),
            "stream cutoffs chosen"
        );
        let mut done = Done {
            cutoff: i64::MAX,
            rows_in: 0,
            rows_out: 0,
            files: 0,
        };
        // One view that fails (a damaged table) must not hold back the others: each is
        // run, and the run reports the first failure once all have been tried.
        let mut first_failure = None;
        for (i, view) in views.into_iter().enumerate() {
            let step = |what: &str| {
                progress.stage(&format!("view {}: {what}", view.name), i as u64 + 1, total)
            };
            // A view joining two streams is complete below the cutoff of both.
            let stream_cutoff = match view.stream_join() {
                Some(j) => cutoffs[&view.stream].min(cutoffs[&j.other]),
                None => cutoffs[&view.stream],
            };
            let ran = self
                .run_view(
                    run_id,
                    view,
                    kind,
                    (stream_cutoff, &masters),
                    &step,
                    &mut done,
                )
                .await;
            if let Err(e) = ran {
                tracing::warn!(run = run_id, view = %view.name, error = %e, "a view of the batch run failed; running the others");
                first_failure.get_or_insert(e);
            }
        }
        progress.stage("done", total, total);
        match first_failure {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// Where runs execute their partial plans.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The storage the runs read and write.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The pipeline whose views the runs compute.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The largest T (aligned to segment width) such that every event of `stream`
    /// with `_ingest_ts < T` is in the master table.
    pub async fn stream_cutoff(&self, stream: &StreamSchema) -> Result<i64, BatchError> {
        let master = open_master(&self.storage, &stream.name).await?;
        self.cutoff_of(stream, master.as_ref()).await
    }

    /// [`Batch::stream_cutoff`] as `master`, a snapshot of the stream's master table,
    /// proves it.
    async fn cutoff_of(
        &self,
        stream: &StreamSchema,
        master: Option<&deltalake::DeltaTable>,
    ) -> Result<i64, BatchError> {
        let archived = archived_positions(master, stream).await?;
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
}
