//! The ingest service: validate records against their stream, append the valid ones to
//! the log, keep the rejected ones as dead letters, and say exactly what happened.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::try_join_all;
use serde::Serialize;
use serde_json::Value;
use tributary_core::CoreError;
use tributary_core::log::{EventLog, NewRecord};
use tributary_core::schema::{FieldError, StreamSchema};

use crate::dead_letter::{DeadLetter, DeadLetterSink};
use crate::error::IngestError;

/// One rejected record in a response.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecordError {
    pub index: usize,
    pub field: Option<String>,
    pub reason: String,
}

/// What ingest answers for one request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IngestReport {
    pub accepted: usize,
    pub rejected: usize,
    pub errors: Vec<RecordError>,
}

/// A record as it arrived: parsed, or the text that did not parse.
pub enum RawRecord {
    Parsed(Value),
    Malformed { text: String, error: String },
}

/// Per-stream counters, for status pages.
#[derive(Debug, Default)]
pub struct StreamCounters {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
}

pub struct Ingest {
    streams: HashMap<String, StreamSchema>,
    log: Arc<dyn EventLog>,
    dead_letters: DeadLetterSink,
    max_records: usize,
    round_robin: AtomicU64,
    counters: HashMap<String, StreamCounters>,
}

impl Ingest {
    pub fn new(
        streams: Vec<StreamSchema>,
        log: Arc<dyn EventLog>,
        dead_letters: DeadLetterSink,
        max_records: usize,
    ) -> Self {
        let counters = streams
            .iter()
            .map(|s| (s.name.clone(), StreamCounters::default()))
            .collect();
        Ingest {
            streams: streams.into_iter().map(|s| (s.name.clone(), s)).collect(),
            log,
            dead_letters,
            max_records,
            round_robin: AtomicU64::new(0),
            counters,
        }
    }

    pub fn counters(&self, stream: &str) -> Option<&StreamCounters> {
        self.counters.get(stream)
    }

    pub fn has_stream(&self, stream: &str) -> bool {
        self.streams.contains_key(stream)
    }

    /// Validate and append `records`; returns once every accepted record is durable.
    pub async fn ingest(
        &self,
        stream: &str,
        records: Vec<RawRecord>,
    ) -> Result<IngestReport, IngestError> {
        let schema = self
            .streams
            .get(stream)
            .ok_or_else(|| IngestError::UnknownStream(stream.to_string()))?;
        if records.len() > self.max_records {
            return Err(IngestError::TooManyRecords {
                count: records.len(),
                limit: self.max_records,
            });
        }
        let mut by_partition: BTreeMap<u32, Vec<NewRecord>> = BTreeMap::new();
        let mut errors = Vec::new();
        let mut letters = Vec::new();
        let mut accepted = 0;
        for (index, record) in records.into_iter().enumerate() {
            let outcome = match &record {
                RawRecord::Parsed(v) => schema.validate(v).map(|_| v),
                RawRecord::Malformed { error, .. } => Err(FieldError {
                    field: String::new(),
                    reason: format!("malformed JSON: {error}"),
                }),
            };
            match outcome {
                Ok(value) => {
                    let (p, record) = self.route(schema, value);
                    by_partition.entry(p).or_default().push(record);
                    accepted += 1;
                }
                Err(e) => {
                    let field = (!e.field.is_empty()).then(|| e.field.clone());
                    let raw = match &record {
                        RawRecord::Parsed(v) => v.to_string(),
                        RawRecord::Malformed { text, .. } => text.clone(),
                    };
                    letters.push(DeadLetter {
                        source: "http",
                        index: Some(index as i64),
                        field: field.clone(),
                        reason: e.reason.clone(),
                        raw,
                    });
                    errors.push(RecordError {
                        index,
                        field,
                        reason: e.reason,
                    });
                }
            }
        }
        self.append(stream, by_partition).await?;
        let counters = &self.counters[stream];
        counters
            .accepted
            .fetch_add(accepted as u64, Ordering::Relaxed);
        counters
            .rejected
            .fetch_add(errors.len() as u64, Ordering::Relaxed);
        if let Err(e) = self.dead_letters.write(stream, letters).await {
            // The client still gets every reason in the response; the table is a copy.
            tracing::error!(stream, error = %e, "could not store dead letters");
        }
        Ok(IngestReport {
            accepted,
            rejected: errors.len(),
            errors,
        })
    }

    /// Validate every dead letter of `stream` again (after its schema or its producer
    /// was fixed): the ones that now pass are appended to the log like new events, the
    /// rest stay with their current reason. The table is rewritten without the replayed
    /// records in one commit, after the log has them: a crash in between can replay a
    /// record twice (a stream with `id-field` drops the second copy), never lose one.
    pub async fn replay_dead_letters(&self, stream: &str) -> Result<ReplayReport, IngestError> {
        let schema = self
            .streams
            .get(stream)
            .ok_or_else(|| IngestError::UnknownStream(stream.to_string()))?;
        let _guard = self.dead_letters.lock(stream).await?;
        let letters = self.dead_letters.read_all(stream).await?;
        let mut by_partition: BTreeMap<u32, Vec<NewRecord>> = BTreeMap::new();
        let mut keep = Vec::new();
        let mut replayed = 0;
        for mut letter in letters {
            let outcome = serde_json::from_str::<Value>(&letter.raw)
                .map_err(|e| FieldError {
                    field: String::new(),
                    reason: format!("malformed JSON: {e}"),
                })
                .and_then(|v| schema.validate(&v).map(|_| v));
            match outcome {
                Ok(value) => {
                    let (p, record) = self.route(schema, &value);
                    by_partition.entry(p).or_default().push(record);
                    replayed += 1;
                }
                Err(e) => {
                    letter.field = (!e.field.is_empty()).then_some(e.field);
                    letter.reason = e.reason;
                    keep.push(letter);
                }
            }
        }
        if replayed > 0 {
            self.append(stream, by_partition).await?;
            self.dead_letters.rewrite(stream, &keep).await?;
            self.counters[stream]
                .accepted
                .fetch_add(replayed as u64, Ordering::Relaxed);
        }
        Ok(ReplayReport {
            replayed,
            still_invalid: keep.len(),
            reasons: keep.into_iter().map(|l| l.reason).take(20).collect(),
        })
    }

    /// The partition of a valid record and the record as the log stores it.
    fn route(&self, schema: &StreamSchema, value: &Value) -> (u32, NewRecord) {
        let rr = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let p = schema.partition_for(value, rr);
        let bytes = serde_json::to_vec(value).expect("a Value always serializes");
        (
            p,
            NewRecord {
                key: schema.key_of(value),
                payload: bytes,
            },
        )
    }

    async fn append(
        &self,
        stream: &str,
        by_partition: BTreeMap<u32, Vec<NewRecord>>,
    ) -> Result<(), IngestError> {
        let appends = by_partition
            .into_iter()
            .map(|(p, records)| self.log.append_records(stream, p, records));
        try_join_all(appends).await.map_err(|e| match e {
            CoreError::LogUnavailable(m) | CoreError::Log(m) => IngestError::LogUnavailable(m),
            other => IngestError::Core(other),
        })?;
        Ok(())
    }
}

/// What a dead-letter replay did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records that passed validation this time and are now in the log.
    pub replayed: usize,
    /// Records still refused; they stay in the table.
    pub still_invalid: usize,
    /// The current reasons of (at most 20 of) the records still refused.
    pub reasons: Vec<String>,
}
