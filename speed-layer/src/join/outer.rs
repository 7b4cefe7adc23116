//! A LEFT join's unmatched rows in the speed layer: per `_ingest_ts` bucket `k` at or
//! above the cutoff `T`, the weights the core's `outer_join` module derives, computed
//! afresh from the events this layer holds (kept, `≥ T`) and the master table (`< T`):
//!
//! - **+1** for each left event of bucket `k` that no right event of a bucket `≤ k`
//!   matches;
//! - **−1** for each left event of a bucket `< k` that a right event of bucket `k`
//!   matches and no right event of a bucket `< k` does (its first partner is in `k`).
//!
//! A bucket's weights depend only on the events of buckets `≤ k`, so they are weighed
//! again for every bucket from the one a micro-batch's events fall in (and for all of
//! them when the cutoff moved: what was not read yet may now be in the master table),
//! and replace what the store held for that bucket. Every event of both streams is
//! eventually read, so every bucket's weights end up those of all events.
//!
//! Weighing again is not recomputing everything: under one cutoff a left event that
//! has a partner keeps it, so each kept batch of left events remembers which of its
//! events are still alone (and their states), and only right events kept since are
//! matched against them; a bucket's −1 weights are kept too and weighed again only when
//! right events arrive at or before it (left events of a bucket are nobody's first
//! match in it).

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::{concat_batches, filter_record_batch, not};
use datafusion::arrow::record_batch::RecordBatch;
use tributary_core::CoreError;
use tributary_core::quarantine::{matched_isolating, unmatched_isolating};

use super::{Archive, JoinState, Side, time_span, within};

/// The events of one kept batch of left events that no partner matched so far, as of
/// a cutoff and of the kept events numbered below `seen`.
#[derive(Debug)]
pub(crate) struct Alone {
    cutoff: i64,
    seen: u64,
    rows: RecordBatch,
    /// The states of their unmatched rows.
    states: Vec<RecordBatch>,
}

/// Weights per bucket, each replacing the bucket's previous ones.
pub(crate) type Weights = Vec<(i64, Vec<RecordBatch>)>;

impl<A: Archive> JoinState<A> {
    /// A LEFT join's weights of every bucket from `from` on (all of them when the cutoff
    /// moved since the last call) that holds events of either stream, once events of
    /// `side` were kept in bucket `from`.
    pub(crate) async fn unmatched_since(
        &mut self,
        side: Side,
        from: i64,
        cutoff: i64,
    ) -> Result<Weights, CoreError> {
        if !self.view.outer_join() {
            return Ok(Vec::new());
        }
        let moved = self.weighed_at != Some(cutoff);
        if moved {
            self.taken_back = self.taken_back.split_off(&cutoff);
        }
        let from = match moved {
            false => from.max(cutoff),
            true => cutoff,
        };
        self.weighed_at = Some(cutoff);
        if !moved && side == Side::Left {
            self.add_first_matches(from, cutoff).await?;
        }
        let mut buckets: Vec<i64> = self
            .kept
            .iter()
            .flat_map(|k| k.range(from..).map(|(b, _)| *b))
            .collect();
        buckets.sort_unstable();
        buckets.dedup();
        let mut out = Vec::new();
        for k in buckets {
            let mut states = self.first_unmatched(k, cutoff).await?;
            // New left events are no older partners' first match in any bucket, and
            // their own first matches were added above.
            let same = !moved && side == Side::Left;
            let taken_back = match self.taken_back.get(&k) {
                Some(cached) if same => cached.clone(),
                _ => {
                    let t = self.first_matched_in(k, cutoff).await?;
                    let t = match t.is_empty() {
                        true => t,
                        false => self.view.negate_states(t)?,
                    };
                    self.taken_back.insert(k, t.clone());
                    t
                }
            };
            states.extend(taken_back);
            if states.len() > 1 {
                states = self.view.reduce(states).await?;
            }
            out.push((k, states));
        }
        Ok(out)
    }

