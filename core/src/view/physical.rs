//! The compiled physical plan, read: where its partial aggregate is, which of the
//! partial states' columns an output column comes from, and whether its aggregates can
//! start at all.

use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};

pub(super) fn is_partial(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<AggregateExec>()
        .is_some_and(|a| *a.mode() == AggregateMode::Partial)
}

pub(super) fn find_partial(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    if is_partial(plan) {
        return Some(plan.clone());
    }
    plan.children().into_iter().find_map(find_partial)
}

/// The group column of the final aggregate that becomes output column `name`, followed
/// down through projections and the operators that pass columns through. Final and
/// partial aggregates order their group columns alike, so this is also its index in the
/// partial states.
pub(super) fn output_source(plan: &Arc<dyn ExecutionPlan>, name: &str) -> Option<usize> {
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

/// Arguments an aggregate checks only when its first group starts (a percentile outside
/// 0..1, or one that is not a literal) are errors of the definition: found when the view
/// is compiled, not in every micro-batch (where they would set every event aside).
pub(super) fn check_accumulators(
    partial: &Arc<dyn ExecutionPlan>,
) -> std::result::Result<(), String> {
    let Some(aggregate) = partial.downcast_ref::<AggregateExec>() else {
        return Ok(());
    };
    for a in aggregate.aggr_expr() {
        a.create_accumulator()
            .map_err(|e| format!("`{}`: {}", a.name(), super::strip_df(&e)))?;
    }
    Ok(())
}

/// Whether an aggregate of the partial side keeps a sketch of hashed values
/// (`approx_distinct`): DataFusion hashes a short string held as a string view apart
/// from the same string held as plain Utf8, so such a view's states are comparable
/// across layers only when both read strings alike.
pub(super) fn hashes_values(partial: &Arc<dyn ExecutionPlan>) -> bool {
    partial.downcast_ref::<AggregateExec>().is_some_and(|a| {
        a.aggr_expr()
            .iter()
            .any(|e| e.fun().name() == "approx_distinct")
    })
}
