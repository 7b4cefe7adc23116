//! How the roles are put together: one [`Role`] enum, one `start_<role>` each, and
//! [`run`], which starts the roles a subcommand asks for in one process (`up` is all four).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use tributary_batch::{Batch, views};
use tributary_core::config::{self, Config, ConfigSource, LogKind, Scope};
use tributary_core::dead_letter::DeadLetterSink;
use tributary_core::ingest_handle::IngestHandle;
use tributary_core::log::EventLog;
use tributary_core::pipeline::Pipeline;
use tributary_core::shutdown::{Shutdown, StopOutcome, Tasks};
use tributary_core::storage::Storage;
use tributary_ingest::log::{EmbeddedLog, KafkaLog};
use tributary_ingest::{Ingest, generator};
use tributary_serving::auth::Auth;
use tributary_serving::feeds::LiveFeeds;
use tributary_serving::{AppState, Merger};
use tributary_speed::SpeedLayer;
use tributary_speed::source::SpeedSource;

use crate::exposure;

const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// A role a process can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Ingest,
    Speed,
    Batch,
    Serve,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Ingest, Role::Speed, Role::Batch, Role::Serve];

    pub fn name(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Speed => "speed",
            Role::Batch => "batch",
            Role::Serve => "serve",
        }
    }
}

/// `--config` if given, else `./tributary.toml` if it exists, else the embedded default.
pub fn config_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| {
        let default = PathBuf::from("tributary.toml");
        default.exists().then_some(default)
    })
}

pub async fn load(path: Option<PathBuf>) -> anyhow::Result<(Config, ConfigSource, Pipeline)> {
    let (config, source) = config::load(path.as_deref())?;
    let pipeline = Pipeline::from_config(&config, &source).await?;
    Ok((config, source, pipeline))
}

/// The configured event log, and the Kafka handle when it is Kafka (for ticks).
pub async fn open_log(
    config: &Config,
    storage: &Storage,
    pipeline: &Pipeline,
) -> anyhow::Result<(Arc<dyn EventLog>, Option<Arc<KafkaLog>>)> {
    let streams: Vec<(String, u32)> = pipeline
        .streams
        .iter()
        .map(|s| (s.name.clone(), s.partitions))
        .collect();
    match config.log.kind {
        LogKind::Embedded => {
            anyhow::ensure!(
                config.log.cache_mb >= 1,
                "log.cache-mb = 0: the embedded log needs at least 1 MB of page cache"
            );
            let cache = (config.log.cache_mb.checked_mul(1 << 20))
                .and_then(|b| usize::try_from(b).ok())
                .context("log.cache-mb: too large for this machine")?;
            let log = EmbeddedLog::open_with_cache(&storage.log_dir(), &streams, cache)?;
            Ok((Arc::new(log), None))
        }
        LogKind::Kafka => {
            let mut log = KafkaLog::open(config.log.clone(), &streams)
                .await
                .with_context(|| format!("connecting to Kafka at {}", config.log.brokers))?;
            if config.log.derivation_checkpoint_ms > 0 {
                let every = Duration::from_millis(config.log.derivation_checkpoint_ms);
                log = log.with_checkpoints(storage.derivation_dir(), every);
            }
            let log = Arc::new(log);
            Ok((log.clone(), Some(log)))
        }
    }
}

/// What the roles of one process share, and the tasks they spawn.
struct Process {
    config: Config,
    pipeline: Pipeline,
    storage: Storage,
    log: Arc<dyn EventLog>,
    /// The dead-letter sink of this process (its spool is named after the process).
    dead_letters: DeadLetterSink,
    auth: Auth,
    shutdown: Shutdown,
    tasks: Tasks,
    /// Each role this process runs and whether it is up (`/health`, `/ready`).
    roles: Vec<(String, Arc<AtomicBool>)>,
    /// The batch run coordinator, made on first use: serving starts runs through it and
    /// the embedded log's retention asks it what the archiver has committed, and status
    /// reports both from the same one.
    batch: Option<Arc<Batch>>,
    /// What start-up made of the view catalog, until serving takes it.
    reconciled: Option<tributary_core::catalog::Reconciled>,
}

impl Process {
    fn batch(&mut self) -> Arc<Batch> {
        let (config, pipeline, storage, log) =
            (&self.config, &self.pipeline, &self.storage, &self.log);
        self.batch
            .get_or_insert_with(|| batch_layer(config, pipeline, storage, log))
            .clone()
    }

