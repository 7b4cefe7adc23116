//! The speed layer's state store: per view, partial aggregate states in segments keyed
//! by `_ingest_ts` bucket.
//!
//! Batch cutoffs are aligned to bucket boundaries, so "the speed states at or above the
//! cutoff T" is exactly the set of segments whose bucket starts at or after T: serving
//! never needs part of a segment.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use datafusion::arrow::record_batch::RecordBatch;
use serde::Serialize;
use tributary_core::view::CompiledView;

/// Compact a segment once it holds this many state batches.
pub const COMPACT_AFTER: usize = 8;

/// The partial states of one `_ingest_ts` bucket of a view.
#[derive(Debug, Default, Clone)]
pub struct Segment {
    /// State batches in the view's state schema, not yet compacted into one.
    pub states: Vec<RecordBatch>,
    /// Events that went into these states.
    pub events: u64,
    /// A LEFT join of two streams: the weights of its unmatched rows in this bucket,
    /// computed afresh (replaced, never added to) as partners arrive.
    pub unmatched: Vec<RecordBatch>,
}

/// One view's segments, cutoff and counters, behind one lock.
#[derive(Debug)]
pub struct ViewStore {
    /// The compiled view whose partial plan made these states.
    pub view: Arc<CompiledView>,
    inner: RwLock<ViewInner>,
}

#[derive(Debug, Default)]
struct ViewInner {
    segments: BTreeMap<i64, Segment>,
    /// Events below this `_ingest_ts` belong to the batch layer.
    cutoff: i64,
    /// Whether every event below `cutoff` is known to be archived: a batch cutoff (or
    /// the start of the log), not yet the provisional one of a view added at runtime,
    /// until a batch run's cutoff reaches it. A view joining two streams reads its
    /// partners below the cutoff from the master table only once it is.
    proven: bool,
    /// Newest event time seen (microseconds).
    max_event_ts: Option<i64>,
    events: u64,
    ignored_below_cutoff: u64,
    /// Events that updated a window the watermark had already closed.
    late_events: u64,
    /// Changes whenever the states change: equal generations, equal answers.
    generation: u64,
    /// Records this view could not process (quarantined, dead-lettered).
    quarantined: u64,
    /// Micro-batches in a row of which the view could process no record at all.
    failing_batches: u32,
    /// The newest error the view met on a record.
    last_error: Option<String>,
}

/// After this many micro-batches in a row in which every record failed, a view is
/// reported `failed` (it keeps trying; one good record makes it `running` again).
pub const FAILED_AFTER: u32 = 3;

/// A view's health as status reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ViewState {
    /// Every record of the last micro-batch was processed.
    Running,
    /// Running, but some records were quarantined.
    Degraded,
    /// No record of its last micro-batches could be processed.
    Failed,
}

/// What serving takes from the speed layer for one view.
#[derive(Debug, Clone)]
pub struct SpeedSnapshot {
    /// The store's generation when the states were taken.
    pub generation: u64,
    /// States of every segment at or above the cutoff asked for.
    pub states: Vec<RecordBatch>,
    /// Newest event time the store has seen (microseconds), for the watermark.
    pub max_event_ts: Option<i64>,
    /// How many segments the states came from.
    pub segments: usize,
}

/// One view's speed-layer figures, for status and metrics.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ViewStats {
    /// The view's name.
    pub view: String,
    /// Segments held (one per `_ingest_ts` bucket at or above the cutoff).
    pub segments: usize,
    /// State rows over all segments.
    pub state_rows: usize,
    /// Memory the state batches take, in bytes.
    pub state_bytes: usize,
    /// Events that went into the states since start.
    pub events: u64,
    /// Events read below the batch cutoff (the batch layer's), not counted here.
    pub ignored_below_cutoff: u64,
    /// The batch cutoff the store holds states above (`_ingest_ts`, microseconds).
    pub cutoff: i64,
    /// Newest event time seen (microseconds).
    pub max_event_ts: Option<i64>,
    /// Newest event time seen minus the view's allowed lateness.
    pub watermark: Option<i64>,
    /// Events that updated a window the watermark had already closed.
    pub late_events: u64,
    /// Records the view could not process (quarantined, dead-lettered).
    #[serde(default)]
    pub quarantined: u64,
    /// The view's health.
    #[serde(default = "running")]
    pub state: ViewState,
    /// The newest error the view met on a record.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The catalog revision of the view these states are of (see
    /// `CompiledView::revision`).
    #[serde(default)]
    pub revision: i64,
}

