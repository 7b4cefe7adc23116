//! Append-mode views, materialised from the master table into a Delta table of their
//! own, exactly once: each pass reads the master table's events with `_ingest_ts` in
//! `[C₀, C)` (C₀ the cutoff of the table's last commit, C what the archiver has wholly
//! committed, under the stream's dedup rule), runs the view's SQL over them and appends
//! the rows in one commit whose `txn` action records C. A crash before the commit
//! leaves C₀, so the next pass reads the same range again; after it, C: no event is
//! written twice or skipped. Fresh to the archiver's flush (`batch.archive-flush-ms`).

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use tributary_core::shutdown::Shutdown;
use tributary_core::view::append::AppendView;

use crate::archiver::open_master;
use crate::engine::Engine;
use crate::error::BatchError;
use crate::read::{Columns, master_rows};
use crate::recompute::Batch;

/// The `txn` app id whose version is the cutoff the table holds every row below.
pub const CUTOFF_APP_ID: &str = "tributary-append-cutoff";

/// A pass that would write no row commits anyway once the cutoff has moved this far,
/// so that filtered-out events are not read again and again.
const EMPTY_COMMIT_AFTER_US: i64 = 60_000_000;

/// The table's cutoff: every event below it is in (`None` before the first commit).
pub async fn cutoff(table: &deltalake::DeltaTable) -> Result<Option<i64>, BatchError> {
    if table.version().is_none() {
        return Ok(None);
    }
    let what = || "append view table".to_string();
    table
        .snapshot()
        .map_err(|e| BatchError::delta(what(), e))?
        .transaction_version(table.log_store().as_ref(), CUTOFF_APP_ID)
        .await
        .map_err(|e| BatchError::delta(what(), e))
}

/// One pass over `view`: the rows written, or `None` when there was nothing to do.
pub async fn materialize_once(batch: &Batch, view: &AppendView) -> Result<Option<u64>, BatchError> {
    let storage = batch.storage();
    let what = || format!("append view `{}`", view.name);
    let table = tributary_core::delta::open(storage.append_view_table(&view.name))
        .await
        .map_err(|e| BatchError::delta(what(), e))?;
    let last = cutoff(&table).await?;
    let stream = batch
        .pipeline()
        .stream(&view.stream)
        .cloned()
        .ok_or_else(|| BatchError::View(view.name.clone(), "its stream is gone".into()))?;
    let now = batch.stream_cutoff(&stream).await?;
    if last.is_some_and(|l| l >= now) {
        return Ok(None);
    }
    let input: Vec<RecordBatch> = match open_master(storage, &stream.name).await? {
        None => Vec::new(),
        Some(master) => {
            let columns = Columns::of_stream(&stream);
            let rows = master_rows(
                &master,
                &stream,
                &view.name,
                columns,
                last,
                now,
                &Engine::Local,
            )
            .await?;
            match rows {
                None => Vec::new(),
                Some(df) => df
                    .collect()
                    .await
                    .map_err(|e| BatchError::query(&view.name, e))?,
            }
        }
    };
    let out = view
        .run(input, stream.view_schema())
        .await
        .map_err(|e| BatchError::View(view.name.clone(), e.to_string()))?;
    let written: u64 = out.iter().map(|b| b.num_rows() as u64).sum();
    let stale = last.is_none_or(|l| now - l >= EMPTY_COMMIT_AFTER_US);
    if written == 0 && !stale {
        return Ok(None);
    }
    let mut batches = out;
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(view.schema.clone()));
    }
    let props = CommitProperties::default()
        .with_application_transaction(Transaction::new(CUTOFF_APP_ID, now));
    table
        .write(batches)
        .with_save_mode(SaveMode::Append)
        .with_commit_properties(props)
        .await
        .map_err(|e| BatchError::delta(what(), e))?;
    Ok(Some(written))
}

/// Materialise `view` every `every` until shutdown; a failing pass is logged and tried
/// again, never ending the process.
pub async fn run(
    batch: Arc<Batch>,
    view: Arc<AppendView>,
    every: Duration,
    shutdown: Shutdown,
) -> Result<(), BatchError> {
    loop {
        match materialize_once(&batch, &view).await {
            Ok(Some(n)) => tracing::debug!(view = %view.name, rows = n, "append view committed"),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(view = %view.name, error = %e, "append view pass failed; trying again")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}
