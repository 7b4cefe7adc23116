//! The ingest service: validate records against their stream, append the valid ones to
//! the log, keep the rejected ones as dead letters, and say exactly what happened.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::join_all;
use serde_json::Value;
use tributary_core::CoreError;
use tributary_core::ingest_handle::{ReplayReport, StreamCounters};
use tributary_core::log::{EventLog, NewRecord};
use tributary_core::schema::{FieldError, StreamSchema};

use crate::dead_letter::{DeadLetter, DeadLetterSink};
use crate::error::IngestError;
use crate::idempotency::{Claim, Idempotency, IdempotencyKey};
pub use crate::report::{IngestReport, RecordError};

/// A record as it arrived: parsed, its JSON text, or the text that did not parse.
pub enum RawRecord<'a> {
    /// A JSON value.
    Parsed(Value),
    /// The JSON text of one record, checked as JSON, as it arrived: validated from these
    /// bytes, and stored as them if valid (no tree built, nothing serialised again).
    Text(&'a [u8]),
    /// The text of one element of a JSON body (UTF-8 checked with the whole body), not
    /// yet parsed: its validation parses it, and if it is not JSON, neither is the
    /// body, which is refused as a whole.
    Element(&'a str),
    /// A line or element that is not JSON: its text and the parser's error.
    Malformed {
        /// The text as it arrived.
        text: String,
        /// What the JSON parser said.
        error: String,
    },
}

impl RawRecord<'_> {
    /// The record as JSON text: what the log stores of a valid one, what a dead letter
    /// keeps of the rest.
    fn into_text(self) -> Vec<u8> {
        match self {
            RawRecord::Parsed(v) => serde_json::to_vec(&v).expect("a Value always serializes"),
            RawRecord::Text(bytes) => bytes.to_vec(),
            RawRecord::Element(text) => text.as_bytes().to_vec(),
            RawRecord::Malformed { text, .. } => text.into_bytes(),
        }
    }
}

/// A request's records, validated.
#[derive(Default)]
struct Sorted {
    /// Valid records by partition, as the log stores them.
    by_partition: BTreeMap<u32, Vec<NewRecord>>,
    /// Each refused record's index and reason, for the answer.
    errors: Vec<RecordError>,
    /// The refused records, for the dead-letter table.
    letters: Vec<DeadLetter>,
    /// How many are valid.
    accepted: usize,
    /// The UTC event dates (days since the epoch) of the valid ones.
    dates: BTreeSet<i64>,
}

/// What one request may carry (from `[http]`).
#[derive(Debug, Clone)]
pub struct IngestLimits {
    /// Records per request.
    pub max_records: usize,
    /// Distinct UTC event dates per request (each is a master-table partition).
    pub max_event_dates: usize,
    /// How long an `Idempotency-Key`'s answer is kept.
    pub idempotency_window: std::time::Duration,
    /// How many keys' answers are kept at most.
    pub idempotency_max_keys: usize,
}

impl IngestLimits {
    /// The limits `[http]` sets.
    pub fn from_config(http: &tributary_core::config::HttpConfig) -> Self {
        IngestLimits {
            max_records: http.max_records_per_request,
            max_event_dates: http.max_event_dates_per_request,
            idempotency_window: std::time::Duration::from_millis(http.idempotency_window_ms),
            idempotency_max_keys: http.idempotency_max_keys,
        }
    }
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self::from_config(&Default::default())
    }
}

/// The ingest service: validates records, appends them to the log, dead-letters the rest.
pub struct Ingest {
    streams: HashMap<String, StreamSchema>,
    log: Arc<dyn EventLog>,
    dead_letters: DeadLetterSink,
    limits: IngestLimits,
    round_robin: AtomicU64,
    counters: HashMap<String, StreamCounters>,
    /// Requests answered per `Idempotency-Key`, so a retry adds nothing.
    idempotency: Idempotency,
}

impl Ingest {
    /// Ingest for `streams` into `log`, refused records into `dead_letters`.
    pub fn new(
        streams: Vec<StreamSchema>,
        log: Arc<dyn EventLog>,
        dead_letters: DeadLetterSink,
        limits: IngestLimits,
    ) -> Self {
        let counters = streams
            .iter()
            .map(|s| (s.name.clone(), StreamCounters::default()))
            .collect();
        Ingest {
            streams: streams.into_iter().map(|s| (s.name.clone(), s)).collect(),
            log,
            dead_letters,
            idempotency: Idempotency::new(limits.idempotency_window, limits.idempotency_max_keys),
            limits,
            round_robin: AtomicU64::new(0),
            counters,
        }
    }