fn running() -> ViewState {
    ViewState::Running
}

impl ViewStore {
    /// Count `count` quarantined records of a micro-batch of `of` records, with the
    /// error of the last.
    pub fn quarantine(&self, count: u64, of: u64, error: String) {
        let mut inner = self.inner.write().expect("store lock");
        inner.quarantined += count;
        inner.last_error = Some(error);
        if count >= of && of > 0 {
            inner.failing_batches = inner.failing_batches.saturating_add(1);
        } else {
            inner.failing_batches = 0;
        }
    }

    /// A micro-batch went through without a failure.
    pub fn processed_cleanly(&self) {
        let mut inner = self.inner.write().expect("store lock");
        inner.failing_batches = 0;
    }

    /// An empty store for `view`, holding states at or above `cutoff`, a batch cutoff.
    pub fn new(view: Arc<CompiledView>, cutoff: i64) -> Self {
        ViewStore {
            view,
            inner: RwLock::new(ViewInner {
                cutoff,
                proven: true,
                ..Default::default()
            }),
        }
    }

    /// An empty store for a view added at runtime, holding states from `cutoff`, which
    /// no batch run has proven archived yet (see [`ViewStore::cutoff_proven`]).
    pub fn provisional(view: Arc<CompiledView>, cutoff: i64) -> Self {
        let store = Self::new(view, cutoff);
        store.inner.write().expect("store lock").proven = false;
        store
    }

    /// Whether every event below the cutoff is archived (a batch run's cutoff reached
    /// it).
    pub fn cutoff_proven(&self) -> bool {
        self.inner.read().expect("store lock").proven
    }

    /// The batch cutoff: events below it belong to the batch layer.
    pub fn cutoff(&self) -> i64 {
        self.inner.read().expect("store lock").cutoff
    }

    /// The view's watermark: newest event time seen minus its allowed lateness.
    pub fn watermark(&self) -> Option<i64> {
        let max = self.inner.read().expect("store lock").max_event_ts;
        self.view.watermark(max)
    }

    /// Add states computed from `events` events of one bucket, `late` of which updated
    /// windows the watermark had already closed.
    pub fn add(
        &self,
        bucket: i64,
        states: Vec<RecordBatch>,
        events: u64,
        max_event_ts: Option<i64>,
        late: u64,
    ) {
        let mut inner = self.inner.write().expect("store lock");
        if bucket < inner.cutoff {
            inner.ignored_below_cutoff += events;
            return;
        }
        inner.events += events;
        inner.late_events += late;
        inner.generation += 1;
        inner.max_event_ts = match (inner.max_event_ts, max_event_ts) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let seg = inner.segments.entry(bucket).or_default();
        seg.states.extend(states);
        seg.events += events;
    }

    /// Replace a LEFT join's weights of unmatched rows in `bucket` (ignored below the
    /// cutoff: the batch layer holds those).
    pub fn set_unmatched(&self, bucket: i64, states: Vec<RecordBatch>) {
        let mut inner = self.inner.write().expect("store lock");
        if bucket < inner.cutoff {
            return;
        }
        inner.generation += 1;
        inner.segments.entry(bucket).or_default().unmatched = states;
    }

    /// Buckets whose segments have grown enough to compact, with their states.
    pub fn to_compact(&self) -> Vec<(i64, Vec<RecordBatch>)> {
        let inner = self.inner.read().expect("store lock");
        inner
            .segments
            .iter()
            .filter(|(_, s)| s.states.len() >= COMPACT_AFTER)
            .map(|(b, s)| (*b, s.states.clone()))
            .collect()
    }

