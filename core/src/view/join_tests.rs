//! Views joining two streams: what compiles, what is refused, and that pairs split
//! between the layers by their larger `_ingest_ts` merge into the one-pass answer.

use super::tests::sorted;
use super::*;
use crate::config::{FieldConfig, StreamConfig};
use crate::schema::{BatchDecoder, LogPosition};
use serde_json::{Value, json};

pub(super) fn stream(name: &str, fields: &[(&str, &str)]) -> StreamSchema {
    StreamSchema::from_config(
        &StreamConfig {
            name: name.into(),
            fields: fields
                .iter()
                .map(|(n, t)| crate::config::FieldConfig {
                    name: (*n).into(),
                    field_type: (*t).into(),
                    nullable: false,
                })
                .collect::<Vec<FieldConfig>>(),
            event_time: "ts".into(),
            from_view: None,
            key: Some("user".into()),
            partitions: 1,
            id_field: None,
            dedup_horizon_ms: 0,
            max_string_bytes: 1024,
            max_event_lead_ms: 300_000,
        },
        "streams[0]",
    )
    .unwrap()
}

pub(super) fn streams() -> Vec<StreamSchema> {
    vec![
        stream(
            "clicks",
            &[("user", "string"), ("page", "string"), ("ts", "timestamp")],
        ),
        stream(
            "orders",
            &[
                ("user", "string"),
                ("amount", "float64"),
                ("ts", "timestamp"),
            ],
        ),
    ]
}

/// Orders placed within 30 minutes after a click of the same user, per page and hour.
const CONVERSIONS: &str = "SELECT c.page, date_bin(INTERVAL '1 hour', c.ts) AS window_start, \
    count(*) AS orders, sum(o.amount) AS revenue, max(o.amount) AS biggest \
    FROM clicks c JOIN orders o ON c.user = o.user \
    AND o.ts BETWEEN c.ts AND c.ts + INTERVAL '30 minutes' \
    GROUP BY c.page, window_start";

pub(super) async fn compile(sql: &str) -> Result<CompiledView> {
    CompiledView::compile(
        &ViewConfig {
            name: "v".into(),
            sql: sql.into(),
            allowed_lateness_ms: 0,
            schedule: None,
        },
        &streams(),
    )
    .await
}

/// Rows of `stream` as the layers feed them: `(event, ingest_ts)`, tagged `tag`.
pub(super) fn rows(s: &StreamSchema, events: &[(Value, i64)], tag: i32) -> RecordBatch {
    let mut d = BatchDecoder::new(s, false);
    for (i, (v, ingest_ts)) in events.iter().enumerate() {
        let at = LogPosition {
            partition: 0,
            offset: i as u64,
            ingest_ts: *ingest_ts,
        };
        d.push(v, at).unwrap();
    }
    tag_source(&d.flush().unwrap(), tag, &input_schema(s)).unwrap()
}

#[tokio::test]
async fn a_bounded_inner_join_of_two_streams_compiles_with_its_bound() {
    let v = compile(CONVERSIONS).await.unwrap();
    assert_eq!(v.stream, "clicks");
    let j = v.stream_join().expect("a stream join");
    assert_eq!(j.other, "orders");
    assert_eq!((j.lower_us, j.upper_us), (0, 30 * 60 * 1_000_000));
    assert_eq!(j.reach_us(), 30 * 60 * 1_000_000);
    assert!(v.reads("clicks") && v.reads("orders") && !v.reads("other"));
    assert_eq!(v.keys, vec!["page"]);

    // The bound written the other way round, with comparisons.
    let v = compile(
        "SELECT date_bin(INTERVAL '1 hour', c.ts) AS w, count(*) AS n \
         FROM clicks c JOIN orders o ON c.user = o.user \
         AND c.ts >= o.ts - INTERVAL '5 minutes' AND c.ts < o.ts + INTERVAL '10 minutes' \
         GROUP BY w",
    )
    .await
    .unwrap();
    let j = v.stream_join().unwrap();
    assert_eq!((j.lower_us, j.upper_us), (-600_000_000, 300_000_000));
}