    /// The most records one request may carry.
    pub fn max_records(&self) -> usize {
        self.limits.max_records
    }

    /// Whether `stream` is configured.
    pub fn has_stream(&self, stream: &str) -> bool {
        self.streams.contains_key(stream)
    }

    /// Validate and append `records`; returns once every accepted record is durable.
    pub async fn ingest(
        &self,
        stream: &str,
        records: Vec<RawRecord<'_>>,
    ) -> Result<IngestReport, IngestError> {
        self.ingest_once(stream, records, None).await
    }

    /// [`Ingest::ingest`], at most once per idempotency key: a retry of a request that
    /// succeeded answers what it answered and appends nothing; a retry of one that
    /// failed after some partitions committed appends only the other partitions (a
    /// key's records route to the same partitions every time).
    pub async fn ingest_once(
        &self,
        stream: &str,
        records: Vec<RawRecord<'_>>,
        key: Option<IdempotencyKey>,
    ) -> Result<IngestReport, IngestError> {
        let schema = self
            .streams
            .get(stream)
            .ok_or_else(|| IngestError::UnknownStream(stream.to_string()))?;
        if records.len() > self.limits.max_records {
            return Err(IngestError::TooManyRecords {
                count: records.len().to_string(),
                limit: self.limits.max_records,
            });
        }
        let (done, letters_stored) = match &key {
            None => (BTreeSet::new(), false),
            Some(k) => match self.idempotency.claim(stream, k)? {
                Claim::Answered(report) => return Ok(report),
                Claim::Resume {
                    committed,
                    letters_stored,
                } => (committed, letters_stored),
            },
        };
        let outcome = self
            .validate_and_append(schema, records, key.as_ref(), &done, letters_stored)
            .await;
        if let Some(k) = &key {
            self.idempotency.settle(stream, k, &outcome);
        }
        outcome.result
    }

    /// Validate every record: the valid ones by partition, as the log stores them (the
    /// JSON text as it arrived, parsed once), the rest as errors and dead letters. An
    /// element of a JSON body that is not JSON refuses the whole body.
    fn sort(
        &self,
        schema: &StreamSchema,
        records: Vec<RawRecord<'_>>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Sorted, IngestError> {
        let mut sorted = Sorted::default();
        for (index, record) in records.into_iter().enumerate() {
            let outcome = match &record {
                RawRecord::Parsed(v) => schema.validate_record(v),
                RawRecord::Text(bytes) => schema.validate_bytes(bytes),
                RawRecord::Element(text) => match schema.validate_str(text) {
                    Err(e) => {
                        // Only a refused element is parsed again, to tell bad JSON apart.
                        serde_json::from_str::<serde::de::IgnoredAny>(text)
                            .map_err(|j| IngestError::NotJson(format!("record {index}: {j}")))?;
                        Err(e)
                    }
                    valid => valid,
                },
                RawRecord::Malformed { error, .. } => Err(FieldError {
                    field: String::new(),
                    reason: format!("malformed JSON: {error}"),
                }),
            };
            match outcome {
                Ok(valid) => {
                    sorted
                        .dates
                        .insert(valid.event_ts.div_euclid(86_400_000_000));
                    let p = self.partition(schema, valid.key.as_deref(), key, index);
                    sorted.by_partition.entry(p).or_default().push(NewRecord {
                        key: valid.key,
                        payload: record.into_text(),
                    });
                    sorted.accepted += 1;
                }
                Err(e) => {
                    let field = (!e.field.is_empty()).then(|| e.field.clone());
                    sorted.letters.push(DeadLetter {
                        source: "http".into(),
                        index: Some(index as i64),
                        partition: None,
                        field: field.clone(),
                        reason: e.reason.clone(),
                        raw: String::from_utf8_lossy(&record.into_text()).into_owned(),
                    });
                    sorted.errors.push(RecordError {
                        index,
                        field,
                        reason: e.reason,
                    });
                }
            }
        }
        Ok(sorted)
    }

