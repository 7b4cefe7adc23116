//! The batch run history outlives the process: runs recorded before a restart are still
//! listed by `GET /api/v1/batch/runs` after it, with their outcome and figures.

mod common;

use common::Tributary;
use serde_json::json;

#[tokio::test]
async fn run_history_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tributary::start(dir.path(), "").await;
    let (status, _) = t
        .post("readings", &json!([{"device": "a", "device_type": "pump", "signal": 20.0, "ts": "2026-01-01T00:00:00Z"}]))
        .await;
    assert_eq!(status, 200);
    let first = t.run_batch().await;
    let second = t.run_batch().await;
    assert!(t.terminate().success());
    t.restart().await;
    let (status, runs) = t.get("/api/v1/batch/runs").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            second["id"].as_str().unwrap(),
            first["id"].as_str().unwrap()
        ],
        "{runs}"
    );
    assert_eq!(runs["runs"][0]["status"], "succeeded");
    assert_eq!(runs["runs"][0]["cutoff"], second["cutoff"]);
    // A new run after the restart gets a new id and goes first.
    let third = t.run_batch().await;
    let (_, runs) = t.get("/api/v1/batch/runs").await;
    assert_eq!(runs["runs"][0]["id"], third["id"]);
    assert_eq!(runs["runs"].as_array().unwrap().len(), 3);
}
