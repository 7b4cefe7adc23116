//! Property: whatever events arrive (any order, any lateness, duplicates, invalid ones)
//! and wherever batch runs fall between them, the merged answer of every view equals
//! DataFusion running the view's SQL in one pass over every accepted event.
//!
//! Every case, and every step of shrinking a failure, runs against a fresh `tributary
//! up` of its own, so a reported case reproduces alone. Failures are kept in
//! `tests/merge_property.proptest-regressions` and replayed first on the next run.

mod common;

use common::Tributary;
use common::cluster::Cluster;
use common::views::{api_rows, pipeline, reference_streams, same_rows};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use serde_json::{Value, json};

const PIPELINE: &str = r#"
[[streams]]
name = "readings"
event-time = "ts"
key = "device"
partitions = 3
fields = [
  { name = "device", type = "string" },
  { name = "device_type", type = "string" },
  { name = "signal", type = "float64" },
  { name = "note", type = "string", nullable = true },
  { name = "ts", type = "timestamp" },
]

[[streams]]
name = "alarms"
event-time = "ts"
key = "device"
partitions = 2
fields = [
  { name = "device", type = "string" },
  { name = "level", type = "int64" },
  { name = "ts", type = "timestamp" },
]

[[views]]
name = "iot"
sql = """
SELECT device_type, date_bin(INTERVAL '10 minutes', ts) AS window_start,
       avg(signal) AS avg_signal, max(signal) AS max_signal, count(*) AS readings
FROM readings WHERE signal > 15
GROUP BY device_type, window_start
"""

[[views]]
name = "hopping"
allowed-lateness-ms = 600000
sql = """
SELECT device_type, hop(ts, INTERVAL '15 minutes', INTERVAL '5 minutes') AS window_start,
       count(note) AS notes, min(signal) AS low, sum(signal) AS total,
       approx_distinct(device) AS devices, var_pop(signal) AS spread,
       bool_or(note IS NOT NULL) AS noted
FROM readings
GROUP BY device_type, window_start
"""

[[views]]
name = "per_device"
sql = """
SELECT device, date_bin(INTERVAL '1 hour', ts) AS hour, count(*) AS n, min(device_type) AS kind
FROM readings
GROUP BY device, hour
HAVING count(*) >= 2
"""

[[views]]
name = "sessions"
sql = """
SELECT device, session(ts, INTERVAL '20 minutes') AS session_start,
       count(*) AS n, sum(signal) AS total, max(signal) AS peak,
       stddev(signal) AS spread, bit_xor(CAST(signal * 10 AS BIGINT)) AS tenths_xor
FROM readings WHERE signal > 5
GROUP BY device, session_start
"""

[[views]]
name = "alarmed"
sql = """
SELECT r.device_type, date_bin(INTERVAL '30 minutes', r.ts) AS window_start,
       count(*) AS pairs, sum(a.level) AS levels, max(r.signal) AS peak,
       approx_distinct(a.device) AS devices
FROM readings r JOIN alarms a
  ON r.device = a.device AND a.ts BETWEEN r.ts - INTERVAL '40 minutes' AND r.ts + INTERVAL '20 minutes'
WHERE a.level > 0
GROUP BY r.device_type, window_start
"""

[[views]]
name = "unalarmed"
sql = """
SELECT r.device_type, date_bin(INTERVAL '30 minutes', r.ts) AS window_start,
       count(*) AS readings, count(a.device) AS alarms, sum(a.level) AS levels,
       avg(r.signal) AS mean_signal
FROM readings r LEFT JOIN alarms a
  ON r.device = a.device AND a.ts BETWEEN r.ts - INTERVAL '30 minutes' AND r.ts + INTERVAL '10 minutes'
GROUP BY r.device_type, window_start
"""
"#;

#[derive(Debug, Clone)]
enum Step {
    /// Post these events in one request.
    Post(Vec<Value>),
    /// Post these alarms (the join view's other stream) in one request.
    Alarms(Vec<Value>),
    /// Post again an event posted before (at this index, modulo their number).
    Duplicate(usize),
    BatchRun,
}

fn event() -> impl Strategy<Value = (Value, bool)> {
    (
        0..6u32,
        0..3usize,
        0..1000u32,
        prop::option::of("[a-z]{1,3}"),
        -180..180i64,
        0..60u32,
        0..12u32,
    )
        .prop_map(|(d, ty, signal, note, minutes, secs, invalid)| {
            let ts = chrono::DateTime::parse_from_rfc3339("2026-05-01T12:00:00Z").unwrap()
                + chrono::Duration::minutes(minutes)
                + chrono::Duration::seconds(secs as i64);
            let kind = ["pump", "fan", "valve"][ty];
            let mut e = json!({
                "device": format!("d{d}"),
                "device_type": kind,
                "signal": signal as f64 / 10.0,
                "ts": ts.to_rfc3339(),
            });
            if let Some(n) = note {
                e["note"] = json!(n);
            }
            // One in twelve is invalid and must count nowhere.
            let valid = invalid != 0;
            if !valid {
                e["signal"] = json!("n/a");
            }
            (e, valid)
        })
}

/// An alarm of one of the readings' devices, at any time of their span; one in ten is
/// invalid.
fn alarm() -> impl Strategy<Value = (Value, bool)> {
    (0..6u32, -2..5i64, -180..180i64, 0..10u32).prop_map(|(d, level, minutes, invalid)| {
        let ts = chrono::DateTime::parse_from_rfc3339("2026-05-01T12:00:00Z").unwrap()
            + chrono::Duration::minutes(minutes);
        let mut e = json!({"device": format!("d{d}"), "level": level, "ts": ts.to_rfc3339()});
        let valid = invalid != 0;
        if !valid {
            e["level"] = json!("high");
        }
        (e, valid)
    })
}

