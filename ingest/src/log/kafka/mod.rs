//! The Kafka event log: one topic per stream, through librdkafka (rdkafka).
//!
//! **Derived `_ingest_ts`.** Not every broker applies `LogAppendTime` (tansu 0.6 stores
//! the setting and ignores it), so record timestamps are producer clocks. Tributary
//! derives `_ingest_ts` in log order, identically in every consumer, from the records
//! of the partition alone:
//!
//! ```text
//! trusted(o)  = timestamp of the last record at or before o that Tributary wrote
//!               (header `tributary-trusted`: HTTP ingest and idle-partition ticks)
//! capped(o)   = min(ts(o), trusted(o) + max-timestamp-lead)   (uncapped before any trusted record)
//! _ingest_ts(o) = max(_ingest_ts(o - 1), capped(o))
//! ```
//!
//! It never decreases. A record written straight into the topic with a timestamp far in
//! the future moves the partition's ingest time at most `max-timestamp-lead` ahead of
//! Tributary's own clock, so it cannot stall batch cutoffs. Ticks (header
//! `tributary-tick`, empty payload) are written into every partition every
//! `tick-interval`, so idle partitions' ingest time keeps up with the clock; readers
//! skip them.
//!
//! A reader computes the derivation from the partition's first retained offset; it
//! keeps cursors so sequential reads continue where they stopped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tributary_core::config::LogConfig;
use tributary_core::error::{CoreError, Result};
use tributary_core::log::{AppendAck, Assignment, EventLog, LogBatch, NewRecord};

use super::membership::Membership;

pub mod checkpoint;
mod cursor;
use checkpoint::Checkpoints;
pub use cursor::Derivation;
use cursor::{Cursor, META_TIMEOUT, advance, new_cursor};
use tributary_core::time::now_micros;

/// Header on records Tributary's ingest wrote: their timestamps are a clock it trusts.
pub const TRUSTED_HEADER: &str = "tributary-trusted";
/// Header on the idle-partition ticks: they move `_ingest_ts` on and carry no event.
pub const TICK_HEADER: &str = "tributary-tick";
fn kafka_err(what: &str, e: impl std::fmt::Display) -> CoreError {
    CoreError::LogUnavailable(format!("kafka {what}: {e}"))
}

/// The event log on a Kafka-protocol cluster: one topic per stream, rdkafka clients.
pub struct KafkaLog {
    config: LogConfig,
    /// Replaced when it fails in a way librdkafka does not recover from by itself
    /// (e.g. a broker that lost its idempotent-producer state in a restart).
    producer: std::sync::RwLock<FutureProducer>,
    topics: HashMap<String, (String, u32)>,
    cursors: Mutex<HashMap<(String, u32), Vec<Cursor>>>,
    groups: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    members: Mutex<HashMap<String, Arc<Membership>>>,
    /// Derivation checkpoints new cursors start from (none: from the first offset).
    checkpoints: Option<Arc<Checkpoints>>,
    /// Records read only to compute the derivation, since the log was opened.
    replayed: std::sync::atomic::AtomicU64,
}

impl KafkaLog {
    /// Connect, and create or check the topic of every stream.
    pub async fn open(config: LogConfig, streams: &[(String, u32)]) -> Result<KafkaLog> {
        let producer = new_producer(&config)?;
        let topics: HashMap<String, (String, u32)> = streams
            .iter()
            .map(|(s, n)| (s.clone(), (config.topic(s), *n)))
            .collect();
        let log = KafkaLog {
            config,
            producer: std::sync::RwLock::new(producer),
            topics,
            cursors: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
            checkpoints: None,
            replayed: std::sync::atomic::AtomicU64::new(0),
        };
        log.ensure_topics().await?;
        Ok(log)
    }

    /// Keep derivation checkpoints under `dir` (one per partition per `every`), and
    /// start readers from them.
    pub fn with_checkpoints(mut self, dir: std::path::PathBuf, every: Duration) -> Self {
        self.checkpoints = Some(Arc::new(Checkpoints::new(dir, every)));
        self
    }

