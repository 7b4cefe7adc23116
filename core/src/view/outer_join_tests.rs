//! LEFT joins of two streams: the three plans, and that the weights of unmatched rows
//! telescoped over `_ingest_ts` make the batch layer's LEFT JOIN below any cutoff plus
//! the speed layer's weights above it equal the one-pass answer.

use super::join_tests::{Arrivals, compile, events, one_pass, rows, stream, streams, strip_source};
use super::tests::sorted;
use super::*;
use serde_json::json;

/// Clicks per page and hour, those with an order within 30 minutes and what they paid.
const FUNNEL: &str = "SELECT c.page, date_bin(INTERVAL '1 hour', c.ts) AS window_start, \
    count(*) AS clicks, count(o.user) AS converted, sum(o.amount) AS revenue, \
    avg(o.amount) AS basket \
    FROM clicks c LEFT JOIN orders o ON c.user = o.user \
    AND o.ts BETWEEN c.ts AND c.ts + INTERVAL '30 minutes' \
    GROUP BY c.page, window_start";

#[tokio::test]
async fn a_left_join_of_two_streams_compiles_its_pairs_matching_and_unmatched_plans() {
    let v = compile(FUNNEL).await.unwrap();
    assert!(v.outer_join() && v.stream_join().unwrap().outer);
    let s = streams();
    let (clicks, orders) = events();
    let l = rows(&s[0], &clicks, SOURCE_SPEED);
    let r = rows(&s[1], &orders, SOURCE_SPEED);
    // u1 00:05 meets 00:20; u2 00:20 and 00:40 meet 00:45; u3 01:10 meets 01:30; u1
    // 00:50 has no order in its 30 minutes (01:15 is 25 minutes later: it does).
    let hit = v.matched(&l, vec![r.clone()]).await.unwrap();
    let hit: Vec<bool> = (0..hit.len()).map(|i| hit.value(i)).collect();
    assert_eq!(hit, vec![true, true, true, true, true]);
    let none = v.matched(&l, vec![]).await.unwrap();
    assert_eq!(none.true_count(), 0);
    // One click alone, no orders: one unmatched row, counted as a click, not converted.
    let unmatched = v.run_unmatched(vec![l.slice(0, 1)]).await.unwrap();
    let rows_out = v.finalize(unmatched.clone()).await.unwrap();
    let text = strip_source(sorted(&rows_out));
    assert_eq!(text.len(), 1);
    assert!(
        text[0].contains("| home") && text[0].contains("| 1      | 0 "),
        "{text:?}"
    );
    // Negated, the same row cancels: the group disappears (HAVING count(*) <> 0).
    let mut both = unmatched.clone();
    both.extend(v.negate_states(unmatched).unwrap());
    assert_eq!(
        v.finalize(both)
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        0
    );
}

