//! REST handlers: views, batch runs, health.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use tributary_batch::{Batch, RunKind, RunRecord};
use tributary_core::time::{parse_rfc3339, rfc3339};

use crate::error::{ErrorBody, ServingError};
use crate::merge::{Merger, ViewAnswer, ViewQuery};

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub merger: Arc<Merger>,
    pub batch: Arc<Batch>,
    /// Each role's name and whether it is up.
    pub roles: Arc<Vec<(String, Arc<AtomicBool>)>>,
    /// Long-lived responses (live streams) end when this fires, so that a graceful
    /// shutdown does not wait on connected dashboards.
    pub shutdown: tributary_core::shutdown::Shutdown,
    /// Limits of the SQL endpoint.
    pub sql: tributary_core::config::SqlConfig,
    /// Ingest, when it runs in this process (its counters feed status and metrics).
    pub ingest: Option<Arc<tributary_ingest::Ingest>>,
    /// This process's dead-letter sink, when it writes dead letters: its spool is
    /// flushed before a listing, so a listing shows every letter already answered.
    pub dead_letters: Option<tributary_core::dead_letter::DeadLetterSink>,
    /// Live push checks for changes this often.
    pub live_interval_ms: u64,
    /// The event log (recent-event samples, lag).
    pub log: Arc<dyn tributary_core::log::EventLog>,
    /// Live clients (at most `http.max-live-clients`) and the feeds they share (one
    /// computation per change per view and query).
    pub live_feeds: Arc<crate::live::LiveFeeds>,
}

#[utoipa::path(get, path = "/api/v1/views", tag = "views",
    responses((status = 200, description = "Every view: SQL, keys, window, values, schema, cutoff", body = Object)))]
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
            })
        })
        .collect();
    Json(json!({ "views": views }))
}

/// Parse a view query's parameters; refuse anything else by name.
///
/// `from`/`to` (RFC 3339) bound window starts; a key column filters by equality, or by
/// IN when repeated (`?device_type=pump&device_type=fan`); `order=col` or `order=-col`
/// (descending); `offset` and `limit` page; `top=N&by=col` is the N rows with the
/// largest `col`; `meta=false` leaves out `_source` and `complete`.
pub fn parse_view_query(
    merger: &Merger,
    view: &str,
    params: &[(String, String)],
) -> Result<ViewQuery, ServingError> {
    let v = merger
        .pipeline()
        .view(view)
        .ok_or_else(|| ServingError::UnknownView(view.to_string()))?;
    let columns: Vec<&str> = v
        .output_schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|n| *n != tributary_core::view::SOURCE_COLUMN)
        .collect();
    let count = |k: &str, val: &str| -> Result<usize, ServingError> {
        val.parse().map_err(|_| {
            ServingError::bad(k, format!("expected a non-negative integer, got `{val}`"))
        })
    };
    let column = |k: &str, name: &str| -> Result<String, ServingError> {
        if columns.contains(&name) {
            Ok(name.to_string())
        } else {
            Err(ServingError::bad(
                k,
                format!(
                    "`{name}` is not a column of `{view}` ({})",
                    columns.join(", ")
                ),
            ))
        }
    };
    let mut q = ViewQuery::default();
    let (mut top, mut by) = (None, None);
    let (mut as_of_version, mut as_of) = (None, None);
    for (k, val) in params {
        match k.as_str() {
            "from" | "to" => {
                let t = parse_rfc3339(val).ok_or_else(|| {
                    ServingError::bad(k, format!("expected an RFC 3339 timestamp, got `{val}`"))
                })?;
                if k == "from" {
                    q.from = Some(t);
                } else {
                    q.to = Some(t);
                }
            }
            "limit" => q.limit = Some(count(k, val)?),
            "offset" => q.offset = count(k, val)?,
            "top" => top = Some(count(k, val)?),
            "by" => by = Some(column(k, val)?),
            "order" => {
                let (name, desc) = match val.strip_prefix('-') {
                    Some(n) => (n, true),
                    None => (val.as_str(), false),
                };
                q.order = Some((column(k, name)?, desc));
            }
            "meta" => {
                q.meta = match val.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ServingError::bad(
                            k,
                            format!("expected true or false, got `{val}`"),
                        ));
                    }
                }
            }
            key if v.keys.iter().any(|x| x == key) => {
                match q.keys.iter_mut().find(|(n, _)| n == key) {
                    Some((_, values)) => values.push(val.clone()),
                    None => q.keys.push((key.to_string(), vec![val.clone()])),
                }
            }
            "as_of_version" => {
                as_of_version = Some(val.parse().map_err(|_| {
                    ServingError::bad(
                        k,
                        format!("expected a Delta version (a whole number), got `{val}`"),
                    )
                })?);
            }
            "as_of" => as_of = Some(val.as_str()),
            // A token for browsers that cannot send headers; checked by auth.
            "access_token" => {}
            other => {
                return Err(ServingError::bad(
                    other,
                    format!(
                        "unknown parameter; use from, to, order, offset, limit, top and by, meta, as_of_version or as_of, or a key column of `{view}` ({})",
                        if v.keys.is_empty() {
                            "none".to_string()
                        } else {
                            v.keys.join(", ")
                        }
                    ),
                ));
            }
        }
    }
    q.as_of = crate::sql::parse_as_of(as_of_version, as_of)?;
    match (top, by) {
        (Some(n), Some(col)) => {
            if q.order.is_some() || q.limit.is_some() {
                return Err(ServingError::bad(
                    "top",
                    "top already orders and limits: leave out order and limit",
                ));
            }
            q.order = Some((col, true));
            q.limit = Some(n);
        }
        (Some(_), None) => {
            return Err(ServingError::bad(
                "top",
                "needs `by`, the column to rank by",
            ));
        }
        (None, Some(_)) => return Err(ServingError::bad("by", "goes with `top`")),
        (None, None) => {}
    }
    Ok(q)
}

