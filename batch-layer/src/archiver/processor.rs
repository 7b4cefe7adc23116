//! One stream's archiver loop, as a struct with named steps: follow the assignment
//! ([`StreamArchiver::reload`] after every rebalance), [`StreamArchiver::read`] the
//! assigned partitions, [`StreamArchiver::stage`] what was read into the window, and
//! [`StreamArchiver::commit_if_due`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::DeltaTable;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use tributary_core::config::BatchConfig;
use tributary_core::dead_letter::{DeadLetter, DeadLetterSink};
use tributary_core::log::{Assignment, EventLog, retry_unavailable};
use tributary_core::schema::{BatchDecoder, LogPosition, StreamSchema};
use tributary_core::shutdown::Shutdown;
use tributary_core::storage::Storage;

use super::window::Window;
use super::{
    ARCHIVER_GROUP, Layout, archived_positions, create_master, report_positions, still_ours,
};
use crate::error::BatchError;

/// Records read from one log partition at a time. The size and record triggers are
/// checked after each read, so a commit overshoots them by at most one read (about 1 MB
/// of JSON per partition for small events).
const READ_RECORDS: usize = 16_384;

/// How long an idle archiver waits before asking the log again.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// Archive one stream until shutdown.
///
/// Records stream into open Parquet files (one per event date) that commit, with the
/// log positions after them, when they reach `target-file-mb`, when the oldest record
/// in them has waited `archive-flush-ms`, after `archive-flush-records` records, or on
/// shutdown (after the log is drained). A crash loses only uncommitted files, which no
/// reader sees; the archiver then resumes from the positions in the table.
pub async fn run_stream(
    config: BatchConfig,
    stream: StreamSchema,
    storage: Storage,
    log: Arc<dyn EventLog>,
    dead_letters: DeadLetterSink,
    shutdown: Shutdown,
) -> Result<(), BatchError> {
    let table = tributary_core::delta::open(storage.master_table(&stream.name))
        .await
        .map_err(|e| BatchError::delta(format!("master table of `{}`", stream.name), e))?;
    let per_read = config
        .archive_flush_records
        .div_ceil(stream.partitions as usize)
        .clamp(1, READ_RECORDS);
    let mut archiver = StreamArchiver {
        flush: Duration::from_millis(config.archive_flush_ms.max(1)),
        file_bytes: (config.target_file_mb.max(1) * 1024 * 1024) as usize,
        per_read,
        positions: vec![0; stream.partitions as usize],
        cursor: vec![0; stream.partitions as usize],
        window: Window::new(),
        generation: None,
        layout: Layout {
            merge_schema: false,
            dated: true,
        },
        config,
        stream,
        storage,
        log,
        dead_letters,
        shutdown,
        table,
    };
    archiver.run().await
}

/// One stream's archiver and what it holds between steps.
struct StreamArchiver {
    /// The commit triggers (`archive-flush-*`, `max-open-files`).
    config: BatchConfig,
    stream: StreamSchema,
    storage: Storage,
    log: Arc<dyn EventLog>,
    /// Records that fail validation go here before the data commit.
    dead_letters: DeadLetterSink,
    shutdown: Shutdown,
    /// The master table as of the last commit (or reload).
    table: DeltaTable,
    /// Committed positions (in the table), per partition.
    positions: Vec<u64>,
    /// Read positions: the committed ones plus what the window holds.
    cursor: Vec<u64>,
    window: Window,
    /// The assignment generation the positions were loaded for.
    generation: Option<u64>,
    layout: Layout,
    flush: Duration,
    file_bytes: usize,
    /// Most records per partition per read.
    per_read: usize,
}

/// What one pass over the assigned partitions read.
struct Read {
    decoder: BatchDecoder,
    letters: Vec<DeadLetter>,
    /// Some partition had records.
    any: bool,
    /// Some partition had more than one read's worth: read again without waiting.
    backlog: bool,
    /// The log went away (shutdown of the embedded log).
    log_gone: bool,
}

impl StreamArchiver {
    fn what(&self) -> String {
        format!("master table of `{}`", self.stream.name)
    }

    async fn run(&mut self) -> Result<(), BatchError> {
        loop {
            let Some(assigned) = self.assignment().await? else {
                return Ok(());
            };
            if self.generation != Some(assigned.generation) {
                self.reload(&assigned).await?;
            }
            let read = self.read(&assigned.partitions).await?;
            if read.any && !self.stage(read.decoder, read.letters).await? {
                continue;
            }
            let stopping = self.shutdown.is_cancelled() || read.log_gone;
            // On shutdown, commit only once the log is drained: a graceful stop leaves
            // nothing behind for the next start.
            let drained = stopping && !read.any;
            if !self.commit_if_due(drained).await? {
                continue;
            }
            if drained && self.window.is_empty() {
                return Ok(());
            }
            if !read.backlog && !stopping {
                self.idle().await;
            }
        }
    }

