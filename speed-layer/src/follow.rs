//! A speed process on its own follows the view catalog: a view created, replaced,
//! resumed, paused or dropped through a serving process reaches this process's
//! `ViewSet`, and the speed loop (`sync_views`) gives a new revision a store from the
//! next segment boundary, or drops the store of a view gone. Serving processes follow
//! the catalog through their `ViewManager`, which also backfills.

use std::time::Duration;

use tributary_core::CoreError;
use tributary_core::catalog::Catalog;
use tributary_core::pipeline::Pipeline;
use tributary_core::shutdown::Shutdown;

/// Keep `pipeline`'s views those of `catalog` until shutdown, looking every `every`.
/// The catalog as it is, not this process's file: processes started with different
/// files never fight over a view (a file change reaches the catalog through the
/// serving process that seeds it, and from there every process).
pub async fn follow_catalog(
    catalog: Catalog,
    pipeline: Pipeline,
    (every, shutdown): (Duration, Shutdown),
) -> Result<(), CoreError> {
    catalog
        .clone()
        .follow(every, shutdown, move || {
            let (catalog, pipeline) = (catalog.clone(), pipeline.clone());
            async move {
                let pass = catalog.reconcile(&pipeline, &[], false, &|_| {}).await?;
                for v in &pass.installed {
                    tracing::info!(view = %v.name, revision = v.revision, "followed a view change: the speed layer takes this revision");
                }
                for name in &pass.removed {
                    tracing::info!(view = %name, "followed a view change: the speed layer drops the view");
                }
                for (r, why) in &pass.failed {
                    tracing::error!(view = %r.name, error = %why, "a cataloged view does not compile; it does not run");
                }
                Ok(())
            }
        })
        .await
}