    /// Records read only to compute `_ingest_ts` (before where a read started) since
    /// the log was opened: what checkpoints save.
    pub fn replayed(&self) -> u64 {
        self.replayed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The first offset at or after `from` whose record is stamped at or after `ts`
    /// (the end when none is yet).
    async fn scan_for_ingest_ts(
        &self,
        stream: &str,
        partition: u32,
        ts: i64,
        mut from: u64,
    ) -> Result<u64> {
        loop {
            let (batch, _) = self
                .read_inner(stream, partition, from, Some(10_000))
                .await?;
            if let Some(r) = batch.records.iter().find(|r| r.ingest_ts >= ts) {
                return Ok(r.offset);
            }
            if batch.next_offset == from || batch.records.is_empty() {
                return Ok(batch.next_offset);
            }
            from = batch.next_offset;
        }
    }

    fn producer(&self) -> FutureProducer {
        self.producer.read().expect("producer lock").clone()
    }

    /// Start over with a new producer (and so a new producer id) after a failure;
    /// records of the failed request were answered 503 and may be retried.
    fn replace_producer(&self) {
        match new_producer(&self.config) {
            Ok(p) => *self.producer.write().expect("producer lock") = p,
            Err(e) => tracing::warn!(error = %e, "could not create a new Kafka producer"),
        }
    }

    async fn ensure_topics(&self) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = client_config(&self.config)
            .create()
            .map_err(|e| kafka_err("admin client", e))?;
        let mut missing = Vec::new();
        for (stream, (topic, partitions)) in &self.topics {
            match self.partition_count(topic).await? {
                Some(n) if n == *partitions => {}
                Some(n) => {
                    return Err(CoreError::Log(format!(
                        "topic `{topic}` of stream `{stream}` has {n} partitions, but the stream declares {partitions}"
                    )));
                }
                None => missing.push((topic.clone(), *partitions)),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let new: Vec<NewTopic> = missing
            .iter()
            .map(|(t, n)| {
                NewTopic::new(
                    t,
                    *n as i32,
                    TopicReplication::Fixed(self.config.replication_factor),
                )
            })
            .collect();
        let results = admin
            .create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(META_TIMEOUT)),
            )
            .await
            .map_err(|e| kafka_err("create topics", e))?;
        for r in results {
            match r {
                Ok(t) => tracing::info!(topic = %t, "created topic"),
                Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::info!(topic = %t, "topic created concurrently")
                }
                Err((t, code)) => return Err(kafka_err(&format!("create topic `{t}`"), code)),
            }
        }
        Ok(())
    }

    async fn partition_count(&self, topic: &str) -> Result<Option<u32>> {
        let producer = self.producer();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let md = producer
                .client()
                .fetch_metadata(Some(&topic), META_TIMEOUT)
                .map_err(|e| kafka_err("metadata", e))?;
            let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
                return Ok(None);
            };
            match t.error() {
                Some(_) if t.partitions().is_empty() => Ok(None),
                _ => Ok(Some(t.partitions().len() as u32)),
            }
        })
        .await
        .map_err(|e| kafka_err("metadata", e))?
    }

    fn topic(&self, stream: &str, partition: u32) -> Result<String> {
        match self.topics.get(stream) {
            None => Err(CoreError::UnknownStream(stream.to_string())),
            Some((_, n)) if partition >= *n => Err(CoreError::Log(format!(
                "stream `{stream}` has {n} partitions, not {}",
                partition + 1
            ))),
            Some((t, _)) => Ok(t.clone()),
        }
    }

    /// Write a tick into every partition of every stream (see the module docs).
    pub async fn tick(&self) -> Result<()> {
        let now_ms = now_micros() / 1000;
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: TRUSTED_HEADER,
                value: Some("1"),
            })
            .insert(Header {
                key: TICK_HEADER,
                value: Some("1"),
            });
        let producer = self.producer();
        let mut sends = Vec::new();
        for (topic, n) in self.topics.values() {
            for p in 0..*n {
                let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic)
                    .partition(p as i32)
                    .payload(&b"tick"[..])
                    .timestamp(now_ms)
                    .headers(headers.clone());
                sends.push(producer.send(record, Duration::from_secs(0)));
            }
        }
        for r in join_all(sends).await {
            if let Err((e, _)) = r {
                self.replace_producer();
                return Err(kafka_err("tick", e));
            }
        }
        Ok(())
    }

    /// Take a cursor at `from` (or the closest one before it), or open one.
    fn take_cursor(&self, stream: &str, partition: u32, from: u64) -> Option<Cursor> {
        let mut cursors = self.cursors.lock().expect("cursor lock");
        let list = cursors.entry((stream.to_string(), partition)).or_default();
        let best = list
            .iter()
            .enumerate()
            .filter(|(_, c)| c.next <= from)
            .max_by_key(|(_, c)| c.next)
            .map(|(i, _)| i)?;
        Some(list.swap_remove(best))
    }

    fn put_cursor(&self, stream: &str, partition: u32, cursor: Cursor) {
        let mut cursors = self.cursors.lock().expect("cursor lock");
        let list = cursors.entry((stream.to_string(), partition)).or_default();
        // A few cursors per partition (speed layer, archiver, cutoffs) are plenty.
        if list.len() >= 4 {
            list.remove(0);
        }
        list.push(cursor);
    }

    /// Read from `from`: up to `max` event records, stopping at the partition's end.
    /// Returns the batch and the derivation state after it.
    async fn read_inner(
        &self,
        stream: &str,
        partition: u32,
        from: u64,
        max: Option<usize>,
    ) -> Result<(LogBatch, Derivation)> {
        let topic = self.topic(stream, partition)?;
        let found = self.take_cursor(stream, partition, from);
        let client = client_config(&self.config);
        let lead = self.config.max_timestamp_lead_ms.saturating_mul(1000);
        // Everything that talks to the broker runs off the async workers: a broker
        // that is down must not stall the runtime (and with it HTTP ingest).
        let checkpoints = self.checkpoints.clone();
        let (cursor, result) = tokio::task::spawn_blocking(move || {
            let mut cursor = match found {
                Some(c) => c,
                None => {
                    match open_cursor(client, &topic, partition, from, checkpoints.as_deref()) {
                        Ok(c) => c,
                        Err(e) => return (None, Err(e)),
                    }
                }
            };
            let result = advance(&mut cursor, &topic, partition, from, max, lead);
            if let (Ok(_), Some(c), Some(point)) = (&result, &checkpoints, cursor.tick_point) {
                c.offer(&topic, partition, point);
            }
            (Some(cursor), result)
        })
        .await
        .map_err(|e| kafka_err("read", e))?;
        let Some(mut cursor) = cursor else {
            return result.map(|b| (b, Derivation::default()));
        };
        let state = cursor.state;
        self.replayed.fetch_add(
            std::mem::take(&mut cursor.replayed),
            std::sync::atomic::Ordering::Relaxed,
        );
        if result.is_ok() {
            self.put_cursor(stream, partition, cursor);
        }
        result.map(|b| (b, state))
    }

    /// The Kafka consumer group of `consumer` (`tributary-archiver`, …): scoped by the
    /// topic prefix, so that two deployments sharing a cluster (or tests sharing a
    /// broker) never share a group, whose rebalances would hand one's partitions to
    /// the other's members.
    fn group_id(&self, consumer: &str) -> String {
        format!("{}{consumer}", self.config.topic_prefix)
    }

    fn group(&self, consumer: &str) -> Result<Arc<BaseConsumer>> {
        let mut groups = self.groups.lock().expect("group lock");
        if let Some(c) = groups.get(consumer) {
            return Ok(c.clone());
        }
        let c: BaseConsumer = client_config(&self.config)
            .set("group.id", self.group_id(consumer))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| kafka_err("consumer group", e))?;
        let c = Arc::new(c);
        groups.insert(consumer.to_string(), c.clone());
        Ok(c)
    }
}

