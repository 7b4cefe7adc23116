//! End to end: the real binary, events over HTTP, answers before and after batch runs.

// A scenario test reads top to bottom as one story against one running process.
#![allow(clippy::too_many_lines)]

mod common;

use std::collections::BTreeMap;

use common::Tributary;
use serde_json::{Value, json};

type Key = (String, String);

#[derive(Debug, Clone, PartialEq)]
struct Row {
    avg: f64,
    max: f64,
    count: i64,
    source: String,
}

/// The view computed by hand from the events: filter, group, aggregate.
fn expected(events: &[(&str, &str, f64, &str)]) -> BTreeMap<Key, (f64, f64, i64)> {
    let mut groups: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
    for (_, ty, signal, ts) in events {
        if *signal <= 15.0 {
            continue;
        }
        let t = chrono::DateTime::parse_from_rfc3339(ts)
            .unwrap()
            .timestamp();
        let w = t - t.rem_euclid(600);
        let window = chrono::DateTime::from_timestamp(w, 0)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        groups
            .entry((ty.to_string(), window))
            .or_default()
            .push(*signal);
    }
    groups
        .into_iter()
        .map(|(k, v)| {
            let sum: f64 = v.iter().sum();
            let max = v.iter().cloned().fold(f64::MIN, f64::max);
            (k, (sum / v.len() as f64, max, v.len() as i64))
        })
        .collect()
}

fn rows(answer: &Value) -> BTreeMap<Key, Row> {
    answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                (
                    r["device_type"].as_str().unwrap().to_string(),
                    r["window_start"].as_str().unwrap().to_string(),
                ),
                Row {
                    avg: r["avg_signal"].as_f64().unwrap(),
                    max: r["max_signal"].as_f64().unwrap(),
                    count: r["readings"].as_i64().unwrap(),
                    source: r["_source"].as_str().unwrap().to_string(),
                },
            )
        })
        .collect()
}

fn assert_values(answer: &Value, events: &[(&str, &str, f64, &str)]) {
    let got = rows(answer);
    let want = expected(events);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "windows differ: {answer}"
    );
    for (k, (avg, max, count)) in want {
        let r = &got[&k];
        assert!((r.avg - avg).abs() < 1e-9, "{k:?} avg {} != {avg}", r.avg);
        assert_eq!(r.max, max, "{k:?} max");
        assert_eq!(r.count, count, "{k:?} count");
    }
}

fn sources(answer: &Value) -> BTreeMap<Key, String> {
    rows(answer)
        .into_iter()
        .map(|(k, r)| (k, r.source))
        .collect()
}

fn key(ty: &str, w: &str) -> Key {
    (ty.to_string(), w.to_string())
}

fn to_json(events: &[(&str, &str, f64, &str)]) -> Value {
    Value::Array(
        events
            .iter()
            .map(|(d, t, s, ts)| json!({"device": d, "device_type": t, "signal": s, "ts": ts}))
            .collect(),
    )
}

const VIEW: &str = "/api/v1/views/signal_by_type";

