//! Operations endpoints: `GET /api/v1/status` (the pipeline's health in one answer),
//! `GET /metrics` (the same figures for Prometheus) and `GET /ready` (every role up and
//! the speed layer caught up with the log).
//!
//! Figures are read when asked from where they live (ingest counters, the speed layer's
//! stats, the batch run history, the loaded batch views) into a fresh registry per
//! scrape, so there is no second copy of any counter to keep in step.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tributary_batch::RunStatus;
use tributary_core::time::{now_micros, rfc3339};

use crate::error::ServingError;
use crate::state::AppState;

type Labels = Vec<(String, String)>;

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

/// `GET /api/v1/status`.
#[utoipa::path(get, path = "/api/v1/status", tag = "operations",
    responses((status = 200, description = "Streams, views, speed layer and batch runs", body = Object)))]
pub async fn status(State(state): State<AppState>) -> Result<Json<Value>, ServingError> {
    status_value(&state).await.map(Json)
}

/// The status document (also pushed live by `/api/v1/status/live`).
pub async fn status_value(state: &AppState) -> Result<Value, ServingError> {
    let speed = speed_stats_of(state).await?;
    let now = now_micros();
    let mut streams = serde_json::Map::new();
    for s in &state.merger.pipeline().streams {
        let ingest = state.ingest.as_ref().and_then(|i| i.counters(&s.name));
        // Letters answered as stored that wait in this process's spool for Delta.
        let spooled = match &state.dead_letters {
            Some(sink) => match sink.spooled(&s.name).await {
                Ok(n) => json!(n),
                Err(e) => json!({ "error": e.to_string() }),
            },
            None => Value::Null,
        };
        // The archiver's lag reads the master table's log; a failure is shown, not fatal.
        // Records the log's retention removed before they were archived are lost: that
        // is shown here, beside the dead letter the archiver writes for them.
        let (archiver_lag, archiver_by_partition, behind_retention) =
            match state.batch.archiver_lag(s).await {
                Ok(lag) => (
                    json!(lag.by_partition.iter().sum::<u64>()),
                    json!(lag.by_partition),
                    json!(lag.behind_retention),
                ),
                Err(e) => (json!({ "error": e.to_string() }), Value::Null, Value::Null),
            };
        streams.insert(
            s.name.clone(),
            json!({
                "ingest": ingest,
                "dead_letters_spooled": spooled,
                "speed": speed.streams.get(&s.name),
                "archiver_lag": archiver_lag,
                "archiver_lag_by_partition": archiver_by_partition,
                "archiver_behind_retention": behind_retention,
            }),
        );
    }
    let mut views = Vec::new();
    for v in &state.merger.pipeline().views {
        let batch = state.merger.batch_view(&v.name).await;
        let stats = speed.views.iter().find(|s| s.view == v.name);
        views.push(json!({
            "view": v.name,
            "cutoff": batch.as_ref().map(|b| rfc3339(b.cutoff)),
            "cutoff_age_ms": batch.as_ref().map(|b| (now - b.cutoff).max(0) / 1000),
            "batch_version": batch.as_ref().map(|b| b.version),
            "watermark": stats.and_then(|s| s.watermark).map(rfc3339),
            "late_events": stats.map(|s| s.late_events),
            "state_bytes": stats.map(|s| s.state_bytes),
            "state_rows": stats.map(|s| s.state_rows),
            "segments": stats.map(|s| s.segments),
            // running, degraded (some records quarantined) or failed (none of its last
            // micro-batches' records could be processed); the others keep running.
            "state": stats.map(|s| s.state),
            "quarantined": stats.map(|s| s.quarantined),
            "last_error": stats.and_then(|s| s.last_error.clone()),
            // Its lifecycle (views made at runtime): backfilling with progress, or running.
            "lifecycle": state.views.state(&v.name),
        }));
    }
    let history = state.batch.history();
    let running: Vec<_> = history
        .iter()
        .filter(|r| r.status == RunStatus::Running)
        .collect();
    let last = history.iter().find(|r| r.status != RunStatus::Running);
    Ok(json!({
        "time": rfc3339(now),
        "roles": state.roles.iter().map(|(n, up)| (n.clone(), up.load(Ordering::Acquire))).collect::<std::collections::BTreeMap<_, _>>(),
        "streams": streams,
        "views": views,
        "speed": { "recovery_ms": speed.recovery_ms, "restored_from_snapshot": speed.restored_from_snapshot, "shards": speed.shards },
        "batch": { "running": running, "last_run": last },
        "log": { "retention": state.batch.retention() },
        "sinks": state.sinks.iter().map(|s| s.report()).collect::<Vec<_>>(),
        // Cataloged views no layer computes now (paused, failed), with why.
        "inactive_views": state.views.inactive(),
        "process": { "rss_bytes": crate::process::resident_bytes() },
        // Final plans run over merged states: requests between two changes share one.
        "serving": { "merges": state.merger.merges() },
        // Live (SSE) clients of views and status, and the shared view feeds serving them.
        "live": {
            "clients": state.live_feeds.clients(),
            "feeds": state.live_feeds.running(),
            "computations": state.live_feeds.computations.load(Ordering::Relaxed),
        },
    }))
}

