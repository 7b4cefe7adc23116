//! Scheduled batch runs: every view recomputed at the times of a cron expression.
//! A run still going when the next one is due makes the next one wait its turn
//! (runs never overlap); serving picks the result up through `Batch::subscribe`.

use std::sync::Arc;

use chrono::Utc;
use tributary_core::config::Schedule;
use tributary_core::shutdown::Shutdown;

use crate::error::BatchError;
use crate::recompute::Batch;
use crate::run::RunKind;

/// Run incremental recomputes of every view on `schedule` until `shutdown`.
pub async fn run(
    batch: Arc<Batch>,
    schedule: Schedule,
    shutdown: Shutdown,
) -> Result<(), BatchError> {
    run_views(batch, None, schedule, shutdown).await
}

/// Incremental runs of `views` (`None`: every view) at the times of `schedule`.
pub async fn run_views(
    batch: Arc<Batch>,
    views: Option<Vec<String>>,
    schedule: Schedule,
    shutdown: Shutdown,
) -> Result<(), BatchError> {
    every(&schedule, "batch-schedule", &shutdown, || async {
        // Scheduled runs only add what arrived since the last one; a view whose
        // definition changed is recomputed in full by the run itself.
        let progress = Arc::new(|_: &str, _: u64, _: u64| {});
        match batch.try_start_views(RunKind::Incremental, views.clone(), progress) {
            Ok((id, run)) => match run.await {
                Ok(r) => {
                    tracing::info!(run = %id, cutoff = ?r.cutoff, rows_in = r.rows_in, "scheduled batch run done")
                }
                Err(e) => tracing::warn!(run = %id, error = %e, "scheduled batch run failed"),
            },
            Err(e) => tracing::info!(error = %e, "scheduled batch run skipped"),
        }
    })
    .await
}

/// Maintain every table at the times of `schedule` (see [`crate::maintenance`]).
pub async fn maintenance(
    batch: Arc<Batch>,
    schedule: Schedule,
    shutdown: Shutdown,
) -> Result<(), BatchError> {
    every(&schedule, "batch-maintenance", &shutdown, || async {
        // A failure (a conflicting commit, a storage hiccup) waits for the next time.
        if let Err(e) = batch.maintain().await {
            tracing::warn!(error = %e, "scheduled table maintenance failed");
        }
    })
    .await
}

/// Run `job` at each time of `schedule` until shutdown; a job still running when the
/// next time comes makes that time wait.
async fn every<F, Fut>(
    schedule: &Schedule,
    task: &str,
    shutdown: &Shutdown,
    mut job: F,
) -> Result<(), BatchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let now = Utc::now();
        let next = schedule
            .find_next_occurrence(&now, false)
            .map_err(|e| BatchError::Task(task.into(), e.to_string()))?;
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        job().await;
    }
}
