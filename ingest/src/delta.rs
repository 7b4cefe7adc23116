//! Opening Delta tables under the storage root.

use deltalake::{DeltaResult, DeltaTable, DeltaTableBuilder};
use url::Url;

/// Open the table at `url`, or an empty handle whose first write creates it.
///
/// A table that does not exist yet is not loaded at all: loading it would only fail
/// (and log the failure) before the first write.
pub async fn open(url: Url) -> DeltaResult<DeltaTable> {
    let exists = match url.to_file_path() {
        Ok(path) => path.join("_delta_log").exists(),
        Err(()) => true,
    };
    if exists {
        DeltaTable::try_from_url(url).await
    } else {
        DeltaTableBuilder::from_url(url)?.build()
    }
}