/// `GET /ready`: 200 once every role is up and the speed layer has caught up with the
/// log (so answers are complete), else 503 saying what it waits for.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "Ready", body = Object),
              (status = 503, description = "What it waits for", body = Object)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let mut waiting: Vec<String> = state
        .roles
        .iter()
        .filter(|(_, up)| !up.load(Ordering::Acquire))
        .map(|(n, _)| format!("role `{n}`"))
        .collect();
    match state.merger.speed().stats().await {
        Ok(s) if s.recovery_ms.is_some() => {}
        Ok(_) => waiting.push("the speed layer to catch up with the log".into()),
        Err(e) => waiting.push(format!("the speed layer ({e})")),
    }
    if waiting.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true }))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "waiting_for": waiting })),
        )
            .into_response()
    }
}

/// `GET /metrics` in the Prometheus (OpenMetrics) text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ServingError> {
    let speed = speed_stats_of(&state).await?;
    let mut sheet = Sheet::new();
    for s in &state.merger.pipeline().streams {
        if let Some(c) = state.ingest.as_ref().and_then(|i| i.counters(&s.name)) {
            let l = label("stream", &s.name);
            sheet.count("ingest_accepted", &l, c.accepted);
            sheet.count("ingest_rejected", &l, c.rejected);
        }
    }
    for (name, s) in &speed.streams {
        let l = label("stream", name);
        sheet.count("speed_events", &l, s.events);
        sheet.count("speed_invalid", &l, s.invalid);
        sheet.count("speed_duplicates", &l, s.duplicates);
        sheet.set("speed_lag_records", &l, s.lag as f64);
        sheet.set("speed_events_per_second", &l, s.events_per_second as f64);
        sheet.set("speed_micro_batch_events", &l, s.last_batch_events as f64);
        sheet.set(
            "speed_micro_batch_seconds",
            &l,
            s.last_batch_micros as f64 / 1e6,
        );
    }
    let now = now_micros();
    for v in &speed.views {
        let l = label("view", &v.view);
        sheet.set("view_state_bytes", &l, v.state_bytes as f64);
        sheet.set("view_state_rows", &l, v.state_rows as f64);
        sheet.set("view_segments", &l, v.segments as f64);
        sheet.count("view_late_events", &l, v.late_events);
        if let Some(w) = v.watermark {
            sheet.set("view_watermark_seconds", &l, w as f64 / 1e6);
        }
        if let Some(b) = state.merger.batch_view(&v.view).await {
            sheet.set("view_cutoff_seconds", &l, b.cutoff as f64 / 1e6);
            let age = (now - b.cutoff).max(0) as f64 / 1e6;
            sheet.set("view_cutoff_age_seconds", &l, age);
        }
    }
    let history = state.batch.history();
    for r in &history {
        let status = match r.status {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
        };
        sheet.count("batch_runs", &label("status", status), 1);
    }
    if let Some(ms) = history.iter().find_map(|r| r.duration_ms) {
        sheet.set("batch_last_run_seconds", &vec![], ms as f64 / 1000.0);
    }
    if let Some(ms) = speed.recovery_ms {
        sheet.set("speed_recovery_seconds", &vec![], ms as f64 / 1000.0);
    }
    if let Some(rss) = crate::process::resident_bytes() {
        sheet.set("process_resident_memory_bytes", &vec![], rss as f64);
    }
    for s in state.sinks.iter().map(|s| s.report()) {
        let l = label("sink", &s.name);
        sheet.count("sink_rows", &l, s.rows);
        sheet.count("sink_deliveries", &l, s.deliveries);
        sheet.count("sink_failures", &l, s.failures);
        sheet.set("sink_pending_rows", &l, s.pending_rows as f64);
        sheet.set("sink_lag_seconds", &l, s.lag_ms as f64 / 1000.0);
    }
    let text = sheet.encode()?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Whether a metric only grows (a counter) or is read as it is now (a gauge).
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// `GET /api/v1/sinks`: each sink this process delivers, its progress and lag.
#[utoipa::path(get, path = "/api/v1/sinks", tag = "operations",
    responses((status = 200, description = "Sinks", body = Vec<crate::sinks::SinkReport>)))]
pub async fn sinks(State(state): State<AppState>) -> Json<Vec<crate::sinks::SinkReport>> {
    Json(state.sinks.iter().map(|s| s.report()).collect())
}

