//! Table maintenance: OPTIMIZE (bin-packing small files into files near
//! `batch.target-file-mb`), a checkpoint, and VACUUM of files no version younger than
//! `batch.retention-hours` refers to, for every master, dead-letter and batch-view table.
//! Runs on `batch.maintenance-schedule` (cron, UTC) and on demand
//! (`POST /api/v1/batch/maintenance`), never at the same time as a batch run.
//!
//! Compaction rewrites data files without changing rows (`dataChange = false`); the
//! archiver's `txn` positions live in the log, not in the files, so exactly-once
//! archiving is unaffected. Time travel reaches back as far as the retention: VACUUM
//! deletes the files of older versions.

use std::num::NonZeroU64;

use deltalake::DeltaTable;
use serde::Serialize;
use tributary_core::pipeline::Pipeline;
use tributary_core::storage::Storage;
use url::Url;

use crate::error::BatchError;

/// What maintenance does, from `[batch]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long removed files are kept before vacuum deletes them (time travel reaches this far).
    pub retention_hours: u64,
    /// The file size compaction aims at.
    pub target_file_bytes: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            retention_hours: 168,
            target_file_bytes: 128 * 1024 * 1024,
        }
    }
}

/// What maintenance did to one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// The table's location.
    pub table: String,
    /// Its version before maintenance.
    pub version_before: Option<i64>,
    /// Its version after.
    pub version_after: Option<i64>,
    /// Active files before.
    pub files_before: usize,
    /// Active files after.
    pub files_after: usize,
    /// Files compaction rewrote.
    pub files_compacted: u64,
    /// Files compaction wrote.
    pub files_written: u64,
    /// Files vacuum deleted.
    pub files_vacuumed: usize,
}

/// Maintain every table of the pipeline once.
pub async fn run_once(
    storage: &Storage,
    pipeline: &Pipeline,
    settings: Settings,
) -> Result<Vec<TableReport>, BatchError> {
    let mut tables = Vec::new();
    for s in &pipeline.streams {
        tables.push((format!("master/{}", s.name), storage.master_table(&s.name)));
        tables.push((
            format!("dead_letters/{}", s.name),
            storage.dead_letter_table(&s.name),
        ));
    }
    for v in &pipeline.views {
        tables.push((
            format!("views/{}", v.name),
            storage.batch_view_table(&v.name),
        ));
    }
    let mut reports = Vec::new();
    for (name, url) in tables {
        if let Some(r) = maintain(&name, url, settings).await? {
            tracing::info!(
                table = %r.table,
                compacted = r.files_compacted,
                written = r.files_written,
                vacuumed = r.files_vacuumed,
                "table maintained"
            );
            reports.push(r);
        }
    }
    Ok(reports)
}

fn file_count(table: &DeltaTable) -> usize {
    table
        .snapshot()
        .map(|s| s.log_data().num_files())
        .unwrap_or(0)
}

async fn maintain(
    name: &str,
    url: Url,
    settings: Settings,
) -> Result<Option<TableReport>, BatchError> {
    let err = |e: deltalake::DeltaTableError| BatchError::delta(format!("maintaining {name}"), e);
    let table = tributary_core::delta::open(url).await.map_err(err)?;
    let Some(before) = table.version() else {
        return Ok(None);
    };
    let files_before = file_count(&table);
    let target = NonZeroU64::new(settings.target_file_bytes.max(1)).expect("at least 1");
    let (table, optimized) = table
        .optimize()
        .with_target_size(target)
        .with_writer_properties(crate::archiver::table_file_properties())
        .await
        .map_err(err)?;
    // A checkpoint after compaction lets readers skip replaying the JSON log.
    deltalake::checkpoints::create_checkpoint(&table, None)
        .await
        .map_err(err)?;
    let retention = chrono::Duration::hours(settings.retention_hours as i64);
    let (table, vacuumed) = table
        .vacuum()
        .with_retention_period(retention)
        // A retention below Delta's 7-day default is the operator's explicit choice.
        .with_enforce_retention_duration(false)
        .await
        .map_err(err)?;
    Ok(Some(TableReport {
        table: name.to_string(),
        version_before: Some(before as i64),
        version_after: table.version().map(|v| v as i64),
        files_before,
        files_after: file_count(&table),
        files_compacted: optimized.num_files_removed,
        files_written: optimized.num_files_added,
        files_vacuumed: vacuumed.files_deleted.len(),
    }))
}