    fn flag(&self, role: Role) -> Arc<AtomicBool> {
        self.roles
            .iter()
            .find(|(n, _)| n == role.name())
            .map(|(_, f)| f.clone())
            .unwrap_or_default()
    }

    /// Spawn `fut` as role `role`'s task, its flag up while it runs.
    fn spawn_role<E: std::fmt::Display>(
        &mut self,
        role: Role,
        fut: impl Future<Output = Result<(), E>> + Send + 'static,
    ) {
        let flag = self.flag(role);
        self.tasks.spawn(role.name(), async move {
            flag.store(true, Ordering::Release);
            let result = fut.await;
            flag.store(false, Ordering::Release);
            result
        });
    }
}

/// Run `roles` in this process until SIGINT/SIGTERM or a task ends; `up` is every role.
pub async fn run(roles: &[Role], path: Option<PathBuf>) -> anyhow::Result<StopOutcome> {
    let (config, source, pipeline) = load(path).await?;
    let all = roles.len() == Role::ALL.len();
    if !all && config.log.kind == LogKind::Embedded {
        bail!(
            "`tributary {}` runs one role against a shared event log, but {source} uses the \
             embedded log, which lives inside one process: run `tributary up`, or set \
             log.kind = \"kafka\"",
            roles[0].name()
        );
    }
    exposure::check_exposure(&config)?;
    if roles.contains(&Role::Speed)
        && roles.contains(&Role::Serve)
        && !config.speed.shard.is_whole()
    {
        bail!(
            "speed.shard = \"{}\": a process that serves reads only its own speed layer, which \
             would hold only part of the partitions; run `tributary speed` once per shard and \
             `tributary serve` with speed.urls naming them all",
            config.speed.shard
        );
    }
    let storage = config.open_storage()?;
    // The catalog's views, before any layer starts: every role computes the same ones.
    let reconciled = tributary_core::catalog::Catalog::new(&storage)
        .reconcile(
            &pipeline,
            &config.views,
            roles.contains(&Role::Serve),
            &|_| {},
        )
        .await
        .context("reading the view catalog")?;
    for (r, why) in &reconciled.failed {
        tracing::error!(view = %r.name, error = %why, "a cataloged view does not compile; it does not run");
    }
    let (log, kafka) = open_log(&config, &storage, &pipeline).await?;
    let process_name = if all { "up" } else { roles[0].name() };
    let (shutdown, tasks) = (Shutdown::new(), Tasks::new());
    let dead_letters = DeadLetterSink::new(
        storage.clone(),
        pipeline.streams.iter().map(|s| s.name.clone()),
    )
    .supervised(tasks.requests(), shutdown.clone())
    .with_spool(&storage.spool_dir(), process_name)?;
    let mut p = Process {
        auth: Auth::new(&config.auth).with_secure_cookies(config.http.tls_cert.is_some()),
        roles: roles
            .iter()
            .map(|r| (r.name().to_string(), Arc::new(AtomicBool::new(false))))
            .collect(),
        config,
        pipeline,
        storage,
        log,
        dead_letters,
        shutdown,
        tasks,
        batch: None,
        reconciled: Some(reconciled),
    };
    if let Some(kafka) = kafka
        && (roles.contains(&Role::Ingest) || roles.contains(&Role::Batch))
    {
        let every = Duration::from_millis(p.config.log.tick_interval_ms.max(10));
        p.tasks
            .spawn("log-ticker", tick(kafka, every, p.shutdown.clone()));
    }
    let app = start_roles(&mut p, roles).await?;
    let app = tributary_serving::with_cors(app, &p.config.http.cors_origins)
        .context("http.cors-origins")?;
    let http = tributary_serving::run(p.config.http.clone(), app, p.shutdown.clone());
    if roles.contains(&Role::Serve) {
        p.spawn_role(Role::Serve, http);
    } else {
        p.tasks.spawn("http", http);
    }
    let names: Vec<_> = roles.iter().map(|r| r.name()).collect();
    eprintln!(
        "Tributary {} is up ({source}): http://{}/ — storage under {}, log {}",
        names.join(" + "),
        p.config.http.addr,
        p.storage.location(),
        match p.config.log.kind {
            LogKind::Embedded => "embedded".to_string(),
            LogKind::Kafka => format!("on Kafka at {}", p.config.log.brokers),
        }
    );
    Ok(p.tasks.supervise(p.shutdown, SHUTDOWN_DEADLINE).await)
}

