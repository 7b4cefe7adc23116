//! The ingest router's contract when the log refuses writes: 503 with a retry hint,
//! nothing reported as accepted.

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt;
use tributary_core::config::{FieldConfig, StreamConfig};
use tributary_core::error::{CoreError, Result};
use tributary_core::log::{AppendAck, Assignment, EventLog, LogBatch, NewRecord};
use tributary_core::schema::StreamSchema;
use tributary_core::storage::Storage;
use tributary_ingest::Ingest;
use tributary_ingest::dead_letter::DeadLetterSink;

/// A log whose disk is gone: every append fails.
struct BrokenLog;

#[async_trait]
impl EventLog for BrokenLog {
    async fn append_records(&self, _: &str, _: u32, _: Vec<NewRecord>) -> Result<AppendAck> {
        Err(CoreError::LogUnavailable("disk full".into()))
    }
    async fn read(&self, _: &str, _: u32, from: u64, _: usize) -> Result<LogBatch> {
        Ok(LogBatch {
            records: Vec::new(),
            next_offset: from,
            expired: None,
        })
    }
    async fn end_offset(&self, _: &str, _: u32) -> Result<u64> {
        Ok(0)
    }
    async fn first_offset(&self, _: &str, _: u32) -> Result<u64> {
        Ok(0)
    }
    async fn offset_for_ingest_ts(&self, _: &str, _: u32, _: i64) -> Result<u64> {
        Ok(0)
    }
    async fn ingest_ts_bound(&self, _: &str, _: u32, _: u64) -> Result<i64> {
        Ok(0)
    }
    async fn commit_position(&self, _: &str, _: &str, _: u32, _: u64) -> Result<()> {
        Ok(())
    }
    async fn position(&self, _: &str, _: &str, _: u32) -> Result<Option<u64>> {
        Ok(None)
    }
    async fn assignment(&self, _: &str, _: &str) -> Result<Assignment> {
        Ok(Assignment {
            partitions: vec![0],
            generation: 0,
        })
    }
}

#[tokio::test]
async fn a_log_that_cannot_write_gives_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let stream = StreamSchema::from_config(
        &StreamConfig {
            name: "s".into(),
            fields: vec![FieldConfig {
                name: "ts".into(),
                field_type: "timestamp".into(),
                nullable: false,
            }],
            event_time: "ts".into(),
            from_view: None,
            key: None,
            partitions: 1,
            id_field: None,
            dedup_horizon_ms: 0,
            max_string_bytes: 16 * 1024,
            max_event_lead_ms: 300_000,
        },
        "streams[0]",
    )
    .unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let ingest = Arc::new(Ingest::new(
        vec![stream],
        Arc::new(BrokenLog),
        DeadLetterSink::new(storage, ["s".to_string()]),
        tributary_ingest::IngestLimits::default(),
    ));
    let app = tributary_ingest::http::router(ingest, 1 << 20);
    let resp = app
        .oneshot(
            Request::post("/api/v1/streams/s/events")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"[{"ts":"2026-01-01T00:00:00Z"}]"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("disk full"), "{v}");
    assert!(
        v.get("accepted").is_none(),
        "nothing is reported accepted: {v}"
    );
}
