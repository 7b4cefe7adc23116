//! View compilation: one SQL text, split into a partial plan and a final plan.
//!
//! DataFusion already plans every grouped query in two phases: an `AggregateExec` in
//! `Partial` mode that turns rows into aggregate *states*, and one in `Final` mode that
//! turns states into values. A view is planned once (physical optimizer rules off, so
//! the two phases are never fused) and cut at that seam:
//!
//! - the speed layer and the batch layer run the **partial** side over their own input
//!   (a micro-batch, the master table) and keep the states;
//! - `PartialReduce` merges states into fewer states (compaction);
//! - serving runs the **final** side over the union of batch and speed states.
//!
//! To tell which layer a row came from, compilation adds one hidden aggregate,
//! `bit_or(_src) AS _src`, over a hidden input column `_src` that the batch layer sets
//! to 1 and the speed layer to 2: after the final plan, 1 means batch, 2 speed, 3 both.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int32Array, RecordBatch, TimestampMicrosecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::MemTable;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::{SessionStateBuilder, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, collect};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, Ident, Query, Select, SelectItem, SetExpr, Statement, TableFactor,
    visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use std::ops::ControlFlow;

use crate::config::ViewConfig;
use crate::dimension::{DIMENSION_KEY, DimensionTable};
use crate::error::{CoreError, Result};
use crate::schema::StreamSchema;
use crate::window::{
    HOP_COLUMN, HOP_FUNCTION, HOP_SQL_NAME, Hop, WindowKind, WindowSpec, interval_micros,
    timestamp_micros,
};

/// Hidden column that tags each input row with the layer that read it.
pub const SOURCE_COLUMN: &str = "_src";
pub const SOURCE_BATCH: i32 = 1;
pub const SOURCE_SPEED: i32 = 2;

/// Aggregates whose states merge across layers (exactly, or for the approximate ones
/// within their sketch's own error).
const SUPPORTED_AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "approx_distinct",
    "approx_percentile_cont",
    "approx_median",
];

/// Aggregates written with `WITHIN GROUP (ORDER BY …)`, which is their argument.
const ORDERED_AGGREGATES: &[&str] = &["approx_percentile_cont"];

/// A view compiled once, shared by every layer.
#[derive(Debug, Clone)]
pub struct CompiledView {
    pub name: String,
    /// The SQL as the user wrote it.
    pub sql: String,
    /// The SQL every layer plans: the user's, plus the hidden `_src` aggregate.
    exec_sql: String,
    pub stream: String,
    /// Output columns that are group keys (besides the window).
    pub keys: Vec<String>,
    /// Output column holding the window start.
    pub window: String,
    /// The window's kind and widths, for `complete` and late-event accounting.
    pub window_spec: WindowSpec,
    /// Watermark = newest event time seen minus this (microseconds).
    pub allowed_lateness_us: i64,
    /// The stream's event-time column.
    pub event_time: String,
    /// Output columns holding aggregate values.
    pub values: Vec<String>,
    /// Schema of the rows `run_partial` produces: group columns, then states.
    pub partial_schema: SchemaRef,
    /// Which column of [`CompiledView::partial_schema`] holds the window start (batch
    /// views are partitioned by its day).
    pub window_state: Option<usize>,
    /// Schema of the final rows, `_src` last.
    pub output_schema: SchemaRef,
    /// Input the partial plan reads: the stream's view schema plus `_src`.
    pub input_schema: SchemaRef,
    final_template: Arc<dyn ExecutionPlan>,
    /// Dimension tables the view may join with (their current rows at each run).
    tables: Vec<Arc<DimensionTable>>,
    /// The partial side, planned once; each micro-batch only swaps its data source in.
    partial_template: Arc<dyn ExecutionPlan>,
    task_ctx: Arc<TaskContext>,
}

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
    ctx.register_udf(Hop::udf());
    ctx
}

/// A session for the batch layer's big scans: DataFusion's physical optimizer on (the
/// scan is split over every core), except the rules that would fuse the partial and
/// final phases or answer an aggregate from statistics. Partial aggregation is never
/// skipped: states of single rows would only move the work into [`CompiledView::reduce`].
pub fn parallel_session() -> SessionContext {
    let mut config = SessionConfig::new().with_information_schema(false);
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
    ctx.register_udf(Hop::udf());
    ctx
}

