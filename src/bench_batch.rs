//! `tributary bench batch`: the batch layer on this machine. Archiving (log → Delta
//! master table, exactly-once commits included), a full recompute of the IoT view over
//! the whole master table, and an incremental recompute after 1% more events; beside
//! DuckDB and polars running the same aggregation over the same Parquet files in the
//! same run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use tributary_batch::archiver::{archived_positions, open_master};
use tributary_batch::{Batch, RunKind};
use tributary_core::config::BatchConfig;
use tributary_core::dead_letter::DeadLetterSink;
use tributary_core::log::EventLog;
use tributary_core::schema::StreamSchema;
use tributary_core::shutdown::Shutdown;
use tributary_core::storage::Storage;
use tributary_ingest::log::EmbeddedLog;

/// Records generated and appended at a time (memory stays flat at any event count).
const CHUNK: usize = 200_000;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Events in the master table for the full recompute.
    #[arg(long, default_value_t = 100_000_000)]
    pub events: usize,
    /// Distinct devices.
    #[arg(long, default_value_t = 1_000)]
    pub devices: u32,
    /// Where the log and tables go (default: a temporary directory, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Reuse the tables an earlier run left in --dir: time the full recompute of
    /// everything archived there and the references only.
    #[arg(long, requires = "dir")]
    pub recompute_only: bool,
    /// Python with `duckdb` and `polars` (default: ./.venv/bin/python).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Also archive and recompute with the tables in this object store
    /// (`s3://bucket/prefix`, a prefix of its own per run), beside local disk in the
    /// same run. Credentials from the environment (`AWS_*`) and `--storage-option`.
    #[arg(long, conflicts_with = "recompute_only")]
    pub storage_root: Option<String>,
    /// An object_store option for `--storage-root`, `key=value` (repeatable), e.g.
    /// `aws_endpoint=http://127.0.0.1:8333`.
    #[arg(long = "storage-option", value_parser = key_value)]
    pub storage_options: Vec<(String, String)>,
    /// `ballista`: also run the full recompute on a Ballista cluster started on this
    /// machine, over the same table in the same run (the local engine is the
    /// reference).
    #[arg(long, value_enum, default_value = "local")]
    pub engine: BenchEngine,
    /// Executors of that cluster.
    #[arg(long, default_value_t = 2)]
    pub executors: usize,
    /// Task slots per executor.
    #[arg(long, default_value_t = 1)]
    pub vcores: usize,
    /// Tasks each view's scan is split into on the cluster.
    #[arg(long, default_value_t = 8)]
    pub partitions: usize,
}

/// Engines `bench batch` times.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchEngine {
    /// The local engine only.
    Local,
    /// The local engine, then Ballista over the same table.
    Ballista,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not key=value"))
}

/// The records `from..from + n` of a deterministic IoT stream over one day.
fn records(from: usize, n: usize, total: usize, devices: u32) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(from as u64);
    let start = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
    (from..from + n)
        .map(|i| {
            let d = rng.random_range(0..devices);
            let ts = start + (i as i64 * 86_400_000 / total.max(1) as i64);
            let signal = (rng.random_range(0.0..100.0f64) * 10.0).round() / 10.0;
            crate::bench::iot_record(d, signal, ts)
        })
        .collect()
}

async fn fill(
    log: &Arc<dyn EventLog>,
    stream: &StreamSchema,
    from: usize,
    n: usize,
    total: usize,
    devices: u32,
) -> anyhow::Result<()> {
    let mut done = 0;
    while done < n {
        let k = CHUNK.min(n - done);
        let chunk = records(from + done, k, total, devices);
        let p = ((from + done) / CHUNK) as u32 % stream.partitions;
        log.append(&stream.name, p, chunk).await?;
        done += k;
    }
    Ok(())
}

/// Archive the log's backlog with the default settings (a stop requested at once: the
/// archiver drains the log, committing as its files fill, then stops); returns the
/// seconds.
async fn archive(
    storage: &Storage,
    stream: &StreamSchema,
    log: &Arc<dyn EventLog>,
) -> anyhow::Result<f64> {
    let mut ends = Vec::new();
    for p in 0..stream.partitions {
        ends.push(log.end_offset(&stream.name, p).await?);
    }
    let shutdown = Shutdown::new();
    shutdown.cancel();
    let config = BatchConfig {
        schedule: None,
        maintenance_schedule: None,
        ..BatchConfig::default()
    };
    let t = Instant::now();
    tributary_batch::archiver::run_stream(
        config,
        stream.clone(),
        storage.clone(),
        log.clone(),
        DeadLetterSink::new(storage.clone(), [stream.name.clone()]),
        shutdown,
    )
    .await?;
    let secs = t.elapsed().as_secs_f64();
    let master = open_master(storage, &stream.name).await?;
    let archived = archived_positions(master.as_ref(), stream).await?;
    if archived != ends {
        bail!("the archiver stopped at {archived:?}, the log ends at {ends:?}");
    }
    Ok(secs)
}

