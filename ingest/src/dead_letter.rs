//! Dead letters: every rejected record, with its reason, in a Delta table per stream.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::protocol::SaveMode;
use tokio::sync::Mutex;
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

    pub async fn write(&self, stream: &str, letters: Vec<DeadLetter>) -> Result<(), IngestError> {
        if letters.is_empty() {
            return Ok(());
        }
        let lock = self
            .locks
            .get(stream)
            .ok_or_else(|| IngestError::UnknownStream(stream.to_string()))?;
        let _guard = lock.lock().await;
        let now = now_micros();
        let n = letters.len();
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
                Arc::new(StringArray::from_iter_values(
                    letters.iter().map(|l| l.source),
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
            .with_save_mode(SaveMode::Append)
            .await
            .map_err(|e| dl_err(stream, e))?;
        Ok(())
    }
}

fn dl_err(stream: &str, e: impl std::fmt::Display) -> IngestError {
    IngestError::DeadLetter {
        stream: stream.to_string(),
        message: e.to_string(),
    }
}
