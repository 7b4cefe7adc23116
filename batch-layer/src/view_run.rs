//! One view's part of a batch run: where it stands (its cutoff, its definition, the
//! states it builds on), its states (computed anew, or the new events' states merged
//! into the days they touch), and its commit.
//!
//! A run opens each table once: the master tables when it chooses the cutoffs (their
//! snapshots are what prove every event below a cutoff archived, and what the views
//! then read), and each view's table before reading its head (the commit is checked
//! against that snapshot, so a run that another writer overtook fails and is tried
//! again instead of replacing what it did not see). Opening a Delta table replays its
//! log; doing it once instead of two or three times is most of an incremental run's
//! fixed cost.

use std::collections::HashMap;
use std::time::Instant;

use datafusion::arrow::record_batch::RecordBatch;
use deltalake::DeltaTable;
use tributary_core::view::CompiledView;

use crate::error::BatchError;
use crate::read::partial_over_master;
use crate::recompute::{Batch, Done};
use crate::run::RunKind;
use crate::views;

/// The master table of every stream, as the run's cutoffs saw it (`None`: nothing
/// archived yet).
pub(crate) type Masters = HashMap<String, Option<DeltaTable>>;

/// A view's cutoff in a run, and what it builds on.
struct ViewCutoff {
    cutoff: i64,
    definition: i64,
    /// The states an incremental run merges into; `None`: a full recompute.
    base: Option<views::Head>,
    /// Why the run is full (for the progress line).
    why_full: &'static str,
}

/// The states one view's run writes, and what it read to make them.
struct ViewStates {
    batches: Vec<RecordBatch>,
    scope: views::Scope,
    rows_in: u64,
    max_event_ts: Option<i64>,
    kind: &'static str,
}

impl ViewStates {
    /// States computed anew over everything below the cutoff, replacing all.
    fn full((batches, rows_in, max_event_ts): crate::read::Partial) -> Self {
        ViewStates {
            batches,
            scope: views::Scope::All,
            rows_in,
            max_event_ts,
            kind: "full",
        }
    }
}

/// Milliseconds since `t`, for the run's debug timings.
pub(crate) fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

impl Batch {
    /// One view's part of a run: its cutoff, its states, its commit.
    pub(crate) async fn run_view(
        &self,
        run_id: &str,
        view: &CompiledView,
        kind: RunKind,
        (stream_cutoff, masters): (i64, &Masters),
        step: &(dyn Fn(&str) + Sync),
        done: &mut Done,
    ) -> Result<(), BatchError> {
        let t = Instant::now();
        let table = views::open_table(self.storage(), view).await?;
        let cutoff = self.view_cutoff(view, &table, kind, stream_cutoff).await?;
        let cutoff_ms = ms(t);
        done.cutoff = done.cutoff.min(cutoff.cutoff);
        let Some(states) = self
            .view_states(view, &table, masters, &cutoff, step)
            .await?
        else {
            return Ok(());
        };
        let states_ms = ms(t) - cutoff_ms;
        done.rows_in += states.rows_in;
        done.rows_out += states
            .batches
            .iter()
            .map(|b| b.num_rows() as u64)
            .sum::<u64>();
        let stamp = views::Stamp {
            cutoff: cutoff.cutoff,
            max_event_ts: states.max_event_ts,
            definition: cutoff.definition,
            run_id,
            kind: states.kind,
        };
        done.files += views::write_to(table, view, stamp, states.scope, states.batches)
            .await?
            .files;
        tracing::debug!(
            run = run_id,
            view = %view.name,
            cutoff_ms,
            states_ms,
            write_ms = ms(t) - cutoff_ms - states_ms,
            "view run timings"
        );
        Ok(())
    }

    /// Where a view's run stands: its cutoff, its definition, and the states it builds on.
    async fn view_cutoff(
        &self,
        view: &CompiledView,
        table: &DeltaTable,
        kind: RunKind,
        stream_cutoff: i64,
    ) -> Result<ViewCutoff, BatchError> {
        let stream = self.stream_of(view);
        let definition = views::definition_hash(view, stream.dedup.as_ref());
        let previous = match kind {
            RunKind::Full => None,
            RunKind::Incremental => views::read_head(table, view).await?,
        };
        // Incremental only on top of states of the same definition; anything else
        // (no states yet, SQL or dedup rule changed) is a full recompute of the view.
        let (base, why_full) = match previous {
            _ if kind == RunKind::Full => (None, "requested"),
            None => (None, "no batch states yet"),
            Some(p) if p.definition != Some(definition) => (None, "definition changed"),
            Some(p) => (Some(p), ""),
        };
        // Never move a view's cutoff backwards (a clock step back could).
        let prev_cutoff = match &base {
            Some(b) => Some(b.cutoff),
            None => views::cutoff_of(table, view).await?,
        };
        Ok(ViewCutoff {
            cutoff: prev_cutoff.map_or(stream_cutoff, |p| stream_cutoff.max(p)),
            definition,
            base,
            why_full,
        })
    }

    /// The states a view's run writes: merged into its base (incremental), or computed
    /// anew (full); `None` when nothing is new since the base.
    async fn view_states(
        &self,
        view: &CompiledView,
        table: &DeltaTable,
        masters: &Masters,
        at: &ViewCutoff,
        step: &(dyn Fn(&str) + Sync),
    ) -> Result<Option<ViewStates>, BatchError> {
        let stream = self.stream_of(view);
        let master = |name: &str| masters.get(name).and_then(Option::as_ref);
        let cutoff = at.cutoff;
        if let Some(j) = view.stream_join() {
            if at.base.as_ref().is_some_and(|b| b.cutoff == cutoff) {
                step("nothing new");
                return Ok(None);
            }
            step("full (a join of two streams)");
            let right = self.stream_named(&j.other);
            let sides = [(stream, master(&stream.name)), (right, master(&right.name))];
            let partial = crate::join::partial_join_over_master(sides, view, cutoff).await?;
            return Ok(Some(ViewStates::full(partial)));
        }
        let over_master = |from| {
            partial_over_master(
                master(&stream.name),
                stream,
                view,
                from,
                cutoff,
                self.engine(),
            )
        };
        let Some(b) = &at.base else {
            step(&format!("full ({})", at.why_full));
            return Ok(Some(ViewStates::full(over_master(None).await?)));
        };
        if b.cutoff == cutoff {
            step("nothing new");
            return Ok(None);
        }
        step("incremental");
        let t = Instant::now();
        let (new, rows_in, max) = over_master(Some(b.cutoff)).await?;
        // Only the window days the new events fall in are read, merged and replaced
        // (all of a table from before the day partitions). A new event can join a
        // session that began any number of days before, so session views read and
        // replace all their states.
        let scope = if b.by_day && view.session.is_none() {
            views::Scope::Days(views::days_of(view, &new)?)
        } else {
            views::Scope::All
        };
        let days = match &scope {
            views::Scope::Days(d) => Some(d.as_slice()),
            views::Scope::All => None,
        };
        let new_ms = ms(t);
        let mut all = views::read_states(table, view, days).await?;
        let load_ms = ms(t) - new_ms;
        all.extend(new);
        let merged = view
            .reduce(all)
            .await
            .map_err(|e| BatchError::query(&view.name, e))?;
        tracing::debug!(
            view = %view.name,
            new_ms,
            load_ms,
            reduce_ms = ms(t) - new_ms - load_ms,
            "incremental states"
        );
        Ok(Some(ViewStates {
            batches: merged,
            scope,
            rows_in,
            max_event_ts: max.max(b.max_event_ts),
            kind: "incremental",
        }))
    }
}
