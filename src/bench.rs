//! `tributary bench speed`: the speed layer from JSON records in the log to updated
//! states, for the IoT view (tumbling windows), a session view over the same readings
//! and a view joining the readings with a second stream (alerts), each with DuckDB over
//! the same records as the reference.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use tributary_core::config::{self, ConfigSource, SpeedConfig};
use tributary_core::log::EventLog;
use tributary_core::pipeline::Pipeline;
use tributary_core::schema::{BatchDecoder, LogPosition, StreamSchema};
use tributary_core::shutdown::Shutdown;
use tributary_core::view::{SOURCE_SPEED, tag_source};
use tributary_ingest::log::EmbeddedLog;
use tributary_speed::SpeedLayer;

const TYPES: [&str; 4] = ["pump", "fan", "valve", "compressor"];

pub struct Args {
    pub events: usize,
    pub devices: u32,
    pub batch: usize,
    /// Worker threads, and threads that decode partitions at once.
    pub threads: usize,
    pub python: Option<PathBuf>,
    /// Which workloads to run: `iot`, `sessions`, `join`, `left_join`.
    pub views: Vec<String>,
}

/// The second stream of the `join` workload: an alert per device about every ten
/// minutes of the readings' hour.
const ALERTS: &str = r#"
[[streams]]
name = "alerts"
event-time = "ts"
key = "device"
partitions = 2
fields = [
  { name = "device", type = "string" },
  { name = "level", type = "int64" },
  { name = "ts", type = "timestamp" },
]
"#;

/// The alerts' JSON columns as DuckDB reads them.
const DUCKDB_ALERTS: &str = "read_json('{path}', format='newline_delimited', \
    columns={'device':'VARCHAR','level':'BIGINT','ts':'BIGINT'})";

/// One view measured by the bench: Tributary's SQL and DuckDB's over the same NDJSON.
struct Workload {
    name: &'static str,
    sql: &'static str,
    /// `{json}` stands for DuckDB's read of the records, `{alerts}` for the alerts'.
    duckdb: &'static str,
    /// Whether the view reads the alerts too.
    alerts: bool,
}

