//! The read-only SQL endpoint against a running `tributary up`: queries over merged
//! views, master and dead-letter tables, JSON and Arrow answers; every refusal (each
//! statement kind, file access, several statements, memory limit, time limit, bad
//! requests) is a 4xx with a reason, never a 5xx.

// A scenario test reads top to bottom as one story against one running process.
#![allow(clippy::too_many_lines)]

mod common;

use common::{Tributary, total_readings};
use serde_json::{Value, json};

async fn sql(t: &Tributary, body: Value) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = t
        .client
        .post(format!("{}/api/v1/sql", t.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

async fn sql_json(t: &Tributary, query: &str) -> (u16, Value) {
    let (status, _, body) = sql(t, json!({ "sql": query })).await;
    (
        status,
        serde_json::from_slice(&body).unwrap_or_else(|_| json!(String::from_utf8_lossy(&body))),
    )
}

#[tokio::test]
async fn read_only_sql_over_views_and_tables_with_limits() {
    let dir = tempfile::tempdir().unwrap();
    let config = Tributary::configure(dir.path(), "");
    let env = [
        ("TRIBUTARY_SQL__MEMORY_LIMIT_MB", "16"),
        ("TRIBUTARY_SQL__TIMEOUT_MS", "1500"),
        ("TRIBUTARY_SQL__MAX_ROWS", "3"),
    ];
    let t = Tributary::start_role(dir.path(), &config, "up", &env).await;
    let events: Vec<Value> = (0..40)
        .map(|i| {
            let kind = ["pump", "fan"][i % 2];
            json!({"device": format!("d{i}"), "device_type": kind, "signal": 20.0 + i as f64,
                   "ts": format!("2026-01-01T00:{:02}:00Z", i)})
        })
        .collect();
    let (status, _) = t.post("readings", &Value::Array(events)).await;
    assert_eq!(status, 200);
    let (_, report) = t
        .post("readings", &json!([{"device": "x", "device_type": "pump", "signal": "loud", "ts": "2026-01-01T00:00:00Z"}]))
        .await;
    assert_eq!(report["rejected"], 1, "{report}");
    let answer = t
        .wait_for("/api/v1/views/signal_by_type", |v| total_readings(v) == 40)
        .await;
    // Until the archiver has every event, a batch run may cover only part of them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while t.run_batch().await["rows_in"] != 40 {
        assert!(
            std::time::Instant::now() < deadline,
            "archiver never caught up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The merged view, as a table.
    let (status, v) = sql_json(
        &t,
        "SELECT device_type, sum(readings) AS n FROM signal_by_type GROUP BY device_type ORDER BY device_type",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["rows"],
        json!([{"device_type": "fan", "n": 20}, {"device_type": "pump", "n": 20}])
    );
    assert_eq!(total_readings(&answer), 40);

    // Master and dead-letter tables.
    let (status, v) = sql_json(
        &t,
        "SELECT count(*) AS n, count(DISTINCT device) AS d FROM master_readings",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rows"][0], json!({"n": 40, "d": 40}));
    let (status, v) = sql_json(&t, "SELECT count(*) AS n FROM dead_letters_readings").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rows"][0]["n"], 1);

    // The catalogue lists every table a query may name (they are opened only when named).
    let (status, v) = sql_json(
        &t,
        "SELECT table_name, table_type FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY table_name",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["rows"],
        json!([
            {"table_name": "dead_letters_readings", "table_type": "BASE TABLE"},
            {"table_name": "master_readings", "table_type": "BASE TABLE"},
            {"table_name": "signal_by_type", "table_type": "VIEW"},
        ]),
        "{v}"
    );

    // The dead-letter API: the record, its field and reason.
    let (status, v) = t
        .get("/api/v1/streams/readings/dead-letters?limit=10")
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["rows"][0]["field"], "signal", "{v}");
    assert!(
        v["rows"][0]["raw"].as_str().unwrap().contains("loud"),
        "{v}"
    );
    let (status, _) = t.get("/api/v1/streams/nope/dead-letters").await;
    assert_eq!(status, 404);
    let (status, v) = t.get("/api/v1/streams/readings/dead-letters?limit=x").await;
    assert_eq!(status, 400, "{v}");

    // JSON answers are capped at sql.max-rows and say so.
    let (status, v) = sql_json(&t, "SELECT device FROM master_readings ORDER BY device").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rows"].as_array().unwrap().len(), 3);
    assert_eq!(v["row_count"], 40);
    assert_eq!(v["truncated"], true);

    // Arrow IPC.
    let (status, headers, body) = sql(
        &t,
        json!({"sql": "SELECT device, signal FROM master_readings ORDER BY device", "format": "arrow"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    let reader =
        datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
            .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 40);

    // EXPLAIN of a query shows its plan; EXPLAIN ANALYZE runs it under the same limits.
    for query in [
        "EXPLAIN SELECT count(*) FROM master_readings",
        "EXPLAIN ANALYZE SELECT device, count(*) FROM master_readings GROUP BY device",
    ] {
        let (status, v) = sql_json(&t, query).await;
        assert_eq!(status, 200, "{query}: {v}");
        assert!(v["row_count"].as_u64().unwrap() >= 1, "{query}: {v}");
    }

    // Refusals: 4xx with a reason, never 5xx, nothing changed.
    let refused = [
        (
            "INSERT INTO master_readings (device) VALUES ('x')",
            403,
            "read-only",
        ),
        ("UPDATE master_readings SET signal = 0", 403, "read-only"),
        ("DELETE FROM master_readings", 403, "read-only"),
        (
            "EXPLAIN ANALYZE DELETE FROM master_readings",
            403,
            "read-only",
        ),
        ("CREATE TABLE t AS SELECT 1", 403, "read-only"),
        ("CREATE VIEW v AS SELECT 1", 403, "read-only"),
        ("DROP TABLE master_readings", 403, "read-only"),
        (
            "COPY master_readings TO '/tmp/stolen.csv'",
            403,
            "read-only",
        ),
        ("SET datafusion.execution.batch_size = 1", 403, "read-only"),
        (
            "SELECT * INTO stolen FROM master_readings",
            403,
            "read-only",
        ),
        (
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            400,
            "parse",
        ),
        ("SELECT * FROM '/etc/passwd'", 400, ""),
        ("SELECT 1; SELECT 2", 400, "one statement"),
        ("SELEKT 1", 400, "parse"),
        ("SELECT * FROM nowhere", 400, "nowhere"),
        // An execution error is the query's fault (400), not a refused statement (403).
        (
            "SELECT arrow_cast(1, 'Decimal128(38, 100)')",
            400,
            "cannot be greater than precision",
        ),
        (
            "SELECT v FROM generate_series(1, 5000000) AS t(v) ORDER BY v DESC",
            422,
            "memory limit",
        ),
        (
            "SELECT count(*) FROM generate_series(1, 100000000000) AS t(v) WHERE v % 7 = 3",
            408,
            "time limit",
        ),
    ];
    for (query, want, reason) in refused {
        let (status, v) = sql_json(&t, query).await;
        assert_eq!(status, want, "{query}: {v}");
        let text = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{query}: no error text: {v}"));
        assert!(
            text.contains(reason),
            "{query}: `{text}` should say `{reason}`"
        );
    }
    for (body, reason) in [
        (json!({"sql": "SELECT 1", "format": "csv"}), "format"),
        (json!({"query": "SELECT 1"}), ""),
    ] {
        let (status, _, text) = sql(&t, body.clone()).await;
        assert!((400..500).contains(&status), "{body}: {status}");
        assert!(String::from_utf8_lossy(&text).contains(reason), "{body}");
    }
    assert!(!std::path::Path::new("/tmp/stolen.csv").exists());
    let (status, v) = sql_json(&t, "SELECT count(*) AS n FROM master_readings").await;
    assert_eq!((status, v["rows"][0]["n"].clone()), (200, json!(40)));
}