#[tokio::test]
async fn unbounded_outer_self_and_mixed_stream_joins_are_refused_with_the_reason() {
    let cases = [
        (
            "SELECT date_bin(INTERVAL '1 hour', c.ts) AS w, count(*) AS n FROM clicks c JOIN orders o ON c.user = o.user GROUP BY w",
            "needs a time bound",
        ),
        (
            "SELECT date_bin(INTERVAL '1 hour', c.ts) AS w, count(*) AS n FROM clicks c JOIN orders o ON c.user = o.user AND o.ts >= c.ts GROUP BY w",
            "needs a time bound",
        ),
        (
            "SELECT date_bin(INTERVAL '1 hour', c.ts) AS w, count(*) AS n FROM clicks c RIGHT JOIN orders o ON c.user = o.user AND o.ts BETWEEN c.ts AND c.ts + INTERVAL '1 minute' GROUP BY w",
            "swap the two streams",
        ),
        (
            "SELECT date_bin(INTERVAL '1 hour', c.ts) AS w, count(*) AS n FROM clicks c FULL JOIN orders o ON c.user = o.user AND o.ts BETWEEN c.ts AND c.ts + INTERVAL '1 minute' GROUP BY w",
            "INNER or LEFT JOIN",
        ),
        (
            "SELECT date_bin(INTERVAL '1 hour', c.ts) AS w, max(o.amount) AS n FROM clicks c LEFT JOIN orders o ON c.user = o.user AND o.ts BETWEEN c.ts AND c.ts + INTERVAL '1 minute' GROUP BY w",
            "aggregate `max` is not supported in a LEFT JOIN of two streams",
        ),
        (
            "SELECT date_bin(INTERVAL '1 hour', c.ts) AS w, count(*) AS n FROM clicks c LEFT JOIN orders o ON c.user = o.user GROUP BY w",
            "needs a time bound",
        ),
        (
            "SELECT date_bin(INTERVAL '1 hour', c.ts) AS w, count(*) AS n FROM clicks c JOIN clicks d ON c.user = d.user AND d.ts BETWEEN c.ts AND c.ts + INTERVAL '1 minute' GROUP BY w",
            "joined with itself",
        ),
        (
            "SELECT date_bin(INTERVAL '1 hour', c.ts) AS w, count(*) AS n FROM clicks c JOIN orders o ON c.user = o.user AND o.ts BETWEEN c.ts AND c.ts + INTERVAL '1 month' GROUP BY w",
            "months",
        ),
        (
            "SELECT c.user, session(c.ts, INTERVAL '5 minutes') AS s, count(*) AS n FROM clicks c JOIN orders o ON c.user = o.user AND o.ts BETWEEN c.ts AND c.ts + INTERVAL '1 minute' GROUP BY c.user, s",
            "reads its stream alone",
        ),
    ];
    for (sql, why) in cases {
        let e = compile(sql).await.unwrap_err().to_string();
        assert!(e.contains(why), "{sql}\n -> {e}");
    }
}

/// Clicks and orders of three users, each with the `_ingest_ts` it arrived at; the
/// cutoff 100 splits them between the layers in every combination.
/// Events of one stream with the `_ingest_ts` each arrived at.
pub(super) type Arrivals = Vec<(Value, i64)>;

pub(super) fn events() -> (Arrivals, Arrivals) {
    let c = |u: &str, p: &str, ts: &str| json!({"user": u, "page": p, "ts": ts});
    let o = |u: &str, a: f64, ts: &str| json!({"user": u, "amount": a, "ts": ts});
    let clicks = vec![
        (c("u1", "home", "2026-01-01T00:05:00Z"), 10),
        (c("u2", "home", "2026-01-01T00:20:00Z"), 20),
        (c("u3", "shop", "2026-01-01T01:10:00Z"), 150),
        (c("u1", "shop", "2026-01-01T00:50:00Z"), 160),
        (c("u2", "home", "2026-01-01T00:40:00Z"), 90),
    ];
    let orders = vec![
        (o("u1", 10.0, "2026-01-01T00:20:00Z"), 30),
        (o("u2", 7.5, "2026-01-01T00:45:00Z"), 120),
        (o("u3", 3.0, "2026-01-01T01:30:00Z"), 40),
        (o("u1", 99.0, "2026-01-01T01:15:00Z"), 170),
        (o("u2", 1.0, "2026-01-01T02:00:00Z"), 50),
    ];
    (clicks, orders)
}

