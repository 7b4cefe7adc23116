//! The batch-run resource: the run history, one run, starting a run, and maintenance.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use tributary_batch::{RunKind, RunRecord};

use crate::error::{ErrorBody, ServingError};
use crate::state::AppState;

#[utoipa::path(get, path = "/api/v1/batch/runs", tag = "batch",
    responses((status = 200, description = "Run history, newest first", body = Object)))]
/// The batch-run history, newest first.
pub async fn list_runs(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "runs": state.batch.history() }))
}

#[utoipa::path(get, path = "/api/v1/batch/runs/{id}", tag = "batch",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "One run", body = Object),
              (status = 404, description = "No such run", body = ErrorBody)))]
/// One batch run.
pub async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunRecord>, ServingError> {
    state
        .batch
        .run_record(&id)
        .map(Json)
        .ok_or(ServingError::UnknownRun(id))
}

#[utoipa::path(post, path = "/api/v1/batch/runs", tag = "batch",
    params(("wait" = Option<bool>, Query, description = "Answer when the run has ended"),
           ("kind" = Option<String>, Query, description = "`full` (default): every view from the whole master table; `incremental`: merge the events since each view's last cutoff into its states"),
           ("view" = Option<String>, Query, description = "Recompute this view only (default: every view)")),
    responses((status = 200, description = "The finished run (wait=true)", body = Object),
              (status = 202, description = "The run, started", body = Object),
              (status = 400, description = "A malformed parameter, named", body = ErrorBody),
              (status = 404, description = "No such view", body = ErrorBody),
              (status = 409, description = "A run is in progress", body = ErrorBody)))]
/// Start a batch run. With `?wait=true` the answer comes when the run has ended and
/// serving already answers from its result.
pub async fn start_run(
    State(state): State<AppState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<impl IntoResponse, ServingError> {
    crate::params::once(&params, |_| false)?;
    let params: HashMap<String, String> = params.into_iter().collect();
    let wait = match params.get("wait").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ServingError::bad(
                "wait",
                format!("expected true or false, got `{other}`"),
            ));
        }
    };
    let kind = match params.get("kind") {
        None => RunKind::Full,
        Some(k) => RunKind::parse(k).ok_or_else(|| {
            ServingError::bad("kind", format!("expected full or incremental, got `{k}`"))
        })?,
    };
    for k in params.keys() {
        if !matches!(k.as_str(), "wait" | "kind" | "view" | "access_token") {
            return Err(ServingError::bad(
                k,
                "unknown parameter; use wait, kind or view",
            ));
        }
    }
    let only = match params.get("view") {
        None => None,
        Some(v) if state.merger.pipeline().view(v).is_some() => Some(vec![v.clone()]),
        Some(v) => return Err(ServingError::UnknownView(v.clone())),
    };
    let progress = Arc::new(|_: &str, _: u64, _: u64| {});
    let (id, run) = state.batch.try_start_views(kind, only, progress)?;
    let merger = state.merger.clone();
    let task = state.requests.spawn(async move {
        let record = run.await;
        if record.is_ok()
            && let Err(e) = merger.refresh().await
        {
            tracing::error!(error = %e, "could not load the new batch views");
        }
        record
    });
    if wait {
        let record = task
            .await
            .map_err(|e| ServingError::Server(format!("batch run task: {e}")))?;
        let record = match record {
            Ok(r) => r,
            Err(_) => state
                .batch
                .run_record(&id)
                .ok_or(ServingError::UnknownRun(id))?,
        };
        return Ok((StatusCode::OK, Json(record)));
    }
    let record = state
        .batch
        .run_record(&id)
        .ok_or(ServingError::UnknownRun(id))?;
    Ok((StatusCode::ACCEPTED, Json(record)))
}

/// `POST /api/v1/batch/maintenance`: compact, checkpoint and vacuum every table now.
#[utoipa::path(post, path = "/api/v1/batch/maintenance", tag = "batch",
    responses((status = 200, description = "What was done to each table: files compacted, written, vacuumed", body = Object)))]
pub async fn maintain(State(state): State<AppState>) -> Result<Json<Value>, ServingError> {
    let tables = state.batch.maintain().await?;
    Ok(Json(json!({ "tables": tables })))
}
