//! Tributary ingest.
//!
//! Owns the way events get in: the HTTP ingest endpoint, validation of every record
//! against its stream's schema (shared with the other layers through
//! `tributary_core::schema`), dead letters for what is refused, the built-in event
//! generator, and the event-log backends behind `tributary_core::log::EventLog`.
//! An event is acknowledged only once the log holds it durably.

pub mod dead_letter;
pub mod delta;
pub mod error;
pub mod generator;
pub mod http;
pub mod log;
pub mod service;

pub use error::IngestError;
pub use service::{Ingest, IngestReport, RawRecord, ReplayReport};
