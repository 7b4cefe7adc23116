//! The batch layer's error type.

use thiserror::Error;
use tributary_core::CoreError;

/// What can go wrong in the batch layer; [`BatchError::is_transient`] says which to retry.
#[derive(Debug, Error)]
pub enum BatchError {
    /// A Delta table (or its object store) failed; worth retrying.
    #[error("{what}: {source}")]
    Delta {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading a stream from the event log failed.
    #[error("stream `{0}`: {1}")]
    Log(String, #[source] CoreError),
    /// A view that cannot run as asked (no such view, states of another shape).
    #[error("view `{0}`: {1}")]
    View(String, String),
    /// A view's plan failed while running; transient when the cause is storage.
    #[error("view `{view}`: {source}")]
    Query {
        /// The view.
        view: String,
        /// The failure, as the core reports it.
        #[source]
        source: CoreError,
    },
    /// Dead letters could not be stored.
    #[error("dead letters: {0}")]
    DeadLetter(#[source] CoreError),
    /// A background task of the layer (named) ended with an error.
    #[error("task `{0}` failed: {1}")]
    Task(String, String),
    #[error("stream `{stream}`: field `{field}` {reason}")]
    /// The master table's schema does not fit the stream's.
    Schema {
        /// The stream.
        stream: String,
        /// The field at fault.
        field: String,
        /// What differs.
        reason: String,
    },
    #[error("backfill from `{from}`: {message}")]
    /// A backfill source could not be read.
    Backfill {
        /// The file or folder read from.
        from: String,
        /// What is wrong with it.
        message: String,
    },
    /// A plan submitted to the Ballista scheduler failed (the scheduler unreachable, a
    /// task failed more often than the scheduler retries it, or the plan cannot ship).
    #[error("view `{view}` on the Ballista scheduler at {scheduler}: {source}")]
    Ballista {
        /// The scheduler's address.
        scheduler: String,
        /// The view whose plan it was.
        view: String,
        /// What failed: the plan, the submission or the job.
        #[source]
        source: crate::ballista::JobError,
    },
    /// A Ballista scheduler or executor of this process could not start or stopped.
    #[error("Ballista {role}: {source}")]
    Cluster {
        /// `scheduler` or `executor`.
        role: &'static str,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("a batch run is already in progress; wait for it to finish")]
    /// A run was asked for while another one runs.
    RunInProgress,
}

impl BatchError {
    /// Errors of storage or the log, which may pass; a view, schema or input error will
    /// not, and a retry would only repeat it.
    pub fn is_transient(&self) -> bool {
        match self {
            BatchError::Delta { .. } | BatchError::Log(..) => true,
            BatchError::Query { source, .. } => is_storage_error(source),
            // A job that ran and failed (an executor lost with its outputs) may pass on
            // the executors left; the run writes nothing until every view succeeded.
            BatchError::Ballista { source, .. } => source.may_pass(),
            _ => false,
        }
    }

    /// A failure of `view`'s plan on the scheduler at `scheduler`.
    pub fn ballista(scheduler: &str, view: &str, source: crate::ballista::JobError) -> Self {
        BatchError::Ballista {
            scheduler: scheduler.to_string(),
            view: view.to_string(),
            source,
        }
    }

    /// A Delta failure while doing `what`.
    pub fn delta(
        what: impl Into<String>,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        BatchError::Delta {
            what: what.into(),
            source: e.into(),
        }
    }

    /// A view's plan failed while running (its cause kept, to tell storage from data).
    pub fn query(view: &str, e: impl Into<CoreError>) -> Self {
        BatchError::Query {
            view: view.to_string(),
            source: e.into(),
        }
    }
}

/// Whether a failed run failed on storage (worth retrying as it is) rather than on rows.
pub(crate) fn is_storage_error(e: &tributary_core::CoreError) -> bool {
    use datafusion::error::DataFusionError as D;
    fn storage(e: &D) -> bool {
        match e {
            D::ObjectStore(_) | D::IoError(_) | D::ResourcesExhausted(_) => true,
            D::Context(_, inner) => storage(inner),
            D::Shared(inner) => storage(inner),
            D::External(inner) => {
                inner.downcast_ref::<D>().is_some_and(storage)
                    || inner.downcast_ref::<std::io::Error>().is_some()
            }
            _ => false,
        }
    }
    use tributary_core::CoreError as C;
    match e {
        C::DataFusion(d) => storage(d),
        // What the view or its states are: a retry would only repeat it.
        C::Arrow(_)
        | C::View { .. }
        | C::Config { .. }
        | C::UnknownStream(_)
        | C::UnknownView(_)
        | C::StateShape(_) => false,
        // The log, tables, dead letters: outside this process, and may answer again.
        _ => true,
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
        let plan = datafusion::error::DataFusionError::Plan("no such column".into());
        assert!(!BatchError::query("v", plan).is_transient());
        // An object-store failure inside a plan is storage, and passes.
        let timeout = datafusion::error::DataFusionError::IoError(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "read timed out",
        ));
        assert!(BatchError::query("v", timeout).is_transient());
        assert!(!BatchError::RunInProgress.is_transient());
    }
}
