//! Batch runs that meet a row the view cannot process: rather than failing every run
//! for ever on it, the run reads its rows again batch by batch and sets aside the rows
//! that fail alone (`tributary_core::quarantine`, the speed layer's rule too), so both
//! layers leave out the same records and the merge stays exact.

use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use tributary_core::view::CompiledView;

use crate::error::BatchError;

/// The view's partial states over `table`, read batch by batch, leaving out the rows
/// the view cannot process (see [`tributary_core::quarantine`]).
pub(crate) async fn partial_isolating_stream(
    view: &CompiledView,
    table: Arc<dyn datafusion::catalog::TableProvider>,
) -> Result<Vec<RecordBatch>, BatchError> {
    use futures::StreamExt;
    let verr = |e: tributary_core::CoreError| BatchError::query(&view.name, e);
    let dferr = |e: datafusion::error::DataFusionError| BatchError::query(&view.name, e);
    let ctx = tributary_core::cloud::session_context();
    let mut rows = ctx
        .read_table(table)
        .map_err(dferr)?
        .execute_stream()
        .await
        .map_err(dferr)?;
    let to_input = |b: &RecordBatch| {
        RecordBatch::try_new(view.input_schema.clone(), b.columns().to_vec())
            .map_err(tributary_core::CoreError::from)
    };
    let mut states = Vec::new();
    let mut refused = 0usize;
    while let Some(batch) = rows.next().await {
        let batch = batch.map_err(dferr)?;
        let (s, r) = tributary_core::quarantine::partial_isolating(view, vec![batch], to_input)
            .await
            .map_err(verr)?;
        refused += r.len();
        states.extend(s);
        if states.len() >= 64 {
            states = view.reduce(states).await.map_err(verr)?;
        }
    }
    if refused > 0 {
        tracing::warn!(view = %view.name, records = refused, "batch run left out records the view cannot process");
    }
    if states.len() > 1 {
        states = view.reduce(states).await.map_err(verr)?;
    }
    Ok(states)
}
