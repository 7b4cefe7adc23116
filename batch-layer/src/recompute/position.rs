//! Where the archiver stands against the log: the cutoff a run may take (every event
//! below it archived, see the parent module) and how far the archiver lags.

use tributary_core::schema::StreamSchema;

use super::Batch;
use crate::archiver::{archived_positions, open_master};
use crate::error::BatchError;

/// The archiver's distance to the log's end, and where it fell behind retention.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ArchiverLag {
    /// Records not yet archived, per partition.
    pub by_partition: Vec<u64>,
    /// Partitions whose log no longer holds the next record to archive.
    pub behind_retention: Vec<RetentionGap>,
}

/// Records `archived..first_retained` of a partition expired before they were archived.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RetentionGap {
    /// The log partition.
    pub partition: u32,
    /// Where the archiver's committed position is.
    pub archived: u64,
    /// The log's first offset still held.
    pub first_retained: u64,
}

impl Batch {
    /// How far the archiver of `stream` is behind the log, per partition: records the
    /// log holds that are not yet in the master table, and whether the log's retention
    /// has already removed records it had not archived (they are lost).
    pub async fn archiver_lag(&self, stream: &StreamSchema) -> Result<ArchiverLag, BatchError> {
        let master = open_master(&self.storage, &stream.name).await?;
        let archived = archived_positions(master.as_ref(), stream).await?;
        let log_err = |e| BatchError::Log(stream.name.clone(), e);
        let mut lag = ArchiverLag::default();
        for (p, pos) in archived.iter().enumerate() {
            let end = self
                .log
                .end_offset(&stream.name, p as u32)
                .await
                .map_err(log_err)?;
            lag.by_partition.push(end.saturating_sub(*pos));
            let first = self
                .log
                .first_offset(&stream.name, p as u32)
                .await
                .map_err(log_err)?;
            if first > *pos {
                lag.behind_retention.push(RetentionGap {
                    partition: p as u32,
                    archived: *pos,
                    first_retained: first,
                });
            }
        }
        Ok(lag)
    }

    /// The largest T (aligned to segment width) such that every event of `stream`
    /// with `_ingest_ts < T` is in the master table.
    pub async fn stream_cutoff(&self, stream: &StreamSchema) -> Result<i64, BatchError> {
        let master = open_master(&self.storage, &stream.name).await?;
        self.cutoff_in(stream, master.as_ref()).await
    }

    /// [`Batch::stream_cutoff`] by the archived positions of `master`, a snapshot of
    /// the stream's master table.
    pub(super) async fn cutoff_in(
        &self,
        stream: &StreamSchema,
        master: Option<&deltalake::DeltaTable>,
    ) -> Result<i64, BatchError> {
        let archived = archived_positions(master, stream).await?;
        let mut bound = i64::MAX;
        for (p, a) in archived.iter().enumerate() {
            let b = self
                .log
                .ingest_ts_bound(&stream.name, p as u32, *a)
                .await
                .map_err(|e| BatchError::Log(stream.name.clone(), e))?;
            bound = bound.min(b);
        }
        Ok(bound - bound.rem_euclid(self.segment_width))
    }
}
