//! Views as managed queries: created, replaced, paused, resumed and dropped at runtime,
//! each change a row of the catalog (`core/src/catalog/`).
//!
//! A new (or resumed, or replaced) view is exact from the moment it answers. Its speed
//! store starts at a segment boundary X above everything the speed layer had read of
//! the stream (`speed-layer/src/consume.rs`, `sync_views`); the backfill here waits
//! until the archiver has passed X, runs the batch layer for the view alone over the
//! master table (cutoff C ≥ X), and only then lets the view answer: batch below C plus
//! speed at or above C holds every event once, as for any view. Until then the merger
//! refuses its answers (`ViewNotReady`, 503) with the backfill's progress.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Mutex;
use tributary_batch::{Batch, BatchError, RunKind};
use tributary_core::catalog::{Catalog, Lifecycle, Reconciled, ViewRecord};
use tributary_core::config::ViewConfig;
use tributary_core::shutdown::{Shutdown, TaskSet};
use tributary_core::time::{now_micros, rfc3339};
use tributary_core::view::CompiledView;

use crate::error::ServingError;
use crate::merge::{Merger, NotReady};

mod follow;
mod schedules;

/// A view's state as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ViewStatus {
    /// The view.
    pub name: String,
    /// `backfilling`, `running`, `paused` or `failed`.
    pub state: String,
    /// Its SQL.
    pub sql: String,
    /// Its allowed lateness.
    pub allowed_lateness_ms: u64,
    /// Its own cron schedule of incremental runs (UTC), if it has one.
    pub schedule: Option<String>,
    /// Its catalog revision (1 for the first definition of the name).
    pub revision: i64,
    /// Why it failed, or what its backfill last met.
    pub error: Option<String>,
    /// While backfilling: where it stands.
    pub backfill: Option<Backfill>,
}

/// How far a view's backfill has come.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Backfill {
    /// The speed layer holds the view's events from this ingest time on.
    pub speed_holds_from: Option<String>,
    /// The master table holds every event below this ingest time.
    pub archived_to: Option<String>,
    /// What it waits for now.
    pub stage: String,
}

/// Runtime changes to views, and each view's state.
pub struct ViewManager {
    catalog: Catalog,
    merger: Arc<Merger>,
    batch: Arc<Batch>,
    /// Each cataloged view's state, by name (dropped ones are gone).
    states: std::sync::Mutex<BTreeMap<String, ViewStatus>>,
    /// One change at a time: a change reads the catalog, then appends to it.
    changes: Mutex<()>,
    /// Backfills run here, so shutdown waits for them.
    tasks: TaskSet,
    /// Each view's own schedule that runs now, by view name.
    schedules: schedules::Schedules,
    shutdown: Shutdown,
}

/// A definition as the API takes it.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// The view's name (letters, digits and `_`).
    pub name: String,
    /// A windowed aggregate over one stream, as in the configuration file.
    pub sql: String,
    /// Watermark = newest event time minus this.
    #[serde(default)]
    pub allowed_lateness_ms: u64,
    /// Incremental runs of this view alone on a cron schedule (UTC; 5 fields, or 6
    /// with seconds), besides any `batch.schedule` for every view.
    #[serde(default)]
    pub schedule: Option<String>,
}

fn status(r: &ViewRecord, state: &str) -> ViewStatus {
    ViewStatus {
        name: r.name.clone(),
        state: state.into(),
        sql: r.sql.clone(),
        allowed_lateness_ms: r.allowed_lateness_ms,
        schedule: r.schedule.clone(),
        revision: r.revision,
        error: None,
        backfill: None,
    }
}

impl ViewManager {
    /// The manager of a serving process over `catalog`.
    pub fn new(
        catalog: Catalog,
        merger: Arc<Merger>,
        batch: Arc<Batch>,
        (tasks, shutdown): (TaskSet, Shutdown),
    ) -> Arc<Self> {
        Arc::new(ViewManager {
            catalog,
            merger,
            batch,
            states: Default::default(),
            changes: Mutex::new(()),
            tasks,
            shutdown,
            schedules: Default::default(),
        })
    }

