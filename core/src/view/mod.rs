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

use datafusion::arrow::array::{RecordBatch, RecordBatchOptions, TimestampMicrosecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::MemTable;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, collect};
use datafusion::prelude::SessionContext;

use crate::config::ViewConfig;
use crate::dimension::{DIMENSION_KEY, DimensionTable};
use crate::error::{CoreError, Result};
use crate::schema::StreamSchema;
use crate::window::{WindowKind, WindowSpec};

/// A view compiled once, shared by every layer.
#[derive(Debug, Clone)]
pub struct CompiledView {
    /// The view's name.
    pub name: String,
    /// The SQL as the user wrote it.
    pub sql: String,
    /// The catalog revision this compilation is of (0: not from the catalog). Every
    /// process compiles a cataloged view from the same row, so a revision names the
    /// same definition in all of them: the speed layer's figures and snapshots carry it,
    /// and a serving process never merges states of another revision than its own.
    pub revision: i64,
    /// The SQL every layer plans: the user's, plus the hidden `_src` aggregate.
    exec_sql: String,
    /// The SQL of the one-pass reference (`exec_sql` but for session views, whose
    /// reference makes sessions with window functions).
    reference_sql: String,
    /// The stream it reads.
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
    /// A session view's layout of its states, for coalescing (`None`: fixed windows).
    pub session: Option<SessionLayout>,
    /// A view joining two streams: the other stream and the join's time bound.
    join: Option<StreamJoin>,
    /// A LEFT join of two streams: its INNER and matching plans (see `outer_join`).
    outer: Option<Arc<outer_join::OuterPlans>>,
    /// Schema of the final rows, `_src` last.
    pub output_schema: SchemaRef,
    /// Input the partial plan reads: the stream's view schema plus `_src`.
    pub input_schema: SchemaRef,
    final_template: Arc<dyn ExecutionPlan>,
    /// Dimension tables the view may join with (their current rows at each run).
    tables: Vec<Arc<DimensionTable>>,
    /// Whether a batch run may read the stream's strings as Arrow string views (see
    /// [`CompiledView::reads_string_views`]).
    string_views: bool,
    /// The partial side, planned once; each micro-batch only swaps its data source in.
    partial_template: Arc<dyn ExecutionPlan>,
    task_ctx: Arc<TaskContext>,
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
        // Before anything recursive parses or plans it (see sql_limits).
        crate::sql_limits::check_view(&cfg.sql).map_err(err)?;
        let names: Vec<&str> = streams.iter().map(|s| s.name.as_str()).collect();
        let rewritten = rewrite(&cfg.sql, &names).map_err(err)?;
        let exec_sql = rewritten.exec;
        let outer_sql = rewritten.outer;

