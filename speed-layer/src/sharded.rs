//! Several speed processes as one speed source: each holds some partitions of every
//! stream (`speed.shard`), so a view's speed states are the union of theirs. States are
//! mergeable, so serving adds them as they are and the final plan reduces them, as it
//! reduces one process's segments.
//!
//! Exactness: a partition's states are added once, from the one process that says it
//! holds the partition (two that say so are an error, never a double count), and a
//! partition held by no process that answered, or by one still rebuilding, is named in
//! [`Snapshot::missing_partitions`] so the answer can say it is incomplete instead of
//! being silently short.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use futures::future::join_all;
use tributary_core::CoreError;
use tributary_core::pipeline::{Pipeline, ViewSet};

use crate::remote::RemoteSpeed;
use crate::source::{Snapshot, SpeedSource};
use crate::store::ViewStats;
use crate::{ShardStats, SpeedStats, StreamStats};

/// The speed processes of one deployment, reached over HTTP.
pub struct ShardedSpeed {
    /// Every speed process, in the order of `speed.urls`.
    shards: Vec<RemoteSpeed>,
    /// The serving process's views (shared, so views made at runtime are known): each
    /// view's stream names it in an overlap error.
    views: ViewSet,
    /// Per view, each shard's last states and their generation: a shard whose states
    /// have not changed since leaves them out of its answer, and these stand in.
    held: Mutex<HashMap<String, Vec<Option<Held>>>>,
}

/// A shard's states at or above a cutoff, as of one of its generations.
#[derive(Clone)]
struct Held {
    generation: u64,
    /// The cutoff they were asked above: at another cutoff they are other states.
    cutoff: i64,
    states: Vec<RecordBatch>,
}

