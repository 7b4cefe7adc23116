//! Backfill: historical events from a file (JSON array, NDJSON, CSV or Parquet; a local
//! path or an object-store URL) straight into a stream's master table, validated like
//! live events; rejected rows go to the dead-letter table with their reasons.
//!
//! Backfilled rows bypass the log and the speed layer: they are history, and the speed
//! layer would only count them as late. Each row is stamped with the time of its commit
//! as `_ingest_ts` (so the next batch run whose cutoff passes that time includes them,
//! and no earlier one: the merge never counts them twice), `_partition` =
//! [`BACKFILL_PARTITION`] (-1 in the table) and `_offset` = its row number in the file.
//!
//! Exactly once: rows are committed in chunks, each commit carrying a `txn` action
//! `backfill-<stream>-<source id>` whose version is the number of chunks committed, where
//! the source id hashes the file's location, size and modification time. Running the
//! same backfill again resumes after the last committed chunk (or does nothing).

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;
use serde_json::{Map, Value};
use tributary_core::dead_letter::{DeadLetter, DeadLetterSink};
use tributary_core::schema::{BatchDecoder, FieldType, LogPosition, StreamSchema};
use tributary_core::storage::Storage;
use tributary_core::time::{now_micros, rfc3339};

use crate::archiver::Layout;
use crate::error::BatchError;

/// The `_partition` of backfilled rows (stored as -1): no log partition has it.
pub const BACKFILL_PARTITION: u32 = u32::MAX;
/// Rows per Delta commit.
const CHUNK: usize = 100_000;

/// A backfill file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A JSON array of records.
    Json,
    /// One JSON record per line (`.ndjson`, `.jsonl`).
    Ndjson,
    /// CSV with a header row; values are typed by the stream's schema.
    Csv,
    /// Parquet, its columns named like the stream's fields.
    Parquet,
}

impl Format {
    /// The format a name says (`json`, `ndjson`/`jsonl`, `csv`, `parquet`), any case.
    pub fn parse(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Some(Format::Json),
            "ndjson" | "jsonl" => Some(Format::Ndjson),
            "csv" => Some(Format::Csv),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }

    /// The format a file name's extension says.
    pub fn of_name(name: &str) -> Option<Format> {
        let ext = name.rsplit_once('.')?.1;
        Format::parse(ext)
    }
}

/// What a backfill did.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillReport {
    /// The stream loaded into.
    pub stream: String,
    /// The file or folder read.
    pub source: String,
    /// Its format.
    pub format: Format,
    /// Rows in the file.
    pub rows: u64,
    /// Rows now in the master table (this run), and rows refused into dead letters.
    pub accepted: u64,
    /// Rows refused into dead letters.
    pub rejected: u64,
    /// Chunks committed by an earlier run of the same backfill, skipped.
    pub chunks_skipped: u64,
    /// Chunks committed by this run.
    pub chunks_committed: u64,
    /// `_ingest_ts` of the first chunk committed by this run.
    pub stamped: Option<String>,
    /// The master table's version after the last commit.
    pub table_version: Option<i64>,
}

/// One row of the file: a JSON object to validate, or why it is not one (with its text).
type Row = Result<Value, (Option<String>, String, String)>;

