//! A speed process on its own follows the view catalog: a view created, replaced,
//! resumed, paused or dropped through a serving process reaches this process's
//! `ViewSet`, and the speed loop (`sync_views`) gives a new revision a store from the
//! next segment boundary, or drops the store of a view gone. Serving processes follow
//! the catalog through their `ViewManager`, which also backfills.

use std::time::Duration;

use tributary_core::CoreError;
use tributary_core::catalog::Catalog;
use tributary_core::config::ViewConfig;
use tributary_core::pipeline::Pipeline;
use tributary_core::shutdown::Shutdown;

/// Keep `pipeline`'s views those of `catalog` until shutdown, looking every `every`;
/// `file` is the configuration's views (the catalog's seed), so a file change this
/// process was started with is not undone before the seeding process writes it.
pub async fn follow_catalog(
    catalog: Catalog,
    pipeline: Pipeline,
    file: Vec<ViewConfig>,
    (every, shutdown): (Duration, Shutdown),
) -> Result<(), CoreError> {
    catalog
        .clone()
        .follow(every, shutdown, move || {
            let (catalog, pipeline, file) = (catalog.clone(), pipeline.clone(), file.clone());
            async move {
                let pass = catalog.reconcile(&pipeline, &file, false, &|_| {}).await?;
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
