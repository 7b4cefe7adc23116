//! Shared core of Tributary.
//!
//! Owns what every layer agrees on: the configuration and its loading, stream schemas
//! and record validation, dead letters and Delta table access, the compilation of a view's SQL into a partial and a final
//! plan, the event-log trait, the storage layout, and the named-task shutdown helper.

#![warn(missing_docs)]

pub mod catalog;
pub mod cloud;
pub mod config;
pub mod date_bin;
pub mod dead_letter;
pub mod delta;
pub mod dimension;
pub mod error;
pub mod ingest_handle;
pub mod kafka_security;
pub mod log;
pub mod pipeline;
pub mod quarantine;
pub mod schema;
pub mod shutdown;
pub mod sql_limits;
pub mod storage;
pub mod time;
pub mod view;
pub mod window;

pub use error::{CoreError, Result};
