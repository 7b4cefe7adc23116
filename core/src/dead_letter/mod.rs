//! Dead letters: every rejected record, with its reason, in a Delta table per stream.
//!
//! Records refused at ingest, records in the log that no longer validate (the
//! archiver's), rows of a backfill, and records a view could not process (the speed
//! layer's and the batch layer's quarantine) all land here, with where they came from.
//!
//! A sink either commits to Delta before it answers (direct: backfills, tests) or,
//! with a [spool](DeadLetterSink::with_spool), answers once the letters are durable in
//! a local redb file and moves them into Delta in the background, many writers' letters
//! per commit, exactly once (see `spool.rs`). The running processes use a spool, so a
//! request with one bad record costs about what a clean one does.
//!
//! Direct writes are group-committed: concurrent writers of a stream queue their
//! letters, and whoever takes the stream's commit lock commits everything queued in
//! one Delta commit and tells every waiter the outcome.

mod spool;
mod table;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::protocol::SaveMode;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, MutexGuard, oneshot};

use crate::error::CoreError;
use crate::shutdown::{Shutdown, TaskSet};
use crate::storage::Storage;
use crate::time::now_micros;
use spool::Spool;

/// One rejected record.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Where it came from: `http`, `log` (consumed from the log), `backfill`, or
    /// `view:<name>` (a record that view could not process).
    pub source: String,
    /// Its index in the request, or its log offset.
    pub index: Option<i64>,
    /// Its log partition, for records that were in the log.
    pub partition: Option<i64>,
    /// The field at fault, when one is.
    pub field: Option<String>,
    /// Why the record was refused: which field, what was expected.
    pub reason: String,
    /// The record as it arrived (empty when it could not be read back).
    pub raw: String,
}

/// The dead-letter table's Arrow schema.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "received_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("source", DataType::Utf8, false),
        Field::new("index", DataType::Int64, true),
        Field::new("field", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
        Field::new("partition", DataType::Int64, true),
    ]))
}

/// Most processes of one role that share a storage root (each has its own spool).
const MAX_SPOOLS_PER_ROLE: usize = 64;

/// Every spool file in `dir` but `own` that no running process holds.
fn orphan_spools(dir: &Path, own: &Path) -> Result<Vec<Spool>, CoreError> {
    let entries = std::fs::read_dir(dir).map_err(|e| CoreError::DeadLetterSpool {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let mut orphans = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path == own || path.extension().is_none_or(|x| x != "redb") {
            continue;
        }
        match Spool::open(&path) {
            Ok(Some(spool)) => orphans.push(spool),
            Ok(None) => {}
            // One unreadable file must not stop the process; its letters wait.
            Err(e) => tracing::warn!(error = %e, "skipping a dead-letter spool"),
        }
    }
    Ok(orphans)
}

/// Dead-letter tables are checkpointed at every this many versions.
const CHECKPOINT_EVERY: u64 = 100;

/// A background flush waits this long before it reads the spool, so that the letters
/// of many requests share one Delta commit.
const FLUSH_GATHER: Duration = Duration::from_millis(250);
/// A failing flush retries after this long at first, doubling up to [`FLUSH_BACKOFF_MAX`].
const FLUSH_BACKOFF: Duration = Duration::from_secs(1);
const FLUSH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// One Delta commit of a flush takes at most this many letters, or about this many bytes.
const FLUSH_MAX_LETTERS: usize = 20_000;
const FLUSH_MAX_BYTES: usize = 64 << 20;

/// Letters waiting for the next group commit, each batch with the writer to tell.
type Pending = Vec<(Vec<StoredLetter>, oneshot::Sender<Result<(), String>>)>;

/// Per stream: the queue of letters not yet committed and the commit lock.
#[derive(Default)]
struct StreamQueue {
    pending: std::sync::Mutex<Pending>,
    /// Held by the writer committing the queue, by a flush of the spool, and by a
    /// replay while it reads and rewrites the table, so no write slips between. It
    /// guards the open table: a commit brings it up to date incrementally instead of
    /// replaying the whole Delta log, which cost more with every commit.
    commit: Arc<Mutex<Option<deltalake::DeltaTable>>>,
    /// Set while a background flush of this stream's spooled letters runs, so that
    /// one runs at a time and every append after it started is left to it.
    flushing: AtomicBool,
}

/// Writes dead letters; one commit per stream at a time, shared by concurrent writers.
#[derive(Clone)]
pub struct DeadLetterSink {
    storage: Storage,
    queues: Arc<HashMap<String, Arc<StreamQueue>>>,
    /// Where letters wait for Delta, when this sink answers before the Delta commit.
    spool: Option<Arc<Spool>>,
    /// Where the spool's background flushes run and when they must end.
    background: Background,
}

/// The supervision of a sink's background work (spool flushes, writes handed off by
/// callers that must not wait for them).
#[derive(Clone, Default)]
struct Background {
    /// The process's request-task set: its shutdown waits for a flush in progress
    /// (and aborts it at the deadline, which makes the stop unclean).
    tasks: TaskSet,
    /// Cancelled when the process stops: a flush stops waiting, moves what the spool
    /// holds once, and ends; what it could not move stays durable for the next start.
    stop: Shutdown,
}

impl std::fmt::Debug for DeadLetterSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterSink")
            .field("streams", &self.queues.keys().collect::<Vec<_>>())
            .field("spooled", &self.spool.is_some())
            .finish()
    }
}

