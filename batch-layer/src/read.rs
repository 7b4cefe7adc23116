//! A batch run's read of the master table: the rows of `_ingest_ts` in `[from, cutoff)`
//! (files wholly inside the range unfiltered, those on its edges through the filter;
//! under a dedup rule, the rule applied first with one horizon of look-back), cast to
//! the speed layer's input types, and the view's partial plan over them, metered.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::Expr;
use datafusion::prelude::{SessionContext, cast, col, lit};
use datafusion::scalar::ScalarValue;
use deltalake::DeltaTable;
use tributary_core::schema::{INGEST_TS, StreamSchema, UTC};
use tributary_core::view::{CompiledView, SOURCE_BATCH, SOURCE_COLUMN, with_string_views};

use crate::dedup::without_repeats;
use crate::engine::Engine;
use crate::error::{BatchError, is_storage_error};
use crate::isolate::partial_isolating_stream;
use crate::scan::{Meter, MeteredTable, range_files};

/// What a view's read produced: its states, the events read, the newest event time.
pub(crate) type Partial = (Vec<RecordBatch>, u64, Option<i64>);

fn ts(t: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(Some(t), Some(UTC.into())))
}

/// `_ingest_ts` in `[from, cutoff)`, or below `cutoff` without `from`.
fn ingest_range(from: Option<i64>, cutoff: i64) -> Expr {
    match from {
        Some(f) => col(INGEST_TS)
            .gt_eq(ts(f))
            .and(col(INGEST_TS).lt(ts(cutoff))),
        None => col(INGEST_TS).lt(ts(cutoff)),
    }
}

/// The view's partial states over the master table's events with `_ingest_ts` in
/// `[from, cutoff)` (from the beginning when `from` is `None`), how many events that
/// was, and the newest event time among them.
pub(crate) async fn partial_over_master(
    master: Option<&DeltaTable>,
    stream: &StreamSchema,
    view: &CompiledView,
    from: Option<i64>,
    cutoff: i64,
    engine: &Engine,
) -> Result<Partial, BatchError> {
    let Some(master) = master else {
        return Ok((Vec::new(), 0, None));
    };
    let columns = Columns::of_view(view, engine);
    let Some(df) = master_rows(master, stream, &view.name, columns, from, cutoff, engine).await?
    else {
        return Ok((Vec::new(), 0, None));
    };
    let Engine::Ballista(cluster) = engine else {
        return partial_states(view, stream, df).await;
    };
    match cluster.partial_states(view, stream, df).await {
        Err(e) if cluster.falls_back(&e) => {
            cluster.note_fallback(&e);
            let columns = Columns::of_view(view, &Engine::Local);
            let local = master_rows(
                master,
                stream,
                &view.name,
                columns,
                from,
                cutoff,
                &Engine::Local,
            )
            .await?;
            match local {
                Some(df) => partial_states(view, stream, df).await,
                None => Ok((Vec::new(), 0, None)),
            }
        }
        other => other,
    }
}

/// The master table's `files` (every file of its snapshot when `None`) as a table the
/// engine can scan: Delta's own provider here; plain Parquet files for Ballista, whose
/// executors cannot run Delta's scan (the snapshot already chose the files).
async fn files_table(
    master: &DeltaTable,
    reader: &SessionContext,
    engine: &Engine,
    files: Option<Vec<String>>,
) -> Result<Arc<dyn TableProvider>, BatchError> {
    let what = || "master table".to_string();
    if let Engine::Ballista(_) = engine {
        let files = match files {
            Some(files) => files,
            None => all_files(master).map_err(|e| BatchError::delta(what(), e))?,
        };
        return crate::ballista::parquet_files_table(master, files).await;
    }
    let mut builder = master
        .table_provider()
        .with_session(Arc::new(reader.state()));
    if let Some(files) = files {
        builder = builder.with_file_paths(files);
    }
    builder.await.map_err(|e| BatchError::delta(what(), e))
}

fn all_files(master: &DeltaTable) -> deltalake::DeltaResult<Vec<String>> {
    Ok(master
        .snapshot()?
        .log_data()
        .iter()
        .map(|f| f.path().to_string())
        .collect())
}

/// The columns a read hands on, and whether strings come as views (uncopied) or as
/// plain Utf8.
pub(crate) struct Columns {
    exprs: Vec<Expr>,
    string_views: bool,
}

impl Columns {
    /// A view's input columns (plus `_src`); strings as views where the view allows it
    /// and the scan runs here (see [`CompiledView::reads_string_views`]).
    fn of_view(view: &CompiledView, engine: &Engine) -> Columns {
        let string_views = view.reads_string_views() && matches!(engine, Engine::Local);
        if !string_views {
            return Columns::of_input(&view.input_schema);
        }
        let schema = with_string_views(&view.input_schema);
        Columns {
            exprs: input_columns(&schema),
            string_views,
        }
    }

    /// Input columns (plus `_src`) cast to exactly the speed layer's input types:
    /// Parquet hands strings back as views, and some sketches (approx_distinct) hash
    /// views and strings apart.
    pub(crate) fn of_input(input: &SchemaRef) -> Columns {
        Columns {
            exprs: input_columns(input),
            string_views: false,
        }
    }

