//! Where everything lives under the storage root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use url::Url;

use crate::error::{CoreError, Result};

/// `[storage]`: where local state goes and how object stores are reached.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StorageConfig {
    /// This machine's directory for the embedded log, speed snapshots, dead-letter
    /// spools and the run history; required when `storage-root` is an object store
    /// (for a local root it defaults to the root).
    #[serde(default)]
    pub local_dir: Option<PathBuf>,
    /// Passed to object_store as they are (`aws_endpoint`, `aws_region`,
    /// `azure_storage_account_name`, `google_service_account`, …), over the
    /// environment's `AWS_*`, `AZURE_*`, `GOOGLE_*`; `-` may stand for `_`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// The storage root and the layout of the tables beneath it.
///
/// Tables live under the root, a local directory or an object-store URL (`s3://…`,
/// `abfss://…`, `gs://…`). What must stay on one machine (the embedded log, speed
/// snapshots, dead-letter spools, the run history) lives in the local directory: the
/// root itself when it is local.
#[derive(Debug, Clone)]
pub struct Storage {
    /// The tables' root as a URL with a trailing slash, so that joins stay beneath it.
    tables: Url,
    /// This machine's directory.
    root: PathBuf,
}

impl Storage {
    /// Create the root directory if needed and resolve it to an absolute path.
    pub fn open(root: &Path) -> Result<Storage> {
        let root = local_dir(root, "storage-root")?;
        let tables = Url::from_directory_path(&root).expect("the root is absolute");
        Ok(Storage { tables, root })
    }

    /// `location` a local path or an object-store URL; `local` the local directory
    /// (for a local root, the root itself when not given).
    pub fn open_location(location: &str, local: Option<&Path>) -> Result<Storage> {
        if !crate::cloud::is_cloud_url(location) {
            let mut storage = Storage::open(Path::new(location))?;
            if let Some(dir) = local {
                storage.root = local_dir(dir, "storage.local-dir")?;
            }
            return Ok(storage);
        }
        let with_slash = if location.ends_with('/') {
            location.to_string()
        } else {
            format!("{location}/")
        };
        let tables = Url::parse(&with_slash).map_err(|e| CoreError::Config {
            source_name: "storage-root".into(),
            key: "storage-root".into(),
            message: format!("`{location}` is not a URL: {e}"),
        })?;
        let dir = local.ok_or_else(|| CoreError::Config {
            source_name: "storage-root".into(),
            key: "storage.local-dir".into(),
            message: format!(
                "storage-root `{location}` is an object store: set storage.local-dir to a local \
                 directory for the embedded log, snapshots and spools"
            ),
        })?;
        Ok(Storage {
            tables,
            root: local_dir(dir, "storage.local-dir")?,
        })
    }

    /// This machine's directory (the root itself when the root is local).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the tables are, for messages: a directory or a URL.
    pub fn location(&self) -> String {
        match self.tables.to_file_path() {
            Ok(p) if self.tables.scheme() == "file" => p.display().to_string(),
            _ => self.tables.to_string(),
        }
    }

    /// Whether the tables are in an object store.
    pub fn is_remote(&self) -> bool {
        self.tables.scheme() != "file"
    }

    /// Directory of the speed layer's state snapshots.
    pub fn speed_snapshot_dir(&self) -> PathBuf {
        self.root.join("speed-snapshots")
    }

    /// Directory of the Kafka log's `_ingest_ts` derivation checkpoints.
    pub fn derivation_dir(&self) -> PathBuf {
        self.root.join("kafka-derivation")
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

    /// The Delta table of an append-mode view's rows.
    pub fn append_view_table(&self, view: &str) -> Url {
        self.table_url(&["append", view])
    }

    /// The Delta table of view definitions (see `catalog/`).
    pub fn catalog_table(&self) -> Url {
        self.table_url(&["_catalog", "views"])
    }

    /// Where a sink keeps its progress (`state.json`: what it has delivered).
    pub fn sink_dir(&self, sink: &str) -> Url {
        self.table_url(&["_sinks", sink])
    }

    /// A table named by configuration: an object-store URL as it is, an absolute local
    /// path, or a path relative to the root.
    pub fn table_at(&self, path: &Path) -> Result<Url> {
        let text = path.to_string_lossy();
        let bad = |message: String| CoreError::Config {
            source_name: text.to_string(),
            key: String::new(),
            message,
        };
        if crate::cloud::is_cloud_url(&text) {
            let with_slash = match text.ends_with('/') {
                true => text.to_string(),
                false => format!("{text}/"),
            };
            return Url::parse(&with_slash).map_err(|e| bad(format!("not a URL: {e}")));
        }
        if path.is_absolute() {
            let _ = std::fs::create_dir_all(path);
            return Url::from_directory_path(path)
                .map_err(|()| bad("not a usable directory".into()));
        }
        let parts: Vec<String> = path
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.iter().any(|p| p == ".." || p == ".") {
            return Err(bad("`.` and `..` are not allowed in a table path".into()));
        }
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        Ok(self.table_url(&parts))
    }

    fn table_url(&self, parts: &[&str]) -> Url {
        if self.is_remote() {
            let mut url = self.tables.clone();
            {
                // Each part one segment, escaped by `url`; the empty last one keeps the
                // trailing slash a table root needs.
                let mut segments = url.path_segments_mut().expect("a hierarchical URL");
                segments.pop_if_empty().extend(parts).push("");
            }
            return url;
        }
        let mut path = self.tables.to_file_path().expect("a local root");
        for p in parts {
            path.push(p);
        }
        // Delta needs the directory to exist to resolve a local URL.
        let _ = std::fs::create_dir_all(&path);
        Url::from_directory_path(&path).expect("storage root is absolute")
    }
}

fn local_dir(dir: &Path, key: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| CoreError::Config {
        source_name: key.into(),
        key: key.into(),
        message: format!("cannot create {}: {e}", dir.display()),
    })?;
    dir.canonicalize().map_err(|e| CoreError::Config {
        source_name: key.into(),
        key: key.into(),
        message: format!("cannot resolve {}: {e}", dir.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_sit_beneath_the_root_locally_and_in_an_object_store() {
        let dir = tempfile::tempdir().unwrap();
        let local = Storage::open(dir.path()).unwrap();
        let url = local.master_table("readings");
        assert_eq!(url.scheme(), "file");
        assert!(url.to_file_path().unwrap().ends_with("master/readings"));
        assert!(url.to_file_path().unwrap().is_dir());
        assert!(!local.is_remote());

        let remote = Storage::open_location("s3://bucket/prefix", Some(dir.path())).unwrap();
        assert_eq!(
            remote.master_table("readings").as_str(),
            "s3://bucket/prefix/master/readings/"
        );
        assert_eq!(
            remote.dead_letter_table("a b").as_str(),
            "s3://bucket/prefix/dead_letters/a%20b/"
        );
        assert!(remote.is_remote());
        assert_eq!(
            remote.table_at(Path::new("out/alerts")).unwrap().as_str(),
            "s3://bucket/prefix/out/alerts/"
        );
        assert!(remote.table_at(Path::new("../x")).is_err());
        assert_eq!(
            remote.sink_dir("s").as_str(),
            "s3://bucket/prefix/_sinks/s/"
        );
        assert_eq!(remote.root(), dir.path().canonicalize().unwrap());
        let e = Storage::open_location("s3://bucket/prefix", None).unwrap_err();
        assert!(e.to_string().contains("storage.local-dir"), "{e}");
    }
}
