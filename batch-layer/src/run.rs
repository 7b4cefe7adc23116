//! What a batch run is, as callers and the run history see it: its kind, its record
//! (status, cutoff, counts, progress) and the progress callback.

use serde::Serialize;

/// A full run recomputes every view from the whole master table; an incremental one
/// merges the states of the events since each view's last cutoff into its states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Recompute every view from the whole master table.
    Full,
    /// Merge the events since each view's last cutoff into its states.
    Incremental,
}

impl RunKind {
    /// `full` or `incremental`.
    pub fn name(self) -> &'static str {
        match self {
            RunKind::Full => "full",
            RunKind::Incremental => "incremental",
        }
    }

    /// The kind a name says (`full`, `incremental`).
    pub fn parse(s: &str) -> Option<RunKind> {
        match s {
            "full" => Some(RunKind::Full),
            "incremental" => Some(RunKind::Incremental),
            _ => None,
        }
    }
}

/// Progress of a run, reported as it goes (for progress bars and the API).
pub trait Progress: Send + Sync {
    /// The run reached `message`, `done` of `total` steps into it.
    fn stage(&self, message: &str, done: u64, total: u64);
}

impl<F: Fn(&str, u64, u64) + Send + Sync> Progress for F {
    fn stage(&self, message: &str, done: u64, total: u64) {
        self(message, done, total)
    }
}

/// Where a run is.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Still going.
    Running,
    /// Ended with every view's states committed.
    Succeeded,
    /// Ended with an error; every view keeps its previous states.
    Failed,
}

/// One batch run, as the run history shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// The run's id, as the API and the run history name it.
    pub id: String,
    /// `full` or `incremental`.
    pub kind: String,
    /// The views it computes.
    pub views: Vec<String>,
    /// Where it is.
    pub status: RunStatus,
    /// The cutoff it computes up to (RFC 3339), once chosen.
    pub cutoff: Option<String>,
    /// The same in microseconds since the epoch.
    pub cutoff_micros: Option<i64>,
    /// Events the run read from the master table.
    pub rows_in: u64,
    /// State rows it wrote (an incremental run: those of the window days it replaced).
    pub rows_out: u64,
    /// Data files it wrote to the batch-view tables.
    #[serde(default)]
    pub files: u64,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// How long it took, once ended.
    pub duration_ms: Option<u64>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Where a running run is; the last stage reached once it has ended.
    #[serde(default)]
    pub progress: Option<RunProgress>,
    /// How many times it ran: transient storage errors are retried with backoff.
    #[serde(default = "one")]
    pub attempts: u32,
    /// Where its partial plans ran: `local` or `ballista`.
    #[serde(default = "local")]
    pub engine: String,
    /// On Ballista: its jobs, the tasks each executor ran, where the time went, and
    /// whether the run fell back to this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::ballista::Usage>,
}

fn local() -> String {
    "local".into()
}

fn one() -> u32 {
    1
}

impl RunRecord {
    /// The record of a run that starts now.
    pub(crate) fn started(id: &str, kind: RunKind, views: Vec<String>, engine: &str) -> Self {
        RunRecord {
            id: id.to_string(),
            kind: kind.name().into(),
            views,
            status: RunStatus::Running,
            cutoff: None,
            cutoff_micros: None,
            rows_in: 0,
            rows_out: 0,
            files: 0,
            started_at: tributary_core::time::rfc3339(tributary_core::time::now_micros()),
            duration_ms: None,
            error: None,
            progress: None,
            attempts: 1,
            engine: engine.into(),
            cluster: None,
        }
    }
}

/// A run's current stage, out of `total`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RunProgress {
    /// What it is doing.
    pub stage: String,
    /// Steps done.
    pub done: u64,
    /// Steps in all.
    pub total: u64,
}
