//! The speed layer's consumer: micro-batches from the log into the view stores, as a
//! struct with named steps ([`Consumer::start`], [`Consumer::snapshot_if_due`],
//! [`Consumer::report_if_due`], [`Consumer::micro_batch`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tributary_core::config::SpeedConfig;
use tributary_core::log::{EventLog, LogRecord, retry_unavailable};
use tributary_core::pipeline::Pipeline;
use tributary_core::schema::StreamSchema;
use tributary_core::shutdown::Shutdown;

use crate::join::feed::{join_failed, pair_deferred, pair_into};
use crate::join::master::MasterArchive;
use crate::join::{JoinState, Side};
use crate::store::ViewStore;
use tributary_core::view::{SOURCE_SPEED, tag_source};

use crate::{
    Deduplicator, SPEED_GROUP, SpeedError, SpeedLayer, compact, decode, max_event_time, snapshot,
    states_setting_aside,
};

/// Consume the log until shutdown, keeping `layer`'s states current.
///
/// With `speed.snapshot-interval-ms` set, states are snapshotted under `snapshots` that
/// often and the newest snapshot is resumed from at start ([`snapshot`]).
pub async fn run(
    config: SpeedConfig,
    pipeline: Pipeline,
    log: Arc<dyn EventLog>,
    layer: SpeedLayer,
    snapshots: Option<std::path::PathBuf>,
    shutdown: Shutdown,
) -> Result<(), SpeedError> {
    // A view joining two streams keeps raw events besides its states; a snapshot holds
    // states only, so with such a view the layer rebuilds from the batch cutoff.
    let joins = pipeline.views.iter().any(|v| v.stream_join().is_some());
    if joins && snapshots.is_some() && config.snapshot_interval_ms > 0 {
        tracing::info!("a view joins two streams: speed snapshots are not written or resumed");
    }
    let snapshots = snapshots.filter(|_| config.snapshot_interval_ms > 0 && !joins);
    let decode_threads = match config.decode_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut consumer = Consumer {
        idle: Duration::from_millis(config.poll_interval_ms.max(1)),
        appended: log.appended(),
        config,
        pipeline,
        log,
        layer,
        snapshots,
        shutdown,
        positions: HashMap::new(),
        dedups: HashMap::new(),
        decode_threads,
        started: Instant::now(),
        reported: Instant::now(),
        snapshotted: Instant::now(),
        events_at_report: HashMap::new(),
        joins: HashMap::new(),
    };
    if !consumer.start().await? {
        return Ok(());
    }
    while !consumer.shutdown.is_cancelled() {
        consumer.pipeline.refresh_tables().await;
        consumer.snapshot_if_due();
        consumer.report_if_due().await;
        let (mut any, mut at_end) = (false, true);
        for i in 0..consumer.pipeline.streams.len() {
            match consumer.micro_batch(i).await? {
                None => return Ok(()),
                Some(step) => {
                    any |= step.events > 0;
                    at_end &= step.at_end;
                }
            }
        }
        // A batch cutoff may have proven a join view's provisional one meanwhile,
        // with no new event to pair its deferred ones.
        consumer.pair_deferred().await;
        if at_end {
            consumer.caught_up();
        }
        if !any && !consumer.idle().await {
            break;
        }
    }
    Ok(())
}

/// One stream's read of a round: every owned partition from its position.
#[derive(Default)]
struct Read {
    /// The records, per partition that had any.
    partitions: Vec<(u32, Vec<LogRecord>)>,
    events: u64,
    /// Newest `_ingest_ts` among them.
    newest: i64,
    /// Every partition's read returned fewer records than it asked for: it reached the
    /// end of what the log held at that moment.
    at_end: bool,
}

/// One `_ingest_ts` bucket of a micro-batch's events of one stream.
struct Events<'a> {
    bucket: i64,
    /// In master layout.
    batches: &'a [datafusion::arrow::record_batch::RecordBatch],
    count: u64,
    /// Newest event time among them.
    max_event_ts: Option<i64>,
}

/// What one micro-batch did.
struct Step {
    events: u64,
    at_end: bool,
}

