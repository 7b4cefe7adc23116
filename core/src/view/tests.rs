use super::*;
use crate::config::{FieldConfig, StreamConfig, ViewConfig};
use crate::schema::{BatchDecoder, LogPosition, StreamSchema};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::pretty::pretty_format_batches;
use serde_json::json;

fn readings() -> StreamSchema {
    let f = |n: &str, t: &str| FieldConfig {
        name: n.into(),
        field_type: t.into(),
        nullable: false,
    };
    StreamSchema::from_config(
        &StreamConfig {
            name: "readings".into(),
            fields: vec![
                f("device", "string"),
                f("device_type", "string"),
                f("signal", "float64"),
                f("ts", "timestamp"),
            ],
            event_time: "ts".into(),
            from_view: None,
            key: Some("device".into()),
            partitions: 2,
            id_field: None,
            dedup_horizon_ms: 0,
            max_string_bytes: 16 * 1024,
            max_event_lead_ms: 300_000,
        },
        "streams[0]",
    )
    .unwrap()
}

pub(super) const IOT: &str = "SELECT device_type, date_bin(INTERVAL '10 minutes', ts) AS window_start, \
    avg(signal) AS avg_signal, max(signal) AS max_signal, count(*) AS readings \
    FROM readings WHERE signal > 15 GROUP BY device_type, window_start";

pub(super) async fn compile(sql: &str) -> Result<CompiledView> {
    CompiledView::compile(
        &ViewConfig {
            name: "v".into(),
            sql: sql.into(),
            allowed_lateness_ms: 0,
            schedule: None,
        },
        &[readings()],
    )
    .await
}

pub(super) fn batch(rows: &[(&str, &str, f64, &str)], tag: i32) -> RecordBatch {
    let s = readings();
    let mut d = BatchDecoder::new(&s, false);
    for (i, (dev, ty, sig, ts)) in rows.iter().enumerate() {
        let v = json!({"device": dev, "device_type": ty, "signal": sig, "ts": ts});
        d.push(
            &v,
            LogPosition {
                partition: 0,
                offset: i as u64,
                ingest_ts: 1,
            },
        )
        .unwrap();
    }
    tag_source(&d.flush().unwrap(), tag, &input_schema(&s)).unwrap()
}

pub(super) fn sorted(batches: &[RecordBatch]) -> Vec<String> {
    let text = pretty_format_batches(batches).unwrap().to_string();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn iot_view_compiles_with_keys_window_values() {
    let v = compile(IOT).await.unwrap();
    assert_eq!(v.stream, "readings");
    assert_eq!(v.keys, vec!["device_type"]);
    assert_eq!(v.window, "window_start");
    assert_eq!(v.values, vec!["avg_signal", "max_signal", "readings"]);
    let names: Vec<_> = v
        .output_schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names.last().unwrap(), SOURCE_COLUMN);
}

#[tokio::test]
async fn partial_then_final_equals_one_pass_and_tracks_sources() {
    let v = compile(IOT).await.unwrap();
    let a = batch(
        &[
            ("d1", "pump", 20.0, "2026-01-01T00:01:00Z"),
            ("d2", "pump", 30.0, "2026-01-01T00:02:00Z"),
            ("d3", "fan", 10.0, "2026-01-01T00:03:00Z"),
        ],
        SOURCE_BATCH,
    );
    let b = batch(
        &[
            ("d1", "pump", 40.0, "2026-01-01T00:09:59Z"),
            ("d4", "fan", 16.0, "2026-01-01T00:10:00Z"),
        ],
        SOURCE_SPEED,
    );
    let sa = v.run_partial_batches(vec![a]).await.unwrap();
    let sb = v.run_partial_batches(vec![b]).await.unwrap();
    let mut all = sa.clone();
    all.extend(sb);
    let reduced = v.reduce(all.clone()).await.unwrap();
    let direct = v.finalize(all).await.unwrap();
    let via_reduce = v.finalize(reduced).await.unwrap();
    assert_eq!(sorted(&direct), sorted(&via_reduce));
    let rows: Vec<Vec<String>> = sorted(&direct)
        .iter()
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    // fan 10.0 is filtered out; fan 16.0 lands in the 00:10 window, from speed only.
    assert_eq!(
        rows[0],
        ["fan", "2026-01-01T00:10:00Z", "16.0", "16.0", "1", "2"]
    );
    // pump: avg(20, 30, 40) = 30, max 40, count 3, from both layers.
    assert_eq!(
        rows[1],
        ["pump", "2026-01-01T00:00:00Z", "30.0", "40.0", "3", "3"]
    );
    assert_eq!(rows.len(), 2);
}