/// Read `source` and load it into `stream`'s master table. `progress(done, total)`
/// counts rows.
pub async fn run(
    storage: &Storage,
    stream: &StreamSchema,
    source: &str,
    format: Option<Format>,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<BackfillReport, BatchError> {
    let err = |m: String| BatchError::Backfill {
        from: source.to_string(),
        message: m,
    };
    let format = match format {
        Some(f) => f,
        None => Format::of_name(source).ok_or_else(|| {
            err(
                "cannot tell the format from the name; pass --format json|ndjson|csv|parquet"
                    .into(),
            )
        })?,
    };
    let (bytes, identity) = fetch(source).await.map_err(err)?;
    let rows = parse(format, &bytes, stream).map_err(err)?;
    let total = rows.len() as u64;
    progress(0, total);

    let what = || format!("master table of `{}`", stream.name);
    let mut table = tributary_core::delta::open(storage.master_table(&stream.name))
        .await
        .map_err(|e| BatchError::delta(what(), e))?;
    let mut layout = Layout::of(&table, stream)?;
    let app_id = format!("backfill-{}-{identity:016x}", stream.name);
    let done_chunks = committed_chunks(&table, &app_id, &stream.name).await?;
    let sink = DeadLetterSink::new(storage.clone(), [stream.name.clone()]);
    let mut report = BackfillReport {
        stream: stream.name.clone(),
        source: source.to_string(),
        format,
        rows: total,
        accepted: 0,
        rejected: 0,
        chunks_skipped: done_chunks as u64,
        chunks_committed: 0,
        stamped: None,
        table_version: table.version().map(|v| v as i64),
    };
    for (i, chunk) in rows.chunks(CHUNK).enumerate() {
        let first_row = i * CHUNK;
        if i < done_chunks {
            progress((first_row + chunk.len()) as u64, total);
            continue;
        }
        let stamp = now_micros();
        report.stamped.get_or_insert_with(|| rfc3339(stamp));
        let (mut decoder, letters) = decode_chunk(stream, chunk, first_row, stamp);
        report.rejected += letters.len() as u64;
        // Dead letters first, as the archiver does: a crash before the data commit
        // repeats a dead letter, never an event.
        sink.write(&stream.name, letters)
            .await
            .map_err(BatchError::DeadLetter)?;
        let batch = decoder
            .flush()
            .map_err(|e| BatchError::Log(stream.name.clone(), e))?;
        report.accepted += batch.num_rows() as u64;
        let props = CommitProperties::default()
            .with_application_transaction(Transaction::new(&app_id, i as i64 + 1));
        let batch = layout.prepare(batch)?;
        let write = layout.apply(
            table
                .write(vec![batch])
                .with_save_mode(SaveMode::Append)
                .with_commit_properties(props),
        );
        table = write
            .await
            .map_err(|e| BatchError::delta(format!("backfilling `{}`", stream.name), e))?;
        layout.merge_schema = false;
        report.chunks_committed += 1;
        report.table_version = table.version().map(|v| v as i64);
        progress((first_row + chunk.len()) as u64, total);
    }
    Ok(report)
}

/// Chunks of this file a run before committed (the `txn` version of its app id).
async fn committed_chunks(
    table: &deltalake::DeltaTable,
    app_id: &str,
    stream: &str,
) -> Result<usize, BatchError> {
    if table.version().is_none() {
        return Ok(0);
    }
    let what = || format!("master table of `{stream}`");
    let version = table
        .snapshot()
        .map_err(|e| BatchError::delta(what(), e))?
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
        .map_err(|e| BatchError::delta(what(), e))?;
    Ok(version.unwrap_or(0).max(0) as usize)
}

/// One chunk's rows decoded at ingest time `stamp`; the refused ones as dead letters.
fn decode_chunk(
    stream: &StreamSchema,
    chunk: &[Row],
    first_row: usize,
    stamp: i64,
) -> (BatchDecoder, Vec<DeadLetter>) {
    let mut decoder = BatchDecoder::new(stream, true);
    let mut letters = Vec::new();
    for (j, row) in chunk.iter().enumerate() {
        let index = (first_row + j) as u64;
        let refused = match row {
            Ok(value) => {
                let pos = LogPosition {
                    partition: BACKFILL_PARTITION,
                    offset: index,
                    ingest_ts: stamp,
                };
                match decoder.push(value, pos) {
                    Ok(()) => None,
                    Err(e) => Some((
                        (!e.field.is_empty()).then_some(e.field),
                        e.reason,
                        value.to_string(),
                    )),
                }
            }
            Err((field, reason, raw)) => Some((field.clone(), reason.clone(), raw.clone())),
        };
        if let Some((field, reason, raw)) = refused {
            letters.push(DeadLetter {
                source: "backfill".into(),
                index: Some(index as i64),
                partition: None,
                field,
                reason,
                raw,
            });
        }
    }
    (decoder, letters)
}

/// The bytes of `source` and an id for it (location, size, modification time).
async fn fetch(source: &str) -> Result<(bytes::Bytes, u64), String> {
    let (store, path): (Arc<dyn ObjectStore>, StorePath) = match url::Url::parse(source) {
        // Object stores with the configured credentials and options.
        Ok(url) if tributary_core::cloud::is_cloud_url(url.as_str()) => {
            tributary_core::cloud::store_for(&url).map_err(|e| e.to_string())?
        }
        Ok(url) if url.scheme().len() > 1 => {
            let (store, path) =
                object_store::parse_url(&url).map_err(|e| format!("cannot open `{url}`: {e}"))?;
            (Arc::from(store), path)
        }
        // A plain path (a one-letter "scheme" is a Windows drive).
        _ => {
            let abs = std::fs::canonicalize(source).map_err(|e| format!("{e}"))?;
            let path = StorePath::from_filesystem_path(&abs).map_err(|e| format!("{e}"))?;
            (Arc::new(object_store::local::LocalFileSystem::new()), path)
        }
    };
    let got = store
        .get(&path)
        .await
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = got.meta.clone();
    let bytes = got.bytes().await.map_err(|e| format!("cannot read: {e}"))?;
    let identity = fnv(&format!(
        "{}\u{0}{}\u{0}{}",
        meta.location,
        meta.size,
        meta.last_modified.timestamp_micros()
    ));
    Ok((bytes, identity))
}

fn fnv(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn parse(format: Format, bytes: &[u8], stream: &StreamSchema) -> Result<Vec<Row>, String> {
    match format {
        Format::Json => match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Array(items)) => Ok(items.into_iter().map(Ok).collect()),
            Ok(v @ Value::Object(_)) => Ok(vec![Ok(v)]),
            Ok(_) => Err("a JSON file must hold an array of objects or one object".into()),
            Err(e) => Err(format!(
                "not valid JSON ({e}); for one record per line use --format ndjson"
            )),
        },
        Format::Ndjson => {
            let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
            Ok(text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    serde_json::from_str::<Value>(l)
                        .map_err(|e| (None, format!("malformed JSON: {e}"), l.to_string()))
                })
                .collect())
        }
        Format::Csv => parse_csv(bytes, stream),
        Format::Parquet => parse_parquet(bytes),
    }
}