/// Checkpoints a new cursor tries before it replays from the first offset.
const TRIED_CHECKPOINTS: usize = 4;

/// A new cursor at `from`'s newest checkpoint that still holds, else at the
/// partition's first offset.
fn open_cursor(
    client: ClientConfig,
    topic: &str,
    partition: u32,
    from: u64,
    checkpoints: Option<&Checkpoints>,
) -> Result<Cursor> {
    let starts = checkpoints.map_or_else(Vec::new, |c| {
        c.candidates(topic, partition, from, TRIED_CHECKPOINTS)
    });
    let (cursor, used) = new_cursor(client, topic, partition, &starts)?;
    match (used, checkpoints) {
        (Some(point), _) => {
            tracing::debug!(
                topic,
                partition,
                offset = point.offset,
                "derivation resumed from a checkpoint"
            );
        }
        (None, Some(c)) if !starts.is_empty() => {
            // None holds: the topic is not the one they were taken on any more.
            tracing::warn!(
                topic,
                partition,
                "derivation checkpoints no longer match the topic; replaying"
            );
            c.discard(topic, partition);
        }
        _ => {}
    }
    Ok(cursor)
}

fn new_producer(config: &LogConfig) -> Result<FutureProducer> {
    client_config(config)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("message.timeout.ms", config.produce_timeout_ms.to_string())
        .create()
        .map_err(|e| kafka_err("producer", e))
}

