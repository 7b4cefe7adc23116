//! Dead letters: every rejected record, with its reason, in a Delta table per stream.
//!
//! Records refused at ingest, records in the log that no longer validate (the
//! archiver's), rows of a backfill, and records a view could not process (the speed
//! layer's and the batch layer's quarantine) all land here, with where they came from.
//!
//! Writes are group-committed: concurrent writers of a stream queue their letters, and
//! whoever takes the stream's commit lock commits everything queued in one Delta commit
//! and tells every waiter the outcome. So many requests that each carry one bad record
//! cost one commit between them, not one each.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use deltalake::datafusion::prelude::{SessionContext, col};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use tokio::sync::{Mutex, MutexGuard, oneshot};

use crate::error::CoreError;
use crate::storage::Storage;
use crate::time::now_micros;

/// One rejected record.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Where it came from: `http`, `log` (consumed from the log), `backfill`, or
    /// `view:<name>` (a record that view could not process).
    pub source: String,
    /// Its index in the request, or its log offset.
    pub index: Option<i64>,
    /// Its log partition, for records that were in the log.
    pub partition: Option<i64>,
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
        Field::new("partition", DataType::Int64, true),
    ]))
}

/// Dead-letter tables are checkpointed at every this many versions.
const CHECKPOINT_EVERY: u64 = 100;

/// Letters waiting for the next group commit, each batch with the writer to tell.
type Pending = Vec<(Vec<StoredLetter>, oneshot::Sender<Result<(), String>>)>;

/// Per stream: the queue of letters not yet committed and the commit lock.
#[derive(Default)]
struct StreamQueue {
    pending: std::sync::Mutex<Pending>,
    /// Held by the writer committing the queue, and by a replay while it reads and
    /// rewrites the table, so no write slips between. It guards the open table: a
    /// commit brings it up to date incrementally instead of replaying the whole Delta
    /// log, which cost more with every commit.
    commit: Arc<Mutex<Option<deltalake::DeltaTable>>>,
}

/// Writes dead letters; one commit per stream at a time, shared by concurrent writers.
#[derive(Clone)]
pub struct DeadLetterSink {
    storage: Storage,
    queues: Arc<HashMap<String, Arc<StreamQueue>>>,
}