#[tokio::test]
async fn merged_answers_are_exact_before_and_after_batch_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tributary::start(dir.path(), "").await;

    // Out of order, filtered, and one reading two hours behind the rest.
    let first = [
        ("d1", "pump", 20.0, "2026-01-01T00:12:00Z"),
        ("d2", "pump", 30.0, "2026-01-01T00:03:00Z"),
        ("d3", "fan", 10.0, "2026-01-01T00:05:00Z"),
        ("d4", "fan", 16.0, "2026-01-01T00:07:00Z"),
        ("d1", "pump", 40.0, "2026-01-01T00:15:00Z"),
        ("d5", "valve", 50.0, "2025-12-31T22:00:00Z"),
        ("d2", "pump", 15.0, "2026-01-01T00:01:00Z"),
    ];
    let (status, report) = t.post("readings", &to_json(&first)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report,
        json!({"accepted": 7, "rejected": 0, "errors": [], "dead_letters_stored": true})
    );

    let answer = t
        .wait_for(VIEW, |v| v["rows"].as_array().is_some_and(|r| r.len() == 4))
        .await;
    assert_values(&answer, &first);
    assert!(answer["cutoff"].is_null(), "no batch run yet: {answer}");
    assert_eq!(answer["speed_watermark"], "2026-01-01T00:15:00Z");
    assert!(sources(&answer).values().all(|s| s == "speed"), "{answer}");
    // Spot checks against the hand computation itself.
    let r = rows(&answer);
    assert_eq!(r[&key("pump", "2026-01-01T00:10:00Z")].avg, 30.0);
    assert_eq!(r[&key("pump", "2026-01-01T00:10:00Z")].count, 2);
    assert_eq!(r[&key("valve", "2025-12-31T22:00:00Z")].max, 50.0);

    // The dashboard renders the same rows on the server (the browser then hydrates it).
    let page = t
        .client
        .get(format!("{}/views/signal_by_type", t.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"view-rows\""), "{page}");
    assert!(
        page.contains("signal_by_type") && page.contains("valve"),
        "{page}"
    );

    // A batch run whose cutoff covers everything: all rows come from the batch layer.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut run = t.run_batch().await;
    let mut answer = t.get(VIEW).await.1;
    for _ in 0..20 {
        if sources(&answer).values().all(|s| s == "batch") {
            break;
        }
        // The archiver had not committed everything yet; the next run will cover it.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        run = t.run_batch().await;
        answer = t.get(VIEW).await.1;
    }
    assert_values(&answer, &first);
    assert!(sources(&answer).values().all(|s| s == "batch"), "{answer}");
    assert_eq!(
        answer["cutoff"], run["cutoff"],
        "the answer names the run's cutoff"
    );
    assert_eq!(
        run["rows_in"], 7,
        "the run read every archived event: {run}"
    );

    // More events: into a batch window (both), a new window (speed), and a late one.
    let second = [
        ("d1", "pump", 60.0, "2026-01-01T00:18:00Z"),
        ("d6", "fan", 100.0, "2026-01-01T00:25:00Z"),
        ("d7", "valve", 24.0, "2025-12-31T22:05:00Z"),
    ];
    let (status, _) = t.post("readings", &to_json(&second)).await;
    assert_eq!(status, 200);
    let all: Vec<_> = first.iter().chain(second.iter()).cloned().collect();
    let answer = t
        .wait_for(VIEW, |v| {
            rows(v).contains_key(&key("fan", "2026-01-01T00:20:00Z"))
                && rows(v)[&key("valve", "2025-12-31T22:00:00Z")].count == 2
                && rows(v)[&key("pump", "2026-01-01T00:10:00Z")].count == 3
        })
        .await;
    assert_values(&answer, &all);
    let s = sources(&answer);
    assert_eq!(s[&key("pump", "2026-01-01T00:00:00Z")], "batch");
    assert_eq!(s[&key("pump", "2026-01-01T00:10:00Z")], "both");
    assert_eq!(s[&key("fan", "2026-01-01T00:00:00Z")], "batch");
    assert_eq!(s[&key("fan", "2026-01-01T00:20:00Z")], "speed");
    assert_eq!(s[&key("valve", "2025-12-31T22:00:00Z")], "both");
    assert_eq!(
        rows(&answer)[&key("valve", "2025-12-31T22:00:00Z")].avg,
        37.0
    );

    // Filters.
    let pumps = t.get(&format!("{VIEW}?device_type=pump")).await.1;
    assert_eq!(pumps["rows"].as_array().unwrap().len(), 2);
    let ranged = t
        .get(&format!(
            "{VIEW}?from=2026-01-01T00:10:00Z&to=2026-01-01T00:20:00Z"
        ))
        .await
        .1;
    assert_eq!(
        rows(&ranged).keys().collect::<Vec<_>>(),
        vec![&key("pump", "2026-01-01T00:10:00Z")]
    );
    let limited = t.get(&format!("{VIEW}?limit=1")).await.1;
    assert_eq!(
        rows(&limited).keys().collect::<Vec<_>>(),
        vec![&key("valve", "2025-12-31T22:00:00Z")]
    );
    let (status, err) = t.get(&format!("{VIEW}?colour=red")).await;
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("colour"), "{err}");
    let (status, err) = t.get(&format!("{VIEW}?from=yesterday")).await;
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("RFC 3339"), "{err}");
    let (status, _) = t.get("/api/v1/views/nope").await;
    assert_eq!(status, 404);

    // Views are listed with their schema.
    let (_, list) = t.get("/api/v1/views").await;
    let v = &list["views"][0];
    assert_eq!(v["name"], "signal_by_type");
    assert_eq!(v["keys"], json!(["device_type"]));
    assert_eq!(v["window"], "window_start");
    assert_eq!(v["schema"].as_array().unwrap().len(), 5);

    // A second batch run absorbs the new events; values do not change.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut answer = Value::Null;
    for _ in 0..20 {
        t.run_batch().await;
        answer = t.get(VIEW).await.1;
        if sources(&answer).values().all(|s| s == "batch") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_values(&answer, &all);
    assert!(sources(&answer).values().all(|s| s == "batch"), "{answer}");

    // One more event, then a graceful restart: the speed layer rebuilds from the log
    // above the cutoff and the answer is the same.
    let third = [("d8", "fan", 20.0, "2026-01-01T00:26:00Z")];
    t.post("readings", &to_json(&third)).await;
    let all: Vec<_> = all.iter().chain(third.iter()).cloned().collect();
    t.wait_for(VIEW, |v| {
        rows(v)[&key("fan", "2026-01-01T00:20:00Z")].count == 2
    })
    .await;
    // Live push: the first server-sent event carries the current answer.
    let mut live = t
        .client
        .get(format!("{}{VIEW}/live?device_type=fan", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status().as_u16(), 200);
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = live
            .chunk()
            .await
            .unwrap()
            .expect("the live stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no data line in {text}"));
    let pushed: Value = serde_json::from_str(data).unwrap();
    assert_eq!(pushed["view"], "signal_by_type");
    assert_eq!(rows(&pushed)[&key("fan", "2026-01-01T00:20:00Z")].count, 2);
    assert!(rows(&pushed).keys().all(|(ty, _)| ty == "fan"), "{pushed}");

    // SIGTERM with a live client connected still exits promptly and cleanly.
    let stopping = std::time::Instant::now();
    let status = t.terminate();
    assert!(
        status.success(),
        "graceful exit on SIGTERM: {status}\n{}",
        t.logs()
    );
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(5),
        "graceful stop took {:?}",
        stopping.elapsed()
    );
    drop(live);

    // With the process stopped, `tributary recompute` runs a batch from the command
    // line; the last fan reading moves into the batch layer (once its ingest second,
    // the segment width, has passed: cutoffs are aligned to segments).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let out = t.command(&["recompute"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Succeeded") && text.contains("11 rows in"),
        "{text}"
    );

    // After a restart the answer is the same and comes from the batch layer.
    t.restart().await;
    let answer = t
        .wait_for(VIEW, |v| {
            rows(v)
                .get(&key("fan", "2026-01-01T00:20:00Z"))
                .is_some_and(|r| r.count == 2)
        })
        .await;
    assert_values(&answer, &all);
    assert!(sources(&answer).values().all(|s| s == "batch"), "{answer}");

    // The restarted speed layer serves a new event on top of the batch.
    let fourth = [("d9", "fan", 30.0, "2026-01-01T00:27:00Z")];
    t.post("readings", &to_json(&fourth)).await;
    let all: Vec<_> = all.iter().chain(fourth.iter()).cloned().collect();
    let answer = t
        .wait_for(VIEW, |v| {
            rows(v)[&key("fan", "2026-01-01T00:20:00Z")].count == 3
        })
        .await;
    assert_values(&answer, &all);
    assert_eq!(
        sources(&answer)[&key("fan", "2026-01-01T00:20:00Z")],
        "both"
    );
}