/// The stream schema the views plan against: view schema plus `_src`.
pub fn input_schema(stream: &StreamSchema) -> SchemaRef {
    let mut fields: Vec<Field> = stream
        .view_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(SOURCE_COLUMN, DataType::Int32, false));
    Arc::new(Schema::new(fields))
}

/// Append the `_src` column to a batch in view-schema layout.
pub fn tag_source(batch: &RecordBatch, tag: i32, input: &SchemaRef) -> Result<RecordBatch> {
    let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
    cols.push(Arc::new(Int32Array::from(vec![tag; batch.num_rows()])));
    Ok(RecordBatch::try_new(input.clone(), cols)?)
}

impl CompiledView {
    /// Compile `cfg` against the declared streams. `key` is the configuration path
    /// (e.g. `views[0]`) used in error messages.
    pub async fn compile(cfg: &ViewConfig, streams: &[StreamSchema]) -> Result<CompiledView> {
        Self::compile_with(cfg, streams, &[]).await
    }

    /// Compile with dimension tables the view may join its stream with.
    pub async fn compile_with(
        cfg: &ViewConfig,
        streams: &[StreamSchema],
        tables: &[Arc<DimensionTable>],
    ) -> Result<CompiledView> {
        let err = |message: String| CoreError::View {
            view: cfg.name.clone(),
            message,
        };
        let exec_sql = rewrite(&cfg.sql).map_err(err)?;

        let ctx = session();
        for s in streams {
            let schema = input_schema(s);
            let table = MemTable::try_new(schema, vec![vec![]])?;
            ctx.register_table(s.name.as_str(), Arc::new(table))?;
        }
        register_tables(&ctx, tables)?;
        let logical = ctx
            .state()
            .create_logical_plan(&exec_sql)
            .await
            .map_err(|e| err(format!("SQL does not plan: {}", strip_df(&e))))?;
        let shape = check_shape(&logical, streams, tables).map_err(err)?;
        let physical = ctx
            .state()
            .create_physical_plan(&logical)
            .await
            .map_err(|e| err(format!("SQL does not plan: {}", strip_df(&e))))?;
        let partial = find_partial(&physical)
            .ok_or_else(|| err("internal: no partial aggregate in the physical plan".into()))?;
        let stream = streams
            .iter()
            .find(|s| s.name == shape.stream)
            .expect("check_shape found the stream");
        let window_state = output_source(&physical, &shape.window);
        Ok(CompiledView {
            name: cfg.name.clone(),
            sql: cfg.sql.clone(),
            exec_sql,
            stream: shape.stream,
            keys: shape.keys,
            window: shape.window,
            window_spec: shape.window_spec,
            allowed_lateness_us: (cfg.allowed_lateness_ms as i64).saturating_mul(1000),
            event_time: stream.event_time.clone(),
            values: shape.values,
            partial_schema: partial.schema(),
            window_state,
            output_schema: physical.schema(),
            input_schema: input_schema(stream),
            final_template: physical,
            tables: tables.to_vec(),
            partial_template: partial,
            task_ctx: ctx.task_ctx(),
        })
    }

    /// Run the partial side over `source` (registered as the view's stream; it must
    /// have [`CompiledView::input_schema`]'s columns), on every core: the source's
    /// partitions are aggregated side by side and their states merged with
    /// [`CompiledView::reduce`]. Returns states in [`CompiledView::partial_schema`].
    pub async fn run_partial(&self, source: Arc<dyn TableProvider>) -> Result<Vec<RecordBatch>> {
        let ctx = parallel_session();
        ctx.register_table(self.stream.as_str(), source)?;
        register_tables(&ctx, &self.tables)?;
        let logical = ctx.state().create_logical_plan(&self.exec_sql).await?;
        let physical = ctx.state().create_physical_plan(&logical).await?;
        let partial = find_partial(&physical).ok_or_else(|| CoreError::View {
            view: self.name.clone(),
            message: "internal: no partial aggregate in the physical plan".into(),
        })?;
        let partitions = partial.output_partitioning().partition_count();
        let states = self.conform(collect(partial, ctx.task_ctx()).await?)?;
        // Each partition holds states of the same groups: one row per group again.
        if partitions > 1 {
            self.reduce(states).await
        } else {
            Ok(states)
        }
    }

