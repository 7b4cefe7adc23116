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

use deltalake::DeltaTable;
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::protocol::SaveMode;
use tributary_core::log::EventLog;
use tributary_core::schema::{EVENT_DATE, StreamSchema};
use tributary_core::storage::Storage;

use crate::error::BatchError;

mod layout;
mod processor;
mod window;

pub use layout::{Layout, evolution, table_schema};
pub use processor::run_stream;

/// The consumer name under which the archiver reports its positions to the log.
pub const ARCHIVER_GROUP: &str = "tributary-archiver";

/// The Delta `txn` app id that holds a partition's archived position.
pub fn app_id(stream: &str, partition: u32) -> String {
    format!("{stream}-{partition}")
}

/// How Tributary writes Parquet files: the archiver the master table's, compaction every
/// table's (delta-rs's OPTIMIZE would write ZSTD). Every batch run decodes the master
/// table whole, so the files are LZ4 (raw), which decodes faster than delta-rs's default
/// Snappy at about the same size (README, benchmarks); Spark, DuckDB, polars and
/// delta-rs all read it.
pub(crate) fn table_file_properties() -> deltalake::parquet::file::properties::WriterProperties {
    deltalake::parquet::file::properties::WriterProperties::builder()
        .set_created_by(format!("tributary {}", env!("CARGO_PKG_VERSION")))
        .set_compression(deltalake::parquet::basic::Compression::LZ4_RAW)
        .build()
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