    /// The partitions this archiver owns now (`None`: the log is shutting down).
    async fn assignment(&self) -> Result<Option<Assignment>, BatchError> {
        retry_unavailable("archiver assignment", &self.shutdown, || {
            self.log.assignment(ARCHIVER_GROUP, &self.stream.name)
        })
        .await
        .map_err(|e| BatchError::Log(self.stream.name.clone(), e))
    }

    /// At start and after every rebalance the table is the truth, not the group's
    /// committed offsets nor what this process remembers.
    async fn reload(&mut self, assigned: &Assignment) -> Result<(), BatchError> {
        self.window.discard();
        let mut table = tributary_core::delta::open(self.storage.master_table(&self.stream.name))
            .await
            .map_err(|e| BatchError::delta(self.what(), e))?;
        if table.version().is_none() {
            table = create_master(table, &self.stream).await?;
        }
        let existing = table.version().is_some().then_some(&table);
        self.positions = archived_positions(existing, &self.stream).await?;
        self.cursor = self.positions.clone();
        self.layout = Layout::of(&table, &self.stream)?;
        self.table = table;
        if self.layout.merge_schema {
            tracing::info!(stream = %self.stream.name, "the stream has new nullable fields; the next commit adds them to the master table");
        }
        self.generation = Some(assigned.generation);
        tracing::info!(
            stream = %self.stream.name,
            partitions = ?assigned.partitions,
            positions = ?self.positions,
            "archiver resuming from the master table"
        );
        Ok(())
    }

    /// One read of each assigned partition from its cursor, decoded; records that fail
    /// validation become dead letters.
    async fn read(&mut self, partitions: &[u32]) -> Result<Read, BatchError> {
        let mut read = Read {
            decoder: BatchDecoder::new(&self.stream, true),
            letters: Vec::new(),
            any: false,
            backlog: false,
            log_gone: false,
        };
        for p in partitions.iter().copied() {
            let from = self.cursor[p as usize];
            let batch = retry_unavailable("archiver read", &self.shutdown, || {
                self.log.read(&self.stream.name, p, from, self.per_read)
            })
            .await
            .map_err(|e| BatchError::Log(self.stream.name.clone(), e))?;
            let Some(batch) = batch else {
                read.log_gone = true;
                break;
            };
            if batch.next_offset == from {
                continue;
            }
            read.any = true;
            if let Some(gone) = &batch.expired {
                read.letters.push(self.expired(p, gone));
            }
            read.backlog |= batch.records.len() >= self.per_read;
            self.cursor[p as usize] = batch.next_offset;
            self.window.next.insert(p, batch.next_offset);
            for r in batch.records {
                let at = LogPosition {
                    partition: p,
                    offset: r.offset,
                    ingest_ts: r.ingest_ts,
                };
                if let Err(e) = read.decoder.push_bytes(&r.payload, at) {
                    read.letters.push(DeadLetter {
                        source: "log".into(),
                        index: Some(r.offset as i64),
                        partition: Some(p as i64),
                        field: (!e.field.is_empty()).then_some(e.field),
                        reason: format!("partition {p} offset {}: {}", r.offset, e.reason),
                        raw: String::from_utf8_lossy(&r.payload).into_owned(),
                    });
                }
            }
        }
        Ok(read)
    }

    /// Records the log's retention removed before this archiver read them are lost: say
    /// so in the log and keep the fact as a dead letter (durable, listed, counted) at
    /// the first offset lost, then go on past them.
    fn expired(&self, partition: u32, gone: &std::ops::Range<u64>) -> DeadLetter {
        let lost = gone.end - gone.start;
        tracing::error!(
            stream = %self.stream.name,
            partition,
            from = gone.start,
            to = gone.end,
            lost,
            "the log's retention removed records before the archiver reached them; they are lost \
             (raise the topic's retention or add archiver capacity)"
        );
        DeadLetter {
            source: "log-retention".into(),
            index: Some(gone.start as i64),
            partition: Some(partition as i64),
            field: None,
            reason: format!(
                "partition {partition} offsets {}..{}: {lost} records expired from the log \
                 (retention) before the archiver reached them; they are not in the master table",
                gone.start, gone.end
            ),
            raw: String::new(),
        }
    }

