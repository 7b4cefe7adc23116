//! Stream schemas: validation of JSON records and their conversion to Arrow.
//!
//! One validator serves every entry point (HTTP ingest, records consumed from the log,
//! later backfill), so a record means the same thing wherever it came from.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::StreamConfig;
use crate::error::{CoreError, Result};

/// Column that holds the time the log accepted an event (microseconds, UTC).
pub const INGEST_TS: &str = "_ingest_ts";
/// Master-table columns that locate an event in the log, for exactly-once audits.
pub const PARTITION: &str = "_partition";
pub const OFFSET: &str = "_offset";
/// The master table's partition column: the UTC date of the event time.
pub const EVENT_DATE: &str = "_event_date";

pub const UTC: &str = "UTC";

/// Earliest timestamp a record may carry (inclusive): 1678-01-01T00:00:00Z.
///
/// Every layer must be able to process whatever ingest accepts, and some DataFusion
/// functions a view may call (`date_bin` among them) work in nanoseconds, whose range is
/// 1677-09-21 ..= 2262-04-11. The accepted range sits inside it with about three months
/// to spare at each end, so a window start or end computed from an accepted time is
/// representable too.
pub const MIN_TIMESTAMP_US: i64 = -9_214_560_000_000_000;
/// First timestamp no longer accepted: 2262-01-01T00:00:00Z (see [`MIN_TIMESTAMP_US`]).
pub const MAX_TIMESTAMP_US: i64 = 9_214_646_400_000_000;
/// The accepted range as people read it, for error messages and docs.
pub const TIMESTAMP_RANGE: &str =
    "1678-01-01T00:00:00Z (inclusive) to 2262-01-01T00:00:00Z (exclusive)";

/// The newest time a batch of events contributes to a view's watermark: per event its
/// event time capped at its `_ingest_ts` plus `lead_us` (see
/// [`StreamSchema::watermark_time`]); without ingest times, the plain newest event time.
/// Both layers call this, so the two halves of a watermark follow one rule.
pub fn newest_watermark_time(
    event: &datafusion::arrow::array::TimestampMicrosecondArray,
    ingest: Option<&datafusion::arrow::array::TimestampMicrosecondArray>,
    lead_us: i64,
) -> Option<i64> {
    use datafusion::arrow::array::Array;
    let Some(ingest) = ingest else {
        return datafusion::arrow::compute::max(event);
    };
    (0..event.len())
        .filter(|&i| event.is_valid(i) && ingest.is_valid(i))
        .map(|i| event.value(i).min(ingest.value(i).saturating_add(lead_us)))
        .max()
}

/// Whether `us` (microseconds since the epoch) lies in the accepted range.
pub fn timestamp_in_range(us: i64) -> bool {
    (MIN_TIMESTAMP_US..MAX_TIMESTAMP_US).contains(&us)
}

pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Int64,
    Float64,
    Bool,
    Timestamp,
}

impl FieldType {
    pub fn parse(name: &str) -> Option<FieldType> {
        Some(match name {
            "string" => FieldType::String,
            "int64" => FieldType::Int64,
            "float64" => FieldType::Float64,
            "bool" => FieldType::Bool,
            "timestamp" => FieldType::Timestamp,
            _ => return None,
        })
    }

