//! Views that join two streams: `FROM a JOIN b ON … AND b.ts BETWEEN a.ts - X AND
//! a.ts + Y`, an inner join bounded in event time, aggregated per window of `a`.
//!
//! Each joined pair belongs to exactly one layer, the layer of the larger `_ingest_ts`
//! of its two events: the batch layer joins the events below its cutoff on both sides,
//! the speed layer every pair with an event at or above it (see the speed layer's
//! `join` module for how it finds each such pair once). Both run the same partial plan;
//! it has one scan per stream, and each layer feeds each its own rows.
//!
//! The time bound is what makes the join finite: an event can only meet partners
//! within `reach` of its own event time, so the speed layer reads at most that much of
//! the master table to find a late event's older partners.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Join, JoinType, LogicalPlan, Operator};
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;

use super::CompiledView;
use crate::error::{CoreError, Result};
use crate::schema::StreamSchema;
use crate::window::interval_micros;

/// Schema metadata key naming the stream a scan of a join view's plan reads, so that
/// each layer can feed each scan its own rows.
pub(super) const STREAM_KEY: &str = "tributary.stream";

/// The right-hand stream of a view that joins two streams, and the join's time bound.
#[derive(Debug, Clone)]
pub struct StreamJoin {
    /// The stream on the right of the join (the view's `stream` is on the left).
    pub other: String,
    /// The right stream's event-time field.
    pub other_event_time: String,
    /// The rows the right stream's scan reads: its view schema plus `_src`.
    pub other_input_schema: SchemaRef,
    /// Every joined pair has `right.ts - left.ts` at least this (microseconds).
    pub lower_us: i64,
    /// … and at most this.
    pub upper_us: i64,
    /// A LEFT join: unmatched left events count too (see the `outer_join` module).
    pub outer: bool,
}

impl StreamJoin {
    /// How far apart in event time two joined events can be, either way.
    pub fn reach_us(&self) -> i64 {
        self.lower_us
            .unsigned_abs()
            .max(self.upper_us.unsigned_abs()) as i64
    }
}

/// What the shape check learns of a join whose right side is a stream.
pub(super) struct JoinShape {
    pub(super) other: String,
    pub(super) lower_us: i64,
    pub(super) upper_us: i64,
    pub(super) outer: bool,
}

const BOUND_USAGE: &str = "a join of two streams needs a time bound on both event times, e.g. `ON a.k = b.k AND b.ts BETWEEN a.ts - INTERVAL '10 minutes' AND a.ts + INTERVAL '10 minutes'`: without one, every event would wait for partners for ever";

/// The stream a join side reads, through aliases, projections, filters and a hop
/// window's unnest (`None`: something else, e.g. a dimension table or another join).
pub(super) fn scanned(plan: &LogicalPlan) -> Option<String> {
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::SubqueryAlias(s) => node = s.input.as_ref(),
            LogicalPlan::Projection(p) => node = p.input.as_ref(),
            LogicalPlan::Filter(f) => node = f.input.as_ref(),
            LogicalPlan::Unnest(u) => node = u.input.as_ref(),
            LogicalPlan::TableScan(scan) => return Some(scan.table_name.table().to_string()),
            _ => return None,
        }
    }
}

