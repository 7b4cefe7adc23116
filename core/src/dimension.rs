//! Static dimension tables a view may join its stream with: a CSV or Parquet file, or a
//! Delta table, under the storage root or at an object-store URL (`s3://…`). Each is
//! held in memory and reloaded when it changes (a file's modification time, a Delta
//! table's version), checked at most every [`CHECK_EVERY`].
//!
//! Both layers join with the table as it is when they compute: the speed layer per
//! micro-batch, the batch layer per run. A change therefore reaches windows the speed
//! layer already holds at the next batch run, like any correction in a lambda design.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::config::DimensionFormat;
use crate::error::{CoreError, Result};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions};
use object_store::ObjectStoreExt;

/// How often a table is checked for changes.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Schema metadata key that marks a dimension table's scan inside a view's plan.
pub const DIMENSION_KEY: &str = "tributary.dimension";

/// A dimension table as the pipeline declares it.
#[derive(Debug)]
pub struct DimensionTable {
    /// The name views join with.
    pub name: String,
    /// Where the file or table lives (resolved against the storage root).
    pub path: PathBuf,
    /// How to read it.
    pub format: DimensionFormat,
    /// The schema of the first load; a reload must keep it.
    pub schema: SchemaRef,
    state: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    batches: Arc<Vec<RecordBatch>>,
    version: Option<Version>,
    checked: Instant,
}

#[derive(Debug, Clone, PartialEq)]
enum Version {
    Modified(SystemTime),
    Delta(i64),
}

impl DimensionTable {
    /// Load `path` (relative paths are under `root`); `format` is inferred from the
    /// path when not given. `key` names the configuration entry in errors.
    pub async fn load(
        name: &str,
        path: &Path,
        format: Option<DimensionFormat>,
        root: &Path,
        key: &str,
    ) -> std::result::Result<DimensionTable, String> {
        let path = if path.is_absolute() || cloud_url(path).is_some() {
            path.to_path_buf()
        } else {
            root.join(path)
        };
        let format = match format {
            Some(f) => f,
            None => infer_format(&path).ok_or_else(|| {
                format!(
                    "{key}.path: cannot tell the format of `{}`: name a .csv or .parquet file or a Delta table directory, or set `format`",
                    path.display()
                )
            })?,
        };
        let (batches, schema, version) = read(&path, format)
            .await
            .map_err(|e| format!("{key}.path: cannot read `{}`: {e}", path.display()))?;
        let schema = Arc::new(
            schema
                .as_ref()
                .clone()
                .with_metadata([(DIMENSION_KEY.to_string(), name.to_string())].into()),
        );
        Ok(DimensionTable {
            name: name.to_string(),
            path,
            format,
            schema,
            state: RwLock::new(Loaded {
                batches: Arc::new(batches),
                version: Some(version),
                checked: Instant::now(),
            }),
        })
    }

    /// The rows as last loaded.
    pub fn batches(&self) -> Arc<Vec<RecordBatch>> {
        self.state.read().expect("dimension lock").batches.clone()
    }

    /// Reload if the table changed since the last check (at most every
    /// [`CHECK_EVERY`]). A table that became unreadable or changed its schema keeps
    /// its last good rows, with a warning.
    pub async fn refresh(&self) {
        {
            let s = self.state.read().expect("dimension lock");
            if s.checked.elapsed() < CHECK_EVERY {
                return;
            }
        }
        self.reload_if_changed().await;
    }

    /// Reload now if the table changed since it was loaded.
    pub async fn reload_if_changed(&self) {
        let current = self.state.read().expect("dimension lock").version.clone();
        let latest = version(&self.path, self.format).await.ok();
        self.state.write().expect("dimension lock").checked = Instant::now();
        if latest.is_none() || latest == current {
            return;
        }
        match read(&self.path, self.format).await {
            Ok((batches, schema, version))
                if schema.fields() == self.schema.fields()
                    || schema
                        .fields()
                        .iter()
                        .zip(self.schema.fields())
                        .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type()) =>
            {
                let mut s = self.state.write().expect("dimension lock");
                s.batches = Arc::new(batches);
                s.version = Some(version);
                tracing::info!(table = %self.name, "dimension table reloaded");
            }
            Ok(_) => tracing::warn!(
                table = %self.name,
                "dimension table changed its schema; keeping the rows loaded at start (restart to take the new schema)"
            ),
            Err(e) => {
                tracing::warn!(table = %self.name, error = %e, "dimension table unreadable; keeping its last rows")
            }
        }
    }
}

/// `path` as an object-store URL, when it is one (a file or a Delta table there).
fn cloud_url(path: &Path) -> Option<url::Url> {
    let text = path.to_str()?;
    crate::cloud::is_cloud_url(text)
        .then(|| url::Url::parse(text).ok())
        .flatten()
}