    async fn validate_and_append(
        &self,
        schema: &StreamSchema,
        records: Vec<RawRecord<'_>>,
        key: Option<&IdempotencyKey>,
        done: &BTreeSet<u32>,
        letters_done: bool,
    ) -> crate::idempotency::Outcome {
        use crate::idempotency::Outcome;
        let stream = schema.name.as_str();
        let Sorted {
            mut by_partition,
            errors,
            letters,
            accepted,
            dates,
        } = match self.sort(schema, records, key) {
            Ok(sorted) => sorted,
            Err(e) => return Outcome::refused(e),
        };
        if dates.len() > self.limits.max_event_dates {
            return Outcome::refused(IngestError::TooManyEventDates {
                count: dates.len(),
                limit: self.limits.max_event_dates,
            });
        }
        by_partition.retain(|p, _| !done.contains(p));
        let letters = if letters_done { Vec::new() } else { letters };
        let rejected = errors.len();
        // The log append and the dead-letter commit do not depend on each other.
        let (appended, stored) = tokio::join!(
            self.append(stream, by_partition),
            self.dead_letters.write(stream, letters)
        );
        let (committed, failed) = appended;
        let counters = &self.counters[stream];
        let dead_letter_error = stored.err().map(|e| {
            tracing::error!(stream, error = %e, "could not store dead letters");
            counters
                .dead_letter_failures
                .fetch_add(rejected as u64, Ordering::Relaxed);
            e.to_string()
        });
        let letters_stored = dead_letter_error.is_none();
        if let Some(e) = failed {
            return Outcome {
                committed,
                letters_stored,
                result: Err(e),
            };
        }
        counters
            .accepted
            .fetch_add(accepted as u64, Ordering::Relaxed);
        counters
            .rejected
            .fetch_add(rejected as u64, Ordering::Relaxed);
        Outcome {
            committed,
            letters_stored,
            result: Ok(IngestReport {
                accepted,
                rejected,
                errors,
                dead_letters_stored: letters_stored,
                dead_letter_error,
            }),
        }
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
        let mut table = self.dead_letters.lock(stream).await?;
        // Letters still in the spool are replayed too.
        self.dead_letters.flush_locked(stream, &mut table).await?;
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
                .and_then(|v| schema.validate_record(&v).map(|valid| (v, valid)));
            match outcome {
                Ok((value, valid)) => {
                    let p = self.partition(schema, valid.key.as_deref(), None, 0);
                    by_partition.entry(p).or_default().push(NewRecord {
                        key: valid.key,
                        payload: serde_json::to_vec(&value).expect("a Value always serializes"),
                    });
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
            if let (_, Some(e)) = self.append(stream, by_partition).await {
                return Err(e);
            }
            self.dead_letters.rewrite(stream, &keep, &mut table).await?;
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

    /// The partition of a valid record with `record_key`. Records without a key go
    /// round robin, except under an idempotency key: then the turn comes from the key
    /// and the record's index, so a retry routes them alike.
    fn partition(
        &self,
        schema: &StreamSchema,
        record_key: Option<&[u8]>,
        key: Option<&IdempotencyKey>,
        index: usize,
    ) -> u32 {
        let rr = match key {
            Some(k) => k.turn().wrapping_add(index as u64),
            None => self.round_robin.fetch_add(1, Ordering::Relaxed),
        };
        schema.partition_of(record_key, rr)
    }

    /// Append each partition's records; returns the partitions that committed and the
    /// first failure, if any (the others may have committed meanwhile).
    async fn append(
        &self,
        stream: &str,
        by_partition: BTreeMap<u32, Vec<NewRecord>>,
    ) -> (BTreeSet<u32>, Option<IngestError>) {
        let appends = by_partition.into_iter().map(|(p, records)| async move {
            (p, self.log.append_records(stream, p, records).await)
        });
        let mut committed = BTreeSet::new();
        let mut failed = None;
        for (p, result) in join_all(appends).await {
            match result {
                Ok(_) => {
                    committed.insert(p);
                }
                Err(e) => {
                    // Only a log that cannot take writes now is worth a retry (503); any
                    // other log error is a fault here (500), and says so.
                    failed.get_or_insert(match e {
                        CoreError::LogUnavailable(m) => IngestError::LogUnavailable(m),
                        other => IngestError::Core(other),
                    });
                }
            }
        }
        (committed, failed)
    }
}

#[async_trait::async_trait]
impl tributary_core::ingest_handle::IngestHandle for Ingest {
    fn counters(&self, stream: &str) -> Option<tributary_core::ingest_handle::CounterValues> {
        self.counters.get(stream).map(StreamCounters::values)
    }

    async fn replay_dead_letters(
        &self,
        stream: &str,
    ) -> Result<ReplayReport, tributary_core::ingest_handle::BoxError> {
        Ingest::replay_dead_letters(self, stream)
            .await
            .map_err(Into::into)
    }
}