    /// Run the partial side over in-memory batches in input-schema layout. The plan is
    /// not made again: the compiled one gets these batches as its scan, so a small
    /// micro-batch costs execution only.
    pub async fn run_partial_batches(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let mut batches = Some(batches);
        let input = self.input_schema.clone();
        let plan = self
            .partial_template
            .clone()
            .transform_up(|node| {
                if !node.children().is_empty() {
                    return Ok(Transformed::no(node));
                }
                // A dimension table's scan reads its current rows; the stream's scan
                // reads the micro-batch. Each keeps the columns it was planned with.
                let Some(planned) = node
                    .downcast_ref::<DataSourceExec>()
                    .and_then(|d| d.data_source().downcast_ref::<MemorySourceConfig>())
                else {
                    return Ok(Transformed::no(node));
                };
                let table = planned.original_schema();
                let (source, data) = match table.metadata().get(DIMENSION_KEY) {
                    Some(name) => {
                        let table = self
                            .tables
                            .iter()
                            .find(|t| &t.name == name)
                            .expect("compiled with this table");
                        (table.schema.clone(), table.batches().as_ref().clone())
                    }
                    None => (input.clone(), batches.take().unwrap_or_default()),
                };
                let projection = planned.projection().clone();
                let scan = MemorySourceConfig::try_new_exec(&[data], source, projection)?;
                Ok(Transformed::yes(scan as Arc<dyn ExecutionPlan>))
            })?
            .data;
        // Operators that keep state in the plan (a hash join's build side) start afresh.
        let plan = reset_plan_states(plan)?;
        let out = collect(plan, self.task_ctx.clone()).await?;
        self.conform(out)
    }

    /// The view's SQL run in one ordinary pass (optimizer on, no partial/final cut) over
    /// `batches` in input-schema layout: the reference every layer's answer must equal.
    pub async fn run_reference(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let ctx = SessionContext::new();
        ctx.register_udf(Hop::udf());
        let table = MemTable::try_new(self.input_schema.clone(), vec![batches])?;
        ctx.register_table(self.stream.as_str(), Arc::new(table))?;
        register_tables(&ctx, &self.tables)?;
        Ok(ctx.sql(&self.exec_sql).await?.collect().await?)
    }

    /// The watermark given the newest event time seen.
    pub fn watermark(&self, max_event_ts: Option<i64>) -> Option<i64> {
        max_event_ts.map(|t| t.saturating_sub(self.allowed_lateness_us))
    }

    /// How many of `batch`'s events (in input or view-schema layout) update a window
    /// that `watermark` has already closed.
    pub fn count_late(&self, batch: &RecordBatch, watermark: Option<i64>) -> u64 {
        let Some(w) = watermark else { return 0 };
        let Some(ts) = batch
            .column_by_name(&self.event_time)
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        else {
            return 0;
        };
        ts.iter()
            .flatten()
            .filter(|t| self.window_spec.first_end(*t) <= w)
            .count() as u64
    }

    /// Merge states into fewer states (same schema), e.g. to compact a segment.
    pub async fn reduce(&self, states: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let partial = find_partial(&self.final_template).expect("compiled plans have one");
        let agg = partial
            .downcast_ref::<AggregateExec>()
            .expect("find_partial returns an AggregateExec");
        let source =
            MemorySourceConfig::try_new_exec(&[states], self.partial_schema.clone(), None)?;
        let reduce = AggregateExec::try_new(
            AggregateMode::PartialReduce,
            agg.group_expr().as_final(),
            agg.aggr_expr().to_vec(),
            agg.filter_expr().to_vec(),
            source,
            agg.input_schema(),
        )?;
        let out = collect(Arc::new(reduce), session().task_ctx()).await?;
        self.conform(out)
    }

    /// Turn states into final rows (in [`CompiledView::output_schema`]).
    pub async fn finalize(&self, states: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let states = self.conform(states)?;
        let source =
            MemorySourceConfig::try_new_exec(&[states], self.partial_schema.clone(), None)?;
        let plan = self
            .final_template
            .clone()
            .transform_up(|node| {
                if is_partial(&node) {
                    Ok(Transformed::yes(source.clone() as Arc<dyn ExecutionPlan>))
                } else {
                    Ok(Transformed::no(node))
                }
            })?
            .data;
        Ok(collect(plan, session().task_ctx()).await?)
    }

