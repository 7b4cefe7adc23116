//! LEFT joins of two streams, exact across the two layers.
//!
//! A LEFT join's answer is its inner pairs plus one unmatched row `(L, NULL)` per left
//! event `L` that no right event of **all** events matches. Which layer holds that row
//! cannot be decided by one layer alone, so both layers count it by telescoping over
//! `_ingest_ts` buckets: with `bL` the bucket of `L` and `m` the smallest bucket of any
//! of its partners (∞ if none), "the output over events of buckets `< k + 1`" minus "the
//! output over events of buckets `< k`" holds `(L, NULL)` with weight **+1 in bucket
//! `bL`** when `m > bL`, and with weight **−1 in bucket `m`** when `bL < m < ∞`. The
//! batch layer runs the native LEFT JOIN over the events below its cutoff `T`; the
//! speed layer holds the weights of buckets `≥ T`; their sum is the one-pass answer for
//! every `T`, and a cutoff drops exactly the buckets the batch layer then holds.
//!
//! A weight −1 is the negated partial states of the row. That is exact for states that
//! are sums and counts, so a LEFT join of two streams may use `count`, `sum` and `avg`
//! (rewritten to `sum / count`), and `sum(x)` is rewritten to `CASE WHEN count(x) > 0
//! THEN sum(x) END` (a sum whose values all cancelled is NULL, as over no values). A
//! hidden `count(*) <> 0` in HAVING drops a group whose rows all cancelled.
//!
//! Compilation therefore makes three plans of one view: the LEFT plan (the batch layer's
//! and, fed no right rows, the states of unmatched rows), its INNER variant (the pairs,
//! found as for an inner join), and a matching plan listing which left rows have a
//! partner (the left rows' `_src` column carries their row number in it).

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Int32Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::numeric::neg_wrapping;
use datafusion::arrow::datatypes::DataType;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::expressions::Column;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, GroupByExpr, JoinOperator, Select, SelectItem, SetExpr, Statement,
    TableFactor, visit_expressions_mut,
};

use super::CompiledView;
use super::rewrite::first_select;
use super::{SOURCE_COLUMN, find_partial};
use crate::error::{CoreError, Result};

/// What a LEFT join of two streams plans besides the view's own (LEFT) plan.
#[derive(Debug)]
pub(super) struct OuterPlans {
    /// The view's partial plan with the join INNER: the states of the pairs.
    pub(super) inner: Arc<dyn ExecutionPlan>,
    /// `SELECT left._src FROM <the view's FROM, joined INNER>`: one row per pair, naming
    /// the left row (its `_src` replaced by its row number).
    pub(super) matching: Arc<dyn ExecutionPlan>,
    /// Columns of the partial states that a weight −1 negates (every state but the
    /// hidden `_src` one).
    pub(super) negated: Vec<usize>,
}

/// The SQL of the two extra plans.
pub(super) struct OuterSql {
    pub(super) inner: String,
    pub(super) matching: String,
}

/// Aggregates whose states a weight −1 can take back (once `avg` is rewritten).
const INVERTIBLE: &[&str] = &["count", "sum"];

/// Why other aggregates are refused in a LEFT join of two streams.
pub(super) fn refuse_aggregate(name: &str) -> String {
    format!(
        "aggregate `{name}` is not supported in a LEFT JOIN of two streams (supported: count, sum, avg): an unmatched row is taken back when its partner arrives late, which only sums and counts can do"
    )
}

/// Whether `name` (lowercase) may appear in a LEFT join of two streams once rewritten.
pub(super) fn invertible(name: &str) -> bool {
    INVERTIBLE.contains(&name)
}

/// The index, among the FROM's joins, of a LEFT join whose right side reads a stream.
pub(super) fn left_stream_join(
    select: &Select,
    reads_stream: impl Fn(&TableFactor) -> bool,
) -> Option<usize> {
    let [from] = select.from.as_slice() else {
        return None;
    };
    from.joins.iter().position(|j| {
        matches!(
            j.join_operator,
            JoinOperator::Left(_) | JoinOperator::LeftOuter(_)
        ) && reads_stream(&j.relation)
    })
}

