//! Damaged files under the storage root do not stop the process at every start: a view
//! whose batch table cannot be read is the one thing that stops answering (503, saying
//! why), batch runs keep the other views current, and the view answers exactly again
//! once its table is repaired (here: removed, so a batch run writes it anew).

mod common;

use common::{IOT_STREAM, Tributary, numbered_readings, total_readings};
use serde_json::Value;

const FIRST: &str = "/api/v1/views/signal_by_type";
const SECOND: &str = "/api/v1/views/by_type";

fn counted(answer: &Value) -> i64 {
    common::column_sum(answer, "n")
}

#[tokio::test]
async fn a_damaged_view_table_stops_that_view_alone() {
    let dir = tempfile::tempdir().unwrap();
    // The damaged view comes first: a run must not stop at it.
    let pipeline = IOT_STREAM.replacen(
        "[[views]]",
        "[[views]]\nname = \"by_type\"\nsql = \"SELECT device_type, date_bin(INTERVAL '1 hour', ts) AS w, count(*) AS n FROM readings GROUP BY device_type, w\"\n\n[[views]]",
        1,
    );
    let config = Tributary::configure_pipeline(dir.path(), "", 200, &pipeline);
    let mut t = Tributary::start_config(dir.path(), config).await;
    // Signals 0..30: 14 of every 30 pass the first view's `signal > 15`.
    assert_eq!(
        t.post("readings", &numbered_readings(0, 300, 30)).await.0,
        200
    );
    t.wait_for(SECOND, |v| counted(v) == 300).await;
    t.run_batch().await;

    t.kill9();
    let log = dir
        .path()
        .join("data/views/by_type/_delta_log/00000000000000000000.json");
    assert!(log.exists(), "no view table at {}", log.display());
    std::fs::write(&log, "{broken").unwrap();
    t.restart().await;

    let (status, v) = t.get(SECOND).await;
    assert_eq!(status, 503, "{v}");
    let why = v["error"].as_str().unwrap();
    assert!(why.contains("cannot be read"), "{why}");
    t.wait_for(FIRST, |v| total_readings(v) == 140).await;

    // A batch run fails on the damaged view, and still brings the other one up to date.
    assert_eq!(
        t.post("readings", &numbered_readings(300, 300, 30)).await.0,
        200
    );
    t.wait_for(FIRST, |v| total_readings(v) == 280).await;
    let (_, before) = t.get(FIRST).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (status, run) = t.post_path("/api/v1/batch/runs?wait=true").await;
    assert_eq!(run["status"], "failed", "{status} {run}");
    assert!(
        run["error"].as_str().unwrap_or("").contains("by_type"),
        "{run}"
    );
    let after = t
        .wait_for(FIRST, |v| v["batch_version"] != before["batch_version"])
        .await;
    assert_eq!(total_readings(&after), 280, "{after}");

    // Repaired (the table removed): the next run writes it anew, and it is exact.
    std::fs::remove_dir_all(dir.path().join("data/views/by_type")).unwrap();
    let (status, v) = t.get(SECOND).await;
    assert_eq!(
        status, 503,
        "answers only once it has batch states again: {v}"
    );
    t.run_batch().await;
    let v = t.wait_for(SECOND, |v| counted(v) == 600).await;
    assert_eq!(v["rows"].as_array().unwrap().len(), 3 * 10, "{v}");
}