/// Start each role of `roles` and return the HTTP routes they answer.
async fn start_roles(p: &mut Process, roles: &[Role]) -> anyhow::Result<Router> {
    let mut app = Router::new();
    let mut ingest = None;
    if roles.contains(&Role::Ingest) {
        let (handle, routes) = start_ingest(p);
        ingest = Some(handle);
        app = app.merge(routes);
    }
    // With serving in the process, the batch views it loads also give the speed layer
    // its cutoffs; a speed process alone reads only the cutoffs.
    let loaded = match roles.contains(&Role::Serve) {
        true => Some(load_batch_views(&p.pipeline, &p.storage).await),
        false => None,
    };
    let mut speed: Option<Arc<dyn SpeedSource>> = None;
    if roles.contains(&Role::Speed) {
        let cutoffs = match &loaded {
            Some(l) => l
                .states
                .iter()
                .map(|(n, bv)| (n.clone(), bv.cutoff))
                .collect(),
            None => load_cutoffs(&p.pipeline, &p.storage).await,
        };
        let layer = start_speed(p, &cutoffs);
        if !roles.contains(&Role::Serve) {
            // Serving processes call this with a token of scope `admin` (a no-op
            // without tokens).
            let routes = tributary_speed::server::router(layer.clone());
            app = app.merge(p.auth.require(Scope::Admin, routes));
        }
        speed = Some(Arc::new(layer));
    }
    if roles.contains(&Role::Batch) {
        start_batch(p);
    }
    if let Some(loaded) = loaded {
        let speed = match speed {
            Some(local) => local,
            None => remote_speed(&p.config, &p.pipeline)?,
        };
        let ingest = ingest.map(|i| i as Arc<dyn IngestHandle>);
        app = app.merge(start_serve(p, speed, loaded, ingest)?);
    } else {
        // Serving's router has its own `/health` and `/ready`.
        app = app.merge(tributary_serving::health_router(p.roles.clone()));
    }
    Ok(app)
}

/// Ingest: validation into the log, dead letters, the event generator if switched on.
fn start_ingest(p: &mut Process) -> (Arc<Ingest>, Router) {
    let ingest = Arc::new(Ingest::new(
        p.pipeline.streams.clone(),
        p.log.clone(),
        p.dead_letters.clone(),
        tributary_ingest::IngestLimits::from_config(&p.config.http),
    ));
    if p.config.generator.enabled {
        let generator = generator::run(
            p.config.generator.clone(),
            ingest.clone(),
            p.shutdown.clone(),
        );
        p.tasks.spawn("generator", generator);
    }
    p.flag(Role::Ingest).store(true, Ordering::Release);
    let routes = tributary_ingest::http::router(ingest.clone(), p.config.http.max_body_bytes);
    (ingest.clone(), p.auth.require(Scope::Ingest, routes))
}

/// The speed process (`speed.url`) or processes (`speed.urls`, one per shard) a
/// separate serving process merges with.
fn remote_speed(config: &Config, pipeline: &Pipeline) -> anyhow::Result<Arc<dyn SpeedSource>> {
    let token = exposure::speed_token(&config.auth)?;
    let mut shards: Vec<tributary_speed::remote::RemoteSpeed> = config
        .speed
        .speed_urls()
        .iter()
        .map(|url| tributary_speed::remote::RemoteSpeed::new(url).with_token(token.clone()))
        .collect();
    Ok(match shards.len() {
        1 => Arc::new(shards.remove(0)),
        _ => Arc::new(tributary_speed::ShardedSpeed::new(shards, pipeline)),
    })
}

/// The speed layer, reading the log from each view's batch cutoff.
fn start_speed(p: &mut Process, cutoffs: &HashMap<String, i64>) -> SpeedLayer {
    let layer = SpeedLayer::new(&p.pipeline, &p.config.speed, cutoffs)
        .with_dead_letters(p.dead_letters.clone())
        .with_master(p.storage.clone());
    if p.roles.len() == 1 {
        // Alone, the speed process learns of view changes from the catalog; its loop
        // gives a new revision a store at the start of the next micro-batch.
        let every = Duration::from_millis(p.config.catalog_poll_ms.max(10));
        let follow = tributary_speed::follow::follow_catalog(
            tributary_core::catalog::Catalog::new(&p.storage),
            p.pipeline.clone(),
            (every, p.shutdown.clone()),
        );
        p.tasks.spawn("catalog-follow", follow);
    }
    let run = tributary_speed::run(
        p.config.speed.clone(),
        p.pipeline.clone(),
        p.log.clone(),
        layer.clone(),
        Some(snapshot_dir(&p.storage, p.config.speed.shard)),
        p.shutdown.clone(),
    );
    p.spawn_role(Role::Speed, run);
    layer
}

