//! Checkpoints of the `_ingest_ts` derivation, so a reader that opens a partition starts
//! from the newest checkpoint at or before where it reads instead of replaying the
//! partition from its first retained offset: start-up costs the records since the last
//! checkpoint, not the whole retention.
//!
//! The derivation after offset `o` depends only on the records before `o`, so a state
//! any reader computed is the state every reader would compute. A checkpoint is that
//! state with its offset and the timestamp of the record just before it, taken right
//! after a tick (a record of its own, so a fetch can start at it on every broker); a
//! reader checks that the broker hands back exactly that record there (same offset,
//! same timestamp) before using it, so a topic deleted and created again under the same
//! name is never read with the old topic's state, and otherwise tries an older
//! checkpoint or replays. Each partition keeps its newest [`KEPT`] checkpoints in one JSON
//! file (`<dir>/<topic>-<partition>.json`, replaced atomically), at most one per
//! `every`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cursor::Derivation;

/// Checkpoints kept per partition: readers start at different places (the archiver at
/// its archived position, the speed layer at the batch cutoff, cutoff checks at the
/// end), so older ones stay useful.
pub const KEPT: usize = 64;

/// The derivation state before `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    /// The first offset the state does not include.
    pub offset: u64,
    /// Derivation state after every record before `offset`.
    pub max: Option<i64>,
    /// The newest trusted stamp before `offset`.
    pub trusted: Option<i64>,
    /// Timestamp (milliseconds) of the record at `offset - 1`: checked before use.
    pub last_ts_ms: i64,
}

impl Point {
    /// The derivation state it holds.
    pub fn state(&self) -> Derivation {
        Derivation {
            max: self.max,
            trusted: self.trusted,
        }
    }
}

/// The checkpoints of one log's partitions, on local disk.
#[derive(Debug)]
pub struct Checkpoints {
    /// Where the files are.
    dir: PathBuf,
    /// At most one new checkpoint per partition this often.
    every: Duration,
    /// Per (topic, partition): its checkpoints by offset, and when the last was added.
    points: Mutex<HashMap<(String, u32), Kept>>,
}

/// One partition's checkpoints by offset, and when the last was added.
type Kept = (Vec<Point>, Option<Instant>);

impl Checkpoints {
    /// Checkpoints under `dir` (created when the first is written), one per `every`.
    pub fn new(dir: PathBuf, every: Duration) -> Self {
        Checkpoints {
            dir,
            every,
            points: Mutex::new(HashMap::new()),
        }
    }

    fn file(&self, topic: &str, partition: u32) -> PathBuf {
        self.dir.join(format!("{topic}-{partition}.json"))
    }

