//! Dead letters: every rejected record, with its reason, in a Delta table per stream.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use deltalake::datafusion::prelude::{SessionContext, col};
use deltalake::protocol::SaveMode;
use tokio::sync::{Mutex, MutexGuard};
use tributary_core::storage::Storage;
use tributary_core::time::now_micros;

use crate::error::IngestError;

/// One rejected record.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Where it came from: `http`, `log` (consumed from the log), `backfill`.
    pub source: &'static str,
    /// Its index in the request or its log offset.
    pub index: Option<i64>,
    pub field: Option<String>,
    pub reason: String,
    pub raw: String,
}

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "received_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("source", DataType::Utf8, false),
        Field::new("index", DataType::Int64, true),
        Field::new("field", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
    ]))
}

/// Writes dead letters; one writer per stream at a time.
#[derive(Clone)]
pub struct DeadLetterSink {
    storage: Storage,
    locks: Arc<HashMap<String, Mutex<()>>>,
}

impl DeadLetterSink {
    pub fn new(storage: Storage, streams: impl IntoIterator<Item = String>) -> Self {
        let locks = streams.into_iter().map(|s| (s, Mutex::new(()))).collect();
        DeadLetterSink {
            storage,
            locks: Arc::new(locks),
        }
    }

    /// Held while a replay reads and rewrites the table, so no write slips between.
    pub async fn lock(&self, stream: &str) -> Result<MutexGuard<'_, ()>, IngestError> {
        let lock = self
            .locks
            .get(stream)
            .ok_or_else(|| IngestError::UnknownStream(stream.to_string()))?;
        Ok(lock.lock().await)
    }

    pub async fn write(&self, stream: &str, letters: Vec<DeadLetter>) -> Result<(), IngestError> {
        if letters.is_empty() {
            return Ok(());
        }
        let _guard = self.lock(stream).await?;
        let now = now_micros();
        let stored = letters
            .into_iter()
            .map(|l| StoredLetter {
                received_at: now,
                source: l.source.to_string(),
                index: l.index,
                field: l.field,
                reason: l.reason,
                raw: l.raw,
            })
            .collect::<Vec<_>>();
        self.commit(stream, &stored, SaveMode::Append).await
    }

    /// Every dead letter of `stream`, oldest first. The caller holds [`Self::lock`].
    pub async fn read_all(&self, stream: &str) -> Result<Vec<StoredLetter>, IngestError> {
        let table = crate::delta::open(self.storage.dead_letter_table(stream))
            .await
            .map_err(|e| dl_err(stream, e))?;
        if table.version().is_none() {
            return Ok(Vec::new());
        }
        let ctx = SessionContext::new();
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
            let column = |name: &str, to: &DataType| -> Result<ArrayRef, IngestError> {
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
                    field: field.is_valid(i).then(|| field.value(i).to_string()),
                    reason: reason.value(i).to_string(),
                    raw: raw.value(i).to_string(),
                });
            }
        }
        Ok(out)
    }

    /// Replace the table's rows by `letters` in one commit (earlier versions stay
    /// readable by time travel). The caller holds [`Self::lock`].
    pub async fn rewrite(&self, stream: &str, letters: &[StoredLetter]) -> Result<(), IngestError> {
        self.commit(stream, letters, SaveMode::Overwrite).await
    }

    async fn commit(
        &self,
        stream: &str,
        letters: &[StoredLetter],
        mode: SaveMode,
    ) -> Result<(), IngestError> {
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
            ],
        )
        .map_err(|e| dl_err(stream, e))?;
        let table = crate::delta::open(self.storage.dead_letter_table(stream))
            .await
            .map_err(|e| dl_err(stream, e))?;
        table
            .write(vec![batch])
            .with_save_mode(mode)
            .await
            .map_err(|e| dl_err(stream, e))?;
        Ok(())
    }
}

/// A dead letter as the table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLetter {
    /// Microseconds since the epoch.
    pub received_at: i64,
    pub source: String,
    pub index: Option<i64>,
    pub field: Option<String>,
    pub reason: String,
    pub raw: String,
}

fn dl_err(stream: &str, e: impl std::fmt::Display) -> IngestError {
    IngestError::DeadLetter {
        stream: stream.to_string(),
        message: e.to_string(),
    }
}
