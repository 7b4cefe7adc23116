//! The event-log contract every backend (embedded, Kafka) implements.
//!
//! A log holds, per stream, a fixed number of partitions; each is an append-only
//! sequence of records addressed by offset. Every record carries `_ingest_ts`, assigned
//! in log order so that it never decreases within a partition (ARCHITECTURE.md, "The merge invariant"): that is what
//! makes "every event below T is archived" decidable from the archiver's positions.

use async_trait::async_trait;

use crate::error::Result;

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The record's offset in its partition.
    pub offset: u64,
    /// Microseconds since the epoch, non-decreasing within a partition.
    pub ingest_ts: i64,
    /// The record as JSON bytes.
    pub payload: Vec<u8>,
}

/// A record to append: its JSON, and the stream's key field (Kafka record key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// The Kafka record key (the stream's key field), if the stream has one.
    pub key: Option<Vec<u8>>,
    /// The record as JSON bytes.
    pub payload: Vec<u8>,
}

/// A consumer-group assignment (see [`EventLog::assignment`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The partitions this member owns.
    pub partitions: Vec<u32>,
    /// Changes whenever the group rebalances.
    pub generation: u64,
}

/// What a read returns: the records, and where the next read starts. The next offset
/// can lie beyond the last record: a backend may skip offsets that hold no event
/// (Kafka control records, Tributary's idle-partition ticks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogBatch {
    /// The records read, in offset order.
    pub records: Vec<LogRecord>,
    /// Where the next read of this partition starts.
    pub next_offset: u64,
    /// Offsets at or after the read's start that the log no longer holds: retention
    /// removed them before this reader got there. Readers must say so loudly; the
    /// records are lost to them.
    pub expired: Option<std::ops::Range<u64>>,
}

/// What an append returns once the records are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAck {
    /// The offset of the first record appended.
    pub first_offset: u64,
    /// How many were appended (offsets `first_offset..first_offset + count`).
    pub count: usize,
    /// A lower bound of the records' `_ingest_ts` (the embedded log's exact stamp).
    pub ingest_ts: i64,
}

/// An append-only, partitioned event log: the embedded one or Kafka.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Append records to one partition; returns only once they are durable.
    async fn append_records(
        &self,
        stream: &str,
        partition: u32,
        records: Vec<NewRecord>,
    ) -> Result<AppendAck>;

    /// [`EventLog::append_records`] for records without keys.
    async fn append(
        &self,
        stream: &str,
        partition: u32,
        payloads: Vec<Vec<u8>>,
    ) -> Result<AppendAck> {
        let records = payloads
            .into_iter()
            .map(|payload| NewRecord { key: None, payload })
            .collect();
        self.append_records(stream, partition, records).await
    }

    /// A counter bumped after every append this log commits, for a reader in the same
    /// process to wait on instead of polling (`None`: the log cannot tell; poll).
    fn appended(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Read up to `max` records of a partition starting at `from`.
    async fn read(&self, stream: &str, partition: u32, from: u64, max: usize) -> Result<LogBatch>;

    /// The offset the next append to this partition will get.
    async fn end_offset(&self, stream: &str, partition: u32) -> Result<u64>;

    /// The oldest offset the log still holds (retention removed what is below it).
    async fn first_offset(&self, stream: &str, partition: u32) -> Result<u64>;

    /// The first offset whose `_ingest_ts` is `>= ts` (the end offset if none is).
    async fn offset_for_ingest_ts(&self, stream: &str, partition: u32, ts: i64) -> Result<u64>;

    /// A time T such that every record of the partition at or after `offset`, those
    /// present and those appended later, has `_ingest_ts >= T`. With `offset` = the
    /// archiver's position, every event below T is archived: the batch cutoff rule.
    async fn ingest_ts_bound(&self, stream: &str, partition: u32, offset: u64) -> Result<i64>;

    /// Remember a consumer's position (the next offset it will read).
    async fn commit_position(
        &self,
        consumer: &str,
        stream: &str,
        partition: u32,
        offset: u64,
    ) -> Result<()>;

    /// A consumer's remembered position, if it has one.
    async fn position(&self, consumer: &str, stream: &str, partition: u32) -> Result<Option<u64>>;

    /// The partitions of `stream` this process owns as a member of consumer group
    /// `group`, and a generation that changes with every rebalance. A log without
    /// groups gives every partition to everyone, generation 0.
    async fn assignment(&self, group: &str, stream: &str) -> Result<Assignment>;

    /// Remove the records of a partition below offset `before` that were ingested
    /// before `ingested_before` (µs), keeping at least the newest record so offsets
    /// are never handed out twice; returns how many were removed. The caller decides
    /// what is safe to remove (archived, and below every view's cutoff). A log whose
    /// retention is its own (Kafka's topic settings) removes nothing.
    async fn truncate(
        &self,
        _stream: &str,
        _partition: u32,
        _before: u64,
        _ingested_before: i64,
    ) -> Result<u64> {
        Ok(0)
    }

    /// Bytes the log occupies on this machine's disk, for a log kept locally.
    fn disk_bytes(&self) -> Option<u64> {
        None
    }
}

/// Run `op` until it succeeds, waiting out [`crate::CoreError::LogUnavailable`] (a broker
/// that is down or unreachable) with backoff; other errors return at once. Returns
/// `None` if `shutdown` fires first. Consumers use it so that an outage pauses them
/// instead of stopping the process.
pub async fn retry_unavailable<T, F, Fut>(
    what: &str,
    shutdown: &crate::shutdown::Shutdown,
    mut op: F,
) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut wait = std::time::Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return Ok(Some(v)),
            Err(crate::CoreError::LogUnavailable(e)) => {
                tracing::warn!(what, error = %e, retry_in = ?wait, "event log unavailable");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}
