//! The core crate's error type.

use thiserror::Error;

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum CoreError {
    /// Configuration that cannot be used; names where it came from and which key.
    #[error("configuration error in {source_name}{}: {message}", key_suffix(.key))]
    Config {
        source_name: String,
        key: String,
        message: String,
    },
    #[error("view `{view}`: {message}")]
    View { view: String, message: String },
    #[error("unknown stream `{0}`")]
    UnknownStream(String),
    #[error("unknown view `{0}`")]
    UnknownView(String),
    /// States whose layout is not the view's (another version of its SQL wrote them).
    #[error("states of another shape: {0}")]
    StateShape(String),
    #[error("event log: {0}")]
    Log(String),
    #[error("event log is unavailable: {0}")]
    LogUnavailable(String),
    #[error("table `{path}`: {message}")]
    Table { path: String, message: String },
    /// The dead-letter table of a stream could not be read or written.
    #[error("dead-letter table for `{stream}`: {message}")]
    DeadLetter { stream: String, message: String },
    /// The local spool that holds dead letters until they reach Delta.
    #[error("dead-letter spool {path}: {message}")]
    DeadLetterSpool { path: String, message: String },
    #[error("query engine: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
}

fn key_suffix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(", key `{key}`")
    }
}