    pub fn arrow(self) -> DataType {
        match self {
            FieldType::String => DataType::Utf8,
            FieldType::Int64 => DataType::Int64,
            FieldType::Float64 => DataType::Float64,
            FieldType::Bool => DataType::Boolean,
            FieldType::Timestamp => timestamp_type(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Int64 => "int64",
            FieldType::Float64 => "float64",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FieldSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: FieldType,
    pub nullable: bool,
}

/// Why one record was refused: which field, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The offending field, or empty when the record as a whole is wrong.
    pub field: String,
    pub reason: String,
}

impl FieldError {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// A validated stream definition.
#[derive(Debug, Clone)]
pub struct StreamSchema {
    pub name: String,
    pub fields: Vec<FieldSpec>,
    pub event_time: String,
    pub key: Option<String>,
    pub partitions: u32,
    /// Duplicates of an id within a horizon count once (see [`DedupSpec`]).
    pub dedup: Option<DedupSpec>,
    /// Longest string value a record may carry, in bytes: a string becomes a group key
    /// that every answer and every live client carries, so its size is bounded here.
    pub max_string_bytes: usize,
    /// How far an event's time may lead its `_ingest_ts` *for watermark purposes*
    /// (microseconds): one far-future event must not close every window for ever.
    /// The event itself still counts in its window.
    pub max_event_lead_us: i64,
}

/// A stream's dedup rule, the same in both layers: a record counts unless an earlier
/// record of the same partition with the same (non-null) id was ingested within
/// `horizon_us` before it. It is a function of the log alone, so the speed layer (a map
/// of recent ids) and the batch layer (`lag(_ingest_ts)` over partition and id in
/// offset order) decide every record the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupSpec {
    pub field: String,
    pub horizon_us: i64,
}

/// One parsed field value, before it goes into an Arrow builder.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Null,
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Ts(i64),
}

impl StreamSchema {
    /// Check a stream's configuration; `key` is the config path used in messages.
    pub fn from_config(cfg: &StreamConfig, key: &str) -> std::result::Result<Self, String> {
        if !is_identifier(&cfg.name) {
            return Err(format!(
                "{key}.name: `{}` is not a valid stream name (letters, digits and _ only, not starting with a digit)",
                cfg.name
            ));
        }
        if cfg.partitions == 0 || cfg.partitions > 1024 {
            return Err(format!(
                "{key}.partitions: expected 1..=1024, got {}",
                cfg.partitions
            ));
        }
        let mut fields = Vec::new();
        for (i, f) in cfg.fields.iter().enumerate() {
            let fkey = format!("{key}.fields[{i}]");
            if !is_identifier(&f.name) || f.name.starts_with('_') {
                return Err(format!(
                    "{fkey}.name: `{}` is not a valid field name (letters, digits and _, not starting with _ or a digit)",
                    f.name
                ));
            }
            if fields.iter().any(|x: &FieldSpec| x.name == f.name) {
                return Err(format!("{fkey}.name: field `{}` is declared twice", f.name));
            }
            let field_type = FieldType::parse(&f.field_type).ok_or_else(|| {
                format!(
                    "{fkey}.type: unknown type `{}` (expected one of string, int64, float64, bool, timestamp)",
                    f.field_type
                )
            })?;
            fields.push(FieldSpec {
                name: f.name.clone(),
                field_type,
                nullable: f.nullable,
            });
        }
        if fields.is_empty() {
            return Err(format!("{key}.fields: a stream needs at least one field"));
        }
        match fields.iter().find(|f| f.name == cfg.event_time) {
            None => {
                return Err(format!(
                    "{key}.event-time: `{}` is not a field of stream `{}`",
                    cfg.event_time, cfg.name
                ));
            }
            Some(f) if f.field_type != FieldType::Timestamp || f.nullable => {
                return Err(format!(
                    "{key}.event-time: field `{}` must be a non-nullable timestamp",
                    cfg.event_time
                ));
            }
            Some(_) => {}
        }
        if let Some(k) = &cfg.key
            && !fields.iter().any(|f| &f.name == k)
        {
            return Err(format!(
                "{key}.key: `{k}` is not a field of stream `{}`",
                cfg.name
            ));
        }
        let dedup = match &cfg.id_field {
            None => None,
            Some(id) => {
                if !fields.iter().any(|f| &f.name == id) {
                    return Err(format!(
                        "{key}.id-field: `{id}` is not a field of stream `{}`",
                        cfg.name
                    ));
                }
                if cfg.dedup_horizon_ms == 0 {
                    return Err(format!(
                        "{key}.dedup-horizon-ms: must be positive when id-field is set"
                    ));
                }
                Some(DedupSpec {
                    field: id.clone(),
                    horizon_us: (cfg.dedup_horizon_ms as i64).saturating_mul(1000),
                })
            }
        };
        if cfg.max_string_bytes == 0 {
            return Err(format!("{key}.max-string-bytes: must be positive"));
        }
        Ok(StreamSchema {
            name: cfg.name.clone(),
            fields,
            event_time: cfg.event_time.clone(),
            key: cfg.key.clone(),
            partitions: cfg.partitions,
            dedup,
            max_string_bytes: cfg.max_string_bytes,
            max_event_lead_us: (cfg.max_event_lead_ms.min(i64::MAX as u64 / 1000) as i64) * 1000,
        })
    }

