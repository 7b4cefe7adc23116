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
    /// What is wrong, and what was expected where it applies.
    pub error: String,
}

/// What serving can answer with an error; [`IntoResponse`] maps each to its status once.
#[derive(Debug, Error)]
pub enum ServingError {
    /// No view of this name.
    #[error("unknown view `{0}`")]
    UnknownView(String),
    /// No batch run of this id in the history.
    #[error("unknown batch run `{0}`")]
    UnknownRun(String),
    /// No stream of this name.
    #[error("unknown stream `{0}`")]
    UnknownStream(String),
    #[error("parameter `{param}`: {reason}")]
    /// A request parameter that cannot be used: a query parameter, or a field of a JSON
    /// body (a view definition's `sql`, the SQL endpoint's `format`).
    BadParameter {
        /// The parameter's (or body field's) name.
        param: String,
        /// What was expected.
        reason: String,
    },
    /// The batch layer failed (starting or reading a run).
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("{}", with_view(.view, .source))]
    /// Merging a view's states failed.
    Query {
        /// The view.
        view: String,
        /// The failure.
        source: CoreError,
    },
    #[error("cannot bind {addr}: {source}")]
    /// The listener could not be opened.
    Bind {
        /// The address asked for.
        addr: String,
        /// Why it could not be bound.
        #[source]
        source: std::io::Error,
    },
    #[error("http.tls-cert {} / http.tls-key {}: {source}", cert.display(), key.display())]
    /// The TLS certificate or key could not be loaded.
    Tls {
        /// The certificate file.
        cert: std::path::PathBuf,
        /// The key file.
        key: std::path::PathBuf,
        /// Why loading failed.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server's socket failed while serving.
    #[error("serving HTTP: {0}")]
    Io(#[source] std::io::Error),
    /// The HTTP server stopped with an error.
    #[error("server: {0}")]
    Server(String),
    /// The query engine failed where no user input is at fault.
    #[error("query engine: {0}")]
    Engine(#[source] datafusion::error::DataFusionError),
    /// A stored Delta table could not be opened or read.
    #[error("{what}: {source}")]
    Table {
        /// What was being read.
        what: String,
        /// The failure.
        #[source]
        source: deltalake::DeltaTableError,
    },
    /// A query that cannot run as written (parse, plan, unknown table).
    #[error("SQL: {0}")]
    Sql(String),
    /// A request body that is not the JSON the endpoint takes (syntax, a missing or
    /// unknown field, a wrong type, no JSON content type), with axum's status for it.
    #[error("request body: {message}")]
    BadBody {
        /// 400 (syntax), 422 (shape) or 415 (content type).
        status: StatusCode,
        /// What is wrong, as the JSON reader says.
        message: String,
    },
    /// A SQL query over a view some of whose rows cannot be computed: answering
    /// without them would look whole, so the query is refused and names them.
    #[error(
        "view `{view}`: the rows of {count} group(s) cannot be computed (the first: {first}); \
         GET /api/v1/views/{view} answers without them and lists them in `failed_rows`"
    )]
    RowsFailed {
        /// The view.
        view: String,
        /// How many groups.
        count: usize,
        /// The first group's keys and error, as JSON.
        first: String,
    },
    /// A statement the endpoint does not allow.
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("the query needed more than its memory limit of {limit_mb} MB ({detail})")]
    /// A SQL query ran out of its memory budget (`sql.memory-limit-mb`).
    SqlMemory {
        /// The budget.
        limit_mb: usize,
        /// What the engine said.
        detail: String,
    },
    #[error("the query ran past its time limit of {0} ms and was cancelled")]
    /// A SQL query ran past `sql.timeout-ms`.
    SqlTimeout(u64),
    #[error("{0}")]
    /// A SQL answer larger than the endpoint returns.
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
        /// The stream.
        stream: String,
        /// Why it stopped.
        #[source]
        source: tributary_core::ingest_handle::BoxError,
    },
    /// The request needs a role this process does not run.
    #[error("{0}")]
    Unavailable(String),
    /// The view exists but does not answer yet (backfilling); the reason says what
    /// it waits for.
    #[error("view `{view}` is {reason}")]
    ViewNotReady {
        /// The view.
        view: String,
        /// Its state and what it waits for.
        reason: String,
    },
    /// The view exists but is not computed (paused, failed): it answers once changed.
    #[error("view `{view}` is {reason}")]
    ViewInactive {
        /// The view.
        view: String,
        /// Its state and why.
        reason: String,
    },
    /// Storage or the catalog failed where no user input is at fault.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A runtime change that conflicts with the view's state (creating one that
    /// exists, resuming one that runs, …).
    #[error("{0}")]
    ViewConflict(String),
    /// A sink could not reach its target or record its progress (it retries).
    #[error("sink `{sink}`: {message}: {source}")]
    Sink {
        /// The sink.
        sink: String,
        /// What it was doing.
        message: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// `source`'s message, led by the view's name unless it names the view already.
fn with_view(view: &str, source: &CoreError) -> String {
    let text = source.to_string();
    match text.starts_with(&format!("view `{view}`")) {
        true => text,
        false => format!("view `{view}`: {text}"),
    }
}

impl ServingError {
    /// A bad request parameter (query parameter or body field) `param`, and what was
    /// expected.
    pub fn bad(param: &str, reason: impl Into<String>) -> Self {
        ServingError::BadParameter {
            param: param.to_string(),
            reason: reason.into(),
        }
    }

    /// The refusal of an answer of `view`, which is not ready for `why`.
    pub fn not_ready(view: &str, why: crate::merge::NotReady) -> Self {
        let view = view.to_string();
        match why {
            crate::merge::NotReady::Backfilling(reason)
            | crate::merge::NotReady::Unreadable(reason) => {
                ServingError::ViewNotReady { view, reason }
            }
            crate::merge::NotReady::Inactive(reason) => ServingError::ViewInactive { view, reason },
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ServingError::UnknownView(_)
            | ServingError::UnknownRun(_)
            | ServingError::UnknownStream(_) => StatusCode::NOT_FOUND,
            ServingError::BadParameter { .. } | ServingError::Sql(_) => StatusCode::BAD_REQUEST,
            ServingError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServingError::BadBody { status, .. } => *status,
            ServingError::SqlMemory { .. } | ServingError::RowsFailed { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ServingError::SqlTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ServingError::SqlAnswerTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServingError::Busy(_) | ServingError::TooManyConnections(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ServingError::Batch(BatchError::RunInProgress) | ServingError::Unavailable(_) => {
                StatusCode::CONFLICT
            }
            ServingError::Replay { .. } => StatusCode::SERVICE_UNAVAILABLE,
            // The speed layer (another process) down, its processes disagreeing on who
            // holds a partition, or a batch view still moving: another try may succeed.
            ServingError::Query {
                source:
                    CoreError::LogUnavailable(_)
                    | CoreError::SpeedOverlap { .. }
                    | CoreError::RevisionMismatch { .. }
                    | CoreError::StaleCutoff { .. },
                ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            ServingError::Batch(_)
            | ServingError::Query { .. }
            | ServingError::Bind { .. }
            | ServingError::Tls { .. }
            | ServingError::Io(_)
            | ServingError::Engine(_)
            | ServingError::Server(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ServingError::Sink { .. } | ServingError::ViewNotReady { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ServingError::ViewConflict(_) | ServingError::ViewInactive { .. } => {
                StatusCode::CONFLICT
            }
            ServingError::Core(_) => StatusCode::SERVICE_UNAVAILABLE,
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

/// A JSON request body, refused the way every other error is (a JSON `{"error": …}`
/// body) rather than with axum's plain-text rejection.
pub struct Body<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for Body<T>
where
    Json<T>: axum::extract::FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ServingError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(ServingError::BadBody {
                status: rejection.status(),
                message: rejection.body_text(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_error_names_its_view_once() {
        let stale = ServingError::Query {
            view: "counts".into(),
            source: CoreError::StaleCutoff {
                view: "counts".into(),
                requested: 1,
                released: 2,
            },
        };
        assert!(
            stale
                .to_string()
                .starts_with("view `counts`: the speed layer released")
        );
        let other = ServingError::Query {
            view: "counts".into(),
            source: CoreError::LogUnavailable("down".into()),
        };
        assert!(other.to_string().starts_with("view `counts`: "), "{other}");
    }
}
