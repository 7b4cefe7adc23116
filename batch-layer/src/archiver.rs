//! The archiver: every event of the log into the stream's Delta master table, exactly
//! once.
//!
//! Each commit carries, beside the data, one `txn` action per partition it read
//! (app id `<stream>-<partition>`, version = the next offset to read). Data and
//! positions therefore commit atomically: after a crash the archiver resumes from the
//! positions in the table, so a replay can neither duplicate nor skip a row.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use tributary_core::config::BatchConfig;
use tributary_core::log::{EventLog, retry_unavailable};
use tributary_core::schema::{BatchDecoder, LogPosition, StreamSchema};
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
        table = table
            .write(vec![batch])
            .with_save_mode(SaveMode::Append)
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