#[utoipa::path(get, path = "/api/v1/views/{view}", tag = "views",
    params(("view" = String, Path, description = "View name"), crate::openapi::ViewParams),
    responses((status = 200, description = "The merged answer", body = crate::merge::ViewAnswer),
              (status = 400, description = "A malformed parameter, named", body = ErrorBody),
              (status = 404, description = "No such view", body = ErrorBody)))]
pub async fn get_view(
    State(state): State<AppState>,
    Path(view): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<ViewAnswer>, ServingError> {
    let q = parse_view_query(&state.merger, &view, &params)?;
    Ok(Json(state.merger.query(&view, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/batch/runs", tag = "batch",
    responses((status = 200, description = "Run history, newest first", body = Object)))]
pub async fn list_runs(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "runs": state.batch.history() }))
}

#[utoipa::path(get, path = "/api/v1/batch/runs/{id}", tag = "batch",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "One run", body = Object),
              (status = 404, description = "No such run", body = ErrorBody)))]
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
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ServingError> {
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
    let task = tokio::spawn(async move {
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

#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Every role up", body = Object),
              (status = 503, description = "A role is down", body = Object)))]
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    health_of(&state.roles)
}

/// Each role, and 200 only when all of them are up.
pub fn health_of(roles: &[(String, Arc<AtomicBool>)]) -> impl IntoResponse + use<> {
    let states: serde_json::Map<String, Value> = roles
        .iter()
        .map(|(name, up)| {
            let s = if up.load(Ordering::Acquire) {
                "up"
            } else {
                "down"
            };
            (name.clone(), Value::String(s.into()))
        })
        .collect();
    let all_up = roles.iter().all(|(_, up)| up.load(Ordering::Acquire));
    let status = if all_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "status": if all_up { "ok" } else { "degraded" }, "roles": states })),
    )
}

#[utoipa::path(get, path = "/api/v1/speed/stats", tag = "operations",
    responses((status = 200, description = "Speed-layer progress per stream and view", body = Object)))]
