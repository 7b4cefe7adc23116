//! `tributary bench ingest`: HTTP ingest into the durable embedded log, with and
//! without bad records, in one run: requests/s and events/s for 0% bad records and for
//! `--bad-percent`, and their ratio (issue 13 asks ≥ 0.8 at 1%). Each pass has its own
//! fresh storage root; the server is the real ingest router on loopback.
//!
//! With `--speed` the clean pass also runs the speed layer over the same log while the
//! client posts (as `tributary up` does), and reports events/s end to end: from the
//! first POST until the speed layer's states hold every accepted event.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tributary_core::config::SpeedConfig;
use tributary_core::dead_letter::DeadLetterSink;
use tributary_core::storage::Storage;
use tributary_ingest::log::EmbeddedLog;
use tributary_ingest::{Ingest, IngestLimits};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Requests per pass.
    #[arg(long, default_value_t = 2_000)]
    requests: usize,
    /// Records per request.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Share of bad records in the second pass, in percent.
    #[arg(long, default_value_t = 1.0)]
    bad_percent: f64,
    /// Also run the speed layer during the clean pass, and time until its states hold
    /// every accepted event.
    #[arg(long)]
    speed: bool,
}

struct Pass {
    seconds: f64,
    events: usize,
    rejected: usize,
    /// Seconds from the first POST until the speed layer held every accepted event
    /// (`--speed`, clean pass only).
    in_speed_states: Option<f64>,
}

pub async fn ingest(args: Args) -> anyhow::Result<()> {
    let clean = pass(&args, 0.0, args.speed).await?;
    let bad = pass(&args, args.bad_percent, false).await?;
    let rate = |p: &Pass| {
        (
            args.requests as f64 / p.seconds,
            p.events as f64 / p.seconds,
        )
    };
    let (clean_rps, clean_eps) = rate(&clean);
    let (bad_rps, bad_eps) = rate(&bad);
    println!(
        "ingest, {} requests of {} records, {} in flight:",
        args.requests, args.batch, args.connections
    );
    println!("  0% bad:  {clean_rps:>9.0} requests/s  {clean_eps:>11.0} events/s");
    if let Some(s) = clean.in_speed_states {
        println!(
            "  0% bad, POST → in the speed layer's states: {:>11.0} events/s ({:.0} ms after the last answer)",
            clean.events as f64 / s,
            (s - clean.seconds) * 1000.0
        );
    }
    println!(
        "  {}% bad: {bad_rps:>9.0} requests/s  {bad_eps:>11.0} events/s  ({} dead letters)",
        args.bad_percent, bad.rejected
    );
    println!(
        "  ratio (bad / clean requests/s): {:.2}",
        bad_rps / clean_rps
    );
    Ok(())
}

async fn pass(args: &Args, bad_percent: f64, speed: bool) -> anyhow::Result<Pass> {
    let dir = tempfile::tempdir()?;
    let (_, pipeline, stream) = crate::bench::iot_pipeline().await?;
    let storage = Storage::open(dir.path())?;
    let log = Arc::new(EmbeddedLog::open(
        &storage.log_dir(),
        &[(stream.name.clone(), stream.partitions)],
    )?);
    let speed = speed
        .then(|| crate::bench::SpeedRun::start(&pipeline, log.clone(), SpeedConfig::default()));
    let dead_letters = DeadLetterSink::new(storage.clone(), [stream.name.clone()])
        .with_spool(&storage.spool_dir(), "bench")?;
    let ingest = Arc::new(Ingest::new(
        pipeline.streams.clone(),
        log,
        dead_letters.clone(),
        IngestLimits::default(),
    ));
    let app = tributary_ingest::http::router(ingest, 64 << 20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!(
        "http://{}/api/v1/streams/{}/events",
        listener.local_addr()?,
        stream.name
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let every = (bad_percent > 0.0).then(|| (100.0 / bad_percent).round().max(1.0) as usize);
    // Shared, so a request's body is not copied on every send.
    let bodies: Vec<bytes::Bytes> = (0..args.connections)
        .map(|c| body(args.batch, c, every))
        .collect();
    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers = bodies.into_iter().map(|body| {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        let requests = args.requests;
        tokio::spawn(async move {
            let (mut events, mut rejected) = (0usize, 0usize);
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "ingest answered {}", r.status());
                let report: serde_json::Value = r.json().await?;
                events += report["accepted"].as_u64().unwrap_or(0) as usize;
                rejected += report["rejected"].as_u64().unwrap_or(0) as usize;
                anyhow::ensure!(report["dead_letters_stored"] == true, "{report}");
            }
            Ok::<_, anyhow::Error>((events, rejected))
        })
    });
    let mut pass = Pass {
        seconds: 0.0,
        events: 0,
        rejected: 0,
        in_speed_states: None,
    };
    for w in futures::future::join_all(workers).await {
        let (e, r) = w.context("an ingest worker")??;
        pass.events += e;
        pass.rejected += r;
    }
    pass.seconds = started.elapsed().as_secs_f64();
    server.abort();
    if let Some(speed) = speed {
        speed.wait_for(pass.events as u64).await?;
        pass.in_speed_states = Some(started.elapsed().as_secs_f64());
    }
    // Answered as stored means stored: every letter reaches the Delta table.
    dead_letters.flush(&stream.name).await?;
    let stored = dead_letters.read_all(&stream.name).await?.len();
    anyhow::ensure!(
        stored == pass.rejected,
        "{} records were rejected but {stored} dead letters are in Delta",
        pass.rejected
    );
    Ok(pass)
}

/// A request body of `batch` IoT readings, every `every`-th of them invalid (a string
/// where a float belongs).
fn body(batch: usize, worker: usize, every: Option<usize>) -> bytes::Bytes {
    let start = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
    let records: Vec<String> = (0..batch)
        .map(|i| {
            let d = (worker * batch + i) as u32 % 1000;
            if every.is_some_and(|e| i % e == e - 1) {
                format!(
                    "{{\"device\":\"dev-{d:04}\",\"device_type\":\"pump\",\"signal\":\"loud\",\"ts\":{start}}}"
                )
            } else {
                String::from_utf8(crate::bench::iot_record(d, (i % 100) as f64, start + i as i64))
                    .expect("the record is UTF-8")
            }
        })
        .collect();
    format!("[{}]", records.join(",")).into()
}
