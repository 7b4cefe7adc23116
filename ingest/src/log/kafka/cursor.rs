//! Readers of one partition: a consumer positioned at an offset with the `_ingest_ts`
//! derivation state up to there (see the parent module), and the read that moves it.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tributary_core::error::Result;
use tributary_core::log::{LogBatch, LogRecord};

use super::checkpoint::Point;
use super::{TICK_HEADER, TRUSTED_HEADER, kafka_err};

pub(super) const META_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read waits for records the broker has but the consumer has not fetched.
const FETCH_WAIT: Duration = Duration::from_secs(2);
/// How long a read waits once it is past the broker's high watermark.
const QUEUE_WAIT: Duration = Duration::from_millis(5);

/// Running state of the `_ingest_ts` derivation after some prefix of a partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Derivation {
    /// The derived `_ingest_ts` so far: never decreasing.
    pub max: Option<i64>,
    /// The newest stamp of a record Tributary's own producer wrote (trusted clock).
    pub trusted: Option<i64>,
}

impl Derivation {
    /// Fold one record in; returns its `_ingest_ts` (microseconds).
    pub fn apply(&mut self, ts: i64, trusted: bool, lead: i64) -> i64 {
        if trusted {
            self.trusted = Some(self.trusted.map_or(ts, |t| t.max(ts)));
        }
        let capped = match self.trusted {
            Some(t) if !trusted => ts.min(t.saturating_add(lead)),
            _ => ts,
        };
        let derived = self.max.map_or(capped, |m| m.max(capped));
        self.max = Some(derived);
        derived
    }
}

/// A reader positioned in one partition, with the derivation state up to there.
pub(super) struct Cursor {
    pub(super) consumer: BaseConsumer,
    pub(super) next: u64,
    pub(super) state: Derivation,
    /// The state right after the newest tick read: where a checkpoint can go. A tick
    /// is a record of its own, usually a batch of its own, and a broker that cannot
    /// start a fetch inside a batch (tansu 0.6 starts at the next one) can still start
    /// at a batch's first record.
    pub(super) tick_point: Option<Point>,
    /// Records read only to compute the derivation (before where a read starts).
    pub(super) replayed: u64,
}

fn consumer(mut client: ClientConfig) -> Result<BaseConsumer> {
    client
        .set("group.id", "tributary-reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(|e| kafka_err("consumer", e))
}

fn assign(consumer: &BaseConsumer, topic: &str, partition: u32, at: Offset) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition as i32, at)
        .map_err(|e| kafka_err("assign", e))?;
    consumer.assign(&tpl).map_err(|e| kafka_err("assign", e))
}

/// A cursor at the first of `starts` (checkpoints, newest first) whose record before
/// it is still the one the checkpoint saw and where the broker can start a fetch, else
/// at the partition's first retained offset. Also says which start was used.
pub(super) fn new_cursor(
    client: ClientConfig,
    topic: &str,
    partition: u32,
    starts: &[Point],
) -> Result<(Cursor, Option<Point>)> {
    for point in starts {
        let c = consumer(client.clone())?;
        if let Some(cursor) = resume(c, topic, partition, *point)? {
            return Ok((cursor, Some(*point)));
        }
    }
    let consumer = consumer(client)?;
    assign(&consumer, topic, partition, Offset::Beginning)?;
    let (low, _) = consumer
        .fetch_watermarks(topic, partition as i32, META_TIMEOUT)
        .map_err(|e| kafka_err("watermarks", e))?;
    let cursor = Cursor {
        consumer,
        next: low.max(0) as u64,
        state: Derivation::default(),
        tick_point: None,
        replayed: 0,
    };
    Ok((cursor, None))
}

/// Position `consumer` at `point` if the record at `point.offset - 1` is still there
/// with the checkpoint's timestamp (read, not applied: the state already holds it).
fn resume(
    consumer: BaseConsumer,
    topic: &str,
    partition: u32,
    point: Point,
) -> Result<Option<Cursor>> {
    let Some(before) = point.offset.checked_sub(1) else {
        return Ok(None);
    };
    assign(&consumer, topic, partition, Offset::Offset(before as i64))?;
    let msg = loop {
        match consumer.poll(FETCH_WAIT) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => return Ok(None),
            Some(Err(e)) => return Err(kafka_err("fetch", e)),
            // A broker may hand back the whole batch the offset is in.
            Some(Ok(m)) if m.offset() < before as i64 => continue,
            Some(Ok(m)) => break (m.offset(), m.timestamp().to_millis().unwrap_or(0)),
        }
    };
    if msg != (before as i64, point.last_ts_ms) {
        return Ok(None);
    }
    Ok(Some(Cursor {
        consumer,
        next: point.offset,
        state: point.state(),
        tick_point: Some(point),
        replayed: 0,
    }))
}

