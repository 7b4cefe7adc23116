//! The join's exactness, simulated: two streams read in any interleaving, batch
//! cutoffs moving at any time (also past events this layer has not read yet), and the
//! batch layer's pairs below the final cutoff plus this layer's segments above it must
//! equal the one-pass join.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, BooleanArray, TimestampMicrosecondArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use serde_json::{Value, json};
use tributary_core::config::{ConfigSource, from_toml_str};
use tributary_core::pipeline::Pipeline;
use tributary_core::quarantine::unmatched_among;
use tributary_core::schema::{BatchDecoder, INGEST_TS, LogPosition, StreamSchema};
use tributary_core::view::{SOURCE_BATCH, SOURCE_SPEED, input_schema, tag_source};

use super::*;

const PIPELINE: &str = r#"
[[streams]]
name = "clicks"
event-time = "ts"
fields = [
  { name = "user", type = "string" },
  { name = "page", type = "string" },
  { name = "ts", type = "timestamp" },
]

[[streams]]
name = "orders"
event-time = "ts"
fields = [
  { name = "user", type = "string" },
  { name = "amount", type = "int64" },
  { name = "ts", type = "timestamp" },
]

[[views]]
name = "conversions"
sql = """
SELECT c.page, date_bin(INTERVAL '1 hour', c.ts) AS w, count(*) AS n, sum(o.amount) AS total
FROM clicks c JOIN orders o
  ON c.user = o.user AND o.ts BETWEEN c.ts - INTERVAL '5 minutes' AND c.ts + INTERVAL '20 minutes'
GROUP BY c.page, w
"""

[[views]]
name = "funnel"
sql = """
SELECT c.page, date_bin(INTERVAL '1 hour', c.ts) AS w, count(*) AS n, count(o.user) AS converted,
  sum(o.amount) AS total, avg(o.amount) AS basket
FROM clicks c LEFT JOIN orders o
  ON c.user = o.user AND o.ts BETWEEN c.ts - INTERVAL '5 minutes' AND c.ts + INTERVAL '20 minutes'
GROUP BY c.page, w
"""
"#;

/// `_ingest_ts` bucket width of the simulation.
const WIDTH: i64 = 4_000;

/// A small deterministic generator (xorshift), so that a failing seed reproduces.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One event: its side, JSON, and `_ingest_ts`.
type Event = (Side, Value, i64);

/// Events of both streams in arrival (ingest) order.
fn arrivals(rng: &mut Rng, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let user = format!("u{}", rng.below(3));
            let minute = rng.below(120);
            let ts = format!("2026-01-01T{:02}:{:02}:00Z", 10 + minute / 60, minute % 60);
            let ingest = 1_000 * (i as i64 + 1);
            match rng.below(2) {
                0 => {
                    let page = ["home", "shop"][rng.below(2) as usize];
                    (
                        Side::Left,
                        json!({"user": user, "page": page, "ts": ts}),
                        ingest,
                    )
                }
                _ => {
                    let amount = rng.below(50) as i64;
                    (
                        Side::Right,
                        json!({"user": user, "amount": amount, "ts": ts}),
                        ingest,
                    )
                }
            }
        })
        .collect()
}

fn rows(stream: &StreamSchema, events: &[&Event], tag: i32) -> RecordBatch {
    let mut d = BatchDecoder::new(stream, false);
    for (i, (_, v, ingest)) in events.iter().enumerate() {
        let at = LogPosition {
            partition: 0,
            offset: i as u64,
            ingest_ts: *ingest,
        };
        d.push(v, at).unwrap();
    }
    tag_source(&d.flush().unwrap(), tag, &input_schema(stream)).unwrap()
}

/// Every event of both streams, as the master tables would hold them once archived.
struct MemArchive {
    sides: [RecordBatch; 2],
    event_time: String,
}

impl Archive for MemArchive {
    async fn below(
        &mut self,
        side: Side,
        cutoff: i64,
        (lo, hi): (i64, i64),
    ) -> Result<Vec<RecordBatch>, CoreError> {
        let b = &self.sides[side.index()];
        let ts = |name: &str| {
            b.column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap()
                .clone()
        };
        let (ingest, event) = (ts(INGEST_TS), ts(&self.event_time));
        let keep: BooleanArray = (0..b.num_rows())
            .map(|i| {
                let t = event.value(i);
                Some(ingest.value(i) < cutoff && t >= lo && t <= hi)
            })
            .collect();
        Ok(vec![filter_record_batch(b, &keep)?])
    }
}

fn sorted(batches: &[RecordBatch]) -> Vec<String> {
    let text = pretty_format_batches(batches).unwrap().to_string();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        // Without `_src`, the last column: which layer a row came from differs.
        .map(|l| {
            l.trim_end_matches('|')
                .rsplit_once('|')
                .unwrap()
                .0
                .to_string()
        })
        .collect();
    lines.sort();
    lines
}

