//! A record is parsed once on its way in: the log stores each valid record's text as it
//! arrived (no re-serialised copy), keyed records land in their key's partition, and a
//! bad record still gets its precise error beside the good ones.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt;
use tributary_core::config::{FieldConfig, StreamConfig};
use tributary_core::log::EventLog;
use tributary_core::schema::StreamSchema;
use tributary_core::storage::Storage;
use tributary_ingest::Ingest;
use tributary_ingest::dead_letter::DeadLetterSink;
use tributary_ingest::log::EmbeddedLog;

fn stream() -> StreamSchema {
    let f = |n: &str, t: &str| FieldConfig {
        name: n.into(),
        field_type: t.into(),
        nullable: false,
    };
    StreamSchema::from_config(
        &StreamConfig {
            name: "s".into(),
            fields: vec![f("k", "string"), f("v", "float64"), f("ts", "timestamp")],
            event_time: "ts".into(),
            from_view: None,
            key: Some("k".into()),
            partitions: 4,
            id_field: None,
            dedup_horizon_ms: 0,
            max_string_bytes: 16 * 1024,
            max_event_lead_ms: 300_000,
        },
        "streams[0]",
    )
    .unwrap()
}

async fn post(
    app: &axum::Router,
    content_type: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let resp = app
        .clone()
        .oneshot(
            Request::post("/api/v1/streams/s/events")
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// Every payload in the log, per partition.
async fn payloads(log: &EmbeddedLog) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for p in 0..4 {
        let batch = log.read("s", p, 0, 1_000).await.unwrap();
        out.push(
            batch
                .records
                .into_iter()
                .map(|r| String::from_utf8(r.payload).unwrap())
                .collect(),
        );
    }
    out
}

#[tokio::test]
async fn the_log_keeps_each_records_text_and_its_keys_partition() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let log = Arc::new(EmbeddedLog::open(&storage.log_dir(), &[("s".into(), 4)]).unwrap());
    let schema = stream();
    let ingest = Arc::new(Ingest::new(
        vec![schema.clone()],
        log.clone(),
        DeadLetterSink::new(storage, ["s".to_string()]),
        tributary_ingest::IngestLimits::default(),
    ));
    let app = tributary_ingest::http::router(ingest, 1 << 20);

    let a = r#"{ "k" : "pump-1", "v" : 1.50, "ts" : "2026-01-01T00:00:00Z" }"#;
    let b = r#"{"ts":1767225600000,"v":2,"k":"fan-2"}"#;
    let bad = r#"{"k":"x","v":"loud","ts":1767225600000}"#;
    let (status, report) = post(
        &app,
        "application/json",
        &format!(" [ {a} ,\n{bad}, {b} ] "),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["accepted"], 2, "{report}");
    assert_eq!(report["errors"][0]["index"], 1, "{report}");
    assert_eq!(report["errors"][0]["field"], "v", "{report}");

    let c = r#"{"k":"pump-1","v":3.0,"ts":"2026-01-01T00:01:00Z"}"#;
    let (status, report) = post(&app, "application/x-ndjson", &format!("{c}\r\n\n")).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let (status, _) = post(&app, "application/json", b).await;
    assert_eq!(status, StatusCode::OK);

    let stored = payloads(&log).await;
    let partition = |key: &str| schema.partition_of(Some(key.as_bytes()), 0) as usize;
    // The texts as they arrived, whitespace and field order included, in the key's
    // partition; nothing else anywhere.
    let mut expected = vec![Vec::<String>::new(); 4];
    expected[partition("pump-1")].push(a.into());
    expected[partition("fan-2")].push(b.into());
    expected[partition("pump-1")].push(c.into());
    expected[partition("fan-2")].push(b.into());
    assert_eq!(stored, expected);
}

/// Elements are split without a parse and parsed once by validation, so a syntax error
/// inside one element (after valid ones, or in a record that would fail validation
/// anyway) must still refuse the whole body: 400 naming the record, nothing in the log,
/// no dead letter. Valid JSON that is not a valid record stays a per-record error.
#[tokio::test]
async fn a_syntax_error_inside_one_element_refuses_the_whole_body() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let log = Arc::new(EmbeddedLog::open(&storage.log_dir(), &[("s".into(), 4)]).unwrap());
    let dead_letters = DeadLetterSink::new(storage, ["s".to_string()]);
    let ingest = Arc::new(Ingest::new(
        vec![stream()],
        log.clone(),
        dead_letters.clone(),
        tributary_ingest::IngestLimits::default(),
    ));
    let app = tributary_ingest::http::router(ingest, 1 << 20);
    let good = r#"{"k":"pump-1","v":1.5,"ts":1767225600000}"#;
    for (body, record) in [
        (
            format!("[{good},{good},{{\"k\":\"x\",\"v\":1.5,\"ts\":17672256000x0}}]"),
            2,
        ),
        (
            format!("[{good},{{\"k\":\"x\",\"v\":\"loud\",\"ts\":1}} , {{\"k\": }}]"),
            2,
        ),
        (format!("[{{\"k\":\"x\" \"v\":1}},{good}]"), 0),
        (format!("{good} x"), 0),
    ] {
        let (status, report) = post(&app, "application/json", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {report}");
        let error = report["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("not JSON") && error.contains(&format!("record {record}")),
            "{body}: {report}"
        );
    }
    // Errors the split itself finds name the byte where it stopped.
    for body in [
        "[{good}",
        "[{good},]",
        "[{good}] ]",
        r#"[{good},{"k":"a]","v":1,"ts":1]}]"#,
    ] {
        let body = body.replace("{good}", good);
        let (status, report) = post(&app, "application/json", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {report}");
        assert!(
            report["error"].as_str().unwrap().contains("not JSON"),
            "{report}"
        );
    }
    assert_eq!(payloads(&log).await, vec![Vec::<String>::new(); 4]);
    dead_letters.flush("s").await.unwrap();
    assert!(dead_letters.read_all("s").await.unwrap().is_empty());

    // Well-formed JSON that is not a record: a per-record error beside the good one.
    let (status, report) = post(&app, "application/json", &format!("[7,{good},\"x\"]")).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["accepted"], 1, "{report}");
    assert_eq!(report["rejected"], 2, "{report}");
}
