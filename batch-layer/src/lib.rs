//! Tributary batch layer.
//!
//! Owns the system of record and the recomputed half of every view: the [`archiver`]
//! copies every event of the log into a Delta master table per stream, exactly once
//! (log positions commit with the data); [`recompute`] runs each view's compiled
//! partial plan over the master table below a provably complete cutoff T and
//! [`views`] stores the states, with T, in a Delta table per view.

#![warn(missing_docs)]

pub mod append;
pub mod archiver;
pub mod backfill;
pub mod ballista;
pub mod dedup;
pub mod engine;
pub mod error;
mod history;
mod isolate;
mod join;
mod lag;
pub mod maintenance;
mod read;
pub mod recompute;
pub mod retention;
pub mod run;
pub mod scan;
pub mod schedule;
mod view_run;
pub mod views;

use std::sync::Arc;

use tributary_core::config::BatchConfig;
use tributary_core::dead_letter::DeadLetterSink;
use tributary_core::log::EventLog;
use tributary_core::pipeline::Pipeline;
use tributary_core::shutdown::{Shutdown, Tasks};
use tributary_core::storage::Storage;

pub use error::BatchError;
pub use lag::{ArchiverLag, RetentionGap};
pub use recompute::Batch;
pub use run::{Progress, RunKind, RunProgress, RunRecord, RunStatus};

/// Run the archiver of every stream until shutdown.
pub async fn run(
    config: BatchConfig,
    pipeline: Pipeline,
    storage: Storage,
    log: Arc<dyn EventLog>,
    dead_letters: DeadLetterSink,
    shutdown: Shutdown,
) -> Result<(), BatchError> {
    // The archivers stop with the process, or with this layer when one of them fails;
    // the process-wide token is the supervisor's to cancel, so that it sees the failure
    // (cancelling it here would let it read the stop as a clean shutdown).
    let archivers = shutdown.child_token();
    let mut tasks = Tasks::new();
    for stream in pipeline.streams {
        tasks.spawn(
            format!("archiver:{}", stream.name),
            archiver::run_stream(
                config.clone(),
                stream,
                storage.clone(),
                log.clone(),
                dead_letters.clone(),
                archivers.clone(),
            ),
        );
    }
    if let Some((name, Err(e))) = tasks.first_exit(&shutdown).await {
        archivers.cancel();
        let _ = tasks.join(std::time::Duration::from_secs(10)).await;
        return Err(BatchError::Task(name, e));
    }
    let problems = tasks.join(std::time::Duration::from_secs(10)).await;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(BatchError::Task("archiver".into(), problems.join("; ")))
    }
}
