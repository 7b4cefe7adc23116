//! What the serving layer may ask of ingest when both run in one process: the
//! per-stream counters behind status and metrics, and the replay of dead letters.
//!
//! The trait lives here, not in the ingest crate, so that serving never depends on a
//! sibling layer: the binary hands serving an `Arc<dyn IngestHandle>`.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use serde::Serialize;

/// A boxed error that keeps its cause chain across the crate boundary.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Per-stream counters, updated by ingest as requests are answered.
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// Records accepted into the log.
    pub accepted: AtomicU64,
    /// Records refused (each a dead letter).
    pub rejected: AtomicU64,
    /// Rejected records whose dead letter could not be stored.
    pub dead_letter_failures: AtomicU64,
}

/// A point-in-time copy of [`StreamCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CounterValues {
    /// Records accepted into the log.
    pub accepted: u64,
    /// Records refused.
    pub rejected: u64,
    /// Refused records whose dead letter could not be stored.
    pub dead_letter_failures: u64,
}

impl StreamCounters {
    /// The counters now.
    pub fn values(&self) -> CounterValues {
        CounterValues {
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            dead_letter_failures: self.dead_letter_failures.load(Ordering::Relaxed),
        }
    }
}

/// What a dead-letter replay did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records that passed validation this time and are now in the log.
    pub replayed: usize,
    /// Records still refused; they stay in the dead-letter table.
    pub still_invalid: usize,
    /// The current reasons of (at most 20 of) the records still refused.
    pub reasons: Vec<String>,
}

/// Ingest as serving sees it.
#[async_trait]
pub trait IngestHandle: Send + Sync {
    /// The counters of `stream`, if ingest knows it.
    fn counters(&self, stream: &str) -> Option<CounterValues>;

    /// Validate every dead letter of `stream` again; append the ones that pass.
    async fn replay_dead_letters(&self, stream: &str) -> Result<ReplayReport, BoxError>;
}
