//! Session windows: states coalesced across subsets of the events, and the one-pass
//! reference they must equal.
//!
//! A session view's partial plan keeps one state per session of an input batch (the
//! window column is `tributary_session`, the event's session start within its batch),
//! with the hidden `max(ts)` of `session_end` among its aggregates. Before states are
//! reduced or finalized, [`coalesce`] sorts them per key by start and gives every state
//! whose start is at most the gap after the latest end seen so far the start of the
//! session it joins; the reduce then merges states of equal start. That is exact
//! whatever subsets the states were made of (a micro-batch, a speed segment, a batch
//! run, the union of both layers): every session of a subset lies inside one session of
//! all the events, and two consecutive events of a session of all the events, at most a
//! gap apart, lie in subset sessions at most a gap apart, which the sweep joins.

use datafusion::arrow::array::{ArrayRef, RecordBatch, TimestampMicrosecondArray};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::DataType;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, GroupByExpr, Ident, Query, SelectItem, SetExpr, Value, visit_expressions_mut,
};
use std::sync::Arc;

use super::rewrite::{SessionCall, first_select, session_end, source_item, stream_in_from};
use crate::error::Result;
use crate::window::{SESSION_FUNCTION, SESSION_SQL_NAME, as_micros, session_starts};

/// Where a session view's partial states keep what coalescing reads and writes.
#[derive(Debug, Clone)]
pub struct SessionLayout {
    /// Sessions end after this long without an event (microseconds).
    pub gap_us: i64,
    /// The group columns that are keys (sessions are per key).
    pub keys: Vec<usize>,
    /// The group column holding a state's session start.
    pub start: usize,
    /// The state column of `max(ts)`: a state's last event time.
    pub end: usize,
}

/// Give every state the start of the session it belongs to among `batches` (same
/// schema); the caller's reduce then merges states of one session.
pub fn coalesce(layout: &SessionLayout, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
    let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
    let Some(first) = batches.first() else {
        return Ok(batches);
    };
    let all = concat_batches(&first.schema(), &batches)?;
    let keys: Vec<ArrayRef> = layout.keys.iter().map(|&k| all.column(k).clone()).collect();
    let starts = as_micros(all.column(layout.start))?;
    let ends = as_micros(all.column(layout.end))?;
    let out = session_starts(&keys, &starts, &ends, layout.gap_us)?;
    let field = all.schema().field(layout.start).clone();
    let tz = match field.data_type() {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    };
    let column = TimestampMicrosecondArray::from(out).with_timezone_opt(tz);
    let mut columns = all.columns().to_vec();
    columns[layout.start] = cast(&column, field.data_type())?;
    Ok(vec![RecordBatch::try_new(all.schema(), columns)?])
}

/// The session view's SQL as one ordinary pass with window functions: per key, events
/// ordered by time, a new session where the previous event is more than the gap before;
/// the session's start is its first event. `query` is the view as written.
pub(super) fn reference_sql(
    mut query: Query,
    call: &SessionCall,
) -> std::result::Result<String, String> {
    let keys: Vec<String> = group_keys(&query)?.iter().map(|g| g.to_string()).collect();
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err("a view must be a single SELECT".into());
    };
    let [from] = select.from.as_slice() else {
        return Err("a view reads exactly one stream in FROM".into());
    };
    if !from.joins.is_empty() {
        return Err(
            "a session window reads its stream alone: joins are not supported with it".into(),
        );
    }
    let (_, alias) = stream_in_from(&from.relation, "session windows")?;
    let filter = select
        .selection
        .take()
        .map(|w| format!(" WHERE {w}"))
        .unwrap_or_default();
    let key_columns: String = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!(", {k} AS __k{i}"))
        .collect();
    let per_key: Vec<String> = (0..keys.len()).map(|i| format!("__k{i}")).collect();
    let partition = |extra: &[&str]| {
        let all: Vec<&str> = per_key
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
            .collect();
        if all.is_empty() {
            String::new()
        } else {
            format!("PARTITION BY {} ", all.join(", "))
        }
    };
    let (ts, gap) = (&call.ts, &call.gap);
    let by_key = partition(&[]);
    let by_session = partition(&["__sid"]);
    let derived = format!(
        "SELECT * FROM (\
           SELECT *, min(__ts) OVER ({by_session}) AS __session_start FROM (\
             SELECT *, sum(__new) OVER ({by_key}ORDER BY __ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS __sid FROM (\
               SELECT *, CASE WHEN lag(__ts) OVER ({by_key}ORDER BY __ts) + {gap} >= __ts THEN 0 ELSE 1 END AS __new FROM (\
                 SELECT *, {ts} AS __ts{key_columns} FROM {from}{filter})))) AS {alias}"
    );
    select.from = first_select(&derived).from;
    select.projection.push(session_end(call));
    select.projection.push(source_item(None));
    let _ = visit_expressions_mut(&mut query, |e| {
        if is_session(e) {
            *e = SqlExpr::Identifier(Ident::new("__session_start"));
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    Ok(query.to_string())
}

/// The GROUP BY items of a session view other than the session, as expressions (an
/// alias or a position stands for its SELECT item): sessions are per these keys.
pub(super) fn group_keys(query: &Query) -> std::result::Result<Vec<SqlExpr>, String> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err("a view must be a single SELECT".into());
    };
    let GroupByExpr::Expressions(groups, _) = &select.group_by else {
        return Err("GROUP BY ALL is not supported in a session view".into());
    };
    Ok(groups
        .iter()
        .map(|g| resolve_group(g, &select.projection))
        .filter(|g| !is_session(g))
        .collect())
}

