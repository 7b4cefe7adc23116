//! Ingest errors and their one mapping to HTTP responses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use thiserror::Error;
use tributary_core::CoreError;

/// Why ingest refused a request (each maps to one HTTP status in [`IngestError::status`]).
#[derive(Debug, Error)]
pub enum IngestError {
    /// No stream of this name is configured.
    #[error("unknown stream `{0}`")]
    UnknownStream(String),
    /// The body is neither a JSON array nor NDJSON.
    #[error("request body is not JSON: {0}")]
    NotJson(String),
    #[error("request body is {size} bytes; the limit is {limit} bytes")]
    /// The body is larger than `http.max-body-bytes`.
    BodyTooLarge {
        /// The body's size, or `more than the limit` when reading stopped there.
        size: String,
        /// The limit, in bytes.
        limit: usize,
    },
    #[error("request has {count} records; the limit is {limit} per request")]
    /// More records than `http.max-records-per-request`.
    TooManyRecords {
        /// How many the request holds (`more than N` when counting stopped).
        count: String,
        /// The limit.
        limit: usize,
    },
    #[error(
        "request spans {count} event dates; the limit is {limit} per request (http.max-event-dates-per-request; history belongs to `tributary backfill`)"
    )]
    /// Records over more UTC event dates than `http.max-event-dates-per-request`.
    TooManyEventDates {
        /// Distinct event dates in the request.
        count: usize,
        /// The limit.
        limit: usize,
    },
    #[error(
        "unsupported Content-Type {0}: expected application/json, or application/x-ndjson for NDJSON"
    )]
    /// A `Content-Type` ingest does not read.
    UnsupportedMediaType(String),
    #[error("header Idempotency-Key: {0}")]
    /// An `Idempotency-Key` header that is not a usable key.
    BadIdempotencyKey(String),
    #[error(
        "a request with Idempotency-Key `{0}` is still in progress; retry once it has answered"
    )]
    /// Another request with the same key has not answered yet.
    IdempotencyInFlight(String),
    #[error(
        "Idempotency-Key `{0}` was used for a different request body; use a new key for a new request"
    )]
    /// The key was used before for a different body.
    IdempotencyMismatch(String),
    /// The log cannot be reached now; nothing of the request was appended.
    #[error("the event log cannot take the write: {0}")]
    LogUnavailable(String),
    /// A failure of the shared core (the log refused a write, a table failed).
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl IngestError {
    /// The HTTP status this error is answered with.
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