    /// The stream's own fields, as Arrow.
    pub fn user_fields(&self) -> Vec<Field> {
        self.fields
            .iter()
            .map(|f| Field::new(&f.name, f.field_type.arrow(), f.nullable))
            .collect()
    }

    /// What views see: the stream's fields plus `_ingest_ts`.
    pub fn view_schema(&self) -> SchemaRef {
        let mut fields = self.user_fields();
        fields.push(Field::new(INGEST_TS, timestamp_type(), false));
        Arc::new(Schema::new(fields))
    }

    /// The master table: the view schema plus the log position of every event and the
    /// event's UTC date (the table's partition column).
    pub fn master_schema(&self) -> SchemaRef {
        let mut fields = self.user_fields();
        fields.push(Field::new(INGEST_TS, timestamp_type(), false));
        fields.push(Field::new(PARTITION, DataType::Int32, false));
        fields.push(Field::new(OFFSET, DataType::Int64, false));
        fields.push(Field::new(EVENT_DATE, DataType::Date32, false));
        Arc::new(Schema::new(fields))
    }

    /// Validate one JSON value as a record of this stream.
    pub fn validate(&self, value: &Value) -> std::result::Result<(), FieldError> {
        self.parse(value).map(|_| ())
    }

    /// Validate one JSON value and return its event time (microseconds).
    pub fn validate_event_time(&self, value: &Value) -> std::result::Result<i64, FieldError> {
        let scalars = self.parse(value)?;
        let i = self
            .fields
            .iter()
            .position(|f| f.name == self.event_time)
            .expect("the event time is a field");
        match scalars[i] {
            Scalar::Ts(us) => Ok(us),
            _ => unreachable!("the event time is a required timestamp"),
        }
    }

    /// The record's key: its key field as bytes (text as is, other values as JSON).
    pub fn key_of(&self, value: &Value) -> Option<Vec<u8>> {
        let v = value.as_object()?.get(self.key.as_ref()?)?;
        Some(match v {
            Value::String(s) => s.as_bytes().to_vec(),
            Value::Null => return None,
            other => other.to_string().into_bytes(),
        })
    }

    /// The partition a record goes to: by key (FNV-1a) when it has one, else in turn.
    pub fn partition_for(&self, value: &Value, round_robin: u64) -> u32 {
        match self.key_of(value) {
            Some(k) => (fnv1a(&k) % self.partitions as u64) as u32,
            None => (round_robin % self.partitions as u64) as u32,
        }
    }

    pub(crate) fn parse(&self, value: &Value) -> std::result::Result<Vec<Scalar>, FieldError> {
        let obj: &Map<String, Value> = value.as_object().ok_or_else(|| {
            FieldError::new("", format!("expected a JSON object, got {}", kind(value)))
        })?;
        for k in obj.keys() {
            if !self.fields.iter().any(|f| &f.name == k) {
                return Err(FieldError::new(
                    k,
                    format!("unknown field: stream `{}` has no field `{k}`", self.name),
                ));
            }
        }
        let mut out = Vec::with_capacity(self.fields.len());
        for f in &self.fields {
            let v = obj.get(&f.name).unwrap_or(&Value::Null);
            if v.is_null() {
                if f.nullable {
                    out.push(Scalar::Null);
                    continue;
                }
                let what = if obj.contains_key(&f.name) {
                    "is null"
                } else {
                    "is missing"
                };
                return Err(FieldError::new(
                    &f.name,
                    format!("required field {what}: expected {}", f.field_type.name()),
                ));
            }
            out.push(parse_scalar(f, v, self.max_string_bytes)?);
        }
        Ok(out)
    }