impl ShardedSpeed {
    /// One source over `shards`, serving `pipeline`'s views.
    pub fn new(shards: Vec<RemoteSpeed>, pipeline: &Pipeline) -> Self {
        ShardedSpeed {
            shards,
            views: pipeline.views.clone(),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Each shard's held states of `view`, one slot per shard.
    fn held(&self, view: &str) -> Vec<Option<Held>> {
        let held = self.held.lock().expect("held lock");
        held.get(view)
            .cloned()
            .unwrap_or_else(|| vec![None; self.shards.len()])
    }
}

/// One generation for the answers of every shard (only when each has one).
fn combined(generations: &[Option<u64>]) -> Option<u64> {
    let all: Option<Vec<u64>> = generations.iter().copied().collect();
    all.map(|g| {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        g.hash(&mut h);
        h.finish()
    })
}

#[async_trait]
impl SpeedSource for ShardedSpeed {
    async fn snapshot(
        &self,
        view: &str,
        cutoff: i64,
        known: Option<u64>,
    ) -> Result<Snapshot, CoreError> {
        let mut held = self.held(view);
        for slot in held.iter_mut() {
            if slot.as_ref().is_some_and(|h| h.cutoff != cutoff) {
                *slot = None;
            }
        }
        let answers = join_all(
            self.shards
                .iter()
                .zip(&held)
                .map(|(s, h)| s.snapshot(view, cutoff, h.as_ref().map(|h| h.generation))),
        )
        .await;
        let mut out = Snapshot::default();
        let mut holders: BTreeMap<u32, &str> = BTreeMap::new();
        let mut unreachable = None;
        let mut answered = 0;
        let mut generations = Vec::new();
        for ((shard, answer), slot) in self.shards.iter().zip(answers).zip(held.iter_mut()) {
            let mut snap = match answer {
                Ok(snap) => snap,
                // The asker must reload; a view no process knows is unknown everywhere.
                Err(e @ (CoreError::StaleCutoff { .. } | CoreError::UnknownView(_))) => {
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(speed = shard.base(), error = %e, "a speed process did not answer; its partitions are missing");
                    unreachable = Some(e);
                    generations.push(None);
                    *slot = None;
                    continue;
                }
            };
            answered += 1;
            match (snap.generation, slot.as_ref()) {
                // Unchanged since the states held: the answer left them out.
                (Some(g), Some(h)) if h.generation == g => snap.states = h.states.clone(),
                (Some(g), _) => {
                    *slot = Some(Held {
                        generation: g,
                        cutoff,
                        states: snap.states.clone(),
                    });
                }
                (None, _) => *slot = None,
            }
            generations.push(snap.generation);
            if answered > 1 && snap.revision != out.revision {
                // Each process follows the catalog on its own: one has taken a change
                // another has not yet.
                return Err(CoreError::RevisionMismatch {
                    view: view.to_string(),
                    what: format!("speed process {}", shard.base()),
                    ours: out.revision,
                    theirs: snap.revision,
                });
            }
            out.revision = snap.revision;
            for partition in snap.coverage.iter().flat_map(|c| c.partitions.keys()) {
                if let Some(first) = holders.insert(*partition, shard.base()) {
                    return Err(CoreError::SpeedOverlap {
                        stream: self
                            .views
                            .get(view)
                            .map(|v| v.stream.clone())
                            .unwrap_or_default(),
                        partition: *partition,
                        first: first.to_string(),
                        second: shard.base().to_string(),
                    });
                }
            }
            out.states.extend(snap.states);
            out.max_event_ts = out.max_event_ts.max(snap.max_event_ts);
            out.ingest_position = out.ingest_position.max(snap.ingest_position);
            out.segments += snap.segments;
            out.coverage.extend(snap.coverage);
        }
        if let Some(e) = unreachable.filter(|_| answered == 0) {
            return Err(e);
        }
        self.held
            .lock()
            .expect("held lock")
            .insert(view.to_string(), held);
        out.generation = combined(&generations);
        if out.generation.is_some() && out.generation == known {
            // The caller holds what it computed from these very states.
            out.states.clear();
        }
        Ok(out)
    }

    async fn release(&self, view: &str, cutoff: i64) -> Result<(), CoreError> {
        // A process that misses this release gets the cutoff from the batch view when
        // it restarts, or from the next release.
        let answers = join_all(self.shards.iter().map(|s| s.release(view, cutoff))).await;
        answers
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(|_| ())
    }

    async fn stats(&self) -> Result<SpeedStats, CoreError> {
        let answers = join_all(self.shards.iter().map(|s| s.stats())).await;
        let mut all = Vec::new();
        let mut shards = Vec::new();
        let mut unreachable = None;
        for (shard, answer) in self.shards.iter().zip(answers) {
            match answer {
                Ok(stats) => {
                    shards.extend(stats.shards.iter().cloned().map(|mut s| {
                        s.url = Some(shard.base().to_string());
                        s
                    }));
                    all.push(stats);
                }
                Err(e) => {
                    shards.push(ShardStats {
                        shard: "?".into(),
                        url: Some(shard.base().to_string()),
                        reachable: false,
                        caught_up: false,
                        recovery_ms: None,
                        partitions: BTreeMap::new(),
                    });
                    unreachable = Some(e);
                }
            }
        }
        if all.is_empty() {
            return Err(unreachable.unwrap_or_else(|| {
                CoreError::LogUnavailable("no speed process is configured".into())
            }));
        }
        let mut combined = combine(all);
        combined.shards = shards;
        Ok(combined)
    }

    async fn holds_from(&self, view: &str, revision: i64) -> Result<Option<i64>, CoreError> {
        // Every process must hold the revision, each from its own cutoff: the batch
        // states must reach the latest of them.
        let answers = join_all(self.shards.iter().map(|s| s.holds_from(view, revision))).await;
        let mut from = i64::MIN;
        for answer in answers {
            match answer? {
                Some(cutoff) => from = from.max(cutoff),
                None => return Ok(None),
            }
        }
        Ok(Some(from))
    }
}

/// The figures of several processes as one process over all their partitions would
/// report them: counts added, newest times the largest, recovery done once every
/// process has recovered.
fn combine(all: Vec<SpeedStats>) -> SpeedStats {
    let recovery_ms = all
        .iter()
        .map(|s| s.recovery_ms)
        .collect::<Option<Vec<u64>>>()
        .and_then(|v| v.into_iter().max());
    let restored_from_snapshot = all.iter().any(|s| s.restored_from_snapshot);
    let mut streams: BTreeMap<String, StreamStats> = BTreeMap::new();
    let mut lags: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
    let mut views: Vec<ViewStats> = Vec::new();
    for stats in all {
        let held = stats.shards.first().map(|s| s.partitions.clone());
        for (name, s) in stats.streams {
            let partitions = held.as_ref().and_then(|h| h.get(&name));
            if let Some(partitions) = partitions {
                let lag = lags.entry(name.clone()).or_default();
                lag.extend(
                    partitions
                        .iter()
                        .copied()
                        .zip(s.lag_by_partition.iter().copied()),
                );
            }
            match streams.get_mut(&name) {
                None => {
                    streams.insert(name, s);
                }
                Some(sum) => add_stream(sum, &s),
            }
        }
        for v in stats.views {
            match views.iter_mut().find(|w| w.view == v.view) {
                None => views.push(v),
                Some(sum) => add_view(sum, &v),
            }
        }
    }
    for (name, lag) in lags {
        if let Some(s) = streams.get_mut(&name) {
            s.lag_by_partition = lag.into_values().collect();
        }
    }
    SpeedStats {
        streams,
        views,
        recovery_ms,
        restored_from_snapshot,
        shards: Vec::new(),
    }
}

fn add_stream(sum: &mut StreamStats, s: &StreamStats) {
    sum.ingest_ts = sum.ingest_ts.max(s.ingest_ts);
    sum.events += s.events;
    sum.invalid += s.invalid;
    sum.duplicates += s.duplicates;
    sum.last_batch_events += s.last_batch_events;
    sum.last_batch_micros = sum.last_batch_micros.max(s.last_batch_micros);
    sum.lag += s.lag;
    sum.events_per_second += s.events_per_second;
}

fn add_view(sum: &mut ViewStats, v: &ViewStats) {
    sum.segments = sum.segments.max(v.segments);
    sum.state_rows += v.state_rows;
    sum.state_bytes += v.state_bytes;
    sum.events += v.events;
    sum.ignored_below_cutoff += v.ignored_below_cutoff;
    sum.cutoff = sum.cutoff.min(v.cutoff);
    sum.max_event_ts = sum.max_event_ts.max(v.max_event_ts);
    sum.watermark = sum.watermark.max(v.watermark);
    sum.late_events += v.late_events;
    sum.quarantined += v.quarantined;
    // The worse health of the two, and the error that goes with it.
    if health(v.state) > health(sum.state) {
        sum.state = v.state;
        sum.last_error = v.last_error.clone();
    }
}

fn health(state: crate::store::ViewState) -> u8 {
    match state {
        crate::store::ViewState::Running => 0,
        crate::store::ViewState::Degraded => 1,
        crate::store::ViewState::Failed => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Coverage;

    fn stream(events: u64, ingest_ts: i64, lag: Vec<u64>) -> StreamStats {
        StreamStats {
            ingest_ts,
            events,
            invalid: 0,
            duplicates: 0,
            last_batch_events: 0,
            last_batch_micros: 0,
            lag: lag.iter().sum(),
            lag_by_partition: lag,
            events_per_second: 0,
        }
    }

    fn process(
        shard: &str,
        partitions: Vec<u32>,
        s: StreamStats,
        recovery: Option<u64>,
    ) -> SpeedStats {
        SpeedStats {
            streams: [("r".to_string(), s)].into(),
            views: Vec::new(),
            recovery_ms: recovery,
            restored_from_snapshot: false,
            shards: vec![ShardStats {
                shard: shard.into(),
                url: None,
                reachable: true,
                caught_up: recovery.is_some(),
                recovery_ms: recovery,
                partitions: [("r".to_string(), partitions)].into(),
            }],
        }
    }

    #[test]
    fn two_processes_add_up_to_one_over_all_partitions() {
        let combined = combine(vec![
            process("0/2", vec![0, 2], stream(10, 5, vec![1, 3]), Some(40)),
            process("1/2", vec![1, 3], stream(7, 9, vec![2, 4]), Some(70)),
        ]);
        let r = &combined.streams["r"];
        assert_eq!((r.events, r.ingest_ts, r.lag), (17, 9, 10));
        assert_eq!(r.lag_by_partition, [1, 2, 3, 4]);
        assert_eq!(combined.recovery_ms, Some(70));
        let rebuilding = combine(vec![
            process("0/2", vec![0], stream(1, 1, vec![0]), Some(40)),
            process("1/2", vec![1], stream(1, 1, vec![0]), None),
        ]);
        assert_eq!(rebuilding.recovery_ms, None);
    }

    #[test]
    fn a_partition_no_caught_up_process_holds_is_missing() {
        let snap = Snapshot {
            coverage: vec![
                Coverage {
                    partitions: [(0, 5), (2, 7)].into(),
                    caught_up: true,
                },
                Coverage {
                    partitions: [(1, 3)].into(),
                    caught_up: false,
                },
            ],
            ..Snapshot::default()
        };
        assert_eq!(snap.missing_partitions(4), [1, 3]);
        assert!(Snapshot::default().missing_partitions(0).is_empty());
    }
}
