//! Sinks against real receivers: a webhook receiver that fails every third call, a
//! Kafka topic on the test broker (tansu) read back with a consumer, a Delta table read
//! with delta-rs; the process SIGKILLed between deliveries. Every complete window is
//! delivered, its final version equals the merged answer, and a key seen twice always
//! carries the same row.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use common::{Tributary, delta_rows, free_port, kafka_brokers};
use serde_json::{Map, Value, json};

const SECRET: &str = "sink-test-secret-0123456789";
const TYPES: [&str; 3] = ["pump", "fan", "valve"];

/// Readings of every type at `minute` (minutes after 2026-01-01T00:00Z), signal 20+i.
fn readings(minute: u32, per_type: usize) -> Value {
    let mut out = Vec::new();
    for (t, kind) in TYPES.iter().enumerate() {
        for i in 0..per_type {
            out.push(json!({
                "device": format!("d{t}{i}"),
                "device_type": kind,
                "signal": 20.0 + (i as f64) + f64::from(minute) / 7.0,
                "ts": format!("2026-01-01T{:02}:{:02}:00Z", minute / 60, minute % 60),
            }));
        }
    }
    Value::Array(out)
}

fn sink_config(kind_lines: &str, mode: &str) -> String {
    format!(
        "[[sinks]]\nname = \"out\"\nview = \"signal_by_type\"\nmode = \"{mode}\"\nevery-ms = 100\nmax-backoff-ms = 400\nmax-rows = 2\n{kind_lines}\n"
    )
}

/// The identity of an emitted or answered row: its window and device type.
fn identity(row: &Map<String, Value>) -> (String, String) {
    (
        row["window_start"].as_str().unwrap().to_string(),
        row["device_type"].as_str().unwrap().to_string(),
    )
}

/// Per identity, the emitted row of the highest `_version`; and a check that a key seen
/// more than once always came with the same row.
fn latest(emitted: &[Map<String, Value>]) -> BTreeMap<(String, String), Map<String, Value>> {
    let mut by_key: BTreeMap<String, &Map<String, Value>> = BTreeMap::new();
    let mut out: BTreeMap<(String, String), Map<String, Value>> = BTreeMap::new();
    for row in emitted {
        let key = row["_key"].as_str().unwrap().to_string();
        if let Some(before) = by_key.insert(key.clone(), row) {
            assert_eq!(before, row, "key {key} was emitted with two different rows");
        }
        let id = identity(row);
        let newer = out
            .get(&id)
            .is_none_or(|r| r["_version"].as_u64() < row["_version"].as_u64());
        if newer {
            out.insert(id, row.clone());
        }
    }
    out
}

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
        _ => a == b,
    }
}

/// Every row of `answer` that `want` selects has its values as the latest emission.
fn assert_delivered(
    answer: &Value,
    emitted: &[Map<String, Value>],
    want: impl Fn(&Map<String, Value>) -> bool,
) {
    if let Err(e) = delivered(answer, emitted, want) {
        panic!("{e}");
    }
}

fn delivered(
    answer: &Value,
    emitted: &[Map<String, Value>],
    want: impl Fn(&Map<String, Value>) -> bool,
) -> Result<(), String> {
    let latest = latest(emitted);
    let mut checked = 0;
    for row in answer["rows"].as_array().unwrap() {
        let row = row.as_object().unwrap();
        if !want(row) {
            continue;
        }
        let id = identity(row);
        let got = latest
            .get(&id)
            .ok_or_else(|| format!("window {id:?} was never delivered; answer {answer}"))?;
        for v in ["avg_signal", "max_signal", "readings"] {
            if !close(&got[v], &row[v]) {
                return Err(format!(
                    "{id:?} {v}: delivered {} but the view says {}",
                    got[v], row[v]
                ));
            }
        }
        if got["_retracted"] != json!(false) {
            return Err(format!("{id:?} is retracted"));
        }
        checked += 1;
    }
    match checked {
        0 => Err(format!("no row of the answer was checked: {answer}")),
        _ => Ok(()),
    }
}

/// A webhook receiver that answers 500 to every third call and records the rows of
/// the others (after checking the signature).
#[derive(Default)]
struct Receiver {
    calls: usize,
    rows: Vec<Map<String, Value>>,
    bad_signatures: usize,
    deliveries: Vec<String>,
}