    /// Take start-up's view of the catalog: states for every view (before the API
    /// answers), then backfills for views made through the API that have no batch
    /// states yet, and for views whose batch states cannot be merged with what the
    /// speed layer holds ([`ViewManager::needs_backfill`]).
    pub fn start(self: &Arc<Self>, reconciled: Reconciled) -> impl Future<Output = ()> + use<> {
        self.reschedule(&reconciled.current);
        for r in &reconciled.current {
            let running = self.merger.pipeline().view(&r.name);
            let s = match (r.lifecycle, &running) {
                (Lifecycle::Running, Some(_)) => status(r, "running"),
                (Lifecycle::Paused, _) => status(r, "paused"),
                _ => continue,
            };
            self.set(s);
        }
        for (r, why) in reconciled.failed {
            self.fail(&r, why);
        }
        // Before the API answers: batch states of another definition are never merged.
        let stale: Vec<Arc<CompiledView>> = (self.merger.pipeline().views.iter())
            .filter(|v| self.merger.holds_other_definition(v))
            .collect();
        for v in &stale {
            self.merger.set_not_ready(&v.name, Some(backfilling()));
        }
        for r in reconciled.paused {
            self.merger.set_not_ready(&r.name, Some(paused()));
        }
        let this = self.clone();
        async move {
            for name in reconciled.from_api {
                let Some(view) = this.merger.pipeline().view(&name) else {
                    continue;
                };
                if this.merger.batch_view(&name).await.is_none() {
                    this.begin_backfill(view, "made through the API, no batch states yet")
                        .await;
                }
            }
            for view in stale {
                this.begin_backfill(view, "batch states of another definition")
                    .await;
            }
            for view in this.merger.pipeline().views.iter() {
                if this.merger.not_ready(&view.name).is_none() && this.needs_backfill(&view).await {
                    this.begin_backfill(
                        view,
                        "the speed layer holds it from above its batch cutoff",
                    )
                    .await;
                }
            }
        }
    }

    /// Whether `view`'s answers need a backfill first: its batch states are of another
    /// definition (its SQL changed in the file since they were computed), or the speed
    /// layer holds it only from above their cutoff (a speed process followed a change
    /// this process took from the file, from a point the batch states do not reach).
    async fn needs_backfill(&self, view: &CompiledView) -> bool {
        if self.merger.holds_other_definition(view) {
            return true;
        }
        let batch = self.merger.batch_view(&view.name).await;
        let cutoff = batch.map_or(i64::MIN, |b| b.cutoff);
        let held = self.merger.speed().holds_from(&view.name, view.revision);
        matches!(held.await, Ok(Some(from)) if from > cutoff)
    }

    /// Stop answering `view` from what is held for it and backfill it, because of `why`.
    async fn begin_backfill(self: &Arc<Self>, view: Arc<CompiledView>, why: &str) {
        tracing::info!(view = %view.name, revision = view.revision, why, "backfilling");
        self.merger.set_not_ready(&view.name, Some(backfilling()));
        self.merger.forget(&view.name).await;
        self.update(&view.name, |s| s.state = "backfilling".into());
        self.backfill(view);
    }

    fn set(&self, s: ViewStatus) {
        self.states
            .lock()
            .expect("states lock")
            .insert(s.name.clone(), s);
    }

    fn fail(&self, r: &ViewRecord, why: String) {
        let mut s = status(r, "failed");
        s.error = Some(why.clone());
        self.set(s);
        self.merger
            .set_not_ready(&r.name, Some(NotReady::Inactive(format!("failed: {why}"))));
    }

    /// Every cataloged view's state.
    pub fn states(&self) -> Vec<ViewStatus> {
        self.states
            .lock()
            .expect("states lock")
            .values()
            .cloned()
            .collect()
    }

    /// Cataloged views no layer computes now (paused, failed).
    pub fn inactive(&self) -> Vec<ViewStatus> {
        let pipeline = self.merger.pipeline();
        let mut states = self.states();
        states.retain(|s| pipeline.view(&s.name).is_none());
        states
    }

    /// The state of view `name`.
    pub fn state(&self, name: &str) -> Option<ViewStatus> {
        self.states.lock().expect("states lock").get(name).cloned()
    }

    async fn current(&self, name: &str) -> Result<Option<ViewRecord>, ServingError> {
        Ok(self
            .catalog
            .current()
            .await?
            .into_iter()
            .find(|r| r.name == name))
    }