    fn with<T>(
        &self,
        topic: &str,
        partition: u32,
        f: impl FnOnce(&mut Vec<Point>, &mut Option<Instant>) -> T,
    ) -> T {
        let mut all = self.points.lock().expect("checkpoint lock");
        let entry = all
            .entry((topic.to_string(), partition))
            .or_insert_with(|| {
                // A file that cannot be read is as good as none: the reader replays.
                let loaded = std::fs::read(self.file(topic, partition))
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<Vec<Point>>(&bytes).ok())
                    .unwrap_or_default();
                (loaded, None)
            });
        f(&mut entry.0, &mut entry.1)
    }

    /// The newest checkpoint at or before `offset`.
    pub fn at_or_before(&self, topic: &str, partition: u32, offset: u64) -> Option<Point> {
        self.candidates(topic, partition, offset, 1).pop()
    }

    /// Up to `n` checkpoints at or before `offset`, newest first: a reader tries them
    /// in turn until one holds.
    pub fn candidates(&self, topic: &str, partition: u32, offset: u64, n: usize) -> Vec<Point> {
        self.with(topic, partition, |points, _| {
            points
                .iter()
                .rev()
                .filter(|p| p.offset <= offset)
                .take(n)
                .copied()
                .collect()
        })
    }

    /// The newest checkpoint every record before which was stamped below `ts`: the
    /// first record stamped at or after `ts` is at or after it.
    pub fn below_ingest_ts(&self, topic: &str, partition: u32, ts: i64) -> Option<Point> {
        self.with(topic, partition, |points, _| {
            points
                .iter()
                .rev()
                .find(|p| p.max.is_none_or(|m| m < ts))
                .copied()
        })
    }

    /// Forget a partition's checkpoints (their records are not the topic's any more).
    pub fn discard(&self, topic: &str, partition: u32) {
        self.with(topic, partition, |points, _| points.clear());
        let _ = std::fs::remove_file(self.file(topic, partition));
    }

    /// Keep `point` if the last one is at least `every` old and behind it.
    pub fn offer(&self, topic: &str, partition: u32, point: Point) {
        let due = self.with(topic, partition, |points, last| {
            let fresh = last.is_some_and(|t| t.elapsed() < self.every);
            let behind = points.last().is_none_or(|p| p.offset < point.offset);
            if fresh || !behind {
                return None;
            }
            points.push(point);
            if points.len() > KEPT {
                points.remove(0);
            }
            *last = Some(Instant::now());
            Some(points.clone())
        });
        if let Some(points) = due
            && let Err(e) = self.write(topic, partition, &points)
        {
            tracing::warn!(topic, partition, error = %e, "could not write a derivation checkpoint");
        }
    }

    fn write(&self, topic: &str, partition: u32, points: &[Point]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let file = self.file(topic, partition);
        // Several readers of one process, or processes sharing the folder, may write at
        // once: each through a file of its own, renamed over the old one.
        let tmp = self.dir.join(format!(
            ".{topic}-{partition}.{}.{:?}.tmp",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&tmp, serde_json::to_vec(points)?)?;
        std::fs::rename(&tmp, &file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(offset: u64, max: i64) -> Point {
        Point {
            offset,
            max: Some(max),
            trusted: Some(max),
            last_ts_ms: max / 1000,
        }
    }

    #[test]
    fn the_newest_checkpoint_before_an_offset_or_a_time_is_found_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::new(dir.path().to_path_buf(), Duration::ZERO);
        for (o, t) in [(10, 100), (20, 200), (30, 300)] {
            c.offer("t", 0, point(o, t));
        }
        // Not behind the last: ignored.
        c.offer("t", 0, point(25, 250));
        let again = Checkpoints::new(dir.path().to_path_buf(), Duration::ZERO);
        assert_eq!(again.at_or_before("t", 0, 25), Some(point(20, 200)));
        assert_eq!(again.at_or_before("t", 0, 30), Some(point(30, 300)));
        assert_eq!(again.at_or_before("t", 0, 9), None);
        assert_eq!(again.at_or_before("t", 1, 99), None);
        // Every record before offset 20 is stamped at most 200 < 201.
        assert_eq!(again.below_ingest_ts("t", 0, 201), Some(point(20, 200)));
        assert_eq!(again.below_ingest_ts("t", 0, 100), None);
        again.discard("t", 0);
        let third = Checkpoints::new(dir.path().to_path_buf(), Duration::ZERO);
        assert_eq!(third.at_or_before("t", 0, 99), None);
    }

    #[test]
    fn at_most_one_checkpoint_per_interval_and_the_newest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let slow = Checkpoints::new(dir.path().join("slow"), Duration::from_secs(3600));
        slow.offer("t", 0, point(1, 1));
        slow.offer("t", 0, point(2, 2));
        assert_eq!(slow.at_or_before("t", 0, 9), Some(point(1, 1)));
        let fast = Checkpoints::new(dir.path().join("fast"), Duration::ZERO);
        for o in 1..=(KEPT as u64 + 10) {
            fast.offer("t", 0, point(o, o as i64));
        }
        assert_eq!(fast.at_or_before("t", 0, 10), None);
        assert_eq!(fast.at_or_before("t", 0, 11), Some(point(11, 11)));
    }
}
