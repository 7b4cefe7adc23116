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
//!
//! The same holds for a view's final rows: an expression over the aggregates or the
//! group keys (`count(*) / 0`, a cast of a key) can fail for one group alone, and one
//! such group must not take the view's whole answer down. [`finalize_isolating`] sets
//! such groups aside with their error, and answers say which.

use crate::CoreError;
use crate::view::CompiledView;
use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::{concat_batches, filter_record_batch, not};
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

/// The states of every pair a view joining two streams makes of `left` and `right` (in
/// input layout), leaving out the pairs it cannot process: when the join fails, the
/// left rows are halved, then a failing single left row's partners, down to single
/// pairs. A pair's failure depends on its two events alone, so both layers leave out
/// the same pairs. Returns the states and the errors of the pairs left out.
pub async fn join_isolating(
    view: &CompiledView,
    left: Vec<RecordBatch>,
    right: Vec<RecordBatch>,
) -> Result<(Vec<RecordBatch>, Vec<CoreError>), CoreError> {
    let first = match view.run_partial_join(left.clone(), right.clone()).await {
        Ok(states) => return Ok((states, Vec::new())),
        Err(e) => e,
    };
    tracing::warn!(view = %view.name, error = %first, "a join failed; isolating its pairs");
    let concat = |batches: &[RecordBatch], schema| {
        datafusion::arrow::compute::concat_batches(schema, batches)
    };
    let left = concat(&left, &view.input_schema)?;
    let join = view.stream_join().ok_or(first)?;
    let right = concat(&right, &join.other_input_schema)?;
    let (mut states, mut failed) = (Vec::new(), Vec::new());
    let mut todo = vec![(left, right)];
    while let Some((l, r)) = todo.pop() {
        if l.num_rows() == 0 || r.num_rows() == 0 {
            continue;
        }
        match view
            .run_partial_join(vec![l.clone()], vec![r.clone()])
            .await
        {
            Ok(s) => states.extend(s),
            Err(error) if l.num_rows() == 1 && r.num_rows() == 1 => failed.push(error),
            Err(_) if l.num_rows() > 1 => {
                let half = l.num_rows() / 2;
                todo.push((l.slice(half, l.num_rows() - half), r.clone()));
                todo.push((l.slice(0, half), r));
            }
            Err(_) => {
                let half = r.num_rows() / 2;
                todo.push((l.clone(), r.slice(half, r.num_rows() - half)));
                todo.push((l, r.slice(0, half)));
            }
        }
    }
    let states = if states.len() > 1 {
        view.reduce(states).await?
    } else {
        states
    };
    Ok((states, failed))
}

/// Which rows of `left` a row of `right` matches in a LEFT join of two streams,
/// leaving out the pairs whose ON condition fails (as [`join_isolating`] leaves them
/// out of the pairs: such a pair is no match in either layer). Returns the matches and
/// the errors of the pairs left out.
pub async fn matched_isolating(
    view: &CompiledView,
    left: &RecordBatch,
    right: Vec<RecordBatch>,
) -> Result<(BooleanArray, Vec<CoreError>), CoreError> {
    let first = match view.matched(left, right.clone()).await {
        Ok(hit) => return Ok((hit, Vec::new())),
        Err(e) => e,
    };
    tracing::warn!(view = %view.name, error = %first, "a LEFT join's matching failed; isolating its pairs");
    let join = view.stream_join().ok_or(first)?;
    let right = concat_batches(&join.other_input_schema, &right)?;
    let mut hit = vec![false; left.num_rows()];
    let mut failed = Vec::new();
    // (offset of the slice in `left`, the slice, its partners)
    let mut todo = vec![(0, left.clone(), right)];
    while let Some((at, l, r)) = todo.pop() {
        if l.num_rows() == 0 || r.num_rows() == 0 {
            continue;
        }
        match view.matched(&l, vec![r.clone()]).await {
            Ok(h) => {
                for i in (0..h.len()).filter(|i| h.value(*i)) {
                    hit[at + i] = true;
                }
            }
            Err(error) if l.num_rows() == 1 && r.num_rows() == 1 => failed.push(error),
            Err(_) if l.num_rows() > 1 => {
                let half = l.num_rows() / 2;
                todo.push((at + half, l.slice(half, l.num_rows() - half), r.clone()));
                todo.push((at, l.slice(0, half), r));
            }
            Err(_) => {
                let half = r.num_rows() / 2;
                todo.push((at, l.clone(), r.slice(half, r.num_rows() - half)));
                todo.push((at, l, r.slice(0, half)));
            }
        }
    }
    Ok((BooleanArray::from(hit), failed))
}