    /// Create view `def` (or, with `replace`, give an existing one a new definition):
    /// checked as start-up checks a view, then backfilled.
    pub async fn create(
        self: &Arc<Self>,
        def: Definition,
        replace: bool,
    ) -> Result<ViewStatus, ServingError> {
        let streams = self
            .merger
            .pipeline()
            .streams
            .iter()
            .map(|s| s.name.as_str());
        if let Some(why) = tributary_core::pipeline::view_name_problem(&def.name, streams) {
            return Err(ServingError::bad("name", why));
        }
        let _one = self.changes.lock().await;
        let before = self.current(&def.name).await?;
        let live = before
            .as_ref()
            .filter(|r| r.lifecycle != Lifecycle::Dropped);
        match (replace, live) {
            (false, Some(r)) => {
                return Err(ServingError::ViewConflict(format!(
                    "view `{}` exists ({}); replace it with PUT /api/v1/views/{}",
                    r.name,
                    self.state(&r.name).map_or("paused".into(), |s| s.state),
                    r.name
                )));
            }
            (true, None) => return Err(ServingError::UnknownView(def.name)),
            _ => {}
        }
        if !replace && self.merger.pipeline().view(&def.name).is_some() {
            return Err(ServingError::ViewConflict(format!(
                "view `{}` exists",
                def.name
            )));
        }
        let cfg = ViewConfig {
            name: def.name.clone(),
            sql: def.sql.clone(),
            allowed_lateness_ms: def.allowed_lateness_ms,
            schedule: def.schedule.clone(),
        };
        if let Some(expr) = &cfg.schedule {
            tributary_core::config::parse_schedule(expr)
                .map_err(|why| ServingError::bad("schedule", why))?;
        }
        let mut view = compile(self.merger.pipeline(), &cfg).await?;
        let record = self
            .record(&cfg, before.as_ref(), Lifecycle::Running)
            .await?;
        view.revision = record.revision;
        // The catalog first: a failure after it leaves the change recorded, and a restart
        // carries it out; the other way round a failure would lose it.
        self.catalog.append(std::slice::from_ref(&record)).await?;
        self.retire(&def.name).await?;
        self.set(status(&record, "backfilling"));
        self.install(view);
        self.reschedule(&self.catalog.current().await?);
        Ok(self.state(&def.name).expect("just set"))
    }

    async fn record(
        &self,
        cfg: &ViewConfig,
        before: Option<&ViewRecord>,
        lifecycle: Lifecycle,
    ) -> Result<ViewRecord, ServingError> {
        Ok(ViewRecord {
            name: cfg.name.clone(),
            sql: cfg.sql.clone(),
            allowed_lateness_ms: cfg.allowed_lateness_ms,
            lifecycle,
            revision: before.map_or(1, |r| r.revision + 1),
            at: now_micros(),
            origin: "api".into(),
            schedule: cfg.schedule.clone(),
        })
    }

    /// Put `view` into every layer of the process and backfill it.
    fn install(self: &Arc<Self>, view: CompiledView) {
        let view = Arc::new(view);
        self.merger.set_not_ready(&view.name, Some(backfilling()));
        self.merger.pipeline().views.insert(view.clone());
        self.backfill(view);
    }

    /// Take view `name` out of every layer and remove its batch states.
    async fn retire(&self, name: &str) -> Result<(), ServingError> {
        self.merger.pipeline().views.remove(name);
        self.merger.forget(name).await;
        let table = self.merger.storage().batch_view_table(name);
        tributary_core::delta::remove(&table).await?;
        Ok(())
    }

    /// Pause (`Paused`) or drop (`Dropped`) view `name`.
    pub async fn stop(&self, name: &str, to: Lifecycle) -> Result<(), ServingError> {
        let _one = self.changes.lock().await;
        let Some(r) = self
            .current(name)
            .await?
            .filter(|r| r.lifecycle != Lifecycle::Dropped)
        else {
            return Err(ServingError::UnknownView(name.to_string()));
        };
        if to == Lifecycle::Paused && r.lifecycle == Lifecycle::Paused {
            return Err(ServingError::ViewConflict(format!(
                "view `{name}` is paused already"
            )));
        }
        let mut next = r.clone();
        next.lifecycle = to;
        next.revision += 1;
        next.at = now_micros();
        next.origin = "api".into();
        self.catalog.append(std::slice::from_ref(&next)).await?;
        self.retire(name).await?;
        if to == Lifecycle::Paused {
            self.set(status(&next, "paused"));
            self.merger.set_not_ready(name, Some(paused()));
        } else {
            self.states.lock().expect("states lock").remove(name);
            self.merger.set_not_ready(name, None);
        }
        self.reschedule(&self.catalog.current().await?);
        Ok(())
    }

    /// Resume paused view `name`: backfilled again, as a new view.
    pub async fn resume(self: &Arc<Self>, name: &str) -> Result<ViewStatus, ServingError> {
        let _one = self.changes.lock().await;
        let Some(r) = self.current(name).await? else {
            return Err(ServingError::UnknownView(name.to_string()));
        };
        if r.lifecycle != Lifecycle::Paused {
            return Err(ServingError::ViewConflict(format!(
                "view `{name}` is not paused"
            )));
        }
        let mut view = compile(self.merger.pipeline(), &r.config()).await?;
        let record = self
            .record(&r.config(), Some(&r), Lifecycle::Running)
            .await?;
        view.revision = record.revision;
        self.catalog.append(std::slice::from_ref(&record)).await?;
        self.set(status(&record, "backfilling"));
        self.install(view);
        self.reschedule(&self.catalog.current().await?);
        Ok(self.state(name).expect("just set"))
    }

