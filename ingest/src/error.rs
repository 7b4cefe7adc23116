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
    TooManyRecords { count: usize, limit: usize },
    #[error("the event log cannot take the write: {0}")]
    LogUnavailable(String),
    #[error("dead-letter table for `{stream}`: {message}")]
    DeadLetter { stream: String, message: String },
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::UnknownStream(_) => StatusCode::NOT_FOUND,
            IngestError::NotJson(_) => StatusCode::BAD_REQUEST,
            IngestError::BodyTooLarge { .. } | IngestError::TooManyRecords { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            IngestError::LogUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            IngestError::Core(CoreError::LogUnavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            IngestError::Core(CoreError::UnknownStream(_)) => StatusCode::NOT_FOUND,
            IngestError::DeadLetter { .. } | IngestError::Core(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
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
