//! Each view's own cron schedule of incremental runs, as tasks of this serving process
//! kept equal to the catalog: started for a running view with a schedule, stopped when
//! the view is paused, dropped or failing or loses its schedule, restarted when the
//! schedule changes. Views of the file and views made at runtime alike: the catalog
//! holds both.

use std::collections::HashMap;
use std::sync::Mutex;

use tributary_core::catalog::{Lifecycle, ViewRecord};
use tributary_core::shutdown::Shutdown;

use super::ViewManager;

/// The schedules that run now: view name → (cron expression, what stops its task).
#[derive(Default)]
pub(super) struct Schedules(Mutex<HashMap<String, (String, Shutdown)>>);

impl ViewManager {
    /// Make the scheduled runs those of `rows` (every view's current catalog row): one
    /// task per view this process computes that has a schedule.
    pub(super) fn reschedule(&self, rows: &[ViewRecord]) {
        let pipeline = self.merger.pipeline();
        let wanted: HashMap<&str, &str> = rows
            .iter()
            .filter(|r| r.lifecycle == Lifecycle::Running && pipeline.view(&r.name).is_some())
            .filter_map(|r| r.schedule.as_deref().map(|s| (r.name.as_str(), s)))
            .collect();
        let mut held = self.schedules.0.lock().expect("schedules lock");
        held.retain(|name, (expr, stop)| {
            let keep = wanted.get(name.as_str()) == Some(&expr.as_str());
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (name, expr) in wanted {
            if held.contains_key(name) {
                continue;
            }
            let schedule = match tributary_core::config::parse_schedule(expr) {
                Ok(s) => s,
                Err(why) => {
                    tracing::error!(view = name, error = %why, "the view's schedule does not parse; it has no runs of its own");
                    continue;
                }
            };
            let stop = self.shutdown.child_token();
            let views = Some(vec![name.to_string()]);
            let run = tributary_batch::schedule::run_views(
                self.batch.clone(),
                views,
                schedule,
                stop.clone(),
            );
            let view = name.to_string();
            self.tasks.spawn(async move {
                if let Err(e) = run.await {
                    tracing::warn!(view = %view, error = %e, "the view's schedule stopped");
                }
            });
            held.insert(name.to_string(), (expr.to_string(), stop));
        }
    }
}
