//! `tributary bench soak`: a long run against a running Tributary (start it first, e.g.
//! `tributary up`) at a fixed ingest rate, sampling what drifts over time.
//!
//! Ingest posts batches of readings at `--rate` events/s for `--seconds`; a probe posts
//! one event every 200 ms and polls the view until it counts it (freshness: POST
//! accepted → visible in the view API); every `--sample-seconds` the process's status
//! document is read for its resident memory, the speed layer's and the archiver's lag
//! and the views' state size. Each sample is printed as a row (and written to `--csv`);
//! the summary says whether memory stayed flat: its growth per hour over the second half
//! of the run, by least squares.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::bench_serve::{IngestCounters, count, event, percentile, spawn_ingest};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where Tributary listens.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, default_value = "signal_by_type")]
    view: String,
    #[arg(long, default_value = "readings")]
    stream: String,
    /// The key column the probe's events set (to a value of their own).
    #[arg(long, default_value = "device_type")]
    key: String,
    /// Events per second posted (batches of 500).
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// How long the soak runs.
    #[arg(long, default_value_t = 1_800)]
    seconds: u64,
    /// Seconds between two samples.
    #[arg(long, default_value_t = 10)]
    sample_seconds: u64,
    /// Also write every sample to this CSV file.
    #[arg(long)]
    csv: Option<PathBuf>,
}

/// One reading of the process and of the loads since the previous one.
struct Sample {
    at_s: f64,
    rss_mb: f64,
    state_mb: f64,
    speed_lag: u64,
    archiver_lag: u64,
    accepted_per_s: f64,
    failed: u64,
    probe_errors: u64,
    fresh_p50_ms: f64,
    fresh_p99_ms: f64,
}

/// What the freshness probe saw, drained by each sample.
#[derive(Default)]
struct Probes {
    /// Microseconds from a probe's accepted POST to the view counting it.
    since_last: Mutex<Vec<u64>>,
    /// Every probe of the run, for the summary.
    all: Mutex<Vec<u64>>,
    /// Probes refused, or not visible within 10 s.
    errors: AtomicU64,
}

pub async fn soak(args: Args) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(80)
        .build()?;
    status(&client, &args.url)
        .await
        .with_context(|| format!("no Tributary at {} (start one: tributary up)", args.url))?;
    let post_url = format!("{}/api/v1/streams/{}/events", args.url, args.stream);
    let probe_url = format!(
        "{}/api/v1/views/{}?{}=bench-probe",
        args.url, args.view, args.key
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ingested = Arc::new(IngestCounters::default());
    let ingest = spawn_ingest(&client, &post_url, args.rate, &stop, &ingested);
    let probes = Arc::new(Probes::default());
    let probe = spawn_probe(&client, &post_url, &probe_url, &stop, &probes);
    let mut csv = match &args.csv {
        Some(path) => {
            Some(std::fs::File::create(path).with_context(|| path.display().to_string())?)
        }
        None => None,
    };
    write_csv_header(csv.as_mut())?;
    println!(
        "soak: {} events/s for {} s against {}, a sample every {} s",
        args.rate, args.seconds, args.url, args.sample_seconds
    );
    println!(
        "{:>7} {:>9} {:>9} {:>10} {:>12} {:>11} {:>7} {:>7} {:>14}",
        "t (s)",
        "RSS MB",
        "state MB",
        "speed lag",
        "archive lag",
        "events/s",
        "failed",
        "probe!",
        "fresh p50/p99"
    );
    let samples = sample_loop(&client, &args, &ingested, &probes, csv.as_mut()).await?;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::join!(ingest, probe);
    summarise(&samples, &ingested, &probes, &args).await;
    Ok(())
}

