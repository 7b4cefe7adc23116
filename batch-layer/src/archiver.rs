//! The archiver: every event of the log into the stream's Delta master table, exactly
//! once.
//!
//! Each commit carries, beside the data, one `txn` action per partition it read
//! (app id `<stream>-<partition>`, version = the next offset to read). Data and
//! positions therefore commit atomically: after a crash the archiver resumes from the
//! positions in the table, so a replay can neither duplicate nor skip a row.
//!
//! Schema evolution: a stream may gain nullable fields; the next commit adds them to the
//! table (Delta schema merge, no rewrite: older files read them as null). Any other
//! change (a field removed, retyped, made required or no longer required) is refused
//! with the field and the reason, before anything is written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::DeltaTable;
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::Schema;
use deltalake::kernel::StructType;
use deltalake::kernel::Transaction;
use deltalake::kernel::engine::arrow_conversion::{TryFromArrow, TryIntoArrow};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::operations::write::{SchemaMode, WriteBuilder};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use tributary_core::config::BatchConfig;
use tributary_core::dead_letter::{DeadLetter, DeadLetterSink};
use tributary_core::log::{EventLog, retry_unavailable};
use tributary_core::schema::{BatchDecoder, EVENT_DATE, LogPosition, StreamSchema};
use tributary_core::shutdown::Shutdown;
use tributary_core::storage::Storage;

use crate::error::BatchError;

/// The consumer name under which the archiver reports its positions to the log.
pub const ARCHIVER_GROUP: &str = "tributary-archiver";

/// The Delta `txn` app id that holds a partition's archived position.
pub fn app_id(stream: &str, partition: u32) -> String {
    format!("{stream}-{partition}")
}

/// Open a stream's master table, or `None` if nothing was ever archived.
pub async fn open_master(
    storage: &Storage,
    stream: &str,
) -> Result<Option<DeltaTable>, BatchError> {
    let table = tributary_core::delta::open(storage.master_table(stream))
        .await
        .map_err(|e| BatchError::delta(format!("master table of `{stream}`"), e))?;
    Ok(table.version().is_some().then_some(table))
}

/// The archived positions (next offset to read) of a stream, from its master table.
pub async fn archived_positions(
    table: Option<&DeltaTable>,
    stream: &StreamSchema,
) -> Result<Vec<u64>, BatchError> {
    let mut out = vec![0u64; stream.partitions as usize];
    let Some(table) = table else { return Ok(out) };
    let snapshot = table
        .snapshot()
        .map_err(|e| BatchError::delta(format!("master table of `{}`", stream.name), e))?;
    let store = table.log_store();
    for (p, slot) in out.iter_mut().enumerate() {
        let v = snapshot
            .transaction_version(store.as_ref(), app_id(&stream.name, p as u32))
            .await
            .map_err(|e| BatchError::delta(format!("master table of `{}`", stream.name), e))?;
        *slot = v.unwrap_or(0).max(0) as u64;
    }
    Ok(out)
}

/// Whether the master table can take the stream's records as they are now: `Ok(false)`
/// when the schemas match, `Ok(true)` when the stream adds nullable fields (the next
/// commit merges them in), and the reason when the change needs a rewrite.
pub fn evolution(table: &Schema, stream: &Schema, name: &str) -> Result<bool, BatchError> {
    let refuse = |field: &str, reason: String| BatchError::Schema {
        stream: name.to_string(),
        field: field.to_string(),
        reason,
    };
    for t in table.fields() {
        let Ok(s) = stream.field_with_name(t.name()) else {
            return Err(refuse(
                t.name(),
                "is in the master table but no longer in the stream's schema; removing a field \
                 needs a rewrite of the table (keep it, nullable, instead)"
                    .into(),
            ));
        };
        if s.data_type() != t.data_type() {
            return Err(refuse(
                t.name(),
                format!(
                    "is {} in the master table but {} in the stream's schema; changing a type \
                     needs a rewrite of the table",
                    t.data_type(),
                    s.data_type()
                ),
            ));
        }
        if s.is_nullable() != t.is_nullable() {
            let (was, now) = if t.is_nullable() {
                ("nullable", "required")
            } else {
                ("required", "nullable")
            };
            return Err(refuse(
                t.name(),
                format!(
                    "is {was} in the master table but {now} in the stream's schema; only new \
                     nullable fields can be added without a rewrite"
                ),
            ));
        }
    }
    let mut added = false;
    for s in stream.fields() {
        if table.field_with_name(s.name()).is_err() {
            if !s.is_nullable() {
                return Err(refuse(
                    s.name(),
                    "is new and required, but the events archived before it have no value for \
                     it; add it as nullable"
                        .into(),
                ));
            }
            added = true;
        }
    }
    Ok(added)
}

