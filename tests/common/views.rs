//! The reference every layer must agree with: a view's SQL run by DataFusion in one
//! ordinary pass over every accepted event, turned into the JSON rows the view API
//! serves (values, window and `complete`; `_source` is left out).

use serde_json::{Map, Value};
use tributary_core::config::{ConfigSource, from_toml_str};
use tributary_core::pipeline::Pipeline;
use tributary_core::schema::{BatchDecoder, LogPosition};
use tributary_core::view::{CompiledView, SOURCE_BATCH, SOURCE_COLUMN, tag_source};

pub type Row = Map<String, Value>;

/// Compile the streams and views of a configuration text.
pub async fn pipeline(text: &str) -> Pipeline {
    let config = from_toml_str(text).expect("test pipeline parses");
    Pipeline::from_config(&config, &ConfigSource::EmbeddedDefault)
        .await
        .expect("test pipeline compiles")
}

/// The view's answer over `events` (those the stream accepts), as API rows.
pub async fn reference(pipeline: &Pipeline, view: &CompiledView, events: &[Value]) -> Vec<Row> {
    let stream = pipeline
        .streams
        .iter()
        .find(|s| s.name == view.stream)
        .unwrap();
    let mut decoder = BatchDecoder::new(stream, false);
    for (i, e) in events.iter().enumerate() {
        let at = LogPosition {
            partition: 0,
            offset: i as u64,
            ingest_ts: 1,
        };
        // Rejected events are not accepted: the reference leaves them out as well.
        let _ = decoder.push(e, at);
    }
    let input = decoder.flush().unwrap();
    let max_event_ts = max_ts(&input, &view.event_time);
    let input = tag_source(&input, SOURCE_BATCH, &view.input_schema).unwrap();
    let out = view.run_reference(vec![input]).await.unwrap();
    rows_of(view, &out, view.watermark(max_event_ts))
}

/// The view's answer over events of several streams (`(stream, event)`, those the
/// streams accept): a view joining two streams joins them in one pass.
pub async fn reference_streams(
    pipeline: &Pipeline,
    view: &CompiledView,
    events: &[(String, Value)],
) -> Vec<Row> {
    let of = |name: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|(s, _)| s == name)
            .map(|(_, e)| e.clone())
            .collect()
    };
    let Some(join) = view.stream_join() else {
        return reference(pipeline, view, &of(&view.stream)).await;
    };
    let input = |name: &str, schema| {
        let stream = pipeline.stream(name).unwrap();
        let mut decoder = BatchDecoder::new(stream, false);
        for (i, e) in of(name).iter().enumerate() {
            let at = LogPosition {
                partition: 0,
                offset: i as u64,
                ingest_ts: 1,
            };
            let _ = decoder.push(e, at);
        }
        tag_source(&decoder.flush().unwrap(), SOURCE_BATCH, schema).unwrap()
    };
    let left = input(&view.stream, &view.input_schema);
    let right = input(&join.other, &join.other_input_schema);
    let max_event_ts = max_ts(&left, &view.event_time);
    let out = view
        .run_reference_streams(vec![left], vec![right])
        .await
        .unwrap();
    rows_of(view, &out, view.watermark(max_event_ts))
}

/// Late events of a view over events of several streams: a view's windows are of its
/// own stream's event time, so only that stream's events count (see `late_events`).
pub fn late_events_streams(
    pipeline: &Pipeline,
    view: &CompiledView,
    events: &[(String, Value)],
) -> u64 {
    let own: Vec<Value> = events
        .iter()
        .filter(|(s, _)| *s == view.stream)
        .map(|(_, e)| e.clone())
        .collect();
    late_events(pipeline, view, &own)
}