impl std::fmt::Debug for DeadLetterSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterSink")
            .field("streams", &self.queues.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl DeadLetterSink {
    pub fn new(storage: Storage, streams: impl IntoIterator<Item = String>) -> Self {
        let queues = streams
            .into_iter()
            .map(|s| (s, Arc::new(StreamQueue::default())))
            .collect();
        DeadLetterSink {
            storage,
            queues: Arc::new(queues),
        }
    }

    fn queue(&self, stream: &str) -> Result<&Arc<StreamQueue>, CoreError> {
        self.queues
            .get(stream)
            .ok_or_else(|| CoreError::UnknownStream(stream.to_string()))
    }

    /// Held while a replay reads and rewrites the table, so no write slips between.
    pub async fn lock(
        &self,
        stream: &str,
    ) -> Result<MutexGuard<'_, Option<deltalake::DeltaTable>>, CoreError> {
        Ok(self.queue(stream)?.commit.lock().await)
    }

    /// Store `letters`; returns once they are committed (or the commit failed).
    pub async fn write(&self, stream: &str, letters: Vec<DeadLetter>) -> Result<(), CoreError> {
        if letters.is_empty() {
            return Ok(());
        }
        let queue = self.queue(stream)?.clone();
        let now = now_micros();
        let stored = letters
            .into_iter()
            .map(|l| StoredLetter {
                received_at: now,
                source: l.source,
                index: l.index,
                partition: l.partition,
                field: l.field,
                reason: l.reason,
                raw: l.raw,
            })
            .collect::<Vec<_>>();
        let (tx, mut rx) = oneshot::channel();
        queue
            .pending
            .lock()
            .expect("dead-letter queue")
            .push((stored, tx));
        loop {
            tokio::select! {
                biased;
                outcome = &mut rx => {
                    return match outcome {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(message)) => Err(dl_err(stream, message)),
                        Err(_) => Err(dl_err(stream, "the commit was abandoned")),
                    };
                }
                mut guard = queue.commit.clone().lock_owned() => {
                    let batch = std::mem::take(&mut *queue.pending.lock().expect("dead-letter queue"));
                    if batch.is_empty() {
                        // An earlier leader took ours; its outcome is on the channel.
                        drop(guard);
                        continue;
                    }
                    // The commit runs in its own task, so a client that goes away mid-way
                    // (its request future dropped) cannot abandon the other waiters.
                    let sink = self.clone();
                    let name = stream.to_string();
                    let commit = tokio::spawn(async move {
                        let (letters, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                        let letters: Vec<StoredLetter> = letters.into_iter().flatten().collect();
                        let outcome = sink
                            .commit_with(&name, &letters, SaveMode::Append, &mut guard)
                            .await
                            .map_err(|e| e.to_string());
                        for w in waiters {
                            let _ = w.send(outcome.clone());
                        }
                        drop(guard);
                    });
                    let _ = commit.await;
                }
            }
        }
    }

    /// Every dead letter of `stream`, oldest first. The caller holds [`Self::lock`].
    pub async fn read_all(&self, stream: &str) -> Result<Vec<StoredLetter>, CoreError> {
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
        self.commit_with(stream, letters, SaveMode::Overwrite, table)
            .await
    }

    /// Commit `letters` to the table held in `cached` (opened on first use, brought up
    /// to date incrementally, checkpointed every [`CHECKPOINT_EVERY`] versions).
    async fn commit_with(
        &self,
        stream: &str,
        letters: &[StoredLetter],
        mode: SaveMode,
        cached: &mut Option<deltalake::DeltaTable>,
    ) -> Result<(), CoreError> {
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
        let table = match cached.take() {
            // Another process may have committed meanwhile.
            Some(mut t) => match t.update_incremental(None).await {
                Ok(()) => t,
                Err(_) => crate::delta::open(self.storage.dead_letter_table(stream))
                    .await
                    .map_err(|e| dl_err(stream, e))?,
            },
            None => crate::delta::open(self.storage.dead_letter_table(stream))
                .await
                .map_err(|e| dl_err(stream, e))?,
        };
        let write = table.write(vec![batch]).with_save_mode(mode);
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
        *cached = Some(table);
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
    pub partition: Option<i64>,
    pub field: Option<String>,
    pub reason: String,
    pub raw: String,
}

fn dl_err(stream: &str, e: impl std::fmt::Display) -> CoreError {
    CoreError::DeadLetter {
        stream: stream.to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(i: i64) -> DeadLetter {
        DeadLetter {
            source: "http".into(),
            index: Some(i),
            partition: None,
            field: Some("ts".into()),
            reason: "bad".into(),
            raw: format!("{{\"i\":{i}}}"),
        }
    }

    #[tokio::test]
    async fn concurrent_writers_share_commits_and_every_letter_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let sink = DeadLetterSink::new(storage.clone(), ["s".to_string()]);
        let writers = (0..64).map(|i| {
            let sink = sink.clone();
            tokio::spawn(async move { sink.write("s", vec![letter(i)]).await })
        });
        for w in futures::future::join_all(writers).await {
            w.unwrap().unwrap();
        }
        let stored = sink.read_all("s").await.unwrap();
        let mut indexes: Vec<i64> = stored.iter().filter_map(|l| l.index).collect();
        indexes.sort();
        assert_eq!(indexes, (0..64).collect::<Vec<_>>());
        let table = crate::delta::open(storage.dead_letter_table("s"))
            .await
            .unwrap();
        let commits = table.version().unwrap() + 1;
        assert!(
            commits < 64,
            "64 writers made {commits} commits: no group commit"
        );
    }
}
