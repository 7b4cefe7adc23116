//! The embedded event log: redb on local disk, one table per stream partition, whose
//! values are chunks of records (see `chunk`: one insert per group commit and partition).
//!
//! redb gives crash-safe, checksummed transactions with fsync on commit, so a
//! `kill -9` never loses a committed append or corrupts the file. Appends go through
//! one writer thread that gathers every request waiting at that moment into a single
//! transaction (group commit): one fsync acknowledges many concurrent HTTP requests.
//!
//! `_ingest_ts` is stamped by the writer under the clock lock, from a clock that never
//! goes backwards (the wall clock, raised to the last stamp), so it never decreases
//! within a partition. [`EventLog::ingest_ts_bound`] reads the clock under the same
//! lock before it looks at the partition's end, which is what lets a batch cutoff prove
//! that no unseen record can land below it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use redb::{
    Database, ReadableDatabase, ReadableTable, TableDefinition, TableError, WriteTransaction,
};
use tokio::sync::oneshot;
use tributary_core::error::{CoreError, Result};
use tributary_core::log::{AppendAck, Assignment, EventLog, LogBatch, LogRecord, NewRecord};
use tributary_core::time::now_micros;

use super::chunk::{self, ChunkBuilder, chunk_table};

const POSITIONS: TableDefinition<&str, u64> = TableDefinition::new("positions");

fn partition_table(stream: &str, partition: u32) -> String {
    chunk_table(stream, partition)
}

pub(crate) fn log_err(e: impl std::fmt::Display) -> CoreError {
    CoreError::Log(e.to_string())
}

struct AppendRequest {
    table: String,
    payloads: Vec<Vec<u8>>,
    reply: oneshot::Sender<Result<AppendAck>>,
}

/// The embedded event log: one redb database under the storage root, group-committed.
pub struct EmbeddedLog {
    db: Arc<Database>,
    /// The database file, whose size retention bounds.
    path: std::path::PathBuf,
    /// `None` only while dropping, so the writer thread sees the channel close.
    writer: Option<std::sync::mpsc::Sender<AppendRequest>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    /// Last `_ingest_ts` handed out; held while a group commit is in flight.
    clock: Arc<Mutex<i64>>,
    partitions: HashMap<String, u32>,
    /// Bumped by the writer after each group commit: the speed layer in this process
    /// wakes on it rather than at its next poll (freshness).
    appended: tokio::sync::watch::Sender<u64>,
}

/// The page cache of [`EmbeddedLog::open`] (`log.cache-mb`'s default). Readers follow
/// the tail, so a small cache holds what they re-read; redb's own default (1 GiB) only
/// keeps pages nobody will read again resident in the process.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

impl EmbeddedLog {
    /// Open (or create) the log in `dir` for the given streams and partition counts,
    /// with the default page cache.
    pub fn open(dir: &Path, streams: &[(String, u32)]) -> Result<EmbeddedLog> {
        EmbeddedLog::open_with_cache(dir, streams, DEFAULT_CACHE_BYTES)
    }

