//! The recompute cluster's processes, as roles of this binary: a Ballista scheduler and
//! executors that know Tributary's functions (`tributary_hop`) and reach its object
//! stores (the `[storage]` options and the environment, as every other role does).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::context::SessionState;
use datafusion::execution::{FunctionRegistry, SessionStateBuilder};
use datafusion::prelude::SessionConfig;
use tributary_core::shutdown::Shutdown;

use crate::error::BatchError;

/// A session that plans and runs Tributary's views: DataFusion's functions plus
/// `tributary_hop`, on the runtime that reaches the configured object stores.
fn session_state(config: SessionConfig) -> datafusion::error::Result<SessionState> {
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(tributary_core::cloud::runtime())
        .with_default_features()
        .build();
    // Registered after the defaults: the builder's list would replace them.
    for udf in tributary_core::window::udfs() {
        state.register_udf(Arc::new(udf))?;
    }
    Ok(state)
}

fn failed(role: &'static str) -> impl Fn(ballista_core::error::BallistaError) -> BatchError {
    move |e| BatchError::Cluster {
        role,
        source: Box::new(e),
    }
}

/// Where a scheduler listens and when it gives an executor up.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// The gRPC address it binds (and advertises).
    pub bind: SocketAddr,
    /// Time without a heartbeat after which an executor is lost and its running tasks
    /// go to the others; a job waits at most about this long for them.
    pub executor_timeout: Duration,
}

/// Serve a Ballista scheduler as `settings` say until shutdown.
pub async fn run_scheduler(
    settings: SchedulerSettings,
    shutdown: Shutdown,
) -> Result<(), BatchError> {
    let bind = settings.bind;
    let timeout = settings.executor_timeout.as_secs().max(1);
    let mut config = SchedulerConfig::default()
        .with_hostname(bind.ip().to_string())
        .with_port(bind.port())
        .with_override_session_builder(Arc::new(session_state));
    config.bind_host = bind.ip().to_string();
    config.executor_timeout_seconds = timeout;
    // Look for lost executors a few times per timeout, not every 15 s.
    config.expire_dead_executor_interval_seconds = (timeout / 4).max(1);
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(failed("scheduler"))?;
    tracing::info!(%bind, "Ballista scheduler listening");
    tokio::select! {
        served = start_server(cluster, bind, Arc::new(config)) => served.map_err(failed("scheduler")),
        _ = shutdown.cancelled() => Ok(()),
    }
}

/// Where an executor listens and which scheduler it serves.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    /// The scheduler's gRPC host (a name or an address).
    pub scheduler_host: String,
    /// The scheduler's gRPC port.
    pub scheduler_port: u16,
    /// The address it binds for its Flight and gRPC services.
    pub bind_host: String,
    /// The host it tells the scheduler (and so the client and other executors) to
    /// reach it at; `bind_host` when `None`. In a container that binds `0.0.0.0`, this
    /// is the pod's or container's address.
    pub external_host: Option<String>,
    /// Its Arrow Flight port (other executors and the client fetch results there).
    pub flight_port: u16,
    /// Its gRPC port (the scheduler hands it tasks there).
    pub grpc_port: u16,
    /// Tasks it runs at once; 0: one per core.
    pub vcores: usize,
    /// Where it keeps shuffle files; a temporary directory when `None`.
    pub work_dir: Option<PathBuf>,
    /// Time between its heartbeats to the scheduler.
    pub heartbeat: Duration,
}

/// Run a Ballista executor until shutdown (or until the scheduler stops it).
pub async fn run_executor(
    settings: ExecutorSettings,
    shutdown: Shutdown,
) -> Result<(), BatchError> {
    let functions = session_state(SessionConfig::new()).map_err(|e| BatchError::Cluster {
        role: "executor",
        source: Box::new(e),
    })?;
    if let Some(dir) = &settings.work_dir {
        // Ballista writes task outputs there without creating it.
        std::fs::create_dir_all(dir).map_err(|e| BatchError::Cluster {
            role: "executor",
            source: Box::new(e),
        })?;
    }
    let config = ExecutorProcessConfig {
        bind_host: settings.bind_host.clone(),
        external_host: Some(
            settings
                .external_host
                .clone()
                .unwrap_or_else(|| settings.bind_host.clone()),
        ),
        port: settings.flight_port,
        grpc_port: settings.grpc_port,
        scheduler_host: settings.scheduler_host.clone(),
        scheduler_port: settings.scheduler_port,
        scheduler_connect_timeout_seconds: 30,
        vcores: settings.vcores,
        work_dir: settings.work_dir.map(|d| d.to_string_lossy().into_owned()),
        print_thread_info: false,
        executor_heartbeat_interval_seconds: settings.heartbeat.as_secs().max(1),
        override_function_registry: Some(Arc::new(BallistaFunctionRegistry::from(&functions))),
        override_runtime_producer: Some(Arc::new(|_| Ok(tributary_core::cloud::runtime()))),
        ..Default::default()
    };
    tracing::info!(
        scheduler = %format!("{}:{}", settings.scheduler_host, settings.scheduler_port),
        flight_port = settings.flight_port,
        grpc_port = settings.grpc_port,
        "Ballista executor starting"
    );
    tokio::select! {
        ran = start_executor_process(Arc::new(config)) => ran.map_err(failed("executor")),
        _ = shutdown.cancelled() => Ok(()),
    }
}
