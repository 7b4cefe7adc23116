//! Live push: `GET /api/v1/views/{view}/live` streams the view's answer as server-sent
//! events whenever it changes, checked at most every `http.live-interval-ms` (changes in
//! between coalesce into one message). Clients of the same view and parameters share
//! one feed ([`LiveFeeds`]): the answer is computed and serialised once per change for
//! all of them, however many there are (at most `http.max-live-clients`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::watch;

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
    let stream = async_stream(move |tx| async move {
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
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// What live clients of one (view, query) receive.
#[derive(Debug)]
pub enum Frame {
    /// The answer, serialised once for every client.
    View(String),
    Error(String),
}

/// The live feeds running, one per (view, query) with clients. Each is a task that
/// computes the answer every `http.live-interval-ms` and publishes it when its rows
/// changed; it ends when its last client has gone.
pub struct LiveFeeds {
    feeds: std::sync::Mutex<HashMap<String, watch::Receiver<Option<Arc<Frame>>>>>,
    /// Answers computed, over all feeds (status shows it beside the client count).
    pub computations: std::sync::atomic::AtomicU64,
    /// One permit per live client, view or status; none left: 503.
    permits: Arc<tokio::sync::Semaphore>,
    max_clients: usize,
}

impl LiveFeeds {
    pub fn new(max_clients: usize) -> Self {
        LiveFeeds {
            feeds: Default::default(),
            computations: Default::default(),
            permits: Arc::new(tokio::sync::Semaphore::new(max_clients)),
            max_clients,
        }
    }

    /// Live clients connected now.
    pub fn clients(&self) -> usize {
        self.max_clients
            .saturating_sub(self.permits.available_permits())
    }

    /// A receiver of the feed `key`, started with `start` if it is not running.
    fn subscribe<S, F, Fut>(
        self: &Arc<Self>,
        key: String,
        start: S,
    ) -> watch::Receiver<Option<Arc<Frame>>>
    where
        S: FnOnce() -> F,
        F: FnOnce(watch::Sender<Option<Arc<Frame>>>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut feeds = self.feeds.lock().expect("live feeds lock");
        if let Some(rx) = feeds.get(&key) {
            let mut rx = rx.clone();
            rx.mark_changed();
            return rx;
        }
        let (tx, rx) = watch::channel(None);
        feeds.insert(key.clone(), rx.clone());
        let work = start()(tx);
        let this = self.clone();
        tokio::spawn(async move {
            work.await;
            this.feeds.lock().expect("live feeds lock").remove(&key);
        });
        rx
    }

    /// How many feeds are running.
    pub fn running(&self) -> usize {
        self.feeds.lock().expect("live feeds lock").len()
    }

    /// Whether the feed of `tx` has no client left (the map's own receiver aside).
    /// Checked under the map's lock, so no client can subscribe in between.
    fn abandoned(&self, tx: &watch::Sender<Option<Arc<Frame>>>) -> bool {
        let _feeds = self.feeds.lock().expect("live feeds lock");
        tx.receiver_count() <= 1
    }
}

/// One feed: the answer of `q` over `view`, published whenever its rows change.
async fn feed(
    feeds: Arc<LiveFeeds>,
    merger: Arc<crate::merge::Merger>,
    view: String,
    q: crate::merge::ViewQuery,
    interval: Duration,
    tx: watch::Sender<Option<Arc<Frame>>>,
) {
    let mut last_rows = None;
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        if feeds.abandoned(&tx) {
            return;
        }
        feeds
            .computations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let frame = match merger.query(&view, &q).await {
            Ok(answer) => {
                let rows = serde_json::to_string(&answer.rows).unwrap_or_default();
                if last_rows.as_ref() == Some(&rows) {
                    continue;
                }
                last_rows = Some(rows);
                Frame::View(serde_json::to_string(&answer).unwrap_or_default())
            }
            Err(e) => Frame::Error(e.to_string()),
        };
        tx.send_replace(Some(Arc::new(frame)));
    }
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
    state
        .live_feeds
        .permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
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
