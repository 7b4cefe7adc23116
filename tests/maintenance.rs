//! Table maintenance on a running `tributary up`: after many small archiver commits,
//! `POST /api/v1/batch/maintenance` compacts the master table into fewer files and
//! vacuums the old ones (retention 0 here), and every answer stays what it was: the view,
//! the master table's rows by id (read by the independent Python Delta reader too), and
//! exactly-once archiving of what arrives afterwards.

mod common;

use std::time::{Duration, Instant};

use common::{Tributary, master_counts, python_json, total_readings};
use serde_json::{Value, json};

fn readings(from: usize, n: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| {
                json!({
                    "device": format!("m{i:05}"),
                    "device_type": if i % 2 == 0 { "pump" } else { "fan" },
                    "signal": 20.0 + (i % 50) as f64,
                    "ts": format!("2026-02-01T00:{:02}:00Z", i % 60),
                })
            })
            .collect(),
    )
}

async fn archived(t: &Tributary, dir: &std::path::Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while master_counts(dir).await.len() < n {
        assert!(
            Instant::now() < deadline,
            "archiver did not catch up\n{}",
            t.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Data files under `dir`, partition directories (`_event_date=…`) included, the
/// transaction log (and its checkpoints) not.
fn parquet_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("_delta_log"))
        .map(|p| {
            if p.is_dir() {
                parquet_files(&p)
            } else {
                usize::from(p.extension().is_some_and(|e| e == "parquet"))
            }
        })
        .sum()
}

#[tokio::test]
async fn compaction_and_vacuum_leave_every_answer_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let config = Tributary::configure_pipeline(dir.path(), "", 20, common::IOT_STREAM);
    let t = Tributary::start_role(
        dir.path(),
        &config,
        "up",
        &[("TRIBUTARY_BATCH__RETENTION_HOURS", "0")],
    )
    .await;
    // Many small commits: one per request, the archiver flushing every 20 ms.
    for i in 0..25 {
        let (status, body) = t.post("readings", &readings(i * 8, 8)).await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    archived(&t, dir.path(), 200).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    t.run_batch().await;
    let before_view = t.get("/api/v1/views/signal_by_type").await.1;
    let before_rows = master_counts(dir.path()).await;
    let master = dir.path().join("data/master/readings");
    let files_before = parquet_files(&master);
    // The master table is partitioned by the events' UTC date.
    assert!(
        master.join("_event_date=2026-02-01").is_dir(),
        "not partitioned by date"
    );
    assert!(
        files_before > 5,
        "expected many small files, got {files_before}"
    );

    let m = t.maintain("master/readings").await;
    assert!(m["files_compacted"].as_u64().unwrap() > 5, "{m}");
    assert_eq!(m["files_after"], 1, "{m}");
    assert!(m["files_vacuumed"].as_u64().unwrap() > 5, "{m}");
    assert_eq!(
        parquet_files(&master),
        1,
        "vacuum removed the compacted files"
    );

    // Same rows, same answer, before and after a fresh batch run.
    assert_eq!(master_counts(dir.path()).await, before_rows);
    let after_view = t.get("/api/v1/views/signal_by_type").await.1;
    assert_eq!(after_view["rows"], before_view["rows"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    t.run_batch().await;
    let rerun = t.get("/api/v1/views/signal_by_type").await.1;
    assert_eq!(rerun["rows"], before_view["rows"]);
    assert_eq!(total_readings(&rerun), 200);

    // The independent reader sees the compacted table with the same rows.
    let script = format!(
        "import json, deltalake\n\
         t = deltalake.DeltaTable('{}')\n\
         d = t.to_pyarrow_table(columns=['device']).column('device').to_pylist()\n\
         print(json.dumps({{'rows': len(d), 'distinct': len(set(d)), 'files': len(t.file_uris())}}))",
        master.display()
    );
    let seen = python_json(&script);
    assert_eq!(seen, json!({"rows": 200, "distinct": 200, "files": 1}));

    // Archiving goes on exactly once after compaction.
    let (status, _) = t.post("readings", &readings(200, 50)).await;
    assert_eq!(status, 200);
    archived(&t, dir.path(), 250).await;
    let counts = master_counts(dir.path()).await;
    assert_eq!(counts.len(), 250);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}
