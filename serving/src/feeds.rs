//! The live feeds shared by live clients: one task per (view, query) with clients,
//! computing the answer every `http.live-interval-ms` and publishing it when its rows
//! changed, and the permits that cap live clients at `http.max-live-clients`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tributary_core::shutdown::TaskSet;

/// What live clients of one (view, query) receive.
#[derive(Debug)]
pub enum Frame {
    /// The answer, serialised once for every client.
    View(String),
    /// The answer could not be computed: the error's message.
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
    /// Feed and stream tasks, waited for at shutdown.
    tasks: TaskSet,
}

impl LiveFeeds {
    /// Feeds for at most `max_clients` live clients, their tasks in `tasks`.
    pub fn new(max_clients: usize, tasks: TaskSet) -> Self {
        LiveFeeds {
            tasks,
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
    pub(crate) fn subscribe<S, F, Fut>(
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
        self.tasks.spawn(async move {
            work.await;
            this.feeds.lock().expect("live feeds lock").remove(&key);
        });
        rx
    }

    /// A live client's place, if one is free.
    pub fn permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
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
pub(crate) async fn feed(
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