fn infer_format(path: &Path) -> Option<DimensionFormat> {
    if let Some(url) = cloud_url(path) {
        // No directory to look into: a file's extension names it, else a Delta table.
        return Some(match url.path().rsplit('.').next() {
            Some("csv") => DimensionFormat::Csv,
            Some("parquet") => DimensionFormat::Parquet,
            _ => DimensionFormat::Delta,
        });
    }
    if path.join("_delta_log").is_dir() {
        return Some(DimensionFormat::Delta);
    }
    match path.extension()?.to_str()? {
        "csv" => Some(DimensionFormat::Csv),
        "parquet" => Some(DimensionFormat::Parquet),
        _ => None,
    }
}

fn table_error(path: &Path, e: impl std::fmt::Display) -> CoreError {
    CoreError::Table {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

async fn version(path: &Path, format: DimensionFormat) -> Result<Version> {
    Ok(match format {
        DimensionFormat::Delta => {
            Version::Delta(open_delta(path).await?.version().map_or(-1, |v| v as i64))
        }
        _ => match cloud_url(path) {
            Some(url) => {
                let (store, location) = crate::cloud::store_for(&url)?;
                let meta = store
                    .head(&location)
                    .await
                    .map_err(|e| table_error(path, e))?;
                Version::Modified(SystemTime::from(meta.last_modified))
            }
            None => Version::Modified(
                std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .map_err(|e| table_error(path, e))?,
            ),
        },
    })
}

async fn open_delta(path: &Path) -> Result<deltalake::DeltaTable> {
    if let Some(url) = cloud_url(path) {
        let dir = if url.path().ends_with('/') {
            url
        } else {
            url::Url::parse(&format!("{url}/")).map_err(|e| table_error(path, e))?
        };
        return crate::delta::open(dir)
            .await
            .map_err(|e| table_error(path, e));
    }
    let absolute = std::path::absolute(path).map_err(|e| table_error(path, e))?;
    let url = url::Url::from_directory_path(absolute)
        .map_err(|_| table_error(path, "not a usable directory path"))?;
    deltalake::open_table(url)
        .await
        .map_err(|e| table_error(path, e))
}

async fn read(
    path: &Path,
    format: DimensionFormat,
) -> Result<(Vec<RecordBatch>, SchemaRef, Version)> {
    let ctx = crate::cloud::session_context();
    let file = path.to_string_lossy().to_string();
    let v = version(path, format).await?;
    let df = match format {
        DimensionFormat::Csv => ctx.read_csv(file, CsvReadOptions::new()).await?,
        DimensionFormat::Parquet => {
            ctx.read_parquet(file, ParquetReadOptions::default())
                .await?
        }
        DimensionFormat::Delta => {
            let table = open_delta(path).await?;
            table
                .update_datafusion_session(&ctx.state())
                .map_err(|e| table_error(path, e))?;
            let provider = table
                .table_provider()
                .await
                .map_err(|e| table_error(path, e))?;
            ctx.read_table(provider)?
        }
    };
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await?;
    Ok((batches, schema, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rewrite a file with a modification time `secs` ahead, so the change shows even on
    /// file systems with coarse timestamps.
    fn rewrite(path: &Path, text: &str, secs: u64) {
        std::fs::write(path, text).unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(secs))
            .unwrap();
    }

    #[tokio::test]
    async fn reloads_a_changed_file_and_keeps_rows_when_it_breaks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sites.csv");
        std::fs::write(&path, "device,site\nd1,north\n").unwrap();
        let t = DimensionTable::load(
            "sites",
            Path::new("sites.csv"),
            None,
            dir.path(),
            "tables[0]",
        )
        .await
        .unwrap();
        assert_eq!(t.format, DimensionFormat::Csv);
        assert_eq!(t.batches().iter().map(|b| b.num_rows()).sum::<usize>(), 1);

        rewrite(&path, "device,site\nd1,north\nd2,south\n", 5);
        t.reload_if_changed().await;
        assert_eq!(t.batches().iter().map(|b| b.num_rows()).sum::<usize>(), 2);

        // Another schema: the last good rows stay.
        rewrite(&path, "other\n1\n", 10);
        t.reload_if_changed().await;
        assert_eq!(t.batches().iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    }

    #[tokio::test]
    async fn unreadable_or_unknown_files_are_refused_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let e = DimensionTable::load("t", Path::new("missing.csv"), None, dir.path(), "tables[1]")
            .await
            .unwrap_err();
        assert!(
            e.contains("tables[1].path") && e.contains("missing.csv"),
            "{e}"
        );
        let e = DimensionTable::load("t", Path::new("x.json"), None, dir.path(), "tables[1]")
            .await
            .unwrap_err();
        assert!(e.contains("cannot tell the format"), "{e}");
    }
}