    /// The left events just kept in bucket `b` whose first partner is in a later
    /// bucket: their −1 weights added to those buckets' kept ones (a bucket not
    /// weighed yet is weighed in full, these events included, when it is).
    async fn add_first_matches(&mut self, b: i64, cutoff: i64) -> Result<(), CoreError> {
        let Some(newest) = self.kept[Side::Left.index()].get(&b).and_then(|v| v.last()) else {
            return Ok(());
        };
        if newest.seq.checked_add(1) != Some(self.seq) {
            // Nothing was kept by this micro-batch (below the cutoff, or no rows).
            return Ok(());
        }
        self.first_unmatched(b, cutoff).await?;
        let newest = self.kept[Side::Left.index()][&b]
            .last()
            .expect("checked above");
        let mut rows = newest.alone.as_ref().expect("weighed above").rows.clone();
        let later: Vec<i64> = self.kept[Side::Right.index()]
            .range(b.saturating_add(1)..)
            .map(|(k, _)| *k)
            .collect();
        for k in later {
            let Some(span) = time_span(&rows, self.side_of(Side::Left).0) else {
                break;
            };
            let (lo, hi) = self.partner_range(Side::Left, span);
            let right = within(
                &[self.kept_rows(Side::Right, k..=k)?],
                self.side_of(Side::Right).0,
                lo,
                hi,
            )?;
            if right.is_empty() {
                continue;
            }
            let hit = self.matches(&rows, right).await?;
            if hit.true_count() == 0 {
                continue;
            }
            if self.taken_back.contains_key(&k) {
                let first = self.unmatched(filter_record_batch(&rows, &hit)?).await?;
                let mut states = self.view.negate_states(first)?;
                states.extend(self.taken_back.remove(&k).unwrap_or_default());
                if states.len() > 1 {
                    states = self.view.reduce(states).await?;
                }
                self.taken_back.insert(k, states);
            }
            rows = filter_record_batch(&rows, &not(&hit)?)?;
        }
        Ok(())
    }

    /// The events of `side` held in `buckets`, as one batch.
    fn kept_rows(
        &self,
        side: Side,
        buckets: impl std::ops::RangeBounds<i64>,
    ) -> Result<RecordBatch, CoreError> {
        let rows: Vec<RecordBatch> = self.kept[side.index()]
            .range(buckets)
            .flat_map(|(_, kept)| kept.iter().map(|k| k.rows.clone()))
            .collect();
        Ok(concat_batches(self.side_of(side).1, &rows)?)
    }

    /// The events of `side` in `buckets` (kept) or below the cutoff (master table) whose
    /// event time is within `[lo, hi]`.
    async fn candidates(
        &mut self,
        side: Side,
        cutoff: i64,
        buckets: std::ops::Range<i64>,
        (lo, hi): (i64, i64),
    ) -> Result<Vec<RecordBatch>, CoreError> {
        let mut rows = match cutoff {
            i64::MIN => Vec::new(),
            _ => self.archive.below(side, cutoff, (lo, hi)).await?,
        };
        let kept: Vec<RecordBatch> = self.kept[side.index()]
            .range(buckets)
            .flat_map(|(_, kept)| kept.iter().map(|k| k.rows.clone()))
            .collect();
        rows.extend(within(&kept, self.side_of(side).0, lo, hi)?);
        Ok(rows)
    }

    /// Which of `left` a row of `right` matches, pairs that fail left out (reported).
    async fn matches(
        &mut self,
        left: &RecordBatch,
        right: Vec<RecordBatch>,
    ) -> Result<BooleanArray, CoreError> {
        let (hit, failed) = matched_isolating(&self.view, left, right).await?;
        self.failed.extend(failed);
        Ok(hit)
    }

    /// The states of `left`'s unmatched rows, rows that fail left out (reported).
    async fn unmatched(&mut self, left: RecordBatch) -> Result<Vec<RecordBatch>, CoreError> {
        if left.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let (states, failed) = unmatched_isolating(&self.view, left).await?;
        self.failed.extend(failed);
        Ok(states)
    }

