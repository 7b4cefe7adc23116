//! Batch-view tables: a view's partial states over every event below a cutoff, one
//! Delta table per view.
//!
//! State columns are stored positionally (`c0`, `c1`, …) because DataFusion's state
//! names (`avg(readings.signal)[count]`) contain characters Delta forbids in column
//! names, and unsigned state types are widened to signed ones, which Delta lacks. The
//! cutoff T is committed in the same commit as the states, as a `txn` action
//! (app id [`CUTOFF_APP_ID`], version = T) and in the commit's metadata.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use serde_json::json;
use tributary_core::storage::Storage;
use tributary_core::view::{CompiledView, session};

use crate::error::BatchError;

pub const CUTOFF_APP_ID: &str = "tributary-cutoff";
/// The newest event time below the cutoff rides along the same way (version = micros).
pub const MAX_EVENT_TS_APP_ID: &str = "tributary-max-event-ts";
/// What the states were computed by (version = [`definition_hash`]): an incremental run
/// may only add to states of the same definition.
pub const DEFINITION_APP_ID: &str = "tributary-definition";

/// A stable hash of what a view's states depend on besides the events: its SQL and its
/// stream's dedup rule (FNV-1a, kept positive to fit a `txn` version).
pub fn definition_hash(
    view: &CompiledView,
    dedup: Option<&tributary_core::schema::DedupSpec>,
) -> i64 {
    let text = match dedup {
        Some(d) => format!("{}\u{0}{}\u{0}{}", view.sql, d.field, d.horizon_us),
        None => view.sql.clone(),
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h & i64::MAX as u64) as i64
}

/// A view's batch states as of one batch run.
#[derive(Debug, Clone)]
pub struct BatchView {
    /// Every event with `_ingest_ts` below this is in `states`, and no other.
    pub cutoff: i64,
    pub version: i64,
    pub states: Vec<RecordBatch>,
    /// Newest event time among the events below the cutoff.
    pub max_event_ts: Option<i64>,
    /// [`definition_hash`] of the run that wrote the states (`None` before it was kept).
    pub definition: Option<i64>,
}

fn storage_type(t: &DataType) -> DataType {
    match t {
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        // Delta stores microseconds; windows of microsecond event times lose nothing.
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        other => other.clone(),
    }
}

fn storage_schema(partial: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        partial
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| Field::new(format!("c{i}"), storage_type(f.data_type()), true))
            .collect::<Vec<_>>(),
    ))
}

/// Replace a view's batch states with `states`, computed over `_ingest_ts < cutoff`.
pub async fn write(
    storage: &Storage,
    view: &CompiledView,
    stamp: Stamp<'_>,
    states: Vec<RecordBatch>,
) -> Result<i64, BatchError> {
    let Stamp {
        cutoff,
        max_event_ts,
        definition,
        run_id,
        kind,
    } = stamp;
    let schema = storage_schema(&view.partial_schema);
    let mut batches = Vec::with_capacity(states.len().max(1));
    for b in states {
        let cols = b
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| cast(c, f.data_type()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BatchError::View(view.name.clone(), e.to_string()))?;
        batches.push(
            RecordBatch::try_new(schema.clone(), cols)
                .map_err(|e| BatchError::View(view.name.clone(), e.to_string()))?,
        );
    }
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(schema.clone()));
    }
    let what = || format!("batch view `{}`", view.name);
    let table = tributary_ingest::delta::open(storage.batch_view_table(&view.name))
        .await
        .map_err(|e| BatchError::delta(what(), e))?;
    let mut props = CommitProperties::default()
        .with_application_transaction(Transaction::new(CUTOFF_APP_ID, cutoff))
        .with_application_transaction(Transaction::new(DEFINITION_APP_ID, definition));
    if let Some(t) = max_event_ts {
        props = props.with_application_transaction(Transaction::new(MAX_EVENT_TS_APP_ID, t));
    }
    let props = props.with_metadata([
        ("tributary.cutoff".to_string(), json!(cutoff)),
        ("tributary.run".to_string(), json!(run_id)),
        ("tributary.kind".to_string(), json!(kind)),
        ("tributary.sql".to_string(), json!(view.sql)),
    ]);
    let table = table
        .write(batches)
        .with_save_mode(SaveMode::Overwrite)
        .with_commit_properties(props)
        .await
        .map_err(|e| BatchError::delta(what(), e))?;
    Ok(table.version().unwrap_or(0) as i64)
}

