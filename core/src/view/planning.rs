//! The DataFusion sessions views are planned and run in: one that keeps the partial
//! and final phases apart, one for the batch layer's big scans, and the one a view is
//! compiled in (every stream and dimension table registered).

use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::input_schema;
use crate::dimension::DimensionTable;
use crate::error::Result;
use crate::schema::StreamSchema;

/// A DataFusion session that keeps the partial and final phases apart.
pub fn session() -> SessionContext {
    let config = SessionConfig::new()
        .with_target_partitions(1)
        .with_information_schema(false);
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(crate::cloud::runtime())
        .with_default_features()
        .with_physical_optimizer_rules(vec![])
        .build();
    let ctx = SessionContext::new_with_state(state);
    register_udfs(&ctx);
    ctx
}

/// A session for the batch layer's big scans: DataFusion's physical optimizer on (the
/// scan is split over every core), except the rules that would fuse the partial and
/// final phases or answer an aggregate from statistics. Partial aggregation is never
/// skipped: states of single rows would only move the work into [`CompiledView::reduce`].
pub fn parallel_session() -> SessionContext {
    parallel_session_with(None)
}

/// [`parallel_session`] with the scan split into `partitions` (default: one per core).
pub fn parallel_session_with(partitions: Option<usize>) -> SessionContext {
    let mut config = SessionConfig::new().with_information_schema(false);
    if let Some(n) = partitions {
        config = config.with_target_partitions(n.max(1));
    }
    config
        .options_mut()
        .execution
        .skip_partial_aggregation_probe_rows_threshold = usize::MAX;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(crate::cloud::runtime())
        .with_default_features()
        .build();
    let rules = state
        .physical_optimizers()
        .iter()
        .filter(|r| {
            !matches!(
                r.name(),
                "CombinePartialFinalAggregate" | "aggregate_statistics"
            )
        })
        .cloned()
        .collect();
    let state = SessionStateBuilder::new_from_existing(state)
        .with_physical_optimizer_rules(rules)
        .build();
    let ctx = SessionContext::new_with_state(state);
    register_udfs(&ctx);
    ctx
}

/// A session to compile in: every stream as an empty table of its input schema (those
/// in `keyed` with their scans named, see [`super::stream_join::STREAM_KEY`]), and the tables.
pub(super) fn compile_session(
    streams: &[StreamSchema],
    tables: &[Arc<DimensionTable>],
    keyed: &[&str],
) -> Result<SessionContext> {
    let ctx = session();
    for s in streams {
        let mut schema = input_schema(s);
        if keyed.contains(&s.name.as_str()) {
            schema = super::stream_join::keyed_schema(&schema, &s.name);
        }
        let table = MemTable::try_new(schema, vec![vec![]])?;
        ctx.register_table(s.name.as_str(), Arc::new(table))?;
    }
    register_tables(&ctx, tables)?;
    Ok(ctx)
}

/// Register Tributary's window functions (`tributary_hop`, `tributary_session`).
pub(super) fn register_udfs(ctx: &SessionContext) {
    for udf in crate::window::udfs() {
        ctx.register_udf(udf);
    }
}

/// Register each dimension table's current rows under its name.
pub(super) fn register_tables(ctx: &SessionContext, tables: &[Arc<DimensionTable>]) -> Result<()> {
    for t in tables {
        let rows = MemTable::try_new(t.schema.clone(), vec![t.batches().as_ref().clone()])?;
        ctx.register_table(t.name.as_str(), Arc::new(rows))?;
    }
    Ok(())
}

/// Whether `sql` plans over `stream` with its strings as Arrow string views into partial
/// states that cast to `partial`, the layout every layer keeps. A function of the view
/// that takes no string views, or states of another shape, leave the batch layer
/// reading plain Utf8 (see [`super::CompiledView::reads_string_views`]).
pub(super) async fn plans_over_string_views(
    sql: &str,
    stream: &StreamSchema,
    partial: &datafusion::arrow::datatypes::SchemaRef,
) -> bool {
    use datafusion::arrow::compute::can_cast_types;
    let schema = super::with_string_views(&input_schema(stream));
    let ctx = session();
    let registered = MemTable::try_new(schema, vec![vec![]])
        .map_err(|e| e.to_string())
        .and_then(|t| {
            ctx.register_table(stream.name.as_str(), Arc::new(t))
                .map_err(|e| e.to_string())
        });
    if registered.is_err() {
        return false;
    }
    let state = ctx.state();
    let Ok(logical) = state.create_logical_plan(sql).await else {
        return false;
    };
    let Ok(physical) = state.create_physical_plan(&logical).await else {
        return false;
    };
    let Some(theirs) = super::physical::find_partial(&physical).map(|p| p.schema()) else {
        return false;
    };
    theirs.fields().len() == partial.fields().len()
        && theirs.fields().iter().zip(partial.fields()).all(|(a, b)| {
            a.data_type() == b.data_type() || can_cast_types(a.data_type(), b.data_type())
        })
}
