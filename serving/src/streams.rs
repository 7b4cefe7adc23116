//! The stream resource: schemas and ingest counters, and a sample of the newest events
//! in the log.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};
use tributary_core::time::rfc3339;

use crate::error::{ErrorBody, ServingError};
use crate::state::AppState;

/// `GET /api/v1/streams`.
#[utoipa::path(get, path = "/api/v1/streams", tag = "ingest",
    responses((status = 200, description = "Every stream: fields, event time, key, partitions, dedup rule, counters", body = Object)))]
pub async fn list_streams(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "streams": stream_docs(&state) }))
}

/// Each stream as `GET /api/v1/streams` lists it.
pub fn stream_docs(state: &AppState) -> Vec<Value> {
    state
        .merger
        .pipeline()
        .streams
        .iter()
        .map(|s| {
            let counters = state
                .ingest
                .as_ref()
                .and_then(|i| i.counters(&s.name))
                .map(|c| json!({ "accepted": c.accepted, "rejected": c.rejected }));
            json!({
                "name": s.name,
                "fields": s.fields,
                "event_time": s.event_time,
                "key": s.key,
                "partitions": s.partitions,
                "dedup": s.dedup.as_ref().map(|d| json!({ "id_field": d.field, "horizon_ms": d.horizon_us / 1000 })),
                "ingest": counters,
            })
        })
        .collect()
}

/// `GET /api/v1/streams/{stream}/recent?limit=N`: the newest records in the log, newest
/// first, as the log holds them (validated, not yet necessarily archived).
#[utoipa::path(get, path = "/api/v1/streams/{stream}/recent", tag = "ingest",
    params(("stream" = String, Path, description = "Stream name"),
           ("limit" = Option<u64>, Query, description = "Most records (default 20, at most 1,000)")),
    responses((status = 200, description = "The newest events with partition, offset and ingest time", body = Object),
              (status = 400, description = "A malformed parameter, named", body = ErrorBody),
              (status = 404, description = "No such stream", body = ErrorBody)))]
pub async fn recent(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ServingError> {
    let Some(schema) = state.merger.pipeline().stream(&stream).cloned() else {
        return Err(ServingError::UnknownStream(stream));
    };
    let limit = crate::params::limit_param(&params, 20)?;
    Ok(Json(
        json!({ "stream": stream, "rows": recent_rows(&state, &schema, limit.min(1_000)).await? }),
    ))
}

/// The newest `limit` records of a stream across its partitions, newest first.
pub async fn recent_rows(
    state: &AppState,
    schema: &tributary_core::schema::StreamSchema,
    limit: usize,
) -> Result<Vec<Value>, ServingError> {
    let stream = &schema.name;
    let log_err =
        |e: tributary_core::CoreError| ServingError::Server(format!("log of `{stream}`: {e}"));
    let mut records = Vec::new();
    for p in 0..schema.partitions {
        let end = state.log.end_offset(stream, p).await.map_err(log_err)?;
        let from = end.saturating_sub(limit as u64);
        if from == end {
            continue;
        }
        let batch = state
            .log
            .read(stream, p, from, limit)
            .await
            .map_err(log_err)?;
        records.extend(batch.records.into_iter().map(|r| (p, r)));
    }
    records.sort_by_key(|(p, r)| std::cmp::Reverse((r.ingest_ts, *p, r.offset)));
    records.truncate(limit);
    let rows: Vec<Value> = records
        .into_iter()
        .map(|(p, r)| {
            let event = serde_json::from_slice::<Value>(&r.payload)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.payload).into_owned()));
            json!({ "partition": p, "offset": r.offset, "ingest_ts": rfc3339(r.ingest_ts), "event": event })
        })
        .collect();
    Ok(rows)
}