/// CSV with a header row: each cell becomes the JSON value its field's type asks for
/// (an empty cell is null), so validation then judges it as it judges live events.
fn parse_csv(bytes: &[u8], stream: &StreamSchema) -> Result<Vec<Row>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(bytes);
    let headers = reader
        .headers()
        .map_err(|e| format!("CSV header: {e}"))?
        .clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                rows.push(Err((None, format!("CSV: {e}"), String::new())));
                continue;
            }
        };
        let raw = record.iter().collect::<Vec<_>>().join(",");
        let mut obj = Map::new();
        let mut bad = None;
        for (name, cell) in headers.iter().zip(record.iter()) {
            let ty = stream
                .fields
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.field_type);
            match csv_value(cell, ty) {
                Ok(v) => {
                    obj.insert(name.to_string(), v);
                }
                Err(expected) => {
                    bad = Some((
                        Some(name.to_string()),
                        format!("expected {expected}, got `{cell}`"),
                        raw.clone(),
                    ));
                    break;
                }
            }
        }
        rows.push(match bad {
            Some(b) => Err(b),
            None => Ok(Value::Object(obj)),
        });
    }
    Ok(rows)
}

fn csv_value(cell: &str, ty: Option<FieldType>) -> Result<Value, &'static str> {
    if cell.is_empty() {
        return Ok(Value::Null);
    }
    match ty {
        Some(FieldType::Int64) => cell.parse::<i64>().map(Value::from).map_err(|_| "int64"),
        Some(FieldType::Float64) => cell
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or("float64"),
        Some(FieldType::Bool) => match cell {
            "true" | "TRUE" | "True" => Ok(Value::Bool(true)),
            "false" | "FALSE" | "False" => Ok(Value::Bool(false)),
            _ => Err("bool (true or false)"),
        },
        // Epoch milliseconds or RFC 3339, as for live events.
        Some(FieldType::Timestamp) => Ok(match cell.parse::<i64>() {
            Ok(ms) => Value::from(ms),
            Err(_) => Value::String(cell.to_string()),
        }),
        // Strings, and columns the stream does not have (validation names them).
        Some(FieldType::String) | None => Ok(Value::String(cell.to_string())),
    }
}

/// Parquet through Arrow's JSON writer, so every row meets the same validation. Naive
/// timestamps are read as UTC.
fn parse_parquet(bytes: &[u8]) -> Result<Vec<Row>, String> {
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(bytes))
        .map_err(|e| format!("not a Parquet file: {e}"))?
        .build()
        .map_err(|e| format!("Parquet: {e}"))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| format!("Parquet: {e}"))?;
        let batch = utc_timestamps(batch).map_err(|e| format!("Parquet: {e}"))?;
        let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
        writer.write(&batch).map_err(|e| format!("Parquet: {e}"))?;
        writer.finish().map_err(|e| format!("Parquet: {e}"))?;
        let out = writer.into_inner();
        if out.is_empty() {
            continue;
        }
        let items: Vec<Value> =
            serde_json::from_slice(&out).map_err(|e| format!("Parquet: {e}"))?;
        rows.extend(items.into_iter().map(Ok));
    }
    Ok(rows)
}

fn utc_timestamps(batch: RecordBatch) -> datafusion::arrow::error::Result<RecordBatch> {
    let schema = batch.schema();
    if !schema
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Timestamp(_, _)))
    {
        return Ok(batch);
    }
    let to = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Timestamp(_, _) => cast(c, &to),
            _ => Ok(c.clone()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| f.as_ref().clone().with_data_type(c.data_type().clone()))
        .collect();
    RecordBatch::try_new(
        Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
        columns,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_come_from_names_or_flags() {
        assert_eq!(
            Format::of_name("s3://b/x/2026.ndjson"),
            Some(Format::Ndjson)
        );
        assert_eq!(Format::of_name("old.PARQUET"), Some(Format::Parquet));
        assert_eq!(Format::of_name("data"), None);
        assert_eq!(Format::parse("jsonl"), Some(Format::Ndjson));
    }

    #[test]
    fn csv_cells_become_typed_values_or_say_what_was_expected() {
        assert_eq!(csv_value("", Some(FieldType::Int64)), Ok(Value::Null));
        assert_eq!(csv_value("42", Some(FieldType::Int64)), Ok(Value::from(42)));
        assert_eq!(csv_value("4.2", Some(FieldType::Int64)), Err("int64"));
        assert_eq!(csv_value("x", Some(FieldType::Float64)), Err("float64"));
        assert_eq!(
            csv_value("true", Some(FieldType::Bool)),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            csv_value("2026-01-01T00:00:00Z", Some(FieldType::Timestamp)),
            Ok(Value::String("2026-01-01T00:00:00Z".into()))
        );
        assert_eq!(
            csv_value("1700000000000", Some(FieldType::Timestamp)),
            Ok(Value::from(1_700_000_000_000_i64))
        );
    }
}