fn steps() -> impl Strategy<Value = Vec<(Step, Vec<bool>)>> {
    let post = prop::collection::vec(event(), 1..25).prop_map(|evs| {
        let (events, valid): (Vec<Value>, Vec<bool>) = evs.into_iter().unzip();
        (Step::Post(events), valid)
    });
    let alarms = prop::collection::vec(alarm(), 1..20).prop_map(|evs| {
        let (events, valid): (Vec<Value>, Vec<bool>) = evs.into_iter().unzip();
        (Step::Alarms(events), valid)
    });
    let step = prop_oneof![
        6 => post,
        3 => alarms,
        2 => any::<usize>().prop_map(|i| (Step::Duplicate(i), vec![])),
        2 => Just((Step::BatchRun, vec![])),
    ];
    prop::collection::vec(step, 1..7)
}

#[test]
fn merged_answers_equal_one_pass_sql_over_accepted_events() {
    property(20, None);
}

/// The same property with every batch run on a Ballista cluster (a scheduler and two
/// executors shared by the cases): the states it writes merge as a local run's do.
#[test]
fn merged_answers_stay_exact_with_the_batch_layer_on_ballista() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 2);
    property(10, Some(&cluster));
}

/// Post `events` to `stream` in one request; those `valid` must be accepted.
async fn post(
    t: &Tributary,
    stream: &str,
    events: Vec<Value>,
    valid: Vec<bool>,
    accepted: &mut Vec<(String, Value)>,
) -> Result<(), TestCaseError> {
    let (status, body) = t.post(stream, &Value::Array(events.clone())).await;
    let want = valid.iter().filter(|v| **v).count();
    prop_assert!(status == 200 || status == 400, "{status}: {body}");
    prop_assert_eq!(body["accepted"].as_u64(), Some(want as u64), "{}", body);
    accepted.extend(
        events
            .into_iter()
            .zip(valid)
            .filter(|(_, v)| *v)
            .map(|(e, _)| (stream.to_string(), e)),
    );
    Ok(())
}

/// Run `cases` cases, each against a fresh `tributary up` (batch runs on `cluster`
/// when given).
fn property(cases: u32, cluster: Option<&Cluster>) {
    let env = cluster.map(Cluster::env).unwrap_or_default();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let p = rt.block_on(pipeline(PIPELINE));
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 16,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/merge_property.proptest-regressions",
        ))),
        ..Config::default()
    });
    // The last failing instance's log, to show beside the minimal case.
    let last_log = std::cell::RefCell::new(String::new());
    let result = runner.run(&steps(), |steps| {
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let config = Tributary::configure_pipeline(dir.path(), "", 50, PIPELINE);
            let t = Tributary::start_role(dir.path(), &config, "up", &env).await;
            let outcome = one_case(&t, &p, steps, cluster.is_some()).await;
            if outcome.is_err() {
                *last_log.borrow_mut() = t.logs();
            }
            outcome
        })
    });
    if let Err(e) = result {
        panic!("{e}\n--- tributary log ---\n{}", last_log.borrow());
    }
}

/// Play `steps` against `t`, then compare every view with the one-pass reference.
async fn one_case(
    t: &Tributary,
    p: &tributary_core::pipeline::Pipeline,
    steps: Vec<(Step, Vec<bool>)>,
    on_ballista: bool,
) -> Result<(), TestCaseError> {
    // Accepted events of each stream, as `(stream, event)`.
    let mut accepted = Vec::<(String, Value)>::new();
    for (step, valid) in steps {
        match step {
            Step::Post(events) => post(t, "readings", events, valid, &mut accepted).await?,
            Step::Alarms(events) => post(t, "alarms", events, valid, &mut accepted).await?,
            Step::Duplicate(i) => {
                let readings: Vec<&Value> = accepted
                    .iter()
                    .filter(|(s, _)| s == "readings")
                    .map(|(_, e)| e)
                    .collect();
                if readings.is_empty() {
                    continue;
                }
                let e = readings[i % readings.len()].clone();
                let (status, body) = t.post("readings", &json!([e])).await;
                prop_assert_eq!(status, 200, "{}", body);
                accepted.push(("readings".into(), e));
            }
            Step::BatchRun => {
                // Past a segment boundary (1 s here), so that the run's cutoff can fall
                // above the events so far and later ones pair or merge across it.
                tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
                let run = t.run_batch().await;
                let engine = if on_ballista { "ballista" } else { "local" };
                prop_assert_eq!(&run["engine"], engine, "{}", run);
            }
        }
    }
    let count = |stream: &str| accepted.iter().filter(|(s, _)| s == stream).count() as u64;
    let (n, alarms) = (count("readings"), count("alarms"));
    t.wait_for("/api/v1/speed/stats", |s| {
        s["streams"]["readings"]["events"].as_u64() == Some(n)
            && s["streams"]["alarms"]["events"].as_u64() == Some(alarms)
    })
    .await;
    for v in &p.views {
        let (status, answer) = t.get(&format!("/api/v1/views/{}", v.name)).await;
        prop_assert_eq!(status, 200, "{}", answer);
        let want = reference_streams(p, &v, &accepted).await;
        let got = api_rows(&v, &answer);
        same_rows(&format!("view {} after {n} events", v.name), &got, &want)
            .map_err(TestCaseError::fail)?;
    }
    Ok(())
}
