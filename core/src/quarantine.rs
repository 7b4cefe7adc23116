//! Quarantine: a record a view cannot process must not stop the view, the other views
//! or the process.
//!
//! When a view's partial plan fails on a micro-batch, the batch is split in halves and
//! each half tried again, down to single records; the records that fail alone are set
//! aside with their error and the states of all the others are kept. An error that
//! depends on one record alone (a cast, a division by zero, an overflow in a per-row
//! expression) is thus isolated in O(bad × log n) runs, and the view goes on. The batch
//! layer isolates the same records the same way when a run fails (batch-layer's
//! `recompute`), so
//! both layers leave the same records out and the merge stays exact.

use crate::CoreError;
use crate::view::CompiledView;
use datafusion::arrow::record_batch::RecordBatch;

/// One record a view could not process: a one-row batch as decoded, and why.
#[derive(Debug)]
pub struct Refused {
    /// The record as decoded, one row in the stream's schema.
    pub row: RecordBatch,
    /// What the view's plan said about it.
    pub error: CoreError,
}

/// The view's partial states over `batches`, leaving out the records it cannot
/// process. `to_input` turns a (slice of a) batch into the view's input layout; the
/// refused rows come back in the batches' own layout (which keeps their log
/// positions). Fails only if even the states of good records cannot be merged, which
/// no record can cause.
pub async fn partial_isolating(
    view: &CompiledView,
    batches: Vec<RecordBatch>,
    to_input: impl Fn(&RecordBatch) -> Result<RecordBatch, CoreError>,
) -> Result<(Vec<RecordBatch>, Vec<Refused>), CoreError> {
    let inputs = batches
        .iter()
        .map(&to_input)
        .collect::<Result<Vec<_>, _>>()?;
    let first = match view.run_partial_batches(inputs).await {
        Ok(states) => return Ok((states, Vec::new())),
        Err(e) => e,
    };
    tracing::warn!(view = %view.name, error = %first, "a micro-batch failed; isolating its records");
    let mut states = Vec::new();
    let mut refused = Vec::new();
    let mut todo: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
    while let Some(batch) = todo.pop() {
        match view.run_partial_batches(vec![to_input(&batch)?]).await {
            Ok(s) => states.extend(s),
            Err(error) if batch.num_rows() == 1 => refused.push(Refused { row: batch, error }),
            Err(_) => {
                let half = batch.num_rows() / 2;
                todo.push(batch.slice(half, batch.num_rows() - half));
                todo.push(batch.slice(0, half));
            }
        }
    }
    let states = if states.len() > 1 {
        view.reduce(states).await?
    } else {
        states
    };
    Ok((states, refused))
}
