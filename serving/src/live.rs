//! Live push: `GET /api/v1/views/{view}/live` streams the view's answer as server-sent
//! events whenever it changes, checked at most every `http.live-interval-ms` (changes in
//! between coalesce into one message). Clients of the same view and parameters share
//! one feed ([`crate::feeds::LiveFeeds`]): the answer is computed and serialised once per change for
//! all of them, however many there are (at most `http.max-live-clients`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use crate::error::ServingError;
use crate::feeds::{Frame, feed};
use crate::params::parse_view_query;
use crate::state::AppState;
use tributary_core::shutdown::TaskSet;

#[utoipa::path(get, path = "/api/v1/views/{view}/live", tag = "views",
    params(("view" = String, Path, description = "View name"), crate::params::ViewParams),
    responses((status = 200, description = "Server-sent events: the answer on every change", content_type = "text/event-stream", body = String),
              (status = 400, description = "A malformed parameter, named", body = crate::error::ErrorBody),
              (status = 404, description = "No such view", body = crate::error::ErrorBody)))]
/// Server-sent events: the view's merged answer, again on every change.
pub async fn live_view(
    State(state): State<AppState>,
    Path(view): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Sse<axum::response::sse::KeepAliveStream<LiveStream>>, ServingError> {
    if let Some(v) = state.merger.pipeline().append_view(&view) {
        return live_append(&state, v, params).await;
    }
    let q = parse_view_query(&state.merger, &view, &params)?;
    if q.as_of.is_some() {
        // A past state never changes: there is nothing to push.
        return Err(ServingError::bad(
            "as_of",
            "time travel is for GET /api/v1/views/{view}, not its live stream",
        ));
    }
    let permit = live_permit(&state)?;
    // Clients asking the same question share one computation per change.
    let mut key: Vec<&(String, String)> =
        params.iter().filter(|(k, _)| k != "access_token").collect();
    key.sort();
    let key = format!("{view}?{key:?}");
    let mut frames = state.live_feeds.subscribe(key, || {
        let (feeds, merger) = (state.live_feeds.clone(), state.merger.clone());
        let interval = Duration::from_millis(state.live_interval_ms.max(1));
        move |tx: watch::Sender<Option<Arc<Frame>>>| feed(feeds, merger, view, q, interval, tx)
    });
    let shutdown = state.shutdown.clone();
    let stream = async_stream(&state.requests, move |tx| async move {
        let _permit = permit;
        loop {
            // A client that left is noticed here, not only at the next change.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                changed = frames.changed() => if changed.is_err() { return },
            }
            let Some(frame) = frames.borrow_and_update().clone() else {
                continue;
            };
            let event = match frame.as_ref() {
                Frame::View(data) => Event::default().event("view").data(data.as_str()),
                Frame::Error(e) => Event::default().event("error").data(e.as_str()),
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(stream.boxed()).keep_alive(KeepAlive::default()))
}

/// The events a live view stream sends.
pub type LiveStream = futures::stream::BoxStream<'static, Result<Event, Infallible>>;

/// An append view's answer as server-sent events: asked again every
/// `http.live-interval-ms` (its table changes when a pass commits), sent when it
/// changed.
async fn live_append(
    state: &AppState,
    view: Arc<tributary_core::view::append::AppendView>,
    params: Vec<(String, String)>,
) -> Result<Sse<axum::response::sse::KeepAliveStream<LiveStream>>, ServingError> {
    let storage = state.merger.storage().clone();
    // A refused parameter answers 400 before the stream starts.
    crate::append_views::answer(&storage, &view, &params).await?;
    let permit = live_permit(state)?;
    let interval = Duration::from_millis(state.live_interval_ms.max(1));
    let shutdown = state.shutdown.clone();
    let stream = async_stream(&state.requests, move |tx| async move {
        let _permit = permit;
        let mut last: Option<String> = None;
        loop {
            let event = match crate::append_views::answer(&storage, &view, &params).await {
                Ok(answer) => {
                    let data = serde_json::to_string(&answer).unwrap_or_default();
                    (last.as_ref() != Some(&data)).then(|| {
                        last = Some(data.clone());
                        Event::default().event("view").data(data)
                    })
                }
                Err(e) => Some(Event::default().event("error").data(e.to_string())),
            };
            if let Some(event) = event
                && tx.send(event).await.is_err()
            {
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    });
    Ok(Sse::new(stream.boxed()).keep_alive(KeepAlive::default()))
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
    let tasks = state.requests.clone();
    let stream = async_stream(&tasks, move |tx| async move {
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
    state.live_feeds.permit().ok_or_else(|| {
        ServingError::Busy("too many live clients (http.max-live-clients); retry later".into())
    })
}

/// A stream fed by a task; the task ends when the client goes away.
fn async_stream<F, Fut>(
    tasks: &TaskSet,
    f: F,
) -> impl Stream<Item = Result<Event, Infallible>> + use<F, Fut>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tasks.spawn(f(tx));
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
}
