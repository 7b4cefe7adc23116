//! How the roles are put together for each subcommand.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tributary_batch::{Batch, views};
use tributary_core::config::Scope;
use tributary_core::config::{self, Config, ConfigSource, LogKind};
use tributary_core::dead_letter::DeadLetterSink;
use tributary_core::log::EventLog;
use tributary_core::pipeline::Pipeline;
use tributary_core::shutdown::{Shutdown, Tasks, signal};
use tributary_core::storage::Storage;
use tributary_ingest::log::{EmbeddedLog, KafkaLog};
use tributary_ingest::{Ingest, generator};
use tributary_serving::auth::Auth;
use tributary_serving::live::LiveFeeds;
use tributary_serving::{AppState, Merger};
use tributary_speed::SpeedLayer;

const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// `--config` if given, else `./tributary.toml` if it exists, else the embedded default.
pub fn config_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| {
        let default = PathBuf::from("tributary.toml");
        default.exists().then_some(default)
    })
}

async fn load(path: Option<PathBuf>) -> anyhow::Result<(Config, ConfigSource, Pipeline)> {
    let (config, source) = config::load(path.as_deref())?;
    let pipeline = Pipeline::from_config(&config, &source).await?;
    Ok((config, source, pipeline))
}

/// The configured event log, and the Kafka handle when it is Kafka (for ticks).
async fn open_log(
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
        LogKind::Embedded => Ok((
            Arc::new(EmbeddedLog::open(&storage.log_dir(), &streams)?),
            None,
        )),
        LogKind::Kafka => {
            let log = Arc::new(
                KafkaLog::open(config.log.clone(), &streams)
                    .await
                    .with_context(|| format!("connecting to Kafka at {}", config.log.brokers))?,
            );
            Ok((log.clone(), Some(log)))
        }
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

pub async fn check(path: Option<PathBuf>) -> anyhow::Result<()> {
    let (config, source, pipeline) = load(path).await?;
    // Object-store options are checked by name here too, without touching the store.
    tributary_core::cloud::register(&config.storage.options)?;
    println!("configuration {source}: OK");
    for s in &pipeline.streams {
        println!(
            "stream {}: {} fields, {} partitions",
            s.name,
            s.fields.len(),
            s.partitions
        );
    }
    for v in &pipeline.views {
        println!(
            "view {} over {}: keys [{}], window {}, values [{}]",
            v.name,
            v.stream,
            v.keys.join(", "),
            v.window,
            v.values.join(", ")
        );
    }
    Ok(())
}

/// Run one role as its own process against a shared (Kafka) log.
pub async fn single_role(role: &str, path: Option<PathBuf>) -> anyhow::Result<()> {
    let (config, source, pipeline) = load(path).await?;
    if config.log.kind == LogKind::Embedded {
        bail!(
            "`tributary {role}` runs one role against a shared event log, but {source} uses the \
             embedded log, which lives inside one process: run `tributary up`, or set \
             log.kind = \"kafka\""
        );
    }
    check_exposure(&config)?;
    let auth = Auth::new(&config.auth).with_secure_cookies(config.http.tls_cert.is_some());
    let storage = config.open_storage()?;
    let (log, kafka) = open_log(&config, &storage, &pipeline).await?;
    let shutdown = Shutdown::new();
    let mut tasks = Tasks::new();
    let up = Arc::new(AtomicBool::new(false));
    let roles = vec![(role.to_string(), up.clone())];
    let dead_letters = DeadLetterSink::new(
        storage.clone(),
        pipeline.streams.iter().map(|s| s.name.clone()),
    )
    .with_spool(&storage.spool_dir(), role)?;
    let tick_every = Duration::from_millis(config.log.tick_interval_ms.max(10));
    let app = match role {
        "ingest" => {
            let ingest = Arc::new(Ingest::new(
                pipeline.streams.clone(),
                log.clone(),
                dead_letters,
                tributary_ingest::IngestLimits::from_config(&config.http),
            ));
            if let Some(k) = kafka {
                tasks.spawn("log-ticker", tick(k, tick_every, shutdown.clone()));
            }
            if config.generator.enabled {
                tasks.spawn(
                    "generator",
                    generator::run(config.generator.clone(), ingest.clone(), shutdown.clone()),
                );
            }
            up.store(true, Ordering::Release);
            tributary_serving::health_router(roles).merge(auth.require(
                Scope::Ingest,
                tributary_ingest::http::router(ingest, config.http.max_body_bytes),
            ))
        }
        "speed" => {
            let mut cutoffs = HashMap::new();
            for v in &pipeline.views {
                if let Some(c) = views::load_cutoff(&storage, v).await? {
                    cutoffs.insert(v.name.clone(), c);
                }
            }
            let speed = SpeedLayer::new(&pipeline, &config.speed, &cutoffs)
                .with_dead_letters(dead_letters.clone());
            tasks.spawn(
                "speed",
                with_flag(
                    up,
                    tributary_speed::run(
                        config.speed.clone(),
                        pipeline.clone(),
                        log.clone(),
                        speed.clone(),
                        Some(storage.speed_snapshot_dir()),
                        shutdown.clone(),
                    ),
                ),
            );
            // Serving processes call this with a token of scope `admin` (a no-op
            // without tokens).
            tributary_serving::health_router(roles)
                .merge(auth.require(Scope::Admin, tributary_speed::server::router(speed)))
        }
        "batch" => {
            if let Some(k) = kafka {
                tasks.spawn("log-ticker", tick(k, tick_every, shutdown.clone()));
            }
            tasks.spawn(
                "batch",
                with_flag(
                    up,
                    tributary_batch::run(
                        config.batch.clone(),
                        pipeline.clone(),
                        storage.clone(),
                        log.clone(),
                        dead_letters,
                        shutdown.clone(),
                    ),
                ),
            );
            tributary_serving::health_router(roles)
        }
        "serve" => {
            let loaded = load_batch_views(&pipeline, &storage).await?;
            let speed = Arc::new(
                tributary_speed::remote::RemoteSpeed::new(&config.speed.url)
                    .with_token(speed_token(&config.auth)?),
            );
            let merger = Arc::new(Merger::new(
                pipeline.clone(),
                storage.clone(),
                speed,
                loaded,
            ));
            let batch = batch_layer(&config, &pipeline, &storage, &log);
            let state = AppState {
                merger,
                batch,
                roles: Arc::new(roles),
                shutdown: shutdown.clone(),
                sql: config.sql.clone(),
                ingest: None,
                dead_letters: None,
                live_interval_ms: config.http.live_interval_ms,
                log: log.clone(),
                live_feeds: Arc::new(LiveFeeds::new(config.http.max_live_clients)),
            };
            tasks.spawn(
                "batch-view-refresh",
                tributary_serving::refresh_loop(
                    state.clone(),
                    Duration::from_secs(2),
                    shutdown.clone(),
                ),
            );
            spawn_schedule(&mut tasks, &config, &state.batch, &shutdown)?;
            up.store(true, Ordering::Release);
            tributary_serving::router(state.clone(), &auth).merge(tributary_serving::web::router(
                state,
                config.http.site_dir.clone(),
                auth.clone(),
            ))
        }
        other => bail!("unknown role `{other}`"),
    };
    let app = tributary_serving::with_cors(app, &config.http.cors_origins)
        .context("http.cors-origins")?;
    tasks.spawn(
        "http",
        tributary_serving::run(config.http.clone(), app, shutdown.clone()),
    );
    eprintln!(
        "Tributary {role} is up ({source}) on http://{}/ with Kafka at {}",
        config.http.addr, config.log.brokers
    );
    supervise(tasks, shutdown).await
}

/// Wait for SIGINT/SIGTERM or the first task to end; then stop everything in time.
async fn supervise(mut tasks: Tasks, shutdown: Shutdown) -> anyhow::Result<()> {
    let outcome = tokio::select! {
        exit = tasks.first_exit(&shutdown) => exit,
        _ = signal() => None,
    };
    shutdown.cancel();
    let failure = outcome.map(|(name, result)| match result {
        Err(e) => format!("task `{name}` failed: {e}"),
        Ok(()) => format!("task `{name}` stopped unexpectedly"),
    });
    let problems = tasks.join(SHUTDOWN_DEADLINE).await;
    for p in &problems {
        tracing::warn!("shutdown: {p}");
    }
    match failure {
        Some(f) => bail!(f),
        None => Ok(()),
    }
}

/// Without API tokens, only a loopback address unless the configuration says otherwise.
fn check_exposure(config: &Config) -> anyhow::Result<()> {
    if !config.auth.tokens.is_empty() || config.auth.allow_unauthenticated {
        return Ok(());
    }
    let loopback = match config.http.addr.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => config.http.addr.starts_with("localhost:"),
    };
    if !loopback {
        bail!(
            "refusing to listen on {} without API tokens: configure [auth] tokens \
             (see README, \"Security\") or set auth.allow-unauthenticated = true",
            config.http.addr
        );
    }
    Ok(())
}

