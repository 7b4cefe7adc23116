//! A batch run of a view that joins two streams: the pairs whose two events are both
//! below the run's cutoff, from the two master tables.
//!
//! The cutoff of such a view is the smaller of its two streams' cutoffs (each proves its
//! own stream archived below it), and its runs always join everything below it: a new
//! event may pair with an event of any earlier run, so an incremental run would have to
//! read the other stream's whole past anyway. Runs execute here even with a Ballista
//! engine configured (the cluster's plan ships one scan).

use std::sync::Arc;

use datafusion::physical_plan::{ExecutionPlanProperties, collect};
use tributary_core::schema::StreamSchema;
use tributary_core::storage::Storage;
use tributary_core::view::CompiledView;

use crate::archiver::open_master;
use crate::engine::Engine;
use crate::error::BatchError;
use crate::read::{Partial, master_rows, view_columns_of};
use crate::scan::{Meter, MeteredTable};

/// The states of every pair of `view`'s two streams below `cutoff`, how many events of
/// both streams that read, and the newest event time of the view's own stream.
pub(crate) async fn partial_join_over_master(
    storage: &Storage,
    left: &StreamSchema,
    right: &StreamSchema,
    view: &CompiledView,
    cutoff: i64,
) -> Result<Partial, BatchError> {
    let join = view
        .stream_join()
        .expect("called for views joining two streams");
    let mut tables = Vec::new();
    let mut meters = Vec::new();
    for (stream, input, event_time) in [
        (left, &view.input_schema, &view.event_time),
        (right, &join.other_input_schema, &join.other_event_time),
    ] {
        let master = open_master(storage, &stream.name).await?;
        let rows = match &master {
            Some(m) => {
                let columns = view_columns_of(input);
                master_rows(m, stream, &view.name, columns, None, cutoff, &Engine::Local).await?
            }
            None => None,
        };
        let Some(df) = rows else {
            // One side has no events below the cutoff: no pairs.
            return Ok((Vec::new(), 0, None));
        };
        let meter = Arc::new(Meter::default());
        let table = MeteredTable::new(df, event_time, stream.max_event_lead_us, meter.clone());
        tables.push(Arc::new(table));
        meters.push(meter);
    }
    let right_table = tables.pop().expect("two sides");
    let left_table = tables.pop().expect("two sides");
    let query = |e| BatchError::query(&view.name, e);
    let (plan, ctx) = view
        .plan_partial_join(left_table, right_table, None)
        .await
        .map_err(query)?;
    let partitions = plan.output_partitioning().partition_count();
    let batches = collect(plan, ctx).await.map_err(|e| query(e.into()))?;
    let states = view
        .finish_partial(batches, partitions)
        .await
        .map_err(query)?;
    let (left_rows, max_event_ts) = meters[0].read();
    let (right_rows, _) = meters[1].read();
    Ok((states, left_rows + right_rows, max_event_ts))
}
