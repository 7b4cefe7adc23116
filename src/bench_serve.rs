//! `tributary bench serve`: view-query latency and end-to-end freshness against a running
//! Tributary (start it first, e.g. `tributary up`), while ingest runs at a set rate.
//!
//! Three loads run at once for `--seconds`: ingest posts batches of readings at
//! `--ingest-rate` events/s; an open-loop client issues the dashboard-style query (one
//! key, the last day of windows) at `--rate` requests/s over `--connections`
//! connections; a probe posts one event at a time and polls the view until it counts,
//! measuring freshness (POST accepted → visible in the view API).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::Mutex;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where Tributary listens.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long, default_value = "signal_by_type")]
    pub view: String,
    #[arg(long, default_value = "readings")]
    pub stream: String,
    /// The key column the dashboard query filters on, and its value.
    #[arg(long, default_value = "device_type")]
    pub key: String,
    #[arg(long, default_value = "pump")]
    pub key_value: String,
    /// View queries per second (open loop).
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Events per second posted meanwhile.
    #[arg(long, default_value_t = 50_000)]
    pub ingest_rate: u64,
    /// Concurrent query connections at most.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

pub(crate) fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

pub(crate) fn event(kind: &str, device: u64) -> Value {
    json!({
        "device": format!("bench-{device}"),
        "device_type": kind,
        "signal": 20.0 + (device % 50) as f64,
        "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

pub async fn serve(args: Args) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()?;
    let health = client
        .get(format!("{}/health", args.url))
        .send()
        .await
        .with_context(|| format!("no Tributary at {} (start one: tributary up)", args.url))?;
    if !health.status().is_success() {
        bail!("{} answers /health with {}", args.url, health.status());
    }
    let from = (chrono::Utc::now() - chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let query_url = format!(
        "{}/api/v1/views/{}?{}={}&from={from}&meta=false",
        args.url, args.view, args.key, args.key_value
    );
    let probe_url = format!(
        "{}/api/v1/views/{}?{}=bench-probe",
        args.url, args.view, args.key
    );
    let post_url = format!("{}/api/v1/streams/{}/events", args.url, args.stream);
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let ingested = Arc::new(IngestCounters::default());
    let ingest = spawn_ingest(&client, &post_url, args.ingest_rate, &stop, &ingested);
    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let queries = spawn_queries(&client, query_url, &args, &stop, &latencies, &errors);
    let mut freshness = probe_freshness(&client, &post_url, &probe_url, deadline).await?;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::join!(ingest, queries);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut lat = latencies.lock().await.clone();
    lat.sort_unstable();
    freshness.sort_unstable();
    let secs = args.seconds as f64;
    println!(
        "view query ({}={}, last day): {:.0} requests/s answered (target {}), p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} failed or shed",
        args.key,
        args.key_value,
        lat.len() as f64 / secs,
        args.rate,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
        errors.load(Ordering::Relaxed)
    );
    println!(
        "ingest meanwhile: {:.0} events/s accepted (target {}), {} batches failed",
        ingested.accepted.load(Ordering::Relaxed) as f64 / secs,
        args.ingest_rate,
        ingested.failed.load(Ordering::Relaxed)
    );
    println!(
        "freshness (POST accepted → visible in the view API), {} probes: p50 {:.1} ms, p99 {:.1} ms",
        freshness.len(),
        percentile(&freshness, 0.5),
        percentile(&freshness, 0.99)
    );
    Ok(())
}

/// What the steady ingest load achieved so far.
#[derive(Default)]
pub(crate) struct IngestCounters {
    /// Events in batches ingest answered 2xx.
    pub accepted: AtomicU64,
    /// Batches refused, failed in transport, or not sent because 64 were in flight.
    pub failed: AtomicU64,
}

/// Ingest at a steady rate, in batches of 500, at most 64 requests in flight.
pub(crate) fn spawn_ingest(
    client: &reqwest::Client,
    url: &str,
    rate: u64,
    stop: &Arc<AtomicBool>,
    ingested: &Arc<IngestCounters>,
) -> tokio::task::JoinHandle<()> {
    let (client, url, stop, ingested) = (
        client.clone(),
        url.to_string(),
        stop.clone(),
        ingested.clone(),
    );
    let kinds = ["pump", "fan", "valve"];
    let per_second = rate.max(1);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
    tokio::spawn(async move {
        let batch = 500u64;
        let mut tick =
            tokio::time::interval(Duration::from_secs_f64(batch as f64 / per_second as f64));
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let events: Vec<Value> = (0..batch)
                .map(|i| event(kinds[((n + i) % 3) as usize], n + i))
                .collect();
            n += batch;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                ingested.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (client, url, ingested) = (client.clone(), url.clone(), ingested.clone());
            tokio::spawn(async move {
                let ok = match client.post(&url).json(&events).send().await {
                    Ok(r) => r.status().is_success(),
                    Err(_) => false,
                };
                drop(permit);
                let counter = if ok {
                    &ingested.accepted
                } else {
                    &ingested.failed
                };
                counter.fetch_add(if ok { batch } else { 1 }, Ordering::Relaxed);
            });
        }
    })
}

/// Open-loop queries: each is sent on schedule whether or not earlier ones returned.
fn spawn_queries(
    client: &reqwest::Client,
    query_url: String,
    args: &Args,
    stop: &Arc<AtomicBool>,
    latencies: &Arc<Mutex<Vec<u64>>>,
    errors: &Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(args.connections));
    let (client, stop, latencies, errors) = (
        client.clone(),
        stop.clone(),
        latencies.clone(),
        errors.clone(),
    );
    let every = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                // Every connection busy: count it as a miss, keep the schedule.
                errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (client, url, latencies, errors) = (
                client.clone(),
                query_url.clone(),
                latencies.clone(),
                errors.clone(),
            );
            tokio::spawn(async move {
                let t = Instant::now();
                let ok = match client.get(&url).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                let us = t.elapsed().as_micros() as u64;
                drop(permit);
                if ok {
                    latencies.lock().await.push(us);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    })
}

/// Freshness: one probe event at a time, polled until the view counts it; microseconds
/// from the POST's answer to the view's.
async fn probe_freshness(
    client: &reqwest::Client,
    post_url: &str,
    probe_url: &str,
    deadline: Instant,
) -> anyhow::Result<Vec<u64>> {
    let mut freshness = Vec::new();
    let mut seen = count(client, probe_url).await;
    let mut n = 0;
    while Instant::now() < deadline {
        let sent = Instant::now();
        let r = client
            .post(post_url)
            .json(&json!([event("bench-probe", n)]))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("the probe event was refused: {}", r.status());
        }
        let accepted = Instant::now();
        n += 1;
        loop {
            let c = count(client, probe_url).await;
            if c > seen {
                seen = c;
                freshness.push(accepted.elapsed().as_micros() as u64);
                break;
            }
            if sent.elapsed() > Duration::from_secs(10) {
                bail!("a probe event did not show in the view within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(freshness)
}

pub(crate) async fn count(client: &reqwest::Client, url: &str) -> i64 {
    let Ok(r) = client.get(url).send().await else {
        return 0;
    };
    let Ok(v) = r.json::<Value>().await else {
        return 0;
    };
    v["rows"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["readings"].as_i64()).sum())
        .unwrap_or(0)
}
