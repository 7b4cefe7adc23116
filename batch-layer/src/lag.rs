//! How far behind the log each stream's archiver is, and where the log's retention
//! removed records it had not archived yet (status and metrics show both).

use tributary_core::schema::StreamSchema;

use crate::archiver::{archived_positions, open_master};
use crate::error::BatchError;
use crate::recompute::Batch;

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
        let master = open_master(self.storage(), &stream.name).await?;
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
}