/// Where a speed process keeps its snapshots: one folder per shard, so processes that
/// share a machine (and its local state folder) never resume from each other's.
fn snapshot_dir(storage: &Storage, shard: tributary_core::config::Shard) -> std::path::PathBuf {
    let dir = storage.speed_snapshot_dir();
    match shard.is_whole() {
        true => dir,
        false => dir.join(format!("shard-{}-of-{}", shard.index, shard.count)),
    }
}

/// The batch layer's archiver, and the embedded log's retention (which waits for it).
fn start_batch(p: &mut Process) {
    let archiver = tributary_batch::run(
        p.config.batch.clone(),
        p.pipeline.clone(),
        p.storage.clone(),
        p.log.clone(),
        p.dead_letters.clone(),
        p.shutdown.clone(),
    );
    p.spawn_role(Role::Batch, archiver);
    // Append-mode views follow the archiver's commits.
    let every = Duration::from_millis(p.config.batch.archive_flush_ms.clamp(100, 1_000));
    for view in p.pipeline.append_views.clone() {
        let name = format!("append-view:{}", view.name);
        let run = tributary_batch::append::run(p.batch(), view, every, p.shutdown.clone());
        p.tasks.spawn(name, run);
    }
    if p.config.log.kind == LogKind::Embedded {
        let retention = tributary_batch::retention::run(
            p.batch(),
            p.config.log.retention_hours,
            p.config.log.retention_mb,
            p.shutdown.clone(),
        );
        p.tasks.spawn("log-retention", retention);
    }
}

/// Serving: the merge, the API, live push, the dashboard, and the batch runs it starts
/// (on demand and on schedule).
fn start_serve(
    p: &mut Process,
    speed: Arc<dyn SpeedSource>,
    loaded: LoadedViews,
    ingest: Option<Arc<dyn IngestHandle>>,
) -> anyhow::Result<Router> {
    let merger = Arc::new(Merger::new(
        p.pipeline.clone(),
        p.storage.clone(),
        speed,
        loaded.states,
    ));
    for (view, error) in &loaded.unreadable {
        merger.set_unreadable(view, error);
    }
    let batch = p.batch();
    let requests = p.tasks.requests();
    let views = tributary_serving::lifecycle::ViewManager::new(
        tributary_core::catalog::Catalog::new(&p.storage),
        merger.clone(),
        batch.clone(),
        (requests.clone(), p.shutdown.clone()),
    );
    if p.roles.len() != Role::ALL.len() {
        // Other serving processes change views too.
        let every = Duration::from_millis(p.config.catalog_poll_ms.max(10));
        let follow = views.clone().follow(every);
        p.tasks.spawn("catalog-follow", follow);
    }
    let state = AppState {
        views: views.clone(),
        merger,
        batch: batch.clone(),
        roles: Arc::new(p.roles.clone()),
        shutdown: p.shutdown.clone(),
        sql: p.config.sql.clone(),
        // The spool to flush before a listing is this process's only when ingest or
        // the speed layer here writes letters.
        dead_letters: ingest.is_some().then(|| p.dead_letters.clone()),
        ingest,
        live_interval_ms: p.config.http.live_interval_ms,
        log: p.log.clone(),
        live_feeds: Arc::new(LiveFeeds::new(
            p.config.http.max_live_clients,
            requests.clone(),
        )),
        requests,
        sinks: tributary_serving::sinks::statuses(match p.config.run_sinks {
            true => &p.config.sinks,
            false => &[],
        }),
    };
    start_sinks(p, &state);
    let reconciled = p.reconciled.take().unwrap_or_default();
    state.requests.spawn(views.start(reconciled));
    let poll = Duration::from_millis(p.config.batch.view_poll_ms.max(10));
    let refresh = tributary_serving::refresh_loop(state.clone(), poll, p.shutdown.clone());
    p.tasks.spawn("batch-view-refresh", refresh);
    spawn_schedule(&mut p.tasks, &p.config, &batch, &p.shutdown)?;
    let web = tributary_serving::web::router(
        state.clone(),
        p.config.http.site_dir.clone(),
        p.auth.clone(),
    );
    Ok(tributary_serving::router(state, &p.auth).merge(web))
}

