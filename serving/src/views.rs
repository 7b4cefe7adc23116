//! The view resource: `GET /api/v1/views` (definitions, schemas, cutoffs) and
//! `GET /api/v1/views/{view}` (the merged answer).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};
use tributary_core::time::rfc3339;

use crate::error::{ErrorBody, ServingError};
use crate::merge::ViewAnswer;
use crate::params::parse_view_query;
use crate::state::AppState;

#[utoipa::path(get, path = "/api/v1/views", tag = "views",
    responses((status = 200, description = "Every view: SQL, keys, window, values, schema, cutoff", body = Object)))]
/// Every view: its SQL, keys, window, values, schema and cutoff.
pub async fn list_views(State(state): State<AppState>) -> Json<Value> {
    let mut batches = HashMap::new();
    for v in &state.merger.pipeline().views {
        batches.insert(v.name.clone(), state.merger.batch_view(&v.name).await);
    }
    let views: Vec<Value> = state
        .merger
        .pipeline()
        .views
        .iter()
        .map(|v| {
            let batch = batches[&v.name].clone();
            let schema: Vec<Value> = v
                .output_schema
                .fields()
                .iter()
                .filter(|f| f.name() != tributary_core::view::SOURCE_COLUMN)
                .map(|f| {
                    let role = if v.keys.contains(f.name()) {
                        "key"
                    } else if &v.window == f.name() {
                        "window"
                    } else {
                        "value"
                    };
                    json!({"name": f.name(), "type": f.data_type().to_string(), "role": role})
                })
                .collect();
            json!({
                "name": v.name,
                "stream": v.stream,
                "sql": v.sql,
                "keys": v.keys,
                "window": v.window,
                "window_spec": {
                    "kind": v.window_spec.kind,
                    "size_ms": v.window_spec.size_us / 1000,
                    "slide_ms": v.window_spec.slide_us / 1000,
                },
                "allowed_lateness_ms": v.allowed_lateness_us / 1000,
                "values": v.values,
                "schema": schema,
                "cutoff": batch.as_ref().map(|b| rfc3339(b.cutoff)),
                "batch_version": batch.as_ref().map(|b| b.version),
                "state": state.views.state(&v.name).map_or("running".into(), |s| s.state),
            })
        })
        .collect();
    // Views the catalog holds that no layer computes now (paused, failed).
    let inactive = state.views.inactive();
    // Append-mode views: their columns and the stream's event time, if kept.
    let append: Vec<Value> = state
        .merger
        .pipeline()
        .append_views
        .iter()
        .map(|v| {
            let schema: Vec<Value> = v
                .schema
                .fields()
                .iter()
                .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
                .collect();
            json!({"name": v.name, "stream": v.stream, "sql": v.sql, "mode": "append",
                   "event_time": v.event_time, "schema": schema})
        })
        .collect();
    Json(json!({ "views": views, "inactive": inactive, "append": append }))
}

#[utoipa::path(get, path = "/api/v1/views/{view}", tag = "views",
    params(("view" = String, Path, description = "View name"), crate::params::ViewParams),
    responses((status = 200, description = "The merged answer", body = crate::merge::ViewAnswer),
              (status = 400, description = "A malformed parameter, named", body = ErrorBody),
              (status = 404, description = "No such view", body = ErrorBody)))]
/// A view's merged answer: batch and speed states combined, every event once.
pub async fn get_view(
    State(state): State<AppState>,
    Path(view): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<ViewAnswer>, ServingError> {
    if let Some(v) = state.merger.pipeline().append_view(&view) {
        let answer = crate::append_views::answer(state.merger.storage(), &v, &params).await?;
        return Ok(Json(answer));
    }
    let q = parse_view_query(&state.merger, &view, &params)?;
    Ok(Json(state.merger.query(&view, &q).await?))
}
