//! The batch half of a stream's dedup rule ([`DedupSpec`]): drop a record when the
//! previous record of its partition with the same id was ingested within the horizon,
//! found with `lag(_ingest_ts)` over partition and id in offset order.
//!
//! Views plan without physical optimizer rules (to keep the aggregate phases apart), and
//! without them nothing adds the sort a window function needs. So the deduplicated rows
//! are planned in an ordinary session and handed to the view's plan as a table whose
//! scan is that finished plan ([`PlannedTable`]).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::dataframe::DataFrame;
use datafusion::error::Result;
use datafusion::functions_window::expr_fn::lag;
use datafusion::logical_expr::{Expr, ExprFunctionExt, TableType};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::{cast, col, lit};
use tributary_core::schema::{DedupSpec, INGEST_TS, OFFSET, PARTITION};

/// `df` (master-table rows) without the records the rule counts as repeats. Every
/// predecessor of a record is below the cutoff if the record is, so `df` may already
/// be cut.
pub fn without_repeats(df: DataFrame, spec: &DedupSpec) -> Result<DataFrame> {
    const PREVIOUS: &str = "__previous_ingest_ts";
    let micros = |e: Expr| cast(e, DataType::Int64);
    let previous = lag(col(INGEST_TS), Some(1), None)
        .partition_by(vec![col(PARTITION), col(spec.field.as_str())])
        .order_by(vec![col(OFFSET).sort(true, false)])
        .build()?
        .alias(PREVIOUS);
    let counts = col(spec.field.as_str())
        .is_null()
        .or(col(PREVIOUS).is_null())
        .or(micros(col(PREVIOUS)).lt(micros(col(INGEST_TS)) - lit(spec.horizon_us)));
    df.window(vec![previous])?.filter(counts)
}

/// A table whose scan plans a query in the query's own (ordinary) session. Each scan
/// plans afresh: a physical plan with repartitioning runs only once.
#[derive(Debug)]
pub struct PlannedTable {
    df: DataFrame,
    schema: SchemaRef,
}

impl PlannedTable {
    pub fn new(df: DataFrame) -> Self {
        let schema = Arc::new(df.schema().as_arrow().clone());
        PlannedTable { df, schema }
    }
}

#[async_trait]
impl TableProvider for PlannedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut plan = self.df.clone().create_physical_plan().await?;
        // The view's plan (no optimizer rules) reads one partition only.
        if plan.output_partitioning().partition_count() > 1 {
            plan = Arc::new(CoalescePartitionsExec::new(plan));
        }
        let Some(projection) = projection else {
            return Ok(plan);
        };
        let schema = plan.schema();
        let exprs: Vec<(Arc<dyn datafusion::physical_expr::PhysicalExpr>, String)> = projection
            .iter()
            .map(|i| {
                let name = schema.field(*i).name().clone();
                let column = datafusion::physical_expr::expressions::col(&name, &schema)?;
                Ok((column, name))
            })
            .collect::<Result<_>>()?;
        Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
    }
}
