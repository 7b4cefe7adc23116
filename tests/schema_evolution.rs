//! Schema evolution and dead-letter replay on a running `tributary up`: a producer starts
//! sending a field the stream does not know, so those records become dead letters; the
//! operator adds the field as nullable and restarts; the master table gains the column
//! without a rewrite (older rows read it as null, checked by the independent Python
//! Delta reader), and a replay moves the dead letters into the stream, where both layers
//! count them. An incompatible change (a type change) stops start-up with the field and
//! the reason.

// A scenario test reads top to bottom as one story against one running process.
#![allow(clippy::too_many_lines)]

mod common;

use std::time::Duration;

use common::{Tributary, python_json, total_readings};
use serde_json::{Value, json};

fn reading(i: usize, firmware: Option<&str>) -> Value {
    let mut v = json!({
        "device": format!("d{i}"),
        "device_type": "pump",
        "signal": 20.0 + i as f64,
        "ts": "2026-03-01T10:00:00Z",
    });
    if let Some(f) = firmware {
        v["firmware"] = json!(f);
    }
    v
}

const WITH_FIRMWARE: &str = r#"  { name = "firmware", type = "string", nullable = true },
  { name = "ts", type = "timestamp" },"#;

#[tokio::test]
async fn a_new_nullable_field_evolves_the_table_and_replay_recovers_its_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tributary::start(dir.path(), "").await;
    let old: Vec<Value> = (0..5).map(|i| reading(i, None)).collect();
    let early: Vec<Value> = (5..8).map(|i| reading(i, Some("2.1"))).collect();
    let (status, body) = t.post("readings", &json!([old, early].concat())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 5, "{body}");
    assert_eq!(body["rejected"], 3, "{body}");
    assert!(
        body["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("no field `firmware`"),
        "{body}"
    );
    // The old schema cannot take them: a replay now leaves them where they are.
    let (status, replay) = t
        .post_path("/api/v1/streams/readings/dead-letters/replay")
        .await;
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["replayed"], 0, "{replay}");
    assert_eq!(replay["still_invalid"], 3, "{replay}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    t.run_batch().await;
    t.terminate();

    // The operator adds the field, nullable, and restarts.
    let config = dir.path().join("tributary.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let evolved = text.replacen(
        r#"  { name = "ts", type = "timestamp" },"#,
        WITH_FIRMWARE,
        1,
    );
    assert_ne!(text, evolved);
    std::fs::write(&config, &evolved).unwrap();
    t.restart().await;
    let (status, replay) = t
        .post_path("/api/v1/streams/readings/dead-letters/replay")
        .await;
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["replayed"], 3, "{replay}");
    assert_eq!(replay["still_invalid"], 0, "{replay}");
    let dead = t.get("/api/v1/streams/readings/dead-letters").await.1;
    assert_eq!(dead["total"], 0, "{dead}");
    let (status, body) = t.post("readings", &json!([reading(8, Some("2.2"))])).await;
    assert_eq!(status, 200, "{body}");

    // Every accepted event counts once, old, replayed and new, in the merged view …
    t.wait_for("/api/v1/views/signal_by_type", |v| total_readings(v) == 9)
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    t.run_batch().await;
    let answer = t.get("/api/v1/views/signal_by_type").await.1;
    assert_eq!(total_readings(&answer), 9, "{answer}");

    // … and in the master table, which an independent reader sees with the new column.
    let master = dir.path().join("data/master/readings");
    let script = format!(
        "import json, deltalake\n\
         t = deltalake.DeltaTable('{}')\n\
         rows = t.to_pyarrow_table().to_pylist()\n\
         print(json.dumps({{'fields': [f.name for f in t.schema().fields], \
         'firmware': sorted([r['device'], r['firmware']] for r in rows)}}))",
        master.display()
    );
    let seen = python_json(&script);
    assert!(
        seen["fields"]
            .as_array()
            .unwrap()
            .contains(&json!("firmware")),
        "{seen}"
    );
    let expected: Vec<Value> = (0..9)
        .map(|i| {
            let fw = match i {
                0..5 => Value::Null,
                5..8 => json!("2.1"),
                _ => json!("2.2"),
            };
            json!([format!("d{i}"), fw])
        })
        .collect();
    assert_eq!(seen["firmware"], json!(expected), "{seen}");
    t.terminate();

    // A type change is refused before anything is written, naming the field.
    let retyped = evolved.replacen(
        r#"{ name = "signal", type = "float64" }"#,
        r#"{ name = "signal", type = "int64" }"#,
        1,
    );
    assert_ne!(retyped, evolved);
    std::fs::write(&config, &retyped).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .arg("--config")
            .arg(&config)
            .arg("up")
            .env("TRIBUTARY_HTTP__ADDR", "127.0.0.1:0")
            .output(),
    )
    .await
    .expect("an incompatible schema must stop Tributary, not leave it running")
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("field `signal` is Float64 in the master table but Int64"),
        "{err}"
    );
}