fn select_mut(statement: &mut Statement) -> &mut Select {
    let Statement::Query(query) = statement else {
        unreachable!("checked to be a query")
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        unreachable!("checked to be a SELECT")
    };
    select
}

/// Rewrite `statement` (a LEFT join of two streams, its `join`th join; `_src` added) so
/// that its states can be negated, and return the INNER and matching variants.
/// `qualifier` names the left relation.
pub(super) fn rewrite_outer(
    statement: &mut Statement,
    join: usize,
    qualifier: Option<&str>,
) -> std::result::Result<OuterSql, String> {
    let qualifier = qualifier.ok_or_else(|| {
        "a LEFT JOIN of two streams needs a name for its left side (FROM clicks c LEFT JOIN …)"
            .to_string()
    })?;
    let _ = visit_expressions_mut(statement, |e| {
        if let SqlExpr::Function(f) = e {
            let name = f.name.to_string().to_lowercase();
            let renamed = |to: &str| {
                let mut g = f.clone();
                g.name = datafusion::sql::sqlparser::ast::ObjectName::from(vec![
                    datafusion::sql::sqlparser::ast::Ident::new(to),
                ]);
                g.to_string()
            };
            let text = match name.as_str() {
                "avg" | "mean" => Some(format!(
                    "CAST({} AS DOUBLE) / CAST(NULLIF({}, 0) AS DOUBLE)",
                    renamed("sum"),
                    renamed("count")
                )),
                "sum" => Some(format!(
                    "CASE WHEN {} > 0 THEN {} END",
                    renamed("count"),
                    renamed("sum")
                )),
                _ => None,
            };
            if let Some(text) = text {
                *e = parse_expr(&text);
            }
        }
        ControlFlow::<()>::Continue(())
    });
    let select = select_mut(statement);
    let keep = parse_expr("count(*) <> 0");
    select.having = Some(match select.having.take() {
        Some(h) => parse_expr(&format!("({h}) AND {keep}")),
        None => keep,
    });
    let mut inner_statement = statement.clone();
    let inner = select_mut(&mut inner_statement);
    let joined = &mut inner.from[0].joins[join].join_operator;
    *joined = match std::mem::replace(joined, JoinOperator::CrossApply) {
        JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => JoinOperator::Inner(c),
        other => other,
    };
    let inner_sql = inner_statement.to_string();
    let matching = select_mut(&mut inner_statement);
    matching.projection = vec![SelectItem::UnnamedExpr(parse_expr(&format!(
        "{qualifier}.{SOURCE_COLUMN}"
    )))];
    matching.selection = None;
    matching.group_by = GroupByExpr::Expressions(vec![], vec![]);
    matching.having = None;
    Ok(OuterSql {
        inner: inner_sql,
        matching: inner_statement.to_string(),
    })
}

fn parse_expr(text: &str) -> SqlExpr {
    match first_select(&format!("SELECT {text}")).projection.remove(0) {
        SelectItem::UnnamedExpr(e) => e,
        other => unreachable!("an expression parses as one: {other}"),
    }
}

/// The state columns of `partial` that a weight −1 negates: every aggregate's but the
/// hidden `bit_or(_src)` (which layers a row came from is not a count).
pub(super) fn negated_columns(partial: &Arc<dyn ExecutionPlan>) -> Result<Vec<usize>> {
    let agg = partial
        .downcast_ref::<AggregateExec>()
        .expect("find_partial returns an AggregateExec");
    let mut at = agg.group_expr().expr().len();
    let mut out = Vec::new();
    for a in agg.aggr_expr() {
        let n = a.state_fields()?.len();
        let hidden = a.fun().name() == "bit_or"
            && a.expressions().iter().any(|e| {
                e.downcast_ref::<Column>()
                    .is_some_and(|c| c.name() == SOURCE_COLUMN)
            });
        if !hidden {
            out.extend(at..at + n);
        }
        at += n;
    }
    Ok(out)
}

impl CompiledView {
    /// Whether the view LEFT-joins two streams.
    pub fn outer_join(&self) -> bool {
        self.outer.is_some()
    }

    fn outer_plans(&self) -> Result<&OuterPlans> {
        self.outer.as_deref().ok_or_else(|| CoreError::View {
            view: self.name.clone(),
            message: "internal: not a LEFT join of two streams".into(),
        })
    }