        let mut ctx = compile_session(streams, tables, &[])?;
        let mut logical = match ctx.state().create_logical_plan(&exec_sql).await {
            Ok(plan) => plan,
            Err(e) => {
                let text = strip_df(&e);
                let why = match text.contains(&format!("No field named {SOURCE_COLUMN}")) {
                    true => unplanned(streams),
                    false => format!("SQL does not plan: {text}"),
                };
                return Err(err(why));
            }
        };
        let shape = check_shape(&logical, streams, tables).map_err(err)?;
        if let Some(j) = &shape.join {
            // Planned again with each stream's scan named, so that each layer can feed
            // each scan its own rows.
            ctx = compile_session(streams, tables, &[&shape.stream, &j.other])?;
            logical = ctx.state().create_logical_plan(&exec_sql).await?;
        }
        let physical = ctx
            .state()
            .create_physical_plan(&logical)
            .await
            .map_err(|e| err(format!("SQL does not plan: {}", strip_df(&e))))?;
        let partial = find_partial(&physical)
            .ok_or_else(|| err("internal: no partial aggregate in the physical plan".into()))?;
        physical::check_accumulators(&partial).map_err(err)?;
        let stream = streams
            .iter()
            .find(|s| s.name == shape.stream)
            .expect("check_shape found the stream");
        let string_views = shape.join.is_none()
            && shape.session.is_none()
            && tables.is_empty()
            && !physical::hashes_values(&partial)
            && planning::plans_over_string_views(&exec_sql, stream, &partial.schema()).await;
        let outer = match (&outer_sql, &shape.join) {
            (Some(sql), Some(_)) => Some(Arc::new(
                outer_join::plan_outer(&ctx, sql, &partial)
                    .await
                    .map_err(err)?,
            )),
            _ => None,
        };
        let window_state = output_source(&physical, &shape.window);
        let session = match &shape.session {
            Some(s) => Some(session::layout(s, &partial, shape.window_spec.size_us).map_err(err)?),
            None => None,
        };
        let join = shape.join.as_ref().map(|j| {
            let other = streams.iter().find(|s| s.name == j.other);
            let other = other.expect("check_shape found the stream");
            StreamJoin {
                other: j.other.clone(),
                other_event_time: other.event_time.clone(),
                other_input_schema: input_schema(other),
                lower_us: j.lower_us,
                upper_us: j.upper_us,
                outer: j.outer,
            }
        });
        let view = CompiledView {
            name: cfg.name.clone(),
            sql: cfg.sql.clone(),
            revision: 0,
            reference_sql: rewritten.reference.unwrap_or_else(|| exec_sql.clone()),
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
            session,
            join,
            outer,
            output_schema: physical.schema(),
            input_schema: input_schema(stream),
            final_template: physical,
            tables: tables.to_vec(),
            string_views,
            partial_template: partial,
            task_ctx: ctx.task_ctx(),
        };
        if view.outer.is_some() {
            view.check_negatable()?;
        }
        Ok(view)
    }

    /// Whether a batch run may plan this view over string columns read as Arrow string
    /// views (Parquet's own form: nothing is copied out of the file's pages) rather than
    /// the speed layer's plain Utf8. Its states come out alike either way (they are cast
    /// to [`CompiledView::partial_schema`]), except where an aggregate hashes the values
    /// into a sketch, and for the shapes whose plans are made once over fixed input
    /// types (sessions, joins, dimension tables).
    pub fn reads_string_views(&self) -> bool {
        self.string_views
    }

    /// Run the partial side over `source` (registered as the view's stream; it must
    /// have [`CompiledView::input_schema`]'s columns), on every core: the source's
    /// partitions are aggregated side by side and their states merged with
    /// [`CompiledView::reduce`]. Returns states in [`CompiledView::partial_schema`].
    pub async fn run_partial(&self, source: Arc<dyn TableProvider>) -> Result<Vec<RecordBatch>> {
        let (partial, task_ctx) = self.plan_partial(source, None).await?;
        let partitions = partial.output_partitioning().partition_count();
        self.finish_partial(collect(partial, task_ctx).await?, partitions)
            .await
    }

    /// The partial side over `source` as a physical plan on every core, with the task
    /// context to run it in: what [`CompiledView::run_partial`] executes here, and what
    /// an engine that runs plans elsewhere (Ballista) ships. Its partitions' states go
    /// through [`CompiledView::finish_partial`]. `partitions`: for a plan shipped to a
    /// cluster, how many file groups the scan is split into (`None`: one per core, here).
    ///
    /// A plan for a cluster is made without join dynamic filters: Ballista's scheduler
    /// may swap a join's inputs once it has seen their sizes, which a join holding a
    /// dynamic filter refuses; the stage then fails and the job never finishes.
    pub async fn plan_partial(
        &self,
        source: Arc<dyn TableProvider>,
        partitions: Option<usize>,
    ) -> Result<(Arc<dyn ExecutionPlan>, Arc<TaskContext>)> {
        if self.join.is_some() {
            return Err(self.not_for_joins());
        }
        self.plan_partial_over(&[(&self.stream, source)], partitions)
            .await
    }

    /// The partial side over one table per stream the view reads.
    async fn plan_partial_over(
        &self,
        sources: &[(&str, Arc<dyn TableProvider>)],
        partitions: Option<usize>,
    ) -> Result<(Arc<dyn ExecutionPlan>, Arc<TaskContext>)> {
        let ctx = parallel_session_with(partitions);
        if partitions.is_some() {
            ctx.state_ref()
                .write()
                .config_mut()
                .options_mut()
                .optimizer
                .enable_join_dynamic_filter_pushdown = false;
        }
        for (name, source) in sources {
            ctx.register_table(*name, source.clone())?;
        }
        register_tables(&ctx, &self.tables)?;
        let logical = ctx.state().create_logical_plan(&self.exec_sql).await?;
        let physical = ctx.state().create_physical_plan(&logical).await?;
        let partial = find_partial(&physical).ok_or_else(|| CoreError::View {
            view: self.name.clone(),
            message: "internal: no partial aggregate in the physical plan".into(),
        })?;
        Ok((partial, ctx.task_ctx()))
    }

    /// The states of a partial plan's `partitions` partitions as one row per group:
    /// each partition holds states of the same groups, so more than one are reduced.
    pub async fn finish_partial(
        &self,
        batches: Vec<RecordBatch>,
        partitions: usize,
    ) -> Result<Vec<RecordBatch>> {
        let states = self.conform(batches)?;
        // A session view's partial states are per session of an input batch until
        // coalesced.
        if partitions > 1 || self.session.is_some() {
            self.reduce(states).await
        } else {
            Ok(states)
        }
    }

    /// Run the partial side over in-memory batches in input-schema layout. The plan is
    /// not made again: the compiled one gets these batches as its scan, so a small
    /// micro-batch costs execution only.
    pub async fn run_partial_batches(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        if self.join.is_some() {
            return Err(self.not_for_joins());
        }
        let mut batches = Some(batches);
        let input = self.input_schema.clone();
        // A dimension table's scan reads its current rows; the stream's scan reads the
        // micro-batch.
        let plan = self.with_scans(|table| match table.metadata().get(DIMENSION_KEY) {
            Some(name) => {
                let table = self
                    .tables
                    .iter()
                    .find(|t| &t.name == name)
                    .expect("compiled with this table");
                Some((table.schema.clone(), table.batches().as_ref().clone()))
            }
            None => Some((input.clone(), batches.take().unwrap_or_default())),
        })?;
        let out = collect(plan, self.task_ctx.clone()).await?;
        if self.session.is_some() {
            return self.reduce(out).await;
        }
        self.conform(out)
    }

    /// The partial plan with each memory scan given the rows `feed` returns for the
    /// table schema it was planned with (`None`: left as planned). Each keeps the
    /// columns it was planned with, and operators that keep state in the plan (a hash
    /// join's build side) start afresh.
    fn with_scans(
        &self,
        feed: impl FnMut(&SchemaRef) -> Option<(SchemaRef, Vec<RecordBatch>)>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.scans_of(&self.partial_template, feed)
    }

    /// [`CompiledView::with_scans`] of another of the view's plans.
    fn scans_of(
        &self,
        template: &Arc<dyn ExecutionPlan>,
        mut feed: impl FnMut(&SchemaRef) -> Option<(SchemaRef, Vec<RecordBatch>)>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = template
            .clone()
            .transform_up(|node| {
                if !node.children().is_empty() {
                    return Ok(Transformed::no(node));
                }
                let Some(planned) = node
                    .downcast_ref::<DataSourceExec>()
                    .and_then(|d| d.data_source().downcast_ref::<MemorySourceConfig>())
                else {
                    return Ok(Transformed::no(node));
                };
                let Some((source, data)) = feed(&planned.original_schema()) else {
                    return Ok(Transformed::no(node));
                };
                let projection = planned.projection().clone();
                let scan = MemorySourceConfig::try_new_exec(&[data], source, projection)?;
                Ok(Transformed::yes(scan as Arc<dyn ExecutionPlan>))
            })?
            .data;
        Ok(reset_plan_states(plan)?)
    }

    /// The view's SQL run in one ordinary pass (optimizer on, no partial/final cut) over
    /// `batches` in input-schema layout: the reference every layer's answer must equal.
    pub async fn run_reference(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let ctx = SessionContext::new();
        register_udfs(&ctx);
        let table = MemTable::try_new(self.input_schema.clone(), vec![batches])?;
        ctx.register_table(self.stream.as_str(), Arc::new(table))?;
        register_tables(&ctx, &self.tables)?;
        Ok(ctx.sql(&self.reference_sql).await?.collect().await?)
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

    /// Merge states into fewer states (same schema), e.g. to compact a segment. A
    /// session view's states are coalesced first (states of one session merge).
    pub async fn reduce(&self, states: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let states = self.coalesce(states)?;
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
        let states = self.coalesce(states)?;
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

    /// The key columns and window start of state rows `states`, named as the view's
    /// output names them (a column the final plan computes from several group columns
    /// is left out).
    pub fn group_keys(&self, states: &RecordBatch) -> Result<RecordBatch> {
        let mut fields = Vec::new();
        let mut columns = Vec::new();
        for name in self.keys.iter().chain([&self.window]) {
            if let Some(i) = output_source(&self.final_template, name) {
                let column = states.column(i).clone();
                fields.push(Field::new(name, column.data_type().clone(), true));
                columns.push(column);
            }
        }
        let schema = Arc::new(Schema::new(fields));
        Ok(RecordBatch::try_new_with_options(
            schema,
            columns,
            &RecordBatchOptions::new().with_row_count(Some(states.num_rows())),
        )?)
    }

    /// States in the canonical schema; a session view's with each state given the start
    /// of the session it belongs to among them.
    fn coalesce(&self, states: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let states = self.conform(states)?;
        match &self.session {
            Some(layout) => session::coalesce(layout, states),
            None => Ok(states),
        }
    }

    /// When each row of final `batch` ends (exclusive), in microseconds: a fixed
    /// window's start plus its width, a session's `session_end`. `complete` compares
    /// it with the watermark.
    pub fn row_ends(&self, batch: &RecordBatch) -> Vec<Option<i64>> {
        let (column, width) = match self.window_spec.kind {
            WindowKind::Session => (crate::window::SESSION_END, 0),
            _ => (self.window.as_str(), self.window_spec.size_us),
        };
        let Some(values) = batch
            .column_by_name(column)
            .and_then(|c| crate::window::as_micros(c).ok())
        else {
            return vec![None; batch.num_rows()];
        };
        values
            .iter()
            .map(|v| v.map(|v| v.saturating_add(width)))
            .collect()
    }

    /// Cast state batches to the canonical partial schema: storage round trips may
    /// change physical types (e.g. strings read back as views), never values.
    pub fn conform(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        conform_to(&self.partial_schema, batches)
    }
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
                return Err(CoreError::StateShape(format!(
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

fn strip_df(e: &datafusion::error::DataFusionError) -> String {
    e.to_string()
        .trim_start_matches("Error during planning: ")
        .to_string()
}

pub mod append;
mod outer_join;
mod physical;
mod planning;
mod rewrite;
mod session;
mod shape;
mod source;
mod stream_join;

use physical::{find_partial, is_partial, output_source};
use planning::{compile_session, register_tables, register_udfs};
pub use planning::{parallel_session, parallel_session_with, session};
use rewrite::rewrite;
pub use session::SessionLayout;
use shape::{check_shape, unplanned};
pub use source::{
    Layer, Origin, SOURCE_BATCH, SOURCE_COLUMN, SOURCE_SPEED, input_schema, tag_source,
    with_string_views,
};
pub use stream_join::StreamJoin;

#[cfg(test)]
mod join_tests;
#[cfg(test)]
mod outer_join_tests;
#[cfg(test)]
mod refusal_tests;
#[cfg(test)]
mod string_view_tests;
#[cfg(test)]
mod tests;