    /// Cast state batches to the canonical partial schema: storage round trips may
    /// change physical types (e.g. strings read back as views), never values.
    pub fn conform(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        conform_to(&self.partial_schema, batches)
    }
}

/// Register each dimension table's current rows under its name.
fn register_tables(ctx: &SessionContext, tables: &[Arc<DimensionTable>]) -> Result<()> {
    for t in tables {
        let rows = MemTable::try_new(t.schema.clone(), vec![t.batches().as_ref().clone()])?;
        ctx.register_table(t.name.as_str(), Arc::new(rows))?;
    }
    Ok(())
}

/// Cast batches positionally to `schema` (same column count required).
pub fn conform_to(schema: &SchemaRef, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
    batches
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            if b.schema() == *schema {
                return Ok(b);
            }
            if b.num_columns() != schema.fields().len() {
                return Err(CoreError::Log(format!(
                    "state batch has {} columns, expected {}",
                    b.num_columns(),
                    schema.fields().len()
                )));
            }
            let cols = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| {
                    if c.data_type() == f.data_type() {
                        Ok(c.clone())
                    } else {
                        cast(c, f.data_type())
                    }
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let relaxed = Arc::new(Schema::new(
                schema
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone().with_nullable(true))
                    .collect::<Vec<_>>(),
            ));
            let batch = RecordBatch::try_new(relaxed, cols)?;
            // Keep the canonical schema when nullability allows it, so that plans
            // built against it accept the batch.
            Ok(RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).unwrap_or(batch))
        })
        .collect()
}

fn is_partial(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<AggregateExec>()
        .is_some_and(|a| *a.mode() == AggregateMode::Partial)
}

fn find_partial(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    if is_partial(plan) {
        return Some(plan.clone());
    }
    plan.children().into_iter().find_map(find_partial)
}

/// The group column of the final aggregate that becomes output column `name`, followed
/// down through projections and the operators that pass columns through. Final and
/// partial aggregates order their group columns alike, so this is also its index in the
/// partial states.
fn output_source(plan: &Arc<dyn ExecutionPlan>, name: &str) -> Option<usize> {
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_plan::projection::ProjectionExec;
    let mut index = plan.schema().index_of(name).ok()?;
    let mut node = plan.clone();
    loop {
        if let Some(agg) = node.downcast_ref::<AggregateExec>() {
            return (index < agg.group_expr().expr().len()).then_some(index);
        }
        if let Some(projection) = node.downcast_ref::<ProjectionExec>() {
            let expr = &projection.expr().get(index)?.expr;
            index = expr.downcast_ref::<Column>()?.index();
        } else if node.children().len() != 1 || node.schema() != node.children()[0].schema() {
            return None;
        }
        node = node.children()[0].clone();
    }
}

fn strip_df(e: &datafusion::error::DataFusionError) -> String {
    e.to_string()
        .trim_start_matches("Error during planning: ")
        .to_string()
}

/// Parse the view's SQL, check it is one plain SELECT, add `bit_or(_src) AS _src`, and
/// turn a `hop(…)` window into a column of the stream unnested per window.
fn rewrite(sql: &str) -> std::result::Result<String, String> {
    let dialect = GenericDialect {};
    let mut statements =
        Parser::parse_sql(&dialect, sql).map_err(|e| format!("SQL does not parse: {e}"))?;
    if statements.len() != 1 {
        return Err(format!(
            "expected exactly one SELECT statement, got {}",
            statements.len()
        ));
    }
    let mut statement = statements.remove(0);
    let Statement::Query(query) = &mut statement else {
        return Err("a view must be a SELECT query".into());
    };
    if query.with.is_some() {
        return Err("WITH (common table expressions) is not supported in a view".into());
    }
    if query.order_by.is_some() {
        return Err(
            "ORDER BY is not supported in a view: order rows when you query it (`order`)".into(),
        );
    }
    if query.limit_clause.is_some() || query.fetch.is_some() {
        return Err("LIMIT/FETCH is not supported in a view: limit rows when you query it".into());
    }
    let hop_call = replace_hop_calls(query.as_mut())?;
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(
            "a view must be a single SELECT (no UNION, INTERSECT, EXCEPT or VALUES)".into(),
        );
    };
    if select.distinct.is_some() {
        return Err("SELECT DISTINCT is not supported in a view".into());
    }
    if let Some(call) = hop_call {
        let [from] = select.from.as_mut_slice() else {
            return Err("a view reads exactly one stream in FROM".into());
        };
        let TableFactor::Table { name, alias, .. } = &from.relation else {
            return Err("hop(…) windows need the stream itself in FROM, not a subquery".into());
        };
        let alias = alias
            .as_ref()
            .map(|a| a.name.to_string())
            .unwrap_or_else(|| name.0.last().map(|p| p.to_string()).unwrap_or_default());
        let derived = format!(
            "SELECT * FROM (SELECT *, unnest({call}) AS {HOP_COLUMN} FROM {name}) AS {alias}"
        );
        from.relation = first_select(&derived).from[0].relation.clone();
    }
    let hidden = first_select(&format!(
        "SELECT bit_or({SOURCE_COLUMN}) AS {SOURCE_COLUMN}"
    ));
    let item: SelectItem = hidden.projection[0].clone();
    select.projection.push(item);
    Ok(statement.to_string())
}

