//! Batch-view tables: a view's partial states over every event below a cutoff, one
//! Delta table per view.
//!
//! State columns are stored positionally (`c0`, `c1`, …) because DataFusion's state
//! names (`avg(readings.signal)[count]`) contain characters Delta forbids in column
//! names, and unsigned state types are widened to signed ones, which Delta lacks. The
//! cutoff T is committed in the same commit as the states, as a `txn` action
//! (app id [`CUTOFF_APP_ID`], version = T) and in the commit's metadata.
//!
//! The table is partitioned by the UTC day of each state's window ([`WINDOW_DAY`]): an
//! incremental run replaces only the days its new events fall in ([`Scope::Days`]). A
//! table written before that column existed is rewritten whole by its next run, which
//! partitions it.

use std::sync::Arc;

use datafusion::arrow::array::{Array, Date32Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::logical_expr::Expr;
use datafusion::prelude::{col, lit};
use datafusion::scalar::ScalarValue;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use serde_json::json;
use tributary_core::storage::Storage;
use tributary_core::view::{CompiledView, session};

use crate::error::BatchError;

/// The Delta `txn` app id whose version is the batch view's cutoff (microseconds).
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
    /// The batch-view table's version the states were read at.
    pub version: i64,
    /// The states, in the view's state schema.
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

/// The partition column of a batch-view table: the UTC day of the state's window.
pub const WINDOW_DAY: &str = "_window_day";

/// `c0`, `c1`, … for the states' columns, then [`WINDOW_DAY`] if the view has a window.
fn storage_schema(view: &CompiledView) -> SchemaRef {
    let mut fields: Vec<Field> = view
        .partial_schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Field::new(format!("c{i}"), storage_type(f.data_type()), true))
        .collect();
    if view.window_state.is_some() {
        fields.push(Field::new(WINDOW_DAY, DataType::Date32, true));
    }
    Arc::new(Schema::new(fields))
}

