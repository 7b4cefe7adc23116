//! Opening Delta tables under the storage root, on local disk or in an object store
//! (see `cloud.rs` for the stores).

use deltalake::{DeltaResult, DeltaTable, DeltaTableBuilder, DeltaTableError};
use url::Url;

/// Open the table at `url`, or an empty handle whose first write creates it.
///
/// A table that does not exist yet is not loaded at all: loading it would only fail
/// (and log the failure) before the first write.
pub async fn open(url: Url) -> DeltaResult<DeltaTable> {
    if exists(&url).await? {
        DeltaTable::try_from_url(url).await
    } else {
        DeltaTableBuilder::from_url(url)?.build()
    }
}

/// Whether the table at `url` has a Delta log.
pub async fn exists(url: &Url) -> DeltaResult<bool> {
    if url.scheme() == "file" {
        return Ok(url
            .to_file_path()
            .is_ok_and(|p| p.join("_delta_log").exists()));
    }
    DeltaTableBuilder::from_url(url.clone())?
        .build()?
        .log_store()
        .is_delta_table_location()
        .await
}

/// A past state of a table: a Delta version, or the latest version at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsOf {
    /// A Delta version number.
    Version(u64),
    /// RFC 3339.
    Time(String),
}

impl std::fmt::Display for AsOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AsOf::Version(v) => write!(f, "version {v}"),
            AsOf::Time(t) => write!(f, "{t}"),
        }
    }
}

/// The table at `url` as it was at `as_of`; `None` when the table does not exist yet.
pub async fn open_as_of(url: Url, as_of: &AsOf) -> DeltaResult<Option<DeltaTable>> {
    if !exists(&url).await? {
        return Ok(None);
    }
    let builder = DeltaTableBuilder::from_url(url.clone())?;
    let builder = match as_of {
        AsOf::Version(v) => {
            // Asking delta-rs for a version far past the newest one can take it a long
            // time to refuse: bound it by the log first.
            let newest = DeltaTableBuilder::from_url(url.clone())?
                .build()?
                .log_store()
                .get_latest_version(0)
                .await?;
            if *v > newest {
                return Err(DeltaTableError::Generic(format!(
                    "no version {v}: the newest is {newest}"
                )));
            }
            builder.with_version(*v as _)
        }
        AsOf::Time(t) => builder.with_datestring(t)?,
    };
    builder.load().await.map(Some)
}

/// Remove the table at `url` whole (its log and data files): a dropped or replaced
/// view's states must never be read again under its name.
pub async fn remove(url: &Url) -> Result<(), crate::error::CoreError> {
    let fail = |e: &dyn std::fmt::Display| crate::error::CoreError::Table {
        path: url.to_string(),
        message: format!("removing: {e}"),
    };
    if url.scheme() == "file" {
        let Ok(path) = url.to_file_path() else {
            return Err(fail(&"not a local path"));
        };
        return match std::fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(fail(&e)),
        };
    }
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let (store, prefix) = crate::cloud::store_for(url)?;
    let objects: Vec<_> = store
        .list(Some(&prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(|e| fail(&e))?;
    for location in objects {
        store.delete(&location).await.map_err(|e| fail(&e))?;
    }
    Ok(())
}