    /// A stream's events as its view schema gives them (declared fields, `_ingest_ts`).
    pub(crate) fn of_stream(stream: &StreamSchema) -> Columns {
        let exprs = stream
            .view_schema()
            .fields()
            .iter()
            .map(|f| cast(col(f.name().as_str()), f.data_type().clone()).alias(f.name()))
            .collect();
        Columns {
            exprs,
            string_views: false,
        }
    }
}

fn input_columns(input: &SchemaRef) -> Vec<Expr> {
    input
        .fields()
        .iter()
        .filter(|f| f.name() != SOURCE_COLUMN)
        .map(|f| cast(col(f.name().as_str()), f.data_type().clone()).alias(f.name()))
        .chain(std::iter::once(lit(SOURCE_BATCH).alias(SOURCE_COLUMN)))
        .collect()
}

/// The rows of `[from, cutoff)` under the stream's dedup rule, as `columns`, read for
/// `who` (a view's name, in errors); `None` when no file holds any.
pub(crate) async fn master_rows(
    master: &DeltaTable,
    stream: &StreamSchema,
    who: &str,
    columns: Columns,
    from: Option<i64>,
    cutoff: i64,
    engine: &Engine,
) -> Result<Option<DataFrame>, BatchError> {
    let verr = |e: datafusion::error::DataFusionError| BatchError::query(who, e);
    let what = || format!("master table of `{}`", stream.name);
    let Columns {
        exprs: columns,
        string_views,
    } = columns;
    let reader = reader_session(string_views);
    master
        .update_datafusion_session(&reader.state())
        .map_err(|e| BatchError::delta(what(), e))?;
    let provider = |files: Option<Vec<String>>| files_table(master, &reader, engine, files);
    let in_range = ingest_range(from, cutoff);
    let Some(spec) = &stream.dedup else {
        // Files wholly inside the range skip the range filter; only those on its
        // edges go through it.
        let files = range_files(master, from, cutoff).map_err(|e| BatchError::delta(what(), e))?;
        let mut parts = Vec::new();
        for (paths, filtered) in [(files.inside, false), (files.edge, true)] {
            if paths.is_empty() {
                continue;
            }
            let table = provider(Some(paths)).await?;
            let mut part = reader.read_table(table).map_err(verr)?;
            if filtered {
                part = part.filter(in_range.clone()).map_err(verr)?;
            }
            parts.push(part.select(columns.clone()).map_err(verr)?);
        }
        let mut parts = parts.into_iter();
        let Some(first) = parts.next() else {
            return Ok(None);
        };
        return parts
            .try_fold(first, |all, part| all.union(part))
            .map(Some)
            .map_err(verr);
    };
    let table = provider(None).await?;
    let rows = reader.read_table(table).map_err(verr)?;
    // The rule looks back one horizon: an incremental run reads that much before its
    // range so a repeat of an older copy is still dropped.
    let window = ingest_range(from.map(|f| f - spec.horizon_us), cutoff);
    rows.filter(window)
        .and_then(|df| without_repeats(df, spec))
        .and_then(|df| df.filter(in_range))
        .and_then(|df| df.select(columns))
        .map(Some)
        .map_err(verr)
}

/// An ordinary session plans the read (the file scan split over every core, the dedup
/// rule's sort). Strings come as plain Utf8, the speed layer's type, so that sketches
/// hash them alike; or, with `string_views`, as Parquet's views, left uncopied.
fn reader_session(string_views: bool) -> SessionContext {
    let mut config = datafusion::prelude::SessionConfig::new();
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = string_views;
    SessionContext::new_with_config_rt(config, tributary_core::cloud::runtime())
}

/// The view's partial plan over `df`, metered; rows the view cannot process are set
/// aside one by one, as the speed layer does, so both layers leave out the same.
async fn partial_states(
    view: &CompiledView,
    stream: &StreamSchema,
    df: DataFrame,
) -> Result<Partial, BatchError> {
    let metered = |df: DataFrame| {
        let meter = Arc::new(Meter::default());
        let table = MeteredTable::new(
            df,
            &view.event_time,
            stream.max_event_lead_us,
            meter.clone(),
        );
        (Arc::new(table), meter)
    };
    let (table, meter) = metered(df.clone());
    let states = match view.run_partial(table).await {
        Ok(states) => states,
        Err(e) if !is_storage_error(&e) => {
            // A row the view cannot process must not fail every run for ever: go
            // through the rows again, setting aside those that fail alone
            // (core::quarantine).
            tracing::warn!(view = %view.name, error = %e, "batch run failed on its rows; isolating them");
            let (table, meter) = metered(df);
            let states = partial_isolating_stream(view, table).await?;
            let (rows, max_event_ts) = meter.read();
            return Ok((states, rows, max_event_ts));
        }
        Err(e) => return Err(BatchError::query(&view.name, e)),
    };
    let (rows, max_event_ts) = meter.read();
    Ok((states, rows, max_event_ts))
}