    /// Weight +1: left events of bucket `k` without a partner in a bucket `≤ k`. Each
    /// kept batch remembers which of its events are still alone (and their states);
    /// under the same cutoff that set only shrinks, so only right events kept since
    /// are matched against it.
    async fn first_unmatched(
        &mut self,
        k: i64,
        cutoff: i64,
    ) -> Result<Vec<RecordBatch>, CoreError> {
        let n = self.kept[Side::Left.index()].get(&k).map_or(0, Vec::len);
        let mut states = Vec::new();
        for i in 0..n {
            let entry = &mut self.kept[Side::Left.index()].get_mut(&k).expect("counted")[i];
            let (rows, before) = (entry.rows.clone(), entry.alone.take());
            let alone = match before {
                Some(a) if a.cutoff == cutoff => self.still_alone(a, k, cutoff).await?,
                _ => self.alone_from_scratch(rows, k, cutoff).await?,
            };
            states.extend(alone.states.iter().cloned());
            self.kept[Side::Left.index()].get_mut(&k).expect("counted")[i].alone = Some(alone);
        }
        Ok(states)
    }

    /// Which of `rows` (left events of bucket `k`) no right event of a bucket `≤ k`
    /// matches, from everything held.
    async fn alone_from_scratch(
        &mut self,
        rows: RecordBatch,
        k: i64,
        cutoff: i64,
    ) -> Result<Alone, CoreError> {
        let seen = self.seq;
        let Some(span) = time_span(&rows, self.side_of(Side::Left).0) else {
            return self.alone(rows, cutoff, seen).await;
        };
        let range = self.partner_range(Side::Left, span);
        let partners = self
            .candidates(Side::Right, cutoff, cutoff..k.saturating_add(1), range)
            .await?;
        let hit = self.matches(&rows, partners).await?;
        let rows = filter_record_batch(&rows, &not(&hit)?)?;
        self.alone(rows, cutoff, seen).await
    }

    /// `a` less the events that right events kept since it was computed match.
    async fn still_alone(&mut self, a: Alone, k: i64, cutoff: i64) -> Result<Alone, CoreError> {
        let seen = self.seq;
        let newer: Vec<RecordBatch> = self.kept[Side::Right.index()]
            .range(cutoff..=k)
            .flat_map(|(_, kept)| kept.iter().filter(|e| e.seq >= a.seen))
            .map(|e| e.rows.clone())
            .collect();
        if newer.is_empty() {
            return Ok(Alone { seen, ..a });
        }
        let Some(span) = time_span(&a.rows, self.side_of(Side::Left).0) else {
            return Ok(Alone { seen, ..a });
        };
        let (lo, hi) = self.partner_range(Side::Left, span);
        let newer = within(&newer, self.side_of(Side::Right).0, lo, hi)?;
        if newer.is_empty() {
            return Ok(Alone { seen, ..a });
        }
        let hit = self.matches(&a.rows, newer).await?;
        if hit.true_count() == 0 {
            return Ok(Alone { seen, ..a });
        }
        let rows = filter_record_batch(&a.rows, &not(&hit)?)?;
        self.alone(rows, cutoff, seen).await
    }

    async fn alone(
        &mut self,
        rows: RecordBatch,
        cutoff: i64,
        seen: u64,
    ) -> Result<Alone, CoreError> {
        let states = self.unmatched(rows.clone()).await?;
        Ok(Alone {
            cutoff,
            seen,
            rows,
            states,
        })
    }

    /// Weight −1 (returned as the states to negate): left events of a bucket `< k` whose
    /// first partner is in bucket `k`.
    async fn first_matched_in(
        &mut self,
        k: i64,
        cutoff: i64,
    ) -> Result<Vec<RecordBatch>, CoreError> {
        let right = self.kept_rows(Side::Right, k..=k)?;
        let Some(span) = time_span(&right, self.side_of(Side::Right).0) else {
            return Ok(Vec::new());
        };
        let range = self.partner_range(Side::Right, span);
        let older = self
            .candidates(Side::Left, cutoff, cutoff..k, range)
            .await?;
        let older = concat_batches(self.side_of(Side::Left).1, &older)?;
        if older.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let hit = self.matches(&older, vec![right]).await?;
        let met = filter_record_batch(&older, &hit)?;
        let Some(span) = time_span(&met, self.side_of(Side::Left).0) else {
            return Ok(Vec::new());
        };
        let range = self.partner_range(Side::Left, span);
        let before = self
            .candidates(Side::Right, cutoff, cutoff..k, range)
            .await?;
        let earlier = self.matches(&met, before).await?;
        let first = filter_record_batch(&met, &not(&earlier)?)?;
        self.unmatched(first).await
    }
}
