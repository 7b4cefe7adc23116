//! Operations endpoints: `GET /api/v1/status` (the pipeline's health in one answer),
//! `GET /metrics` (the same figures for Prometheus) and `GET /ready` (every role up and
//! the speed layer caught up with the log).
//!
//! Figures are read when asked from where they live (ingest counters, the speed layer's
//! stats, the batch run history, the loaded batch views) into a fresh registry per
//! scrape, so there is no second copy of any counter to keep in step.

use std::sync::atomic::Ordering;

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

use crate::api::AppState;
use crate::error::ServingError;

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
    let speed = state
        .merger
        .speed()
        .stats()
        .await
        .map_err(|e| ServingError::Server(e.to_string()))?;
    let now = now_micros();
    let mut streams = serde_json::Map::new();
    for s in &state.merger.pipeline().streams {
        let ingest = state
            .ingest
            .as_ref()
            .and_then(|i| i.counters(&s.name))
            .map(|c| {
                json!({
                    "accepted": c.accepted.load(Ordering::Relaxed),
                    "rejected": c.rejected.load(Ordering::Relaxed),
                    "dead_letter_failures": c.dead_letter_failures.load(Ordering::Relaxed),
                })
            });
        // Letters answered as stored that wait in this process's spool for Delta.
        let spooled = match &state.dead_letters {
            Some(sink) => match sink.spooled(&s.name).await {
                Ok(n) => json!(n),
                Err(e) => json!({ "error": e.to_string() }),
            },
            None => Value::Null,
        };
        // The archiver's lag reads the master table's log; a failure is shown, not fatal.
        let (archiver_lag, archiver_by_partition) = match state.batch.archiver_lag(s).await {
            Ok(by) => (json!(by.iter().sum::<u64>()), json!(by)),
            Err(e) => (json!({ "error": e.to_string() }), Value::Null),
        };
        streams.insert(
            s.name.clone(),
            json!({
                "ingest": ingest,
                "dead_letters_spooled": spooled,
                "speed": speed.streams.get(&s.name),
                "archiver_lag": archiver_lag,
                "archiver_lag_by_partition": archiver_by_partition,
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
        "speed": { "recovery_ms": speed.recovery_ms, "restored_from_snapshot": speed.restored_from_snapshot },
        "batch": { "running": running, "last_run": last },
        "log": { "retention": state.batch.retention() },
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
    let speed = state
        .merger
        .speed()
        .stats()
        .await
        .map_err(|e| ServingError::Server(e.to_string()))?;
    let mut registry = Registry::with_prefix("tributary");
    let counter = |registry: &mut Registry, name: &str, help: &str| {
        let f = Family::<Labels, Counter>::default();
        registry.register(name, help, f.clone());
        f
    };
    let gauge = |registry: &mut Registry, name: &str, help: &str| {
        let f = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(name, help, f.clone());
        f
    };

    let accepted = counter(
        &mut registry,
        "ingest_accepted",
        "Events ingest accepted over HTTP",
    );
    let rejected = counter(
        &mut registry,
        "ingest_rejected",
        "Events ingest rejected (dead-lettered)",
    );
    for s in &state.merger.pipeline().streams {
        if let Some(c) = state.ingest.as_ref().and_then(|i| i.counters(&s.name)) {
            let l = label("stream", &s.name);
            accepted
                .get_or_create(&l)
                .inc_by(c.accepted.load(Ordering::Relaxed));
            rejected
                .get_or_create(&l)
                .inc_by(c.rejected.load(Ordering::Relaxed));
        }
    }

    let read = counter(
        &mut registry,
        "speed_events",
        "Log records the speed layer read",
    );
    let invalid = counter(
        &mut registry,
        "speed_invalid",
        "Invalid records in the log (dead-lettered by the archiver)",
    );
    let dups = counter(
        &mut registry,
        "speed_duplicates",
        "Records counted once under a dedup rule",
    );
    let lag = gauge(
        &mut registry,
        "speed_lag_records",
        "Records in the log the speed layer has not read",
    );
    let rate = gauge(
        &mut registry,
        "speed_events_per_second",
        "Records read per second",
    );
    let mb_events = gauge(
        &mut registry,
        "speed_micro_batch_events",
        "Records in the last micro-batch",
    );
    let mb_secs = gauge(
        &mut registry,
        "speed_micro_batch_seconds",
        "Duration of the last micro-batch",
    );
    for (name, s) in &speed.streams {
        let l = label("stream", name);
        read.get_or_create(&l).inc_by(s.events);
        invalid.get_or_create(&l).inc_by(s.invalid);
        dups.get_or_create(&l).inc_by(s.duplicates);
        lag.get_or_create(&l).set(s.lag as f64);
        rate.get_or_create(&l).set(s.events_per_second as f64);
        mb_events.get_or_create(&l).set(s.last_batch_events as f64);
        mb_secs
            .get_or_create(&l)
            .set(s.last_batch_micros as f64 / 1e6);
    }

    let bytes = gauge(
        &mut registry,
        "view_state_bytes",
        "Speed-layer state held for a view",
    );
    let rows = gauge(
        &mut registry,
        "view_state_rows",
        "Speed-layer state rows of a view",
    );
    let segments = gauge(
        &mut registry,
        "view_segments",
        "Speed-layer segments of a view",
    );
    let late = counter(
        &mut registry,
        "view_late_events",
        "Events that updated a window already complete",
    );
    let watermark = gauge(
        &mut registry,
        "view_watermark_seconds",
        "A view's watermark (Unix time)",
    );
    let cutoff = gauge(
        &mut registry,
        "view_cutoff_seconds",
        "A view's batch cutoff (Unix time)",
    );
    let cutoff_age = gauge(
        &mut registry,
        "view_cutoff_age_seconds",
        "Age of a view's batch cutoff",
    );
    let now = now_micros();
    for v in &speed.views {
        let l = label("view", &v.view);
        bytes.get_or_create(&l).set(v.state_bytes as f64);
        rows.get_or_create(&l).set(v.state_rows as f64);
        segments.get_or_create(&l).set(v.segments as f64);
        late.get_or_create(&l).inc_by(v.late_events);
        if let Some(w) = v.watermark {
            watermark.get_or_create(&l).set(w as f64 / 1e6);
        }
        if let Some(b) = state.merger.batch_view(&v.view).await {
            cutoff.get_or_create(&l).set(b.cutoff as f64 / 1e6);
            cutoff_age
                .get_or_create(&l)
                .set((now - b.cutoff).max(0) as f64 / 1e6);
        }
    }

    let runs = counter(&mut registry, "batch_runs", "Batch runs by outcome");
    let last_secs = gauge(
        &mut registry,
        "batch_last_run_seconds",
        "Duration of the last finished batch run",
    );
    let history = state.batch.history();
    for r in &history {
        let status = match r.status {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
        };
        runs.get_or_create(&label("status", status)).inc();
    }
    if let Some(ms) = history.iter().find_map(|r| r.duration_ms) {
        last_secs.get_or_create(&vec![]).set(ms as f64 / 1000.0);
    }
    let recovery = gauge(
        &mut registry,
        "speed_recovery_seconds",
        "Time the speed layer took to catch up after start",
    );
    if let Some(ms) = speed.recovery_ms {
        recovery.get_or_create(&vec![]).set(ms as f64 / 1000.0);
    }

    let mut text = String::new();
    encode(&mut text, &registry).map_err(|e| ServingError::Server(e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
