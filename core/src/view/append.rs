//! Append-mode views (streaming ETL): selection, projection and per-row expressions
//! over one stream (and dimension tables), no aggregate. Each event yields at most one
//! row, for good, so such a view needs no merge: the batch layer materialises it from
//! the master table into its own Delta table, exactly once (`batch-layer/src/append.rs`).

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;

use super::{register_tables, session, strip_df};
use crate::config::AppendViewConfig;
use crate::dimension::DimensionTable;
use crate::error::{CoreError, Result};
use crate::schema::StreamSchema;

/// An append-mode view, checked and planned once.
#[derive(Debug, Clone)]
pub struct AppendView {
    /// The view's name (its API path, SQL table name and Delta table).
    pub name: String,
    /// The SQL as written.
    pub sql: String,
    /// The stream it reads.
    pub stream: String,
    /// The rows it writes.
    pub schema: SchemaRef,
    /// The output column holding the stream's event time, when the view keeps it: the
    /// view API's `from`/`to` and default order use it.
    pub event_time: Option<String>,
    /// Dimension tables it may join (their current rows at each run).
    tables: Vec<Arc<DimensionTable>>,
}

impl AppendView {
    /// Check `cfg` against the streams and tables: the error says what is refused.
    pub async fn compile(
        cfg: &AppendViewConfig,
        streams: &[StreamSchema],
        tables: &[Arc<DimensionTable>],
    ) -> Result<AppendView> {
        let err = |message: String| CoreError::View {
            view: cfg.name.clone(),
            message,
        };
        crate::sql_limits::check_view(&cfg.sql).map_err(err)?;
        let ctx = session();
        for s in streams {
            let table = MemTable::try_new(s.view_schema(), vec![vec![]])?;
            ctx.register_table(s.name.as_str(), Arc::new(table))?;
        }
        register_tables(&ctx, tables)?;
        let plan = ctx
            .state()
            .create_logical_plan(&cfg.sql)
            .await
            .map_err(|e| err(format!("SQL does not plan: {}", strip_df(&e))))?;
        let stream = only_stream(&plan, streams, tables).map_err(err)?;
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let event_time = streams
            .iter()
            .find(|s| s.name == stream)
            .map(|s| s.event_time.clone())
            .filter(|t| schema.field_with_name(t).is_ok());
        Ok(AppendView {
            name: cfg.name.clone(),
            sql: cfg.sql.clone(),
            stream,
            schema,
            event_time,
            tables: tables.to_vec(),
        })
    }

    /// The view's rows over `rows` of its stream (in the stream's view schema).
    pub async fn run(&self, rows: Vec<RecordBatch>, input: SchemaRef) -> Result<Vec<RecordBatch>> {
        let ctx: SessionContext = session();
        ctx.register_table(
            self.stream.as_str(),
            Arc::new(MemTable::try_new(input, vec![rows])?),
        )?;
        register_tables(&ctx, &self.tables)?;
        Ok(ctx.sql(&self.sql).await?.collect().await?)
    }
}

/// The one stream the plan reads; refuses aggregates, window functions, limits,
/// DISTINCT and reads of more than one stream, with why.
fn only_stream(
    plan: &LogicalPlan,
    streams: &[StreamSchema],
    tables: &[Arc<DimensionTable>],
) -> std::result::Result<String, String> {
    let mut read: Vec<String> = Vec::new();
    let mut refused: Option<String> = None;
    plan.apply(|node| {
        let why = match node {
            LogicalPlan::Aggregate(_) => {
                Some("an aggregate: an append view keeps rows; aggregate in a [[views]] view")
            }
            LogicalPlan::Window(_) => Some("a window function: its value depends on other rows"),
            LogicalPlan::Limit(_) => Some("LIMIT: an append view keeps every row it selects"),
            LogicalPlan::Distinct(_) => Some("DISTINCT: it depends on rows of other runs"),
            LogicalPlan::TableScan(scan) => {
                let name = scan.table_name.table().to_string();
                if streams.iter().any(|s| s.name == name) {
                    read.push(name);
                } else if !tables.iter().any(|t| t.name == name) {
                    refused = Some(format!("`{name}` is not a stream or dimension table"));
                }
                None
            }
            _ => None,
        };
        if let Some(why) = why {
            refused = Some(format!("not an append view: {why}"));
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| e.to_string())?;
    if let Some(why) = refused {
        return Err(why);
    }
    read.dedup();
    match read.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err("an append view reads one stream; this one reads none".into()),
        more => Err(format!(
            "an append view reads one stream; this one reads {}",
            more.join(", ")
        )),
    }
}
