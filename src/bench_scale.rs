//! `tributary bench scale`: the speed layer with one and with two speed processes over
//! the same Kafka topic, and serving with one and with two serving processes over them,
//! in one run, as ratios. Every process is this binary, on this machine, against the
//! broker at `--brokers` (e.g. tansu, as deploy/test.sh starts it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tributary_core::config::LogConfig;
use tributary_core::log::{EventLog, NewRecord};
use tributary_ingest::log::KafkaLog;

use crate::bench_procs::{Procs, free_port, wait_listening};
use crate::bench_serve::percentile;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The Kafka-protocol broker.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Events in the topic the speed processes read.
    #[arg(long, default_value_t = 2_000_000)]
    pub events: usize,
    /// The stream's partitions (shared out between the speed processes).
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Distinct devices.
    #[arg(long, default_value_t = 1_000)]
    pub devices: u32,
    /// Seconds of view queries per serving configuration.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent query connections (closed loop), shared out between serving processes.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
}

/// The configuration every process of the run reads.
fn config_text(args: &Args, dir: &std::path::Path, prefix: &str) -> String {
    format!(
        r#"storage-root = "{root}"
[log]
kind = "kafka"
brokers = "{brokers}"
topic-prefix = "{prefix}"

[[streams]]
name = "readings"
event-time = "ts"
key = "device"
partitions = {partitions}
fields = [
  {{ name = "device", type = "string" }},
  {{ name = "device_type", type = "string" }},
  {{ name = "signal", type = "float64" }},
  {{ name = "ts", type = "timestamp" }},
]

[[views]]
name = "signal_by_type"
sql = """
SELECT device_type, date_bin(INTERVAL '10 minutes', ts) AS window_start,
       avg(signal) AS avg_signal, max(signal) AS max_signal, count(*) AS readings
FROM readings WHERE signal > 15
GROUP BY device_type, window_start
"""
"#,
        root = dir.join("data").display(),
        brokers = args.brokers,
        partitions = args.partitions,
    )
}

