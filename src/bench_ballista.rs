//! `tributary bench batch --engine ballista`: the full recompute on a Ballista cluster
//! of this machine (a scheduler and executors, each a process of this binary) beside
//! the local engine over the same master table in the same run, with where the
//! cluster's time goes.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Every process started, the scheduler first.
    children: Vec<Child>,
}

impl LocalCluster {
    /// `executors` executors of `vcores` task slots each; logs under `dir`.
    pub fn start(dir: &Path, executors: usize, vcores: usize) -> anyhow::Result<LocalCluster> {
        std::fs::create_dir_all(dir)?;
        let exe = std::env::current_exe()?;
        let spawn = |name: &str, args: Vec<String>| -> anyhow::Result<Child> {
            let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
            Command::new(&exe)
                .args(args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting the Ballista {name}"))
        };
        let scheduler = format!("127.0.0.1:{}", free_port()?);
        let mut cluster = LocalCluster {
            children: vec![spawn(
                "scheduler",
                vec![
                    "ballista-scheduler".into(),
                    "--bind".into(),
                    scheduler.clone(),
                ],
            )?],
            scheduler,
        };
        wait_listening(&cluster.scheduler)?;
        let mut flights = Vec::new();
        for i in 0..executors {
            let flight = free_port()?;
            let work = dir.join(format!("work-{i}"));
            std::fs::create_dir_all(&work)?;
            let args = [
                "ballista-executor",
                "--scheduler",
                &cluster.scheduler,
                "--flight-port",
                &flight.to_string(),
                "--grpc-port",
                &free_port()?.to_string(),
                "--vcores",
                &vcores.to_string(),
                "--work-dir",
                &work.display().to_string(),
            ];
            let child = spawn(
                &format!("executor-{i}"),
                args.iter().map(|a| a.to_string()).collect(),
            )?;
            cluster.children.push(child);
            flights.push(format!("127.0.0.1:{flight}"));
        }
        for flight in &flights {
            wait_listening(flight)?;
        }
        // An executor listens before it has registered: give registration a moment,
        // or the first job's queue time would include it.
        std::thread::sleep(Duration::from_secs(1));
        Ok(cluster)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_listening(address: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(address).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {address} after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
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