#[tokio::test]
async fn up_without_configuration_runs_the_iot_example_with_live_data() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start_default(dir.path()).await;
    let total = common::total_readings;
    let first = t.wait_for(VIEW, |v| total(v) > 0).await;
    let later = t.wait_for(VIEW, |v| total(v) > total(&first)).await;
    assert!(later["speed_watermark"].is_string(), "{later}");
    assert!(later["freshness_ms"].as_i64().unwrap() < 5_000, "{later}");
    assert!(later["rows"][0]["device_type"].is_string(), "{later}");
}

#[tokio::test]
async fn scheduled_batch_runs_absorb_events_without_a_request() {
    let dir = tempfile::tempdir().unwrap();
    // Every second (six fields: seconds first), set through the environment.
    let config = Tributary::configure(dir.path(), "");
    let t = Tributary::start_role(
        dir.path(),
        &config,
        "up",
        &[("TRIBUTARY_BATCH__SCHEDULE", "* * * * * *")],
    )
    .await;
    let events = [
        ("s1", "pump", 20.0, "2026-01-01T00:01:00Z"),
        ("s2", "pump", 40.0, "2026-01-01T00:02:00Z"),
    ];
    let (status, _) = t.post("readings", &to_json(&events)).await;
    assert_eq!(status, 200);
    let answer = t
        .wait_for(VIEW, |v| {
            v["rows"].as_array().is_some_and(|r| r.len() == 1) && v["rows"][0]["_source"] == "batch"
        })
        .await;
    assert_values(&answer, &events);
    assert!(answer["cutoff"].is_string(), "{answer}");
    let (_, runs) = t.get("/api/v1/batch/runs").await;
    assert!(!runs["runs"].as_array().unwrap().is_empty(), "{runs}");
}

