//! `tributary ballista-scheduler` and `tributary ballista-executor`: the recompute
//! cluster's roles (batch-layer/src/ballista), supervised like every other role.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tributary_batch::BatchError;
use tributary_batch::ballista::process::{ExecutorSettings, run_executor, run_scheduler};
use tributary_core::shutdown::{Shutdown, StopOutcome, Tasks};

/// How long the cluster's tasks get to stop after a signal.
const DEADLINE: Duration = Duration::from_secs(10);

/// `tributary ballista-executor`'s flags.
#[derive(clap::Args, Debug)]
pub struct ExecutorArgs {
    /// The scheduler's gRPC address.
    #[arg(long, default_value = "127.0.0.1:50050")]
    scheduler: SocketAddr,
    /// The address to bind and advertise.
    #[arg(long, default_value = "127.0.0.1")]
    bind_host: String,
    /// Arrow Flight port (results and shuffles are fetched there).
    #[arg(long, default_value_t = 50051)]
    flight_port: u16,
    /// gRPC port (the scheduler hands tasks out there).
    #[arg(long, default_value_t = 50052)]
    grpc_port: u16,
    /// Tasks at once; 0: one per core.
    #[arg(long, default_value_t = 0)]
    vcores: usize,
    /// Where shuffle files go (default: a temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// Serve a scheduler on `bind` until a signal.
pub async fn scheduler(config: Option<PathBuf>, bind: SocketAddr) -> anyhow::Result<StopOutcome> {
    supervise(config, "ballista-scheduler", |shutdown| {
        run_scheduler(bind, shutdown)
    })
    .await
}

/// Run an executor for the scheduler `args` names until a signal.
pub async fn executor(config: Option<PathBuf>, args: ExecutorArgs) -> anyhow::Result<StopOutcome> {
    let settings = ExecutorSettings {
        scheduler: args.scheduler,
        bind_host: args.bind_host,
        flight_port: args.flight_port,
        grpc_port: args.grpc_port,
        vcores: args.vcores,
        work_dir: args.work_dir,
    };
    supervise(config, "ballista-executor", |shutdown| {
        run_executor(settings, shutdown)
    })
    .await
}

/// Register the object stores `[storage]` configures (so executors read the tables the
/// batch layer writes; the configuration is optional, the environment alone may do),
/// then run the role as the task `name` until a signal.
async fn supervise<F>(
    config: Option<PathBuf>,
    name: &str,
    role: impl FnOnce(Shutdown) -> F,
) -> anyhow::Result<StopOutcome>
where
    F: Future<Output = Result<(), BatchError>> + Send + 'static,
{
    let (config, _) = tributary_core::config::load(config.as_deref())?;
    tributary_core::cloud::register(&config.storage.options)?;
    let shutdown = Shutdown::new();
    let mut tasks = Tasks::new();
    tasks.spawn(name, role(shutdown.clone()));
    Ok(tasks.supervise(shutdown, DEADLINE).await)
}
