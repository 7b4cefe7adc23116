//! Views joining two streams in the speed layer: every joined pair with at least one
//! event at or above the batch cutoff `T`, each found exactly once.
//!
//! A pair belongs to the layer of the larger `_ingest_ts` of its two events; the batch
//! layer joins what is below `T` on both sides. Here a pair is made when the second of
//! its two events is processed, against what the other side holds: the events of the
//! other stream this layer processed at or above `T` (kept raw, per `_ingest_ts`
//! bucket), and those below `T`, read from the master table (every event below a batch
//! cutoff is archived; see [`master`]). Its states go to the segment of the pair's
//! larger bucket, so a cutoff drops exactly the pairs the batch layer then holds.
//!
//! One case needs care: the speed layer reads the two streams independently, so the
//! cutoff may pass an event before this layer has read it. Such an event `f` was then
//! already found in the master table by every event `e` processed while the cutoff
//! stood above `f`; when `f` is read later it must not pair with those `e` again. Each
//! kept event therefore remembers the cutoff in force when it was processed, and `f`
//! (in bucket `k`) pairs only with kept events whose remembered cutoff is at most `k`.
//! Cutoffs and buckets share boundaries, so "`f` was below `e`'s cutoff" is exactly
//! "`k` is below it".

pub(crate) mod feed;
pub(crate) mod master;
pub(crate) mod outer;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, TimestampMicrosecondArray};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use tributary_core::CoreError;
use tributary_core::quarantine::join_isolating;
use tributary_core::view::{CompiledView, StreamJoin};

/// Where a join view finds a stream's events below a batch cutoff (the master table;
/// in tests, events held in memory).
pub(crate) trait Archive {
    /// The events of `side`'s stream with `_ingest_ts` below `cutoff` and event time in
    /// `range` (`[lo, hi]`), in that side's input layout tagged as the speed layer's.
    fn below(
        &mut self,
        side: Side,
        cutoff: i64,
        range: (i64, i64),
    ) -> impl std::future::Future<Output = Result<Vec<RecordBatch>, CoreError>> + Send;
}

/// An event kept for partners still to come, with the cutoff in force when it was
/// processed.
#[derive(Debug)]
struct Kept {
    rows: RecordBatch,
    seen_cutoff: i64,
    /// When it was kept, among every kept event of both sides (see [`outer`]).
    seq: u64,
    /// A LEFT join's left events: those of `rows` no partner matched so far (see
    /// [`outer`]).
    alone: Option<outer::Alone>,
}

/// One side of a join view: the view's own stream (left) or the other (right).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Left,
    Right,
}

impl Side {
    pub(crate) fn index(self) -> usize {
        match self {
            Side::Left => 0,
            Side::Right => 1,
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        }
    }
}

/// What a join view keeps between micro-batches.
#[derive(Debug)]
pub(crate) struct JoinState<A> {
    /// The compiled view these rows are for (a replaced view starts afresh).
    pub(crate) view: Arc<CompiledView>,
    /// Per side: events processed at or above the cutoff, by `_ingest_ts` bucket.
    kept: [BTreeMap<i64, Vec<Kept>>; 2],
    /// Where events below the cutoff are found.
    archive: A,
    /// Events read while the store's cutoff was provisional (a view added at runtime,
    /// before a batch run proved everything below it archived), in reading order: they
    /// are paired once it is, as if read then.
    pending: Vec<(Side, i64, Vec<RecordBatch>)>,
    /// Why pairs were left out since last asked (see `quarantine::join_isolating`).
    failed: Vec<CoreError>,
    /// A LEFT join: the cutoff its unmatched rows were last weighed under (see
    /// [`outer`]; a moved cutoff weighs every bucket again).
    weighed_at: Option<i64>,
    /// A LEFT join: per bucket, the negated states of older left events whose first
    /// partner is in it, as last weighed (see [`outer`]).
    taken_back: BTreeMap<i64, Vec<RecordBatch>>,
    /// How many events were kept so far: each kept batch's number ([`Kept::seq`]).
    seq: u64,
}

/// The states a micro-batch's events made, by the segment bucket they belong to.
pub(crate) type PairStates = Vec<(i64, Vec<RecordBatch>)>;

impl<A: Archive> JoinState<A> {
    pub(crate) fn new(view: Arc<CompiledView>, archive: A) -> Self {
        JoinState {
            view,
            kept: [BTreeMap::new(), BTreeMap::new()],
            archive,
            pending: Vec::new(),
            failed: Vec::new(),
            weighed_at: None,
            seq: 0,
            taken_back: BTreeMap::new(),
        }
    }

    /// The errors of the pairs left out since the last call.
    pub(crate) fn take_failures(&mut self) -> Vec<CoreError> {
        std::mem::take(&mut self.failed)
    }

    /// Hold `rows` (as [`JoinState::apply`] takes them) until the cutoff is proven.
    pub(crate) fn defer(&mut self, side: Side, bucket: i64, rows: Vec<RecordBatch>) {
        self.pending.push((side, bucket, rows));
    }