async fn recompute(batch: &Arc<Batch>, kind: RunKind) -> anyhow::Result<(f64, u64)> {
    let t = Instant::now();
    let (_, run) = batch.try_start(kind, Arc::new(|_: &str, _: u64, _: u64| {}))?;
    let record = run.await?;
    Ok((t.elapsed().as_secs_f64(), record.rows_in))
}

pub async fn batch(args: Args) -> anyhow::Result<()> {
    let (cfg, pipeline, stream) = crate::bench::iot_pipeline().await?;
    let temp = tempfile::tempdir()?;
    let root = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let storage = Storage::open(&root)?;
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(
        &storage.log_dir(),
        &[(stream.name.clone(), stream.partitions)],
    )?);
    let batch = Arc::new(Batch::new(
        pipeline.clone(),
        storage.clone(),
        log.clone(),
        cfg.speed.segment_width_ms,
    ));
    let setup = crate::bench_ballista::Setup {
        pipeline: &pipeline,
        storage: &storage,
        log: &log,
        segment_width_ms: cfg.speed.segment_width_ms,
        dir: &root,
    };
    let python = args.python.clone().unwrap_or_else(default_python);
    let files = root.join("master").join(&stream.name);
    if args.recompute_only {
        return recompute_only(&args, &setup, &batch, &stream, &python).await;
    }
    let n = args.events;
    let extra = (n / 100).max(1);
    println!(
        "IoT view, {n} events ({} partitions, {} devices) then 1% more ({extra}); storage under {}",
        stream.partitions,
        args.devices,
        root.display()
    );
    let places = places(
        &args,
        &pipeline,
        &storage,
        &batch,
        &log,
        &root,
        cfg.speed.segment_width_ms,
    )?;

    let t = Instant::now();
    fill(&log, &stream, 0, n, n + extra, args.devices).await?;
    println!(
        "  log filled in {:.1} s (not part of any figure)",
        t.elapsed().as_secs_f64()
    );
    let mut full = Vec::new();
    for place in &places {
        println!("tables on {}:", place.name);
        let secs = archive(&place.storage, &stream, &log).await?;
        println!(
            "  archiving (log → Delta master table, exactly-once commits): {:.0} events/s ({secs:.1} s)",
            n as f64 / secs
        );
        // Segment-aligned cutoffs: let the last second pass so the run covers every event.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        full.push((secs, full_recompute(&place.batch, n as u64).await?));
    }
    on_ballista(&args, &setup, n as u64, full[0].1).await?;

    fill(&log, &stream, n, extra, n + extra, args.devices).await?;
    for (place, (_, full_s)) in places.iter().zip(&full) {
        archive(&place.storage, &stream, &log).await?;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let (inc_s, rows) = recompute(&place.batch, RunKind::Incremental).await?;
        if rows != extra as u64 {
            bail!("the incremental recompute read {rows} events, not {extra}");
        }
        println!(
            "incremental recompute after 1% more events ({}): {inc_s:.2} s = {:.1}% of the full recompute",
            place.name,
            inc_s / full_s * 100.0
        );
    }
    if let [(local_archive, local_full), (remote_archive, remote_full)] = full[..] {
        println!(
            "object store / local disk, same run: archiving {:.2}× the time, full recompute {:.2}× the time",
            remote_archive / local_archive,
            remote_full / local_full
        );
    }

    // The references read the master table's files after the incremental run's
    // archiving: one percent more rows than the full recompute read.
    references(
        &python,
        &files,
        (n + extra) as u64,
        full[0].1 * (n + extra) as f64 / n as f64,
    )
}

/// `--recompute-only`: time the full recompute of what an earlier run archived.
async fn recompute_only(
    args: &Args,
    setup: &crate::bench_ballista::Setup<'_>,
    batch: &Arc<Batch>,
    stream: &StreamSchema,
    python: &Path,
) -> anyhow::Result<()> {
    let master = open_master(setup.storage, &stream.name).await?;
    let n: u64 = archived_positions(master.as_ref(), stream)
        .await?
        .iter()
        .sum();
    println!(
        "IoT view over the {n} events archived under {}",
        setup.dir.display()
    );
    let full_s = full_recompute(batch, n).await?;
    on_ballista(args, setup, n, full_s).await?;
    let files = setup.dir.join("master").join(&stream.name);
    references(python, &files, n, full_s)
}

