//! A join view's partners below the batch cutoff, read from the master table.
//!
//! Every event below a batch cutoff is archived (the batch run proved it before
//! committing the cutoff), so the master table holds exactly the events below it, and
//! for one cutoff that set never changes: the rows read are kept and reused until the
//! cutoff moves or an older event needs partners from further back in event time.

use std::sync::Arc;

use datafusion::arrow::compute::kernels::sort::sort_to_indices;
use datafusion::arrow::compute::{
    concat_batches, filter_record_batch, is_not_null, take_record_batch,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{SessionConfig, SessionContext, cast, col, lit};
use datafusion::scalar::ScalarValue;
use tributary_core::CoreError;
use tributary_core::schema::{EVENT_DATE, INGEST_TS, StreamSchema, UTC};
use tributary_core::storage::Storage;
use tributary_core::view::{SOURCE_COLUMN, SOURCE_SPEED};

use super::{Archive, Side};

const DAY_US: i64 = 86_400_000_000;

/// The master table's events of one stream below `cutoff` with event time from
/// `from_us` on, in the view's input layout, ordered by event time: each micro-batch
/// takes the slice it needs instead of filtering every row held.
#[derive(Debug)]
struct Below {
    cutoff: i64,
    from_us: i64,
    rows: RecordBatch,
}

impl Below {
    /// The rows with event time (column `ts`) in `[lo, hi]`.
    fn slice(&self, ts: &str, lo: i64, hi: i64) -> Vec<RecordBatch> {
        let Some(times) = super::event_times(&self.rows, ts) else {
            return Vec::new();
        };
        let times = times.values();
        let start = times.partition_point(|t| *t < lo);
        let end = times.partition_point(|t| *t <= hi).max(start);
        match end - start {
            0 => Vec::new(),
            n => vec![self.rows.slice(start, n)],
        }
    }
}

/// A join view's two streams' master tables, with what was last read of each.
#[derive(Debug)]
pub(crate) struct MasterArchive {
    /// Where the master tables are (none: nothing is below any cutoff, as in benches
    /// whose layer never learns of one).
    storage: Option<Storage>,
    /// Per side: the stream and the input layout its events are read into.
    streams: [(StreamSchema, SchemaRef); 2],
    /// Per side: the rows last read.
    held: [Option<Below>; 2],
}

impl MasterArchive {
    pub(crate) fn new(storage: Option<Storage>, streams: [(StreamSchema, SchemaRef); 2]) -> Self {
        MasterArchive {
            storage,
            streams,
            held: [None, None],
        }
    }
}

impl Archive for MasterArchive {
    async fn below(
        &mut self,
        side: Side,
        cutoff: i64,
        (lo, hi): (i64, i64),
    ) -> Result<Vec<RecordBatch>, CoreError> {
        let Some(storage) = &self.storage else {
            return Ok(Vec::new());
        };
        let (stream, input) = &self.streams[side.index()];
        let ts = stream.event_time.as_str();
        let slot = &mut self.held[side.index()];
        if let Some(held) = slot.as_ref()
            && held.cutoff == cutoff
            && held.from_us <= lo
        {
            return Ok(held.slice(ts, lo, hi));
        }
        // Read as far back as was needed before too: late events tend to come again.
        let from_us = slot.as_ref().map_or(lo, |h| h.from_us.min(lo));
        let rows = by_event_time(
            input,
            ts,
            read(storage, stream, input, cutoff, from_us).await?,
        )?;
        tracing::debug!(stream = %stream.name, cutoff, from_us, rows = rows.num_rows(), "join partners read from the master table");
        let held = slot.insert(Below {
            cutoff,
            from_us,
            rows,
        });
        Ok(held.slice(ts, lo, hi))
    }
}

/// `batches` as one batch ordered by event time (column `ts`); rows without one never
/// pair, and are left out.
fn by_event_time(
    input: &SchemaRef,
    ts: &str,
    batches: Vec<RecordBatch>,
) -> Result<RecordBatch, CoreError> {
    let rows = concat_batches(input, &batches)?;
    let column = rows.column_by_name(ts).cloned();
    let Some(column) = column else {
        return Ok(rows);
    };
    let rows = match column.null_count() {
        0 => rows,
        _ => filter_record_batch(&rows, &is_not_null(&column)?)?,
    };
    let order = sort_to_indices(rows.column_by_name(ts).expect("kept above"), None, None)?;
    Ok(take_record_batch(&rows, &order)?)
}

async fn read(
    storage: &Storage,
    stream: &StreamSchema,
    input: &SchemaRef,
    cutoff: i64,
    from_us: i64,
) -> Result<Vec<RecordBatch>, CoreError> {
    let url = storage.master_table(&stream.name);
    let delta = |e: deltalake::DeltaTableError| CoreError::Table {
        path: url.to_string(),
        message: format!("reading join partners of `{}`: {e}", stream.name),
    };
    let table = tributary_core::delta::open(url.clone())
        .await
        .map_err(delta)?;
    if table.version().is_none() {
        return Ok(Vec::new());
    }
    // Strings as plain Utf8, the type the speed layer decodes them to.
    let mut config = SessionConfig::new();
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    let ctx = SessionContext::new_with_config_rt(config, tributary_core::cloud::runtime());
    table
        .update_datafusion_session(&ctx.state())
        .map_err(delta)?;
    let provider = table
        .table_provider()
        .with_session(Arc::new(ctx.state()))
        .await?;
    let ts = |t: i64| lit(ScalarValue::TimestampMicrosecond(Some(t), Some(UTC.into())));
    let day = i32::try_from(from_us.div_euclid(DAY_US)).unwrap_or(i32::MIN);
    let columns = input
        .fields()
        .iter()
        .filter(|f| f.name() != SOURCE_COLUMN)
        .map(|f| cast(col(f.name().as_str()), f.data_type().clone()).alias(f.name()))
        .chain(std::iter::once(lit(SOURCE_SPEED).alias(SOURCE_COLUMN)))
        .collect::<Vec<_>>();
    let rows = ctx
        .read_table(provider)?
        .filter(
            col(INGEST_TS)
                .lt(ts(cutoff))
                .and(col(stream.event_time.as_str()).gt_eq(ts(from_us)))
                // The table's partitions are event dates: whole days before are skipped.
                .and(col(EVENT_DATE).gt_eq(lit(ScalarValue::Date32(Some(day))))),
        )?
        .select(columns)?
        .collect()
        .await?;
    tributary_core::view::conform_to(input, rows)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::arrow::record_batch::RecordBatch;

    use super::{Below, by_event_time};

    #[test]
    fn held_rows_are_ordered_by_event_time_and_sliced_inclusively() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = |ts: Vec<Option<i64>>, n: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(TimestampMicrosecondArray::from(ts)),
                    Arc::new(Int64Array::from(n)),
                ],
            )
            .unwrap()
        };
        let rows = by_event_time(
            &schema,
            "ts",
            vec![
                batch(vec![Some(30), None, Some(10)], vec![3, 0, 1]),
                batch(vec![Some(20), Some(40), Some(20)], vec![2, 4, 5]),
            ],
        )
        .unwrap();
        let held = Below {
            cutoff: 0,
            from_us: 0,
            rows,
        };
        let numbers = |lo, hi| -> Vec<i64> {
            held.slice("ts", lo, hi)
                .iter()
                .flat_map(|b| {
                    let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                    n.values().to_vec()
                })
                .collect()
        };
        // The row without an event time never pairs and is not held.
        assert_eq!(held.rows.num_rows(), 5);
        let mut both = numbers(20, 30);
        both.sort();
        assert_eq!(both, vec![2, 3, 5]);
        assert_eq!(numbers(i64::MIN, 10), vec![1]);
        assert_eq!(numbers(40, i64::MAX), vec![4]);
        assert_eq!(numbers(11, 19), Vec::<i64>::new());
        assert_eq!(numbers(31, 29), Vec::<i64>::new());
    }
}
