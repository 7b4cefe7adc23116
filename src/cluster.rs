//! `tributary ballista-scheduler` and `tributary ballista-executor`: the recompute
//! cluster's roles (batch-layer/src/ballista), supervised like every other role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tributary_batch::ballista::process::{ExecutorSettings, run_executor, run_scheduler};
use tributary_core::shutdown::{Shutdown, StopOutcome, Tasks};

/// How long the cluster's tasks get to stop after a signal.
const DEADLINE: Duration = Duration::from_secs(10);

/// Object stores as `[storage]` configures them, so executors read the tables the
/// batch layer writes (the configuration is optional: the environment alone may do).
fn register_storage(config: Option<PathBuf>) -> anyhow::Result<()> {
    let (config, _) = tributary_core::config::load(config.as_deref())?;
    tributary_core::cloud::register(&config.storage.options)?;
    Ok(())
}

/// Serve a scheduler on `bind` until a signal.
pub async fn scheduler(config: Option<PathBuf>, bind: SocketAddr) -> anyhow::Result<StopOutcome> {
    register_storage(config)?;
    let shutdown = Shutdown::new();
    let mut tasks = Tasks::new();
    tasks.spawn("ballista-scheduler", run_scheduler(bind, shutdown.clone()));
    Ok(tasks.supervise(shutdown, DEADLINE).await)
}

/// Run an executor for the scheduler in `settings` until a signal.
pub async fn executor(
    config: Option<PathBuf>,
    settings: ExecutorSettings,
) -> anyhow::Result<StopOutcome> {
    register_storage(config)?;
    let shutdown = Shutdown::new();
    let mut tasks = Tasks::new();
    tasks.spawn(
        "ballista-executor",
        run_executor(settings, shutdown.clone()),
    );
    Ok(tasks.supervise(shutdown, DEADLINE).await)
}
