//! The speed layer is disposable: SIGKILL the `speed` process mid-stream (after a batch
//! run, so it restarts from a real cutoff), restart it, and the merged answers served by
//! `serve` are exact again. The time the speed layer took to rebuild from the log is
//! reported (its own `recovery_ms`, and the wall-clock time until `serve` is exact).
//! Runs on the real Kafka-protocol broker (tansu; address in KAFKA_TEST_BROKERS).

mod common;

use std::time::{Duration, Instant};

use common::{Tributary, total_readings};
use serde_json::{Value, json};

const VIEW: &str = "/api/v1/views/signal_by_type";

fn batch_of(i: usize) -> Value {
    Value::Array(
        (0..50)
            .map(|j| {
                let kind = ["pump", "fan", "valve"][(i + j) % 3];
                json!({
                    "device": format!("dev-{}", j % 7),
                    "device_type": kind,
                    "signal": 16.0 + ((i * 50 + j) % 40) as f64,
                    // Out of order across ten-minute windows, some far behind.
                    "ts": format!("2026-01-01T0{}:{:02}:00Z", (i + j) % 4, (j * 7) % 60),
                })
            })
            .collect(),
    )
}

#[tokio::test]
async fn killed_speed_layer_rebuilds_from_the_cutoff_and_answers_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("speed-restart-{}-", std::process::id());
    let config = Tributary::configure_kafka(dir.path(), &prefix);
    let ingest = Tributary::start_role(dir.path(), &config, "ingest", &[]).await;
    let mut speed = Tributary::start_role(dir.path(), &config, "speed", &[]).await;
    let _batch = Tributary::start_role(dir.path(), &config, "batch", &[]).await;
    let serve = Tributary::start_serve(dir.path(), &config, &speed).await;

    let mut posted: Vec<Value> = Vec::new();
    for i in 0..40 {
        let events = batch_of(i);
        let (status, body) = ingest.post("readings", &events).await;
        assert_eq!(status, 200, "{body}");
        posted.extend(events.as_array().unwrap().iter().cloned());
        if i == 10 {
            // A batch run covering these events: the restarted layer must start above it.
            let deadline = Instant::now() + Duration::from_secs(30);
            while serve.run_batch().await["rows_in"].as_u64() != Some(posted.len() as u64) {
                assert!(Instant::now() < deadline, "the archiver never caught up");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if i == 20 {
            speed.kill9();
        }
        if i == 30 {
            speed.restart_same_port().await;
        }
    }
    let restarted = Instant::now();
    let want = posted.len() as i64;
    let answer = serve.wait_for(VIEW, |v| total_readings(v) == want).await;
    let exact_after = restarted.elapsed();
    assert!(
        answer["cutoff"].is_string(),
        "a batch cutoff was in force: {answer}"
    );

    // Exact, value by value, against every posted event.
    let mut want_rows = std::collections::BTreeMap::new();
    for e in &posted {
        let ts = e["ts"].as_str().unwrap();
        let window = format!("{}{}0:00Z", &ts[..14], &ts[14..15]);
        let entry = want_rows
            .entry((e["device_type"].as_str().unwrap().to_string(), window))
            .or_insert((0i64, 0.0f64, f64::MIN));
        let s = e["signal"].as_f64().unwrap();
        entry.0 += 1;
        entry.1 += s;
        entry.2 = entry.2.max(s);
    }
    let rows = answer["rows"].as_array().unwrap();
    assert_eq!(rows.len(), want_rows.len(), "{answer}");
    for r in rows {
        let key = (
            r["device_type"].as_str().unwrap().to_string(),
            r["window_start"].as_str().unwrap().to_string(),
        );
        let (n, sum, max) = want_rows[&key];
        assert_eq!(r["readings"].as_i64().unwrap(), n, "{key:?}");
        assert!((r["avg_signal"].as_f64().unwrap() - sum / n as f64).abs() < 1e-9);
        assert_eq!(r["max_signal"].as_f64().unwrap(), max);
    }

    let stats = serve
        .wait_for("/api/v1/speed/stats", |s| s["recovery_ms"].is_u64())
        .await;
    let recovery_ms = stats["recovery_ms"].as_u64().unwrap();
    let view = &stats["views"][0];
    // It rebuilt only what the batch layer does not cover.
    assert!(
        view["events"].as_u64().unwrap() <= (posted.len() - 550) as u64,
        "the restarted speed layer re-read events the batch run covers: {stats}"
    );
    eprintln!(
        "speed layer recovery: rebuilt from the log in {recovery_ms} ms (its own report); \
         serve exact again {} ms after the restart; {} events posted",
        exact_after.as_millis(),
        posted.len()
    );
    drop(ingest);
    assert!(exact_after < Duration::from_secs(60));
}