/// Run every role in this process until SIGINT/SIGTERM.
pub async fn up(path: Option<PathBuf>) -> anyhow::Result<()> {
    let (config, source, pipeline) = load(path).await?;
    check_exposure(&config)?;
    let storage = config.open_storage()?;
    let (log, kafka) = open_log(&config, &storage, &pipeline).await?;
    let dead_letters = DeadLetterSink::new(
        storage.clone(),
        pipeline.streams.iter().map(|s| s.name.clone()),
    )
    .with_spool(&storage.spool_dir(), "up")?;
    let ingest = Arc::new(Ingest::new(
        pipeline.streams.clone(),
        log.clone(),
        dead_letters.clone(),
        tributary_ingest::IngestLimits::from_config(&config.http),
    ));

    // Serving and the speed layer start from the batch views already committed.
    let loaded = load_batch_views(&pipeline, &storage).await?;
    let cutoffs = loaded
        .iter()
        .map(|(name, bv)| (name.clone(), bv.cutoff))
        .collect();
    let speed =
        SpeedLayer::new(&pipeline, &config.speed, &cutoffs).with_dead_letters(dead_letters.clone());
    let batch = batch_layer(&config, &pipeline, &storage, &log);
    let merger = Arc::new(Merger::new(
        pipeline.clone(),
        storage.clone(),
        Arc::new(speed.clone()),
        loaded,
    ));

    let role_names = ["ingest", "speed", "batch", "serve"];
    let roles: Vec<(String, Arc<AtomicBool>)> = role_names
        .iter()
        .map(|r| (r.to_string(), Arc::new(AtomicBool::new(false))))
        .collect();
    let flag = |name: &str| {
        roles
            .iter()
            .find(|(n, _)| n == name)
            .expect("role")
            .1
            .clone()
    };
    let shutdown = Shutdown::new();
    let state = AppState {
        merger: merger.clone(),
        batch: batch.clone(),
        roles: Arc::new(roles.clone()),
        shutdown: shutdown.clone(),
        sql: config.sql.clone(),
        ingest: Some(ingest.clone()),
        dead_letters: Some(dead_letters.clone()),
        live_interval_ms: config.http.live_interval_ms,
        log: log.clone(),
        live_feeds: Arc::new(LiveFeeds::new(config.http.max_live_clients)),
    };
    let auth = Auth::new(&config.auth).with_secure_cookies(config.http.tls_cert.is_some());
    let app = tributary_serving::router(state.clone(), &auth)
        .merge(auth.require(
            Scope::Ingest,
            tributary_ingest::http::router(ingest.clone(), config.http.max_body_bytes),
        ))
        .merge(tributary_serving::web::router(
            state.clone(),
            config.http.site_dir.clone(),
            auth.clone(),
        ));

    let mut tasks = Tasks::new();
    tasks.spawn(
        "speed",
        with_flag(
            flag("speed"),
            tributary_speed::run(
                config.speed.clone(),
                pipeline.clone(),
                log.clone(),
                speed,
                Some(storage.speed_snapshot_dir()),
                shutdown.clone(),
            ),
        ),
    );
    tasks.spawn(
        "batch",
        with_flag(
            flag("batch"),
            tributary_batch::run(
                config.batch.clone(),
                pipeline.clone(),
                storage.clone(),
                log.clone(),
                dead_letters,
                shutdown.clone(),
            ),
        ),
    );
    tasks.spawn(
        "batch-view-refresh",
        tributary_serving::refresh_loop(state, Duration::from_secs(5), shutdown.clone()),
    );
    flag("ingest").store(true, Ordering::Release);
    let app = tributary_serving::with_cors(app, &config.http.cors_origins)
        .context("http.cors-origins")?;
    tasks.spawn(
        "serve",
        with_flag(
            flag("serve"),
            tributary_serving::run(config.http.clone(), app, shutdown.clone()),
        ),
    );
    if let Some(kafka) = kafka {
        let every = Duration::from_millis(config.log.tick_interval_ms.max(10));
        tasks.spawn("log-ticker", tick(kafka, every, shutdown.clone()));
    }
    spawn_schedule(&mut tasks, &config, &batch, &shutdown)?;
    if config.log.kind == LogKind::Embedded {
        tasks.spawn(
            "log-retention",
            tributary_batch::retention::run(
                batch.clone(),
                config.log.retention_hours,
                config.log.retention_mb,
                shutdown.clone(),
            ),
        );
    }
    if config.generator.enabled {
        tasks.spawn(
            "generator",
            generator::run(config.generator.clone(), ingest.clone(), shutdown.clone()),
        );
    }
    eprintln!(
        "Tributary is up ({source}): dashboard and API at http://{}/ — storage under {}",
        config.http.addr,
        storage.location()
    );

    supervise(tasks, shutdown).await
}