    /// Put what was read into the window's open files. `Ok(false)`: the loop starts
    /// over (a schema-merging write committed at once, or the positions moved under
    /// this archiver and it reloads).
    async fn stage(
        &mut self,
        mut decoder: BatchDecoder,
        letters: Vec<DeadLetter>,
    ) -> Result<bool, BatchError> {
        // Dead letters first: if the data commit then fails, the replay writes them
        // again (a dead letter may repeat; an event never does).
        self.dead_letters
            .write(&self.stream.name, letters)
            .await
            .map_err(BatchError::DeadLetter)?;
        let batch = decoder
            .flush()
            .map_err(|e| BatchError::Log(self.stream.name.clone(), e))?;
        let batch = self.layout.prepare(batch)?;
        self.window.opened.get_or_insert_with(Instant::now);
        self.window.rows += batch.num_rows();
        self.window.add_dates(&batch);
        let archiving = format!("archiving `{}`", self.stream.name);
        if self.layout.merge_schema {
            // Merging new fields into the schema goes through a whole write (the
            // streaming writer cannot widen a partitioned table); the next records
            // stream into files again.
            if !self.still_ours().await? {
                return Ok(false);
            }
            let write = self.layout.apply(self.table.clone().write(vec![batch]));
            self.table = write
                .with_save_mode(SaveMode::Append)
                .with_commit_properties(self.window.commit_properties(&self.stream.name))
                .await
                .map_err(|e| BatchError::delta(archiving.clone(), e))?;
            self.window.discard();
            self.layout.merge_schema = false;
            self.committed().await;
            return Ok(false);
        }
        if batch.num_rows() > 0 {
            let table = &self.table;
            let writer = match self.window.writer() {
                Some(w) => w,
                slot @ None => slot.insert(
                    // No size roll: the window commits as soon as it reaches the size,
                    // which makes one file per event date.
                    RecordBatchWriter::for_table(table)
                        .map_err(|e| {
                            BatchError::delta(format!("master table of `{}`", self.stream.name), e)
                        })?
                        .with_writer_properties(super::table_file_properties()),
                ),
            };
            writer
                .write(batch)
                .await
                .map_err(|e| BatchError::delta(archiving.clone(), e))?;
        }
        Ok(true)
    }

    /// Commit the window with its positions if a trigger is reached (or `drained` on
    /// shutdown). `Ok(false)`: the positions moved under this archiver; it reloads.
    async fn commit_if_due(&mut self, drained: bool) -> Result<bool, BatchError> {
        let buffered = self.window.writer().as_ref().map_or(0, |w| w.buffer_len());
        let due = self
            .window
            .opened
            .is_some_and(|t| t.elapsed() >= self.flush)
            || buffered >= self.file_bytes
            || self.window.dates.len() >= self.config.max_open_files.max(1)
            || self.window.rows >= self.config.archive_flush_records
            || drained;
        if !due || self.window.is_empty() {
            return Ok(true);
        }
        if !self.still_ours().await? {
            return Ok(false);
        }
        let properties = self.window.commit_properties(&self.stream.name);
        let archiving = format!("archiving `{}`", self.stream.name);
        match self.window.writer().take() {
            Some(writer) => {
                writer
                    .with_commit_properties(properties)
                    .flush_and_commit(&mut self.table)
                    .await
                    .map_err(|e| BatchError::delta(archiving.clone(), e))?;
            }
            // Only dead letters: the positions still move on.
            None => {
                let snapshot = self
                    .table
                    .snapshot()
                    .map_err(|e| BatchError::delta(self.what(), e))?;
                CommitBuilder::from(properties)
                    .build(
                        Some(snapshot),
                        self.table.log_store(),
                        DeltaOperation::Write {
                            mode: SaveMode::Append,
                            partition_by: None,
                            predicate: None,
                        },
                    )
                    .await
                    .map_err(|e| BatchError::delta(archiving.clone(), e))?;
                self.table
                    .update_incremental(None)
                    .await
                    .map_err(|e| BatchError::delta(self.what(), e))?;
            }
        }
        tracing::debug!(stream = %self.stream.name, rows = self.window.rows, version = ?self.table.version(), "archived");
        self.window.discard();
        self.committed().await;
        Ok(true)
    }

    /// Whether the table still has the positions this archiver committed last; if not,
    /// the window is dropped and the next pass reloads.
    async fn still_ours(&mut self) -> Result<bool, BatchError> {
        let partitions = self.window.partitions();
        if still_ours(&mut self.table, &self.stream, &self.positions, &partitions).await? {
            return Ok(true);
        }
        self.window.discard();
        self.generation = None;
        Ok(false)
    }

    /// The window is in the table: its read positions are the committed ones now.
    async fn committed(&mut self) {
        self.positions = self.cursor.clone();
        report_positions(self.log.as_ref(), &self.stream.name, &self.positions).await;
    }

    /// Wait for more, but never past the window's deadline.
    async fn idle(&self) {
        let wait = self
            .window
            .opened
            .map_or(self.flush, |t| self.flush.saturating_sub(t.elapsed()))
            .min(IDLE_POLL);
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
