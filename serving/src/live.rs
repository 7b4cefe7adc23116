//! Live push: `GET /api/v1/views/{view}/live` streams the view's answer as server-sent
//! events whenever it changes, checked at most every `http.live-interval-ms` (changes in
//! between coalesce into one message).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;

use crate::api::{AppState, parse_view_query};
use crate::error::ServingError;

#[utoipa::path(get, path = "/api/v1/views/{view}/live", tag = "views",
    params(("view" = String, Path, description = "View name"), crate::openapi::ViewParams),
    responses((status = 200, description = "Server-sent events: the answer on every change", content_type = "text/event-stream", body = String),
              (status = 400, description = "A malformed parameter, named", body = crate::error::ErrorBody),
              (status = 404, description = "No such view", body = crate::error::ErrorBody)))]
pub async fn live_view(
    State(state): State<AppState>,
    Path(view): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ServingError> {
    let q = parse_view_query(&state.merger, &view, &params)?;
    if q.as_of.is_some() {
        // A past state never changes: there is nothing to push.
        return Err(ServingError::bad(
            "as_of",
            "time travel is for GET /api/v1/views/{view}, not its live stream",
        ));
    }
    let permit = live_permit(&state)?;
    let merger = state.merger.clone();
    let shutdown = state.shutdown.clone();
    let interval = Duration::from_millis(state.live_interval_ms.max(1));
    let stream = async_stream(move |tx| async move {
        let _permit = permit;
        let mut last_rows = None;
        let mut ticker = tokio::time::interval(interval);
        loop {
            // A client that left is noticed here, not only at the next change: its
            // task must not keep querying the view.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = ticker.tick() => {}
            }
            let answer = match merger.query(&view, &q).await {
                Ok(a) => a,
                Err(e) => {
                    let _ = tx
                        .send(Event::default().event("error").data(e.to_string()))
                        .await;
                    continue;
                }
            };
            let rows = serde_json::to_string(&answer.rows).unwrap_or_default();
            if last_rows.as_ref() == Some(&rows) {
                continue;
            }
            last_rows = Some(rows);
            let data = serde_json::to_string(&answer).unwrap_or_default();
            if tx
                .send(Event::default().event("view").data(data))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// `GET /api/v1/status/live`: the status document as server-sent events, at most every
/// second, when it changes.
#[utoipa::path(get, path = "/api/v1/status/live", tag = "operations",
    responses((status = 200, description = "Server-sent events: the status document on every change", content_type = "text/event-stream", body = String)))]
pub async fn live_status(
    State(state): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ServingError> {
    let permit = live_permit(&state)?;
    let shutdown = state.shutdown.clone();
    let interval = Duration::from_millis(state.live_interval_ms.max(1000));
    let stream = async_stream(move |tx| async move {
        let _permit = permit;
        let mut ticker = tokio::time::interval(interval);
        loop {
            // A client that left is noticed here, not only at the next change: its
            // task must not keep querying the view.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = ticker.tick() => {}
            }
            let event = match crate::ops::status_value(&state).await {
                Ok(v) => Event::default().event("status").data(v.to_string()),
                Err(e) => Event::default().event("error").data(e.to_string()),
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// A live client's place, held for as long as its stream runs.
fn live_permit(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ServingError> {
    state.live_clients.clone().try_acquire_owned().map_err(|_| {
        ServingError::Busy("too many live clients (http.max-live-clients); retry later".into())
    })
}

/// A stream fed by a task; the task ends when the client goes away.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
}
