//! `tributary backfill` with each format, from the real binary: good rows land in the
//! master table exactly once (a second run adds nothing), bad rows become dead letters
//! with their reasons, and the next batch run counts the backfilled events in the view.

// A scenario test reads top to bottom as one story against one running process.
#![allow(clippy::too_many_lines)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{Tributary, master_counts, total_readings};
use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use serde_json::Value;

fn backfill(config: &Path, args: &[&str]) -> (bool, Value, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("--config")
        .arg(config)
        .arg("backfill")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), report, stderr)
}

fn write_parquet(path: &Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new("device_type", DataType::Utf8, false),
        Field::new("signal", DataType::Float64, true),
        // A naive timestamp, as many tools write them: read as UTC.
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
    ]));
    let ts = 1_767_225_600_000_000_i64; // 2026-01-01T00:00:00Z
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["p0", "p1", "p2", "p3"])),
            Arc::new(StringArray::from(vec!["pump", "pump", "fan", "fan"])),
            Arc::new(Float64Array::from(vec![
                Some(20.0),
                Some(30.0),
                Some(40.0),
                None,
            ])),
            Arc::new(TimestampMicrosecondArray::from(vec![
                ts,
                ts + 60_000_000,
                ts,
                ts,
            ])),
        ],
    )
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[tokio::test]
async fn every_format_loads_once_refuses_bad_rows_and_reaches_the_view() {
    let dir = tempfile::tempdir().unwrap();
    let config = Tributary::configure(dir.path(), "");
    let files = dir.path().join("old");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(
        files.join("a.json"),
        r#"[{"device":"j0","device_type":"pump","signal":20,"ts":"2026-01-01T00:00:00Z"},
            {"device":"j1","device_type":"pump","signal":21,"ts":"2026-01-01T00:01:00Z"},
            {"device":"j2","device_type":"fan","signal":22,"ts":"2026-01-01T00:02:00Z"},
            {"device":"j3","device_type":"fan","signal":"loud","ts":"2026-01-01T00:03:00Z"}]"#,
    )
    .unwrap();
    std::fs::write(
        files.join("b.ndjson"),
        "{\"device\":\"n0\",\"device_type\":\"pump\",\"signal\":30,\"ts\":\"2026-01-01T00:00:00Z\"}\n\
         {\"device\":\"n1\",\"device_type\":\"pump\",\"signal\":31,\"ts\":1767225600000}\n\
         {\"device\":\"n2\",\"device_type\":\"fan\",\"signal\":32,\"ts\":\"2026-01-01T00:02:00Z\"}\n\
         {\"device\":\"n3\", oops\n\
         {\"device\":\"n4\",\"device_type\":\"fan\",\"signal\":33,\"ts\":\"2026-01-01T00:02:00Z\",\"colour\":\"red\"}\n",
    )
    .unwrap();
    std::fs::write(
        files.join("c.csv"),
        "device,device_type,signal,ts\n\
         c0,pump,40,2026-01-01T00:00:00Z\n\
         c1,pump,41.5,1767225600000\n\
         c2,fan,42,2026-01-01T00:02:00Z\n\
         c3,fan,x,2026-01-01T00:03:00Z\n\
         c4,,44,2026-01-01T00:04:00Z\n",
    )
    .unwrap();
    write_parquet(&files.join("d.parquet"));

    let cases = [
        ("a.json", 3, 1, "expected float64, got"),
        ("b.ndjson", 3, 2, "malformed JSON"),
        ("c.csv", 3, 2, "expected float64, got `x`"),
        (
            "d.parquet",
            3,
            1,
            "required field is missing: expected float64",
        ),
    ];
    for (name, accepted, rejected, _) in cases {
        let path = files.join(name);
        let (ok, report, err) =
            backfill(&config, &["--stream", "readings", path.to_str().unwrap()]);
        assert!(ok, "{name}: {err}");
        assert_eq!(report["accepted"], accepted, "{name}: {report}");
        assert_eq!(report["rejected"], rejected, "{name}: {report}");
        assert_eq!(report["chunks_committed"], 1, "{name}: {report}");
    }
    // The same file again adds nothing; a URL names a file too.
    let url = format!("file://{}", files.join("a.json").display());
    let (ok, report, err) = backfill(&config, &["--stream", "readings", &url]);
    assert!(ok, "{err}");
    assert_eq!(report["chunks_skipped"], 1, "{report}");
    assert_eq!(report["accepted"], 0, "{report}");
    // Refusals name what is wrong.
    let (ok, _, err) = backfill(&config, &["--stream", "nope", "x.json"]);
    assert!(!ok && err.contains("unknown stream `nope`"), "{err}");
    let (ok, _, err) = backfill(&config, &["--stream", "readings", "--format", "xml", "x"]);
    assert!(
        !ok && err.contains("expected json, ndjson, csv or parquet"),
        "{err}"
    );
    let (ok, _, err) = backfill(
        &config,
        &[
            "--stream",
            "readings",
            files.join("missing.csv").to_str().unwrap(),
        ],
    );
    assert!(!ok && err.contains("missing.csv"), "{err}");

    let counts = master_counts(dir.path()).await;
    assert_eq!(counts.len(), 12, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");

    // Serving: the dead letters say why, and the next batch run counts every event.
    let t = Tributary::start_config(dir.path(), config).await;
    let (_, dead) = t.get("/api/v1/streams/readings/dead-letters").await;
    assert_eq!(dead["total"], 6, "{dead}");
    let rows = dead["rows"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["source"] == "backfill"), "{dead}");
    for (_, _, _, reason) in cases {
        assert!(dead.to_string().contains(reason), "no `{reason}` in {dead}");
    }
    for reason in [
        "no field `colour`",
        "required field is null: expected string",
    ] {
        assert!(dead.to_string().contains(reason), "no `{reason}` in {dead}");
    }
    let (_, before) = t.get("/api/v1/views/signal_by_type").await;
    assert_eq!(
        total_readings(&before),
        0,
        "backfilled rows wait for a batch run: {before}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let run = t.run_batch().await;
    assert_eq!(run["rows_in"], 12, "{run}");
    let (_, after) = t.get("/api/v1/views/signal_by_type").await;
    assert_eq!(total_readings(&after), 12, "{after}");
}
