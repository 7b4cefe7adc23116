//! Arrow batches from a stream's JSON records: the fast byte-level path first, the
//! general validator for whatever it declines.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::Value;

use super::fast_json::{self, Scratch, Slot};
use super::{FieldError, FieldType, Scalar, StreamSchema, UTC};
use crate::error::{CoreError, Result};

/// Where a decoded record sits in the log.
#[derive(Debug, Clone, Copy)]
pub struct LogPosition {
    /// The log partition.
    pub partition: u32,
    /// The offset in that partition.
    pub offset: u64,
    /// When the log took the record (microseconds since the epoch).
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
    /// The fast path's slots and string text, reused from record to record so that a
    /// valid record is decoded without an allocation of its own.
    scratch: Scratch,
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
            scratch: Scratch::default(),
        }
    }

    /// Records decoded so far.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no record has been decoded yet.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Parse and append one raw record; on error nothing is appended.
    pub fn push_bytes(
        &mut self,
        payload: &[u8],
        pos: LogPosition,
    ) -> std::result::Result<(), FieldError> {
        if fast_json::parse_into(&self.schema, payload, &mut self.scratch) {
            self.append_scratch(pos);
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

    /// Decode one parsed record; a record that does not validate is refused with the field at fault.
    pub fn push(&mut self, value: &Value, pos: LogPosition) -> std::result::Result<(), FieldError> {
        let scalars = self.schema.parse(value)?;
        self.append(scalars, pos);
        Ok(())
    }

    /// Append the record the fast path left in the scratch.
    fn append_scratch(&mut self, pos: LogPosition) {
        let scratch = &self.scratch;
        let day = match scratch.slots.get(self.event_index) {
            Some(Slot::Ts(us)) => us.div_euclid(86_400_000_000) as i32,
            _ => 0,
        };
        self.event_date.append_value(day);
        for (b, s) in self.columns.iter_mut().zip(&scratch.slots) {
            match (b, *s) {
                (ColumnBuilder::Str(b), Slot::Str(start, end)) => {
                    b.append_value(scratch.str(start, end))
                }
                (ColumnBuilder::Int(b), Slot::Int(v)) => b.append_value(v),
                (ColumnBuilder::Float(b), Slot::Float(v)) => b.append_value(v),
                (ColumnBuilder::Bool(b), Slot::Bool(v)) => b.append_value(v),
                (ColumnBuilder::Ts(b), Slot::Ts(v)) => b.append_value(v),
                (ColumnBuilder::Str(b), _) => b.append_null(),
                (ColumnBuilder::Int(b), _) => b.append_null(),
                (ColumnBuilder::Float(b), _) => b.append_null(),
                (ColumnBuilder::Bool(b), _) => b.append_null(),
                (ColumnBuilder::Ts(b), _) => b.append_null(),
            }
        }
        self.append_position(pos);
    }

    fn append_position(&mut self, pos: LogPosition) {
        self.ingest_ts.append_value(pos.ingest_ts);
        self.partition.append_value(pos.partition as i32);
        self.offset.append_value(pos.offset as i64);
        self.rows += 1;
    }

    /// Append a record the validator read: through the scratch, so both paths fill
    /// the columns the same way.
    fn append(&mut self, scalars: Vec<Scalar>, pos: LogPosition) {
        self.scratch.set(scalars);
        self.append_scratch(pos);
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
