//! The batch layer's error type.

use thiserror::Error;
use tributary_core::CoreError;

#[derive(Debug, Error)]
pub enum BatchError {
    #[error("{what}: {message}")]
    Delta { what: String, message: String },
    #[error("stream `{0}`: {1}")]
    Log(String, CoreError),
    #[error("view `{0}`: {1}")]
    View(String, String),
    #[error("dead letters: {0}")]
    DeadLetter(String),
    #[error("task `{0}` failed: {1}")]
    Task(String, String),
    #[error("stream `{stream}`: field `{field}` {reason}")]
    Schema {
        stream: String,
        field: String,
        reason: String,
    },
    #[error("backfill from `{from}`: {message}")]
    Backfill { from: String, message: String },
    #[error("a batch run is already in progress; wait for it to finish")]
    RunInProgress,
}

impl BatchError {
    pub fn delta(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        BatchError::Delta {
            what: what.into(),
            message: e.to_string(),
        }
    }
}