/// Every view's committed batch states, by view name.
async fn load_batch_views(
    pipeline: &Pipeline,
    storage: &Storage,
) -> anyhow::Result<HashMap<String, views::BatchView>> {
    let mut loaded = HashMap::new();
    for v in &pipeline.views {
        if let Some(bv) = views::load(storage, v)
            .await
            .with_context(|| format!("loading batch view `{}`", v.name))?
        {
            loaded.insert(v.name.clone(), bv);
        }
    }
    Ok(loaded)
}

/// Scheduled batch runs, when `batch.schedule` is set.
/// The batch layer's run coordinator as the configuration sets it up.
fn batch_layer(
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
        .with_history_limit(config.batch.history_limit),
    )
}

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
    for (i, view) in config.views.iter().enumerate() {
        if let Some(expr) = &view.schedule {
            let schedule = config::parse_schedule(expr)
                .map_err(|e| anyhow::anyhow!("views[{i}].schedule: {e}"))?;
            tasks.spawn(
                format!("batch-schedule:{}", view.name),
                tributary_batch::schedule::run_views(
                    batch.clone(),
                    Some(vec![view.name.clone()]),
                    schedule,
                    shutdown.clone(),
                ),
            );
        }
    }
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

/// Mark a role up while its future runs.
async fn with_flag<E>(
    flag: Arc<AtomicBool>,
    fut: impl Future<Output = Result<(), E>>,
) -> Result<(), E> {
    flag.store(true, Ordering::Release);
    let result = fut.await;
    flag.store(false, Ordering::Release);
    result
}