pub async fn scale(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let prefix = format!("bench-scale-{}.", tributary_core::time::now_micros());
    let config = dir.path().join("tributary.toml");
    std::fs::write(&config, config_text(&args, dir.path(), &prefix))?;
    fill(&args, &prefix).await?;
    let mut procs = Procs::new(&dir.path().join("logs"))?;
    let cfg = config.display().to_string();

    println!(
        "speed layer over {} events in {} partitions:",
        args.events, args.partitions
    );
    let one = speed_processes(&mut procs, &cfg, &args, 1, "one").await?;
    println!(
        "  one speed process:  {:>10.0} events/s ({:.2} s)",
        one.1, one.0
    );
    procs.kill("speed-one-0");
    let two = speed_processes(&mut procs, &cfg, &args, 2, "two").await?;
    println!(
        "  two speed processes: {:>10.0} events/s ({:.2} s) = {:.2}× one",
        two.1,
        two.0,
        two.1 / one.1
    );

    // Serving over the two speed processes: one serving process, then two.
    let urls = format!(
        "[{}]",
        two.2
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut serves = Vec::new();
    println!(
        "serving (view query over both speed processes, {} connections, {} s each):",
        args.connections, args.seconds
    );
    let mut first = None;
    for n in 1..=2 {
        serves.push(start_serve(&mut procs, &cfg, &urls, n)?);
        for s in &serves {
            wait_ready(s)
                .await
                .with_context(|| procs.log_tail(&format!("serve-{n}")))?;
        }
        let (rate, p50, p99) = load(&serves, args.connections, args.seconds).await?;
        let ratio = first.map_or(String::new(), |r: f64| format!(" = {:.2}× one", rate / r));
        first.get_or_insert(rate);
        println!(
            "  {n} serving process(es): {rate:>8.0} req/s, p50 {p50:.2} ms, p99 {p99:.2} ms{ratio}"
        );
    }
    Ok(())
}

/// The topic's events, produced through Tributary's own log (trusted stamps), not timed.
async fn fill(args: &Args, prefix: &str) -> anyhow::Result<()> {
    let config = LogConfig {
        kind: tributary_core::config::LogKind::Kafka,
        brokers: args.brokers.clone(),
        topic_prefix: prefix.to_string(),
        ..LogConfig::default()
    };
    let log = KafkaLog::open(config, &[("readings".into(), args.partitions)])
        .await
        .with_context(|| format!("the broker at {}", args.brokers))?;
    let started = Instant::now();
    let per = args.events / args.partitions as usize;
    for p in 0..args.partitions {
        let mut left = per + usize::from(p == 0) * (args.events % args.partitions as usize);
        let mut i = 0u64;
        while left > 0 {
            let n = left.min(10_000);
            let chunk = (0..n)
                .map(|_| {
                    i += 1;
                    let d = (i as u32 * args.partitions + p) % args.devices.max(1);
                    let ts = 1_767_225_600_000 + (i as i64 * 7) % 3_600_000;
                    NewRecord {
                        key: None,
                        payload: crate::bench::iot_record(d, (i % 1000) as f64 / 10.0, ts),
                    }
                })
                .collect();
            log.append_records("readings", p, chunk).await?;
            left -= n;
        }
    }
    println!(
        "filled the topic with {} events in {:.1} s (not timed below)",
        args.events,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Start `n` speed processes (shards of `n`), and time them from when all answer until
/// their states hold every event: seconds, events/s, and their URLs.
async fn speed_processes(
    procs: &mut Procs,
    config: &str,
    args: &Args,
    n: u32,
    tag: &str,
) -> anyhow::Result<(f64, f64, Vec<String>)> {
    let mut urls = Vec::new();
    for i in 0..n {
        let port = free_port()?;
        let env = [
            ("TRIBUTARY_HTTP__ADDR", format!("127.0.0.1:{port}")),
            ("TRIBUTARY_SPEED__SHARD", format!("{i}/{n}")),
        ];
        let cli = ["--config".to_string(), config.to_string(), "speed".into()];
        procs.spawn(&format!("speed-{tag}-{i}"), &cli, &env)?;
        urls.push(format!("http://127.0.0.1:{port}"));
    }
    for u in &urls {
        wait_listening(u.trim_start_matches("http://"))?;
    }
    let client = reqwest::Client::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    loop {
        let mut events = 0;
        for u in &urls {
            let stats: Value = client
                .get(format!("{u}/internal/v1/stats"))
                .send()
                .await?
                .json()
                .await?;
            events += stats["streams"]["readings"]["events"].as_u64().unwrap_or(0);
        }
        if events >= args.events as u64 {
            let secs = started.elapsed().as_secs_f64();
            return Ok((secs, args.events as f64 / secs, urls));
        }
        if Instant::now() > deadline {
            bail!(
                "{n} speed process(es) read {events} of {} events in 600 s",
                args.events
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start_serve(procs: &mut Procs, config: &str, urls: &str, n: usize) -> anyhow::Result<String> {
    let port = free_port()?;
    let env = [
        ("TRIBUTARY_HTTP__ADDR", format!("127.0.0.1:{port}")),
        ("TRIBUTARY_SPEED__URLS", urls.to_string()),
        // The bench's own load: no rate limit in the way.
        ("TRIBUTARY_HTTP__RATE_LIMIT_PER_SECOND", "0".to_string()),
    ];
    let cli = ["--config".to_string(), config.to_string(), "serve".into()];
    procs.spawn(&format!("serve-{n}"), &cli, &env)?;
    Ok(format!("http://127.0.0.1:{port}"))
}

async fn wait_ready(base: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = client.get(format!("{base}/ready")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{base} was not ready within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `connections` closed-loop clients, shared out over `serves`, for `seconds`:
/// requests per second and latency percentiles (ms) of the answered ones.
async fn load(
    serves: &[String],
    connections: usize,
    seconds: u64,
) -> anyhow::Result<(f64, f64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let url = format!(
            "{}/api/v1/views/signal_by_type?device_type=pump",
            serves[c % serves.len()]
        );
        let (stop, failed) = (stop.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut micros = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        micros.push(t.elapsed().as_micros() as u64);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            micros
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} view queries failed");
    }
    all.sort_unstable();
    Ok((
        all.len() as f64 / seconds as f64,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    ))
}
