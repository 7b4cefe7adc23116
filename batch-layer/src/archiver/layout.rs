//! How records are laid out in a master table, and which schema changes it takes
//! without a rewrite.

use deltalake::DeltaTable;
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::Schema;
use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
use deltalake::operations::write::{SchemaMode, WriteBuilder};
use tributary_core::schema::{EVENT_DATE, StreamSchema};

use crate::error::BatchError;

/// Whether the master table can take the stream's records as they are now: `Ok(false)`
/// when the schemas match, `Ok(true)` when the stream adds nullable fields (the next
/// commit merges them in), and the reason when the change needs a rewrite.
pub fn evolution(table: &Schema, stream: &Schema, name: &str) -> Result<bool, BatchError> {
    let refuse = |field: &str, reason: String| BatchError::Schema {
        stream: name.to_string(),
        field: field.to_string(),
        reason,
    };
    for t in table.fields() {
        let Ok(s) = stream.field_with_name(t.name()) else {
            return Err(refuse(
                t.name(),
                "is in the master table but no longer in the stream's schema; removing a field \
                 needs a rewrite of the table (keep it, nullable, instead)"
                    .into(),
            ));
        };
        if s.data_type() != t.data_type() {
            return Err(refuse(
                t.name(),
                format!(
                    "is {} in the master table but {} in the stream's schema; changing a type \
                     needs a rewrite of the table",
                    t.data_type(),
                    s.data_type()
                ),
            ));
        }
        if s.is_nullable() != t.is_nullable() {
            let (was, now) = if t.is_nullable() {
                ("nullable", "required")
            } else {
                ("required", "nullable")
            };
            return Err(refuse(
                t.name(),
                format!(
                    "is {was} in the master table but {now} in the stream's schema; only new \
                     nullable fields can be added without a rewrite"
                ),
            ));
        }
    }
    let mut added = false;
    for s in stream.fields() {
        if table.field_with_name(s.name()).is_err() {
            if !s.is_nullable() {
                return Err(refuse(
                    s.name(),
                    "is new and required, but the events archived before it have no value for \
                     it; add it as nullable"
                        .into(),
                ));
            }
            added = true;
        }
    }
    Ok(added)
}

/// How records are written to a master table: new tables are partitioned by the event's
/// UTC date (`_event_date`); a table created before that column existed keeps its layout
/// (partitioning an existing table would need a rewrite), and the column is left out of
/// what is written to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The stream gained nullable fields the table lacks: merge them in.
    pub merge_schema: bool,
    /// The table has (or will be created with) the `_event_date` partition column.
    pub dated: bool,
}

impl Layout {
    /// The layout writes of `stream` into `table` need (nothing to merge for a new table).
    pub fn of(table: &DeltaTable, stream: &StreamSchema) -> Result<Layout, BatchError> {
        let Some(current) = table_schema(table, &stream.name)? else {
            return Ok(Layout {
                merge_schema: false,
                dated: true,
            });
        };
        let dated = current.field_with_name(EVENT_DATE).is_ok();
        let wanted = stream.master_schema();
        let wanted = if dated {
            wanted.as_ref().clone()
        } else {
            let fields: Vec<_> = wanted
                .fields()
                .iter()
                .filter(|f| f.name() != EVENT_DATE)
                .cloned()
                .collect();
            Schema::new(fields)
        };
        Ok(Layout {
            merge_schema: evolution(&current, &wanted, &stream.name)?,
            dated,
        })
    }

    /// `batch` (from a master-layout [`tributary_core::schema::BatchDecoder`]) as this
    /// table takes it.
    pub fn prepare(&self, batch: RecordBatch) -> Result<RecordBatch, BatchError> {
        if self.dated {
            return Ok(batch);
        }
        let keep: Vec<usize> = (0..batch.num_columns())
            .filter(|i| batch.schema().field(*i).name() != EVENT_DATE)
            .collect();
        batch
            .project(&keep)
            .map_err(|e| BatchError::delta("master table layout", e))
    }

    /// Set the write's partition columns and schema merge to this layout.
    pub fn apply(&self, write: WriteBuilder) -> WriteBuilder {
        let write = if self.dated {
            write.with_partition_columns([EVENT_DATE])
        } else {
            write
        };
        if self.merge_schema {
            write.with_schema_mode(SchemaMode::Merge)
        } else {
            write
        }
    }
}

/// The master table's schema as Arrow, or `None` before its first commit.
pub fn table_schema(table: &DeltaTable, stream: &str) -> Result<Option<Schema>, BatchError> {
    if table.version().is_none() {
        return Ok(None);
    }
    let what = || format!("master table of `{stream}`");
    let snapshot = table.snapshot().map_err(|e| BatchError::delta(what(), e))?;
    let schema: Schema = snapshot
        .schema()
        .as_ref()
        .try_into_arrow()
        .map_err(|e| BatchError::delta(what(), e))?;
    Ok(Some(schema))
}

#[cfg(test)]
mod tests {
    use deltalake::arrow::datatypes::{DataType, Field};

    use super::*;

    fn schema(fields: &[(&str, DataType, bool)]) -> Schema {
        Schema::new(
            fields
                .iter()
                .map(|(n, t, null)| Field::new(*n, t.clone(), *null))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn only_new_nullable_fields_evolve_without_a_rewrite() {
        let table = schema(&[("a", DataType::Utf8, false), ("b", DataType::Int64, true)]);
        assert!(!evolution(&table, &table, "s").unwrap());
        let added = schema(&[
            ("a", DataType::Utf8, false),
            ("c", DataType::Utf8, true),
            ("b", DataType::Int64, true),
        ]);
        assert!(evolution(&table, &added, "s").unwrap());

        let refused = |stream: Schema, field: &str, words: &str| {
            let e = evolution(&table, &stream, "s").unwrap_err().to_string();
            assert!(
                e.contains(&format!("field `{field}`")) && e.contains(words),
                "{e}"
            );
        };
        refused(
            schema(&[
                ("a", DataType::Utf8, false),
                ("b", DataType::Int64, true),
                ("c", DataType::Utf8, false),
            ]),
            "c",
            "add it as nullable",
        );
        refused(schema(&[("a", DataType::Utf8, false)]), "b", "no longer");
        refused(
            schema(&[("a", DataType::Utf8, false), ("b", DataType::Float64, true)]),
            "b",
            "changing a type",
        );
        refused(
            schema(&[("a", DataType::Utf8, true), ("b", DataType::Int64, true)]),
            "a",
            "required in the master table but nullable",
        );
    }
}