const HOP: &str = "SELECT device_type, hop(ts, INTERVAL '10 minutes', INTERVAL '5 minutes') AS w, \
    count(*) AS n, sum(signal) AS total, approx_distinct(device) AS devices, \
    approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY signal) AS p50, approx_median(signal) AS med \
    FROM readings GROUP BY device_type, w";

#[tokio::test]
async fn hopping_windows_and_sketches_merge_across_layers_like_one_pass() {
    let v = compile(HOP).await.unwrap();
    assert_eq!(v.window, "w");
    assert_eq!(v.keys, vec!["device_type"]);
    assert_eq!(v.window_spec.kind, crate::window::WindowKind::Hopping);
    assert_eq!(v.window_spec.size_us, 600_000_000);
    assert_eq!(v.window_spec.slide_us, 300_000_000);
    let a = batch(
        &[
            ("d1", "pump", 20.0, "2026-01-01T00:01:00Z"),
            ("d2", "pump", 30.0, "2026-01-01T00:07:00Z"),
        ],
        SOURCE_BATCH,
    );
    let b = batch(
        &[
            ("d1", "pump", 40.0, "2026-01-01T00:09:59Z"),
            ("d1", "pump", 10.0, "2026-01-01T00:12:00Z"),
        ],
        SOURCE_SPEED,
    );
    let mut states = v.run_partial_batches(vec![a.clone()]).await.unwrap();
    states.extend(v.run_partial_batches(vec![b.clone()]).await.unwrap());
    let merged = v.finalize(v.reduce(states).await.unwrap()).await.unwrap();
    let reference = v.run_reference(vec![a, b]).await.unwrap();
    assert_eq!(sorted(&merged), sorted(&reference));
    let rows = sorted(&merged);
    // 00:01 is in [23:55, 00:05) and [00:00, 00:10); 00:12 in [00:05, 00:15) and [00:10, 00:20).
    assert_eq!(rows.len(), 4, "{rows:#?}");
    assert!(
        rows[1].contains("2026-01-01T00:00:00Z") && rows[1].contains("| 3 "),
        "{rows:#?}"
    );
    assert!(
        rows[1].contains("| 90.0 ") && rows[1].contains("| 2 "),
        "{rows:#?}"
    );
}

const STATISTICS: &str = "SELECT device_type, date_bin(INTERVAL '10 minutes', ts) AS w, \
    stddev(signal) AS sd, stddev_pop(signal) AS sdp, var(signal) AS v, var_pop(signal) AS vp, \
    covar_samp(signal, signal * 2) AS cs, covar_pop(signal, signal * 2) AS cp, \
    bool_and(signal > 15) AS all_strong, bool_or(signal > 35) AS any_strong, \
    bit_and(CAST(signal AS BIGINT)) AS band, bit_or(CAST(signal AS BIGINT)) AS bor, \
    bit_xor(CAST(signal AS BIGINT)) AS bxor \
    FROM readings GROUP BY device_type, w";