    /// Replace the first `replaced` state batches of a segment with `compacted`
    /// (states added meanwhile are kept).
    pub fn replace(&self, bucket: i64, replaced: usize, compacted: Vec<RecordBatch>) {
        let mut inner = self.inner.write().expect("store lock");
        if let Some(seg) = inner.segments.get_mut(&bucket)
            && seg.states.len() >= replaced
        {
            let rest = seg.states.split_off(replaced);
            seg.states = compacted;
            seg.states.extend(rest);
            inner.generation += 1;
        }
    }

    /// States of every segment at or above `cutoff`.
    pub fn snapshot(&self, cutoff: i64) -> SpeedSnapshot {
        self.snapshot_since(cutoff, None)
    }

    /// [`ViewStore::snapshot`], but without the states when the store is still at
    /// generation `known`: a reader that holds an answer computed from them need not
    /// copy them again (serving asks this on every request).
    pub fn snapshot_since(&self, cutoff: i64, known: Option<u64>) -> SpeedSnapshot {
        let inner = self.inner.read().expect("store lock");
        let mut states = Vec::new();
        let mut segments = 0;
        let unchanged = known == Some(inner.generation);
        for seg in inner.segments.range(cutoff..).map(|(_, s)| s) {
            if !unchanged {
                states.extend(seg.states.iter().cloned());
                states.extend(seg.unmatched.iter().cloned());
            }
            segments += 1;
        }
        SpeedSnapshot {
            generation: inner.generation,
            states,
            max_event_ts: inner.max_event_ts,
            segments,
        }
    }

    /// Every segment and the newest event time, for a snapshot.
    pub fn export(&self) -> (Vec<(i64, Segment)>, Option<i64>) {
        let inner = self.inner.read().expect("store lock");
        (
            inner
                .segments
                .iter()
                .map(|(b, s)| (*b, s.clone()))
                .collect(),
            inner.max_event_ts,
        )
    }

    /// Take segments from a snapshot; those below the cutoff are the batch layer's.
    pub fn import(&self, segments: Vec<(i64, Segment)>, max_event_ts: Option<i64>) {
        let mut inner = self.inner.write().expect("store lock");
        for (bucket, seg) in segments {
            if bucket < inner.cutoff {
                continue;
            }
            inner.events += seg.events;
            inner.segments.insert(bucket, seg);
        }
        inner.max_event_ts = inner.max_event_ts.max(max_event_ts);
        inner.generation += 1;
    }

    /// The batch layer now covers everything below `cutoff`: drop those segments and
    /// ignore such events from now on.
    pub fn release_below(&self, cutoff: i64) {
        let mut inner = self.inner.write().expect("store lock");
        if cutoff >= inner.cutoff {
            inner.proven = true;
        }
        if cutoff <= inner.cutoff {
            return;
        }
        inner.cutoff = cutoff;
        let before = inner.segments.len();
        inner.segments = inner.segments.split_off(&cutoff);
        if inner.segments.len() != before {
            inner.generation += 1;
        }
    }

    /// The view's figures now.
    pub fn stats(&self) -> ViewStats {
        let inner = self.inner.read().expect("store lock");
        let mut state_rows = 0;
        let mut state_bytes = 0;
        for s in inner.segments.values() {
            for b in s.states.iter().chain(&s.unmatched) {
                state_rows += b.num_rows();
                state_bytes += b.get_array_memory_size();
            }
        }
        ViewStats {
            view: self.view.name.clone(),
            segments: inner.segments.len(),
            state_rows,
            state_bytes,
            events: inner.events,
            ignored_below_cutoff: inner.ignored_below_cutoff,
            cutoff: inner.cutoff,
            max_event_ts: inner.max_event_ts,
            watermark: self.view.watermark(inner.max_event_ts),
            late_events: inner.late_events,
            quarantined: inner.quarantined,
            state: if inner.failing_batches >= FAILED_AFTER {
                ViewState::Failed
            } else if inner.quarantined > 0 {
                ViewState::Degraded
            } else {
                ViewState::Running
            },
            last_error: inner.last_error.clone(),
            revision: self.view.revision,
        }
    }
}

