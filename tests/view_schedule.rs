//! Per-view schedules: a view with its own cron schedule gets incremental runs of its
//! own, without a request, while a view without one waits for an explicit run; and a run
//! can be asked for one view.

mod common;

use std::time::{Duration, Instant};

use common::{IOT_STREAM, Tributary, total_readings};
use serde_json::{Value, json};

const COUNTS: &str = r#"
[[views]]
name = "counts_by_device"
schedule = "* * * * * *"
sql = """
SELECT device, date_bin(INTERVAL '1 hour', ts) AS hour, count(*) AS readings
FROM readings GROUP BY device, hour
"""
"#;

#[tokio::test]
async fn a_view_with_its_own_schedule_is_recomputed_alone() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = format!("{IOT_STREAM}{COUNTS}");
    let config = Tributary::configure_pipeline(dir.path(), "", 100, &pipeline);
    let t = Tributary::start_config(dir.path(), config).await;
    let events: Vec<Value> = (0..6)
        .map(|i| json!({"device": format!("d{i}"), "device_type": "pump", "signal": 50.0, "ts": "2026-04-01T08:00:00Z"}))
        .collect();
    let (status, _) = t.post("readings", &json!(events)).await;
    assert_eq!(status, 200);

    // The scheduled view's runs take its events into the batch layer by themselves.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, answer) = t.get("/api/v1/views/counts_by_device").await;
        if total_readings(&answer) == 6
            && answer["rows"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["_source"] == "batch")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never all batch: {answer}\n{}",
            t.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, runs) = t.get("/api/v1/batch/runs").await;
    let runs = runs["runs"].as_array().unwrap();
    assert!(!runs.is_empty());
    for r in runs {
        assert_eq!(r["views"], json!(["counts_by_device"]), "{r}");
        assert_eq!(r["kind"], "incremental", "{r}");
    }
    // The other view has no batch states yet: all its rows come from the speed layer.
    let (_, other) = t.get("/api/v1/views/signal_by_type").await;
    assert!(other["cutoff"].is_null(), "{other}");
    assert_eq!(total_readings(&other), 6);

    // A run of one view on request (the scheduled one may be running: runs never overlap,
    // so the request is refused with 409 until it ends); an unknown view is refused.
    let r = loop {
        let r = t
            .client
            .post(format!(
                "{}/api/v1/batch/runs?wait=true&view=signal_by_type",
                t.base
            ))
            .send()
            .await
            .unwrap();
        if r.status() != 409 {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(r.status(), 200);
    let run: Value = r.json().await.unwrap();
    assert_eq!(run["views"], json!(["signal_by_type"]), "{run}");
    let (status, _) = t.post_path("/api/v1/batch/runs?view=nope").await;
    assert_eq!(status, 404);
}

/// A view made at runtime with a schedule of its own gets incremental runs of its own;
/// a schedule that does not parse is refused naming `schedule`; pausing the view stops
/// its runs.
#[tokio::test]
async fn a_view_made_at_runtime_keeps_its_own_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let config = Tributary::configure_pipeline(dir.path(), "", 100, IOT_STREAM);
    let t = Tributary::start_config(dir.path(), config).await;
    let sql = "SELECT device, date_bin(INTERVAL '1 hour', ts) AS hour, count(*) AS readings \
               FROM readings GROUP BY device, hour";
    let (status, e) = t
        .post_json(
            "/api/v1/views",
            &json!({"name": "per_device", "sql": sql, "schedule": "every minute"}),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("schedule"), "{e}");
    let (status, created) = t
        .post_json(
            "/api/v1/views",
            &json!({"name": "per_device", "sql": sql, "schedule": "* * * * * *"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["schedule"], "* * * * * *", "{created}");
    let scheduled_runs = || async {
        let (_, runs) = t.get("/api/v1/batch/runs").await;
        runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == "incremental" && r["views"] == json!(["per_device"]))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while scheduled_runs().await < 2 {
        assert!(
            Instant::now() < deadline,
            "no runs of its own\n{}",
            t.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, p) = t.post_path("/api/v1/views/per_device/pause").await;
    assert_eq!(status, 200, "{p}");
    // A run that had started may still end; after that, none.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_pause = scheduled_runs().await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(
        scheduled_runs().await,
        after_pause,
        "runs went on while paused"
    );
}