fn client_config(config: &LogConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers);
    for (k, v) in config.security.properties() {
        c.set(k, v);
    }
    for (k, v) in &config.options {
        c.set(k, v);
    }
    c
}

#[async_trait]
impl EventLog for KafkaLog {
    async fn append_records(
        &self,
        stream: &str,
        partition: u32,
        records: Vec<NewRecord>,
    ) -> Result<AppendAck> {
        let topic = self.topic(stream, partition)?;
        let now_ms = now_micros() / 1000;
        let headers = OwnedHeaders::new().insert(Header {
            key: TRUSTED_HEADER,
            value: Some("1"),
        });
        let producer = self.producer();
        let sends = records.iter().map(|r| {
            let mut record: FutureRecord<'_, Vec<u8>, Vec<u8>> = FutureRecord::to(&topic)
                .partition(partition as i32)
                .payload(&r.payload)
                .timestamp(now_ms)
                .headers(headers.clone());
            if let Some(k) = &r.key {
                record = record.key(k);
            }
            producer.send(record, Duration::from_secs(0))
        });
        // Our own deadline: an idempotent producer may hold records longer than
        // `message.timeout.ms` while it has no producer id, and ingest must answer.
        let timeout = Duration::from_millis(self.config.produce_timeout_ms.max(1));
        let results = tokio::time::timeout(timeout, join_all(sends))
            .await
            .map_err(|_| {
                kafka_err(
                    "produce",
                    format!("the broker did not acknowledge within {timeout:?}"),
                )
            })?;
        let mut first = u64::MAX;
        for r in results {
            match r {
                Ok(d) => first = first.min(d.offset.max(0) as u64),
                Err((e, _)) => {
                    self.replace_producer();
                    return Err(kafka_err("produce", e));
                }
            }
        }
        Ok(AppendAck {
            first_offset: if records.is_empty() { 0 } else { first },
            count: records.len(),
            ingest_ts: now_ms * 1000,
        })
    }

    async fn read(&self, stream: &str, partition: u32, from: u64, max: usize) -> Result<LogBatch> {
        Ok(self.read_inner(stream, partition, from, Some(max)).await?.0)
    }

    async fn end_offset(&self, stream: &str, partition: u32) -> Result<u64> {
        // Read to the end from the farthest cursor: watermarks are not exact everywhere.
        let (batch, _) = self.read_inner(stream, partition, u64::MAX, None).await?;
        Ok(batch.next_offset)
    }