/// The consumer's state between micro-batches.
struct Consumer {
    config: SpeedConfig,
    pipeline: Pipeline,
    log: Arc<dyn EventLog>,
    layer: SpeedLayer,
    /// Where snapshots go, when `speed.snapshot-interval-ms` is set.
    snapshots: Option<std::path::PathBuf>,
    shutdown: Shutdown,
    /// The next offset to read, per (stream, partition).
    positions: HashMap<(String, u32), u64>,
    /// Per stream with an id field: the dedup state of each partition.
    dedups: HashMap<String, HashMap<u32, Deduplicator>>,
    decode_threads: usize,
    /// Wait this long when the log has nothing new ...
    idle: Duration,
    /// ... unless the log (embedded, same process) says it took an append before.
    appended: Option<tokio::sync::watch::Receiver<u64>>,
    /// When the consumer started (recovery time is measured from here).
    started: Instant,
    reported: Instant,
    snapshotted: Instant,
    /// Events per stream at the last report, for the rate.
    events_at_report: HashMap<String, u64>,
    /// Per view joining two streams: the events it keeps for partners to come.
    joins: HashMap<String, JoinState<MasterArchive>>,
}

impl Consumer {
    /// Resume from a snapshot, or start each partition at the oldest cutoff of the
    /// stream's views: everything below it is in every view's batch states already.
    /// `Ok(false)`: the log is shutting down.
    async fn start(&mut self) -> Result<bool, SpeedError> {
        let restored = match &self.snapshots {
            Some(dir) => snapshot::restore(dir, &self.layer, &self.pipeline).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "speed snapshot unusable; rebuilding from the log");
                HashMap::new()
            }),
            None => HashMap::new(),
        };
        if !restored.is_empty() {
            self.layer.restored.store(true, Ordering::Relaxed);
            tracing::info!(streams = ?restored.keys().collect::<Vec<_>>(), "speed layer resumed from a snapshot");
        }
        for s in &self.pipeline.streams {
            let mut start = self
                .pipeline
                .views_of(&s.name)
                .iter()
                .filter_map(|v| self.layer.store.view(&v.name).map(|st| st.cutoff()))
                .min()
                .unwrap_or(i64::MIN);
            if let Some(spec) = &s.dedup {
                // Ids seen within the horizon before the cutoff decide what counts above it.
                start = start.saturating_sub(spec.horizon_us);
                let partitions = (0..s.partitions).map(|p| (p, Deduplicator::new(spec.clone())));
                self.dedups.insert(s.name.clone(), partitions.collect());
            }
            let shard = self.layer.shard();
            for p in (0..s.partitions).filter(|p| shard.owns(*p)) {
                if let Some(offset) = restored.get(&s.name).and_then(|r| r.get(&p)) {
                    self.positions.insert((s.name.clone(), p), *offset);
                    continue;
                }
                let found = retry_unavailable("speed layer start", &self.shutdown, || {
                    self.log.offset_for_ingest_ts(&s.name, p, start)
                })
                .await
                .map_err(|source| SpeedError::read(&s.name, p, source))?;
                let Some(offset) = found else {
                    return Ok(false);
                };
                self.positions.insert((s.name.clone(), p), offset);
            }
            self.publish_positions(&s.name);
        }
        Ok(true)
    }

    /// Let snapshots say which partitions and positions `stream`'s states cover.
    fn publish_positions(&self, stream: &str) {
        let held: std::collections::BTreeMap<u32, u64> = self
            .positions
            .iter()
            .filter(|((s, _), _)| s == stream)
            .map(|((_, p), offset)| (*p, *offset))
            .collect();
        *self.layer.progress[stream]
            .positions
            .lock()
            .expect("positions lock") = held;
    }

    /// Between micro-batches: the states hold exactly the records before `positions`.
    /// Not while a view joins two streams (one created at runtime too): its kept events
    /// are not in a snapshot, and a restart with it rebuilds from the cutoff anyway.
    fn snapshot_if_due(&mut self) {
        let Some(dir) = &self.snapshots else { return };
        if self.snapshotted.elapsed() < Duration::from_millis(self.config.snapshot_interval_ms) {
            return;
        }
        if self
            .pipeline
            .views
            .iter()
            .any(|v| v.stream_join().is_some())
        {
            return;
        }
        match snapshot::write(dir, &self.layer, &self.positions) {
            Ok(path) => tracing::debug!(path = %path.display(), "speed snapshot written"),
            Err(e) => tracing::warn!(error = %e, "speed snapshot failed"),
        }
        self.snapshotted = Instant::now();
    }

    async fn report_if_due(&mut self) {
        if self.reported.elapsed() < Duration::from_secs(1) {
            return;
        }
        report(
            &self.layer,
            self.log.as_ref(),
            &self.positions,
            &mut self.events_at_report,
            self.reported,
        )
        .await;
        self.reported = Instant::now();
    }

    /// One micro-batch of stream `index`: read every partition, decode, and update each
    /// of its views. `None`: the log is shutting down.
    async fn micro_batch(&mut self, index: usize) -> Result<Option<Step>, SpeedError> {
        let started = Instant::now();
        let s = self.pipeline.streams[index].clone();
        self.sync_views(&s);
        let Some(read) = self.read(&s).await? else {
            return Ok(None);
        };
        let step = Step {
            events: read.events,
            at_end: read.at_end,
        };
        if read.events == 0 {
            // Positions may still have moved (past records the log no longer holds).
            self.publish_positions(&s.name);
            return Ok(Some(step));
        }
        let decoded = decode::decode(
            &s,
            read.partitions,
            self.dedups.entry(s.name.clone()).or_default(),
            self.layer.segment_width,
            self.decode_threads,
        )
        .map_err(|source| SpeedError::View {
            view: s.name.clone(),
            source,
        })?;
        let progress = &self.layer.progress[&s.name];
        progress
            .invalid
            .fetch_add(decoded.invalid, Ordering::Relaxed);
        progress
            .duplicates
            .fetch_add(decoded.duplicates, Ordering::Relaxed);
        self.apply(&s, decoded.buckets).await;
        self.publish_positions(&s.name);
        compact(&self.layer, &s.name).await;
        let progress = &self.layer.progress[&s.name];
        progress.events.fetch_add(read.events, Ordering::Relaxed);
        progress
            .last_batch_events
            .store(read.events, Ordering::Relaxed);
        progress
            .last_batch_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        progress.ingest_ts.fetch_max(read.newest, Ordering::AcqRel);
        Ok(Some(step))
    }

    /// Views of `s` created, replaced or dropped at runtime since the last micro-batch.
    /// A new view's store holds states from the first segment boundary above both the
    /// clock and everything read of the stream so far: every event at or above it is
    /// read from now on, and everything below is the batch layer's to cover. Until a batch
    /// run's cutoff reaches it the store refuses older cutoffs, so the view answers only
    /// once it is exact.
    fn sync_views(&mut self, s: &StreamSchema) {
        let wanted = self.pipeline.views_of(&s.name);
        let store = &self.layer.store;
        for held in store.views() {
            let dropped =
                held.view.reads(&s.name) && !wanted.iter().any(|v| Arc::ptr_eq(v, &held.view));
            if dropped {
                store.remove(&held.view.name);
            }
        }
        // Events kept for a join view go with it (and start afresh when it is replaced).
        let held = store.views();
        self.joins
            .retain(|_, j| held.iter().any(|h| Arc::ptr_eq(&h.view, &j.view)));
        let read = self.layer.progress[&s.name]
            .ingest_ts
            .load(Ordering::Acquire);
        let w = self.layer.segment_width;
        for v in wanted {
            let current = store
                .view(&v.name)
                .is_some_and(|h| Arc::ptr_eq(&h.view, &v));
            if !current {
                let above = read.max(tributary_core::time::now_micros());
                let cutoff = (above.div_euclid(w) + 1) * w;
                tracing::info!(view = %v.name, cutoff, "speed layer holds a new view from this ingest time");
                store.add(v, cutoff);
            }
        }
    }

    /// Read each partition of `s` from its position (`None`: the log is shutting down).
    async fn read(&mut self, s: &StreamSchema) -> Result<Option<Read>, SpeedError> {
        let mut read = Read {
            at_end: true,
            ..Read::default()
        };
        let shard = self.layer.shard();
        let (log, max, shutdown) = (&self.log, self.config.max_batch_records, &self.shutdown);
        // All partitions at once: each read runs on the log's blocking threads, so on
        // several cores they overlap instead of queueing behind one another.
        let reads = (0..s.partitions).filter(|p| shard.owns(*p)).map(|p| {
            let from = self.positions[&(s.name.clone(), p)];
            async move {
                let batch = retry_unavailable("speed layer read", shutdown, || {
                    log.read(&s.name, p, from, max)
                })
                .await;
                (p, batch)
            }
        });
        for (p, batch) in futures::future::join_all(reads).await {
            let batch = batch.map_err(|source| SpeedError::read(&s.name, p, source))?;
            let Some(batch) = batch else { return Ok(None) };
            if let Some(gone) = &batch.expired {
                // Below the batch cutoff these are in the batch states already; above
                // it the archiver reports them lost too.
                tracing::warn!(stream = %s.name, partition = p, from = gone.start, to = gone.end, "the log's retention removed records before the speed layer read them");
            }
            self.positions
                .insert((s.name.clone(), p), batch.next_offset);
            // A full read may have left records behind; a shorter one reached the end.
            read.at_end &= batch.records.len() < max;
            let Some(last) = batch.records.last() else {
                continue;
            };
            read.newest = read.newest.max(last.ingest_ts);
            read.events += batch.records.len() as u64;
            read.partitions.push((p, batch.records));
        }
        Ok(Some(read))
    }

    /// Each segment bucket's records into every view of the stream: below a view's
    /// cutoff they only count; above, their partial states join the bucket.
    async fn apply(
        &mut self,
        s: &StreamSchema,
        buckets: std::collections::BTreeMap<i64, Vec<datafusion::arrow::record_batch::RecordBatch>>,
    ) {
        let view_columns: Vec<usize> = (0..s.view_schema().fields().len()).collect();
        // The stores, not the pipeline: a view created since `sync_views` joins at the
        // next micro-batch, with the cutoff chosen there.
        let mut stores = self.layer.store.views();
        stores.retain(|store| store.view.reads(&s.name));
        for (bucket, batches) in buckets {
            let n: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
            let max_event_ts = batches
                .iter()
                .filter_map(|b| max_event_time(b, &s.event_time, s.max_event_lead_us))
                .max();
            for store in &stores {
                let view = store.view.clone();
                if view.stream_join().is_some() {
                    let events = Events {
                        bucket,
                        batches: &batches,
                        count: n,
                        max_event_ts,
                    };
                    self.apply_join(s, store, events, &view_columns).await;
                    continue;
                }
                if bucket < store.cutoff() {
                    store.add(bucket, vec![], n, None, 0);
                    continue;
                }
                let watermark = store.watermark();
                let late = batches.iter().map(|b| view.count_late(b, watermark)).sum();
                let states = states_setting_aside(
                    &self.layer,
                    &self.log,
                    &s.name,
                    &view,
                    &batches,
                    &view_columns,
                )
                .await;
                store.add(bucket, states, n, max_event_ts, late);
            }
        }
    }

    /// One bucket's events of `s` into a view joining two streams: the pairs they make
    /// with what the view keeps of the other stream, each into the segment of its
    /// larger bucket (see `join`). A failure sets the bucket's events aside for this
    /// view (counted, the error reported); the records stay in the log and master table.
    async fn apply_join(
        &mut self,
        s: &StreamSchema,
        store: &Arc<ViewStore>,
        events: Events<'_>,
        view_columns: &[usize],
    ) {
        let view = store.view.clone();
        let join = view.stream_join().expect("a join view");
        let (side, input) = match view.stream == s.name {
            true => (Side::Left, &view.input_schema),
            false => (Side::Right, &join.other_input_schema),
        };
        let state = match self.joins.entry(view.name.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let stream = |name: &str| self.pipeline.stream(name).cloned();
                let (Some(left), Some(right)) = (stream(&view.stream), stream(&join.other)) else {
                    return;
                };
                let streams = [
                    (left, view.input_schema.clone()),
                    (right, join.other_input_schema.clone()),
                ];
                let archive = MasterArchive::new(self.layer.master.clone(), streams);
                e.insert(JoinState::new(view.clone(), archive))
            }
        };
        let rows: Result<Vec<_>, tributary_core::CoreError> = events
            .batches
            .iter()
            .map(|b| tag_source(&b.project(view_columns)?, SOURCE_SPEED, input))
            .collect();
        let late_and_newest = |store: &ViewStore| match side {
            // The view's windows are of its own stream's event time.
            Side::Left => {
                let watermark = store.watermark();
                let late = events
                    .batches
                    .iter()
                    .map(|b| view.count_late(b, watermark))
                    .sum();
                (late, events.max_event_ts)
            }
            Side::Right => (0, None),
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => return join_failed(store, events.count, e),
        };
        if !store.cutoff_proven() {
            // Partners below a provisional cutoff may not be archived yet: pair these
            // once a batch run has proven it (the view answers only from then on).
            state.defer(side, events.bucket, rows);
            let (late, newest) = late_and_newest(store);
            store.add(events.bucket, vec![], events.count, newest, late);
            return;
        }
        if let Err(e) = pair_deferred(state, store).await {
            return join_failed(store, events.count, e);
        }
        let (late, newest) = late_and_newest(store);
        match pair_into(state, store, side, events.bucket, rows).await {
            Ok(own) => {
                store.processed_cleanly();
                store.add(events.bucket, own, events.count, newest, late);
            }
            Err(e) => join_failed(store, events.count, e),
        }
    }

    /// Pair what join views deferred, for those whose cutoff is proven now.
    async fn pair_deferred(&mut self) {
        for (name, state) in &mut self.joins {
            let Some(store) = self.layer.store.view(name) else {
                continue;
            };
            if !state.has_deferred() || !Arc::ptr_eq(&store.view, &state.view) {
                continue;
            }
            if let Err(e) = pair_deferred(state, &store).await {
                join_failed(&store, 0, e);
            }
        }
    }

    /// Every partition's read of a round of micro-batches reached the end of what the
    /// log held then, and the states hold it: note the recovery time, once. A round
    /// that read nothing is one such round, but under steady traffic there may never
    /// be one, so reaching the end is what counts.
    fn caught_up(&self) {
        if self.layer.recovery_ms.load(Ordering::Relaxed) == u64::MAX {
            let ms = self.started.elapsed().as_millis() as u64;
            self.layer.recovery_ms.store(ms, Ordering::Relaxed);
            tracing::info!(recovery_ms = ms, "speed layer caught up with the log");
        }
    }

    /// Nothing new in the log: wait for an append or the poll interval. `false`: stop.
    async fn idle(&mut self) -> bool {
        let (slot, shutdown) = (&mut self.appended, &self.shutdown);
        let appended = async {
            match slot {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        // The log is gone: poll from now on (and stop on shutdown).
                        *slot = None;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(self.idle) => true,
            _ = appended => true,
        }
    }
}

