//! The core crate's error type.

use thiserror::Error;

/// A result whose error is the core crate's.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// What can go wrong in the shared core: configuration, views, the log, tables.
#[derive(Debug, Error)]
pub enum CoreError {
    /// Configuration that cannot be used; names where it came from and which key.
    #[error("configuration error in {source_name}{}: {message}", key_suffix(.key))]
    Config {
        /// The file (or `embedded default`) the configuration came from.
        source_name: String,
        /// The key at fault (empty when the file as a whole is).
        key: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A view's SQL or plan cannot be used.
    #[error("view `{view}`: {message}")]
    View {
        /// The view's name.
        view: String,
        /// What is wrong with it.
        message: String,
    },
    /// No stream of this name is configured.
    #[error("unknown stream `{0}`")]
    UnknownStream(String),
    /// No view of this name is configured.
    #[error("unknown view `{0}`")]
    UnknownView(String),
    /// States whose layout is not the view's (another version of its SQL wrote them).
    #[error("states of another shape: {0}")]
    StateShape(String),
    /// The event log refused a request (a bad partition, a record it cannot hold).
    #[error("event log: {0}")]
    Log(String),
    /// The event log cannot be reached now; retrying later may succeed.
    #[error("event log is unavailable: {0}")]
    LogUnavailable(String),
    /// A Delta or dimension table could not be opened, read or written.
    #[error("table `{path}`: {message}")]
    Table {
        /// Where the table lives.
        path: String,
        /// What failed.
        message: String,
    },
    /// The dead-letter table of a stream could not be read or written.
    #[error("dead-letter table for `{stream}`: {message}")]
    DeadLetter {
        /// The stream whose letters these are.
        stream: String,
        /// What failed.
        message: String,
    },
    /// The local spool that holds dead letters until they reach Delta.
    #[error("dead-letter spool {path}: {message}")]
    DeadLetterSpool {
        /// The spool file or folder.
        path: String,
        /// What failed.
        message: String,
    },
    /// Speed states were asked for above a batch cutoff older than one the speed layer
    /// has already dropped segments below: the asker must load the newer batch view.
    #[error(
        "view `{view}`: the speed layer released its states below {released} (asked from \
         {requested}); the batch view in use is older than the newest"
    )]
    StaleCutoff {
        /// The view.
        view: String,
        /// The cutoff of the batch view the asker holds (microseconds).
        requested: i64,
        /// The cutoff the speed layer released segments below.
        released: i64,
    },
    /// Speed states of one revision of a view were about to be merged with another's
    /// (a change made in another process not yet followed everywhere).
    #[error(
        "view `{view}` is being changed: {what} holds revision {theirs}, this process \
         revision {ours}; every process follows the view catalog within catalog-poll-ms"
    )]
    RevisionMismatch {
        /// The view.
        view: String,
        /// Who holds the other revision.
        what: String,
        /// The revision this process holds.
        ours: i64,
        /// The other revision.
        theirs: i64,
    },
    /// Two speed processes hold the same partition, so their states cannot be added.
    #[error(
        "stream `{stream}` partition {partition} is held by two speed processes ({first} and \
         {second}); give each its own `speed.shard`"
    )]
    SpeedOverlap {
        /// The stream.
        stream: String,
        /// The partition both hold.
        partition: u32,
        /// Where the first is reached.
        first: String,
        /// Where the second is reached.
        second: String,
    },
    /// DataFusion failed planning or running a plan.
    #[error("query engine: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Arrow failed building or converting data.
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
