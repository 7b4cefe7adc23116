//! A batch run of a view that joins two streams: the pairs whose two events are both
//! below the run's cutoff, from the two master tables.
//!
//! The cutoff of such a view is the smaller of its two streams' cutoffs (each proves its
//! own stream archived below it), and its runs always join everything below it: a new
//! event may pair with an event of any earlier run, so an incremental run would have to
//! read the other stream's whole past anyway. Runs execute here even with a Ballista
//! engine configured (the cluster's plan ships one scan).

use std::sync::Arc;

use datafusion::arrow::array::TimestampMicrosecondArray;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::MemTable;
use datafusion::physical_plan::{ExecutionPlanProperties, collect};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use tributary_core::quarantine::{join_isolating, unmatched_among};
use tributary_core::schema::{INGEST_TS, StreamSchema, newest_watermark_time};
use tributary_core::view::CompiledView;

use crate::engine::Engine;
use crate::error::{BatchError, is_storage_error};
use crate::read::{Columns, Partial, master_rows};
use crate::scan::{Meter, MeteredTable};

/// The states of every pair of `view`'s two streams below `cutoff`, how many events of
/// both streams that read, and the newest event time of the view's own stream.
pub(crate) async fn partial_join_over_master(
    [(left, left_master), (right, right_master)]: [(&StreamSchema, Option<&DeltaTable>); 2],
    view: &CompiledView,
    cutoff: i64,
) -> Result<Partial, BatchError> {
    let join = view
        .stream_join()
        .expect("called for views joining two streams");
    let mut tables = Vec::new();
    let mut meters = Vec::new();
    let mut frames = Vec::new();
    for (stream, master, input, event_time) in [
        (left, left_master, &view.input_schema, &view.event_time),
        (
            right,
            right_master,
            &join.other_input_schema,
            &join.other_event_time,
        ),
    ] {
        let rows = match master {
            Some(m) => {
                let columns = Columns::of_input(input);
                master_rows(m, stream, &view.name, columns, None, cutoff, &Engine::Local).await?
            }
            None => None,
        };
        let df = match rows {
            Some(df) => df,
            // No events of the right side below the cutoff: a LEFT join's left events
            // are all unmatched.
            None if view.outer_join() && !frames.is_empty() => {
                let empty = MemTable::try_new(input.clone(), vec![vec![]])
                    .map_err(|e| BatchError::query(&view.name, e))?;
                SessionContext::new()
                    .read_table(Arc::new(empty))
                    .map_err(|e| BatchError::query(&view.name, e))?
            }
            // One side has no events below the cutoff: no pairs.
            None => return Ok((Vec::new(), 0, None)),
        };
        let meter = Arc::new(Meter::default());
        let table = MeteredTable::new(
            df.clone(),
            event_time,
            stream.max_event_lead_us,
            meter.clone(),
        );
        tables.push(Arc::new(table));
        meters.push(meter);
        frames.push(df);
    }
    let right_table = tables.pop().expect("two sides");
    let left_table = tables.pop().expect("two sides");
    let query = |e| BatchError::query(&view.name, e);
    let (plan, ctx) = view
        .plan_partial_join(left_table, right_table, None)
        .await
        .map_err(query)?;
    let partitions = plan.output_partitioning().partition_count();
    let batches = match collect(plan, ctx)
        .await
        .map_err(tributary_core::CoreError::from)
    {
        Ok(batches) => batches,
        Err(e) if !is_storage_error(&e) => {
            return isolating(view, left, &frames[0], &frames[1]).await;
        }
        Err(e) => return Err(query(e)),
    };
    let states = view
        .finish_partial(batches, partitions)
        .await
        .map_err(query)?;
    let (left_rows, max_event_ts) = meters[0].read();
    let (right_rows, _) = meters[1].read();
    Ok((states, left_rows + right_rows, max_event_ts))
}

/// A pair the view cannot process must not fail every run for ever: both sides read
/// into memory and the pairs it cannot process left out one by one, as the speed layer
/// leaves them out (`quarantine::join_isolating`).
async fn isolating(
    view: &CompiledView,
    left: &StreamSchema,
    l: &DataFrame,
    r: &DataFrame,
) -> Result<Partial, BatchError> {
    tracing::warn!(view = %view.name, "batch run of a join failed on its rows; isolating its pairs");
    let query = |e| BatchError::query(&view.name, e);
    let l = l.clone().collect().await.map_err(|e| query(e.into()))?;
    let r = r.clone().collect().await.map_err(|e| query(e.into()))?;
    let rows = l.iter().chain(&r).map(|b| b.num_rows() as u64).sum();
    let newest = l
        .iter()
        .filter_map(|b| newest_event_time(b, &view.event_time, left.max_event_lead_us))
        .max();
    let (mut states, mut failed) = join_isolating(view, l.clone(), r.clone())
        .await
        .map_err(query)?;
    if view.outer_join() {
        // A LEFT join's unmatched rows, decided as the speed layer decides them.
        let left = concat_batches(&view.input_schema, &l).map_err(|e| query(e.into()))?;
        let (unmatched, f) = unmatched_among(view, &left, r).await.map_err(query)?;
        failed.extend(f);
        states.extend(unmatched);
    }
    if let Some(last) = failed.last() {
        tracing::warn!(view = %view.name, pairs = failed.len(), error = %last, "joined pairs set aside");
    }
    Ok((states, rows, newest))
}

/// The newest event time of `batch` that counts for the watermark (not too far ahead of
/// its ingest time), as the run's meter takes it.
fn newest_event_time(batch: &RecordBatch, column: &str, lead_us: i64) -> Option<i64> {
    let ts = |name: &str| {
        batch
            .column_by_name(name)?
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
    };
    newest_watermark_time(ts(column)?, ts(INGEST_TS), lead_us)
}