async fn sample_loop(
    client: &reqwest::Client,
    args: &Args,
    ingested: &IngestCounters,
    probes: &Probes,
    mut csv: Option<&mut std::fs::File>,
) -> anyhow::Result<Vec<Sample>> {
    let started = Instant::now();
    let every = Duration::from_secs(args.sample_seconds.max(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let (mut last_accepted, mut last_failed, mut last_probe_errors) = (0, 0, 0);
    let mut last_at = 0.0;
    let mut samples = Vec::new();
    while started.elapsed().as_secs() < args.seconds {
        tick.tick().await;
        let at_s = started.elapsed().as_secs_f64();
        let doc = status(client, &args.url).await?;
        let accepted = ingested.accepted.load(Ordering::Relaxed);
        let failed = ingested.failed.load(Ordering::Relaxed);
        let probe_errors = probes.errors.load(Ordering::Relaxed);
        let mut fresh = std::mem::take(&mut *probes.since_last.lock().await);
        fresh.sort_unstable();
        let sample = Sample {
            at_s,
            rss_mb: doc["process"]["rss_bytes"].as_f64().unwrap_or(f64::NAN) / 1e6,
            state_mb: sum(&doc["views"], |v| &v["state_bytes"]) as f64 / 1e6,
            speed_lag: sum_streams(&doc, |s| &s["speed"]["lag"]),
            archiver_lag: sum_streams(&doc, |s| &s["archiver_lag"]),
            accepted_per_s: (accepted - last_accepted) as f64 / (at_s - last_at),
            failed: failed - last_failed,
            probe_errors: probe_errors - last_probe_errors,
            fresh_p50_ms: percentile(&fresh, 0.5),
            fresh_p99_ms: percentile(&fresh, 0.99),
        };
        (last_accepted, last_failed, last_probe_errors, last_at) =
            (accepted, failed, probe_errors, at_s);
        print_row(&sample);
        write_csv_row(csv.as_deref_mut(), &sample)?;
        samples.push(sample);
    }
    Ok(samples)
}

async fn status(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let r = client.get(format!("{url}/api/v1/status")).send().await?;
    if !r.status().is_success() {
        bail!("{url}/api/v1/status answered {}", r.status());
    }
    Ok(r.json().await?)
}

fn sum(list: &Value, field: impl Fn(&Value) -> &Value) -> u64 {
    list.as_array()
        .map(|items| items.iter().filter_map(|i| field(i).as_u64()).sum())
        .unwrap_or(0)
}

fn sum_streams(doc: &Value, field: impl Fn(&Value) -> &Value) -> u64 {
    doc["streams"]
        .as_object()
        .map(|streams| streams.values().filter_map(|s| field(s).as_u64()).sum())
        .unwrap_or(0)
}

/// One probe event every 200 ms, each polled until the view counts it.
fn spawn_probe(
    client: &reqwest::Client,
    post_url: &str,
    probe_url: &str,
    stop: &Arc<AtomicBool>,
    probes: &Arc<Probes>,
) -> tokio::task::JoinHandle<()> {
    let (client, post_url, probe_url, stop, probes) = (
        client.clone(),
        post_url.to_string(),
        probe_url.to_string(),
        stop.clone(),
        probes.clone(),
    );
    tokio::spawn(async move {
        let mut seen = count(&client, &probe_url).await;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            match probe_once(&client, &post_url, &probe_url, n, seen).await {
                Some((us, now_seen)) => {
                    seen = now_seen;
                    probes.since_last.lock().await.push(us);
                    probes.all.lock().await.push(us);
                }
                None => {
                    probes.errors.fetch_add(1, Ordering::Relaxed);
                    seen = count(&client, &probe_url).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Post one probe event and wait until the view's count passes `seen`: the
/// microseconds that took after the POST was accepted, and the new count.
async fn probe_once(
    client: &reqwest::Client,
    post_url: &str,
    probe_url: &str,
    n: u64,
    seen: i64,
) -> Option<(u64, i64)> {
    let r = client
        .post(post_url)
        .json(&json!([event("bench-probe", n)]))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let accepted = Instant::now();
    while accepted.elapsed() < Duration::from_secs(10) {
        let c = count(client, probe_url).await;
        if c > seen {
            return Some((accepted.elapsed().as_micros() as u64, c));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

fn print_row(s: &Sample) {
    println!(
        "{:>7.0} {:>9.1} {:>9.2} {:>10} {:>12} {:>11.0} {:>7} {:>7} {:>6.1} / {:>5.1}",
        s.at_s,
        s.rss_mb,
        s.state_mb,
        s.speed_lag,
        s.archiver_lag,
        s.accepted_per_s,
        s.failed,
        s.probe_errors,
        s.fresh_p50_ms,
        s.fresh_p99_ms
    );
}

fn write_csv_header(csv: Option<&mut std::fs::File>) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(f) = csv {
        writeln!(
            f,
            "seconds,rss_mb,state_mb,speed_lag,archiver_lag,accepted_per_s,failed_batches,probe_errors,freshness_p50_ms,freshness_p99_ms"
        )?;
    }
    Ok(())
}

fn write_csv_row(csv: Option<&mut std::fs::File>, s: &Sample) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(f) = csv {
        writeln!(
            f,
            "{:.1},{:.2},{:.3},{},{},{:.0},{},{},{:.2},{:.2}",
            s.at_s,
            s.rss_mb,
            s.state_mb,
            s.speed_lag,
            s.archiver_lag,
            s.accepted_per_s,
            s.failed,
            s.probe_errors,
            s.fresh_p50_ms,
            s.fresh_p99_ms
        )?;
    }
    Ok(())
}

/// Memory growth in MB per hour: the least-squares slope of RSS over time.
fn slope_mb_per_hour(samples: &[Sample]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return f64::NAN;
    }
    let mean_t = samples.iter().map(|s| s.at_s).sum::<f64>() / n;
    let mean_m = samples.iter().map(|s| s.rss_mb).sum::<f64>() / n;
    let (mut cov, mut var) = (0.0, 0.0);
    for s in samples {
        cov += (s.at_s - mean_t) * (s.rss_mb - mean_m);
        var += (s.at_s - mean_t).powi(2);
    }
    cov / var * 3600.0
}

async fn summarise(samples: &[Sample], ingested: &IngestCounters, probes: &Probes, args: &Args) {
    let Some(last) = samples.last() else {
        println!("no samples (the run was shorter than one sample interval)");
        return;
    };
    let rss = |f: fn(f64, f64) -> f64| samples.iter().map(|s| s.rss_mb).fold(samples[0].rss_mb, f);
    let mut fresh = probes.all.lock().await.clone();
    fresh.sort_unstable();
    let accepted = ingested.accepted.load(Ordering::Relaxed);
    println!("summary over {:.0} s:", last.at_s);
    println!(
        "  ingest: {:.0} events/s accepted (asked {}), {} batches failed or shed",
        accepted as f64 / last.at_s,
        args.rate,
        ingested.failed.load(Ordering::Relaxed)
    );
    println!(
        "  RSS: first {:.1} MB, min {:.1}, max {:.1}, last {:.1}; growth over the second half {:+.1} MB/hour",
        samples[0].rss_mb,
        rss(f64::min),
        rss(f64::max),
        last.rss_mb,
        slope_mb_per_hour(&samples[samples.len() / 2..])
    );
    println!(
        "  speed state: last {:.2} MB; speed lag max {} records; archiver lag max {} records",
        last.state_mb,
        samples.iter().map(|s| s.speed_lag).max().unwrap_or(0),
        samples.iter().map(|s| s.archiver_lag).max().unwrap_or(0)
    );
    println!(
        "  freshness, {} probes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} probes refused or not visible within 10 s",
        fresh.len(),
        percentile(&fresh, 0.5),
        percentile(&fresh, 0.99),
        percentile(&fresh, 1.0),
        probes.errors.load(Ordering::Relaxed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_s: f64, rss_mb: f64) -> Sample {
        Sample {
            at_s,
            rss_mb,
            state_mb: 0.0,
            speed_lag: 0,
            archiver_lag: 0,
            accepted_per_s: 0.0,
            failed: 0,
            probe_errors: 0,
            fresh_p50_ms: 0.0,
            fresh_p99_ms: 0.0,
        }
    }

    #[test]
    fn the_growth_is_the_slope_per_hour_and_flat_noise_is_near_zero() {
        // 1 MB per minute, i.e. 60 MB per hour.
        let growing: Vec<_> = (0..30)
            .map(|i| at(i as f64 * 60.0, 200.0 + i as f64))
            .collect();
        assert!((slope_mb_per_hour(&growing) - 60.0).abs() < 1e-9);
        // Up and down around 300 MB: no trend.
        let flat: Vec<_> = (0..30)
            .map(|i| at(i as f64 * 10.0, if i % 2 == 0 { 299.0 } else { 301.0 }))
            .collect();
        assert!(
            slope_mb_per_hour(&flat).abs() < 15.0,
            "{}",
            slope_mb_per_hour(&flat)
        );
        assert!(slope_mb_per_hour(&growing[..1]).is_nan());
    }
}