impl DeadLetterSink {
    /// A direct sink: every write returns once its letters are in Delta.
    pub fn new(storage: Storage, streams: impl IntoIterator<Item = String>) -> Self {
        let queues = streams
            .into_iter()
            .map(|s| (s, Arc::new(StreamQueue::default())))
            .collect();
        DeadLetterSink {
            storage,
            queues: Arc::new(queues),
            spool: None,
            background: Background::default(),
        }
    }

    /// Run this sink's background work in `tasks` and end it when `stop` fires.
    /// Call it before [`Self::with_spool`], which starts the first flushes. Without
    /// it the work runs in a task set nobody waits for (benches, tests).
    #[must_use]
    pub fn supervised(mut self, tasks: TaskSet, stop: Shutdown) -> Self {
        self.background = Background { tasks, stop };
        self
    }

    /// Run `fut`, a write to this sink that its caller must not wait for (a letter
    /// found while a micro-batch runs), among the sink's supervised tasks.
    pub fn spawn_write<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.background.tasks.spawn(fut);
    }

    /// Answer writes once the letters are durable in a spool file of `role` in `dir`
    /// and move them into Delta in the background. Each process takes the first of
    /// the role's spool files no running process holds (several processes of a role may
    /// share a storage root), moves what a previous run left in it, and moves the
    /// letters of every other spool file no process holds (a process that is gone, of
    /// any role). Call it inside a Tokio runtime.
    pub fn with_spool(mut self, dir: &Path, role: &str) -> Result<Self, CoreError> {
        let mut own = None;
        for slot in 0..MAX_SPOOLS_PER_ROLE {
            let path = dir.join(format!("dead-letters-{role}-{slot}.redb"));
            match Spool::open(&path) {
                Ok(Some(spool)) => {
                    own = Some(spool);
                    break;
                }
                Ok(None) => {}
                // A damaged file (a torn disk write, a stray file of that name) must not
                // stop the process at every start: it is left as it is, for its letters
                // to be recovered by hand, and the next slot is used.
                Err(e) => {
                    tracing::error!(error = %e, "dead-letter spool unreadable; left in place, using the next one")
                }
            }
        }
        let own = own.ok_or_else(|| CoreError::DeadLetterSpool {
            path: dir.display().to_string(),
            message: format!(
                "all {MAX_SPOOLS_PER_ROLE} spool files of role `{role}` are held by running processes"
            ),
        })?;
        let own_path = own.path().to_path_buf();
        self.spool = Some(Arc::new(own));
        for stream in self.queues.keys() {
            self.kick(stream);
        }
        let orphans = orphan_spools(dir, &own_path)?;
        if !orphans.is_empty() {
            let sink = self.clone();
            self.background
                .tasks
                .spawn(async move { sink.drain_orphans(orphans).await });
        }
        Ok(self)
    }

    fn queue(&self, stream: &str) -> Result<&Arc<StreamQueue>, CoreError> {
        self.queues
            .get(stream)
            .ok_or_else(|| CoreError::UnknownStream(stream.to_string()))
    }

    /// Held while a replay reads and rewrites the table, so no write slips between.
    pub async fn lock(
        &self,
        stream: &str,
    ) -> Result<MutexGuard<'_, Option<deltalake::DeltaTable>>, CoreError> {
        Ok(self.queue(stream)?.commit.lock().await)
    }

    /// Store `letters`; returns once they are durable: in the spool when this sink
    /// has one, else committed to Delta. An error means they were not stored.
    pub async fn write(&self, stream: &str, letters: Vec<DeadLetter>) -> Result<(), CoreError> {
        if letters.is_empty() {
            return Ok(());
        }
        let queue = self.queue(stream)?.clone();
        let now = now_micros();
        let stored = letters
            .into_iter()
            .map(|l| StoredLetter {
                received_at: now,
                source: l.source,
                index: l.index,
                partition: l.partition,
                field: l.field,
                reason: l.reason,
                raw: l.raw,
            })
            .collect::<Vec<_>>();
        if let Some(spool) = &self.spool {
            spool.append(stream, &stored).await?;
            self.kick(stream);
            return Ok(());
        }
        let (tx, mut rx) = oneshot::channel();
        queue
            .pending
            .lock()
            .expect("dead-letter queue")
            .push((stored, tx));
        loop {
            tokio::select! {
                biased;
                outcome = &mut rx => {
                    return match outcome {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(message)) => Err(dl_err(stream, message)),
                        Err(_) => Err(dl_err(stream, "the commit was abandoned")),
                    };
                }
                mut guard = queue.commit.clone().lock_owned() => {
                    let batch = std::mem::take(&mut *queue.pending.lock().expect("dead-letter queue"));
                    if batch.is_empty() {
                        // An earlier leader took ours; its outcome is on the channel.
                        drop(guard);
                        continue;
                    }
                    // The commit runs in its own task, so a client that goes away mid-way
                    // (its request future dropped) cannot abandon the other waiters.
                    let sink = self.clone();
                    let name = stream.to_string();
                    let commit = tokio::spawn(async move {
                        let (letters, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                        let letters: Vec<StoredLetter> = letters.into_iter().flatten().collect();
                        let outcome = sink
                            .commit_with(&name, &letters, SaveMode::Append, &mut guard, None)
                            .await
                            .map_err(|e| e.to_string());
                        for w in waiters {
                            let _ = w.send(outcome.clone());
                        }
                        drop(guard);
                    });
                    let _ = commit.await;
                }
            }
        }
    }

    /// Move every letter spooled so far for `stream` into Delta, then return (direct
    /// sinks have nothing to move). Readers that must see a write just answered call it.
    pub async fn flush(&self, stream: &str) -> Result<(), CoreError> {
        if self.spool.is_none() {
            return Ok(());
        }
        let mut table = self.lock(stream).await?;
        self.flush_locked(stream, &mut table).await
    }

    /// [`Self::flush`] for a caller that holds [`Self::lock`] and passes its guard.
    pub async fn flush_locked(
        &self,
        stream: &str,
        table: &mut Option<deltalake::DeltaTable>,
    ) -> Result<(), CoreError> {
        match &self.spool {
            Some(spool) => self.flush_spool(spool, stream, table).await,
            None => Ok(()),
        }
    }

    /// Move the letters `spool` holds for `stream` into Delta, exactly once; the
    /// caller holds [`Self::lock`] and passes its guard.
    async fn flush_spool(
        &self,
        spool: &Spool,
        stream: &str,
        table: &mut Option<deltalake::DeltaTable>,
    ) -> Result<(), CoreError> {
        loop {
            let batch = spool
                .oldest(stream, FLUSH_MAX_LETTERS, FLUSH_MAX_BYTES)
                .await?;
            let Some(&(last, _)) = batch.last() else {
                return Ok(());
            };
            // A crash after the Delta commit and before the spool forgot the letters
            // leaves them in both: the commit's `txn` says how far Delta already has.
            let committed = self
                .committed_version(stream, spool.app_id(), table)
                .await?
                .and_then(|v| u64::try_from(v).ok());
            let letters: Vec<StoredLetter> = batch
                .into_iter()
                .filter(|(seq, _)| committed.is_none_or(|c| *seq > c))
                .map(|(_, l)| l)
                .collect();
            if !letters.is_empty() {
                let version = i64::try_from(last).map_err(|e| dl_err(stream, e))?;
                // `committed_version` has just brought the table up to date.
                let fresh = table
                    .take()
                    .expect("committed_version leaves the table open");
                let txn = Some((spool.app_id(), version));
                *table = Some(
                    self.write_to(stream, &letters, SaveMode::Append, fresh, txn)
                        .await?,
                );
            }
            spool.remove_through(stream, last).await?;
        }
    }

    /// Move the letters of spools left by processes that are gone, then let them go.
    async fn drain_orphans(&self, orphans: Vec<Spool>) {
        for spool in orphans {
            for stream in self.queues.keys() {
                let mut wait = FLUSH_BACKOFF;
                loop {
                    let outcome = match self.queue(stream) {
                        Ok(queue) => {
                            let mut table = queue.commit.lock().await;
                            self.flush_spool(&spool, stream, &mut table).await
                        }
                        Err(e) => Err(e),
                    };
                    match outcome {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(stream, spool = %spool.path().display(), error = %e,
                                retry_in = ?wait, "could not move a left-over dead-letter spool into Delta");
                            tokio::select! {
                                () = tokio::time::sleep(wait) => {}
                                // The spool stays on disk; the next start moves it.
                                () = self.background.stop.cancelled() => return,
                            }
                            wait = (wait * 2).min(FLUSH_BACKOFF_MAX);
                        }
                    }
                }
            }
            tracing::info!(spool = %spool.path().display(), "moved a left-over dead-letter spool into Delta");
        }
    }

    /// How many letters of `stream` are durable in the spool and not yet in Delta.
    pub async fn spooled(&self, stream: &str) -> Result<u64, CoreError> {
        match &self.spool {
            Some(spool) => spool.len(stream).await,
            None => Ok(0),
        }
    }

    /// Start a background flush of `stream` unless one runs.
    fn kick(&self, stream: &str) {
        let Ok(queue) = self.queue(stream) else {
            return;
        };
        if self.spool.is_none() || queue.flushing.swap(true, Ordering::SeqCst) {
            return;
        }
        let (sink, queue, stream) = (self.clone(), queue.clone(), stream.to_string());
        self.background
            .tasks
            .spawn(async move { sink.drain(&queue, &stream).await });
    }

    /// The background flush: move the spool into Delta until it is empty, retrying
    /// with backoff while Delta fails (the letters stay durable in the spool).
    async fn drain(&self, queue: &StreamQueue, stream: &str) {
        let mut wait = FLUSH_GATHER;
        loop {
            let stopping = tokio::select! {
                () = tokio::time::sleep(wait) => false,
                () = self.background.stop.cancelled() => true,
            };
            let outcome = {
                let mut table = queue.commit.lock().await;
                self.flush_locked(stream, &mut table).await
            };
            if stopping {
                if let Err(e) = outcome {
                    tracing::warn!(stream, error = %e,
                        "stopping with dead letters in the spool: the next start moves them into Delta");
                }
                queue.flushing.store(false, Ordering::SeqCst);
                return;
            }
            if let Err(e) = outcome {
                wait = if wait < FLUSH_BACKOFF {
                    FLUSH_BACKOFF
                } else {
                    (wait * 2).min(FLUSH_BACKOFF_MAX)
                };
                tracing::warn!(stream, error = %e, retry_in = ?wait,
                    "dead letters stay in the spool: could not move them into Delta");
                continue;
            }
            wait = FLUSH_GATHER;
            queue.flushing.store(false, Ordering::SeqCst);
            // An append that came after the flush read the spool saw `flushing` set and
            // left its letters to this task: look again before going away.
            if matches!(self.spooled(stream).await, Ok(0))
                || queue.flushing.swap(true, Ordering::SeqCst)
            {
                return;
            }
        }
    }
}

/// A dead letter as the table holds it (and as the spool keeps it, in JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLetter {
    /// Microseconds since the epoch.
    pub received_at: i64,
    /// Where it came from (see [`DeadLetter::source`]).
    pub source: String,
    /// Its index in the request, or its log offset.
    pub index: Option<i64>,
    /// Its log partition, for records that were in the log.
    pub partition: Option<i64>,
    /// The field at fault, when one is.
    pub field: Option<String>,
    /// Why the record was refused.
    pub reason: String,
    /// The record as it arrived.
    pub raw: String,
}

fn dl_err(stream: &str, e: impl std::fmt::Display) -> CoreError {
    CoreError::DeadLetter {
        stream: stream.to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests;