    /// [`EmbeddedLog::open`] with a page cache of `cache_bytes` (at least one page).
    pub fn open_with_cache(
        dir: &Path,
        streams: &[(String, u32)],
        cache_bytes: usize,
    ) -> Result<EmbeddedLog> {
        std::fs::create_dir_all(dir).map_err(log_err)?;
        let path = dir.join("events.redb");
        let db = Database::builder()
            .set_cache_size(cache_bytes.max(4096))
            .create(&path)
            .map_err(|e| {
                // Say what to do: the two causes need different hands.
                let hint = match e {
                    redb::DatabaseError::DatabaseAlreadyOpen => {
                        "another tributary process uses this storage root"
                    }
                    _ => "the file is damaged: restore it from a backup, or move it aside to start an empty log (its records not yet archived are lost)",
                };
                CoreError::Log(format!(
                    "cannot open the embedded log at {}: {e} ({hint})",
                    path.display()
                ))
            })?;
        let db = Arc::new(db);
        {
            // A log written before chunks: its records move into chunks once, here.
            let txn = db.begin_write().map_err(log_err)?;
            let moved = chunk::migrate_record_tables(&txn, streams)?;
            txn.commit().map_err(log_err)?;
            if moved > 0 {
                tracing::info!(records = moved, "embedded log moved into the chunk layout");
            }
        }
        let mut last = 0i64;
        {
            let read = db.begin_read().map_err(log_err)?;
            for (stream, n) in streams {
                for p in 0..*n {
                    let name = partition_table(stream, p);
                    let def: TableDefinition<u64, &[u8]> = TableDefinition::new(&name);
                    match read.open_table(def) {
                        Ok(t) => {
                            if let Some((_, v)) = t.last().map_err(log_err)? {
                                last = last.max(decode_ts(v.value()));
                            }
                        }
                        Err(TableError::TableDoesNotExist(_)) => {}
                        Err(e) => return Err(log_err(e)),
                    }
                }
            }
        }
        let clock = Arc::new(Mutex::new(last));
        let (tx, rx) = std::sync::mpsc::channel::<AppendRequest>();
        let writer_db = db.clone();
        let writer_clock = clock.clone();
        let appended = tokio::sync::watch::Sender::new(0u64);
        let writer_appended = appended.clone();
        let writer_thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer_loop(writer_db, writer_clock, rx, writer_appended))
            .map_err(log_err)?;
        Ok(EmbeddedLog {
            db,
            path,
            writer: Some(tx),
            writer_thread: Some(writer_thread),
            clock,
            partitions: streams.iter().cloned().collect(),
            appended,
        })
    }

    fn check(&self, stream: &str, partition: u32) -> Result<()> {
        match self.partitions.get(stream) {
            None => Err(CoreError::UnknownStream(stream.to_string())),
            Some(n) if partition >= *n => Err(CoreError::Log(format!(
                "stream `{stream}` has {n} partitions, not {}",
                partition + 1
            ))),
            Some(_) => Ok(()),
        }
    }

    fn blocking<T, F>(&self, f: F) -> impl Future<Output = Result<T>> + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .map_err(log_err)?
        }
    }
}

impl Drop for EmbeddedLog {
    /// Close the writer and wait for it, so the database file is released when the
    /// log is dropped (a reopen in the same process would otherwise be refused).
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

fn decode_ts(value: &[u8]) -> i64 {
    i64::from_le_bytes(
        value[..8]
            .try_into()
            .expect("records start with 8 timestamp bytes"),
    )
}

/// Most records one truncation removes: a removal holds the write lock (appends wait),
/// so a large backlog goes over several retention passes instead of in one long stall.
const MAX_TRUNCATE: u64 = 1_000_000;

/// The offsets `first..stop` a truncation removes: records below `before` (and below the
/// newest, from which the next offset is derived) ingested before `ingested_before`.
/// `_ingest_ts` never decreases within a partition, so they are a prefix: the scan reads
/// up to its end only, in a read transaction, not every record below `before` (a full
/// scan under the write lock every retention pass stalled appends as the log grew).
fn removable_prefix(
    db: &Database,
    name: &str,
    before: u64,
    ingested_before: i64,
) -> Result<Option<(u64, u64)>> {
    let read = db.begin_read().map_err(log_err)?;
    let def: TableDefinition<u64, &[u8]> = TableDefinition::new(name);
    let table = match read.open_table(def) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(log_err(e)),
    };
    let (first, next) = (chunk::first_offset(&table)?, chunk::end_offset(&table)?);
    let Some(last) = next.checked_sub(1).filter(|l| *l >= first) else {
        return Ok(None);
    };
    let end = before.min(last).min(first.saturating_add(MAX_TRUNCATE));
    let mut stop = end;
    // A chunk's records share one stamp: the first chunk stamped at or after the bound
    // ends the prefix.
    for entry in table.range(first..end).map_err(log_err)? {
        let (k, v) = entry.map_err(log_err)?;
        if chunk::Chunk::parse(v.value())?.ts >= ingested_before {
            stop = k.value();
            break;
        }
    }
    Ok((stop > first).then_some((first, stop)))
}

fn writer_loop(
    db: Arc<Database>,
    clock: Arc<Mutex<i64>>,
    rx: std::sync::mpsc::Receiver<AppendRequest>,
    appended: tokio::sync::watch::Sender<u64>,
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        let mut guard = clock.lock().expect("clock lock");
        let ts = now_micros().max(*guard);
        let result = commit_group(&db, ts, &group);
        match result {
            Ok(acks) => {
                *guard = ts;
                drop(guard);
                // Before the answers: once an append returns, readers can see the signal.
                appended.send_modify(|n| *n = n.wrapping_add(1));
                for (req, ack) in group.into_iter().zip(acks) {
                    let _ = req.reply.send(Ok(ack));
                }
            }
            Err(e) => {
                drop(guard);
                let msg = e.to_string();
                for req in group {
                    let _ = req.reply.send(Err(CoreError::LogUnavailable(msg.clone())));
                }
            }
        }
    }
}

