//! Which queries a view may be: a projection (and HAVING filter) over one aggregate of
//! mergeable functions, grouped by one event-time window, over one stream (joined only
//! with dimension tables). The check names what is not supported.

use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, Projection};

use super::SOURCE_COLUMN;
use super::stream_join::{JoinShape, stream_join};
use crate::dimension::DimensionTable;
use crate::schema::StreamSchema;
use crate::window::{
    HOP_COLUMN, HOP_FUNCTION, SESSION_FUNCTION, WindowKind, WindowSpec, interval_micros,
    timestamp_micros,
};

/// Aggregates whose states merge across layers (exactly, or for the approximate ones
/// within their sketch's own error). Each keeps a small, fixed-size state per group
/// (the variances their count, mean and sum of squared deviations, merged with Chan's
/// formula), so a window's state does not grow with its events: `median`, `array_agg`
/// and exact `count(DISTINCT …)` would keep every value. `corr` is left out: DataFusion
/// keeps its grouped and ungrouped states in two different layouts under one schema.
const SUPPORTED_AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "stddev",
    "stddev_pop",
    "var",
    "var_pop",
    "covar_samp",
    "covar_pop",
    "bool_and",
    "bool_or",
    "bit_and",
    "bit_or",
    "bit_xor",
    "approx_distinct",
    "approx_percentile_cont",
    "approx_median",
];

/// Aggregates written with `WITHIN GROUP (ORDER BY …)`, which is their argument.
const ORDERED_AGGREGATES: &[&str] = &["approx_percentile_cont"];

pub(super) struct Shape {
    pub(super) stream: String,
    pub(super) keys: Vec<String>,
    pub(super) window: String,
    pub(super) window_spec: WindowSpec,
    pub(super) values: Vec<String>,
    /// Session views: the group column of the window and the index (among the
    /// aggregate's expressions) of the `max(ts)` that gives a session's last event.
    pub(super) session: Option<SessionShape>,
    /// A view joining two streams: the other one and the time bound.
    pub(super) join: Option<super::stream_join::JoinShape>,
}

pub(super) struct SessionShape {
    pub(super) window_group: usize,
    pub(super) groups: usize,
    pub(super) last_event: usize,
}

/// Why a view's SQL did not plan once rewritten because the hidden `_src` aggregate
/// the rewrite adds found no stream to read (`SELECT 1`, a dimension table alone).
pub(super) fn unplanned(streams: &[StreamSchema]) -> String {
    let names: Vec<&str> = streams.iter().map(|s| s.name.as_str()).collect();
    format!(
        "a view reads one stream (FROM {}) and groups by an event-time window",
        names.join(" | ")
    )
}

/// Check the logical plan is the supported shape: a projection (and HAVING filter)
/// over one aggregate over filters/projections of one stream.
pub(super) fn check_shape(
    plan: &LogicalPlan,
    streams: &[StreamSchema],
    tables: &[Arc<DimensionTable>],
) -> std::result::Result<Shape, String> {
    let LogicalPlan::Projection(projection) = plan else {
        return Err(format!("unsupported query shape: {}", plan.display()));
    };
    check_deterministic(plan)?;
    let (aggregate, stream_name, join) = aggregate_of(projection, streams, tables)?;
    let stream = streams
        .iter()
        .find(|s| s.name == stream_name)
        .ok_or_else(|| format!("view reads `{stream_name}`, which is not a declared stream"))?;
    for e in &aggregate.aggr_expr {
        check_aggregate(e)?;
        if join.as_ref().is_some_and(|j| j.outer) {
            check_invertible(e)?;
        }
    }
    let (window_idx, window_spec) = window_group(aggregate, stream)?;
    let (keys, window, values) = output_roles(projection, aggregate, window_idx)?;
    let session = match window_spec.kind {
        WindowKind::Session => Some(session_shape(aggregate, stream, window_idx)?),
        _ => None,
    };
    Ok(Shape {
        stream: stream.name.clone(),
        keys,
        window,
        window_spec,
        values,
        session,
        join,
    })
}

