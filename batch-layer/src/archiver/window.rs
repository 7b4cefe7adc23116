//! The archiver's window: the records read since the last commit.

use std::collections::BTreeMap;
use std::time::Instant;

use deltalake::arrow::array::RecordBatch;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::writer::RecordBatchWriter;

use super::app_id;

/// The records read since the last commit, streaming into Parquet files: they become
/// visible, with the positions after them, in one Delta commit.
pub(super) struct Window {
    /// Behind a mutex only so the archiver's futures may be shared by reference (the
    /// writer is not `Sync`); it is reached through `&mut` ([`Window::writer`]), never
    /// locked.
    writer: std::sync::Mutex<Option<RecordBatchWriter>>,
    /// When its first record was read.
    pub(super) opened: Option<Instant>,
    pub(super) rows: usize,
    /// Partition → the position after the window's records (what the commit records).
    pub(super) next: BTreeMap<u32, u64>,
    /// The event dates (days since the epoch) of its records: one open file each, so
    /// the window commits once it holds `batch.max-open-files` of them.
    pub(super) dates: std::collections::BTreeSet<i32>,
}

impl Window {
    /// The open files' writer, if any.
    pub(super) fn writer(&mut self) -> &mut Option<RecordBatchWriter> {
        self.writer.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn new() -> Self {
        Window {
            writer: std::sync::Mutex::new(None),
            opened: None,
            rows: 0,
            next: BTreeMap::new(),
            dates: Default::default(),
        }
    }

    /// Note the event dates of `batch` (master layout).
    pub(super) fn add_dates(&mut self, batch: &RecordBatch) {
        let Some(days) = batch
            .column_by_name(tributary_core::schema::EVENT_DATE)
            .and_then(|c| {
                c.as_any()
                    .downcast_ref::<deltalake::arrow::array::Date32Array>()
            })
        else {
            return;
        };
        let mut last = None;
        // Records of a micro-batch mostly share a date: insert only where it changes.
        for day in days.values().iter().copied() {
            if last != Some(day) {
                self.dates.insert(day);
                last = Some(day);
            }
        }
    }

    /// The commit's `txn` actions: each partition's position after the window.
    pub(super) fn commit_properties(&self, stream: &str) -> CommitProperties {
        let txns = self
            .next
            .iter()
            .map(|(p, o)| Transaction::new(app_id(stream, *p), *o as i64));
        CommitProperties::default().with_application_transactions(txns.collect())
    }

    /// The log partitions the window holds records of (the writer is not `Sync`, so no
    /// borrow of the window is held across an await).
    pub(super) fn partitions(&self) -> Vec<u32> {
        self.next.keys().copied().collect()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    /// Forget what was written since the last commit: its files were never committed,
    /// and VACUUM removes them.
    pub(super) fn discard(&mut self) {
        if let Some(w) = self.writer().as_mut() {
            w.reset();
        }
        *self.writer() = None;
        self.opened = None;
        self.rows = 0;
        self.next.clear();
        self.dates.clear();
    }
}
