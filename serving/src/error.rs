//! Serving errors and the one place they become HTTP responses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use thiserror::Error;
use tributary_batch::BatchError;
use tributary_core::CoreError;

/// Every error answer: one sentence saying what is wrong.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug, Error)]
pub enum ServingError {
    #[error("unknown view `{0}`")]
    UnknownView(String),
    #[error("unknown batch run `{0}`")]
    UnknownRun(String),
    #[error("unknown stream `{0}`")]
    UnknownStream(String),
    #[error("query parameter `{param}`: {reason}")]
    BadParameter { param: String, reason: String },
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("view `{view}`: {source}")]
    Query { view: String, source: CoreError },
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("http.tls-cert {} / http.tls-key {}: {source}", cert.display(), key.display())]
    Tls {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server's socket failed while serving.
    #[error("serving HTTP: {0}")]
    Io(#[source] std::io::Error),
    #[error("server: {0}")]
    Server(String),
    /// The query engine failed where no user input is at fault.
    #[error("query engine: {0}")]
    Engine(#[source] datafusion::error::DataFusionError),
    /// A stored Delta table could not be opened or read.
    #[error("{what}: {source}")]
    Table {
        what: String,
        #[source]
        source: deltalake::DeltaTableError,
    },
    /// A query that cannot run as written (parse, plan, unknown table).
    #[error("SQL: {0}")]
    Sql(String),
    /// A statement the endpoint does not allow.
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("the query needed more than its memory limit of {limit_mb} MB ({detail})")]
    SqlMemory { limit_mb: usize, detail: String },
    #[error("the query ran past its time limit of {0} ms and was cancelled")]
    SqlTimeout(u64),
    #[error("{0}")]
    SqlAnswerTooLarge(String),
    /// A limit on concurrent clients is reached; retrying later may succeed.
    #[error("{0}")]
    Busy(String),
    /// The connection is over `http.max-connections`.
    #[error("too many open connections (http.max-connections = {0}); retry shortly")]
    TooManyConnections(usize),
    /// A dead-letter replay that failed part way (the letters stay where they were).
    #[error("replaying the dead letters of `{stream}`: {source}")]
    Replay {
        stream: String,
        #[source]
        source: tributary_core::ingest_handle::BoxError,
    },
    /// The request needs a role this process does not run.
    #[error("{0}")]
    Unavailable(String),
}

impl ServingError {
    pub fn bad(param: &str, reason: impl Into<String>) -> Self {
        ServingError::BadParameter {
            param: param.to_string(),
            reason: reason.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ServingError::UnknownView(_)
            | ServingError::UnknownRun(_)
            | ServingError::UnknownStream(_) => StatusCode::NOT_FOUND,
            ServingError::BadParameter { .. } | ServingError::Sql(_) => StatusCode::BAD_REQUEST,
            ServingError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServingError::SqlMemory { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ServingError::SqlTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ServingError::SqlAnswerTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServingError::Busy(_) | ServingError::TooManyConnections(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ServingError::Batch(BatchError::RunInProgress) | ServingError::Unavailable(_) => {
                StatusCode::CONFLICT
            }
            ServingError::Replay { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ServingError::Batch(_)
            | ServingError::Query { .. }
            | ServingError::Bind { .. }
            | ServingError::Tls { .. }
            | ServingError::Io(_)
            | ServingError::Engine(_)
            | ServingError::Server(_) => StatusCode::INTERNAL_SERVER_ERROR,
            // Storage is outside this process: it may answer again shortly.
            ServingError::Table { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ServingError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}
