//! Runtime changes to views (`admin` scope): create, replace, pause, resume, drop; and
//! each view's state (`read` scope). The work is in [`crate::lifecycle`].

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use tributary_core::catalog::Lifecycle;

use crate::error::{Body, ErrorBody, ServingError};
use crate::lifecycle::{Definition, ViewStatus};
use crate::state::AppState;

/// A new definition for an existing view.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replacement {
    /// The new SQL.
    pub sql: String,
    /// The new allowed lateness.
    #[serde(default)]
    pub allowed_lateness_ms: u64,
    /// The new schedule of its own incremental runs (none: no schedule of its own).
    #[serde(default)]
    pub schedule: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/views", tag = "views", request_body = Definition,
    responses((status = 201, description = "Created; backfilling", body = ViewStatus),
              (status = 400, description = "The definition is refused, with why", body = ErrorBody),
              (status = 409, description = "A view of that name exists", body = ErrorBody)))]
/// Create a view at runtime: checked as at start-up, then backfilled from the master
/// table; it answers once exact.
pub async fn create_view(
    State(state): State<AppState>,
    Body(def): Body<Definition>,
) -> Result<(StatusCode, Json<ViewStatus>), ServingError> {
    let s = state.views.create(def, false).await?;
    Ok((StatusCode::CREATED, Json(s)))
}

#[utoipa::path(put, path = "/api/v1/views/{view}", tag = "views", request_body = Replacement,
    params(("view" = String, Path, description = "View name")),
    responses((status = 200, description = "Replaced; backfilling", body = ViewStatus),
              (status = 400, description = "The definition is refused, with why", body = ErrorBody),
              (status = 404, description = "No such view", body = ErrorBody)))]
/// Replace a view's definition: its states are recomputed.
pub async fn replace_view(
    State(state): State<AppState>,
    Path(view): Path<String>,
    Body(r): Body<Replacement>,
) -> Result<Json<ViewStatus>, ServingError> {
    let def = Definition {
        name: view,
        sql: r.sql,
        allowed_lateness_ms: r.allowed_lateness_ms,
        schedule: r.schedule,
    };
    Ok(Json(state.views.create(def, true).await?))
}

#[utoipa::path(delete, path = "/api/v1/views/{view}", tag = "views",
    params(("view" = String, Path, description = "View name")),
    responses((status = 204, description = "Dropped: its states and batch table are gone"),
              (status = 404, description = "No such view", body = ErrorBody)))]
/// Drop a view: its speed states and its batch table are removed.
pub async fn drop_view(
    State(state): State<AppState>,
    Path(view): Path<String>,
) -> Result<StatusCode, ServingError> {
    state.views.stop(&view, Lifecycle::Dropped).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/views/{view}/pause", tag = "views",
    params(("view" = String, Path, description = "View name")),
    responses((status = 200, description = "Paused", body = ViewStatus),
              (status = 404, description = "No such view", body = ErrorBody),
              (status = 409, description = "Paused already", body = ErrorBody)))]
/// Pause a view: no layer computes it until it is resumed.
pub async fn pause_view(
    State(state): State<AppState>,
    Path(view): Path<String>,
) -> Result<Json<ViewStatus>, ServingError> {
    state.views.stop(&view, Lifecycle::Paused).await?;
    state
        .views
        .state(&view)
        .map(Json)
        .ok_or(ServingError::UnknownView(view))
}

#[utoipa::path(post, path = "/api/v1/views/{view}/resume", tag = "views",
    params(("view" = String, Path, description = "View name")),
    responses((status = 200, description = "Resumed; backfilling", body = ViewStatus),
              (status = 404, description = "No such view", body = ErrorBody),
              (status = 409, description = "Not paused", body = ErrorBody)))]
/// Resume a paused view: backfilled again from the master table.
pub async fn resume_view(
    State(state): State<AppState>,
    Path(view): Path<String>,
) -> Result<Json<ViewStatus>, ServingError> {
    Ok(Json(state.views.resume(&view).await?))
}

#[utoipa::path(get, path = "/api/v1/views/{view}/status", tag = "views",
    params(("view" = String, Path, description = "View name")),
    responses((status = 200, description = "The view's state and backfill progress", body = ViewStatus),
              (status = 404, description = "No such view", body = ErrorBody)))]
/// A view's state: backfilling (with progress), running, paused or failed (with why).
pub async fn view_status(
    State(state): State<AppState>,
    Path(view): Path<String>,
) -> Result<Json<ViewStatus>, ServingError> {
    state
        .views
        .state(&view)
        .map(Json)
        .ok_or(ServingError::UnknownView(view))
}