fn default_python() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python"))
}

/// With `--engine ballista`, the full recompute of the local disk's table again on a
/// cluster of this machine, against `local_s`.
async fn on_ballista(
    args: &Args,
    setup: &crate::bench_ballista::Setup<'_>,
    n: u64,
    local_s: f64,
) -> anyhow::Result<()> {
    if args.engine != BenchEngine::Ballista {
        return Ok(());
    }
    crate::bench_ballista::compare(
        setup,
        n,
        local_s,
        args.executors,
        args.vcores,
        args.partitions,
    )
    .await
}

/// The same log is archived into each place: local disk, then the object store.
fn places(
    args: &Args,
    pipeline: &tributary_core::pipeline::Pipeline,
    storage: &Storage,
    batch: &Arc<Batch>,
    log: &Arc<dyn EventLog>,
    root: &std::path::Path,
    segment_width_ms: u64,
) -> anyhow::Result<Vec<Place>> {
    let mut places = vec![Place {
        name: "local disk".into(),
        storage: storage.clone(),
        batch: batch.clone(),
    }];
    if let Some(url) = &args.storage_root {
        tributary_core::cloud::register(&args.storage_options.iter().cloned().collect())?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let url = format!("{}/bench-{}", url.trim_end_matches('/'), nanos.as_micros());
        let remote = Storage::open_location(&url, Some(&root.join("remote-local")))?;
        places.push(Place {
            name: url,
            batch: Arc::new(Batch::new(
                pipeline.clone(),
                remote.clone(),
                log.clone(),
                segment_width_ms,
            )),
            storage: remote,
        });
    }
    Ok(places)
}

/// Where the tables of one pass live.
struct Place {
    name: String,
    storage: Storage,
    batch: Arc<Batch>,
}

/// Time a full recompute that must read `n` events; returns the seconds.
async fn full_recompute(batch: &Arc<Batch>, n: u64) -> anyhow::Result<f64> {
    let (secs, rows) = recompute(batch, RunKind::Full).await?;
    if rows != n {
        bail!("the full recompute read {rows} events, not {n}");
    }
    println!(
        "  full recompute of the IoT view: {:.0} rows/s ({secs:.2} s)",
        n as f64 / secs
    );
    Ok(secs)
}

/// Run DuckDB and polars over the `total` rows of the Parquet files under `files`, and
/// compare with `ours`, Tributary's seconds scaled to the same row count.
fn references(python: &Path, files: &Path, total: u64, ours: f64) -> anyhow::Result<()> {
    for engine in ["duckdb", "polars"] {
        match reference(python, engine, files) {
            Ok(s) => println!(
                "{engine} over the same {total} Parquet rows: {:.0} rows/s ({s:.2} s); Tributary full recompute / {engine} = {:.2}× the time",
                total as f64 / s,
                ours / s
            ),
            Err(e) => println!(
                "{engine} reference failed ({e}); install it with `{} -m pip install {engine}` or pass --python",
                python.display()
            ),
        }
    }
    Ok(())
}

/// Seconds `engine` needs for the IoT view over the Parquet files under `dir`.
fn reference(python: &Path, engine: &str, dir: &Path) -> anyhow::Result<f64> {
    // The master table is partitioned by date: its files sit in `_event_date=…/`.
    let glob = format!("{}/**/*.parquet", dir.display());
    let query = match engine {
        "duckdb" => format!(
            "import duckdb, time\n\
             con = duckdb.connect()\n\
             con.execute('SET enable_progress_bar = false')\n\
             t = time.time()\n\
             con.execute(\"\"\"SELECT count(*) FROM (SELECT device_type, time_bucket(INTERVAL '10 minutes', ts) AS w,\n\
               avg(signal), max(signal), count(*) FROM read_parquet('{glob}')\n\
               WHERE signal > 15 GROUP BY ALL)\"\"\").fetchall()\n\
             print(time.time() - t)\n"
        ),
        _ => format!(
            "import polars as pl, time\n\
             t = time.time()\n\
             (pl.scan_parquet('{glob}').filter(pl.col('signal') > 15)\n\
               .group_by('device_type', pl.col('ts').dt.truncate('10m').alias('w'))\n\
               .agg(pl.col('signal').mean().alias('avg'), pl.col('signal').max().alias('max'), pl.len()).collect())\n\
             print(time.time() - t)\n"
        ),
    };
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(query)
        .output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    // The figure is the last line: an engine may print notices before it.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().trim();
    last.parse()
        .with_context(|| format!("{engine} printed {:?}, not seconds", stdout.trim()))
}