/// `Some` when `j` joins two streams: checked to be an inner join of two different
/// streams with a time bound on both event times.
pub(super) fn stream_join(
    j: &Join,
    streams: &[StreamSchema],
) -> std::result::Result<Option<JoinShape>, String> {
    let is_stream = |name: &str| streams.iter().find(|s| s.name == name);
    let Some(right) = scanned(&j.right).and_then(|n| is_stream(&n).cloned()) else {
        return Ok(None);
    };
    let Some(left) = scanned(&j.left).and_then(|n| is_stream(&n).cloned()) else {
        return Err(format!(
            "a view that joins the stream `{}` reads two streams joined directly (FROM a JOIN b), not a join of joins",
            right.name
        ));
    };
    if left.name == right.name {
        return Err(format!(
            "a stream joined with itself (`{}`) is not supported in a view",
            left.name
        ));
    }
    if let Some(s) = [&left, &right].into_iter().find(|s| s.dedup.is_some()) {
        return Err(format!(
            "`{}` has a dedup rule (id-field), which a join of two streams does not support yet",
            s.name
        ));
    }
    if !matches!(j.join_type, JoinType::Inner | JoinType::Left) {
        return Err(format!(
            "{} JOIN of two streams is not supported: join `{}` and `{}` with an INNER or LEFT JOIN (for a RIGHT JOIN, swap the two streams)",
            j.join_type, left.name, right.name
        ));
    }
    let filter = j.filter.as_ref().ok_or_else(|| BOUND_USAGE.to_string())?;
    let side = |e: &Expr| -> Option<Side> {
        let Expr::Column(c) = strip(e) else {
            return None;
        };
        if c.name == left.event_time && j.left.schema().has_column(c) {
            Some(Side::Left)
        } else if c.name == right.event_time && j.right.schema().has_column(c) {
            Some(Side::Right)
        } else {
            None
        }
    };
    let (mut lower, mut upper) = (None::<i64>, None::<i64>);
    for c in split_conjunction(filter) {
        for (bound, value) in constraints(c, &side)? {
            match bound {
                Bound::Lower => lower = Some(lower.map_or(value, |l| l.max(value))),
                Bound::Upper => upper = Some(upper.map_or(value, |u| u.min(value))),
            }
        }
    }
    let (Some(lower_us), Some(upper_us)) = (lower, upper) else {
        return Err(BOUND_USAGE.into());
    };
    Ok(Some(JoinShape {
        other: right.name,
        lower_us,
        upper_us,
        outer: j.join_type == JoinType::Left,
    }))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Left,
    Right,
}

enum Bound {
    Lower,
    Upper,
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Cast(c) => strip(&c.expr),
        Expr::TryCast(c) => strip(&c.expr),
        Expr::Alias(a) => strip(&a.expr),
        other => other,
    }
}

/// An event time plus or minus an INTERVAL literal: its side and offset.
fn term(
    e: &Expr,
    side: &dyn Fn(&Expr) -> Option<Side>,
) -> std::result::Result<Option<(Side, i64)>, String> {
    if let Some(s) = side(e) {
        return Ok(Some((s, 0)));
    }
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = strip(e) else {
        return Ok(None);
    };
    let Some(s) = side(left) else {
        return Ok(None);
    };
    let sign = match op {
        Operator::Plus => 1,
        Operator::Minus => -1,
        _ => return Ok(None),
    };
    let us = interval_micros(right).map_err(|m| format!("the join's time bound: {m}"))?;
    Ok(Some((s, sign * us)))
}