/// How records are written to a master table: new tables are partitioned by the event's
/// UTC date (`_event_date`); a table created before that column existed keeps its layout
/// (partitioning an existing table would need a rewrite), and the column is left out of
/// what is written to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The stream gained nullable fields the table lacks: merge them in.
    pub merge_schema: bool,
    /// The table has (or will be created with) the `_event_date` partition column.
    pub dated: bool,
}

impl Layout {
    pub fn of(table: &DeltaTable, stream: &StreamSchema) -> Result<Layout, BatchError> {
        let Some(current) = table_schema(table, &stream.name)? else {
            return Ok(Layout {
                merge_schema: false,
                dated: true,
            });
        };
        let dated = current.field_with_name(EVENT_DATE).is_ok();
        let wanted = stream.master_schema();
        let wanted = if dated {
            wanted.as_ref().clone()
        } else {
            let fields: Vec<_> = wanted
                .fields()
                .iter()
                .filter(|f| f.name() != EVENT_DATE)
                .cloned()
                .collect();
            Schema::new(fields)
        };
        Ok(Layout {
            merge_schema: evolution(&current, &wanted, &stream.name)?,
            dated,
        })
    }

    /// `batch` (from a master-layout [`tributary_core::schema::BatchDecoder`]) as this
    /// table takes it.
    pub fn prepare(&self, batch: RecordBatch) -> Result<RecordBatch, BatchError> {
        if self.dated {
            return Ok(batch);
        }
        let keep: Vec<usize> = (0..batch.num_columns())
            .filter(|i| batch.schema().field(*i).name() != EVENT_DATE)
            .collect();
        batch
            .project(&keep)
            .map_err(|e| BatchError::delta("master table layout", e))
    }

    pub fn apply(&self, write: WriteBuilder) -> WriteBuilder {
        let write = if self.dated {
            write.with_partition_columns([EVENT_DATE])
        } else {
            write
        };
        if self.merge_schema {
            write.with_schema_mode(SchemaMode::Merge)
        } else {
            write
        }
    }
}

/// The master table's schema as Arrow, or `None` before its first commit.
pub fn table_schema(table: &DeltaTable, stream: &str) -> Result<Option<Schema>, BatchError> {
    if table.version().is_none() {
        return Ok(None);
    }
    let what = || format!("master table of `{stream}`");
    let snapshot = table.snapshot().map_err(|e| BatchError::delta(what(), e))?;
    let schema: Schema = snapshot
        .schema()
        .as_ref()
        .try_into_arrow()
        .map_err(|e| BatchError::delta(what(), e))?;
    Ok(Some(schema))
}

/// Records read from one log partition at a time. The size and record triggers are
/// checked after each read, so a commit overshoots them by at most one read (about 1 MB
/// of JSON per partition for small events).
const READ_RECORDS: usize = 16_384;

/// The records read since the last commit, streaming into Parquet files: they become
/// visible, with the positions after them, in one Delta commit.
struct Window {
    writer: Option<RecordBatchWriter>,
    /// When its first record was read.
    opened: Option<Instant>,
    rows: usize,
    /// Partition → the position after the window's records (what the commit records).
    next: BTreeMap<u32, u64>,
    /// The event dates (days since the epoch) of its records: one open file each, so
    /// the window commits once it holds `batch.max-open-files` of them.
    dates: std::collections::BTreeSet<i32>,
}

impl Window {
    fn new() -> Self {
        Window {
            writer: None,
            opened: None,
            rows: 0,
            next: BTreeMap::new(),
            dates: Default::default(),
        }
    }

    /// Note the event dates of `batch` (master layout).
    fn add_dates(&mut self, batch: &RecordBatch) {
        let Some(days) = batch
            .column_by_name(tributary_core::schema::EVENT_DATE)
            .and_then(|c| {
                c.as_any()
                    .downcast_ref::<deltalake::arrow::array::Date32Array>()
            })
        else {
            return;
        };
        let mut last = None;
        // Records of a micro-batch mostly share a date: insert only where it changes.
        for day in days.values().iter().copied() {
            if last != Some(day) {
                self.dates.insert(day);
                last = Some(day);
            }
        }
    }

