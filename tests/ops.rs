//! Operations endpoints of a running `tributary up`: `/ready`, `/api/v1/status` and
//! `/metrics` report the same figures the pipeline holds (ingest counters, speed-layer
//! progress, batch cutoff and runs).

// A scenario test reads top to bottom as one story against one running process.
#![allow(clippy::too_many_lines)]

mod common;

use common::{Tributary, total_readings};
use serde_json::{Value, json};

#[tokio::test]
async fn status_metrics_and_readiness_report_the_pipeline() {
    let started = chrono::Utc::now();
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start(
        dir.path(),
        "[http]\ncors-origins = [\"https://dash.example\"]\nlive-interval-ms = 100",
    )
    .await;
    let events: Vec<Value> = (0..30)
        .map(|i| json!({"device": format!("d{i}"), "device_type": "pump", "signal": 30.0, "ts": "2026-01-01T00:01:00Z"}))
        .collect();
    let (status, _) = t.post("readings", &Value::Array(events)).await;
    assert_eq!(status, 200);
    let (_, report) = t
        .post("readings", &json!([{"device": "x", "device_type": "pump", "signal": "n/a", "ts": "2026-01-01T00:01:00Z"}]))
        .await;
    assert_eq!(report["rejected"], 1);
    t.wait_for("/api/v1/views/signal_by_type", |v| total_readings(v) == 30)
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while t.run_batch().await["rows_in"] != 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "archiver never caught up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    t.wait_for("/ready", |v| v["ready"] == true).await;
    let (code, ready) = t.get("/ready").await;
    assert_eq!(
        code, 200,
        "ready is 200, not only a body that says so: {ready}"
    );
    // Every record posted (30 valid, 1 refused) is behind the archiver's position.
    t.wait_for("/api/v1/status", |v| {
        v["streams"]["readings"]["archiver_lag_by_partition"] == json!([0, 0])
    })
    .await;

    let (status, s) = t.get("/api/v1/status").await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["streams"]["readings"]["ingest"]["accepted"], 30, "{s}");
    assert_eq!(s["streams"]["readings"]["ingest"]["rejected"], 1, "{s}");
    assert_eq!(s["streams"]["readings"]["speed"]["events"], 30, "{s}");
    assert_eq!(s["streams"]["readings"]["speed"]["lag"], 0, "{s}");
    // Lag per partition and consumer: the speed layer (sampled each second) and the
    // archiver.
    t.wait_for("/api/v1/status", |v| {
        v["streams"]["readings"]["speed"]["lag_by_partition"] == serde_json::json!([0, 0])
    })
    .await;
    let (_, s) = t.get("/api/v1/status").await;
    assert_eq!(s["streams"]["readings"]["archiver_lag"], 0, "{s}");
    assert_eq!(
        s["streams"]["readings"]["archiver_behind_retention"],
        json!([]),
        "{s}"
    );
    // The cutoff is from a run of this test, and its age is measured from it.
    let at = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(s[k].as_str().unwrap_or_else(|| panic!("{k}: {s}")))
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let cutoff = chrono::DateTime::parse_from_rfc3339(s["views"][0]["cutoff"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    assert!(
        cutoff > started - chrono::Duration::seconds(2) && cutoff <= chrono::Utc::now(),
        "cutoff {cutoff} outside the test's run (started {started}): {s}"
    );
    let age = (at("time") - cutoff).num_milliseconds();
    let reported = s["views"][0]["cutoff_age_ms"].as_i64().unwrap();
    assert!(
        (reported - age).abs() <= 1,
        "age {reported} ms, status time - cutoff = {age} ms"
    );
    assert_eq!(s["batch"]["last_run"]["status"], "succeeded", "{s}");
    assert!(s["batch"]["running"].as_array().unwrap().is_empty(), "{s}");
    assert_eq!(s["roles"]["speed"], true, "{s}");
    // The process's memory as the kernel sees it from outside, read right after.
    let reported = s["process"]["rss_bytes"].as_u64().unwrap();
    let outside = t.rss_bytes();
    assert!(
        reported > 4 << 20 && reported / 2 <= outside && outside / 2 <= reported,
        "status says {reported} bytes resident, /proc/<pid>/status {outside}"
    );

    let r = t
        .client
        .get(format!("{}/metrics", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = r.text().await.unwrap();
    for line in [
        "tributary_ingest_accepted_total{stream=\"readings\"} 30",
        "tributary_ingest_rejected_total{stream=\"readings\"} 1",
        "tributary_speed_events_total{stream=\"readings\"} 30",
        "tributary_speed_lag_records{stream=\"readings\"} 0.0",
        "# TYPE tributary_view_cutoff_seconds gauge",
        "tributary_view_cutoff_age_seconds{view=\"signal_by_type\"}",
        "tributary_batch_runs_total{status=\"succeeded\"}",
        "# TYPE tributary_process_resident_memory_bytes gauge",
        "# EOF",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    let rss: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tributary_process_resident_memory_bytes"))
        .and_then(|v| v.trim_start_matches("{}").trim().parse().ok())
        .unwrap_or_else(|| panic!("no resident memory sample in\n{text}"));
    assert!(rss > f64::from(4 << 20), "{rss} bytes resident");

    // CORS: the configured origin may call the API from a browser, another may not.
    let preflight = t
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/api/v1/sql", t.base))
        .header("origin", "https://dash.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://dash.example"
    );
    let other = t
        .client
        .get(format!("{}/api/v1/views", t.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}
