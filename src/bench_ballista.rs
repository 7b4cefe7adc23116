//! `tributary bench batch --engine ballista`: the full recompute on a Ballista cluster
//! of this machine (a scheduler and executors, each a process of this binary) beside
//! the local engine over the same master table in the same run, with where the
//! cluster's time goes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bench_procs::{Procs, free_port, wait_listening};
use anyhow::{Context, bail};
use tributary_batch::ballista::Cluster;
use tributary_batch::engine::Engine;
use tributary_batch::{Batch, RunKind};
use tributary_core::config::BallistaConfig;
use tributary_core::log::EventLog;
use tributary_core::pipeline::Pipeline;
use tributary_core::storage::Storage;

/// A scheduler and executors of this binary on loopback, killed when dropped.
pub struct LocalCluster {
    /// The scheduler's `host:port`.
    scheduler: String,
    /// The scheduler and every executor.
    _procs: Procs,
}

impl LocalCluster {
    /// `executors` executors of `vcores` task slots each; logs under `dir`.
    pub fn start(dir: &Path, executors: usize, vcores: usize) -> anyhow::Result<LocalCluster> {
        let mut procs = Procs::new(dir)?;
        let scheduler = format!("127.0.0.1:{}", free_port()?);
        let args = ["ballista-scheduler", "--bind", &scheduler].map(String::from);
        procs.spawn("scheduler", &args, &[])?;
        wait_listening(&scheduler)?;
        let mut flights = Vec::new();
        for i in 0..executors {
            let flight = free_port()?;
            let work = dir.join(format!("work-{i}"));
            let args = [
                "ballista-executor".to_string(),
                "--scheduler".into(),
                scheduler.clone(),
                "--flight-port".into(),
                flight.to_string(),
                "--grpc-port".into(),
                free_port()?.to_string(),
                "--vcores".into(),
                vcores.to_string(),
                "--work-dir".into(),
                work.display().to_string(),
            ];
            procs.spawn(&format!("executor-{i}"), &args, &[])?;
            flights.push(format!("127.0.0.1:{flight}"));
        }
        for flight in &flights {
            wait_listening(flight)?;
        }
        // An executor listens before it has registered: give registration a moment,
        // or the first job's queue time would include it.
        std::thread::sleep(Duration::from_secs(1));
        Ok(LocalCluster {
            scheduler,
            _procs: procs,
        })
    }
}

/// What the comparison needs of the bench's setup.
pub struct Setup<'a> {
    pub pipeline: &'a Pipeline,
    pub storage: &'a Storage,
    pub log: &'a Arc<dyn EventLog>,
    pub segment_width_ms: u64,
    /// Where the cluster's logs and shuffle files go.
    pub dir: &'a Path,
}

/// Time a full recompute of the `n` archived events on a cluster of `executors`
/// (`vcores` slots each, `partitions` tasks per scan) and print it against `local_s`,
/// the local engine's seconds over the same table.
pub async fn compare(
    setup: &Setup<'_>,
    n: u64,
    local_s: f64,
    executors: usize,
    vcores: usize,
    partitions: usize,
) -> anyhow::Result<()> {
    let cluster = LocalCluster::start(&setup.dir.join("ballista"), executors, vcores)?;
    let config = BallistaConfig {
        scheduler: cluster.scheduler.clone(),
        partitions,
        ..BallistaConfig::default()
    };
    let batch = Arc::new(
        Batch::new(
            setup.pipeline.clone(),
            setup.storage.clone(),
            setup.log.clone(),
            setup.segment_width_ms,
        )
        .with_engine(Engine::Ballista(Arc::new(Cluster::new(&config)))),
    );
    let t = Instant::now();
    let (_, run) = batch.try_start(RunKind::Full, Arc::new(|_: &str, _: u64, _: u64| {}))?;
    let record = run.await?;
    let secs = t.elapsed().as_secs_f64();
    if record.rows_in != n {
        bail!(
            "the run on Ballista read {} events, not {n}",
            record.rows_in
        );
    }
    let usage = record.cluster.context("a Ballista run records its usage")?;
    println!(
        "  full recompute on Ballista ({executors} executors × {vcores} slots, {partitions} tasks per scan): \
         {:.0} rows/s ({secs:.2} s) = {:.2}× the local engine's time",
        n as f64 / secs,
        secs / local_s
    );
    let ms = |m: u64| m as f64 / 1000.0;
    let on_cluster = usage.queued_ms + usage.running_ms + usage.fetching_ms;
    println!(
        "    where it went: {} jobs; queued/stage planning {:.2} s, tasks {:.2} s, fetching results {:.2} s, \
         client (plan, encode, reduce, commit) {:.2} s; tasks by executor {:?}",
        usage.jobs,
        ms(usage.queued_ms),
        ms(usage.running_ms),
        ms(usage.fetching_ms),
        (secs - ms(on_cluster)).max(0.0),
        usage.tasks
    );
    drop(cluster);
    Ok(())
}
