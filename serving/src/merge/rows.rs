//! A view's merged rows as the API shows them: JSON rows ordered by window then keys,
//! each saying which layers it came from and whether its window is complete; then
//! filtered, ordered and paged per request.

use datafusion::arrow::array::{RecordBatch, TimestampMicrosecondArray};
use datafusion::arrow::compute::cast;
use serde_json::{Map, Value};
use tributary_core::schema::timestamp_type;
use tributary_core::view::{CompiledView, Origin, SOURCE_COLUMN};

use super::ViewQuery;
use crate::json::cell;

/// One merged row as the API shows it, with what it is ordered by.
#[derive(Debug)]
pub(super) struct JsonRow {
    /// Window start (micros).
    window: i64,
    /// The key columns' values as text, for the default order.
    sort_keys: Vec<String>,
    /// Keys, window start and values, with `_source` and `complete`.
    obj: Map<String, Value>,
}

pub(super) type JsonRows = Vec<JsonRow>;

/// Final batches to JSON rows, ordered by window then keys; each row says which layers
/// it came from and whether the watermark has passed its window.
pub(super) fn json_rows(
    view: &CompiledView,
    batches: &[RecordBatch],
    watermark: Option<i64>,
) -> Vec<JsonRow> {
    let mut rows = Vec::new();
    for b in batches {
        let schema = b.schema();
        // date_bin keeps its input's unit only for some types: normalise to micros.
        let window = b
            .column_by_name(&view.window)
            .and_then(|c| cast(c, &timestamp_type()).ok())
            .and_then(|c| {
                c.as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .cloned()
            });
        for (i, end) in view.row_ends(b).into_iter().enumerate() {
            let w = window.as_ref().map(|w| w.value(i)).unwrap_or(0);
            let mut obj = Map::new();
            for (c, f) in b.columns().iter().zip(schema.fields()) {
                let v = cell(c.as_ref(), i);
                if f.name() == SOURCE_COLUMN {
                    let src = v
                        .as_i64()
                        .and_then(Origin::from_tags)
                        .map_or("unknown", Origin::name);
                    obj.insert("_source".into(), Value::String(src.into()));
                    let complete = watermark.zip(end).is_some_and(|(wm, end)| end <= wm);
                    obj.insert("complete".into(), Value::Bool(complete));
                } else {
                    obj.insert(f.name().clone(), v);
                }
            }
            let sort_keys = view
                .keys
                .iter()
                .map(|k| obj.get(k).map(|v| v.to_string()).unwrap_or_default())
                .collect();
            rows.push(JsonRow {
                window: w,
                sort_keys,
                obj,
            });
        }
    }
    rows.sort_by(|a, b| (a.window, &a.sort_keys).cmp(&(b.window, &b.sort_keys)));
    rows
}

/// The rows `q` asks for: filtered, ordered (by window then keys unless asked
/// otherwise), paged. Returns the number of matching rows and the page.
pub(super) fn to_rows(rows: &[JsonRow], q: &ViewQuery) -> (usize, Vec<Map<String, Value>>) {
    let mut matching: Vec<&JsonRow> = rows
        .iter()
        .filter(|r| !(q.from.is_some_and(|f| r.window < f) || q.to.is_some_and(|t| r.window >= t)))
        .filter(|r| {
            q.keys
                .iter()
                .all(|(k, wanted)| key_matches(r.obj.get(k), wanted))
        })
        .collect();
    if let Some((column, desc)) = &q.order {
        // Stable: ties keep window-then-keys order.
        matching.sort_by(|a, b| {
            let o = compare(a.obj.get(column), b.obj.get(column));
            if *desc { o.reverse() } else { o }
        });
    }
    let total = matching.len();
    let limit = q.limit.unwrap_or(usize::MAX);
    let page = matching
        .into_iter()
        .skip(q.offset)
        .take(limit)
        .map(|r| {
            let mut obj = r.obj.clone();
            if !q.meta {
                obj.remove("_source");
                obj.remove("complete");
            }
            obj
        })
        .collect();
    (total, page)
}

/// Whether a row's key value is one of the values a query names (text compared as is,
/// other values as their JSON text).
fn key_matches(value: Option<&Value>, wanted: &[String]) -> bool {
    match value {
        Some(Value::String(s)) => wanted.iter().any(|w| w == s),
        Some(Value::Null) | None => false,
        Some(other) => wanted.contains(&other.to_string()),
    }
}

/// JSON values in a total order: nulls first, numbers by value, then text.
fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (None | Some(Value::Null), None | Some(Value::Null)) => Ordering::Equal,
        (None | Some(Value::Null), _) => Ordering::Less,
        (_, None | Some(Value::Null)) => Ordering::Greater,
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&y.as_f64().unwrap_or(0.0)),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
    }
}
