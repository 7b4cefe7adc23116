//! Where a sink's [`Progress`] survives restarts: `_sinks/<name>/state.json` under the
//! storage root, on local disk (written beside and renamed over, so a crash leaves the
//! old or the new file) or in the object store (a single PUT replaces it whole).

use std::path::PathBuf;
use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tributary_core::storage::Storage;

use super::plan::Progress;
use crate::error::ServingError;

/// Where one sink's progress is kept.
pub enum ProgressFile {
    /// A file in a local directory.
    Local(PathBuf),
    /// An object in the storage root's store.
    Remote(Arc<dyn ObjectStore>, object_store::path::Path),
}

impl ProgressFile {
    /// The progress file of sink `name` under `storage`'s root.
    pub fn of(storage: &Storage, name: &str) -> Result<ProgressFile, ServingError> {
        let dir = storage.sink_dir(name);
        if dir.scheme() == "file" {
            let path = dir
                .to_file_path()
                .map_err(|()| ServingError::Server(format!("`{dir}` is not a local path")))?;
            return Ok(ProgressFile::Local(path.join("state.json")));
        }
        let (store, path) =
            tributary_core::cloud::store_for(&dir).map_err(|source| ServingError::Sink {
                sink: name.to_string(),
                message: "cannot reach its progress file".into(),
                source: Box::new(source),
            })?;
        Ok(ProgressFile::Remote(store, path.clone().join("state.json")))
    }

    /// The stored progress; the empty one when none was stored yet.
    pub async fn load(&self) -> Result<Progress, Box<dyn std::error::Error + Send + Sync>> {
        let bytes = match self {
            ProgressFile::Local(path) => match tokio::fs::read(path).await {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(Progress::default());
                }
                Err(e) => return Err(Box::new(e)),
            },
            ProgressFile::Remote(store, path) => match store.get(path).await {
                Ok(got) => got.bytes().await?.to_vec(),
                Err(object_store::Error::NotFound { .. }) => return Ok(Progress::default()),
                Err(e) => return Err(Box::new(e)),
            },
        };
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Replace the stored progress with `progress`.
    pub async fn save(
        &self,
        progress: &Progress,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let bytes = serde_json::to_vec(progress)?;
        match self {
            ProgressFile::Local(path) => {
                let tmp = path.with_extension("json.tmp");
                tokio::fs::write(&tmp, &bytes).await?;
                tokio::fs::rename(&tmp, path).await?;
            }
            ProgressFile::Remote(store, path) => {
                store.put(path, PutPayload::from(bytes)).await?;
            }
        }
        Ok(())
    }
}
