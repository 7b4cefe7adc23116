//! Speed-layer snapshots: with `speed.snapshot-interval-ms` set, a SIGKILLed `up`
//! resumes its speed states from the newest snapshot instead of re-reading the log, and
//! its merged answers are exact again (checked against DataFusion over every event).

mod common;

use std::time::Duration;

use common::views::{api_rows, assert_same_rows, pipeline, reference};
use common::{IOT_STREAM, Tributary, total_readings};
use serde_json::{Value, json};

fn events(round: usize) -> Vec<Value> {
    (0..50)
        .map(|j| {
            let kind = ["pump", "fan", "valve"][(round + j) % 3];
            json!({
                "device": format!("dev-{}", j % 9),
                "device_type": kind,
                "signal": 10.0 + ((round * 50 + j) % 30) as f64,
                "ts": format!("2026-01-01T0{}:{:02}:00Z", (round + j) % 3, (j * 13) % 60),
            })
        })
        .collect()
}

#[tokio::test]
async fn a_killed_speed_layer_resumes_from_its_snapshot_and_answers_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = Tributary::configure(dir.path(), "");
    let env = [("TRIBUTARY_SPEED__SNAPSHOT_INTERVAL_MS", "200")];
    let mut t = Tributary::start_role(dir.path(), &config, "up", &env).await;
    let mut posted = Vec::new();
    for round in 0..20 {
        let batch = events(round);
        let (status, body) = t.post("readings", &Value::Array(batch.clone())).await;
        assert_eq!(status, 200, "{body}");
        posted.extend(batch);
    }
    // Every event in the speed layer, and a snapshot taken after that.
    t.wait_for("/api/v1/speed/stats", |s| {
        s["streams"]["readings"]["events"].as_u64() == Some(1000)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        dir.path().join("data/speed-snapshots/LATEST").exists(),
        "no snapshot written:\n{}",
        t.logs()
    );
    t.kill9();
    t.restart().await;
    for round in 20..30 {
        let batch = events(round);
        let (status, _) = t.post("readings", &Value::Array(batch.clone())).await;
        assert_eq!(status, 200);
        posted.extend(batch);
    }
    let answer = t
        .wait_for("/api/v1/views/signal_by_type", |v| {
            // Only readings above the view's filter count.
            total_readings(v)
                == posted
                    .iter()
                    .filter(|e| e["signal"].as_f64().unwrap() > 15.0)
                    .count() as i64
        })
        .await;
    let stats = t
        .wait_for("/api/v1/speed/stats", |s| s["recovery_ms"].is_u64())
        .await;
    assert_eq!(stats["restored_from_snapshot"], true, "{stats}");
    let read = stats["streams"]["readings"]["events"].as_u64().unwrap();
    assert!(
        read < 1000,
        "after the restart the speed layer read {read} records: it re-read what the snapshot held"
    );
    let p = pipeline(IOT_STREAM).await;
    let view = &p.views.snapshot()[0].clone();
    assert_same_rows(
        "after resuming from a snapshot",
        &api_rows(view, &answer),
        &reference(&p, view, &posted).await,
    );
    eprintln!(
        "speed layer resumed from its snapshot: caught up {} ms after start, {read} records re-read",
        stats["recovery_ms"]
    );
}