    /// Spawn the backfill of `view`; it ends once the view answers, or when the view is
    /// dropped or replaced meanwhile.
    fn backfill(self: &Arc<Self>, view: Arc<CompiledView>) {
        let this = self.clone();
        self.tasks.spawn(async move {
            loop {
                let current = this.merger.pipeline().view(&view.name);
                if this.shutdown.is_cancelled()
                    || !current.is_some_and(|v| Arc::ptr_eq(&v, &view))
                {
                    return;
                }
                let wait = match this.backfill_once(&view).await {
                    Ok(true) => {
                        this.merger.set_not_ready(&view.name, None);
                        this.update(&view.name, |s| {
                            s.state = "running".into();
                            s.backfill = None;
                            s.error = None;
                        });
                        tracing::info!(view = %view.name, "view backfilled: it answers now");
                        return;
                    }
                    Ok(false) => Duration::from_millis(200),
                    Err(e) => {
                        tracing::warn!(view = %view.name, error = %e, "backfill failed; trying again");
                        this.update(&view.name, |s| s.error = Some(e.to_string()));
                        Duration::from_secs(2)
                    }
                };
                tokio::select! {
                    _ = this.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut ViewStatus)) {
        if let Some(s) = self.states.lock().expect("states lock").get_mut(name) {
            f(s);
        }
    }

    fn stage(&self, name: &str, b: Backfill) {
        self.update(name, |s| s.backfill = Some(b));
    }

    /// A backfill stage that knows nothing yet but what it waits for.
    fn waiting(&self, name: &str, stage: &str) {
        let stage = stage.to_string();
        self.stage(
            name,
            Backfill {
                stage,
                ..Default::default()
            },
        );
    }

    /// One step of a backfill; `true` once a batch run has covered everything below
    /// where the speed layer holds the view from.
    async fn backfill_once(&self, view: &Arc<CompiledView>) -> Result<bool, ServingError> {
        // The store of this revision: right after a replace the old one may still be
        // held, with a cutoff the new store starts above; with several speed processes,
        // the latest of their cutoffs.
        let held = self.merger.speed().holds_from(&view.name, view.revision);
        let query = |source| ServingError::Query {
            view: view.name.clone(),
            source,
        };
        let Some(from) = held.await.map_err(query)? else {
            self.waiting(&view.name, "waiting for the speed layer to take the view");
            return Ok(false);
        };
        // A process still rebuilding its partitions' states would leave the view
        // answering with every row incomplete until it catches up: wait for that too.
        if self
            .merger
            .speed()
            .stats()
            .await
            .map_err(query)?
            .recovery_ms
            .is_none()
        {
            self.waiting(
                &view.name,
                "waiting for the speed layer to catch up with the log",
            );
            return Ok(false);
        }
        let stream = self
            .merger
            .pipeline()
            .stream(&view.stream)
            .cloned()
            .ok_or_else(|| ServingError::UnknownStream(view.stream.clone()))?;
        let archived = self.batch.stream_cutoff(&stream).await?;
        let mut b = Backfill {
            speed_holds_from: (from > i64::MIN).then(|| rfc3339(from)),
            archived_to: Some(rfc3339(archived)),
            stage: "waiting for the archiver to reach where the speed layer starts".into(),
        };
        if archived < from {
            self.stage(&view.name, b);
            return Ok(false);
        }
        // Every serving process backfills the view it follows: another may have run it.
        self.merger.refresh().await?;
        if let Some(done) = self.merger.batch_view(&view.name).await
            && done.cutoff >= from
        {
            return Ok(true);
        }
        let progress = Arc::new(|_: &str, _: u64, _: u64| {});
        let names = Some(vec![view.name.clone()]);
        let (id, run) = match self.batch.try_start_views(RunKind::Full, names, progress) {
            Ok(started) => started,
            Err(BatchError::RunInProgress) => {
                b.stage = "waiting for the running batch run to end".into();
                self.stage(&view.name, b);
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        b.stage = format!("batch run {id} over the master table");
        self.stage(&view.name, b);
        run.await?;
        self.merger.refresh().await?;
        let batch = self.merger.batch_view(&view.name).await;
        Ok(batch.is_some_and(|b| b.cutoff >= from))
    }
}

/// Why a paused view does not answer.
fn paused() -> NotReady {
    NotReady::Inactive("paused: resume it to compute it again".into())
}

/// Why a view being backfilled does not answer yet.
fn backfilling() -> NotReady {
    NotReady::Backfilling("backfilling: its first batch run has not committed yet".into())
}

/// Compile `cfg` against the pipeline's streams and tables; a refusal names the SQL.
async fn compile(
    pipeline: &tributary_core::pipeline::Pipeline,
    cfg: &ViewConfig,
) -> Result<CompiledView, ServingError> {
    pipeline.compile_view(cfg).await.map_err(|e| match e {
        tributary_core::CoreError::View { message, .. } => ServingError::bad("sql", message),
        other => ServingError::bad("sql", other.to_string()),
    })
}