/// The bench's JSON columns as DuckDB reads them.
const DUCKDB_INPUT: &str = "read_json('{path}', format='newline_delimited', \
    columns={'device':'VARCHAR','device_type':'VARCHAR','signal':'DOUBLE','ts':'BIGINT'})";

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "iot",
        sql: "",
        duckdb: "SELECT device_type, time_bucket(INTERVAL '10 minutes', epoch_ms(ts)) AS w, \
            avg(signal), max(signal), count(*) FROM {json} WHERE signal > 15 GROUP BY ALL",
        alerts: false,
    },
    // Per device, sessions of readings at most 5 s apart (a reading every 1.8 s per
    // device on average: about one in sixteen starts a session).
    Workload {
        name: "sessions",
        sql: "SELECT device, session(ts, INTERVAL '5 seconds') AS session_start, \
            count(*) AS readings, avg(signal) AS avg_signal, max(signal) AS max_signal \
            FROM readings GROUP BY device, session_start",
        duckdb: "WITH e AS (SELECT device, epoch_ms(ts) AS t, signal FROM {json}), \
            s AS (SELECT *, CASE WHEN lag(t) OVER (PARTITION BY device ORDER BY t) \
              + INTERVAL 5 SECOND >= t THEN 0 ELSE 1 END AS new FROM e), \
            g AS (SELECT *, sum(new) OVER (PARTITION BY device ORDER BY t \
              ROWS UNBOUNDED PRECEDING) AS sid FROM s) \
            SELECT device, min(t), max(t) + INTERVAL 5 SECOND, count(*), avg(signal), \
              max(signal) FROM g GROUP BY device, sid",
        alerts: false,
    },
    // Per device type and 10 minutes, the readings within a minute of an alert of their
    // device (about 67 readings per alert).
    Workload {
        name: "join",
        sql: "SELECT r.device_type, date_bin(INTERVAL '10 minutes', r.ts) AS window_start, \
            count(*) AS near_alerts, avg(r.signal) AS avg_signal, max(a.level) AS top_level \
            FROM readings r JOIN alerts a ON r.device = a.device \
            AND a.ts BETWEEN r.ts - INTERVAL '1 minute' AND r.ts + INTERVAL '1 minute' \
            GROUP BY r.device_type, window_start",
        duckdb: "SELECT r.device_type, time_bucket(INTERVAL '10 minutes', epoch_ms(r.ts)) AS w, \
            count(*), avg(r.signal), max(a.level) FROM {json} r JOIN {alerts} a \
            ON r.device = a.device AND a.ts BETWEEN r.ts - 60000 AND r.ts + 60000 \
            GROUP BY ALL",
        alerts: true,
    },
    // The same pairs as a LEFT join: every reading counted, with or without an alert
    // of its device within a minute (most have none), and the weights of the
    // unmatched rows kept per bucket.
    Workload {
        name: "left_join",
        sql: "SELECT r.device_type, date_bin(INTERVAL '10 minutes', r.ts) AS window_start, \
            count(*) AS readings, count(a.level) AS near_alerts, sum(a.level) AS levels, \
            avg(r.signal) AS avg_signal \
            FROM readings r LEFT JOIN alerts a ON r.device = a.device \
            AND a.ts BETWEEN r.ts - INTERVAL '1 minute' AND r.ts + INTERVAL '1 minute' \
            GROUP BY r.device_type, window_start",
        duckdb: "SELECT r.device_type, time_bucket(INTERVAL '10 minutes', epoch_ms(r.ts)) AS w, \
            count(*), count(a.level), sum(a.level), avg(r.signal) FROM {json} r \
            LEFT JOIN {alerts} a \
            ON r.device = a.device AND a.ts BETWEEN r.ts - 60000 AND r.ts + 60000 \
            GROUP BY ALL",
        alerts: true,
    },
];

/// One alert per device every ten minutes of the readings' hour (at a random second).
fn alerts(devices: u32) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let start = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
    (0..6)
        .flat_map(|slot| (0..devices).map(move |d| (slot, d)))
        .map(|(slot, d)| {
            let ts = start + slot * 600_000 + rng.random_range(0..600_000);
            let level = rng.random_range(1..5);
            format!("{{\"device\":\"dev-{d:04}\",\"level\":{level},\"ts\":{ts}}}").into_bytes()
        })
        .collect()
}

fn records(n: usize, devices: u32) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let start = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
    (0..n)
        .map(|i| {
            let d = rng.random_range(0..devices);
            let ts = start + (i as i64 * 3_600_000 / n as i64) - rng.random_range(0..60_000);
            let signal = (rng.random_range(0.0..100.0f64) * 10.0).round() / 10.0;
            iot_record(d, signal, ts)
        })
        .collect()
}

/// One IoT reading as the benchmarks' log holds it (device `d`, its type from `d`).
pub fn iot_record(d: u32, signal: f64, ts_ms: i64) -> Vec<u8> {
    format!(
        "{{\"device\":\"dev-{d:04}\",\"device_type\":\"{}\",\"signal\":{signal},\"ts\":{ts_ms}}}",
        TYPES[d as usize % TYPES.len()]
    )
    .into_bytes()
}

/// The embedded IoT example: its configuration, pipeline and `readings` stream.
pub async fn iot_pipeline() -> anyhow::Result<(config::Config, Pipeline, StreamSchema)> {
    let (cfg, _) = config::load(None)?;
    let pipeline = Pipeline::from_config(&cfg, &ConfigSource::EmbeddedDefault).await?;
    let stream = pipeline
        .stream("readings")
        .context("the IoT example")?
        .clone();
    Ok((cfg, pipeline, stream))
}