#[tokio::test]
async fn pairs_split_by_their_larger_ingest_time_merge_into_the_one_pass_answer() {
    let v = compile(CONVERSIONS).await.unwrap();
    let s = streams();
    let (clicks, orders) = events();
    let cutoff = 100;
    let below = |e: &[(Value, i64)]| -> Vec<(Value, i64)> {
        e.iter().filter(|(_, t)| *t < cutoff).cloned().collect()
    };
    let above = |e: &[(Value, i64)]| -> Vec<(Value, i64)> {
        e.iter().filter(|(_, t)| *t >= cutoff).cloned().collect()
    };
    // Batch: both below the cutoff. Speed: clicks above with every order, and clicks
    // below with the orders above.
    let batch = v
        .run_partial_join(
            vec![rows(&s[0], &below(&clicks), SOURCE_BATCH)],
            vec![rows(&s[1], &below(&orders), SOURCE_BATCH)],
        )
        .await
        .unwrap();
    let mut speed = v
        .run_partial_join(
            vec![rows(&s[0], &above(&clicks), SOURCE_SPEED)],
            vec![rows(&s[1], &orders, SOURCE_SPEED)],
        )
        .await
        .unwrap();
    speed.extend(
        v.run_partial_join(
            vec![rows(&s[0], &below(&clicks), SOURCE_SPEED)],
            vec![rows(&s[1], &above(&orders), SOURCE_SPEED)],
        )
        .await
        .unwrap(),
    );
    let mut states = batch;
    states.extend(speed);
    let merged = v.finalize(states).await.unwrap();
    let got = strip_source(sorted(&merged));
    assert_eq!(got, one_pass(&v, &clicks, &orders).await);
    // u1's home click (00:05) meets its 00:20 order, u2's two home clicks both its 00:45
    // order: three pairs in home's first hour, one of them the batch layer's. Both shop
    // clicks meet one order each, in two hours, all speed pairs.
    assert_eq!(got.len(), 3, "{got:?}");
    let cells = |l: &str| -> Vec<String> {
        l.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let merged: Vec<Vec<String>> = sorted(&merged).iter().map(|l| cells(l)).collect();
    assert_eq!(merged[0][0..3], ["home", "2026-01-01T00:00:00Z", "3"]);
    assert_eq!(merged[0][3], "25.0", "10 + 7.5 + 7.5");
    assert_eq!(merged[0].last().unwrap(), "3", "home mixes both layers");
    assert_eq!(merged[1][0..3], ["shop", "2026-01-01T00:00:00Z", "1"]);
    assert_eq!(merged[2][0..3], ["shop", "2026-01-01T01:00:00Z", "1"]);
    assert_eq!(merged[1].last().unwrap(), "2", "speed pairs only");
}

#[tokio::test]
async fn one_stream_entry_points_refuse_a_join_view() {
    let v = compile(CONVERSIONS).await.unwrap();
    let e = v.run_partial_batches(vec![]).await.unwrap_err().to_string();
    assert!(e.contains("join entry points"), "{e}");
}

/// A pair whose expression fails (a division by zero for orders of 7.5) is left out
/// alone, in whatever split of the events the layers hold: the rest equals the one-pass
/// answer without those pairs.
#[tokio::test]
async fn a_pair_the_view_cannot_process_is_left_out_alone() {
    let failing = "SELECT c.page, date_bin(INTERVAL '1 hour', c.ts) AS window_start, \
        count(*) AS orders, sum(10 / (CAST(o.amount AS BIGINT) - 7)) AS odd \
        FROM clicks c JOIN orders o ON c.user = o.user \
        AND o.ts BETWEEN c.ts AND c.ts + INTERVAL '30 minutes' \
        GROUP BY c.page, window_start";
    let v = compile(failing).await.unwrap();
    let without =
        compile(&failing.replace("GROUP BY", "WHERE CAST(o.amount AS BIGINT) <> 7 GROUP BY"))
            .await
            .unwrap();
    let s = streams();
    let (clicks, orders) = events();
    let all_clicks = rows(&s[0], &clicks, SOURCE_SPEED);
    let all_orders = rows(&s[1], &orders, SOURCE_SPEED);
    let e = v
        .run_partial_join(vec![all_clicks.clone()], vec![all_orders.clone()])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Divide by zero"), "{e}");
    // Two halves of the clicks, as two layers might hold them.
    let mut states = Vec::new();
    let mut failed = 0;
    for half in [all_clicks.slice(0, 2), all_clicks.slice(2, 3)] {
        let (s, f) = crate::quarantine::join_isolating(&v, vec![half], vec![all_orders.clone()])
            .await
            .unwrap();
        states.extend(s);
        failed += f.len();
    }
    assert_eq!(failed, 2, "u2's two home clicks meet the order of 7.5");
    let got = v.finalize(states).await.unwrap();
    let want = without
        .run_reference_streams(vec![all_clicks], vec![all_orders])
        .await
        .unwrap();
    assert_eq!(sorted(&got), sorted(&want));
    assert_eq!(sorted(&got).len(), 3, "{:?}", sorted(&got));
}

/// A hopping window over the left stream joins like a tumbling one.
#[tokio::test]
async fn a_hopping_window_joins_two_streams_like_one_pass() {
    let v = compile(
        "SELECT c.page, hop(c.ts, INTERVAL '1 hour', INTERVAL '30 minutes') AS window_start, \
         count(*) AS orders, sum(o.amount) AS revenue \
         FROM clicks c JOIN orders o ON c.user = o.user \
         AND o.ts BETWEEN c.ts AND c.ts + INTERVAL '30 minutes' \
         GROUP BY c.page, window_start",
    )
    .await
    .unwrap();
    let s = streams();
    let (clicks, orders) = events();
    let (c, o) = (
        rows(&s[0], &clicks, SOURCE_SPEED),
        rows(&s[1], &orders, SOURCE_SPEED),
    );
    // Clicks in two parts, each joined with every order, as two layers would.
    let mut states = v
        .run_partial_join(vec![c.slice(0, 3)], vec![o.clone()])
        .await
        .unwrap();
    states.extend(
        v.run_partial_join(vec![c.slice(3, 2)], vec![o.clone()])
            .await
            .unwrap(),
    );
    let got = v.finalize(states).await.unwrap();
    let want = v.run_reference_streams(vec![c], vec![o]).await.unwrap();
    assert_eq!(sorted(&got), sorted(&want));
    assert!(sorted(&got).len() >= 4, "{:?}", sorted(&got));
}

/// A bound alone (no key: every pair within the bound), strict comparisons, and the
/// other stream filtered in a subquery all join like one pass.
#[tokio::test]
async fn keyless_strict_and_filtered_joins_split_like_one_pass() {
    let s = streams();
    let (clicks, orders) = events();
    let (c, o) = (
        rows(&s[0], &clicks, SOURCE_SPEED),
        rows(&s[1], &orders, SOURCE_SPEED),
    );
    for sql in [
        "SELECT date_bin(INTERVAL '1 hour', c.ts) AS w, count(*) AS n, sum(o.amount) AS total \
         FROM clicks c JOIN orders o ON o.ts BETWEEN c.ts - INTERVAL '10 minutes' AND c.ts + INTERVAL '10 minutes' \
         GROUP BY w",
        "SELECT c.page, date_bin(INTERVAL '1 hour', c.ts) AS w, count(*) AS n \
         FROM clicks c JOIN orders o ON c.user = o.user AND o.ts > c.ts AND o.ts < c.ts + INTERVAL '40 minutes' \
         GROUP BY c.page, w",
        "SELECT c.page, date_bin(INTERVAL '1 hour', c.ts) AS w, count(*) AS n, max(o.amount) AS top \
         FROM clicks c JOIN (SELECT * FROM orders WHERE amount > 5) o ON c.user = o.user \
         AND o.ts BETWEEN c.ts AND c.ts + INTERVAL '1 hour' GROUP BY c.page, w",
    ] {
        let v = compile(sql).await.unwrap();
        assert!(v.stream_join().is_some(), "{sql}");
        let mut states = v
            .run_partial_join(vec![c.slice(0, 2)], vec![o.clone()])
            .await
            .unwrap();
        states.extend(
            v.run_partial_join(vec![c.slice(2, 3)], vec![o.clone()])
                .await
                .unwrap(),
        );
        let got = v.finalize(states).await.unwrap();
        let want = v
            .run_reference_streams(vec![c.clone()], vec![o.clone()])
            .await
            .unwrap();
        assert_eq!(sorted(&got), sorted(&want), "{sql}");
        assert!(!sorted(&got).is_empty(), "{sql}");
    }
}

/// Sorted rows without `_src`, the last column (which layer a row came from differs).
pub(super) fn strip_source(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .map(|l| l.rsplitn(3, '|').nth(2).unwrap().to_string())
        .collect()
}

/// The view's one-pass answer over `clicks` and `orders`, as [`strip_source`] lines.
pub(super) async fn one_pass(
    v: &CompiledView,
    clicks: &Arrivals,
    orders: &Arrivals,
) -> Vec<String> {
    let s = streams();
    let reference = v
        .run_reference_streams(
            vec![rows(&s[0], clicks, SOURCE_BATCH)],
            vec![rows(&s[1], orders, SOURCE_BATCH)],
        )
        .await
        .unwrap();
    strip_source(sorted(&reference))
}