/// Move `cursor` to `from` (folding skipped records into its state), then collect up
/// to `max` events (`None`: none, just reach the end), stopping at the partition's end.
///
/// Some brokers (tansu 0.6) report the last *batch's* base offset + 1 as the high
/// watermark, not the last offset + 1. So the watermark is only a hint: below it, data
/// is on the broker and worth waiting for; at or above it, anything left is already in
/// the consumer's queue, and a short poll (or the broker's EOF) ends the read.
pub(super) fn advance(
    cursor: &mut Cursor,
    topic: &str,
    partition: u32,
    from: u64,
    max: Option<usize>,
    lead: i64,
) -> Result<LogBatch> {
    let (low, high) = cursor
        .consumer
        .fetch_watermarks(topic, partition as i32, META_TIMEOUT)
        .map_err(|e| kafka_err("watermarks", e))?;
    let high = high.max(0) as u64;
    // Below the low watermark the topic's retention has removed the records.
    let low = low.max(0) as u64;
    let expired = (from < low).then_some(from..low);
    let mut records = Vec::new();
    loop {
        if max.is_some_and(|m| records.len() >= m) {
            break;
        }
        let wait = if cursor.next < high {
            FETCH_WAIT
        } else {
            QUEUE_WAIT
        };
        let msg = match cursor.consumer.poll(wait) {
            None => break,
            // An EOF queued by an earlier read is stale while the broker has more.
            Some(Err(KafkaError::PartitionEOF(_))) if cursor.next < high => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(kafka_err("fetch", e)),
            Some(Ok(m)) => m,
        };
        let offset = msg.offset().max(0) as u64;
        if offset < cursor.next {
            continue;
        }
        let ts_ms = msg.timestamp().to_millis().unwrap_or(0);
        let (mut trusted, mut tick) = (false, false);
        if let Some(h) = msg.headers() {
            for header in h.iter() {
                trusted |= header.key == TRUSTED_HEADER;
                tick |= header.key == TICK_HEADER;
            }
        }
        let derived = cursor
            .state
            .apply(ts_ms.saturating_mul(1000), trusted, lead);
        cursor.next = offset + 1;
        if tick {
            cursor.tick_point = Some(Point {
                offset: cursor.next,
                max: cursor.state.max,
                trusted: cursor.state.trusted,
                last_ts_ms: ts_ms,
            });
        }
        if offset < from {
            cursor.replayed += 1;
        }
        if offset < from || tick || max.is_none() {
            continue;
        }
        records.push(LogRecord {
            offset,
            ingest_ts: derived,
            payload: msg.payload().unwrap_or_default().to_vec(),
        });
    }
    Ok(LogBatch {
        records,
        next_offset: if max.is_none() {
            cursor.next
        } else {
            cursor.next.max(from)
        },
        expired,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_never_decreases_and_caps_untrusted_future_stamps() {
        let lead = 60_000_000;
        let mut d = Derivation::default();
        assert_eq!(d.apply(1_000_000, true, lead), 1_000_000);
        // A producer clock behind ours: held at the running maximum.
        assert_eq!(d.apply(500_000, false, lead), 1_000_000);
        // A record from the year 2100: at most `lead` ahead of the trusted clock.
        assert_eq!(d.apply(4_102_444_800_000_000, false, lead), 61_000_000);
        assert_eq!(d.apply(2_000_000, true, lead), 61_000_000);
        // Trusted time passes the capped stamp: derived follows it again.
        assert_eq!(d.apply(90_000_000, true, lead), 90_000_000);
    }

    #[test]
    fn derivation_before_any_trusted_record_is_the_running_maximum() {
        let mut d = Derivation::default();
        assert_eq!(d.apply(5, false, 1), 5);
        assert_eq!(d.apply(3, false, 1), 5);
        assert_eq!(d.apply(9, false, 1), 9);
    }
}