#[tokio::test]
async fn variances_and_bitwise_aggregates_merge_across_layers_like_one_pass() {
    let v = compile(STATISTICS).await.unwrap();
    let a = batch(
        &[
            ("d1", "pump", 20.0, "2026-01-01T00:01:00Z"),
            ("d2", "pump", 30.0, "2026-01-01T00:04:00Z"),
            ("d3", "fan", 12.0, "2026-01-01T00:05:00Z"),
        ],
        SOURCE_BATCH,
    );
    let b = batch(
        &[
            ("d1", "pump", 40.0, "2026-01-01T00:09:59Z"),
            ("d4", "fan", 17.0, "2026-01-01T00:06:00Z"),
        ],
        SOURCE_SPEED,
    );
    // Each layer's states are reduced on their own first, as the speed layer compacts
    // and the batch layer stores them, so the merge combines two partial variances.
    let mut states = v
        .reduce(v.run_partial_batches(vec![a.clone()]).await.unwrap())
        .await
        .unwrap();
    states.extend(v.run_partial_batches(vec![b.clone()]).await.unwrap());
    let merged = v.finalize(v.reduce(states).await.unwrap()).await.unwrap();
    let reference = v.run_reference(vec![a, b]).await.unwrap();
    assert_eq!(sorted(&merged), sorted(&reference));
    let rows = sorted(&merged);
    // pump: 20, 30, 40: sample variance 100, population 66.67; 20 & 30 & 40 = 0,
    // 20 | 30 | 40 = 62, 20 ^ 30 ^ 40 = 34. fan: 12, 17: 12 & 17 = 0, 12 | 17 = 29.
    let cells: Vec<Vec<&str>> = rows
        .iter()
        .map(|r| {
            r.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(cells.len(), 2, "{rows:#?}");
    let (fan, pump) = (&cells[0], &cells[1]);
    assert_eq!(
        pump[..3],
        ["pump", "2026-01-01T00:00:00Z", "10.0"],
        "{rows:#?}"
    );
    assert_eq!([pump[4], pump[6]], ["100.0", "200.0"], "{rows:#?}");
    assert_eq!(
        pump[8..],
        ["true", "true", "0", "62", "34", "3"],
        "{rows:#?}"
    );
    assert_eq!(
        fan[8..],
        ["false", "false", "0", "29", "29", "3"],
        "{rows:#?}"
    );
}

#[tokio::test]
async fn window_widths_and_origin_are_read_from_the_sql() {
    let v = compile(
        "SELECT date_bin(INTERVAL '1 day', ts, TIMESTAMP '2026-01-01T06:00:00Z') AS d, count(*) AS n FROM readings GROUP BY d",
    )
    .await
    .unwrap();
    assert_eq!(v.window_spec.size_us, 86_400_000_000);
    assert_eq!(v.window_spec.origin_us, 1_767_247_200_000_000);
}

#[tokio::test]
async fn joins_with_a_dimension_table_match_one_pass() {
    let (_dir, v) = sites_view("LEFT").await;
    let a = batch(
        &[
            ("d1", "pump", 20.0, "2026-01-01T00:01:00Z"),
            ("d2", "pump", 30.0, "2026-01-01T00:02:00Z"),
            ("d9", "fan", 10.0, "2026-01-01T00:03:00Z"),
            ("d1", "fan", 5.0, "2026-01-01T00:04:00Z"),
        ],
        SOURCE_SPEED,
    );
    let b = batch(&[("d2", "fan", 1.0, "2026-01-01T00:05:00Z")], SOURCE_SPEED);
    // Micro-batch after micro-batch: nothing of one may stick to the plan.
    let mut states = v.run_partial_batches(vec![a.clone()]).await.unwrap();
    states.extend(v.run_partial_batches(vec![b.clone()]).await.unwrap());
    let merged = v.finalize(states).await.unwrap();
    let reference = v.run_reference(vec![a, b]).await.unwrap();
    assert_eq!(sorted(&merged), sorted(&reference));
    assert_eq!(sorted(&merged).len(), 3, "{:?}", sorted(&merged));
}

/// Ballista's scheduler may swap a join's inputs once it has seen their sizes; a join
/// holding a dynamic filter refuses (the stage fails, the job never finishes: seen in
/// the golden `dimension_join` case on Ballista). Plans for a cluster carry none.
#[tokio::test]
async fn plans_for_a_cluster_let_the_scheduler_swap_their_joins() {
    use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
    /// Per hash join of `plan`: whether its inputs can be swapped.
    fn swappable(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<bool>) {
        if let Some(j) = plan.downcast_ref::<HashJoinExec>() {
            out.push(j.swap_inputs(PartitionMode::Partitioned).is_ok());
        }
        for c in plan.children() {
            swappable(c, out);
        }
    }
    let (_dir, v) = sites_view("INNER").await;
    let rows = batch(
        &[("d1", "pump", 20.0, "2026-01-01T00:01:00Z")],
        SOURCE_SPEED,
    );
    let source = Arc::new(
        datafusion::datasource::MemTable::try_new(v.input_schema.clone(), vec![vec![rows]])
            .unwrap(),
    );
    // Here (no partitions given) the join keeps its dynamic filter, which is what the
    // scheduler tripped over.
    for (partitions, expected) in [(Some(4), true), (None, false)] {
        let (plan, _) = v.plan_partial(source.clone(), partitions).await.unwrap();
        let mut joins = Vec::new();
        swappable(&plan, &mut joins);
        assert!(!joins.is_empty(), "no hash join in the plan");
        assert!(
            joins.iter().all(|s| *s == expected),
            "partitions {partitions:?}: {joins:?}"
        );
    }
}

/// A view joining (`join`: LEFT, INNER) `readings` with a dimension table `sites` (d1
/// north, d2 south).
async fn sites_view(join: &str) -> (tempfile::TempDir, CompiledView) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("types.csv"),
        "device,site\nd1,north\nd2,south\n",
    )
    .unwrap();
    let table = crate::dimension::DimensionTable::load(
        "sites",
        std::path::Path::new("types.csv"),
        None,
        dir.path(),
        "tables[0]",
    )
    .await
    .unwrap();
    let v = CompiledView::compile_with(
        &ViewConfig {
            name: "v".into(),
            sql: format!(
                "SELECT s.site, date_bin(INTERVAL '10 minutes', r.ts) AS w, count(*) AS n, sum(r.signal) AS total \
                 FROM readings r {join} JOIN sites s ON r.device = s.device GROUP BY s.site, w"
            ),
            allowed_lateness_ms: 0,
            schedule: None,
        },
        &[readings()],
        &[Arc::new(table)],
    )
    .await
    .unwrap();
    (dir, v)
}