    /// The commit's `txn` actions: each partition's position after the window.
    fn commit_properties(&self, stream: &str) -> CommitProperties {
        let txns = self
            .next
            .iter()
            .map(|(p, o)| Transaction::new(app_id(stream, *p), *o as i64));
        CommitProperties::default().with_application_transactions(txns.collect())
    }

    /// The log partitions the window holds records of (the writer is not `Sync`, so no
    /// borrow of the window is held across an await).
    fn partitions(&self) -> Vec<u32> {
        self.next.keys().copied().collect()
    }

    fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    /// Forget what was written since the last commit: its files were never committed,
    /// and VACUUM removes them.
    fn discard(&mut self) {
        if let Some(w) = self.writer.as_mut() {
            w.reset();
        }
        self.writer = None;
        self.opened = None;
        self.rows = 0;
        self.next.clear();
        self.dates.clear();
    }
}

/// Archive one stream until shutdown.
///
/// Records stream into open Parquet files (one per event date) that commit, with the
/// log positions after them, when they reach `target-file-mb`, when the oldest record
/// in them has waited `archive-flush-ms`, after `archive-flush-records` records, or on
/// shutdown (after the log is drained). A crash loses only uncommitted files, which no
/// reader sees; the archiver then resumes from the positions in the table.
pub async fn run_stream(
    config: BatchConfig,
    stream: StreamSchema,
    storage: Storage,
    log: Arc<dyn EventLog>,
    dead_letters: DeadLetterSink,
    shutdown: Shutdown,
) -> Result<(), BatchError> {
    let what = || format!("master table of `{}`", stream.name);
    let mut table = tributary_core::delta::open(storage.master_table(&stream.name))
        .await
        .map_err(|e| BatchError::delta(what(), e))?;
    // Committed positions (in the table) and read positions (committed + the window).
    let mut positions = vec![0u64; stream.partitions as usize];
    let mut cursor = positions.clone();
    let mut window = Window::new();
    let mut generation = None;
    let mut layout = Layout {
        merge_schema: false,
        dated: true,
    };
    let flush = Duration::from_millis(config.archive_flush_ms.max(1));
    let file_bytes = (config.target_file_mb.max(1) * 1024 * 1024) as usize;
    let per_read = config
        .archive_flush_records
        .div_ceil(stream.partitions as usize)
        .clamp(1, READ_RECORDS);
    loop {
        let assigned = retry_unavailable("archiver assignment", &shutdown, || {
            log.assignment(ARCHIVER_GROUP, &stream.name)
        })
        .await
        .map_err(|e| BatchError::Log(stream.name.clone(), e))?;
        let Some(assigned) = assigned else {
            return Ok(());
        };
        if generation != Some(assigned.generation) {
            // At start and after every rebalance the table is the truth, not the
            // group's committed offsets nor what this process remembers.
            window.discard();
            table = tributary_core::delta::open(storage.master_table(&stream.name))
                .await
                .map_err(|e| BatchError::delta(what(), e))?;
            if table.version().is_none() {
                table = create_master(table, &stream).await?;
            }
            let existing = table.version().is_some().then_some(&table);
            positions = archived_positions(existing, &stream).await?;
            cursor = positions.clone();
            layout = Layout::of(&table, &stream)?;
            if layout.merge_schema {
                tracing::info!(stream = %stream.name, "the stream has new nullable fields; the next commit adds them to the master table");
            }
            generation = Some(assigned.generation);
            tracing::info!(
                stream = %stream.name,
                partitions = ?assigned.partitions,
                ?positions,
                "archiver resuming from the master table"
            );
        }
        let mut decoder = BatchDecoder::new(&stream, true);
        let mut letters = Vec::new();
        let mut read_any = false;
        let mut backlog = false;
        let mut log_gone = false;
        for p in assigned.partitions.iter().copied() {
            let from = cursor[p as usize];
            let read = retry_unavailable("archiver read", &shutdown, || {
                log.read(&stream.name, p, from, per_read)
            })
            .await
            .map_err(|e| BatchError::Log(stream.name.clone(), e))?;
            let Some(batch) = read else {
                log_gone = true;
                break;
            };
            if batch.next_offset == from {
                continue;
            }
            read_any = true;
            backlog |= batch.records.len() >= per_read;
            cursor[p as usize] = batch.next_offset;
            window.next.insert(p, batch.next_offset);
            for r in batch.records {
                let at = LogPosition {
                    partition: p,
                    offset: r.offset,
                    ingest_ts: r.ingest_ts,
                };
                if let Err(e) = decoder.push_bytes(&r.payload, at) {
                    letters.push(DeadLetter {
                        source: "log".into(),
                        index: Some(r.offset as i64),
                        partition: Some(p as i64),
                        field: (!e.field.is_empty()).then_some(e.field),
                        reason: format!("partition {p} offset {}: {}", r.offset, e.reason),
                        raw: String::from_utf8_lossy(&r.payload).into_owned(),
                    });
                }
            }
        }
        if read_any {
            // Dead letters first: if the data commit then fails, the replay writes them
            // again (a dead letter may repeat; an event never does).
            dead_letters
                .write(&stream.name, letters)
                .await
                .map_err(|e| BatchError::DeadLetter(e.to_string()))?;
            let batch = decoder
                .flush()
                .map_err(|e| BatchError::Log(stream.name.clone(), e))?;
            let batch = layout.prepare(batch)?;
            window.opened.get_or_insert_with(Instant::now);
            window.rows += batch.num_rows();
            window.add_dates(&batch);
            if layout.merge_schema {
                // Merging new fields into the schema goes through a whole write (the
                // streaming writer cannot widen a partitioned table); the next records
                // stream into files again.
                if !still_ours(&mut table, &stream, &positions, &window.partitions()).await? {
                    window.discard();
                    generation = None;
                    continue;
                }
                let write = layout.apply(table.clone().write(vec![batch]));
                table = write
                    .with_save_mode(SaveMode::Append)
                    .with_commit_properties(window.commit_properties(&stream.name))
                    .await
                    .map_err(|e| BatchError::delta(format!("archiving `{}`", stream.name), e))?;
                window.discard();
                layout.merge_schema = false;
                positions = cursor.clone();
                report_positions(log.as_ref(), &stream.name, &positions).await;
                continue;
            }
            if batch.num_rows() > 0 {
                let writer = match window.writer.as_mut() {
                    Some(w) => w,
                    None => window.writer.insert(
                        // No size roll: the window commits as soon as it reaches the
                        // size, which makes one file per event date.
                        RecordBatchWriter::for_table(&table)
                            .map_err(|e| BatchError::delta(what(), e))?,
                    ),
                };
                writer
                    .write(batch)
                    .await
                    .map_err(|e| BatchError::delta(format!("archiving `{}`", stream.name), e))?;
            }
        }
        let stopping = shutdown.is_cancelled() || log_gone;
        let buffered = window.writer.as_ref().map_or(0, |w| w.buffer_len());
        let due = window.opened.is_some_and(|t| t.elapsed() >= flush)
            || buffered >= file_bytes
            || window.dates.len() >= config.max_open_files.max(1)
            || window.rows >= config.archive_flush_records
            // On shutdown, commit only once the log is drained: a graceful stop leaves
            // nothing behind for the next start.
            || (stopping && !read_any);
        if due && !window.is_empty() {
            if !still_ours(&mut table, &stream, &positions, &window.partitions()).await? {
                window.discard();
                generation = None;
                continue;
            }
            let properties = window.commit_properties(&stream.name);
            let archiving = || format!("archiving `{}`", stream.name);
            match window.writer.take() {
                Some(writer) => {
                    writer
                        .with_commit_properties(properties)
                        .flush_and_commit(&mut table)
                        .await
                        .map_err(|e| BatchError::delta(archiving(), e))?;
                }
                // Only dead letters: the positions still move on.
                None => {
                    let snapshot = table.snapshot().map_err(|e| BatchError::delta(what(), e))?;
                    CommitBuilder::from(properties)
                        .build(
                            Some(snapshot),
                            table.log_store(),
                            DeltaOperation::Write {
                                mode: SaveMode::Append,
                                partition_by: None,
                                predicate: None,
                            },
                        )
                        .await
                        .map_err(|e| BatchError::delta(archiving(), e))?;
                    table
                        .update_incremental(None)
                        .await
                        .map_err(|e| BatchError::delta(what(), e))?;
                }
            }
            tracing::debug!(stream = %stream.name, rows = window.rows, version = ?table.version(), "archived");
            window.discard();
            positions = cursor.clone();
            report_positions(log.as_ref(), &stream.name, &positions).await;
        }
        if stopping && !read_any && window.is_empty() {
            return Ok(());
        }
        if !backlog && !stopping {
            // Wait for more, but never past the window's deadline.
            let wait = window
                .opened
                .map_or(flush, |t| flush.saturating_sub(t.elapsed()))
                .min(IDLE_POLL);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// How long an idle archiver waits before asking the log again.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// Create a stream's master table, empty, partitioned by event date: every record then
/// goes through the streaming writer. Another archiver of the group may have created it
/// meanwhile; then it stays as it is.
async fn create_master(table: DeltaTable, stream: &StreamSchema) -> Result<DeltaTable, BatchError> {
    let what = || format!("master table of `{}`", stream.name);
    let schema = StructType::try_from_arrow(stream.master_schema().as_ref())
        .map_err(|e| BatchError::delta(what(), e))?;
    table
        .create()
        .with_columns(schema.fields().cloned())
        .with_partition_columns([EVENT_DATE])
        .with_save_mode(SaveMode::Ignore)
        .await
        .map_err(|e| BatchError::delta(what(), e))
}

/// Whether the table still has the positions this archiver last committed for the
/// `partitions` (after a rebalance another member may have archived them); on
/// `true`, `table` is brought up to date for the commit.
async fn still_ours(
    table: &mut DeltaTable,
    stream: &StreamSchema,
    positions: &[u64],
    partitions: &[u32],
) -> Result<bool, BatchError> {
    if table.version().is_none() {
        return Ok(true);
    }
    let mut fresh = table.clone();
    fresh
        .update_incremental(None)
        .await
        .map_err(|e| BatchError::delta(format!("master table of `{}`", stream.name), e))?;
    let now = archived_positions(Some(&fresh), stream).await?;
    if partitions
        .iter()
        .any(|p| now[*p as usize] != positions[*p as usize])
    {
        tracing::info!(stream = %stream.name, "positions moved under us; reloading");
        return Ok(false);
    }
    *table = fresh;
    Ok(true)
}

/// Tell the log how far the archiver is: the table is the truth; the group position is
/// there for lag monitoring in the log's own tools (Kafka consumer-group lag).
async fn report_positions(log: &dyn EventLog, stream: &str, positions: &[u64]) {
    for (p, o) in positions.iter().enumerate() {
        if let Err(e) = log
            .commit_position(ARCHIVER_GROUP, stream, p as u32, *o)
            .await
        {
            tracing::debug!(error = %e, "could not record the archiver's position");
        }
    }
}

#[cfg(test)]
mod tests {
    use deltalake::arrow::datatypes::{DataType, Field};

    use super::*;

    fn schema(fields: &[(&str, DataType, bool)]) -> Schema {
        Schema::new(
            fields
                .iter()
                .map(|(n, t, null)| Field::new(*n, t.clone(), *null))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn only_new_nullable_fields_evolve_without_a_rewrite() {
        let table = schema(&[("a", DataType::Utf8, false), ("b", DataType::Int64, true)]);
        assert!(!evolution(&table, &table, "s").unwrap());
        let added = schema(&[
            ("a", DataType::Utf8, false),
            ("c", DataType::Utf8, true),
            ("b", DataType::Int64, true),
        ]);
        assert!(evolution(&table, &added, "s").unwrap());

        let refused = |stream: Schema, field: &str, words: &str| {
            let e = evolution(&table, &stream, "s").unwrap_err().to_string();
            assert!(
                e.contains(&format!("field `{field}`")) && e.contains(words),
                "{e}"
            );
        };
        refused(
            schema(&[
                ("a", DataType::Utf8, false),
                ("b", DataType::Int64, true),
                ("c", DataType::Utf8, false),
            ]),
            "c",
            "add it as nullable",
        );
        refused(schema(&[("a", DataType::Utf8, false)]), "b", "no longer");
        refused(
            schema(&[("a", DataType::Utf8, false), ("b", DataType::Float64, true)]),
            "b",
            "changing a type",
        );
        refused(
            schema(&[("a", DataType::Utf8, true), ("b", DataType::Int64, true)]),
            "a",
            "required in the master table but nullable",
        );
    }
}
