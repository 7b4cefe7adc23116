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

use super::{ViewManager, paused, status};
use crate::error::ServingError;
use crate::merge::NotReady;

impl ViewManager {
    /// Follow the catalog every `every` until shutdown, and every ten turns look for a
    /// view the speed layer holds from above its batch cutoff. The catalog as it is:
    /// processes started with different files never fight over a view.
    pub async fn follow(self: Arc<Self>, every: Duration) -> Result<(), ServingError> {
        let (catalog, shutdown) = (self.catalog.clone(), self.shutdown.clone());
        let heal = self.clone().heal(every * 10);
        let follow = catalog.follow(every, shutdown, || {
            let this = self.clone();
            async move { this.follow_once().await }
        });
        let (followed, ()) = tokio::join!(follow, heal);
        followed?;
        Ok(())
    }

    /// A view another process's change left behind: backfill it (see
    /// [`ViewManager::needs_backfill`]).
    async fn heal(self: Arc<Self>, every: Duration) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let _one = self.changes.lock().await;
            for view in self.merger.pipeline().views.iter() {
                if self.merger.not_ready(&view.name).is_some() || !self.needs_backfill(&view).await
                {
                    continue;
                }
                // Another serving process may have moved the batch view on already.
                if self.merger.refresh().await.is_ok() && !self.needs_backfill(&view).await {
                    continue;
                }
                let why = "the speed layer holds it from above its batch cutoff";
                self.begin_backfill(view, why).await;
            }
        }
    }

    async fn follow_once(self: &Arc<Self>) -> tributary_core::Result<()> {
        // One change at a time: this process's own changes and followed ones.
        let _one = self.changes.lock().await;
        let merger = self.merger.clone();
        // Before the pipeline changes, so no answer pairs the new definition with what
        // was held for the old one.
        let gate = move |name: &str| merger.set_not_ready(name, Some(changing()));
        let pass = self
            .catalog
            .reconcile(self.merger.pipeline(), &[], false, &gate)
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
                    self.merger.set_not_ready(&r.name, Some(paused()));
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
            self.set(status(r, "backfilling"));
            let why = "following a change made in another process";
            self.begin_backfill(view, why).await;
        }
        self.reschedule(&pass.current);
    }
}

/// Why a view whose definition another process changed does not answer for a moment.
fn changing() -> NotReady {
    NotReady::Backfilling(
        "changing: another process changed its definition; this one follows it".into(),
    )
}