/// The embedded example with `w`'s view as its only view (the IoT view itself for
/// `iot`).
async fn workload_pipeline(w: &Workload) -> anyhow::Result<Pipeline> {
    let (mut cfg, _) = config::load(None)?;
    if w.alerts {
        cfg.streams.extend(config::from_toml_str(ALERTS)?.streams);
    }
    if !w.sql.is_empty() {
        cfg.views = vec![config::ViewConfig {
            name: w.name.into(),
            sql: w.sql.into(),
            allowed_lateness_ms: 0,
            schedule: None,
        }];
        cfg.sinks.clear();
    }
    Ok(Pipeline::from_config(&cfg, &ConfigSource::EmbeddedDefault).await?)
}

pub async fn speed(args: Args) -> anyhow::Result<()> {
    let (_, _, stream) = iot_pipeline().await?;
    let dir = tempfile::tempdir()?;
    let data = records(args.events, args.devices);
    let bytes: usize = data.iter().map(Vec::len).sum();
    println!(
        "{} IoT readings ({} MB of JSON), {} devices, micro-batches of at most {} records per partition",
        args.events,
        bytes / 1_000_000,
        args.devices,
        args.batch
    );

    // Load the log (not timed): the readings, and the alerts the join reads beside them.
    let alerts = alerts(args.devices);
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(
        &dir.path().join("log"),
        &[
            (stream.name.clone(), stream.partitions),
            ("alerts".into(), 2),
        ],
    )?);
    for (i, chunk) in data.chunks(10_000).enumerate() {
        log.append(&stream.name, i as u32 % stream.partitions, chunk.to_vec())
            .await?;
    }
    for (i, chunk) in alerts.chunks(10_000).enumerate() {
        log.append("alerts", i as u32 % 2, chunk.to_vec()).await?;
    }

    let python = args
        .python
        .clone()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python")));
    let ndjson = dir.path().join("events.ndjson");
    std::fs::write(&ndjson, data.join(&b'\n'))?;
    let alerts_ndjson = dir.path().join("alerts.ndjson");
    std::fs::write(&alerts_ndjson, alerts.join(&b'\n'))?;
    for name in &args.views {
        let Some(w) = WORKLOADS.iter().find(|w| w.name == name) else {
            bail!("no workload `{name}` (there are: iot, sessions, join, left_join)");
        };
        let pipeline = workload_pipeline(w).await?;
        let view = pipeline.views.snapshot()[0].clone();
        let events = args.events + if w.alerts { alerts.len() } else { 0 };
        println!("\n{} view `{}` ({events} events):", w.name, view.name);
        let (speed_s, state_rows) = end_to_end(&pipeline, log.clone(), &args, events).await?;
        let rate = |s: f64| events as f64 / s;
        println!(
            "speed layer, log → states: {:.0} events/s ({speed_s:.2} s, {state_rows} state rows)",
            rate(speed_s)
        );
        if !w.alerts {
            let (read_s, decode_s, partial_s) =
                stages(&log, &stream, &view, &data, args.batch).await?;
            println!(
                "  stages alone: log read {:.0}/s, JSON → Arrow {:.0}/s, partial plan {:.0}/s",
                rate(read_s),
                rate(decode_s),
                rate(partial_s)
            );
        }
        let sql = w.duckdb.replace(
            "{alerts}",
            &DUCKDB_ALERTS.replace("{path}", &alerts_ndjson.display().to_string()),
        );
        match duckdb(&python, &ndjson, &sql) {
            Ok((s, rows)) => println!(
                "DuckDB, same NDJSON, one batch: {:.0} events/s ({s:.2} s, {rows} rows); Tributary/DuckDB = {:.2}",
                rate(s),
                s / speed_s
            ),
            Err(e) => bail!(
                "DuckDB reference failed ({e}); install it with `{} -m pip install duckdb` or pass --python",
                python.display()
            ),
        }
    }
    Ok(())
}

