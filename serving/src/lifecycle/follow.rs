//! Following changes made by other processes. With the roles in separate processes a
//! change reaches the catalog through one serving process; every other serving process
//! and every speed process finds it there (`Catalog::follow`) and carries it out as the
//! first one did: a new revision is gated, backfilled and answers once its batch states
//! reach where the speed processes hold it from; a paused or dropped view stops
//! answering. The speed processes follow on their own (`speed-layer/src/follow.rs`), each giving the
//! revision a store from its own cutoff; the backfill waits for all of them
//! (`SpeedSource::holds_from`), and no answer ever merges states of two revisions
//! (`CoreError::RevisionMismatch`).

use std::sync::Arc;
use std::time::Duration;

use tributary_core::catalog::{Lifecycle, Reconciled};
use tributary_core::config::ViewConfig;

use super::{ViewManager, backfilling, status};
use crate::error::ServingError;
use crate::merge::NotReady;

impl ViewManager {
    /// Follow the catalog every `every` until shutdown; `file` is the configuration's
    /// views (the catalog's seed), so a file change this process was started with is
    /// not undone by a catalog the seeding process has not written yet.
    pub async fn follow(
        self: Arc<Self>,
        file: Vec<ViewConfig>,
        every: Duration,
    ) -> Result<(), ServingError> {
        let (catalog, shutdown) = (self.catalog.clone(), self.shutdown.clone());
        catalog
            .follow(every, shutdown, || {
                let (this, file) = (self.clone(), file.clone());
                async move { this.follow_once(&file).await }
            })
            .await?;
        Ok(())
    }

    async fn follow_once(self: &Arc<Self>, file: &[ViewConfig]) -> tributary_core::Result<()> {
        // One change at a time: this process's own changes and followed ones.
        let _one = self.changes.lock().await;
        let merger = self.merger.clone();
        // Before the pipeline changes, so no answer pairs the new definition with what
        // was held for the old one.
        let gate = move |name: &str| merger.set_not_ready(name, Some(changing()));
        let pass = self
            .catalog
            .reconcile(self.merger.pipeline(), file, false, &gate)
            .await?;
        self.apply(pass).await;
        Ok(())
    }

    /// Carry out what a followed pass changed in the pipeline.
    async fn apply(self: &Arc<Self>, pass: Reconciled) {
        for name in &pass.removed {
            self.merger.forget(name).await;
        }
        for r in &pass.current {
            match r.lifecycle {
                Lifecycle::Dropped => {
                    let held = self.states.lock().expect("states lock").remove(&r.name);
                    if held.is_some() {
                        self.merger.set_not_ready(&r.name, None);
                    }
                }
                Lifecycle::Paused => {
                    self.set(status(r, "paused"));
                    self.merger.set_not_ready(
                        &r.name,
                        Some(NotReady::Inactive(
                            "paused: resume it to compute it again".into(),
                        )),
                    );
                }
                Lifecycle::Running => {}
            }
        }
        for (r, why) in pass.failed {
            self.fail(&r, why);
        }
        for view in pass.installed {
            let Some(r) = pass.current.iter().find(|r| r.name == view.name) else {
                continue;
            };
            self.merger.forget(&view.name).await;
            self.merger.set_not_ready(&view.name, Some(backfilling()));
            self.set(status(r, "backfilling"));
            tracing::info!(view = %view.name, revision = view.revision, "following a change made in another process: backfilling");
            self.backfill(view);
        }
    }
}

/// Why a view whose definition another process changed does not answer for a moment.
fn changing() -> NotReady {
    NotReady::Backfilling(
        "changing: another process changed its definition; this one follows it".into(),
    )
}