/// Every view's store, shared between the speed layer's loop and its readers. Views
/// created at runtime get a store when the loop next passes their stream
/// ([`StateStore::add`]); dropped ones lose theirs ([`StateStore::remove`]).
#[derive(Debug, Clone, Default)]
pub struct StateStore {
    views: Arc<RwLock<HashMap<String, Arc<ViewStore>>>>,
}

impl StateStore {
    /// A store per view, each starting at its batch cutoff (all events are the speed
    /// layer's when no batch run has committed one).
    pub fn new(views: &[Arc<CompiledView>], cutoffs: &HashMap<String, i64>) -> Self {
        let map = views
            .iter()
            .map(|v| {
                let cutoff = cutoffs.get(&v.name).copied().unwrap_or(i64::MIN);
                (v.name.clone(), Arc::new(ViewStore::new(v.clone(), cutoff)))
            })
            .collect();
        StateStore {
            views: Arc::new(RwLock::new(map)),
        }
    }

    /// The store of view `name`.
    pub fn view(&self, name: &str) -> Option<Arc<ViewStore>> {
        self.views.read().expect("stores lock").get(name).cloned()
    }

    /// Every view's store.
    pub fn views(&self) -> Vec<Arc<ViewStore>> {
        self.views
            .read()
            .expect("stores lock")
            .values()
            .cloned()
            .collect()
    }

    /// A store for `view` added at runtime, holding states at or above `cutoff` (a
    /// provisional cutoff until a batch run's reaches it), replacing any store of its
    /// name.
    pub fn add(&self, view: Arc<CompiledView>, cutoff: i64) -> Arc<ViewStore> {
        let store = Arc::new(ViewStore::provisional(view.clone(), cutoff));
        self.views
            .write()
            .expect("stores lock")
            .insert(view.name.clone(), store.clone());
        store
    }