async fn receiver() -> (String, Arc<Mutex<Receiver>>) {
    let state = Arc::new(Mutex::new(Receiver::default()));
    let shared = state.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let state = shared.clone();
            async move {
                let mut r = state.lock().unwrap();
                r.calls += 1;
                if r.calls % 3 == 0 {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let want = tributary_serving::sinks::targets::signature(SECRET.as_bytes(), &body);
                let got = headers
                    .get("x-tributary-signature")
                    .and_then(|v| v.to_str().ok());
                if got != Some(want.as_str()) {
                    r.bad_signatures += 1;
                    return StatusCode::UNAUTHORIZED;
                }
                let delivery = headers["x-tributary-delivery"]
                    .to_str()
                    .unwrap()
                    .to_string();
                r.deliveries.push(delivery);
                let body: Value = serde_json::from_slice(&body).unwrap();
                for row in body["rows"].as_array().unwrap() {
                    r.rows.push(row.as_object().unwrap().clone());
                }
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(t: &Tributary, body: &Value) {
    let (status, report) = t.post("readings", body).await;
    assert_eq!(status, 200, "{report}");
}

#[tokio::test]
async fn webhook_append_delivers_every_complete_window_through_failures_and_sigkill() {
    let (url, received) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let kind = format!("kind = \"webhook\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"");
    let mut t = Tributary::start(dir.path(), &sink_config(&kind, "append")).await;
    let windows = |r: &Receiver| {
        r.rows
            .iter()
            .map(|row| identity(row).0)
            .collect::<std::collections::BTreeSet<_>>()
    };
    // Windows 00:00 and 00:10 complete once an event at 00:25 is seen; 00:20 is open.
    for minute in [1, 5, 12, 18, 21, 25] {
        post(&t, &readings(minute, 2)).await;
    }
    wait_until("windows 00:00 and 00:10", || {
        windows(&received.lock().unwrap()).len() >= 2
    })
    .await;
    assert!(
        !windows(&received.lock().unwrap()).contains("2026-01-01T00:20:00Z"),
        "an open window was emitted in append mode"
    );
    // A late event into a delivered window: a correction, the next version.
    post(&t, &readings(3, 1)).await;
    let corrections = |r: &Receiver| {
        r.rows
            .iter()
            .filter(|row| row["_correction"] == json!(true))
            .count()
    };
    wait_until("the corrections of 00:00 (one per type)", || {
        corrections(&received.lock().unwrap()) >= 3
    })
    .await;
    // A batch run moves the rows into the batch layer without changing them: nothing new.
    let before = received.lock().unwrap().rows.len();
    t.run_batch().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        received.lock().unwrap().rows.len(),
        before,
        "a batch run re-emitted rows"
    );

    t.kill9();
    t.restart().await;
    for minute in [33, 38, 44, 52] {
        post(&t, &readings(minute, 2)).await;
    }
    // Every complete window delivered as the view now says (a window's rows may span
    // deliveries: wait for the last one).
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let answer = t.get("/api/v1/views/signal_by_type").await.1;
        let complete = |row: &Map<String, Value>| row["complete"] == json!(true);
        let rows = received.lock().unwrap().rows.clone();
        match delivered(&answer, &rows, complete) {
            Ok(()) if windows(&received.lock().unwrap()).len() >= 5 => break answer,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let (_, sinks) = t.get("/api/v1/sinks").await;
    assert_eq!(sinks[0]["name"], "out", "{sinks}");
    assert!(sinks[0]["failures"].as_u64().unwrap() >= 1, "{sinks}");
    let r = received.lock().unwrap();
    assert_eq!(r.bad_signatures, 0);
    assert!(
        r.calls >= 3,
        "the receiver never failed a call: {} calls",
        r.calls
    );
    assert_delivered(&answer, &r.rows, |row| row["complete"] == json!(true));
    assert!(
        r.rows.iter().all(|row| row["_complete"] == json!(true)),
        "append mode emitted an incomplete window"
    );
}

#[tokio::test]
async fn kafka_update_mode_is_read_back_from_the_broker() {
    use rdkafka::Message;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let topic = format!("tributary-sink-test-{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let kind = format!(
        "kind = \"kafka\"\ntopic = \"{topic}\"\nbrokers = \"{}\"",
        kafka_brokers()
    );
    let t = Tributary::start(dir.path(), &sink_config(&kind, "update")).await;
    for minute in [1, 5, 12, 18, 21] {
        post(&t, &readings(minute, 3)).await;
    }
    let answer = t
        .wait_for("/api/v1/sinks", |s| {
            s[0]["rows"].as_u64() > Some(0) && s[0]["pending_rows"] == json!(0)
        })
        .await;
    assert!(
        answer[0]["target"].as_str().unwrap().contains(&topic),
        "{answer}"
    );
    // Settle: one more tick finds nothing new.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let answer = t.get("/api/v1/views/signal_by_type").await.1;

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", format!("sink-reader-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut emitted = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = answer["rows"].as_array().unwrap().len();
    while Instant::now() < deadline && latest(&emitted).len() < want {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let row: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let key = std::str::from_utf8(m.key().unwrap()).unwrap().to_string();
            let row = row.as_object().unwrap().clone();
            let id = identity(&row);
            assert_eq!(key, json!([id.0, id.1]).to_string(), "record key");
            emitted.push(row);
        }
    }
    assert_delivered(&answer, &emitted, |_| true);
}

#[tokio::test]
async fn delta_sink_is_exactly_once_through_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    let kind = "kind = \"delta\"\npath = \"sinks/out\"";
    let mut t = Tributary::start(dir.path(), &sink_config(kind, "update")).await;
    let mut minute = 0;
    for _ in 0..4 {
        for _ in 0..5 {
            post(&t, &readings(minute, 2)).await;
            minute += 3;
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        t.kill9();
        t.restart().await;
    }
    t.wait_for("/api/v1/sinks", |s| {
        s[0]["delivered_seq"].as_u64() > Some(0) && s[0]["pending_rows"] == json!(0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let answer = t.get("/api/v1/views/signal_by_type").await.1;
    t.terminate();
    let table = dir.path().join("data/sinks/out");
    let repeated = delta_rows(
        &table,
        "SELECT _key FROM t GROUP BY _key HAVING count(*) > 1",
    )
    .await;
    assert!(repeated.is_empty(), "keys written twice: {repeated:?}");
    let rows = delta_rows(
        &table,
        "SELECT CAST(window_start AS BIGINT), device_type, avg_signal, max_signal, readings, _version, _key, _retracted \
         FROM t",
    )
    .await;
    let emitted: Vec<Map<String, Value>> = rows
        .into_iter()
        .map(|r| {
            let ts = tributary_core::time::rfc3339(r[0].parse().unwrap());
            json!({
                "window_start": ts,
                "device_type": r[1],
                "avg_signal": r[2].parse::<f64>().unwrap(),
                "max_signal": r[3].parse::<f64>().unwrap(),
                "readings": r[4].parse::<i64>().unwrap(),
                "_version": r[5].parse::<u64>().unwrap(),
                "_key": r[6],
                "_retracted": r[7].parse::<bool>().unwrap(),
            })
            .as_object()
            .unwrap()
            .clone()
        })
        .collect();
    assert_delivered(&answer, &emitted, |_| true);
}

/// Chaining: a Kafka sink produces into the topic of a stream declared `from-view`, and
/// a view over that stream counts the upstream view's complete windows per hour.
#[tokio::test]
async fn a_kafka_sink_feeds_a_stream_and_its_view() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("chain{}.", free_port());
    let more = format!(
        r#"
[[sinks]]
name = "windows_out"
view = "signal_by_type"
kind = "kafka"
mode = "append"
topic = "{prefix}type_windows"
every-ms = 100

[[streams]]
name = "type_windows"
from-view = "signal_by_type"

[[views]]
name = "windows_per_hour"
sql = """
SELECT device_type, date_bin(INTERVAL '1 hour', window_start) AS hour,
       count(*) AS windows, sum(readings) AS readings
FROM type_windows WHERE NOT _correction
GROUP BY device_type, hour
"""
"#
    );
    let config = Tributary::configure_kafka_with(dir.path(), &prefix, &more);
    let t = Tributary::start_config(dir.path(), config).await;
    for minute in [1, 5, 12, 18, 21, 25, 33, 38, 44, 52, 61, 85] {
        post(&t, &readings(minute, 2)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let upstream = t.get("/api/v1/views/signal_by_type").await.1;
        let mut want: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
        for row in upstream["rows"].as_array().unwrap() {
            if row["complete"] != json!(true) {
                continue;
            }
            let ts = row["window_start"].as_str().unwrap();
            let hour = format!("{}:00:00Z", &ts[..13]);
            let e = want
                .entry((row["device_type"].as_str().unwrap().into(), hour))
                .or_default();
            e.0 += 1;
            e.1 += row["readings"].as_i64().unwrap();
        }
        let downstream = t.get("/api/v1/views/windows_per_hour").await.1;
        let got: BTreeMap<(String, String), (i64, i64)> = downstream["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        (
                            (
                                r["device_type"].as_str().unwrap().to_string(),
                                r["hour"].as_str().unwrap().to_string(),
                            ),
                            (
                                r["windows"].as_i64().unwrap(),
                                r["readings"].as_i64().unwrap(),
                            ),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        // 00:00-00:50 and 01:00 are complete (watermark 01:25): 7 windows per type.
        let windows: i64 = want.values().map(|(w, _)| w).sum();
        if windows == 21 && got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the chained view never matched: want {want:?}, got {got:?}\n{}",
            t.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
