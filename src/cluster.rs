//! `tributary ballista-scheduler` and `tributary ballista-executor`: the recompute
//! cluster's roles (batch-layer/src/ballista), supervised like every other role.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tributary_batch::BatchError;
use tributary_batch::ballista::process::{
    ExecutorSettings, SchedulerSettings, run_executor, run_scheduler,
};
use tributary_core::shutdown::{Shutdown, StopOutcome, Tasks};

/// How long the cluster's tasks get to stop after a signal.
const DEADLINE: Duration = Duration::from_secs(10);

/// `tributary ballista-scheduler`'s flags.
#[derive(clap::Args, Debug)]
pub struct SchedulerArgs {
    /// The gRPC address to listen on.
    #[arg(long, default_value = "127.0.0.1:50050")]
    bind: SocketAddr,
    /// Seconds without a heartbeat after which an executor counts as lost and its
    /// tasks run again on the others (Ballista's default is 180).
    #[arg(long, default_value_t = 20)]
    executor_timeout_secs: u64,
}

/// `tributary ballista-executor`'s flags.
#[derive(clap::Args, Debug)]
pub struct ExecutorArgs {
    /// The scheduler's gRPC address, `HOST:PORT` (a name such as
    /// `ballista-scheduler:50050` or an address).
    #[arg(long, default_value = "127.0.0.1:50050", value_parser = host_port)]
    scheduler: (String, u16),
    /// The address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind_host: String,
    /// The host the scheduler, the client and other executors reach this executor at
    /// (default: `--bind-host`); set it when binding `0.0.0.0`.
    #[arg(long)]
    external_host: Option<String>,
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
    /// Seconds between heartbeats to the scheduler; keep it well under the
    /// scheduler's `--executor-timeout-secs` (Ballista's default is 60).
    #[arg(long, default_value_t = 5)]
    heartbeat_secs: u64,
}

/// Serve a scheduler as `args` say until a signal.
pub async fn scheduler(
    config: Option<PathBuf>,
    args: SchedulerArgs,
) -> anyhow::Result<StopOutcome> {
    let settings = SchedulerSettings {
        bind: args.bind,
        executor_timeout: Duration::from_secs(args.executor_timeout_secs.max(1)),
    };
    supervise(config, "ballista-scheduler", |shutdown| {
        run_scheduler(settings, shutdown)
    })
    .await
}

/// Run an executor for the scheduler `args` names until a signal.
pub async fn executor(config: Option<PathBuf>, args: ExecutorArgs) -> anyhow::Result<StopOutcome> {
    let settings = ExecutorSettings {
        scheduler_host: args.scheduler.0,
        scheduler_port: args.scheduler.1,
        bind_host: args.bind_host,
        external_host: args.external_host,
        flight_port: args.flight_port,
        grpc_port: args.grpc_port,
        vcores: args.vcores,
        work_dir: args.work_dir,
        heartbeat: Duration::from_secs(args.heartbeat_secs.max(1)),
    };
    supervise(config, "ballista-executor", |shutdown| {
        run_executor(settings, shutdown)
    })
    .await
}

/// `HOST:PORT`, where HOST may be a name.
fn host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected HOST:PORT, got `{s}`"))?;
    let port = port
        .parse()
        .map_err(|_| format!("expected a port number after `:`, got `{port}`"))?;
    if host.is_empty() {
        return Err(format!("expected a host before `:{port}`"));
    }
    Ok((host.trim_matches(['[', ']']).to_string(), port))
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

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn a_scheduler_address_may_be_a_name_or_an_address() {
        assert_eq!(
            host_port("ballista-scheduler:50050"),
            Ok(("ballista-scheduler".into(), 50050))
        );
        assert_eq!(host_port("10.0.0.7:1"), Ok(("10.0.0.7".into(), 1)));
        assert_eq!(host_port("[::1]:50050"), Ok(("::1".into(), 50050)));
        assert!(host_port("scheduler").unwrap_err().contains("HOST:PORT"));
        assert!(
            host_port("scheduler:http")
                .unwrap_err()
                .contains("port number")
        );
        assert!(host_port(":50050").unwrap_err().contains("host"));
    }
}