    /// Forget the store of view `name`.
    pub fn remove(&self, name: &str) {
        self.views.write().expect("stores lock").remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use tributary_core::config::{FieldConfig, StreamConfig, ViewConfig};
    use tributary_core::schema::StreamSchema;

    async fn view() -> Arc<CompiledView> {
        let f = |n: &str, t: &str| FieldConfig {
            name: n.into(),
            field_type: t.into(),
            nullable: false,
        };
        let stream = StreamSchema::from_config(
            &StreamConfig {
                name: "s".into(),
                fields: vec![f("k", "string"), f("ts", "timestamp")],
                event_time: "ts".into(),
                from_view: None,
                key: None,
                partitions: 1,
                id_field: None,
                dedup_horizon_ms: 0,
                max_string_bytes: 16 * 1024,
                max_event_lead_ms: 300_000,
            },
            "streams[0]",
        )
        .unwrap();
        let cfg = ViewConfig {
            name: "v".into(),
            sql: "SELECT k, date_bin(INTERVAL '1 minute', ts) AS w, count(*) AS n FROM s GROUP BY k, w".into(),
            allowed_lateness_ms: 0,
            schedule: None,
        };
        Arc::new(CompiledView::compile(&cfg, &[stream]).await.unwrap())
    }

    fn states(n: i64) -> Vec<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        vec![RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![n]))]).unwrap()]
    }

    #[tokio::test]
    async fn snapshot_takes_whole_segments_at_or_above_the_cutoff() {
        let store = ViewStore::new(view().await, i64::MIN);
        store.add(1_000, states(1), 1, Some(5), 0);
        store.add(2_000, states(2), 2, Some(9), 0);
        store.add(3_000, states(3), 3, Some(7), 0);
        let snap = store.snapshot(2_000);
        assert_eq!(snap.segments, 2);
        assert_eq!(snap.states.len(), 2);
        assert_eq!(snap.max_event_ts, Some(9));
        assert_eq!(store.snapshot(i64::MIN).segments, 3);
    }

    /// A view added at runtime holds events from a cutoff no batch run has proven:
    /// only a batch cutoff at or above it proves it (a join view waits for that).
    #[tokio::test]
    async fn a_provisional_cutoff_is_proven_by_a_batch_cutoff_reaching_it() {
        let proven = ViewStore::new(view().await, 1_000);
        assert!(proven.cutoff_proven());
        let store = ViewStore::provisional(view().await, 1_000);
        assert!(!store.cutoff_proven());
        store.release_below(500);
        assert!(
            !store.cutoff_proven(),
            "a batch cutoff below it proves nothing"
        );
        assert_eq!(store.cutoff(), 1_000);
        store.release_below(1_000);
        assert!(store.cutoff_proven());
        let added = StateStore::new(&[], &HashMap::new()).add(view().await, 2_000);
        assert!(!added.cutoff_proven(), "runtime stores start provisional");
    }

    #[tokio::test]
    async fn release_drops_covered_segments_and_ignores_late_arrivals_below() {
        let store = ViewStore::new(view().await, i64::MIN);
        store.add(1_000, states(1), 1, None, 0);
        store.add(2_000, states(2), 2, None, 0);
        store.release_below(2_000);
        let stats = store.stats();
        assert_eq!(stats.segments, 1);
        assert_eq!(stats.cutoff, 2_000);
        // An event replayed below the cutoff belongs to the batch layer.
        store.add(1_000, states(9), 4, None, 0);
        assert_eq!(store.stats().ignored_below_cutoff, 4);
        assert_eq!(store.snapshot(2_000).states.len(), 1);
        // Cutoffs never move backwards.
        store.release_below(1_000);
        assert_eq!(store.cutoff(), 2_000);
    }

    #[tokio::test]
    async fn replace_keeps_states_added_during_compaction() {
        let store = ViewStore::new(view().await, i64::MIN);
        for i in 0..COMPACT_AFTER as i64 {
            store.add(0, states(i), 1, None, 0);
        }
        let (bucket, old) = store.to_compact().pop().unwrap();
        store.add(0, states(100), 1, None, 0);
        store.replace(bucket, old.len(), states(-1));
        let snap = store.snapshot(0);
        assert_eq!(
            snap.states.len(),
            2,
            "compacted batch plus the one added meanwhile"
        );
    }

    #[tokio::test]
    async fn a_snapshot_since_the_current_generation_leaves_the_states_out() {
        let store = ViewStore::new(view().await, i64::MIN);
        store.add(1_000, states(1), 1, Some(5), 0);
        store.add(2_000, states(2), 2, Some(9), 0);
        let full = store.snapshot(1_000);
        let same = store.snapshot_since(1_000, Some(full.generation));
        assert_eq!(same.generation, full.generation);
        assert!(same.states.is_empty(), "the caller holds them");
        assert_eq!((same.segments, same.max_event_ts), (2, Some(9)));
        // Another generation (older, or any change since): the states are all there.
        let stale = store.snapshot_since(1_000, Some(full.generation.wrapping_sub(1)));
        assert_eq!(stale.states.len(), 2);
        store.add(2_000, states(3), 1, None, 0);
        let after = store.snapshot_since(1_000, Some(full.generation));
        assert_ne!(after.generation, full.generation);
        assert_eq!(after.states.len(), 3);
    }

    #[tokio::test]
    async fn generation_moves_with_every_change_of_states_only() {
        let store = ViewStore::new(view().await, i64::MIN);
        let g = |s: &ViewStore| s.snapshot(i64::MIN).generation;
        let g0 = g(&store);
        store.add(1_000, states(1), 1, None, 0);
        let g1 = g(&store);
        assert_ne!(g0, g1);
        assert_eq!(g1, g(&store), "reading changes nothing");
        store.release_below(1_000);
        assert_eq!(g1, g(&store), "a cutoff that drops nothing changes nothing");
        store.release_below(2_000);
        let g2 = g(&store);
        assert_ne!(g1, g2);
        store.add(1_000, states(9), 1, None, 0);
        assert_eq!(g2, g(&store), "events below the cutoff change no state");
    }
}