/// Final rows as API rows (`complete` against `watermark`), in reference order.
fn rows_of(
    view: &CompiledView,
    out: &[datafusion::arrow::array::RecordBatch],
    watermark: Option<i64>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for b in out {
        for (i, end) in view.row_ends(b).into_iter().enumerate() {
            let mut row = Row::new();
            for (c, f) in b.columns().iter().zip(b.schema().fields()) {
                if f.name() != SOURCE_COLUMN {
                    row.insert(
                        f.name().clone(),
                        tributary_serving::json::cell(c.as_ref(), i),
                    );
                }
            }
            let complete = watermark.zip(end).is_some_and(|(w, end)| end <= w);
            row.insert("complete".into(), Value::Bool(complete));
            rows.push(row);
        }
    }
    sort(view, rows)
}

fn max_ts(batch: &datafusion::arrow::array::RecordBatch, column: &str) -> Option<i64> {
    use datafusion::arrow::array::TimestampMicrosecondArray;
    let c = batch.column_by_name(column)?;
    datafusion::arrow::compute::max(c.as_any().downcast_ref::<TimestampMicrosecondArray>()?)
}

/// Events that, arriving one by one in this order, update a window the watermark had
/// already closed (what the speed layer's late-events metric counts).
pub fn late_events(pipeline: &Pipeline, view: &CompiledView, events: &[Value]) -> u64 {
    let stream = pipeline
        .streams
        .iter()
        .find(|s| s.name == view.stream)
        .unwrap();
    let mut max: Option<i64> = None;
    let mut late = 0;
    for e in events {
        let mut d = BatchDecoder::new(stream, false);
        let at = LogPosition {
            partition: 0,
            offset: 0,
            ingest_ts: 1,
        };
        if d.push(e, at).is_err() {
            continue;
        }
        let b = d.flush().unwrap();
        late += view.count_late(&b, view.watermark(max));
        max = max.max(max_ts(&b, &view.event_time));
    }
    late
}

/// Rows of a view API answer, without `_source`, in reference order.
pub fn api_rows(view: &CompiledView, answer: &Value) -> Vec<Row> {
    let rows = answer["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows in {answer}"))
        .iter()
        .map(|r| {
            let mut r = r.as_object().unwrap().clone();
            r.remove("_source");
            r
        })
        .collect();
    sort(view, rows)
}

/// `_source` of every row of an answer.
pub fn sources(answer: &Value) -> Vec<String> {
    answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["_source"].as_str().unwrap().to_string())
        .collect()
}

fn sort(view: &CompiledView, mut rows: Vec<Row>) -> Vec<Row> {
    let key = |r: &Row| -> Vec<String> {
        std::iter::once(&view.window)
            .chain(view.keys.iter())
            .map(|k| r.get(k).map(|v| v.to_string()).unwrap_or_default())
            .collect()
    };
    rows.sort_by_key(key);
    rows
}

/// Equal rows, numbers compared to a relative 1e-9 (sums of floats in another order).
pub fn assert_same_rows(context: &str, got: &[Row], want: &[Row]) {
    if let Err(e) = same_rows(context, got, want) {
        panic!("{e}");
    }
}

pub fn same_rows(context: &str, got: &[Row], want: &[Row]) -> Result<(), String> {
    let same = got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| {
            g.len() == w.len() && g.iter().all(|(k, v)| w.get(k).is_some_and(|x| close(v, x)))
        });
    if same {
        return Ok(());
    }
    let eq = |a: &Row, b: &Row| {
        a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|x| close(v, x)))
    };
    let only_got: Vec<&Row> = got
        .iter()
        .filter(|g| !want.iter().any(|w| eq(g, w)))
        .collect();
    let only_want: Vec<&Row> = want
        .iter()
        .filter(|w| !got.iter().any(|g| eq(g, w)))
        .collect();
    Err(format!(
        "{context}: rows differ ({} rows, reference {})\n only in the answer: {}\n only in the reference: {}",
        got.len(),
        want.len(),
        serde_json::to_string(&only_got).unwrap(),
        serde_json::to_string(&only_want).unwrap()
    ))
}

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_f64() || b.is_f64() => {
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        _ => a == b,
    }
}