#[tokio::test]
async fn joins_other_than_stream_with_table_are_refused() {
    let cases = [
        (
            "SELECT a.device_type, date_bin(INTERVAL '1 minute', a.ts) AS w, count(*) FROM readings a JOIN (SELECT device AS d FROM readings) b ON a.device = b.d GROUP BY a.device_type, w",
            "joined with itself",
        ),
        (
            "SELECT a.device, session(a.ts, INTERVAL '1 minute') AS s, count(*) FROM readings a JOIN readings b ON a.device = b.device GROUP BY a.device, s",
            "reads its stream alone",
        ),
    ];
    for (sql, expected) in cases {
        let err = compile(sql).await.unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
}

#[tokio::test]
async fn the_window_is_found_among_the_partial_states() {
    let v = compile(IOT).await.unwrap();
    assert_eq!(v.window_state, Some(1), "{:?}", v.partial_schema);
    let v = compile(
        "SELECT date_bin(INTERVAL '1 hour', ts) AS h, device_type, count(*) AS n \
         FROM readings GROUP BY h, device_type",
    )
    .await
    .unwrap();
    assert_eq!(v.window_state, Some(0), "{:?}", v.partial_schema);
    let v = compile(
        "SELECT device_type, hop(ts, INTERVAL '10 minutes', INTERVAL '5 minutes') AS w, \
         count(*) AS n FROM readings GROUP BY device_type, w",
    )
    .await
    .unwrap();
    let i = v.window_state.expect("hop window found");
    assert!(matches!(
        v.partial_schema.field(i).data_type(),
        DataType::Timestamp(..)
    ));
}

const SESSIONS: &str = "SELECT device, session(ts, INTERVAL '5 minutes') AS s, \
    count(*) AS n, sum(signal) AS total, min(signal) AS low \
    FROM readings WHERE signal > 0 GROUP BY device, s";

#[tokio::test]
async fn session_states_of_any_split_coalesce_to_the_one_pass_sessions() {
    let v = compile(SESSIONS).await.unwrap();
    assert_eq!(v.window_spec.kind, crate::window::WindowKind::Session);
    assert_eq!(v.window_spec.size_us, 300_000_000);
    assert_eq!(v.keys, vec!["device"]);
    assert_eq!(v.values, vec!["n", "total", "low", "session_end"]);
    let events = [
        ("d1", 1.0, "2026-01-01T00:00:00Z"),
        ("d1", 2.0, "2026-01-01T00:04:00Z"),
        // Exactly the gap after the previous event: the same session.
        ("d1", 3.0, "2026-01-01T00:09:00Z"),
        // Filtered out: it must not bridge anything.
        ("d1", -1.0, "2026-01-01T00:13:00Z"),
        ("d1", 4.0, "2026-01-01T00:20:00Z"),
        ("d1", 5.0, "2026-01-01T00:30:00Z"),
        ("d2", 6.0, "2026-01-01T00:02:00Z"),
        ("d2", 7.0, "2026-01-01T00:08:00Z"),
        // Late: bridges d1's 00:20 and 00:30 sessions, and d2's two.
        ("d1", 8.0, "2026-01-01T00:25:00Z"),
        ("d2", 9.0, "2026-01-01T00:05:00Z"),
    ];
    let all: Vec<_> = events
        .iter()
        .map(|(d, s, t)| (*d, "pump", *s, *t))
        .collect();
    let reference = sorted(
        &v.run_reference(vec![batch(&all, SOURCE_BATCH)])
            .await
            .unwrap(),
    );
    // By hand: d1 00:00–00:09 (3 events), d1 00:20–00:30 (3), d2 00:02–00:08 (3).
    assert_eq!(reference.len(), 3, "{reference:#?}");
    assert!(
        reference[0].contains("2026-01-01T00:14:00Z"),
        "{reference:#?}"
    );
    assert!(
        reference[1].contains("2026-01-01T00:35:00Z"),
        "{reference:#?}"
    );
    // Every split (first k events in one layer, the rest in the other, each event its own
    // micro-batch in the second) merges to the reference, through reduce or not.
    for k in 0..=all.len() {
        let mut states = v
            .run_partial_batches(vec![batch(&all[..k], SOURCE_BATCH)])
            .await
            .unwrap();
        for e in &all[k..] {
            let one = v
                .run_partial_batches(vec![batch(&[*e], SOURCE_SPEED)])
                .await
                .unwrap();
            states.extend(one);
        }
        let direct = v.finalize(states.clone()).await.unwrap();
        let reduced = v.finalize(v.reduce(states).await.unwrap()).await.unwrap();
        let strip = |rows: Vec<String>| -> Vec<String> {
            // The last column is `_src`, which differs by split.
            rows.iter()
                .map(|r| r.rsplitn(3, '|').nth(2).unwrap_or_default().to_string())
                .collect()
        };
        assert_eq!(
            strip(sorted(&direct)),
            strip(reference.clone()),
            "split {k}"
        );
        assert_eq!(
            strip(sorted(&reduced)),
            strip(reference.clone()),
            "split {k}"
        );
    }
}

#[tokio::test]
async fn sessions_without_keys_by_position_and_with_the_users_own_max_ts() {
    let v = compile(
        "SELECT session(ts, INTERVAL '2 minutes') AS s, max(ts) AS last_seen, count(*) AS n, \
         approx_distinct(device) AS devices FROM readings GROUP BY 1",
    )
    .await
    .unwrap();
    assert!(v.keys.is_empty());
    let all = [
        ("d1", "pump", 1.0, "2026-01-01T00:00:00Z"),
        ("d2", "pump", 1.0, "2026-01-01T00:03:00Z"),
        ("d3", "fan", 1.0, "2026-01-01T00:05:00Z"),
        ("d1", "fan", 1.0, "2026-01-01T00:01:30Z"),
    ];
    let reference = sorted(
        &v.run_reference(vec![batch(&all, SOURCE_BATCH)])
            .await
            .unwrap(),
    );
    // 00:00, 00:01:30, 00:03, 00:05: each at most two minutes after the last.
    assert_eq!(reference.len(), 1, "{reference:#?}");
    assert!(reference[0].contains("| 4 "), "{reference:#?}");
    let mut states = v
        .run_partial_batches(vec![batch(&all[..3], SOURCE_BATCH)])
        .await
        .unwrap();
    states.extend(
        v.run_partial_batches(vec![batch(&all[3..], SOURCE_SPEED)])
            .await
            .unwrap(),
    );
    let merged = sorted(&v.finalize(states).await.unwrap());
    let strip = |rows: &[String]| -> Vec<String> {
        rows.iter()
            .map(|r| r.rsplitn(3, '|').nth(2).unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(strip(&merged), strip(&reference));
}

/// A final expression that fails for one group (integer division by zero where a
/// device has exactly two readings) leaves that group out with its keys and error, and
/// every other row as the whole answer has it; the failing group's states come from
/// two layers, so only states reduced per group show the failure.
#[tokio::test]
async fn a_group_whose_row_fails_is_set_aside_alone() {
    let v = compile(
        "SELECT device, date_bin(INTERVAL '10 minutes', ts) AS w, 100 / (count(*) - 2) AS x \
         FROM readings GROUP BY device, w",
    )
    .await
    .unwrap();
    let a = batch(
        &[
            ("d1", "pump", 1.0, "2026-01-01T00:01:00Z"),
            ("d2", "pump", 1.0, "2026-01-01T00:02:00Z"),
            ("d3", "pump", 1.0, "2026-01-01T00:03:00Z"),
            ("d3", "pump", 1.0, "2026-01-01T00:04:00Z"),
        ],
        SOURCE_BATCH,
    );
    let b = batch(
        &[
            ("d2", "pump", 1.0, "2026-01-01T00:05:00Z"),
            ("d3", "pump", 1.0, "2026-01-01T00:06:00Z"),
        ],
        SOURCE_SPEED,
    );
    let mut states = v.run_partial_batches(vec![a]).await.unwrap();
    states.extend(v.run_partial_batches(vec![b]).await.unwrap());
    assert!(v.finalize(states.clone()).await.is_err());
    let (rows, failed) = crate::quarantine::finalize_isolating(&v, states)
        .await
        .unwrap();
    let rows = sorted(&rows);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[0].contains("d1") && rows[0].contains("-100"),
        "{rows:?}"
    );
    assert!(
        rows[1].contains("d3") && rows[1].contains("100"),
        "{rows:?}"
    );
    assert_eq!(failed.len(), 1);
    let keys = sorted(std::slice::from_ref(&failed[0].keys));
    assert_eq!(failed[0].keys.schema().field(0).name(), "device");
    assert_eq!(failed[0].keys.schema().field(1).name(), "w");
    assert!(
        keys[0].contains("d2") && keys[0].contains("2026-01-01T00:00:00"),
        "{keys:?}"
    );
    assert!(
        failed[0].error.to_string().contains("Divide by zero"),
        "{}",
        failed[0].error
    );
}
