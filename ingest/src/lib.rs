//! Tributary ingest.
//!
//! Owns the way events get in: the HTTP ingest endpoint, validation of every record
//! against its stream's schema (shared with the other layers through
//! `tributary_core::schema`), dead letters for what is refused, the built-in event
//! generator, and the event-log backends behind `tributary_core::log::EventLog`.
//! An event is acknowledged only once the log holds it durably.

#![warn(missing_docs)]

mod body;
pub mod error;
pub mod generator;
pub mod http;
pub mod idempotency;
pub mod log;
mod report;
pub mod service;

pub use error::IngestError;
pub use service::{Ingest, IngestLimits, IngestReport, RawRecord};
pub use tributary_core::ingest_handle::ReplayReport;
/// Dead letters and Delta access live in core, where every layer reaches them; these
/// re-exports keep `tributary_ingest::{dead_letter, delta}` paths working.
pub use tributary_core::{dead_letter, delta};