fn commit_group(db: &Database, ts: i64, group: &[AppendRequest]) -> Result<Vec<AppendAck>> {
    let txn: WriteTransaction = db.begin_write().map_err(log_err)?;
    let mut acks = Vec::with_capacity(group.len());
    {
        let mut next: HashMap<&str, u64> = HashMap::new();
        for req in group {
            let def: TableDefinition<u64, &[u8]> = TableDefinition::new(&req.table);
            let mut table = txn.open_table(def).map_err(log_err)?;
            let start = match next.get(req.table.as_str()) {
                Some(n) => *n,
                None => chunk::end_offset(&table)?,
            };
            // One chunk per request, a big request in several (see `chunk`'s size cap).
            let mut chunk_start = start;
            let mut chunk = ChunkBuilder::new(ts);
            for p in &req.payloads {
                chunk.push(p)?;
                if chunk.is_full() {
                    table
                        .insert(chunk_start, chunk.finish().as_slice())
                        .map_err(log_err)?;
                    chunk_start += chunk.len();
                    chunk = ChunkBuilder::new(ts);
                }
            }
            if chunk.len() > 0 {
                table
                    .insert(chunk_start, chunk.finish().as_slice())
                    .map_err(log_err)?;
            }
            next.insert(&req.table, start + req.payloads.len() as u64);
            acks.push(AppendAck {
                first_offset: start,
                count: req.payloads.len(),
                ingest_ts: ts,
            });
        }
    }
    txn.commit().map_err(log_err)?;
    Ok(acks)
}