#[test]
fn every_example_is_a_valid_configuration() {
    for example in ["iot", "clickstream", "payments_alerts"] {
        let path = format!("{}/examples/{example}.toml", env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["--config", &path, "check"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("OK"), "{text}");
    }
}

#[tokio::test]
async fn invalid_input_gets_precise_errors_and_valid_records_still_land() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start(dir.path(), "[http]\nmax-body-bytes = 4096").await;

    let body = json!([
        {"device": "a", "device_type": "pump", "signal": 20.0, "ts": "2026-01-01T00:00:00Z"},
        {"device": "b", "device_type": "pump", "signal": "loud", "ts": "2026-01-01T00:00:00Z"},
        {"device": "c", "signal": 20.0, "ts": "2026-01-01T00:00:00Z"},
        {"device": "d", "device_type": "fan", "signal": 20.0, "ts": "half past nine"},
        {"device": "e", "device_type": "fan", "signal": 30.0, "ts": "2026-01-01T00:01:00Z", "colour": "red"},
        "not an object",
        {"device": "f", "device_type": "fan", "signal": 40.0, "ts": 1767225600000i64}
    ]);
    let (status, report) = t.post("readings", &body).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["accepted"], 2);
    assert_eq!(report["rejected"], 5);
    let errors = report["errors"].as_array().unwrap();
    let by_index: BTreeMap<i64, &Value> = errors
        .iter()
        .map(|e| (e["index"].as_i64().unwrap(), e))
        .collect();
    assert_eq!(by_index[&1]["field"], "signal");
    assert!(
        by_index[&1]["reason"]
            .as_str()
            .unwrap()
            .contains("expected float64")
    );
    assert_eq!(by_index[&2]["field"], "device_type");
    assert!(by_index[&2]["reason"].as_str().unwrap().contains("missing"));
    assert_eq!(by_index[&3]["field"], "ts");
    assert!(
        by_index[&3]["reason"]
            .as_str()
            .unwrap()
            .contains("RFC 3339")
    );
    assert_eq!(by_index[&4]["field"], "colour");
    assert!(by_index[&5]["field"].is_null());
    assert!(
        by_index[&5]["reason"]
            .as_str()
            .unwrap()
            .contains("JSON object")
    );

    // NDJSON with one malformed line.
    let nd = b"{\"device\":\"g\",\"device_type\":\"pump\",\"signal\":50,\"ts\":\"2026-01-01T00:02:00Z\"}\n{oops\n".to_vec();
    let (status, report) = t.post_raw("readings", "application/x-ndjson", nd).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["accepted"], 1);
    assert_eq!(report["errors"][0]["index"], 1);
    assert!(
        report["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );

    let (status, err) = t
        .post_raw("readings", "application/json", b"{not json".to_vec())
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(err["error"].as_str().unwrap().contains("not JSON"));
    let (status, _) = t.post("nowhere", &json!([])).await;
    assert_eq!(status, 404);
    let big = vec![b' '; 10_000];
    let (status, err) = t.post_raw("readings", "application/json", big).await;
    assert_eq!(status, 413, "{err}");

    // Still healthy, and the valid records of the mixed requests are in the view.
    let answer = t
        .wait_for(VIEW, |v| {
            v["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["readings"].as_i64().unwrap())
                .sum::<i64>()
                == 3
        })
        .await;
    assert_eq!(answer["rows"].as_array().unwrap().len(), 2);
    assert_eq!(t.get("/health").await.0, 200);

    // Every rejected record is in the dead-letter table with its reason. They were
    // answered once in the spool; the listing moves them into Delta first.
    let (_, listed) = t.get("/api/v1/streams/readings/dead-letters").await;
    assert_eq!(listed["total"], 6, "{listed}");
    let dead: Vec<String> = common::delta_rows(
        &dir.path().join("data/dead_letters/readings"),
        "SELECT raw FROM t",
    )
    .await
    .into_iter()
    .map(|r| r.join(" | "))
    .collect();
    assert_eq!(dead.len(), 6, "{dead:?}");
    assert!(dead.iter().any(|r| r.contains("colour")));
    assert!(dead.iter().any(|r| r.contains("{oops")));
}

#[test]
fn bad_configuration_stops_start_up_with_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[http]\nport = 1\n", "http", "port"),
        (
            "[batch]\nschedule = 'every tuesday'\n",
            "batch.schedule",
            "cron",
        ),
        (
            "[[streams]]\nname='r'\nevent-time='ts'\nfields=[{name='ts',type='timestamp'},{name='x',type='money'}]\n",
            "streams[0].fields[1].type",
            "money",
        ),
        (
            "[[streams]]\nname='r'\nevent-time='ts'\nfields=[{name='ts',type='timestamp'}]\n[[views]]\nname='v'\nsql='SELECT ((('\n",
            "views[0].sql",
            "parse",
        ),
        (
            "[[streams]]\nname='r'\nevent-time='ts'\nfields=[{name='ts',type='timestamp'},{name='k',type='string'}]\n[[views]]\nname='v'\nsql=\"SELECT k, date_bin(INTERVAL '1 minute', ts) AS w, count(*) FROM r GROUP BY k, w ORDER BY w\"\n",
            "views[0].sql",
            "ORDER BY",
        ),
        (
            "[[streams]]\nname='r'\nevent-time='ts'\nfields=[{name='ts',type='timestamp'}]\n[[views]]\nname='v'\nsql=\"SELECT date_bin(INTERVAL '1 minute', ts) AS w, count(*) FROM clicks GROUP BY w\"\n",
            "views[0].sql",
            "clicks",
        ),
    ];
    for (i, (toml, key, reason)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .arg("--config")
            .arg(&path)
            .arg("up")
            .output()
            .unwrap();
        assert!(!out.status.success(), "case {i} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("bad{i}.toml")),
            "case {i}: no file name in: {err}"
        );
        assert!(err.contains(key), "case {i}: no key `{key}` in: {err}");
        assert!(
            err.contains(reason),
            "case {i}: no reason `{reason}` in: {err}"
        );
    }
}

#[test]
fn help_explains_every_subcommand() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["up", "ingest", "speed", "batch", "serve", "recompute"] {
        assert!(
            text.contains(&format!("  {cmd} ")),
            "--help lacks {cmd}: {text}"
        );
        let sub = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        assert!(sub.status.success());
        assert!(String::from_utf8_lossy(&sub.stdout).contains("Usage: tributary"));
    }
}
