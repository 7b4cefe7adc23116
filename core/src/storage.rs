//! Where everything lives under the storage root.

use std::path::{Path, PathBuf};

use url::Url;

use crate::error::{CoreError, Result};

/// The storage root and the layout of the tables beneath it.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

impl Storage {
    /// Create the root directory if needed and resolve it to an absolute path.
    pub fn open(root: &Path) -> Result<Storage> {
        std::fs::create_dir_all(root).map_err(|e| CoreError::Config {
            source_name: "storage-root".into(),
            key: "storage-root".into(),
            message: format!("cannot create {}: {e}", root.display()),
        })?;
        let root = root.canonicalize().map_err(|e| CoreError::Config {
            source_name: "storage-root".into(),
            key: "storage-root".into(),
            message: format!("cannot resolve {}: {e}", root.display()),
        })?;
        Ok(Storage { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of the speed layer's state snapshots.
    pub fn speed_snapshot_dir(&self) -> PathBuf {
        self.root.join("speed-snapshots")
    }

    /// Directory of the embedded event log.
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("log")
    }

    /// The local directory of the files where processes' dead letters wait for
    /// their Delta table (one file per process; see `dead_letter::DeadLetterSink::with_spool`).
    pub fn spool_dir(&self) -> PathBuf {
        self.root.join("spool")
    }

    /// The master Delta table of a stream: every accepted event, exactly once.
    pub fn master_table(&self, stream: &str) -> Url {
        self.table_url(&["master", stream])
    }

    /// The Delta table of a view's batch states.
    pub fn batch_view_table(&self, view: &str) -> Url {
        self.table_url(&["views", view])
    }

    /// The Delta table of a stream's rejected records.
    pub fn dead_letter_table(&self, stream: &str) -> Url {
        self.table_url(&["dead_letters", stream])
    }

    fn table_url(&self, parts: &[&str]) -> Url {
        let mut path = self.root.clone();
        for p in parts {
            path.push(p);
        }
        // Delta needs the directory to exist to resolve a local URL.
        let _ = std::fs::create_dir_all(&path);
        Url::from_directory_path(&path).expect("storage root is absolute")
    }
}