/// One task per sink this process delivers (`run-sinks`), each named after its sink.
fn start_sinks(p: &mut Process, state: &AppState) {
    for status in state.sinks.iter() {
        let Some(config) = p.config.sinks.iter().find(|s| s.name == status.name) else {
            continue;
        };
        let sink = tributary_serving::sinks::run(
            config.clone(),
            status.clone(),
            state.merger.clone(),
            p.config.log.clone(),
            p.shutdown.clone(),
        );
        p.tasks.spawn(format!("sink:{}", config.name), sink);
    }
}

/// Keep idle partitions' derived ingest time moving (see ingest/src/log/kafka.rs).
async fn tick(log: Arc<KafkaLog>, every: Duration, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut interval = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = interval.tick() => {}
        }
        if let Err(e) = log.tick().await {
            tracing::warn!(error = %e, "could not write ticks");
        }
    }
}

/// Every view's committed batch states, by view name, and the views whose states could
/// not be read. One damaged table must not stop the process at every start: that view
/// does not answer until its states can be read, and the speed layer holds all of its
/// events meanwhile (it has no cutoff), so nothing is lost for it.
async fn load_batch_views(pipeline: &Pipeline, storage: &Storage) -> LoadedViews {
    let mut loaded = LoadedViews::default();
    for v in &pipeline.views {
        match views::load(storage, &v).await {
            Ok(Some(bv)) => {
                loaded.states.insert(v.name.clone(), bv);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(view = %v.name, error = %e, "the view's batch states cannot be read; it will not answer until they can");
                loaded.unreadable.push((v.name.clone(), e));
            }
        }
    }
    loaded
}

/// What [`load_batch_views`] found.
#[derive(Default)]
struct LoadedViews {
    states: HashMap<String, views::BatchView>,
    unreadable: Vec<(String, tributary_batch::BatchError)>,
}

/// Every view's committed cutoff, without its states (a view whose cutoff cannot be
/// read has none: the speed layer holds all of its events, as for a new view).
async fn load_cutoffs(pipeline: &Pipeline, storage: &Storage) -> HashMap<String, i64> {
    let mut cutoffs = HashMap::new();
    for v in &pipeline.views {
        match views::load_cutoff(storage, &v).await {
            Ok(Some(c)) => {
                cutoffs.insert(v.name.clone(), c);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(view = %v.name, error = %e, "the view's batch cutoff cannot be read; holding all of its events")
            }
        }
    }
    cutoffs
}

/// The batch layer's run coordinator as the configuration sets it up.
pub fn batch_layer(
    config: &Config,
    pipeline: &Pipeline,
    storage: &Storage,
    log: &Arc<dyn EventLog>,
) -> Arc<Batch> {
    let maintenance = tributary_batch::maintenance::Settings {
        retention_hours: config.batch.retention_hours,
        target_file_bytes: config.batch.target_file_mb.max(1) * 1024 * 1024,
    };
    Arc::new(
        Batch::new(
            pipeline.clone(),
            storage.clone(),
            log.clone(),
            config.speed.segment_width_ms,
        )
        .with_maintenance(maintenance)
        .with_history_limit(config.batch.history_limit)
        .with_engine(tributary_batch::engine::Engine::from_config(&config.batch)),
    )
}

/// Scheduled batch runs and maintenance, where the configuration sets a schedule.
fn spawn_schedule(
    tasks: &mut Tasks,
    config: &Config,
    batch: &Arc<Batch>,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    if let Some(expr) = &config.batch.schedule {
        let schedule = config::parse_schedule(expr).map_err(anyhow::Error::msg)?;
        tasks.spawn(
            "batch-schedule",
            tributary_batch::schedule::run(batch.clone(), schedule, shutdown.clone()),
        );
    }
    // Each view's own schedule runs under the view manager, which follows the catalog.
    if let Some(expr) = &config.batch.maintenance_schedule {
        let schedule = config::parse_schedule(expr)
            .map_err(|e| anyhow::anyhow!("batch.maintenance-schedule: {e}"))?;
        tasks.spawn(
            "batch-maintenance",
            tributary_batch::schedule::maintenance(batch.clone(), schedule, shutdown.clone()),
        );
    }
    Ok(())
}