    /// The partial template a stream join's pairs run through: the INNER variant of a
    /// LEFT join, else the view's own.
    pub(super) fn pairs_template(&self) -> &Arc<dyn ExecutionPlan> {
        match &self.outer {
            Some(o) => &o.inner,
            None => &self.partial_template,
        }
    }

    /// Which rows of `left` (input layout) a row of `right` matches in the view's join
    /// (its ON condition alone, as a LEFT JOIN decides it).
    pub async fn matched(
        &self,
        left: &RecordBatch,
        right: Vec<RecordBatch>,
    ) -> Result<BooleanArray> {
        let plans = self.outer_plans()?;
        let n = left.num_rows();
        if n == 0 || right.iter().all(|b| b.num_rows() == 0) {
            return Ok(BooleanArray::from(vec![false; n]));
        }
        // The left rows' `_src` carries their row number through the join.
        let at = left.schema().index_of(SOURCE_COLUMN)?;
        let mut columns = left.columns().to_vec();
        columns[at] = Arc::new(Int32Array::from_iter_values(0..n as i32)) as ArrayRef;
        let numbered = RecordBatch::try_new(left.schema(), columns)?;
        let out = self
            .run_joined(&plans.matching, vec![numbered], right)
            .await?;
        let mut hit = vec![false; n];
        for b in out {
            let rows = cast(b.column(0), &DataType::Int32)?;
            let rows = rows
                .as_any()
                .downcast_ref::<Int32Array>()
                .expect("cast to Int32");
            for r in rows.iter().flatten() {
                hit[r as usize] = true;
            }
        }
        Ok(BooleanArray::from(hit))
    }

    /// The states of one unmatched row `(L, NULL)` per row of `left` (input layout): the
    /// view's LEFT plan fed no right rows.
    pub async fn run_unmatched(&self, left: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.outer_plans()?;
        if left.iter().all(|b| b.num_rows() == 0) {
            return Ok(Vec::new());
        }
        let out = self
            .run_joined(&self.partial_template, left, vec![])
            .await?;
        self.conform(out)
    }

    /// `states` with weight −1: every count and sum negated (wrapping, as sums add).
    pub fn negate_states(&self, states: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let negated = &self.outer_plans()?.negated;
        states
            .into_iter()
            .map(|b| {
                let mut columns = b.columns().to_vec();
                for &i in negated {
                    columns[i] = neg_wrapping(&columns[i])?;
                }
                Ok(RecordBatch::try_new(b.schema(), columns)?)
            })
            .collect()
    }

    /// Check once, when compiled, that every state a weight −1 negates can be.
    pub(super) fn check_negatable(&self) -> Result<()> {
        let empty = RecordBatch::new_empty(self.partial_schema.clone());
        self.negate_states(vec![empty]).map(|_| ()).map_err(|e| CoreError::View {
            view: self.name.clone(),
            message: format!("a LEFT JOIN of two streams takes unmatched rows back by negating their states, which these cannot be: {e}"),
        })
    }
}

/// Plan the extra plans of a LEFT join of two streams in the compile session `ctx`.
pub(super) async fn plan_outer(
    ctx: &datafusion::prelude::SessionContext,
    sql: &OuterSql,
    partial: &Arc<dyn ExecutionPlan>,
) -> std::result::Result<OuterPlans, String> {
    let plan = |text: &str| {
        let state = ctx.state();
        let text = text.to_string();
        async move {
            let logical = state.create_logical_plan(&text).await?;
            state.create_physical_plan(&logical).await
        }
    };
    let strip = |e: datafusion::error::DataFusionError| {
        format!("SQL does not plan: {}", super::strip_df(&e))
    };
    let inner_plan = plan(&sql.inner).await.map_err(strip)?;
    let inner = find_partial(&inner_plan)
        .ok_or_else(|| "internal: no partial aggregate in the INNER plan".to_string())?;
    let matching = plan(&sql.matching).await.map_err(strip)?;
    Ok(OuterPlans {
        inner,
        matching,
        negated: negated_columns(partial).map_err(|e| e.to_string())?,
    })
}
