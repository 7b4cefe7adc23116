//! The speed layer's internal HTTP endpoint, for a serving layer in another process.
//! States travel as Arrow IPC; the rest as headers and JSON.

use std::collections::HashMap;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tributary_core::CoreError;

use crate::SpeedLayer;
use crate::source::{SpeedSource, to_ipc};

/// Response header: the view's newest event time (microseconds), absent when none.
pub const MAX_EVENT_TS: &str = "x-tributary-max-event-ts";
/// Response header: the newest `_ingest_ts` processed from the view's stream.
pub const INGEST_POSITION: &str = "x-tributary-ingest-position";
/// Response header: how many segments the states came from.
pub const SEGMENTS: &str = "x-tributary-segments";
/// Response header: what the states cover ([`crate::Coverage`] as JSON).
pub const COVERAGE: &str = "x-tributary-coverage";
/// Response header of a refusal (409): the cutoff the speed layer released below.
pub const RELEASED_CUTOFF: &str = "x-tributary-released-cutoff";
/// Response header: the states' generation (absent while the process is rebuilding).
/// Asked again with `known=` that generation, the process leaves the states out while
/// they are unchanged.
pub const GENERATION: &str = "x-tributary-generation";
/// Response header: the catalog revision of the view the states are of.
pub const REVISION: &str = "x-tributary-revision";

/// `GET /internal/v1/views/{view}/states?cutoff=T[&known=G]`, `POST …/release?cutoff=T`,
/// `GET /internal/v1/stats`.
pub fn router(layer: SpeedLayer) -> Router {
    Router::new()
        .route("/internal/v1/views/{view}/states", get(states))
        .route("/internal/v1/views/{view}/release", post(release))
        .route("/internal/v1/stats", get(stats))
        .with_state(layer)
}

/// The endpoint's refusals, mapped to HTTP in one place.
enum Refusal {
    BadCutoff,
    BadKnown,
    UnknownView(String),
    /// The asker's batch cutoff is older than what was released (it must reload).
    Stale {
        message: String,
        released: i64,
    },
    Internal(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut released_below = None;
        let (status, message) = match self {
            Refusal::BadCutoff => (
                StatusCode::BAD_REQUEST,
                "query parameter `cutoff`: expected microseconds since the epoch".to_string(),
            ),
            Refusal::BadKnown => (
                StatusCode::BAD_REQUEST,
                "query parameter `known`: expected a generation this endpoint gave".to_string(),
            ),
            Refusal::UnknownView(v) => (StatusCode::NOT_FOUND, format!("unknown view `{v}`")),
            Refusal::Stale { message, released } => {
                released_below = Some(released);
                (StatusCode::CONFLICT, message)
            }
            Refusal::Internal(e) => (StatusCode::INTERNAL_SERVER_ERROR, e),
        };
        let mut resp = (status, axum::Json(json!({ "error": message }))).into_response();
        if let Some(released) = released_below {
            resp.headers_mut().insert(RELEASED_CUTOFF, released.into());
        }
        resp
    }
}

fn cutoff(params: &HashMap<String, String>) -> Result<i64, Refusal> {
    match params.get("cutoff").map(|c| c.parse::<i64>()) {
        None => Ok(i64::MIN),
        Some(Ok(c)) => Ok(c),
        Some(Err(_)) => Err(Refusal::BadCutoff),
    }
}

async fn states(
    State(layer): State<SpeedLayer>,
    Path(view): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let cutoff = cutoff(&params)?;
    let store = layer
        .store
        .view(&view)
        .ok_or_else(|| Refusal::UnknownView(view.clone()))?;
    let schema = store.view.partial_schema.clone();
    let known = match params.get("known").map(|k| k.parse::<u64>()) {
        None => None,
        Some(Ok(k)) => Some(layer.local_generation(k)),
        Some(Err(_)) => return Err(Refusal::BadKnown),
    };
    let snap = SpeedSource::snapshot(&layer, &view, cutoff, known)
        .await
        .map_err(|e| match e {
            CoreError::StaleCutoff { released, .. } => Refusal::Stale {
                message: e.to_string(),
                released,
            },
            e => Refusal::Internal(e.to_string()),
        })?;
    let coverage = serde_json::to_string(&snap.coverage.first().cloned().unwrap_or_default())
        .map_err(|e| Refusal::Internal(e.to_string()))?;
    let body = to_ipc(&schema, &snap.states).map_err(|e| Refusal::Internal(e.to_string()))?;
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        "application/vnd.apache.arrow.stream"
            .parse()
            .expect("static"),
    );
    if let Some(t) = snap.max_event_ts {
        h.insert(MAX_EVENT_TS, t.into());
    }
    if let Some(t) = snap.ingest_position {
        h.insert(INGEST_POSITION, t.into());
    }
    h.insert(SEGMENTS, snap.segments.into());
    h.insert(REVISION, snap.revision.into());
    if let Some(g) = snap.generation {
        h.insert(GENERATION, layer.published_generation(g).into());
    }
    h.insert(
        COVERAGE,
        coverage
            .parse()
            .map_err(|_| Refusal::Internal("coverage header".into()))?,
    );
    Ok(resp)
}

async fn release(
    State(layer): State<SpeedLayer>,
    Path(view): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<StatusCode, Refusal> {
    let cutoff = cutoff(&params)?;
    if layer.store.view(&view).is_none() {
        return Err(Refusal::UnknownView(view));
    }
    SpeedSource::release(&layer, &view, cutoff)
        .await
        .map_err(|e| Refusal::Internal(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn stats(State(layer): State<SpeedLayer>) -> Response {
    axum::Json(json!(layer.stats())).into_response()
}