/// Record positions (for the log's own lag tools; the speed layer itself restarts from
/// the batch cutoff), and sample lag and rate for health reporting.
async fn report(
    layer: &SpeedLayer,
    log: &dyn EventLog,
    positions: &HashMap<(String, u32), u64>,
    events_at_report: &mut HashMap<String, u64>,
    since: std::time::Instant,
) {
    let mut lag: HashMap<&str, std::collections::BTreeMap<u32, u64>> = HashMap::new();
    for ((stream, p), pos) in positions {
        if let Err(e) = log.commit_position(SPEED_GROUP, stream, *p, *pos).await {
            tracing::debug!(error = %e, "could not record the speed layer's position");
        }
        if let Ok(end) = log.end_offset(stream, *p).await {
            lag.entry(stream)
                .or_default()
                .insert(*p, end.saturating_sub(*pos));
        }
    }
    let secs = since.elapsed().as_secs_f64().max(1e-3);
    for (stream, progress) in layer.progress.iter() {
        let by_partition: Vec<u64> = lag
            .get(stream.as_str())
            .map(|m| m.values().copied().collect())
            .unwrap_or_default();
        progress
            .lag
            .store(by_partition.iter().sum(), Ordering::Relaxed);
        *progress.lag_by_partition.lock().expect("lag lock") = by_partition;
        let now = progress.events.load(Ordering::Relaxed);
        let before = events_at_report.insert(stream.clone(), now).unwrap_or(now);
        progress
            .events_per_second
            .store(((now - before) as f64 / secs) as u64, Ordering::Relaxed);
    }
}
