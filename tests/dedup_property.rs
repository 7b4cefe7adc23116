//! Property: the speed layer's dedup rule (a per-partition map of ids, swept as it goes)
//! and the batch layer's (a `lag(_ingest_ts)` window over partition and id in offset
//! order) keep exactly the same records, for any sequence of (partition, offset,
//! ingest time, id), read in any interleaving of the partitions.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::array::{
    Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionContext, col};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use serde_json::json;
use tributary_core::schema::{DedupSpec, INGEST_TS, OFFSET, PARTITION};
use tributary_speed::Deduplicator;

const HORIZON_US: i64 = 1_000;

/// Records (partition, ingest-time step since the partition's previous record, id) and
/// the order of partition turns the speed layer reads them in.
type Generated = (Vec<(u32, i64, Option<u8>)>, Vec<u32>);

fn records() -> impl Strategy<Value = Generated> {
    let record = (0..3u32, 0..700i64, prop::option::weighted(0.9, 0..6u8));
    (
        prop::collection::vec(record, 1..200),
        // The order the speed layer reads partitions in: a shuffle of their turns.
        prop::collection::vec(0..3u32, 0..600),
    )
}

struct Row {
    partition: u32,
    offset: i64,
    ingest_ts: i64,
    id: Option<String>,
}

fn rows(records: &[(u32, i64, Option<u8>)]) -> Vec<Row> {
    let mut offsets = [0i64; 3];
    let mut clocks = [0i64; 3];
    records
        .iter()
        .map(|(p, step, id)| {
            let p = *p as usize;
            clocks[p] += step;
            offsets[p] += 1;
            Row {
                partition: p as u32,
                offset: offsets[p],
                ingest_ts: clocks[p],
                id: id.map(|i| format!("id-{i}")),
            }
        })
        .collect()
}

/// What the speed layer keeps, reading partitions in the order `turns` gives (the rest
/// after them), each in log order.
fn speed_keeps(rows: &[Row], turns: &[u32], spec: &DedupSpec) -> BTreeSet<(u32, i64)> {
    let mut dedup = Deduplicator::new(spec.clone()).sweeping_every(4);
    let mut next = [0usize; 3];
    let by_partition: Vec<Vec<&Row>> = (0..3)
        .map(|p| rows.iter().filter(|r| r.partition == p).collect())
        .collect();
    let order = turns
        .iter()
        .copied()
        .chain((0..3).flat_map(|p| std::iter::repeat_n(p, rows.len())));
    let mut kept = BTreeSet::new();
    for p in order {
        let p = p as usize;
        let Some(row) = by_partition[p].get(next[p]) else {
            continue;
        };
        next[p] += 1;
        let record = match &row.id {
            Some(id) => json!({ "id": id }),
            None => json!({ "id": null }),
        };
        if dedup.keep(row.partition, row.ingest_ts, &record) {
            kept.insert((row.partition, row.offset));
        }
    }
    kept
}

/// What the batch layer keeps from the same rows as master-table columns.
async fn batch_keeps(rows: &[Row], spec: &DedupSpec) -> BTreeSet<(u32, i64)> {
    let schema = Arc::new(Schema::new(vec![
        Field::new(PARTITION, DataType::Int32, false),
        Field::new(OFFSET, DataType::Int64, false),
        Field::new(
            INGEST_TS,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("id", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.partition as i32),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.offset))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.ingest_ts))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.id.clone()))),
        ],
    )
    .unwrap();
    let ctx = SessionContext::new();
    let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
    let df = ctx.read_table(Arc::new(table)).unwrap();
    let kept = tributary_batch::dedup::without_repeats(df, spec)
        .unwrap()
        .select(vec![col(PARTITION), col(OFFSET)])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = BTreeSet::new();
    for b in kept {
        let p = b.column(0).as_any().downcast_ref::<Int32Array>().unwrap();
        let o = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            out.insert((p.value(i) as u32, o.value(i)));
        }
    }
    out
}

#[test]
fn speed_and_batch_dedup_keep_the_same_records() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let spec = DedupSpec {
        field: "id".into(),
        horizon_us: HORIZON_US,
    };
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/dedup_property.proptest-regressions",
        ))),
        ..Config::default()
    });
    runner
        .run(&records(), |(records, turns)| {
            let rows = rows(&records);
            let speed = speed_keeps(&rows, &turns, &spec);
            let batch = rt.block_on(batch_keeps(&rows, &spec));
            prop_assert_eq!(speed, batch);
            Ok(())
        })
        .unwrap();
}