/// Append the view's keys to every `tributary_session(ts, gap)` call, so that the function
/// can make sessions per key within each input batch.
pub(super) fn pass_keys(query: &mut Query, keys: &[SqlExpr]) {
    use datafusion::sql::sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments};
    let _ = visit_expressions_mut(query, |e| {
        if let SqlExpr::Function(f) = e
            && f.name.to_string() == SESSION_FUNCTION
            && let FunctionArguments::List(list) = &mut f.args
        {
            for k in keys {
                list.args
                    .push(FunctionArg::Unnamed(FunctionArgExpr::Expr(k.clone())));
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// `session(…)` (or `session_window(…)`) as the view writes it.
pub(super) fn is_session(e: &SqlExpr) -> bool {
    matches!(e, SqlExpr::Function(f) if {
        let name = f.name.to_string().to_lowercase();
        name == SESSION_SQL_NAME || name == "session_window"
    })
}

/// A GROUP BY item as the expression it names: an output alias or a position stands
/// for the SELECT item.
fn resolve_group(g: &SqlExpr, projection: &[SelectItem]) -> SqlExpr {
    let item = match g {
        SqlExpr::Value(v) => match &v.value {
            Value::Number(n, _) => n
                .parse::<usize>()
                .ok()
                .and_then(|n| n.checked_sub(1))
                .and_then(|i| projection.get(i)),
            _ => None,
        },
        SqlExpr::Identifier(id) => projection.iter().find(
            |p| matches!(p, SelectItem::ExprWithAlias { alias, .. } if alias.value == id.value),
        ),
        _ => None,
    };
    match item {
        Some(SelectItem::ExprWithAlias { expr, .. } | SelectItem::UnnamedExpr(expr)) => {
            expr.clone()
        }
        _ => g.clone(),
    }
}

/// Where coalescing finds a session view's start, keys and last event time among the
/// partial states: group columns come first, then each aggregate's state columns.
pub(super) fn layout(
    shape: &super::shape::SessionShape,
    partial: &Arc<dyn ExecutionPlan>,
    gap_us: i64,
) -> std::result::Result<SessionLayout, String> {
    let agg = partial
        .downcast_ref::<AggregateExec>()
        .expect("find_partial returns an AggregateExec");
    let groups = agg.group_expr().expr().len();
    if groups != shape.groups || agg.aggr_expr().len() <= shape.last_event {
        return Err(
            "internal: the partial plan's groups or aggregates differ from the query's".into(),
        );
    }
    let mut end = groups;
    for a in &agg.aggr_expr()[..shape.last_event] {
        end += a.state_fields().map_err(|e| e.to_string())?.len();
    }
    Ok(SessionLayout {
        gap_us,
        keys: (0..groups).filter(|g| *g != shape.window_group).collect(),
        start: shape.window_group,
        end,
    })
}