/// One simulated run: the speed layer reads the two streams in a random interleaving
/// (each in its own order), a micro-batch of one to three events at a time, while the
/// cutoff moves forward at random to any bucket boundary.
async fn simulate(seed: u64, view: &str) {
    let config = from_toml_str(PIPELINE).unwrap();
    let pipeline = Pipeline::from_config(&config, &ConfigSource::EmbeddedDefault)
        .await
        .unwrap();
    let view = pipeline.view(view).unwrap();
    let streams = [
        pipeline.stream("clicks").unwrap(),
        pipeline.stream("orders").unwrap(),
    ];
    let mut rng = Rng(seed.wrapping_mul(2_654_435_761).max(1));
    let events = arrivals(&mut rng, 40);
    let of = |side: Side| -> Vec<&Event> { events.iter().filter(|e| e.0 == side).collect() };
    let archive = MemArchive {
        sides: [Side::Left, Side::Right].map(|s| rows(streams[s.index()], &of(s), SOURCE_SPEED)),
        event_time: "ts".into(),
    };
    let mut state = JoinState::new(view.clone(), archive);
    let mut queues = [of(Side::Left), of(Side::Right)].map(std::collections::VecDeque::from);
    let mut segments: BTreeMap<i64, Vec<RecordBatch>> = BTreeMap::new();
    // A LEFT join's weights of unmatched rows per bucket (replaced, not added to).
    let mut weights: BTreeMap<i64, Vec<RecordBatch>> = BTreeMap::new();
    let mut cutoff = i64::MIN;
    let last = events.last().unwrap().2;
    while queues.iter().any(|q| !q.is_empty()) {
        // In half the runs the cutoff stops moving for the last third of the reads, so
        // that what the layer keeps between cutoffs is what the answer is made of.
        let left = queues.iter().map(|q| q.len()).sum::<usize>();
        let frozen = seed.is_multiple_of(2) && left < events.len() / 3;
        if !frozen && rng.below(4) == 0 {
            let to = (rng.below((last / WIDTH + 2) as u64) as i64) * WIDTH;
            if to > cutoff {
                cutoff = to;
                segments = segments.split_off(&cutoff);
                weights = weights.split_off(&cutoff);
            }
        }
        let side = match (queues[0].is_empty(), queues[1].is_empty()) {
            (false, true) => Side::Left,
            (true, false) => Side::Right,
            // One stream read ahead of the other, either way, in a third of the runs each:
            // late reads meet partners in several later buckets.
            _ => match (seed % 3, rng.below(5)) {
                (1, 0) | (2, 1..) => Side::Left,
                (1, _) | (2, _) => Side::Right,
                _ => [Side::Left, Side::Right][rng.below(2) as usize],
            },
        };
        let take = (1 + rng.below(3) as usize).min(queues[side.index()].len());
        let batch: Vec<&Event> = queues[side.index()].drain(..take).collect();
        // Decoding groups a micro-batch's events by bucket.
        let mut buckets: BTreeMap<i64, Vec<&Event>> = BTreeMap::new();
        for e in batch {
            buckets
                .entry(e.2.div_euclid(WIDTH) * WIDTH)
                .or_default()
                .push(e);
        }
        for (bucket, evs) in buckets {
            let input = rows(streams[side.index()], &evs, SOURCE_SPEED);
            let pairs = state
                .apply(side, bucket, vec![input], cutoff)
                .await
                .unwrap();
            for (b, states) in pairs {
                // The store ignores states below its cutoff.
                if b >= cutoff {
                    segments.entry(b).or_default().extend(states);
                }
            }
            for (b, states) in state.unmatched_since(side, bucket, cutoff).await.unwrap() {
                if b >= cutoff {
                    weights.insert(b, states);
                }
            }
        }
    }
    let below =
        |side: Side| -> Vec<&Event> { of(side).into_iter().filter(|e| e.2 < cutoff).collect() };
    let mut states = batch_states(
        &view,
        rows(streams[0], &below(Side::Left), SOURCE_BATCH),
        rows(streams[1], &below(Side::Right), SOURCE_BATCH),
    )
    .await;
    states.extend(segments.into_values().flatten());
    states.extend(weights.into_values().flatten());
    let merged = view.finalize(states).await.unwrap();
    let reference = view
        .run_reference_streams(
            vec![rows(streams[0], &of(Side::Left), SOURCE_BATCH)],
            vec![rows(streams[1], &of(Side::Right), SOURCE_BATCH)],
        )
        .await
        .unwrap();
    assert_eq!(
        sorted(&merged),
        sorted(&reference),
        "seed {seed}: final cutoff {cutoff}"
    );
}

/// The batch layer's states over the events below the final cutoff: every pair of
/// them, and of a LEFT join the unmatched rows among them.
async fn batch_states(
    view: &CompiledView,
    left: RecordBatch,
    right: RecordBatch,
) -> Vec<RecordBatch> {
    let mut states = view
        .run_partial_join(vec![left.clone()], vec![right.clone()])
        .await
        .unwrap();
    if view.outer_join() {
        let (unmatched, failed) = unmatched_among(view, &left, vec![right]).await.unwrap();
        assert!(failed.is_empty(), "{failed:?}");
        states.extend(unmatched);
    }
    states
}

#[tokio::test]
async fn every_pair_is_counted_once_across_the_layers_whatever_the_order_and_cutoffs() {
    for seed in 1..=60 {
        simulate(seed, "conversions").await;
    }
}

#[tokio::test]
async fn every_unmatched_left_event_is_counted_once_whatever_the_order_and_cutoffs() {
    for seed in 1..=90 {
        simulate(seed, "funnel").await;
    }
}
