//! What ingest answers for one request, shared by the service and the idempotency
//! cache (which keeps answers for retries).

use serde::Serialize;

/// One rejected record in a response.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecordError {
    /// The record's index in the request.
    pub index: usize,
    /// The field at fault, when one is.
    pub field: Option<String>,
    /// What was expected.
    pub reason: String,
}

/// What ingest answers for one request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IngestReport {
    /// Records appended to the log.
    pub accepted: usize,
    /// Records refused.
    pub rejected: usize,
    /// Why each refused record was refused.
    pub errors: Vec<RecordError>,
    /// Whether the rejected records are stored in the stream's dead-letter table
    /// (true when there were none). False means they are *not* stored: the reasons
    /// above are then the only copy, and `dead_letter_error` says why.
    pub dead_letters_stored: bool,
    /// Why the dead letters could not be stored, when they were not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_error: Option<String>,
}