/// States in the table's layout: storage types, and the window's day.
fn to_storage(
    view: &CompiledView,
    states: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>, BatchError> {
    let err = |e: datafusion::arrow::error::ArrowError| BatchError::query(&view.name, e);
    let schema = storage_schema(view);
    let mut out = Vec::with_capacity(states.len());
    for b in states {
        let mut cols = b
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| cast(c, f.data_type()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        if let Some(w) = view.window_state {
            cols.push(cast(&cols[w], &DataType::Date32).map_err(err)?);
        }
        out.push(RecordBatch::try_new(schema.clone(), cols).map_err(err)?);
    }
    Ok(out)
}

/// The window days `states` fall in (empty if the view has no window column).
pub fn days_of(view: &CompiledView, states: &[RecordBatch]) -> Result<Vec<i32>, BatchError> {
    let Some(w) = view.window_state else {
        return Ok(Vec::new());
    };
    let mut days = std::collections::BTreeSet::new();
    for b in states {
        let d =
            cast(b.column(w), &DataType::Date32).map_err(|e| BatchError::query(&view.name, e))?;
        let d = d
            .as_any()
            .downcast_ref::<Date32Array>()
            .expect("cast to Date32");
        days.extend(d.iter().flatten());
    }
    Ok(days.into_iter().collect())
}

/// What a write replaces.
#[derive(Debug, Clone)]
pub enum Scope {
    /// The whole table (a full run, or the first run on an unpartitioned table).
    All,
    /// These window days only: an incremental run's new events fall in them.
    Days(Vec<i32>),
}

fn day_filter(days: &[i32]) -> Expr {
    col(WINDOW_DAY).in_list(
        days.iter()
            .map(|d| lit(ScalarValue::Date32(Some(*d))))
            .collect(),
        false,
    )
}

/// What a batch-view write committed.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    /// The version committed.
    pub version: i64,
    /// Data files the commit added.
    pub files: u64,
}

/// A view's batch table as it is now (a table with no version when no run wrote any).
pub(crate) async fn open_table(
    storage: &Storage,
    view: &CompiledView,
) -> Result<deltalake::DeltaTable, BatchError> {
    tributary_core::delta::open(storage.batch_view_table(&view.name))
        .await
        .map_err(|e| BatchError::delta(format!("batch view `{}`", view.name), e))
}

/// Write a view's batch states, computed over `_ingest_ts < cutoff`: `states` replace
/// every state in `scope`.
pub async fn write(
    storage: &Storage,
    view: &CompiledView,
    stamp: Stamp<'_>,
    scope: Scope,
    states: Vec<RecordBatch>,
) -> Result<Written, BatchError> {
    write_to(open_table(storage, view).await?, view, stamp, scope, states).await
}

/// [`write`] into `table`, opened by the caller: the commit is checked against its
/// snapshot, so a run whose snapshot another writer has moved past fails (and is run
/// again) instead of overwriting what it did not see.
pub async fn write_to(
    table: deltalake::DeltaTable,
    view: &CompiledView,
    stamp: Stamp<'_>,
    scope: Scope,
    states: Vec<RecordBatch>,
) -> Result<Written, BatchError> {
    let mut batches = to_storage(view, states)?;
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(storage_schema(view)));
    }
    let Stamp {
        cutoff,
        max_event_ts,
        definition,
        run_id,
        kind,
    } = stamp;
    let what = || format!("batch view `{}`", view.name);
    // The first states create the table, as its version 0. Committing them into a
    // table that does not exist is not safe with two writers (two serving processes
    // backfilling a view created at runtime): delta-rs retries the loser of version 0 as
    // version 1 without a conflict check, and its overwrite, made from an empty table,
    // left the winner's files beside its own (every state twice). No retry for a first
    // commit: the loser fails, and the run, tried again, overwrites what it now sees.
    let first = table.version().is_none();
    let mut props = CommitProperties::default()
        .with_application_transaction(Transaction::new(CUTOFF_APP_ID, cutoff))
        .with_application_transaction(Transaction::new(DEFINITION_APP_ID, definition));
    if let Some(t) = max_event_ts {
        props = props.with_application_transaction(Transaction::new(MAX_EVENT_TS_APP_ID, t));
    }
    if first {
        props = props.with_max_retries(0);
    }
    let props = props.with_metadata([
        ("tributary.cutoff".to_string(), json!(cutoff)),
        ("tributary.run".to_string(), json!(run_id)),
        ("tributary.kind".to_string(), json!(kind)),
        ("tributary.sql".to_string(), json!(view.sql)),
    ]);
    let write = table
        .write(batches)
        .with_save_mode(SaveMode::Overwrite)
        .with_commit_properties(props);
    let write = match scope {
        // The layout may change with the SQL (or from before partitioning): a whole
        // rewrite sets it.
        Scope::All => {
            let write = write.with_schema_mode(SchemaMode::Overwrite);
            match view.window_state {
                Some(_) => write.with_partition_columns([WINDOW_DAY]),
                None => write.with_partition_columns(Vec::<String>::new()),
            }
        }
        // New events whose states the view filtered out: only the cutoff moves.
        Scope::Days(days) if days.is_empty() => write.with_save_mode(SaveMode::Append),
        Scope::Days(days) => write.with_replace_where(day_filter(&days)),
    };
    let table = write.await.map_err(|e| BatchError::delta(what(), e))?;
    Ok(Written {
        version: table.version().unwrap_or(0) as i64,
        files: files_added(&table).await,
    })
}

/// Data files the table's latest commit added, from the metrics delta-rs writes into
/// the commit (0 if they cannot be read: the figure is for the run history only).
async fn files_added(table: &deltalake::DeltaTable) -> u64 {
    use futures::StreamExt;
    let Some(Ok(commit)) = table.history(Some(1)).next().await else {
        return 0;
    };
    commit
        .info
        .get("operationMetrics")
        .and_then(|m| m.get("num_added_files"))
        .and_then(|n| n.as_u64())
        .unwrap_or(0)
}

/// What a batch-view commit records beside the states.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    /// The cutoff the states cover up to.
    pub cutoff: i64,
    /// Newest event time below the cutoff.
    pub max_event_ts: Option<i64>,
    /// [`definition_hash`] of the view that computed the states.
    pub definition: i64,
    /// The run that wrote them.
    pub run_id: &'a str,
    /// `full` or `incremental`.
    pub kind: &'a str,
}

/// Load a view's latest batch states, or `None` if no batch run has written any.
pub async fn load(storage: &Storage, view: &CompiledView) -> Result<Option<BatchView>, BatchError> {
    load_table(open_table(storage, view).await?, view).await
}