    /// The time an event contributes to a watermark: its event time, but at most
    /// `max_event_lead_us` ahead of the time the log took it.
    pub fn watermark_time(&self, event_ts: i64, ingest_ts: i64) -> i64 {
        event_ts.min(ingest_ts.saturating_add(self.max_event_lead_us))
    }
}

fn parse_scalar(
    f: &FieldSpec,
    v: &Value,
    max_string_bytes: usize,
) -> std::result::Result<Scalar, FieldError> {
    let mismatch = || {
        FieldError::new(
            &f.name,
            format!("expected {}, got {}", f.field_type.name(), describe(v)),
        )
    };
    Ok(match f.field_type {
        FieldType::String => {
            let s = v.as_str().ok_or_else(mismatch)?;
            if s.len() > max_string_bytes {
                return Err(FieldError::new(
                    &f.name,
                    format!(
                        "string of {} bytes is longer than the stream's max-string-bytes ({max_string_bytes})",
                        s.len()
                    ),
                ));
            }
            Scalar::Str(s.to_string())
        }
        FieldType::Int64 => Scalar::Int(v.as_i64().ok_or_else(mismatch)?),
        FieldType::Float64 => {
            let x = v.as_f64().ok_or_else(mismatch)?;
            Scalar::Float(x)
        }
        FieldType::Bool => Scalar::Bool(v.as_bool().ok_or_else(mismatch)?),
        FieldType::Timestamp => match v {
            Value::String(s) => {
                let t = DateTime::parse_from_rfc3339(s).map_err(|e| {
                    FieldError::new(
                        &f.name,
                        format!(
                            "expected an RFC 3339 timestamp (e.g. 2026-11-21T07:00:00Z) or epoch milliseconds, got \"{}\" ({e})",
                            truncate(s)
                        ),
                    )
                })?;
                let us = t.with_timezone(&Utc).timestamp_micros();
                check_range(f, us, || format!("\"{}\"", truncate(s)))?
            }
            Value::Number(n) => {
                let ms = n.as_i64().ok_or_else(mismatch)?;
                check_range(f, ms.checked_mul(1000), || {
                    format!("epoch milliseconds {ms}")
                })?
            }
            _ => return Err(mismatch()),
        },
    })
}

fn check_range(
    f: &FieldSpec,
    us: impl Into<Option<i64>>,
    got: impl FnOnce() -> String,
) -> std::result::Result<Scalar, FieldError> {
    match us.into() {
        Some(us) if timestamp_in_range(us) => Ok(Scalar::Ts(us)),
        _ => Err(FieldError::new(
            &f.name,
            format!(
                "timestamp out of range: expected {TIMESTAMP_RANGE}, got {}",
                got()
            ),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => format!("float {n}"),
        Value::Number(n) => format!("integer {n}"),
        Value::String(s) => format!("string \"{}\"", truncate(s)),
        other => kind(other).to_string(),
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// FNV-1a: stable across processes and releases, unlike std's randomised hasher.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Where a decoded record sits in the log.
#[derive(Debug, Clone, Copy)]
pub struct LogPosition {
    pub partition: u32,
    pub offset: u64,
    pub ingest_ts: i64,
}

/// Builds Arrow batches from JSON records of one stream; invalid records are returned
/// with their reasons instead of being appended.
pub struct BatchDecoder {
    schema: StreamSchema,
    with_position: bool,
    columns: Vec<ColumnBuilder>,
    ingest_ts: TimestampMicrosecondBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    event_date: Date32Builder,
    /// Index of the event-time field among the stream's fields.
    event_index: usize,
    rows: usize,
}

enum ColumnBuilder {
    Str(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Ts(TimestampMicrosecondBuilder),
}

impl BatchDecoder {
    /// `with_position` adds `_partition` and `_offset` (the master-table layout).
    pub fn new(schema: &StreamSchema, with_position: bool) -> Self {
        let columns = schema
            .fields
            .iter()
            .map(|f| match f.field_type {
                FieldType::String => ColumnBuilder::Str(StringBuilder::new()),
                FieldType::Int64 => ColumnBuilder::Int(Int64Builder::new()),
                FieldType::Float64 => ColumnBuilder::Float(Float64Builder::new()),
                FieldType::Bool => ColumnBuilder::Bool(BooleanBuilder::new()),
                FieldType::Timestamp => {
                    ColumnBuilder::Ts(TimestampMicrosecondBuilder::new().with_timezone(UTC))
                }
            })
            .collect();
        BatchDecoder {
            schema: schema.clone(),
            with_position,
            columns,
            ingest_ts: TimestampMicrosecondBuilder::new().with_timezone(UTC),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            event_date: Date32Builder::new(),
            event_index: schema
                .fields
                .iter()
                .position(|f| f.name == schema.event_time)
                .unwrap_or(0),
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Parse and append one raw record; on error nothing is appended.
    pub fn push_bytes(
        &mut self,
        payload: &[u8],
        pos: LogPosition,
    ) -> std::result::Result<(), FieldError> {
        if let Some(scalars) = crate::fast_json::parse(&self.schema, payload) {
            self.append(scalars, pos);
            return Ok(());
        }
        let value: Value = serde_json::from_slice(payload)
            .map_err(|e| FieldError::new("", format!("malformed JSON: {e}")))?;
        self.push(&value, pos)
    }

    /// Parse one raw record and append it if `keep` says so (given the parsed, valid
    /// record); returns whether it was appended. Invalid records never reach `keep`.
    pub fn push_bytes_if(
        &mut self,
        payload: &[u8],
        pos: LogPosition,
        keep: impl FnOnce(&Value) -> bool,
    ) -> std::result::Result<bool, FieldError> {
        let value: Value = serde_json::from_slice(payload)
            .map_err(|e| FieldError::new("", format!("malformed JSON: {e}")))?;
        let scalars = self.schema.parse(&value)?;
        if !keep(&value) {
            return Ok(false);
        }
        self.append(scalars, pos);
        Ok(true)
    }

    pub fn push(&mut self, value: &Value, pos: LogPosition) -> std::result::Result<(), FieldError> {
        let scalars = self.schema.parse(value)?;
        self.append(scalars, pos);
        Ok(())
    }

    fn append(&mut self, scalars: Vec<Scalar>, pos: LogPosition) {
        // The event time is validated non-null; its UTC day partitions the master table.
        let day = match scalars.get(self.event_index) {
            Some(Scalar::Ts(us)) => us.div_euclid(86_400_000_000) as i32,
            _ => 0,
        };
        self.event_date.append_value(day);
        for (b, s) in self.columns.iter_mut().zip(scalars) {
            match (b, s) {
                (ColumnBuilder::Str(b), Scalar::Str(v)) => b.append_value(v),
                (ColumnBuilder::Str(b), Scalar::Null) => b.append_null(),
                (ColumnBuilder::Int(b), Scalar::Int(v)) => b.append_value(v),
                (ColumnBuilder::Int(b), Scalar::Null) => b.append_null(),
                (ColumnBuilder::Float(b), Scalar::Float(v)) => b.append_value(v),
                (ColumnBuilder::Float(b), Scalar::Null) => b.append_null(),
                (ColumnBuilder::Bool(b), Scalar::Bool(v)) => b.append_value(v),
                (ColumnBuilder::Bool(b), Scalar::Null) => b.append_null(),
                (ColumnBuilder::Ts(b), Scalar::Ts(v)) => b.append_value(v),
                (ColumnBuilder::Ts(b), Scalar::Null) => b.append_null(),
                _ => unreachable!("parse() returns scalars matching the schema's types"),
            }
        }
        self.ingest_ts.append_value(pos.ingest_ts);
        self.partition.append_value(pos.partition as i32);
        self.offset.append_value(pos.offset as i64);
        self.rows += 1;
    }

    /// Take the rows appended so far as one batch, leaving the decoder empty.
    pub fn flush(&mut self) -> Result<RecordBatch> {
        let mut arrays: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    ColumnBuilder::Str(b) => Arc::new(b.finish()),
                    ColumnBuilder::Int(b) => Arc::new(b.finish()),
                    ColumnBuilder::Float(b) => Arc::new(b.finish()),
                    ColumnBuilder::Bool(b) => Arc::new(b.finish()),
                    ColumnBuilder::Ts(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        arrays.push(Arc::new(self.ingest_ts.finish()));
        let partition = Arc::new(self.partition.finish());
        let offset = Arc::new(self.offset.finish());
        let event_date = Arc::new(self.event_date.finish());
        let schema = if self.with_position {
            arrays.push(partition);
            arrays.push(offset);
            arrays.push(event_date);
            self.schema.master_schema()
        } else {
            self.schema.view_schema()
        };
        self.rows = 0;
        RecordBatch::try_new(schema, arrays).map_err(CoreError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FieldConfig, StreamConfig};
    use serde_json::json;

    fn readings() -> StreamSchema {
        let field = |n: &str, t: &str| FieldConfig {
            name: n.into(),
            field_type: t.into(),
            nullable: false,
        };
        let cfg = StreamConfig {
            name: "readings".into(),
            fields: vec![
                field("device", "string"),
                field("signal", "float64"),
                field("count", "int64"),
                field("ok", "bool"),
                field("ts", "timestamp"),
            ],
            event_time: "ts".into(),
            key: Some("device".into()),
            partitions: 4,
            id_field: None,
            dedup_horizon_ms: 0,
            max_string_bytes: 16 * 1024,
            max_event_lead_ms: 300_000,
        };
        StreamSchema::from_config(&cfg, "streams[0]").unwrap()
    }

    #[test]
    fn valid_record_decodes_to_arrow() {
        let s = readings();
        let mut d = BatchDecoder::new(&s, true);
        let rec = json!({"device":"a","signal":1,"count":3,"ok":true,"ts":"2026-01-01T00:00:00Z"});
        d.push(
            &rec,
            LogPosition {
                partition: 1,
                offset: 7,
                ingest_ts: 42,
            },
        )
        .unwrap();
        let b = d.flush().unwrap();
        assert_eq!(b.num_rows(), 1);
        // Five fields, _ingest_ts, _partition, _offset, _event_date.
        assert_eq!(b.num_columns(), 9);
        assert_eq!(b.schema().field(4).data_type(), &timestamp_type());
        let day = b
            .column_by_name(EVENT_DATE)
            .unwrap()
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Date32Array>()
            .unwrap()
            .value(0);
        assert_eq!(day, 20_454, "2026-01-01 is day 20,454 of the epoch");
    }

    #[test]
    fn errors_name_field_and_expectation() {
        let s = readings();
        let base =
            json!({"device":"a","signal":1.5,"count":3,"ok":true,"ts":"2026-01-01T00:00:00Z"});
        let with = |k: &str, v: Value| {
            let mut r = base.clone();
            r[k] = v;
            s.validate(&r).unwrap_err()
        };
        let e = with("count", json!(1.5));
        assert_eq!(e.field, "count");
        assert!(e.reason.contains("expected int64, got float 1.5"), "{e:?}");
        let e = with("signal", json!("high"));
        assert!(e.reason.contains("expected float64, got string"), "{e:?}");
        let e = with("ts", json!("yesterday"));
        assert_eq!(e.field, "ts");
        assert!(e.reason.contains("RFC 3339"), "{e:?}");
        let e = with("extra", json!(1));
        assert_eq!(e.field, "extra");
        let mut missing = base.clone();
        missing.as_object_mut().unwrap().remove("device");
        let e = s.validate(&missing).unwrap_err();
        assert_eq!(e.field, "device");
        assert!(e.reason.contains("missing"), "{e:?}");
        let e = s.validate(&json!([1, 2])).unwrap_err();
        assert!(e.reason.contains("expected a JSON object"), "{e:?}");
    }

    #[test]
    fn epoch_millis_are_accepted_for_timestamps() {
        let s = readings();
        let r = json!({"device":"a","signal":1.5,"count":3,"ok":true,"ts":1_700_000_000_000i64});
        assert!(s.validate(&r).is_ok());
    }

    #[test]
    fn partitioning_by_key_is_stable() {
        let s = readings();
        let r = json!({"device":"pump-7"});
        let p = s.partition_for(&r, 0);
        assert_eq!(p, s.partition_for(&r, 99));
        assert!(p < 4);
    }
}
