//! How a join view's pairs reach its store: states of the new events' own bucket go
//! back to the caller (who adds them with the events' counts), the others straight to
//! the segments of their buckets; failures are counted on the view.

use datafusion::arrow::record_batch::RecordBatch;
use tributary_core::CoreError;

use super::JoinState;
use super::Side;
use super::master::MasterArchive;
use crate::store::ViewStore;

/// Pair `rows` (of `side`, in `bucket`) with what `state` holds of the other stream,
/// under the store's cutoff: states of pairs in other buckets go to the store, those of
/// `bucket` itself are returned (the caller adds them with the events' counts).
pub(crate) async fn pair_into(
    state: &mut JoinState<MasterArchive>,
    store: &ViewStore,
    side: Side,
    bucket: i64,
    rows: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>, CoreError> {
    let mut own = Vec::new();
    let cutoff = store.cutoff();
    for (b, states) in state.apply(side, bucket, rows, cutoff).await? {
        match b == bucket {
            true => own.extend(states),
            false => store.add(b, states, 0, None, 0),
        }
    }
    for (b, weights) in state.unmatched_since(side, bucket, cutoff).await? {
        store.set_unmatched(b, weights);
    }
    let failed = state.take_failures();
    if let Some(last) = failed.last() {
        tracing::warn!(view = %store.view.name, pairs = failed.len(), error = %last, "joined pairs set aside");
        // Single pairs, never a whole micro-batch: the view keeps running.
        store.quarantine(failed.len() as u64, u64::MAX, last.to_string());
    }
    Ok(own)
}

/// Pair the events `state` deferred while the store's cutoff was provisional, once it
/// is proven (their counts are in the store already).
pub(crate) async fn pair_deferred(
    state: &mut JoinState<MasterArchive>,
    store: &ViewStore,
) -> Result<(), CoreError> {
    if !store.cutoff_proven() {
        return Ok(());
    }
    for (side, bucket, rows) in state.take_deferred() {
        let own = pair_into(state, store, side, bucket, rows).await?;
        store.add(bucket, own, 0, None, 0);
    }
    Ok(())
}

/// A join view could not pair a micro-batch's events: they are set aside for it
/// (counted, the error reported); the records stay in the log and master table.
pub(crate) fn join_failed(store: &ViewStore, events: u64, e: CoreError) {
    tracing::warn!(view = %store.view.name, error = %e, "a join view could not pair a micro-batch's events");
    store.quarantine(events, events, e.to_string());
}