/// Replace every `hop(ts, size, slide)` by the hopping-window column; return the call
/// that computes it (all occurrences must be the same window).
fn replace_hop_calls(query: &mut Query) -> std::result::Result<Option<String>, String> {
    let mut call: Option<String> = None;
    let mut problem: Option<String> = None;
    let _ = visit_expressions_mut(query, |e| {
        if let SqlExpr::Function(f) = e {
            let name = f.name.to_string().to_lowercase();
            if name == "session" || name == "session_window" {
                problem = Some(
                    "session windows are not supported: a late event can join two sessions whose \
                     states were already kept apart, so merged answers could not stay exact; use \
                     date_bin (tumbling) or hop (hopping) windows"
                        .into(),
                );
            } else if name == HOP_SQL_NAME {
                let this = format!("{HOP_FUNCTION}{}", f.args);
                if call.as_ref().is_some_and(|c| c != &this) {
                    problem = Some("a view may group by only one window".into());
                }
                call = Some(this);
                *e = SqlExpr::Identifier(Ident::new(HOP_COLUMN));
            }
        }
        ControlFlow::<()>::Continue(())
    });
    match problem {
        Some(p) => Err(p),
        None => Ok(call),
    }
}

fn first_select(sql: &str) -> Select {
    let parsed = Parser::parse_sql(&GenericDialect {}, sql).expect("generated SQL parses");
    let Statement::Query(q) = &parsed[0] else {
        unreachable!("generated SQL is a query")
    };
    let SetExpr::Select(s) = q.body.as_ref() else {
        unreachable!("generated SQL is a SELECT")
    };
    s.as_ref().clone()
}

struct Shape {
    stream: String,
    keys: Vec<String>,
    window: String,
    window_spec: WindowSpec,
    values: Vec<String>,
}

