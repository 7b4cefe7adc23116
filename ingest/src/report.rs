//! What ingest answers for one request, shared by the service and the idempotency
//! cache (which keeps answers for retries).

use serde::Serialize;

/// One rejected record in a response.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecordError {
    pub index: usize,
    pub field: Option<String>,
    pub reason: String,
}

/// What ingest answers for one request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IngestReport {
    pub accepted: usize,
    pub rejected: usize,
    pub errors: Vec<RecordError>,
    /// Whether the rejected records are stored in the stream's dead-letter table
    /// (true when there were none). False means they are *not* stored: the reasons
    /// above are then the only copy, and `dead_letter_error` says why.
    pub dead_letters_stored: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_error: Option<String>,
}
