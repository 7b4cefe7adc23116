//! Ingest errors and their one mapping to HTTP responses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use thiserror::Error;
use tributary_core::CoreError;

#[derive(Debug, Error)]
pub enum IngestError {
    #[error("unknown stream `{0}`")]
    UnknownStream(String),
    #[error("request body is not JSON: {0}")]
    NotJson(String),
    #[error("request body is {size} bytes; the limit is {limit} bytes")]
    BodyTooLarge { size: String, limit: usize },
    #[error("request has {count} records; the limit is {limit} per request")]
    TooManyRecords { count: String, limit: usize },
    #[error(
        "request spans {count} event dates; the limit is {limit} per request (http.max-event-dates-per-request; history belongs to `tributary backfill`)"
    )]
    TooManyEventDates { count: usize, limit: usize },
    #[error(
        "unsupported Content-Type {0}: expected application/json, or application/x-ndjson for NDJSON"
    )]
    UnsupportedMediaType(String),
    #[error("header Idempotency-Key: {0}")]
    BadIdempotencyKey(String),
    #[error(
        "a request with Idempotency-Key `{0}` is still in progress; retry once it has answered"
    )]
    IdempotencyInFlight(String),
    #[error(
        "Idempotency-Key `{0}` was used for a different request body; use a new key for a new request"
    )]
    IdempotencyMismatch(String),
    #[error("the event log cannot take the write: {0}")]
    LogUnavailable(String),
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::UnknownStream(_) => StatusCode::NOT_FOUND,
            IngestError::NotJson(_)
            | IngestError::TooManyEventDates { .. }
            | IngestError::BadIdempotencyKey(_) => StatusCode::BAD_REQUEST,
            IngestError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::IdempotencyInFlight(_) => StatusCode::CONFLICT,
            IngestError::IdempotencyMismatch(_) => StatusCode::UNPROCESSABLE_ENTITY,
            IngestError::BodyTooLarge { .. } | IngestError::TooManyRecords { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            IngestError::LogUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            IngestError::Core(CoreError::LogUnavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            IngestError::Core(CoreError::UnknownStream(_)) => StatusCode::NOT_FOUND,
            IngestError::Core(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({ "error": self.to_string() });
        let retry = status == StatusCode::SERVICE_UNAVAILABLE;
        if retry {
            body["retry_after_ms"] = json!(1000);
        }
        let mut resp = (status, axum::Json(body)).into_response();
        if retry {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