/// Check the logical plan is the supported shape: a projection (and HAVING filter)
/// over one aggregate over filters/projections of one stream.
fn check_shape(
    plan: &LogicalPlan,
    streams: &[StreamSchema],
    tables: &[Arc<DimensionTable>],
) -> std::result::Result<Shape, String> {
    let LogicalPlan::Projection(projection) = plan else {
        return Err(format!("unsupported query shape: {}", plan.display()));
    };
    // Walk down to the aggregate through HAVING filters.
    let mut node = projection.input.as_ref();
    let aggregate = loop {
        match node {
            LogicalPlan::Aggregate(a) => break a,
            LogicalPlan::Filter(f) => node = f.input.as_ref(),
            other => return Err(unsupported(other)),
        }
    };
    // Below the aggregate: filters, projections and exactly one stream.
    let mut node = aggregate.input.as_ref();
    let stream_name = loop {
        match node {
            LogicalPlan::Filter(f) => node = f.input.as_ref(),
            LogicalPlan::Projection(p) => node = p.input.as_ref(),
            LogicalPlan::SubqueryAlias(s) => node = s.input.as_ref(),
            // Only the one a hop(…) window is rewritten into.
            LogicalPlan::Unnest(u) => node = u.input.as_ref(),
            LogicalPlan::Join(j) => {
                check_join(j, tables)?;
                node = j.left.as_ref();
            }
            LogicalPlan::TableScan(scan) => break scan.table_name.table().to_string(),
            other => return Err(unsupported(other)),
        }
    };
    let stream = streams
        .iter()
        .find(|s| s.name == stream_name)
        .ok_or_else(|| format!("view reads `{stream_name}`, which is not a declared stream"))?;

    for e in &aggregate.aggr_expr {
        check_aggregate(e)?;
    }
    if aggregate.group_expr.is_empty() {
        return Err(
            "a view needs GROUP BY with an event-time window, e.g. GROUP BY date_bin(INTERVAL '10 minutes', ts)"
                .into(),
        );
    }
    let mut window_idx = None;
    let mut window_spec = None;
    for (i, g) in aggregate.group_expr.iter().enumerate() {
        if matches!(g, Expr::GroupingSet(_)) {
            return Err("GROUPING SETS, CUBE and ROLLUP are not supported in a view".into());
        }
        if let Some((arg, spec)) = window_of(g, aggregate.input.as_ref())? {
            if window_idx.is_some() {
                return Err("a view may group by only one window (date_bin or hop)".into());
            }
            if arg != stream.event_time {
                return Err(format!(
                    "the window must bin the event-time field `{}`, not `{arg}`",
                    stream.event_time
                ));
            }
            window_idx = Some(i);
            window_spec = Some(spec);
        }
    }
    if let Some(unnest) = find_node(aggregate.input.as_ref(), &|n| {
        matches!(n, LogicalPlan::Unnest(_))
    }) && window_spec.is_none_or(|w| w.kind != WindowKind::Hopping)
    {
        return Err(unsupported(unnest));
    }
    let window_idx = window_idx.ok_or_else(|| {
        format!(
            "GROUP BY needs one event-time window: date_bin(INTERVAL '…', {})",
            stream.event_time
        )
    })?;

    let n_groups = aggregate.group_expr.len();
    let agg_fields = aggregate.schema.fields();
    let mut keys = Vec::new();
    let mut window = None;
    let mut values = Vec::new();
    for (i, e) in projection.expr.iter().enumerate() {
        let out = projection.schema.field(i).name().clone();
        if out == SOURCE_COLUMN {
            continue;
        }
        let group = match unalias(e) {
            Expr::Column(c) => agg_fields[..n_groups]
                .iter()
                .position(|f| f.name() == &c.name),
            _ => None,
        };
        match group {
            Some(g) if g == window_idx => window = Some(out),
            Some(_) => keys.push(out),
            None => values.push(out),
        }
    }
    let window = window.ok_or_else(|| {
        "the window must appear in the SELECT list, e.g. date_bin(INTERVAL '10 minutes', ts) AS window_start"
            .to_string()
    })?;
    Ok(Shape {
        stream: stream.name.clone(),
        keys,
        window,
        window_spec: window_spec.expect("set with window_idx"),
        values,
    })
}

/// A join must keep the stream on the left and a dimension table on the right, inner
/// or left: each event then meets the table's rows as they are when it is computed.
fn check_join(
    j: &datafusion::logical_expr::Join,
    tables: &[Arc<DimensionTable>],
) -> std::result::Result<(), String> {
    use datafusion::logical_expr::JoinType;
    if !matches!(j.join_type, JoinType::Inner | JoinType::Left) {
        return Err(format!(
            "{} JOIN is not supported in a view: join the stream (left) with a dimension table using INNER or LEFT JOIN",
            j.join_type
        ));
    }
    let mut node = j.right.as_ref();
    let name = loop {
        match node {
            LogicalPlan::SubqueryAlias(s) => node = s.input.as_ref(),
            LogicalPlan::Projection(p) => node = p.input.as_ref(),
            LogicalPlan::Filter(f) => node = f.input.as_ref(),
            LogicalPlan::TableScan(scan) => break scan.table_name.table().to_string(),
            _ => {
                return Err(
                    "the right side of a join must be a dimension table (declared under [[tables]])"
                        .into(),
                );
            }
        }
    };
    if !tables.iter().any(|t| t.name == name) {
        return Err(format!(
            "`{name}` on the right of the join is not a dimension table: a view reads one stream, joined only with tables declared under [[tables]] (the stream goes on the left)"
        ));
    }
    Ok(())
}