/// What a batch-view commit records beside the states.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub cutoff: i64,
    pub max_event_ts: Option<i64>,
    pub definition: i64,
    pub run_id: &'a str,
    /// `full` or `incremental`.
    pub kind: &'a str,
}

/// Load a view's latest batch states, or `None` if no batch run has written any.
pub async fn load(storage: &Storage, view: &CompiledView) -> Result<Option<BatchView>, BatchError> {
    let what = || format!("batch view `{}`", view.name);
    let table = tributary_ingest::delta::open(storage.batch_view_table(&view.name))
        .await
        .map_err(|e| BatchError::delta(what(), e))?;
    load_table(table, view).await
}

/// A view's batch states as a past batch run left them (time travel), or `None` if the
/// view had none then.
pub async fn load_as_of(
    storage: &Storage,
    view: &CompiledView,
    as_of: &tributary_ingest::delta::AsOf,
) -> Result<Option<BatchView>, BatchError> {
    let what = || format!("batch view `{}` as of {as_of}", view.name);
    match tributary_ingest::delta::open_as_of(storage.batch_view_table(&view.name), as_of)
        .await
        .map_err(|e| BatchError::delta(what(), e))?
    {
        Some(table) => load_table(table, view).await,
        None => Ok(None),
    }
}

async fn load_table(
    table: deltalake::DeltaTable,
    view: &CompiledView,
) -> Result<Option<BatchView>, BatchError> {
    let what = || format!("batch view `{}`", view.name);
    let Some(version) = table.version() else {
        return Ok(None);
    };
    let snapshot = table.snapshot().map_err(|e| BatchError::delta(what(), e))?;
    let Some(cutoff) = snapshot
        .transaction_version(table.log_store().as_ref(), CUTOFF_APP_ID)
        .await
        .map_err(|e| BatchError::delta(what(), e))?
    else {
        return Err(BatchError::View(
            view.name.clone(),
            "batch view table has no cutoff".into(),
        ));
    };
    let max_event_ts = snapshot
        .transaction_version(table.log_store().as_ref(), MAX_EVENT_TS_APP_ID)
        .await
        .map_err(|e| BatchError::delta(what(), e))?;
    let definition = snapshot
        .transaction_version(table.log_store().as_ref(), DEFINITION_APP_ID)
        .await
        .map_err(|e| BatchError::delta(what(), e))?;
    let ctx = session();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| BatchError::delta(what(), e))?;
    let provider = table
        .table_provider()
        .await
        .map_err(|e| BatchError::delta(what(), e))?;
    let df = ctx
        .read_table(provider)
        .map_err(|e| BatchError::View(view.name.clone(), e.to_string()))?;
    let batches = df
        .collect()
        .await
        .map_err(|e| BatchError::View(view.name.clone(), e.to_string()))?;
    let states = view
        .conform(batches)
        .map_err(|e| BatchError::View(view.name.clone(), e.to_string()))?;
    Ok(Some(BatchView {
        cutoff,
        version: version as i64,
        states,
        max_event_ts,
        definition,
    }))
}

/// The cutoff of a view's latest batch states, without loading them.
pub async fn load_cutoff(
    storage: &Storage,
    view: &CompiledView,
) -> Result<Option<i64>, BatchError> {
    let what = || format!("batch view `{}`", view.name);
    let table = tributary_ingest::delta::open(storage.batch_view_table(&view.name))
        .await
        .map_err(|e| BatchError::delta(what(), e))?;
    if table.version().is_none() {
        return Ok(None);
    }
    let snapshot = table.snapshot().map_err(|e| BatchError::delta(what(), e))?;
    snapshot
        .transaction_version(table.log_store().as_ref(), CUTOFF_APP_ID)
        .await
        .map_err(|e| BatchError::delta(what(), e))
}