/// One batch run from the command line.
pub async fn recompute(
    path: Option<PathBuf>,
    kind: tributary_batch::RunKind,
    views: Vec<String>,
) -> anyhow::Result<()> {
    let (config, _, pipeline) = load(path).await?;
    let storage = config.open_storage()?;
    let opened = open_log(&config, &storage, &pipeline).await;
    let (log, _) = match config.log.kind {
        LogKind::Embedded => opened.context(
            "a running `tributary up` holds the embedded log; trigger the run there with \
             `curl -X POST 'http://ADDR/api/v1/batch/runs?wait=true'`",
        )?,
        LogKind::Kafka => opened?,
    };
    let batch = batch_layer(&config, &pipeline, &storage, &log);
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("static template"),
    );
    let progress_bar = bar.clone();
    let progress = Arc::new(move |msg: &str, done: u64, total: u64| {
        progress_bar.set_length(total);
        progress_bar.set_position(done);
        progress_bar.set_message(msg.to_string());
    });
    let only = (!views.is_empty()).then_some(views);
    let (_, run) = batch.try_start_views(kind, only, progress)?;
    let result = run.await;
    bar.finish_and_clear();
    let record = result?;
    println!("{}", serde_json_pretty(&record));
    Ok(())
}

fn serde_json_pretty(record: &tributary_batch::RunRecord) -> String {
    format!(
        "run {}: {:?}, cutoff {}, {} rows in, {} state rows out, {} ms",
        record.id,
        record.status,
        record.cutoff.as_deref().unwrap_or("-"),
        record.rows_in,
        record.rows_out,
        record.duration_ms.unwrap_or(0)
    )
}

/// `tributary backfill`: load a file of historical events into a stream's master table.
pub async fn backfill(
    path: Option<PathBuf>,
    stream: String,
    source: String,
    format: Option<String>,
) -> anyhow::Result<()> {
    use tributary_batch::backfill::{self, Format};
    let (config, _, pipeline) = load(path).await?;
    let Some(schema) = pipeline.stream(&stream).cloned() else {
        let known: Vec<_> = pipeline.streams.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "unknown stream `{stream}`; the configuration has: {}",
            known.join(", ")
        );
    };
    let format =
        match format {
            None => None,
            Some(f) => Some(Format::parse(&f).with_context(|| {
                format!("--format `{f}`: expected json, ndjson, csv or parquet")
            })?),
        };
    let storage = config.open_storage()?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} rows ({per_sec}, {eta} left)",
        )
        .expect("static template"),
    );
    let progress_bar = bar.clone();
    let progress = move |done: u64, total: u64| {
        progress_bar.set_length(total);
        progress_bar.set_position(done);
    };
    let report = backfill::run(&storage, &schema, &source, format, &progress).await;
    bar.finish_and_clear();
    let report = report?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("the report serializes")
    );
    Ok(())
}

/// The token `serve` presents to the speed process's internal endpoint, which asks for
/// scope `admin` once tokens are configured: the first configured token with it.
fn speed_token(auth: &tributary_core::config::AuthConfig) -> anyhow::Result<Option<String>> {
    if auth.tokens.is_empty() {
        return Ok(None);
    }
    match auth
        .tokens
        .iter()
        .find(|t| t.scopes.contains(&Scope::Admin))
    {
        Some(t) => Ok(Some(t.token.clone())),
        None => bail!(
            "auth.tokens: `tributary serve` calls the speed process's internal endpoint, which \
             needs a token with scope \"admin\"; none of the configured tokens has it"
        ),
    }
}