fn unsupported(plan: &LogicalPlan) -> String {
    let what = match plan {
        LogicalPlan::Window(_) => "window functions (OVER) are not supported in a view".to_string(),
        LogicalPlan::Sort(_) => "ORDER BY is not supported in a view".to_string(),
        LogicalPlan::Limit(_) => "LIMIT is not supported in a view".to_string(),
        LogicalPlan::Distinct(_) => "DISTINCT is not supported in a view".to_string(),
        LogicalPlan::Union(_) => "UNION is not supported in a view".to_string(),
        LogicalPlan::Aggregate(_) => "nested aggregates are not supported in a view".to_string(),
        LogicalPlan::Subquery(_) | LogicalPlan::SubqueryAlias(_) => {
            "subqueries are not supported in a view".to_string()
        }
        other => format!("`{}` is not supported in a view", other.display()),
    };
    format!("unsupported query shape: {what}")
}

fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

fn check_aggregate(e: &Expr) -> std::result::Result<(), String> {
    match unalias(e) {
        Expr::AggregateFunction(af) => {
            let name = af.func.name().to_lowercase();
            let hidden = name == "bit_or"
                && af.params.args.len() == 1
                && matches!(&af.params.args[0], Expr::Column(c) if c.name == SOURCE_COLUMN);
            if !hidden && !SUPPORTED_AGGREGATES.contains(&name.as_str()) {
                return Err(format!(
                    "aggregate `{name}` is not supported in a view (supported: {})",
                    SUPPORTED_AGGREGATES.join(", ")
                ));
            }
            if af.params.distinct {
                return Err(format!("{name}(DISTINCT …) is not supported in a view"));
            }
            if !af.params.order_by.is_empty() && !ORDERED_AGGREGATES.contains(&name.as_str()) {
                return Err(format!("{name}(… ORDER BY …) is not supported in a view"));
            }
            Ok(())
        }
        other => Err(format!("unsupported aggregate expression `{other}`")),
    }
}

/// If `e` groups by a window: the column it bins and the window's widths.
fn window_of(
    e: &Expr,
    input: &LogicalPlan,
) -> std::result::Result<Option<(String, WindowSpec)>, String> {
    match unalias(e) {
        Expr::ScalarFunction(f) if f.func.name() == "date_bin" => {
            let size_us = interval_micros(&f.args[0])
                .map_err(|m| format!("date_bin's first argument: {m}"))?;
            let origin_us = match f.args.get(2) {
                Some(origin) => timestamp_micros(origin)?,
                None => 0,
            };
            let spec = WindowSpec {
                kind: WindowKind::Tumbling,
                size_us,
                slide_us: size_us,
                origin_us,
            };
            Ok(Some((column_name(&f.args[1]), spec)))
        }
        Expr::Column(c) if c.name == HOP_COLUMN => {
            let mut call = None;
            let _ = input.apply(|node| {
                for e in node.expressions() {
                    let _ = e.apply(|x| {
                        if let Expr::ScalarFunction(f) = x
                            && f.func.name() == HOP_FUNCTION
                        {
                            call = Some(f.args.clone());
                        }
                        Ok(TreeNodeRecursion::Continue)
                    });
                }
                Ok(TreeNodeRecursion::Continue)
            });
            let args = call.ok_or("internal: hop window without its function")?;
            let [ts, size, slide] = args.as_slice() else {
                return Err(
                    "hop takes three arguments: hop(ts, INTERVAL size, INTERVAL slide)".into(),
                );
            };
            let size_us = interval_micros(size).map_err(|m| format!("hop's size: {m}"))?;
            let slide_us = interval_micros(slide).map_err(|m| format!("hop's slide: {m}"))?;
            if slide_us > size_us {
                return Err(
                    "hop's slide must not exceed its size (windows would miss events)".into(),
                );
            }
            let spec = WindowSpec {
                kind: WindowKind::Hopping,
                size_us,
                slide_us,
                origin_us: 0,
            };
            Ok(Some((column_name(ts), spec)))
        }
        _ => Ok(None),
    }
}

fn column_name(e: &Expr) -> String {
    match e {
        Expr::Column(c) => c.name.clone(),
        Expr::Cast(c) => column_name(&c.expr),
        Expr::TryCast(c) => column_name(&c.expr),
        other => other.to_string(),
    }
}

fn find_node<'a>(
    plan: &'a LogicalPlan,
    pred: &dyn Fn(&LogicalPlan) -> bool,
) -> Option<&'a LogicalPlan> {
    if pred(plan) {
        return Some(plan);
    }
    plan.inputs().into_iter().find_map(|p| find_node(p, pred))
}

#[cfg(test)]
mod tests;