    async fn first_offset(&self, stream: &str, partition: u32) -> Result<u64> {
        let topic = self.topic(stream, partition)?;
        let found = self.take_cursor(stream, partition, u64::MAX);
        let client = client_config(&self.config);
        let (cursor, low) = tokio::task::spawn_blocking(move || {
            let cursor = match found {
                Some(c) => c,
                None => match new_cursor(client, &topic, partition, &[]) {
                    Ok((c, _)) => c,
                    Err(e) => return (None, Err(e)),
                },
            };
            let low = cursor
                .consumer
                .fetch_watermarks(&topic, partition as i32, META_TIMEOUT)
                .map(|(low, _)| low.max(0) as u64)
                .map_err(|e| kafka_err("watermarks", e));
            (Some(cursor), low)
        })
        .await
        .map_err(|e| kafka_err("watermarks", e))?;
        if let Some(cursor) = cursor {
            self.put_cursor(stream, partition, cursor);
        }
        low
    }

    async fn offset_for_ingest_ts(&self, stream: &str, partition: u32, ts: i64) -> Result<u64> {
        // Records before a checkpoint whose state is below `ts` are all below it.
        let topic = self.topic(stream, partition)?;
        let start = self
            .checkpoints
            .as_ref()
            .and_then(|c| c.below_ingest_ts(&topic, partition, ts));
        let found = self
            .scan_for_ingest_ts(stream, partition, ts, start.map_or(0, |p| p.offset))
            .await?;
        // The checkpoint was found stale (and dropped) on the way: scan from the start.
        let stale = start.is_some_and(|p| {
            let checkpoints = self
                .checkpoints
                .as_ref()
                .expect("a checkpoint came from them");
            checkpoints.at_or_before(&topic, partition, p.offset) != Some(p)
        });
        if stale {
            return self.scan_for_ingest_ts(stream, partition, ts, 0).await;
        }
        Ok(found)
    }

    async fn ingest_ts_bound(&self, stream: &str, partition: u32, offset: u64) -> Result<i64> {
        let (batch, state) = self.read_inner(stream, partition, offset, Some(1)).await?;
        Ok(match batch.records.first() {
            Some(r) => r.ingest_ts,
            // Nothing at or after `offset` yet: later records derive at or above the
            // running maximum. An empty partition bounds nothing until its first tick.
            None => state.max.unwrap_or(i64::MIN),
        })
    }

    async fn commit_position(
        &self,
        consumer: &str,
        stream: &str,
        partition: u32,
        offset: u64,
    ) -> Result<()> {
        let topic = self.topic(stream, partition)?;
        let group = self.group(consumer)?;
        tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition as i32, Offset::Offset(offset as i64))
                .map_err(|e| kafka_err("commit", e))?;
            group
                .commit(&tpl, CommitMode::Sync)
                .map_err(|e| kafka_err("commit", e))
        })
        .await
        .map_err(|e| kafka_err("commit", e))?
    }

    async fn position(&self, consumer: &str, stream: &str, partition: u32) -> Result<Option<u64>> {
        let topic = self.topic(stream, partition)?;
        let group = self.group(consumer)?;
        tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition as i32);
            let committed = group
                .committed_offsets(tpl, META_TIMEOUT)
                .map_err(|e| kafka_err("committed offsets", e))?;
            Ok(committed.elements().first().and_then(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(o as u64),
                _ => None,
            }))
        })
        .await
        .map_err(|e| kafka_err("committed offsets", e))?
    }

    async fn assignment(&self, group: &str, stream: &str) -> Result<Assignment> {
        if !self.topics.contains_key(stream) {
            return Err(CoreError::UnknownStream(stream.to_string()));
        }
        let member = {
            let mut members = self.members.lock().expect("member lock");
            match members.get(group) {
                Some(m) => m.clone(),
                None => {
                    let topics = self
                        .topics
                        .iter()
                        .map(|(s, (t, _))| (s.clone(), t.clone()))
                        .collect();
                    let m = Arc::new(Membership::join(
                        client_config(&self.config),
                        &self.group_id(group),
                        &topics,
                    )?);
                    members.insert(group.to_string(), m.clone());
                    m
                }
            }
        };
        let stream = stream.to_string();
        tokio::task::spawn_blocking(move || member.assignment(&stream))
            .await
            .map_err(|e| kafka_err("assignment", e))?
    }
}
