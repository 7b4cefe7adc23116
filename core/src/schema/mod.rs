//! Stream schemas: validation of JSON records and their conversion to Arrow.
//!
//! One validator serves every entry point (HTTP ingest, records consumed from the log,
//! later backfill), so a record means the same thing wherever it came from.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::StreamConfig;

mod decoder;
mod fast_json;
mod record;
pub use decoder::{BatchDecoder, LogPosition};
pub use record::ValidRecord;

/// Column that holds the time the log accepted an event (microseconds, UTC).
pub const INGEST_TS: &str = "_ingest_ts";
/// Master-table columns that locate an event in the log, for exactly-once audits.
pub const PARTITION: &str = "_partition";
/// The record's offset in its log partition.
pub const OFFSET: &str = "_offset";
/// The master table's partition column: the UTC date of the event time.
pub const EVENT_DATE: &str = "_event_date";

/// The time zone of every timestamp column.
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

/// The Arrow type of every timestamp: microseconds, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

/// A field's type as a stream declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// UTF-8 text (`string`).
    String,
    /// A 64-bit integer (`int64`).
    Int64,
    /// A 64-bit float (`float64`); integers in JSON are accepted.
    Float64,
    /// `true` or `false` (`bool`).
    Bool,
    /// An RFC 3339 string or epoch milliseconds (`timestamp`).
    Timestamp,
}

impl FieldType {
    /// The type a configuration names (`string`, `int64`, `float64`, `bool`, `timestamp`).
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

    /// The Arrow type this field is stored as.
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

/// One field of a validated stream.
#[derive(Debug, Clone, Serialize)]
pub struct FieldSpec {
    /// The field's name in the JSON record.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Whether it may be missing or null.
    pub nullable: bool,
}

/// Why one record was refused: which field, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The offending field, or empty when the record as a whole is wrong.
    pub field: String,
    /// What was expected.
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
    /// The stream's name.
    pub name: String,
    /// Its fields, in order.
    pub fields: Vec<FieldSpec>,
    /// The field that holds the event time.
    pub event_time: String,
    /// The field whose value is the record key (same key, same partition).
    pub key: Option<String>,
    /// Log partitions.
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
    /// The field that identifies an event.
    pub field: String,
    /// How long an id is remembered, in ingest time (microseconds).
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
        if !is_identifier(&cfg.name) || cfg.name.len() > crate::pipeline::MAX_NAME_LEN {
            return Err(format!(
                "{key}.name: `{}` is not a valid stream name (letters, digits and _ only, not starting with a digit, at most 128)",
                cfg.name
            ));
        }
        if cfg.partitions == 0 || cfg.partitions > 1024 {
            return Err(format!(
                "{key}.partitions: expected 1..=1024, got {}",
                cfg.partitions
            ));
        }
        let fields = field_specs(cfg, key)?;
        if fields.is_empty() {
            return Err(format!("{key}.fields: a stream needs at least one field"));
        }
        if cfg.event_time.is_empty() {
            return Err(format!(
                "{key}.event-time: required (the field holding each event's event time)"
            ));
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

/// A stream's declared fields, checked; `key` is the config path used in messages.
fn field_specs(cfg: &StreamConfig, key: &str) -> std::result::Result<Vec<FieldSpec>, String> {
    let mut fields = Vec::new();
    for (i, f) in cfg.fields.iter().enumerate() {
        let fkey = format!("{key}.fields[{i}]");
        // A stream fed by a view's sink carries the emitted rows' own columns.
        let emitted = cfg.from_view.is_some()
            && crate::config::EMITTED_FIELDS
                .iter()
                .any(|(n, _)| *n == f.name);
        if !is_identifier(&f.name) || (f.name.starts_with('_') && !emitted) {
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
    Ok(fields)
}

#[cfg(test)]
mod tests;
