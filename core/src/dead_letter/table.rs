//! The dead-letter Delta table: reading it whole, rewriting it, committing letters.

use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Int64Type};
use deltalake::datafusion::prelude::col;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;

use super::{CHECKPOINT_EVERY, DeadLetterSink, StoredLetter, dl_err, schema};
use crate::error::CoreError;

impl DeadLetterSink {
    /// Every dead letter of `stream`, oldest first. The caller holds [`Self::lock`].
    pub async fn read_all(&self, stream: &str) -> Result<Vec<StoredLetter>, CoreError> {
        let table = crate::delta::open(self.storage.dead_letter_table(stream))
            .await
            .map_err(|e| dl_err(stream, e))?;
        if table.version().is_none() {
            return Ok(Vec::new());
        }
        let ctx = crate::cloud::session_context();
        table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| dl_err(stream, e))?;
        let provider = table
            .table_provider()
            .await
            .map_err(|e| dl_err(stream, e))?;
        let batches = ctx
            .read_table(provider)
            .map_err(|e| dl_err(stream, e))?
            .sort(vec![col("received_at").sort(true, false)])
            .map_err(|e| dl_err(stream, e))?
            .collect()
            .await
            .map_err(|e| dl_err(stream, e))?;
        let mut out = Vec::new();
        for b in &batches {
            // Parquet may hand strings back as views; read them as the table wrote them.
            let column = |name: &str, to: &DataType| -> Result<ArrayRef, CoreError> {
                let c = b
                    .column_by_name(name)
                    .ok_or_else(|| dl_err(stream, format!("column `{name}` missing")))?;
                cast(c, to).map_err(|e| dl_err(stream, e))
            };
            let ts = column("received_at", &DataType::Int64)?;
            let ts = ts.as_primitive::<Int64Type>();
            let source = column("source", &DataType::Utf8)?;
            let source = source.as_string::<i32>();
            let index = column("index", &DataType::Int64)?;
            let index = index.as_primitive::<Int64Type>();
            // Tables written before quarantine existed have no partition column.
            let partition = column("partition", &DataType::Int64).ok();
            let partition = partition.as_ref().map(|p| p.as_primitive::<Int64Type>());
            let field = column("field", &DataType::Utf8)?;
            let field = field.as_string::<i32>();
            let reason = column("reason", &DataType::Utf8)?;
            let reason = reason.as_string::<i32>();
            let raw = column("raw", &DataType::Utf8)?;
            let raw = raw.as_string::<i32>();
            for i in 0..b.num_rows() {
                out.push(StoredLetter {
                    received_at: ts.value(i),
                    source: source.value(i).to_string(),
                    index: index.is_valid(i).then(|| index.value(i)),
                    partition: partition.and_then(|p| p.is_valid(i).then(|| p.value(i))),
                    field: field.is_valid(i).then(|| field.value(i).to_string()),
                    reason: reason.value(i).to_string(),
                    raw: raw.value(i).to_string(),
                });
            }
        }
        Ok(out)
    }

    /// Replace the table's rows by `letters` in one commit (earlier versions stay
    /// readable by time travel). The caller holds [`Self::lock`] and passes its guard.
    pub async fn rewrite(
        &self,
        stream: &str,
        letters: &[StoredLetter],
        table: &mut Option<deltalake::DeltaTable>,
    ) -> Result<(), CoreError> {
        self.commit_with(stream, letters, SaveMode::Overwrite, table, None)
            .await
    }

    /// Commit `letters` to the table held in `cached` (opened on first use, brought up
    /// to date incrementally, checkpointed every [`CHECKPOINT_EVERY`] versions), with
    /// `txn` as the commit's application transaction when given.
    pub(super) async fn commit_with(
        &self,
        stream: &str,
        letters: &[StoredLetter],
        mode: SaveMode,
        cached: &mut Option<deltalake::DeltaTable>,
        txn: Option<(&str, i64)>,
    ) -> Result<(), CoreError> {
        let table = self.fresh_table(stream, cached.take()).await?;
        *cached = Some(self.write_to(stream, letters, mode, table, txn).await?);
        Ok(())
    }

    /// [`Self::commit_with`] on a `table` the caller has just brought up to date.
    pub(super) async fn write_to(
        &self,
        stream: &str,
        letters: &[StoredLetter],
        mode: SaveMode,
        table: deltalake::DeltaTable,
        txn: Option<(&str, i64)>,
    ) -> Result<deltalake::DeltaTable, CoreError> {
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        letters.iter().map(|l| l.received_at),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from_iter_values(
                    letters.iter().map(|l| l.source.as_str()),
                )),
                Arc::new(Int64Array::from_iter(letters.iter().map(|l| l.index))),
                Arc::new(StringArray::from_iter(
                    letters.iter().map(|l| l.field.as_deref()),
                )),
                Arc::new(StringArray::from_iter_values(
                    letters.iter().map(|l| l.reason.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    letters.iter().map(|l| l.raw.as_str()),
                )),
                Arc::new(Int64Array::from_iter(letters.iter().map(|l| l.partition))),
            ],
        )
        .map_err(|e| dl_err(stream, e))?;
        let mut props = CommitProperties::default();
        if let Some((app_id, version)) = txn {
            props = props.with_application_transaction(Transaction::new(app_id, version));
        }
        let write = table
            .write(vec![batch])
            .with_save_mode(mode)
            .with_commit_properties(props);
        // A table from before the partition column gains it (nullable, no rewrite).
        let write = match mode {
            SaveMode::Append => write.with_schema_mode(SchemaMode::Merge),
            _ => write.with_schema_mode(SchemaMode::Overwrite),
        };
        let table = write.await.map_err(|e| dl_err(stream, e))?;
        // A checkpoint now and then keeps opening the table (readers, a restart) cheap.
        if table
            .version()
            .is_some_and(|v| v > 0 && v % CHECKPOINT_EVERY == 0)
            && let Err(e) = deltalake::checkpoints::create_checkpoint(&table, None).await
        {
            tracing::warn!(stream, error = %e, "could not checkpoint the dead-letter table");
        }
        Ok(table)
    }

    /// The table as of now: `cached` brought up to date (another process may have
    /// committed meanwhile), or opened.
    async fn fresh_table(
        &self,
        stream: &str,
        cached: Option<deltalake::DeltaTable>,
    ) -> Result<deltalake::DeltaTable, CoreError> {
        // A table that had no log when opened is opened again (it may have one now).
        if let Some(mut t) = cached.filter(|t| t.version().is_some())
            && t.update_incremental(None).await.is_ok()
        {
            return Ok(t);
        }
        crate::delta::open(self.storage.dead_letter_table(stream))
            .await
            .map_err(|e| dl_err(stream, e))
    }

    /// The version the application transaction `app_id` last committed to the table,
    /// bringing `cached` up to date on the way.
    pub(super) async fn committed_version(
        &self,
        stream: &str,
        app_id: &str,
        cached: &mut Option<deltalake::DeltaTable>,
    ) -> Result<Option<i64>, CoreError> {
        let table = self.fresh_table(stream, cached.take()).await?;
        let version = match table.version() {
            None => None,
            Some(_) => table
                .snapshot()
                .map_err(|e| dl_err(stream, e))?
                .transaction_version(table.log_store().as_ref(), app_id)
                .await
                .map_err(|e| dl_err(stream, e))?,
        };
        *cached = Some(table);
        Ok(version)
    }
}