    /// Whether events wait for the cutoff to be proven.
    pub(crate) fn has_deferred(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The events deferred so far, in reading order.
    pub(crate) fn take_deferred(&mut self) -> Vec<(Side, i64, Vec<RecordBatch>)> {
        std::mem::take(&mut self.pending)
    }

    fn join(&self) -> &StreamJoin {
        self.view.stream_join().expect("a join view")
    }

    /// The event-time column and input schema of `side`.
    fn side_of(&self, side: Side) -> (&str, &SchemaRef) {
        let j = self.join();
        match side {
            Side::Left => (&self.view.event_time, &self.view.input_schema),
            Side::Right => (&j.other_event_time, &j.other_input_schema),
        }
    }

    /// Where partners of `side` events with event times in `[lo, hi]` lie, in the
    /// other side's event time: `right.ts - left.ts` is within the join's bound.
    fn partner_range(&self, side: Side, (lo, hi): (i64, i64)) -> (i64, i64) {
        let j = self.join();
        match side {
            Side::Left => (lo.saturating_add(j.lower_us), hi.saturating_add(j.upper_us)),
            Side::Right => (lo.saturating_sub(j.upper_us), hi.saturating_sub(j.lower_us)),
        }
    }

    /// The pairs `rows` (events of `side` in `_ingest_ts` bucket `bucket`, input
    /// layout, tagged as the speed layer's) make with what the other side holds, as
    /// states per segment bucket; then keep `rows` for the other side's later events.
    pub(crate) async fn apply(
        &mut self,
        side: Side,
        bucket: i64,
        rows: Vec<RecordBatch>,
        cutoff: i64,
    ) -> Result<PairStates, CoreError> {
        self.release_below(cutoff);
        let (ts_column, schema) = self.side_of(side);
        let rows = concat_batches(schema, &rows)?;
        let Some(span) = time_span(&rows, ts_column) else {
            return Ok(Vec::new());
        };
        let (lo, hi) = self.partner_range(side, span);
        let other = side.other();
        let other_ts = self.side_of(other).0.to_string();
        let mut out = Vec::new();
        if bucket >= cutoff {
            let mut partners = match cutoff {
                // No batch run yet: every event is this layer's.
                i64::MIN => Vec::new(),
                _ => self.archive.below(other, cutoff, (lo, hi)).await?,
            };
            // The archive hands back its slice of `[lo, hi]`; kept events are filtered here.
            let kept = self.kept_for(other, cutoff..=bucket, bucket);
            partners.extend(within(&kept, &other_ts, lo, hi)?);
            if !partners.is_empty() {
                out.push((bucket, self.pairs(side, &rows, partners).await?));
            }
        }
        let later: Vec<i64> = self.kept[other.index()]
            .range(bucket.saturating_add(1).max(cutoff)..)
            .map(|(b, _)| *b)
            .collect();
        for b in later {
            let partners = self.kept_for(other, b..=b, bucket);
            let partners = within(&partners, &other_ts, lo, hi)?;
            if !partners.is_empty() {
                out.push((b, self.pairs(side, &rows, partners).await?));
            }
        }
        if bucket >= cutoff && rows.num_rows() > 0 {
            self.kept[side.index()]
                .entry(bucket)
                .or_default()
                .push(Kept {
                    rows,
                    seen_cutoff: cutoff,
                    seq: self.seq,
                    alone: None,
                });
            self.seq += 1;
        }
        Ok(out)
    }

    /// Kept events of `side` in `buckets` that an event of bucket `bucket` pairs with
    /// (those processed while the cutoff was above it found it in the master table).
    fn kept_for(
        &self,
        side: Side,
        buckets: std::ops::RangeInclusive<i64>,
        bucket: i64,
    ) -> Vec<RecordBatch> {
        self.kept[side.index()]
            .range(buckets)
            .flat_map(|(_, kept)| kept.iter())
            .filter(|k| k.seen_cutoff <= bucket)
            .map(|k| k.rows.clone())
            .collect()
    }

    /// The states of the pairs `rows` make with `partners`; a pair the view cannot
    /// process is left out, its error kept for the caller to report.
    async fn pairs(
        &mut self,
        side: Side,
        rows: &RecordBatch,
        partners: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>, CoreError> {
        let mine = vec![rows.clone()];
        let (left, right) = match side {
            Side::Left => (mine, partners),
            Side::Right => (partners, mine),
        };
        let (states, failed) = join_isolating(&self.view, left, right).await?;
        self.failed.extend(failed);
        Ok(states)
    }

    /// The batch layer holds every pair below `cutoff`: events kept below it are in
    /// the master table now.
    pub(crate) fn release_below(&mut self, cutoff: i64) {
        for kept in &mut self.kept {
            *kept = kept.split_off(&cutoff);
        }
    }
}

/// The smallest and largest event time of `rows` (`None`: no rows with one).
fn time_span(rows: &RecordBatch, column: &str) -> Option<(i64, i64)> {
    let ts = event_times(rows, column)?;
    let lo = datafusion::arrow::compute::min(ts)?;
    let hi = datafusion::arrow::compute::max(ts)?;
    Some((lo, hi))
}

fn event_times<'a>(rows: &'a RecordBatch, column: &str) -> Option<&'a TimestampMicrosecondArray> {
    rows.column_by_name(column)?
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
}

/// The rows of `batches` whose event time is within `[lo, hi]`: only those can pair.
fn within(
    batches: &[RecordBatch],
    column: &str,
    lo: i64,
    hi: i64,
) -> Result<Vec<RecordBatch>, CoreError> {
    let mut out = Vec::new();
    for b in batches {
        let Some(ts) = event_times(b, column) else {
            continue;
        };
        let keep: BooleanArray = ts
            .iter()
            .map(|t| Some(t.is_some_and(|t| t >= lo && t <= hi)))
            .collect();
        if keep.true_count() == 0 {
            continue;
        }
        out.push(filter_record_batch(b, &keep)?);
    }
    Ok(out)
}
