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
use std::time::Duration;

use deltalake::DeltaTable;
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::Schema;
use deltalake::kernel::Transaction;
use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::{SchemaMode, WriteBuilder};
use deltalake::protocol::SaveMode;
use tributary_core::config::BatchConfig;
use tributary_core::log::{EventLog, retry_unavailable};
use tributary_core::schema::{BatchDecoder, EVENT_DATE, LogPosition, StreamSchema};
use tributary_core::shutdown::Shutdown;
use tributary_core::storage::Storage;
use tributary_ingest::dead_letter::{DeadLetter, DeadLetterSink};

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
    let table = tributary_ingest::delta::open(storage.master_table(stream))
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

/// Archive one stream until shutdown.
pub async fn run_stream(
    config: BatchConfig,
    stream: StreamSchema,
    storage: Storage,
    log: Arc<dyn EventLog>,
    dead_letters: DeadLetterSink,
    shutdown: Shutdown,
) -> Result<(), BatchError> {
    let what = || format!("master table of `{}`", stream.name);
    let mut table = tributary_ingest::delta::open(storage.master_table(&stream.name))
        .await
        .map_err(|e| BatchError::delta(what(), e))?;
    let mut positions = vec![0u64; stream.partitions as usize];
    let mut generation = None;
    let mut layout = Layout {
        merge_schema: false,
        dated: true,
    };
    let flush = Duration::from_millis(config.archive_flush_ms.max(1));
    let per_partition = config
        .archive_flush_records
        .div_ceil(stream.partitions as usize)
        .max(1);
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
            table = tributary_ingest::delta::open(storage.master_table(&stream.name))
                .await
                .map_err(|e| BatchError::delta(what(), e))?;
            let existing = table.version().is_some().then_some(&table);
            positions = archived_positions(existing, &stream).await?;
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
        let mut next: BTreeMap<u32, u64> = BTreeMap::new();
        for p in assigned.partitions.iter().copied() {
            let from = positions[p as usize];
            let read = retry_unavailable("archiver read", &shutdown, || {
                log.read(&stream.name, p, from, per_partition)
            })
            .await
            .map_err(|e| BatchError::Log(stream.name.clone(), e))?;
            let Some(batch) = read else { return Ok(()) };
            if batch.next_offset == from {
                continue;
            }
            next.insert(p, batch.next_offset);
            for r in batch.records {
                let at = LogPosition {
                    partition: p,
                    offset: r.offset,
                    ingest_ts: r.ingest_ts,
                };
                if let Err(e) = decoder.push_bytes(&r.payload, at) {
                    letters.push(DeadLetter {
                        source: "log",
                        index: Some(r.offset as i64),
                        field: (!e.field.is_empty()).then_some(e.field),
                        reason: format!("partition {p} offset {}: {}", r.offset, e.reason),
                        raw: String::from_utf8_lossy(&r.payload).into_owned(),
                    });
                }
            }
        }
        if next.is_empty() {
            // On shutdown, stop only once the log is drained: a graceful stop leaves
            // nothing behind for the next start.
            if shutdown.is_cancelled() {
                return Ok(());
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(flush) => {}
            }
            continue;
        }
        // Another member may have archived these offsets since our assignment changed
        // hands (a rebalance): commit only if the table still has our positions.
        if table.version().is_some() {
            let mut fresh = table.clone();
            fresh
                .update_incremental(None)
                .await
                .map_err(|e| BatchError::delta(what(), e))?;
            let now = archived_positions(Some(&fresh), &stream).await?;
            if next
                .keys()
                .any(|p| now[*p as usize] != positions[*p as usize])
            {
                tracing::info!(stream = %stream.name, "positions moved under us; reloading");
                generation = None;
                continue;
            }
            table = fresh;
        }
        // Dead letters first: if the data commit then fails, the replay writes them
        // again (a dead letter may repeat; an event never does).
        dead_letters
            .write(&stream.name, letters)
            .await
            .map_err(|e| BatchError::DeadLetter(e.to_string()))?;
        let batch = decoder
            .flush()
            .map_err(|e| BatchError::Log(stream.name.clone(), e))?;
        let txns = next
            .iter()
            .map(|(p, o)| Transaction::new(app_id(&stream.name, *p), *o as i64))
            .collect();
        let rows = batch.num_rows();
        let batch = layout.prepare(batch)?;
        let write = layout.apply(table.write(vec![batch]).with_save_mode(SaveMode::Append));
        table = write
            .with_commit_properties(CommitProperties::default().with_application_transactions(txns))
            .await
            .map_err(|e| BatchError::delta(format!("archiving `{}`", stream.name), e))?;
        for (p, o) in next {
            positions[p as usize] = o;
            // The table is the truth; the group position is there for lag monitoring
            // in the log's own tools (Kafka consumer-group lag).
            if let Err(e) = log
                .commit_position(ARCHIVER_GROUP, &stream.name, p, o)
                .await
            {
                tracing::debug!(error = %e, "could not record the archiver's position");
            }
        }
        layout.merge_schema = false;
        tracing::debug!(stream = %stream.name, rows, version = ?table.version(), "archived");
        // While the log has a backlog (or we are draining for shutdown), go straight
        // on; otherwise wait for more.
        if !shutdown.is_cancelled() && rows < config.archive_flush_records / 2 {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(flush) => {}
            }
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
