//! A micro-batch of log records to Arrow, per `_ingest_ts` bucket. Partitions are
//! independent (each has its own order and its own dedup state), so they are decoded on
//! up to `threads` threads at once; JSON decoding is the speed layer's most expensive
//! stage.

use std::collections::{BTreeMap, HashMap};

use datafusion::arrow::record_batch::RecordBatch;
use tributary_core::CoreError;
use tributary_core::log::LogRecord;
use tributary_core::schema::{BatchDecoder, LogPosition, StreamSchema};

use crate::dedup::Deduplicator;

/// Below this many records a micro-batch is decoded on the calling thread.
const PARALLEL_FROM: usize = 4096;

/// One micro-batch decoded: state-ready batches per `_ingest_ts` bucket, and what was dropped.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Per bucket, one batch per partition that had records in it, in the master
    /// layout (the view schema's columns first, then `_partition`, `_offset`, ...).
    pub buckets: BTreeMap<i64, Vec<RecordBatch>>,
    /// Records that did not validate.
    pub invalid: u64,
    /// Records dropped as repeats under the stream's dedup rule.
    pub duplicates: u64,
}

/// Decode `reads` (records per partition, in log order). `dedups` holds the dedup state
/// of each partition of a stream with an id field.
pub fn decode(
    stream: &StreamSchema,
    reads: Vec<(u32, Vec<LogRecord>)>,
    dedups: &mut HashMap<u32, Deduplicator>,
    segment_width: i64,
    threads: usize,
) -> Result<Decoded, CoreError> {
    let total: usize = reads.iter().map(|(_, r)| r.len()).sum();
    let mut states: HashMap<u32, &mut Deduplicator> =
        dedups.iter_mut().map(|(p, d)| (*p, d)).collect();
    let mut jobs: Vec<(u32, Vec<LogRecord>, Option<&mut Deduplicator>)> = reads
        .into_iter()
        .map(|(p, records)| {
            let d = states.remove(&p);
            (p, records, d)
        })
        .collect();
    let threads = threads.clamp(1, jobs.len().max(1));
    let parts: Vec<Result<Part, CoreError>> = if threads == 1 || total < PARALLEL_FROM {
        jobs.into_iter()
            .map(|(p, r, d)| decode_partition(stream, p, r, d, segment_width))
            .collect()
    } else {
        let mut groups: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, job) in jobs.drain(..).enumerate() {
            groups[i % threads].push(job);
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = groups
                .into_iter()
                .map(|group| {
                    std::thread::Builder::new()
                        .name("tributary-speed-decode".into())
                        .spawn_scoped(scope, move || {
                            group
                                .into_iter()
                                .map(|(p, r, d)| decode_partition(stream, p, r, d, segment_width))
                                .collect::<Vec<_>>()
                        })
                        .expect("spawning a decode thread")
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("decode thread panicked"))
                .collect()
        })
    };
    let mut out = Decoded::default();
    for part in parts {
        let part = part?;
        out.invalid += part.invalid;
        out.duplicates += part.duplicates;
        for (bucket, batch) in part.buckets {
            out.buckets.entry(bucket).or_default().push(batch);
        }
    }
    Ok(out)
}

struct Part {
    buckets: BTreeMap<i64, RecordBatch>,
    invalid: u64,
    duplicates: u64,
}

fn decode_partition(
    stream: &StreamSchema,
    partition: u32,
    records: Vec<LogRecord>,
    mut dedup: Option<&mut Deduplicator>,
    segment_width: i64,
) -> Result<Part, CoreError> {
    let mut decoders: BTreeMap<i64, BatchDecoder> = BTreeMap::new();
    let (mut invalid, mut duplicates) = (0, 0);
    for r in records {
        let bucket = r.ingest_ts - r.ingest_ts.rem_euclid(segment_width);
        let dec = decoders
            .entry(bucket)
            // With log positions (the master layout), so a record a view cannot
            // process can be dead-lettered with its partition and offset.
            .or_insert_with(|| BatchDecoder::new(stream, true));
        let at = LogPosition {
            partition,
            offset: r.offset,
            ingest_ts: r.ingest_ts,
        };
        let pushed = match dedup.as_deref_mut() {
            Some(d) => dec.push_bytes_if(&r.payload, at, |v| d.keep(partition, r.ingest_ts, v)),
            None => dec.push_bytes(&r.payload, at).map(|_| true),
        };
        match pushed {
            Ok(true) => {}
            Ok(false) => duplicates += 1,
            // Invalid records written straight into the log are the archiver's to
            // dead-letter; views never see them.
            Err(_) => invalid += 1,
        }
    }
    let mut buckets = BTreeMap::new();
    for (bucket, mut dec) in decoders {
        if !dec.is_empty() {
            buckets.insert(bucket, dec.flush()?);
        }
    }
    Ok(Part {
        buckets,
        invalid,
        duplicates,
    })
}
