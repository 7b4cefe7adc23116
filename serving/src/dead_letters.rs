//! The dead-letter resource of a stream: the listing (newest first) and the replay that
//! validates every letter again and lets the ones that pass join the stream.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};

use crate::error::{ErrorBody, ServingError};
use crate::state::AppState;

/// `GET /api/v1/streams/{stream}/dead-letters?limit=N`: rejected records, newest first,
/// with where they came from, the field at fault and the reason.
#[utoipa::path(get, path = "/api/v1/streams/{stream}/dead-letters", tag = "ingest",
    params(("stream" = String, Path, description = "Stream name"),
           ("limit" = Option<u64>, Query, description = "Most records to return (default 100, at most 10,000)")),
    responses((status = 200, description = "Dead letters, newest first, and how many there are", body = Object),
              (status = 400, description = "A malformed parameter, named", body = ErrorBody),
              (status = 404, description = "No such stream", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ServingError> {
    if state.merger.pipeline().stream(&stream).is_none() {
        return Err(ServingError::UnknownStream(stream));
    }
    let limit = crate::params::limit_param(&params, 100)?;
    // More than this in one answer is a job for the SQL endpoint.
    let limit = limit.min(10_000);
    flush_dead_letters(&state, &stream).await;
    let rows = crate::sql::dead_letters(&state.merger, &stream, limit).await?;
    Ok(Json(
        json!({ "stream": stream, "total": rows.0, "rows": rows.1 }),
    ))
}

/// Move this process's spooled letters of `stream` into Delta before they are listed.
/// The listing goes on without them when that fails or takes long (they stay spooled
/// and durable, and appear once the background flush succeeds).
pub(crate) async fn flush_dead_letters(state: &AppState, stream: &str) {
    let Some(sink) = &state.dead_letters else {
        return;
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), sink.flush(stream)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(stream, error = %e, "listing dead letters without the spooled ones")
        }
        Err(_) => tracing::warn!(
            stream,
            "listing dead letters without the spooled ones: the flush took over 5 s"
        ),
    }
}

/// `POST /api/v1/streams/{stream}/dead-letters/replay`: validate every dead letter
/// again; the ones that pass now join the stream.
#[utoipa::path(post, path = "/api/v1/streams/{stream}/dead-letters/replay", tag = "ingest",
    params(("stream" = String, Path, description = "Stream name")),
    responses((status = 200, description = "How many were replayed and how many are still refused, with reasons", body = Object),
              (status = 404, description = "No such stream", body = ErrorBody),
              (status = 409, description = "Ingest does not run in this process", body = ErrorBody)))]
pub async fn replay(
    State(state): State<AppState>,
    Path(stream): Path<String>,
) -> Result<Json<Value>, ServingError> {
    if state.merger.pipeline().stream(&stream).is_none() {
        return Err(ServingError::UnknownStream(stream));
    }
    let Some(ingest) = state.ingest.as_ref() else {
        return Err(ServingError::Unavailable(
            "dead-letter replay runs where ingest runs; send it to the ingest process".into(),
        ));
    };
    let report = ingest
        .replay_dead_letters(&stream)
        .await
        .map_err(|source| ServingError::Replay {
            stream: stream.clone(),
            source,
        })?;
    Ok(Json(
        json!({ "stream": stream, "replayed": report.replayed, "still_invalid": report.still_invalid, "reasons": report.reasons }),
    ))
}
