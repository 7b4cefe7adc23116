//! Log retention (`log.retention-hours`, `log.retention-mb`): the embedded log would
//! otherwise grow until the disk is full.
//!
//! A record may go only when nothing can need it again: the archiver has committed it
//! to the master table (its offset is below the partition's archived position, read
//! from the table's `txn` actions), and it lies below the oldest batch cutoff of the
//! stream's views (a restarted speed layer rebuilds from that cutoff). Among those,
//! records older than `retention-hours` go; above `retention-mb` on disk, all of
//! them. When the log is over its size and nothing is safe to remove (the archiver or
//! the batch runs are behind), the report says so; nothing unarchived is ever removed.

use std::sync::Arc;

use serde::Serialize;
use tributary_core::log::EventLog;
use tributary_core::pipeline::Pipeline;
use tributary_core::storage::Storage;
use tributary_core::time::now_micros;

use crate::archiver::{archived_positions, open_master};
use crate::error::BatchError;
use crate::views;

/// What the last pass did, for status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionReport {
    /// Bytes the log file occupies (redb reuses freed pages; the file does not shrink).
    pub disk_bytes: Option<u64>,
    /// Log records removed by the last pass.
    pub removed_records: u64,
    /// Over `retention-mb` with nothing safe to remove: the archiver or the batch runs
    /// are behind, and the log keeps growing until they catch up.
    pub over_size_and_blocked: bool,
    /// Why nothing could be removed, when that is the case.
    pub waiting_for: Vec<String>,
}

/// One retention pass over every partition of every stream.
pub async fn enforce(
    pipeline: &Pipeline,
    storage: &Storage,
    log: &Arc<dyn EventLog>,
    retention_hours: u64,
    retention_mb: u64,
) -> Result<RetentionReport, BatchError> {
    let disk_bytes = log.disk_bytes();
    let over_size = retention_mb > 0 && disk_bytes.is_some_and(|b| b > retention_mb * 1024 * 1024);
    let ingested_before = if over_size {
        i64::MAX
    } else if retention_hours == 0 {
        return Ok(RetentionReport {
            disk_bytes,
            ..Default::default()
        });
    } else {
        now_micros().saturating_sub((retention_hours as i64).saturating_mul(3_600_000_000))
    };
    let mut report = RetentionReport {
        disk_bytes,
        ..Default::default()
    };
    for stream in &pipeline.streams {
        let mut cutoff = i64::MAX;
        for v in pipeline.views_of(&stream.name) {
            match views::load_cutoff(storage, &v).await? {
                Some(c) => cutoff = cutoff.min(c),
                None => {
                    cutoff = i64::MIN;
                    report
                        .waiting_for
                        .push(format!("a first batch run of view `{}`", v.name));
                }
            }
        }
        if cutoff == i64::MIN {
            continue;
        }
        let master = open_master(storage, &stream.name).await?;
        let archived = archived_positions(master.as_ref(), stream).await?;
        for (p, position) in archived.iter().enumerate() {
            let p = p as u32;
            let below_cutoff = if cutoff == i64::MAX {
                *position
            } else {
                log.offset_for_ingest_ts(&stream.name, p, cutoff)
                    .await
                    .map_err(|e| BatchError::Log(stream.name.clone(), e))?
            };
            let safe = (*position).min(below_cutoff);
            report.removed_records += log
                .truncate(&stream.name, p, safe, ingested_before)
                .await
                .map_err(|e| BatchError::Log(stream.name.clone(), e))?;
        }
    }
    report.over_size_and_blocked = over_size && report.removed_records == 0;
    Ok(report)
}

/// Run a retention pass every ten seconds until shutdown (a pass reads a few Delta
/// logs); a failed pass is logged and tried again at the next, never fatal.
pub async fn run(
    batch: Arc<crate::Batch>,
    hours: u64,
    mb: u64,
    shutdown: tributary_core::shutdown::Shutdown,
) -> Result<(), BatchError> {
    let every = std::time::Duration::from_secs(10);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = batch.enforce_retention(hours, mb).await {
            tracing::warn!(error = %e, "log retention pass failed");
        }
    }
}