/// Where the time goes: each stage alone on the same records (log read, JSON to
/// Arrow, the partial plan), in seconds.
async fn stages(
    log: &Arc<dyn EventLog>,
    stream: &tributary_core::schema::StreamSchema,
    view: &tributary_core::view::CompiledView,
    data: &[Vec<u8>],
    batch: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let t = Instant::now();
    let mut read = 0;
    for p in 0..stream.partitions {
        let mut from = 0;
        loop {
            let b = log.read(&stream.name, p, from, batch).await?;
            if b.records.is_empty() {
                break;
            }
            read += b.records.len();
            from = b.next_offset;
        }
    }
    let read_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut batches = Vec::new();
    for chunk in data.chunks(batch) {
        let mut dec = BatchDecoder::new(stream, false);
        for (i, r) in chunk.iter().enumerate() {
            let at = LogPosition {
                partition: 0,
                offset: i as u64,
                ingest_ts: 1,
            };
            dec.push_bytes(r, at)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        batches.push(tag_source(&dec.flush()?, SOURCE_SPEED, &view.input_schema)?);
    }
    let decode_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for b in &batches {
        view.run_partial_batches(vec![b.clone()]).await?;
    }
    let partial_s = t.elapsed().as_secs_f64();
    if read != data.len() {
        bail!(
            "read {read} records back from the log, wrote {}",
            data.len()
        );
    }
    Ok((read_s, decode_s, partial_s))
}

/// The speed layer itself from the loaded log to states: seconds, and state rows.
async fn end_to_end(
    pipeline: &Pipeline,
    log: Arc<dyn EventLog>,
    args: &Args,
    events: usize,
) -> anyhow::Result<(f64, usize)> {
    let config = SpeedConfig {
        max_batch_records: args.batch,
        decode_threads: args.threads,
        ..SpeedConfig::default()
    };
    let started = Instant::now();
    let run = SpeedRun::start(pipeline, log, config);
    let layer = run.layer.clone();
    run.wait_for(events as u64).await?;
    let speed_s = started.elapsed().as_secs_f64();
    let state_rows: usize = layer.stats().views.iter().map(|v| v.state_rows).sum();
    Ok((speed_s, state_rows))
}

/// A speed layer reading a bench's log (as `tributary up` runs it), stopped once its
/// states hold a given number of events.
pub struct SpeedRun {
    layer: SpeedLayer,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), tributary_speed::SpeedError>>,
}

impl SpeedRun {
    pub fn start(pipeline: &Pipeline, log: Arc<dyn EventLog>, config: SpeedConfig) -> SpeedRun {
        let layer = SpeedLayer::new(pipeline, &config, &HashMap::new());
        let shutdown = Shutdown::new();
        let task = tokio::spawn(tributary_speed::run(
            config,
            pipeline.clone(),
            log,
            layer.clone(),
            None,
            shutdown.clone(),
        ));
        SpeedRun {
            layer,
            shutdown,
            task,
        }
    }

    /// Until the states hold `events` events (polled every millisecond), then stop.
    pub async fn wait_for(self, events: u64) -> anyhow::Result<()> {
        while self.layer.events_read() < events {
            if self.task.is_finished() {
                bail!("the speed layer stopped early");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

/// Seconds DuckDB needs for `sql` over the records at `path`, and its rows.
fn duckdb(python: &Path, path: &Path, sql: &str) -> anyhow::Result<(f64, usize)> {
    let input = DUCKDB_INPUT.replace("{path}", &path.display().to_string());
    let sql = sql.replace("{json}", &input);
    let script = format!(
        "import duckdb, time\n\
         con = duckdb.connect()\n\
         con.execute('SET enable_progress_bar = false')\n\
         t = time.time()\n\
         rows = con.execute(\"\"\"{sql}\"\"\").fetchall()\n\
         print(time.time() - t, len(rows))\n"
    );
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = String::from_utf8_lossy(&out.stdout);
    let mut parts = out.lines().last().unwrap_or_default().split_whitespace();
    let (Some(s), Some(rows)) = (parts.next(), parts.next()) else {
        bail!("DuckDB printed `{out}`, expected seconds and rows");
    };
    Ok((s.parse()?, rows.parse()?))
}
