//! A batch run may read a view's strings as Arrow string views (Parquet's own form):
//! its states must then be those it makes over plain Utf8, as the speed layer reads
//! them, or the merge would keep apart groups that are one.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::cast;
use datafusion::datasource::MemTable;

use super::tests::{IOT, batch, compile, sorted};
use super::{SOURCE_BATCH, with_string_views};

/// `rows` with every Utf8 column as a string view.
fn as_string_views(rows: &RecordBatch) -> RecordBatch {
    let schema = with_string_views(&rows.schema());
    let columns = rows
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| cast(c, f.data_type()).unwrap())
        .collect();
    RecordBatch::try_new(schema, columns).unwrap()
}

/// The view's partial states over `rows` as they are (Utf8), then over them as views.
async fn states_both_ways(
    view: &super::CompiledView,
    rows: RecordBatch,
) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
    let views = as_string_views(&rows);
    let table = |b: RecordBatch| Arc::new(MemTable::try_new(b.schema(), vec![vec![b]]).unwrap());
    let over_utf8 = view.run_partial(table(rows)).await.unwrap();
    let over_views = view.run_partial(table(views)).await.unwrap();
    (over_utf8, over_views)
}

#[tokio::test]
async fn states_over_string_views_are_the_states_over_utf8() {
    let view = compile(IOT).await.unwrap();
    assert!(view.reads_string_views());
    // Short strings are held inside the view itself, long ones in a buffer: both kinds.
    let long = "a pump type whose name is longer than twelve bytes";
    let rows = batch(
        &[
            ("d1", "pump", 20.0, "2026-01-01T00:01:00Z"),
            ("d2", long, 30.0, "2026-01-01T00:02:00Z"),
            ("d3", "fan", 16.0, "2026-01-01T00:03:00Z"),
            ("d4", long, 40.0, "2026-01-01T00:12:00Z"),
        ],
        SOURCE_BATCH,
    );
    let (over_utf8, over_views) = states_both_ways(&view, rows).await;
    for states in [&over_utf8, &over_views] {
        assert!(states.iter().all(|b| b.schema() == view.partial_schema));
    }
    assert_eq!(sorted(&over_utf8).len(), 4);
    assert_eq!(sorted(&over_utf8), sorted(&over_views));
    // Merged with the other kind, each group is still one row.
    let merged = view
        .finalize([over_utf8, over_views].concat())
        .await
        .unwrap();
    assert_eq!(sorted(&merged).len(), 4);
}

#[tokio::test]
async fn string_functions_and_string_states_come_out_alike_over_views() {
    let view = compile(
        "SELECT upper(device_type) AS kind, date_bin(INTERVAL '10 minutes', ts) AS w, \
         min(device) AS first_device, max(concat(device, '/', device_type)) AS last, \
         count(*) AS n FROM readings WHERE device LIKE 'd%' GROUP BY kind, w",
    )
    .await
    .unwrap();
    assert!(view.reads_string_views());
    let long = "a fan type whose name is longer than twelve bytes";
    let rows = batch(
        &[
            ("d1", "pump", 20.0, "2026-01-01T00:01:00Z"),
            ("d22", long, 30.0, "2026-01-01T00:02:00Z"),
            ("x3", "pump", 16.0, "2026-01-01T00:03:00Z"),
            ("d0", "PUMP", 40.0, "2026-01-01T00:04:00Z"),
        ],
        SOURCE_BATCH,
    );
    let (over_utf8, over_views) = states_both_ways(&view, rows).await;
    assert!(over_views.iter().all(|b| b.schema() == view.partial_schema));
    assert_eq!(sorted(&over_utf8), sorted(&over_views));
    let merged = view
        .finalize([over_utf8, over_views].concat())
        .await
        .unwrap();
    // `pump` and `PUMP` are one kind; `x3` is filtered out.
    assert_eq!(sorted(&merged).len(), 2);
}

#[tokio::test]
async fn a_view_hashing_strings_into_a_sketch_reads_plain_utf8() {
    let view = compile(
        "SELECT device_type, date_bin(INTERVAL '10 minutes', ts) AS w, \
         approx_distinct(device) AS devices FROM readings GROUP BY device_type, w",
    )
    .await
    .unwrap();
    assert!(!view.reads_string_views());
}