/// Every metric `/metrics` exposes: name (after the `tributary_` prefix), kind, help.
const METRICS: &[(&str, Kind, &str)] = &[
    ("sink_rows", Kind::Counter, "Rows a sink delivered"),
    (
        "sink_deliveries",
        Kind::Counter,
        "Deliveries a sink had acknowledged",
    ),
    (
        "sink_failures",
        Kind::Counter,
        "Failed delivery attempts of a sink",
    ),
    (
        "sink_pending_rows",
        Kind::Gauge,
        "Rows a sink planned and has not delivered",
    ),
    (
        "sink_lag_seconds",
        Kind::Gauge,
        "Age of a sink's oldest undelivered row",
    ),
    (
        "ingest_accepted",
        Kind::Counter,
        "Events ingest accepted over HTTP",
    ),
    (
        "ingest_rejected",
        Kind::Counter,
        "Events ingest rejected (dead-lettered)",
    ),
    (
        "speed_events",
        Kind::Counter,
        "Log records the speed layer read",
    ),
    (
        "speed_invalid",
        Kind::Counter,
        "Invalid records in the log (dead-lettered by the archiver)",
    ),
    (
        "speed_duplicates",
        Kind::Counter,
        "Records counted once under a dedup rule",
    ),
    (
        "speed_lag_records",
        Kind::Gauge,
        "Records in the log the speed layer has not read",
    ),
    (
        "speed_events_per_second",
        Kind::Gauge,
        "Records read per second",
    ),
    (
        "speed_micro_batch_events",
        Kind::Gauge,
        "Records in the last micro-batch",
    ),
    (
        "speed_micro_batch_seconds",
        Kind::Gauge,
        "Duration of the last micro-batch",
    ),
    (
        "view_state_bytes",
        Kind::Gauge,
        "Speed-layer state held for a view",
    ),
    (
        "view_state_rows",
        Kind::Gauge,
        "Speed-layer state rows of a view",
    ),
    (
        "view_segments",
        Kind::Gauge,
        "Speed-layer segments of a view",
    ),
    (
        "view_late_events",
        Kind::Counter,
        "Events that updated a window already complete",
    ),
    (
        "view_watermark_seconds",
        Kind::Gauge,
        "A view's watermark (Unix time)",
    ),
    (
        "view_cutoff_seconds",
        Kind::Gauge,
        "A view's batch cutoff (Unix time)",
    ),
    (
        "view_cutoff_age_seconds",
        Kind::Gauge,
        "Age of a view's batch cutoff",
    ),
    ("batch_runs", Kind::Counter, "Batch runs by outcome"),
    (
        "batch_last_run_seconds",
        Kind::Gauge,
        "Duration of the last finished batch run",
    ),
    (
        "speed_recovery_seconds",
        Kind::Gauge,
        "Time the speed layer took to catch up after start",
    ),
    (
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory of this process (VmRSS)",
    ),
];

type GaugeF64 = Gauge<f64, std::sync::atomic::AtomicU64>;

/// A fresh registry with every metric of [`METRICS`] registered, filled by name.
struct Sheet {
    registry: Registry,
    counters: HashMap<&'static str, Family<Labels, Counter>>,
    gauges: HashMap<&'static str, Family<Labels, GaugeF64>>,
}

impl Sheet {
    fn new() -> Self {
        let mut sheet = Sheet {
            registry: Registry::with_prefix("tributary"),
            counters: HashMap::new(),
            gauges: HashMap::new(),
        };
        for &(name, kind, help) in METRICS {
            match kind {
                Kind::Counter => {
                    let f = Family::<Labels, Counter>::default();
                    sheet.registry.register(name, help, f.clone());
                    sheet.counters.insert(name, f);
                }
                Kind::Gauge => {
                    let f = Family::<Labels, GaugeF64>::default();
                    sheet.registry.register(name, help, f.clone());
                    sheet.gauges.insert(name, f);
                }
            }
        }
        sheet
    }

    /// Add `by` to counter `name`; a name missing from [`METRICS`] is a bug the tests catch.
    fn count(&mut self, name: &str, labels: &Labels, by: u64) {
        debug_assert!(
            self.counters.contains_key(name),
            "counter {name} not in METRICS"
        );
        if let Some(f) = self.counters.get(name) {
            f.get_or_create(labels).inc_by(by);
        }
    }

    fn set(&mut self, name: &str, labels: &Labels, value: f64) {
        debug_assert!(
            self.gauges.contains_key(name),
            "gauge {name} not in METRICS"
        );
        if let Some(f) = self.gauges.get(name) {
            f.get_or_create(labels).set(value);
        }
    }

    fn encode(&self) -> Result<String, ServingError> {
        let mut text = String::new();
        encode(&mut text, &self.registry)
            .map_err(|e| ServingError::Server(format!("encoding metrics: {e}")))?;
        Ok(text)
    }
}

#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Every role up", body = Object),
              (status = 503, description = "A role is down", body = Object)))]
/// Whether every role of this process is up.
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
/// The speed layer's progress per stream and view.
pub async fn speed_stats(State(state): State<AppState>) -> Result<Json<Value>, ServingError> {
    let stats = speed_stats_of(&state).await?;
    Ok(Json(json!(stats)))
}

/// The speed layer's stats, as every operations endpoint reads them.
async fn speed_stats_of(state: &AppState) -> Result<tributary_speed::SpeedStats, ServingError> {
    state
        .merger
        .speed()
        .stats()
        .await
        .map_err(|source| ServingError::Query {
            view: "*".into(),
            source,
        })
}