pub async fn speed_stats(State(state): State<AppState>) -> Result<Json<Value>, ServingError> {
    let stats = state
        .merger
        .speed()
        .stats()
        .await
        .map_err(|source| ServingError::Query {
            view: "*".into(),
            source,
        })?;
    Ok(Json(json!(stats)))
}

#[utoipa::path(post, path = "/api/v1/sql", tag = "sql",
    request_body = crate::sql::SqlRequest,
    responses((status = 200, description = "Columns and rows (JSON), or an Arrow IPC stream", body = Object),
              (status = 400, description = "SQL that does not parse or plan, or a bad format", body = ErrorBody),
              (status = 403, description = "Not a read-only query", body = ErrorBody),
              (status = 408, description = "Past the time limit, cancelled", body = ErrorBody),
              (status = 422, description = "Over the memory limit", body = ErrorBody)))]
/// `POST /api/v1/sql` with `{"sql": "...", "format": "json" | "arrow"}`.
pub async fn post_sql(
    State(state): State<AppState>,
    Json(request): Json<crate::sql::SqlRequest>,
) -> Result<axum::response::Response, ServingError> {
    let arrow = match request.format.as_deref() {
        None | Some("json") => false,
        Some("arrow") => true,
        Some(other) => {
            return Err(ServingError::bad(
                "format",
                format!("expected `json` or `arrow`, got `{other}`"),
            ));
        }
    };
    let as_of = request.as_of()?;
    let cap = (!arrow).then_some(state.sql.max_rows);
    let result =
        crate::sql::run(&state.merger, &request.sql, &state.sql, as_of.as_ref(), cap).await?;
    if arrow {
        let bytes = tributary_speed::source::to_ipc(&result.schema, &result.batches)
            .map_err(|e| ServingError::Server(e.to_string()))?;
        return Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "application/vnd.apache.arrow.stream",
            )],
            bytes,
        )
            .into_response());
    }
    Ok(Json(crate::sql::to_json(&result, state.sql.max_rows)).into_response())
}

/// The `limit` of an endpoint that takes no other parameter (`access_token` aside).
pub fn limit_param(params: &[(String, String)], default: usize) -> Result<usize, ServingError> {
    let mut limit = default;
    for (k, v) in params {
        match k.as_str() {
            "limit" => {
                limit = v.parse().map_err(|_| {
                    ServingError::bad(k, format!("expected a non-negative integer, got `{v}`"))
                })?
            }
            "access_token" => {}
            other => return Err(ServingError::bad(other, "unknown parameter; use limit")),
        }
    }
    Ok(limit)
}

/// `GET /api/v1/streams/{stream}/dead-letters?limit=N`: rejected records, newest first,
/// with where they came from, the field at fault and the reason.
#[utoipa::path(get, path = "/api/v1/streams/{stream}/dead-letters", tag = "ingest",
    params(("stream" = String, Path, description = "Stream name"),
           ("limit" = Option<u64>, Query, description = "Most records to return (default 100, at most 10,000)")),
    responses((status = 200, description = "Dead letters, newest first, and how many there are", body = Object),
              (status = 400, description = "A malformed parameter, named", body = ErrorBody),
              (status = 404, description = "No such stream", body = ErrorBody)))]
pub async fn dead_letters(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ServingError> {
    if state.merger.pipeline().stream(&stream).is_none() {
        return Err(ServingError::UnknownStream(stream));
    }
    let limit = limit_param(&params, 100)?;
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

/// `POST /api/v1/batch/maintenance`: compact, checkpoint and vacuum every table now.
#[utoipa::path(post, path = "/api/v1/batch/maintenance", tag = "batch",
    responses((status = 200, description = "What was done to each table: files compacted, written, vacuumed", body = Object)))]
pub async fn maintain(State(state): State<AppState>) -> Result<Json<Value>, ServingError> {
    let tables = state.batch.maintain().await?;
    Ok(Json(json!({ "tables": tables })))
}