#[async_trait]
impl EventLog for EmbeddedLog {
    fn appended(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.appended.subscribe())
    }

    async fn truncate(
        &self,
        stream: &str,
        partition: u32,
        before: u64,
        ingested_before: i64,
    ) -> Result<u64> {
        self.check(stream, partition)?;
        let name = partition_table(stream, partition);
        self.blocking(move |db| {
            let Some((first, stop)) = removable_prefix(db, &name, before, ingested_before)? else {
                // Nothing to remove: no write transaction, so appends never wait for one.
                return Ok(0);
            };
            let txn = db.begin_write().map_err(log_err)?;
            let removed = chunk::remove_prefix(&txn, &name, stop)?;
            txn.commit().map_err(log_err)?;
            debug_assert_eq!(removed, stop - first, "offsets are dense");
            Ok(removed)
        })
        .await
    }

    fn disk_bytes(&self) -> Option<u64> {
        std::fs::metadata(&self.path).ok().map(|m| m.len())
    }

    async fn append_records(
        &self,
        stream: &str,
        partition: u32,
        records: Vec<NewRecord>,
    ) -> Result<AppendAck> {
        self.check(stream, partition)?;
        // Keys only choose the partition, which the caller already did.
        let payloads = records.into_iter().map(|r| r.payload).collect();
        let (reply, rx) = oneshot::channel();
        self.writer
            .as_ref()
            .expect("writer present until drop")
            .send(AppendRequest {
                table: partition_table(stream, partition),
                payloads,
                reply,
            })
            .map_err(|_| CoreError::LogUnavailable("the log writer has stopped".into()))?;
        rx.await
            .map_err(|_| CoreError::LogUnavailable("the log writer has stopped".into()))?
    }

    async fn read(&self, stream: &str, partition: u32, from: u64, max: usize) -> Result<LogBatch> {
        self.check(stream, partition)?;
        let name = partition_table(stream, partition);
        self.blocking(move |db| {
            let read = db.begin_read().map_err(log_err)?;
            let def: TableDefinition<u64, &[u8]> = TableDefinition::new(&name);
            let table = match read.open_table(def) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => {
                    return Ok(LogBatch {
                        records: Vec::new(),
                        next_offset: from,
                        expired: None,
                    });
                }
                Err(e) => return Err(log_err(e)),
            };
            let out = chunk::read(&table, from, max)?;
            let next_offset = out.last().map_or(from, |r: &LogRecord| r.offset + 1);
            // Offsets are dense here: a first record past `from` means truncation
            // removed the ones between.
            let expired = out
                .first()
                .filter(|r| r.offset > from)
                .map(|r| from..r.offset);
            Ok(LogBatch {
                records: out,
                next_offset,
                expired,
            })
        })
        .await
    }

    async fn end_offset(&self, stream: &str, partition: u32) -> Result<u64> {
        self.check(stream, partition)?;
        let name = partition_table(stream, partition);
        self.blocking(move |db| {
            let read = db.begin_read().map_err(log_err)?;
            let def: TableDefinition<u64, &[u8]> = TableDefinition::new(&name);
            match read.open_table(def) {
                Ok(t) => chunk::end_offset(&t),
                Err(TableError::TableDoesNotExist(_)) => Ok(0),
                Err(e) => Err(log_err(e)),
            }
        })
        .await
    }

    async fn first_offset(&self, stream: &str, partition: u32) -> Result<u64> {
        self.check(stream, partition)?;
        let name = partition_table(stream, partition);
        self.blocking(move |db| {
            let read = db.begin_read().map_err(log_err)?;
            let def: TableDefinition<u64, &[u8]> = TableDefinition::new(&name);
            match read.open_table(def) {
                Ok(t) => chunk::first_offset(&t),
                Err(TableError::TableDoesNotExist(_)) => Ok(0),
                Err(e) => Err(log_err(e)),
            }
        })
        .await
    }

    async fn offset_for_ingest_ts(&self, stream: &str, partition: u32, ts: i64) -> Result<u64> {
        self.check(stream, partition)?;
        let name = partition_table(stream, partition);
        self.blocking(move |db| {
            let read = db.begin_read().map_err(log_err)?;
            let def: TableDefinition<u64, &[u8]> = TableDefinition::new(&name);
            let table = match read.open_table(def) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(log_err(e)),
            };
            let end = chunk::end_offset(&table)?;
            // `_ingest_ts` is non-decreasing in offset order: binary search. Offsets
            // retention removed were ingested before every record still held.
            let (mut lo, mut hi) = (0u64, end);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                let at = chunk::ts_at(&table, mid)?.unwrap_or(i64::MIN);
                if at < ts {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            Ok(lo)
        })
        .await
    }

    async fn ingest_ts_bound(&self, stream: &str, partition: u32, offset: u64) -> Result<i64> {
        self.check(stream, partition)?;
        // The clock first: anything appended after this is stamped at or after it.
        let clock = self.clock.clone();
        let floor = tokio::task::spawn_blocking(move || {
            let mut guard = clock.lock().expect("clock lock");
            let floor = now_micros().max(*guard);
            *guard = floor;
            floor
        })
        .await
        .map_err(log_err)?;
        // Then what is already there, from `offset` on (non-decreasing, so the first).
        let first = self.read(stream, partition, offset, 1).await?;
        Ok(first
            .records
            .first()
            .map_or(floor, |r| r.ingest_ts.min(floor)))
    }

    async fn commit_position(
        &self,
        consumer: &str,
        stream: &str,
        partition: u32,
        offset: u64,
    ) -> Result<()> {
        self.check(stream, partition)?;
        let key = format!("{consumer}/{stream}/{partition}");
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(log_err)?;
            {
                let mut t = txn.open_table(POSITIONS).map_err(log_err)?;
                t.insert(key.as_str(), offset).map_err(log_err)?;
            }
            txn.commit().map_err(log_err)
        })
        .await
    }

    async fn position(&self, consumer: &str, stream: &str, partition: u32) -> Result<Option<u64>> {
        self.check(stream, partition)?;
        let key = format!("{consumer}/{stream}/{partition}");
        self.blocking(move |db| {
            let read = db.begin_read().map_err(log_err)?;
            match read.open_table(POSITIONS) {
                Ok(t) => Ok(t.get(key.as_str()).map_err(log_err)?.map(|v| v.value())),
                Err(TableError::TableDoesNotExist(_)) => Ok(None),
                Err(e) => Err(log_err(e)),
            }
        })
        .await
    }

    async fn assignment(&self, _group: &str, stream: &str) -> Result<Assignment> {
        let n = *self
            .partitions
            .get(stream)
            .ok_or_else(|| CoreError::UnknownStream(stream.to_string()))?;
        Ok(Assignment {
            partitions: (0..n).collect(),
            generation: 0,
        })
    }
}
