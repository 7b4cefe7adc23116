//! `POST /api/v1/streams/{stream}/events`: a JSON array of objects (or one object), or
//! NDJSON with `Content-Type: application/x-ndjson`.
//!
//! Only JSON media types are taken: a browser page on another site can send
//! `text/plain` or a form without asking (no CORS preflight), but not JSON. Bodies are
//! parsed no further than the record limit, so a huge array of tiny values is refused
//! before it is materialised. With `Idempotency-Key`, a retry adds nothing
//! ([`crate::idempotency`]).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::routing::post;

use crate::body::{parse_json, parse_ndjson};
use crate::error::IngestError;
use crate::idempotency::IdempotencyKey;
use crate::service::{Ingest, IngestReport};

/// The header a client sets to make a request idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[derive(Clone)]
struct IngestState {
    ingest: Arc<Ingest>,
    max_body: usize,
}

/// The ingest routes, ready to merge into the server's router.
pub fn router(ingest: Arc<Ingest>, max_body: usize) -> Router {
    Router::new()
        .route("/api/v1/streams/{stream}/events", post(post_events))
        .with_state(IngestState { ingest, max_body })
}

async fn post_events(
    State(state): State<IngestState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::response::Response, IngestError> {
    use axum::response::IntoResponse;
    if !state.ingest.has_stream(&stream) {
        return Err(IngestError::UnknownStream(stream));
    }
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > state.max_body
    {
        return Err(IngestError::BodyTooLarge {
            size: len.to_string(),
            limit: state.max_body,
        });
    }
    let bytes = axum::body::to_bytes(body, state.max_body)
        .await
        .map_err(|_| IngestError::BodyTooLarge {
            size: "more than the limit".into(),
            limit: state.max_body,
        })?;
    let ndjson = match media_type(&headers)? {
        Media::Json => false,
        Media::Ndjson => true,
    };
    let key = headers
        .get(IDEMPOTENCY_KEY)
        .map(|v| {
            let key = v
                .to_str()
                .map_err(|_| IngestError::BadIdempotencyKey("not visible ASCII".into()))?;
            IdempotencyKey::new(key, &bytes)
        })
        .transpose()?;
    let max = state.ingest.max_records();
    let records = if ndjson {
        parse_ndjson(&bytes, max)?
    } else {
        parse_json(&bytes, max)?
    };
    let report: IngestReport = state.ingest.ingest_once(&stream, records, key).await?;
    // Nothing valid at all: a 400 that still names every record's problem.
    let status = if report.accepted == 0 && report.rejected > 0 {
        axum::http::StatusCode::BAD_REQUEST
    } else {
        axum::http::StatusCode::OK
    };
    Ok((status, Json(report)).into_response())
}

enum Media {
    Json,
    Ndjson,
}

/// The body's media type: JSON (`application/json`, `+json`) or NDJSON; anything else,
/// or none, is refused with 415.
fn media_type(headers: &HeaderMap) -> Result<Media, IngestError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Err(IngestError::UnsupportedMediaType("(none)".into()));
    };
    let text = ct.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Media::Json),
        "application/x-ndjson" | "application/jsonl" | "application/jsonlines" => Ok(Media::Ndjson),
        e if e.starts_with("application/") && e.ends_with("+json") => Ok(Media::Json),
        _ => Err(IngestError::UnsupportedMediaType(format!(
            "`{}`",
            text.chars().take(100).collect::<String>()
        ))),
    }
}
