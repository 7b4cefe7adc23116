//! The hidden `_src` column: each input row is tagged with the layer that read it, a
//! hidden `bit_or(_src)` aggregate carries the tags through the merge, and a merged row
//! reads back which layers it came from.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int32Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::Result;
use crate::schema::StreamSchema;

/// Hidden column that tags each input row with the layer that read it.
pub const SOURCE_COLUMN: &str = "_src";

/// The layer that read an input row; its tag is a bit, so tags OR together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// The batch layer (stored states below the cutoff).
    Batch,
    /// The speed layer (in-memory states at or above the cutoff).
    Speed,
}

impl Layer {
    /// The layer's bit in `_src`.
    pub const fn tag(self) -> i32 {
        match self {
            Layer::Batch => 1,
            Layer::Speed => 2,
        }
    }
}

/// The batch layer's `_src` tag.
pub const SOURCE_BATCH: i32 = Layer::Batch.tag();
/// The speed layer's `_src` tag.
pub const SOURCE_SPEED: i32 = Layer::Speed.tag();

/// Which layers a merged row came from, read back from its `_src`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Only batch states went into the row.
    Batch,
    /// Only speed states went into the row.
    Speed,
    /// States of both layers went into the row (a window across the cutoff).
    Both,
}

impl Origin {
    /// The origin of a merged `_src` value; `None` for a value no merge makes.
    pub fn from_tags(tags: i64) -> Option<Origin> {
        const BATCH: i64 = SOURCE_BATCH as i64;
        const SPEED: i64 = SOURCE_SPEED as i64;
        const BOTH: i64 = BATCH | SPEED;
        match tags {
            BATCH => Some(Origin::Batch),
            SPEED => Some(Origin::Speed),
            BOTH => Some(Origin::Both),
            _ => None,
        }
    }

    /// As the API shows it (`_source`).
    pub fn name(self) -> &'static str {
        match self {
            Origin::Batch => "batch",
            Origin::Speed => "speed",
            Origin::Both => "both",
        }
    }
}

/// The stream schema the views plan against: view schema plus `_src`.
pub fn input_schema(stream: &StreamSchema) -> SchemaRef {
    let mut fields: Vec<Field> = stream
        .view_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(SOURCE_COLUMN, DataType::Int32, false));
    Arc::new(Schema::new(fields))
}

/// `schema` with its Utf8 fields as string views (Parquet's own form; see
/// [`super::CompiledView::reads_string_views`]).
pub fn with_string_views(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 => Field::new(f.name(), DataType::Utf8View, f.is_nullable()),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Append the `_src` column to a batch in view-schema layout.
pub fn tag_source(batch: &RecordBatch, tag: i32, input: &SchemaRef) -> Result<RecordBatch> {
    let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
    cols.push(Arc::new(Int32Array::from(vec![tag; batch.num_rows()])));
    Ok(RecordBatch::try_new(input.clone(), cols)?)
}