/// Refuse functions whose value depends on when or how often they run (`now()`,
/// `random()`, `uuid()`): the speed layer evaluates a view when an event arrives and the
/// batch layer when it runs, so their states would not merge into one answer.
fn check_deterministic(plan: &LogicalPlan) -> std::result::Result<(), String> {
    use datafusion::logical_expr::Volatility;
    let mut found = None;
    plan.apply(|node| {
        for e in node.expressions() {
            e.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && f.func.signature().volatility != Volatility::Immutable
                {
                    found = Some(f.func.name().to_string());
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        Ok(match found {
            Some(_) => TreeNodeRecursion::Stop,
            None => TreeNodeRecursion::Continue,
        })
    })
    .map_err(|e| format!("internal: walking the plan: {e}"))?;
    match found {
        None => Ok(()),
        Some(name) => Err(format!(
            "`{name}()` gives another value each time it runs, so the speed layer (when an event arrives) and the batch layer (when it runs) would not agree; a view uses only functions of its rows (the event time `ts`, not the clock)"
        )),
    }
}

/// A session view reads its stream alone, and its aggregates include `max(ts)` (the
/// `session_end` compilation adds).
fn session_shape(
    aggregate: &Aggregate,
    stream: &StreamSchema,
    window_group: usize,
) -> std::result::Result<SessionShape, String> {
    if find_node(aggregate.input.as_ref(), &|n| {
        matches!(n, LogicalPlan::Join(_))
    })
    .is_some()
    {
        return Err(
            "a session window reads its stream alone: joins are not supported with it".into(),
        );
    }
    let last_event = aggregate
        .aggr_expr
        .iter()
        .position(|e| match unalias(e) {
            Expr::AggregateFunction(af) => {
                af.func.name().eq_ignore_ascii_case("max")
                    && af.params.filter.is_none()
                    && matches!(af.params.args.as_slice(),
                        [Expr::Column(c)] if c.name == stream.event_time)
            }
            _ => false,
        })
        .ok_or("internal: a session view without max(ts)")?;
    Ok(SessionShape {
        window_group,
        groups: aggregate.group_expr.len(),
        last_event,
    })
}

/// The aggregate under the projection (through HAVING filters), the stream below it
/// (through filters, projections, the hop window's unnest and joins: with dimension
/// tables, or with a second stream, which is then returned too).
#[allow(clippy::type_complexity)]
fn aggregate_of<'a>(
    projection: &'a Projection,
    streams: &[StreamSchema],
    tables: &[Arc<DimensionTable>],
) -> std::result::Result<(&'a Aggregate, String, Option<JoinShape>), String> {
    let mut node = projection.input.as_ref();
    let aggregate = loop {
        match node {
            LogicalPlan::Aggregate(a) => break a,
            LogicalPlan::Filter(f) => node = f.input.as_ref(),
            other => return Err(unsupported(other)),
        }
    };
    let mut node = aggregate.input.as_ref();
    let (mut join, mut dimensions) = (None, 0);
    let stream = loop {
        match node {
            LogicalPlan::Filter(f) => node = f.input.as_ref(),
            LogicalPlan::Projection(p) => node = p.input.as_ref(),
            LogicalPlan::SubqueryAlias(s) => node = s.input.as_ref(),
            // Only the one a hop(…) window is rewritten into.
            LogicalPlan::Unnest(u) => node = u.input.as_ref(),
            LogicalPlan::Join(j) => {
                match stream_join(j, streams)? {
                    Some(shape) if join.is_none() => join = Some(shape),
                    Some(_) => return Err("a view joins at most two streams".into()),
                    None => {
                        check_join(j, tables)?;
                        dimensions += 1;
                    }
                }
                node = j.left.as_ref();
            }
            LogicalPlan::TableScan(scan) => break scan.table_name.table().to_string(),
            other => return Err(unsupported(other)),
        }
    };
    if join.is_some() && dimensions > 0 {
        return Err(
            "a view that joins two streams cannot join a dimension table too (not supported yet)"
                .into(),
        );
    }
    Ok((aggregate, stream, join))
}

/// The one group expression that is an event-time window: its index and its widths.
fn window_group(
    aggregate: &Aggregate,
    stream: &StreamSchema,
) -> std::result::Result<(usize, WindowSpec), String> {
    if aggregate.group_expr.is_empty() {
        return Err(
            "a view needs GROUP BY with an event-time window, e.g. GROUP BY date_bin(INTERVAL '10 minutes', ts)"
                .into(),
        );
    }
    let mut window = None;
    for (i, g) in aggregate.group_expr.iter().enumerate() {
        if matches!(g, Expr::GroupingSet(_)) {
            return Err("GROUPING SETS, CUBE and ROLLUP are not supported in a view".into());
        }
        let Some((arg, spec)) = window_of(g, aggregate.input.as_ref())? else {
            continue;
        };
        if window.is_some() {
            return Err("a view may group by only one window (date_bin, hop or session)".into());
        }
        if arg != stream.event_time {
            return Err(format!(
                "the window must bin the event-time field `{}`, not `{arg}`",
                stream.event_time
            ));
        }
        window = Some((i, spec));
    }
    let hopping = window.is_some_and(|(_, w)| w.kind == WindowKind::Hopping);
    if let Some(unnest) = find_node(aggregate.input.as_ref(), &|n| {
        matches!(n, LogicalPlan::Unnest(_))
    }) && !hopping
    {
        return Err(unsupported(unnest));
    }
    window.ok_or_else(|| {
        format!(
            "GROUP BY needs one event-time window: date_bin(INTERVAL '…', {})",
            stream.event_time
        )
    })
}

/// The output columns by role: group keys, the window, and aggregate values.
#[allow(clippy::type_complexity)]
fn output_roles(
    projection: &Projection,
    aggregate: &Aggregate,
    window_idx: usize,
) -> std::result::Result<(Vec<String>, String, Vec<String>), String> {
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
        if out.is_empty() {
            return Err(format!(
                "output column {} has an empty name: name it with AS",
                i + 1
            ));
        }
        if matches!(out.as_str(), "_source" | "complete") {
            return Err(format!(
                "`{out}` is a field every answer row carries already (`_source`, `complete`): name the column otherwise"
            ));
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
    Ok((keys, window, values))
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

/// A LEFT join of two streams takes unmatched rows back: only sums and counts can be.
fn check_invertible(e: &Expr) -> std::result::Result<(), String> {
    if let Expr::AggregateFunction(af) = unalias(e) {
        let name = af.func.name().to_lowercase();
        let hidden = af
            .params
            .args
            .iter()
            .any(|a| matches!(a, Expr::Column(c) if c.name == SOURCE_COLUMN));
        if !hidden && !super::outer_join::invertible(&name) {
            return Err(super::outer_join::refuse_aggregate(&name));
        }
    }
    Ok(())
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
        Expr::ScalarFunction(f) if f.func.name() == SESSION_FUNCTION => {
            // Then the view's keys (see `session::pass_keys`).
            let [ts, gap, ..] = f.args.as_slice() else {
                return Err("session takes two arguments: session(ts, INTERVAL gap)".into());
            };
            let gap_us = interval_micros(gap).map_err(|m| format!("session's gap: {m}"))?;
            let spec = WindowSpec {
                kind: WindowKind::Session,
                size_us: gap_us,
                slide_us: gap_us,
                origin_us: 0,
            };
            Ok(Some((column_name(ts), spec)))
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
            crate::window::check_hop(size_us, slide_us)?;
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