/// The bounds on `right.ts - left.ts` that one condition of the join states.
fn constraints(
    e: &Expr,
    side: &dyn Fn(&Expr) -> Option<Side>,
) -> std::result::Result<Vec<(Bound, i64)>, String> {
    match e {
        Expr::Between(b) if !b.negated => {
            let mut out = compare(&b.expr, Operator::GtEq, &b.low, side)?;
            out.extend(compare(&b.expr, Operator::LtEq, &b.high, side)?);
            Ok(out)
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => compare(left, *op, right, side),
        _ => Ok(vec![]),
    }
}

/// `l op r`, where each side is an event time plus an offset, as a bound on `right.ts -
/// left.ts` (nothing when it does not compare the two streams' event times).
fn compare(
    l: &Expr,
    op: Operator,
    r: &Expr,
    side: &dyn Fn(&Expr) -> Option<Side>,
) -> std::result::Result<Vec<(Bound, i64)>, String> {
    let is_lower = match op {
        Operator::Gt | Operator::GtEq => true,
        Operator::Lt | Operator::LtEq => false,
        _ => return Ok(vec![]),
    };
    let (Some((ls, lo)), Some((rs, ro))) = (term(l, side)?, term(r, side)?) else {
        return Ok(vec![]);
    };
    if ls == rs {
        return Ok(vec![]);
    }
    // right + a op left + b  <=>  right - left op b - a; with the sides swapped the
    // difference changes sign and so does the comparison.
    let (value, lower) = match ls {
        Side::Right => (ro - lo, is_lower),
        Side::Left => (lo - ro, !is_lower),
    };
    Ok(vec![(
        if lower { Bound::Lower } else { Bound::Upper },
        value,
    )])
}

/// The schema a stream's scan is planned with in a join view: its input schema named
/// by [`STREAM_KEY`].
pub(super) fn keyed_schema(input: &SchemaRef, stream: &str) -> SchemaRef {
    let mut metadata = input.metadata().clone();
    metadata.insert(STREAM_KEY.into(), stream.into());
    Arc::new(Schema::new_with_metadata(input.fields().clone(), metadata))
}

impl CompiledView {
    /// The error of a one-stream entry point called for a view joining two streams.
    pub(super) fn not_for_joins(&self) -> CoreError {
        CoreError::View {
            view: self.name.clone(),
            message: "internal: a view joining two streams runs through its join entry points"
                .into(),
        }
    }

    /// The right-hand stream and time bound of a view joining two streams.
    pub fn stream_join(&self) -> Option<&StreamJoin> {
        self.join.as_ref()
    }

    /// Every stream the view reads: its own, and the right-hand one of a stream join.
    pub fn reads(&self, stream: &str) -> bool {
        self.stream == stream || self.join.as_ref().is_some_and(|j| j.other == stream)
    }

    /// Run a stream join's partial side over `left` rows of the view's stream and
    /// `right` rows of the other (both in input-schema layout): the states of every
    /// pair of the two that the join matches (a LEFT join's unmatched rows are not
    /// pairs: see [`CompiledView::run_unmatched`]).
    pub async fn run_partial_join(
        &self,
        left: Vec<RecordBatch>,
        right: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>> {
        let out = self.run_joined(self.pairs_template(), left, right).await?;
        self.conform(out)
    }

    /// Run `template` (one of the view's plans) with the view's stream's scan fed `left`
    /// and the other stream's `right`.
    pub(super) async fn run_joined(
        &self,
        template: &Arc<dyn ExecutionPlan>,
        left: Vec<RecordBatch>,
        right: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>> {
        let join = self.join.as_ref().ok_or_else(|| CoreError::View {
            view: self.name.clone(),
            message: "internal: not a view joining two streams".into(),
        })?;
        let mut feeds = [
            (self.stream.as_str(), self.input_schema.clone(), Some(left)),
            (
                join.other.as_str(),
                join.other_input_schema.clone(),
                Some(right),
            ),
        ];
        let plan = self.scans_of(template, |table| {
            let named = table.metadata().get(STREAM_KEY)?;
            let (_, schema, data) = feeds.iter_mut().find(|(name, _, _)| name == named)?;
            Some((schema.clone(), data.take().unwrap_or_default()))
        })?;
        Ok(collect(plan, self.task_ctx.clone()).await?)
    }

    /// The partial side of a stream join over two tables (the batch layer's master
    /// tables below its cutoff), on every core; see [`CompiledView::plan_partial`].
    pub async fn plan_partial_join(
        &self,
        left: Arc<dyn TableProvider>,
        right: Arc<dyn TableProvider>,
        partitions: Option<usize>,
    ) -> Result<(Arc<dyn ExecutionPlan>, Arc<TaskContext>)> {
        let join = self.join.as_ref().ok_or_else(|| CoreError::View {
            view: self.name.clone(),
            message: "internal: not a view joining two streams".into(),
        })?;
        self.plan_partial_over(&[(&self.stream, left), (&join.other, right)], partitions)
            .await
    }

    /// The view's SQL in one ordinary pass over rows of its stream (`left`) and, for a
    /// stream join, of the other stream (`right`): the reference the layers must equal.
    pub async fn run_reference_streams(
        &self,
        left: Vec<RecordBatch>,
        right: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>> {
        let Some(join) = &self.join else {
            return self.run_reference(left).await;
        };
        let ctx = SessionContext::new();
        super::register_udfs(&ctx);
        let l = MemTable::try_new(self.input_schema.clone(), vec![left])?;
        let r = MemTable::try_new(join.other_input_schema.clone(), vec![right])?;
        ctx.register_table(self.stream.as_str(), Arc::new(l))?;
        ctx.register_table(join.other.as_str(), Arc::new(r))?;
        Ok(ctx.sql(&self.reference_sql).await?.collect().await?)
    }
}
