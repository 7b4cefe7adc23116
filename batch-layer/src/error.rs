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
    /// Errors of storage or the log, which may pass; a view, schema or input error will
    /// not, and a retry would only repeat it.
    pub fn is_transient(&self) -> bool {
        matches!(self, BatchError::Delta { .. } | BatchError::Log(..))
    }

    pub fn delta(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        BatchError::Delta {
            what: what.into(),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_storage_and_log_errors_are_retried() {
        assert!(BatchError::delta("master table of `s`", "connection reset").is_transient());
        assert!(
            BatchError::Log("s".into(), CoreError::LogUnavailable("down".into())).is_transient()
        );
        assert!(!BatchError::View("v".into(), "bad plan".into()).is_transient());
        assert!(!BatchError::RunInProgress.is_transient());
    }
}