/// Each event's bucket is its `_ingest_ts` here; the weights a layer holding the buckets
/// at or above `cutoff` adds for unmatched rows, computed per left event from the
/// smallest bucket of its partners.
async fn speed_weights(
    v: &CompiledView,
    clicks: &Arrivals,
    orders: &Arrivals,
    cutoff: i64,
) -> Vec<RecordBatch> {
    let s = streams();
    let mut out = Vec::new();
    for click in clicks {
        let l = rows(&s[0], std::slice::from_ref(click), SOURCE_SPEED);
        let mut m = i64::MAX;
        for order in orders {
            let r = rows(&s[1], std::slice::from_ref(order), SOURCE_SPEED);
            if v.matched(&l, vec![r]).await.unwrap().value(0) {
                m = m.min(order.1);
            }
        }
        let b = click.1;
        if b >= cutoff && m > b {
            out.extend(v.run_unmatched(vec![l.clone()]).await.unwrap());
        }
        if m >= cutoff && b < m && m < i64::MAX {
            let states = v.run_unmatched(vec![l]).await.unwrap();
            out.extend(v.negate_states(states).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn unmatched_rows_weighted_by_bucket_merge_into_the_one_pass_left_join_at_any_cutoff() {
    telescopes(FUNNEL).await;
}

/// The other shapes a LEFT join may take: a hopping window, a subquery that filters the
/// right stream, aggregates inside expressions and a HAVING of the user's own.
#[tokio::test]
async fn hopping_filtered_and_having_left_joins_telescope_too() {
    for sql in [
        "SELECT c.page, hop(c.ts, INTERVAL '1 hour', INTERVAL '30 minutes') AS window_start, \
         count(*) AS n, sum(o.amount) AS revenue FROM clicks c LEFT JOIN orders o \
         ON c.user = o.user AND o.ts BETWEEN c.ts AND c.ts + INTERVAL '30 minutes' \
         GROUP BY c.page, window_start",
        "SELECT date_bin(INTERVAL '1 hour', c.ts) AS window_start, \
         count(o.amount) * 100 / count(*) AS pct, avg(o.amount) + 1 AS basket \
         FROM clicks c LEFT JOIN (SELECT * FROM orders WHERE amount > 5) o \
         ON c.user = o.user AND o.ts BETWEEN c.ts - INTERVAL '10 minutes' AND c.ts + INTERVAL '1 hour' \
         GROUP BY window_start HAVING count(*) > 1",
    ] {
        telescopes(sql).await;
    }
}

/// `sql` over the join tests' events and two more clicks, at several cutoffs: the batch
/// layer's LEFT JOIN below the cutoff plus the speed layer's pairs and weights above it
/// equal the one-pass answer.
async fn telescopes(sql: &str) {
    let v = compile(sql).await.unwrap();
    let s = streams();
    let (mut clicks, orders) = events();
    // A click no order meets, and one whose only order arrives much later.
    clicks.push((
        json!({"user": "u9", "page": "shop", "ts": "2026-01-01T03:00:00Z"}),
        60,
    ));
    clicks.push((
        json!({"user": "u1", "page": "home", "ts": "2026-01-01T00:55:00Z"}),
        5,
    ));
    let expected = one_pass(&v, &clicks, &orders).await;
    assert!(!expected.is_empty(), "{sql}: no rows to compare");
    for cutoff in [0, 15, 35, 45, 100, 155, 165, 200] {
        let below =
            |e: &Arrivals| -> Arrivals { e.iter().filter(|(_, t)| *t < cutoff).cloned().collect() };
        let above = |e: &Arrivals| -> Arrivals {
            e.iter().filter(|(_, t)| *t >= cutoff).cloned().collect()
        };
        let (lb, rb) = (
            rows(&s[0], &below(&clicks), SOURCE_BATCH),
            rows(&s[1], &below(&orders), SOURCE_BATCH),
        );
        // The batch layer: the native LEFT JOIN below the cutoff, as pairs plus the
        // unmatched rows among those events.
        let mut states = v
            .run_partial_join(vec![lb.clone()], vec![rb.clone()])
            .await
            .unwrap();
        let hit = v.matched(&lb, vec![rb]).await.unwrap();
        let alone = datafusion::arrow::compute::filter_record_batch(
            &lb,
            &datafusion::arrow::compute::not(&hit).unwrap(),
        )
        .unwrap();
        states.extend(v.run_unmatched(vec![alone]).await.unwrap());
        // The speed layer: pairs with an event at or above the cutoff, and the weights.
        states.extend(
            v.run_partial_join(
                vec![rows(&s[0], &above(&clicks), SOURCE_SPEED)],
                vec![rows(&s[1], &orders, SOURCE_SPEED)],
            )
            .await
            .unwrap(),
        );
        states.extend(
            v.run_partial_join(
                vec![rows(&s[0], &below(&clicks), SOURCE_SPEED)],
                vec![rows(&s[1], &above(&orders), SOURCE_SPEED)],
            )
            .await
            .unwrap(),
        );
        states.extend(speed_weights(&v, &clicks, &orders, cutoff).await);
        let merged = v.finalize(states).await.unwrap();
        assert_eq!(
            strip_source(sorted(&merged)),
            expected,
            "cutoff {cutoff}: {sql}"
        );
    }
}

/// A user column whose name contains `_src` is negated like any other; only the hidden
/// `bit_or(_src)` state (which layers a row came from) is not.
#[tokio::test]
async fn every_state_but_the_hidden_source_one_is_negated() {
    let streams = vec![
        stream("clicks", &[("user", "string"), ("ts", "timestamp")]),
        stream(
            "orders",
            &[("user", "string"), ("my_src", "int64"), ("ts", "timestamp")],
        ),
    ];
    let config = ViewConfig {
        name: "v".into(),
        sql: "SELECT date_bin(INTERVAL '1 hour', c.ts) AS w, sum(o.my_src) AS s \
              FROM clicks c LEFT JOIN orders o \
              ON c.user = o.user AND o.ts BETWEEN c.ts AND c.ts + INTERVAL '1 minute' \
              GROUP BY w"
            .into(),
        allowed_lateness_ms: 0,
        schedule: None,
    };
    let v = CompiledView::compile(&config, &streams).await.unwrap();
    let negated = &v.outer.as_ref().unwrap().negated;
    let fields = v.partial_schema.fields();
    let name = |i: usize| fields[i].name().to_string();
    // One group column (the window), then the states, `bit_or(_src)`'s among them.
    let hidden: Vec<usize> = (0..fields.len())
        .filter(|i| name(*i).starts_with("bit_or"))
        .collect();
    assert_eq!(hidden.len(), 1, "{fields:?}");
    assert!(
        (0..fields.len()).any(|i| name(i).contains("my_src")),
        "{fields:?}"
    );
    let expected: Vec<usize> = (1..fields.len()).filter(|i| *i != hidden[0]).collect();
    assert_eq!(negated, &expected, "{fields:?}");
}