/// The states of the unmatched rows of a LEFT join of two streams over `left` and
/// `right` (input layout): the left events no right event matches, as both layers
/// decide them, pairs and rows that fail left out (their errors returned).
pub async fn unmatched_among(
    view: &CompiledView,
    left: &RecordBatch,
    right: Vec<RecordBatch>,
) -> Result<(Vec<RecordBatch>, Vec<CoreError>), CoreError> {
    let (hit, mut failed) = matched_isolating(view, left, right).await?;
    let alone = filter_record_batch(left, &not(&hit)?)?;
    let (states, f) = unmatched_isolating(view, alone).await?;
    failed.extend(f);
    Ok((states, failed))
}

/// The states of the unmatched rows `(L, NULL)` of `left` (see
/// `CompiledView::run_unmatched`), leaving out the left events whose row the view cannot
/// process, found by halving as records are. Returns the states and their errors.
pub async fn unmatched_isolating(
    view: &CompiledView,
    left: RecordBatch,
) -> Result<(Vec<RecordBatch>, Vec<CoreError>), CoreError> {
    let first = match view.run_unmatched(vec![left.clone()]).await {
        Ok(states) => return Ok((states, Vec::new())),
        Err(e) => e,
    };
    tracing::warn!(view = %view.name, error = %first, "a LEFT join's unmatched rows failed; isolating them");
    let (mut states, mut failed) = (Vec::new(), Vec::new());
    let mut todo = vec![left];
    while let Some(l) = todo.pop() {
        if l.num_rows() == 0 {
            continue;
        }
        match view.run_unmatched(vec![l.clone()]).await {
            Ok(s) => states.extend(s),
            Err(error) if l.num_rows() == 1 => failed.push(error),
            Err(_) => {
                let half = l.num_rows() / 2;
                todo.push(l.slice(half, l.num_rows() - half));
                todo.push(l.slice(0, half));
            }
        }
    }
    let states = if states.len() > 1 {
        view.reduce(states).await?
    } else {
        states
    };
    Ok((states, failed))
}

/// A group of a view whose final row cannot be computed: its keys and window start
/// (one row, named as the view's output names them), and why.
#[derive(Debug)]
pub struct FailedRow {
    /// The group's key columns and window start.
    pub keys: RecordBatch,
    /// What the view's final plan said about it.
    pub error: CoreError,
}

/// The view's final rows over `states`, leaving out the groups whose row cannot be
/// computed. Groups are independent in the final plan (no ORDER BY or LIMIT in a
/// view), so once the states are reduced to one row per group, any split of them gives
/// the same rows as the whole; failing groups are found by halving, as records are.
pub async fn finalize_isolating(
    view: &CompiledView,
    states: Vec<RecordBatch>,
) -> Result<(Vec<RecordBatch>, Vec<FailedRow>), CoreError> {
    let first = match view.finalize(states.clone()).await {
        Ok(rows) => return Ok((rows, Vec::new())),
        Err(e) => e,
    };
    tracing::warn!(view = %view.name, error = %first, "a view's final rows failed; isolating the groups");
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    let mut todo: Vec<RecordBatch> = view
        .reduce(states)
        .await?
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .collect();
    while let Some(batch) = todo.pop() {
        match view.finalize(vec![batch.clone()]).await {
            Ok(r) => rows.extend(r),
            Err(error) if batch.num_rows() == 1 => failed.push(FailedRow {
                keys: view.group_keys(&batch)?,
                error,
            }),
            Err(_) => {
                let half = batch.num_rows() / 2;
                todo.push(batch.slice(half, batch.num_rows() - half));
                todo.push(batch.slice(0, half));
            }
        }
    }
    Ok((rows, failed))
}