/// A view's batch states as a past batch run left them (time travel), or `None` if the
/// view had none then.
pub async fn load_as_of(
    storage: &Storage,
    view: &CompiledView,
    as_of: &tributary_core::delta::AsOf,
) -> Result<Option<BatchView>, BatchError> {
    let what = || format!("batch view `{}` as of {as_of}", view.name);
    match tributary_core::delta::open_as_of(storage.batch_view_table(&view.name), as_of)
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
    let Some(head) = read_head(&table, view).await? else {
        return Ok(None);
    };
    let states = read_states(&table, view, None).await?;
    Ok(Some(BatchView {
        cutoff: head.cutoff,
        version: head.version,
        states,
        max_event_ts: head.max_event_ts,
        definition: head.definition,
    }))
}

/// What the latest commit of a batch-view table says about its states.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    /// The latest version.
    pub version: i64,
    /// Its cutoff.
    pub cutoff: i64,
    /// Newest event time below the cutoff.
    pub max_event_ts: Option<i64>,
    /// [`definition_hash`] of what computed the states (`None` for tables written before it was kept).
    pub definition: Option<i64>,
    /// Partitioned by [`WINDOW_DAY`], so a run can replace some days only.
    pub by_day: bool,
}

/// A view's latest batch commit in `table`, without its states (`None`: no run wrote
/// any).
pub(crate) async fn read_head(
    table: &deltalake::DeltaTable,
    view: &CompiledView,
) -> Result<Option<Head>, BatchError> {
    let what = || format!("batch view `{}`", view.name);
    let Some(version) = table.version() else {
        return Ok(None);
    };
    let snapshot = table.snapshot().map_err(|e| BatchError::delta(what(), e))?;
    let txn = |app: &'static str| async move {
        snapshot
            .transaction_version(table.log_store().as_ref(), app)
            .await
            .map_err(|e| BatchError::delta(what(), e))
    };
    let Some(cutoff) = txn(CUTOFF_APP_ID).await? else {
        return Err(BatchError::View(
            view.name.clone(),
            "batch view table has no cutoff".into(),
        ));
    };
    let by_day = snapshot
        .metadata()
        .partition_columns()
        .iter()
        .any(|c| c == WINDOW_DAY);
    Ok(Some(Head {
        version: version as i64,
        cutoff,
        max_event_ts: txn(MAX_EVENT_TS_APP_ID).await?,
        definition: txn(DEFINITION_APP_ID).await?,
        by_day,
    }))
}

/// The state columns (`c0`, `c1`, …) of a batch-view table, in the partial schema;
/// with `days`, only the partitions of those days are read.
pub(crate) async fn read_states(
    table: &deltalake::DeltaTable,
    view: &CompiledView,
    days: Option<&[i32]>,
) -> Result<Vec<RecordBatch>, BatchError> {
    let what = || format!("batch view `{}`", view.name);
    let verr = |e: datafusion::error::DataFusionError| BatchError::query(&view.name, e);
    let ctx = session();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| BatchError::delta(what(), e))?;
    let provider = table
        .table_provider()
        .await
        .map_err(|e| BatchError::delta(what(), e))?;
    let mut df = ctx.read_table(provider).map_err(verr)?;
    if let Some(days) = days {
        if days.is_empty() {
            return Ok(Vec::new());
        }
        df = df.filter(day_filter(days)).map_err(verr)?;
    }
    let states: Vec<String> = (0..view.partial_schema.fields().len())
        .map(|i| format!("c{i}"))
        .collect();
    let names: Vec<&str> = states.iter().map(String::as_str).collect();
    let batches = df
        .select_columns(&names)
        .map_err(verr)?
        .collect()
        .await
        .map_err(verr)?;
    view.conform(batches)
        .map_err(|e| BatchError::query(&view.name, e))
}

/// The cutoff of a view's latest batch states, without loading them.
pub async fn load_cutoff(
    storage: &Storage,
    view: &CompiledView,
) -> Result<Option<i64>, BatchError> {
    cutoff_of(&open_table(storage, view).await?, view).await
}

/// The cutoff of the states in `table`, a view's batch table (`None`: no states yet).
pub(crate) async fn cutoff_of(
    table: &deltalake::DeltaTable,
    view: &CompiledView,
) -> Result<Option<i64>, BatchError> {
    let what = || format!("batch view `{}`", view.name);
    if table.version().is_none() {
        return Ok(None);
    }
    let snapshot = table.snapshot().map_err(|e| BatchError::delta(what(), e))?;
    snapshot
        .transaction_version(table.log_store().as_ref(), CUTOFF_APP_ID)
        .await
        .map_err(|e| BatchError::delta(what(), e))
}
