//! What every handler shares.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tributary_batch::Batch;
use tributary_core::dead_letter::DeadLetterSink;
use tributary_core::ingest_handle::IngestHandle;
use tributary_core::log::EventLog;

use crate::feeds::LiveFeeds;
use crate::merge::Merger;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The merged answer: batch views, the speed source and each view's final plan.
    pub merger: Arc<Merger>,
    /// The batch layer's run coordinator (runs started by the API, history, lag).
    pub batch: Arc<Batch>,
    /// Each role's name and whether it is up.
    pub roles: Arc<Vec<(String, Arc<AtomicBool>)>>,
    /// Long-lived responses (live streams) end when this fires, so that a graceful
    /// shutdown does not wait on connected dashboards.
    pub shutdown: tributary_core::shutdown::Shutdown,
    /// Limits of the SQL endpoint.
    pub sql: tributary_core::config::SqlConfig,
    /// Ingest, when it runs in this process (its counters feed status and metrics; it
    /// replays dead letters).
    pub ingest: Option<Arc<dyn IngestHandle>>,
    /// This process's dead-letter sink, when it writes dead letters: its spool is
    /// flushed before a listing, so a listing shows every letter already answered.
    pub dead_letters: Option<DeadLetterSink>,
    /// Live push checks for changes this often.
    pub live_interval_ms: u64,
    /// The event log (recent-event samples, lag).
    pub log: Arc<dyn EventLog>,
    /// Live clients (at most `http.max-live-clients`) and the feeds they share (one
    /// computation per change per view and query).
    pub live_feeds: Arc<LiveFeeds>,
    /// Tasks requests start (batch runs, live streams), so that shutdown waits for them
    /// (or says it left some) instead of dropping them unseen.
    pub requests: tributary_core::shutdown::TaskSet,
    /// Runtime changes to views and each view's state.
    pub views: Arc<crate::lifecycle::ViewManager>,
    /// The sinks this process delivers (empty when it runs none).
    pub sinks: crate::sinks::SinkStatuses,
}
