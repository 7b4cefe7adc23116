//! The view catalog: every change to a view definition as one row of a Delta table
//! under the storage root (`_catalog/views`), appended and never rewritten. A view's
//! definition now is its row of the highest revision; the table's versions give the
//! history of definitions and time travel over them for nothing. Views of the TOML file
//! are its seed: a name the catalog has never seen is written from the file at start,
//! and from then on the catalog's row is the view.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::config::ViewConfig;
use crate::error::{CoreError, Result};
use crate::storage::Storage;
use crate::view::CompiledView;

/// Whether a cataloged view runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    /// Computed by both layers (after its backfill).
    Running,
    /// Kept, not computed; resuming backfills it again.
    Paused,
    /// Gone; its name may be used again.
    Dropped,
}

impl Lifecycle {
    fn name(self) -> &'static str {
        match self {
            Lifecycle::Running => "running",
            Lifecycle::Paused => "paused",
            Lifecycle::Dropped => "dropped",
        }
    }

    fn parse(text: &str) -> Option<Lifecycle> {
        match text {
            "running" => Some(Lifecycle::Running),
            "paused" => Some(Lifecycle::Paused),
            "dropped" => Some(Lifecycle::Dropped),
            _ => None,
        }
    }
}

/// One row: a view's definition and state as of one change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewRecord {
    /// The view's name.
    pub name: String,
    /// Its SQL.
    pub sql: String,
    /// Its allowed lateness.
    pub allowed_lateness_ms: u64,
    /// Running, paused or dropped.
    pub lifecycle: Lifecycle,
    /// 1 for the first row of the name, then one more per change.
    pub revision: i64,
    /// When the change was made (microseconds).
    pub at: i64,
    /// `config` (seeded from the TOML file) or `api`.
    pub origin: String,
    /// Incremental runs of this view alone on a cron schedule (UTC), besides any
    /// `batch.schedule` for every view (a column since catalogs of 2026-12-06).
    #[serde(default)]
    pub schedule: Option<String>,
}

impl ViewRecord {
    /// The view configuration this row defines.
    pub fn config(&self) -> ViewConfig {
        ViewConfig {
            name: self.name.clone(),
            sql: self.sql.clone(),
            allowed_lateness_ms: self.allowed_lateness_ms,
            schedule: self.schedule.clone(),
        }
    }
}

/// The catalog table of one storage root.
#[derive(Debug, Clone)]
pub struct Catalog {
    url: Url,
}

fn schema() -> SchemaRef {
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("sql", DataType::Utf8, false),
        Field::new("allowed_lateness_ms", DataType::Int64, false),
        Field::new("lifecycle", DataType::Utf8, false),
        Field::new("revision", DataType::Int64, false),
        Field::new("at", utc, false),
        Field::new("origin", DataType::Utf8, false),
        Field::new("schedule", DataType::Utf8, true),
    ]))
}

impl Catalog {
    /// The catalog under `storage`'s root.
    pub fn new(storage: &Storage) -> Catalog {
        Catalog {
            url: storage.catalog_table(),
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> CoreError {
        CoreError::Table {
            path: self.url.to_string(),
            message: e.to_string(),
        }
    }

    /// The table, or `None` before its first row.
    async fn table(&self) -> Result<Option<deltalake::DeltaTable>> {
        if !crate::delta::exists(&self.url)
            .await
            .map_err(|e| self.err(e))?
        {
            return Ok(None);
        }
        let table = crate::delta::open(self.url.clone())
            .await
            .map_err(|e| self.err(e))?;
        Ok(Some(table))
    }

    /// Every row, oldest first (none when the table does not exist yet).
    pub async fn history(&self) -> Result<Vec<ViewRecord>> {
        let Some(table) = self.table().await? else {
            return Ok(Vec::new());
        };
        let ctx = crate::cloud::session_context();
        table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| self.err(e))?;
        let provider = table.table_provider().await.map_err(|e| self.err(e))?;
        // A catalog written before schedules were kept has no such column.
        let schedule = match provider.schema().field_with_name("schedule") {
            Ok(_) => "schedule",
            Err(_) => "CAST(NULL AS VARCHAR) AS schedule",
        };
        ctx.register_table("catalog", provider)?;
        let batches = ctx
            .sql(&format!("SELECT name, sql, allowed_lateness_ms, lifecycle, revision, at, origin, {schedule} FROM catalog ORDER BY at, revision"))
            .await?
            .collect()
            .await?;
        let mut out = Vec::new();
        for b in &batches {
            out.extend(self.rows(b)?);
        }
        Ok(out)
    }

    fn rows(&self, b: &RecordBatch) -> Result<Vec<ViewRecord>> {
        let text = |i: usize| -> Result<Vec<String>> {
            let c = datafusion::arrow::compute::cast(b.column(i), &DataType::Utf8)?;
            let c = c.as_string::<i32>();
            Ok(c.iter()
                .map(|v| v.unwrap_or_default().to_string())
                .collect())
        };
        let int = |i: usize| -> Result<Vec<i64>> {
            let c = datafusion::arrow::compute::cast(b.column(i), &DataType::Int64)?;
            Ok(c.as_primitive::<Int64Type>().values().to_vec())
        };
        let (names, sqls, lateness) = (text(0)?, text(1)?, int(2)?);
        let (states, revisions, origins) = (text(3)?, int(4)?, text(6)?);
        let schedules = datafusion::arrow::compute::cast(b.column(7), &DataType::Utf8)?;
        let schedules = schedules.as_string::<i32>();
        let at = datafusion::arrow::compute::cast(
            b.column(5),
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )?;
        let at = at.as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>();
        (0..b.num_rows())
            .map(|j| {
                Ok(ViewRecord {
                    name: names[j].clone(),
                    sql: sqls[j].clone(),
                    allowed_lateness_ms: lateness[j].max(0) as u64,
                    lifecycle: Lifecycle::parse(&states[j])
                        .ok_or_else(|| self.err(format!("unknown lifecycle `{}`", states[j])))?,
                    revision: revisions[j],
                    at: at.value(j),
                    origin: origins[j].clone(),
                    schedule: schedules
                        .is_valid(j)
                        .then(|| schedules.value(j).to_string()),
                })
            })
            .collect()
    }

    /// Each view's row of the highest revision (dropped ones included), by name.
    pub async fn current(&self) -> Result<Vec<ViewRecord>> {
        Ok(latest(self.history().await?))
    }

    /// Append `records` in one commit.
    pub async fn append(&self, records: &[ViewRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let col = |f: &dyn Fn(&ViewRecord) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(records.iter().map(f)))
        };
        let int = |f: &dyn Fn(&ViewRecord) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(records.iter().map(f)))
        };
        let at: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from_iter_values(records.iter().map(|r| r.at))
                .with_timezone("UTC"),
        );
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                col(&|r| r.name.clone()),
                col(&|r| r.sql.clone()),
                int(&|r| r.allowed_lateness_ms as i64),
                col(&|r| r.lifecycle.name().to_string()),
                int(&|r| r.revision),
                at,
                col(&|r| r.origin.clone()),
                Arc::new(StringArray::from_iter(
                    records.iter().map(|r| r.schedule.as_deref()),
                )),
            ],
        )?;
        let table = crate::delta::open(self.url.clone())
            .await
            .map_err(|e| self.err(e))?;
        table
            .write(vec![batch])
            .with_save_mode(SaveMode::Append)
            // Adds the `schedule` column to a catalog written before it existed.
            .with_schema_mode(SchemaMode::Merge)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// Each name's row of the highest revision.
fn latest(history: Vec<ViewRecord>) -> Vec<ViewRecord> {
    let mut by_name: std::collections::BTreeMap<String, ViewRecord> = Default::default();
    for r in history {
        match by_name.get(&r.name) {
            Some(old) if old.revision >= r.revision => {}
            _ => {
                by_name.insert(r.name.clone(), r);
            }
        }
    }
    by_name.into_values().collect()
}

/// What a pass over the catalog made of it: the views it does not run, and why.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Paused views (not in the pipeline).
    pub paused: Vec<ViewRecord>,
    /// Running views whose SQL no longer compiles (a stream or column gone), with why;
    /// the others run.
    pub failed: Vec<(ViewRecord, String)>,
    /// Running views made through the API: they may need a backfill.
    pub from_api: Vec<String>,
    /// Every view's current row (dropped ones included).
    pub current: Vec<ViewRecord>,
    /// Views this pass compiled into the pipeline (new, resumed or replaced).
    pub installed: Vec<Arc<CompiledView>>,
    /// Views this pass took out of the pipeline (paused, dropped, or failing).
    pub removed: Vec<String>,
}

impl Catalog {
    /// Make `pipeline`'s views the catalog's running ones. The latest change wins,
    /// made in the file or through the API: a file view whose definition differs from
    /// the last one the file gave (or that the catalog has never seen) is written as a
    /// new revision when `seed` (one process writes; the others read), otherwise the
    /// catalog's row stands. Then every running row is compiled; one that fails is
    /// reported and left out, never stopping the others. Called again later it follows
    /// the catalog: only views whose row changed since are compiled again, and
    /// `on_change` is told each such name before the pipeline changes.
    pub async fn reconcile(
        &self,
        pipeline: &crate::pipeline::Pipeline,
        file: &[ViewConfig],
        seed: bool,
        on_change: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Reconciled> {
        let history = self.history().await?;
        let mut current = latest(history.clone());
        let changed = file_changes(&history, &current, file);
        if seed {
            self.append(&changed).await?;
        }
        current.retain(|r| !changed.iter().any(|c| c.name == r.name));
        current.extend(changed);
        let mut out = Reconciled {
            current: current.clone(),
            ..Default::default()
        };
        for r in current {
            out.apply(pipeline, r, on_change).await;
        }
        Ok(out)
    }

    /// The catalog table's version (`None` before its first row): a pass is needed
    /// only when it moved.
    pub async fn version(&self) -> Result<Option<i64>> {
        let table = self.table().await?;
        Ok(table.and_then(|t| t.version()).map(|v| v as i64))
    }

    /// Follow changes made by other processes: every `every`, when the table has moved
    /// since the last pass that succeeded, run `pass` (which reconciles). The first turn
    /// always passes, so a change made between start-up and the first turn is not
    /// missed. Ends at `shutdown`; a failed turn is tried again at the next.
    pub async fn follow<F, Fut>(
        self,
        every: std::time::Duration,
        shutdown: crate::shutdown::Shutdown,
        mut pass: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let mut seen: Option<Option<i64>> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(every) => {}
            }
            let now = match self.version().await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the view catalog; trying again");
                    continue;
                }
            };
            if seen == Some(now) {
                continue;
            }
            match pass().await {
                Ok(()) => seen = Some(now),
                Err(e) => {
                    tracing::warn!(error = %e, "could not follow the view catalog; trying again")
                }
            }
        }
    }
}

/// The file's views that are new to the catalog or changed since the file last gave
/// them, as the rows that record them.
fn file_changes(
    history: &[ViewRecord],
    current: &[ViewRecord],
    file: &[ViewConfig],
) -> Vec<ViewRecord> {
    file.iter()
        .filter(|v| {
            let last_from_file = history
                .iter()
                .filter(|r| r.name == v.name && r.origin == "config")
                .max_by_key(|r| r.revision);
            !last_from_file.is_some_and(|r| {
                r.sql == v.sql
                    && r.allowed_lateness_ms == v.allowed_lateness_ms
                    && r.schedule == v.schedule
            })
        })
        .map(|v| ViewRecord {
            name: v.name.clone(),
            sql: v.sql.clone(),
            allowed_lateness_ms: v.allowed_lateness_ms,
            lifecycle: Lifecycle::Running,
            revision: current
                .iter()
                .find(|r| r.name == v.name)
                .map_or(1, |r| r.revision + 1),
            at: crate::time::now_micros(),
            origin: "config".into(),
            schedule: v.schedule.clone(),
        })
        .collect()
}

impl Reconciled {
    /// Bring `pipeline`'s view of `r.name` to row `r`.
    async fn apply(
        &mut self,
        pipeline: &crate::pipeline::Pipeline,
        r: ViewRecord,
        on_change: &(dyn Fn(&str) + Send + Sync),
    ) {
        let held = pipeline.view(&r.name);
        let same = held.as_ref().is_some_and(|v| {
            v.sql == r.sql
                && v.allowed_lateness_us == r.allowed_lateness_ms as i64 * 1000
                && (v.revision == r.revision || v.revision == 0)
        });
        match r.lifecycle {
            Lifecycle::Running if same => {
                let held = held.expect("same implies held");
                if held.revision == 0 {
                    // Compiled from the file before the catalog was read: it is this row.
                    let mut named = (*held).clone();
                    named.revision = r.revision;
                    pipeline.views.insert(Arc::new(named));
                }
            }
            Lifecycle::Running => match pipeline.compile_view(&r.config()).await {
                Ok(mut v) => {
                    on_change(&r.name);
                    if held.as_ref().is_some_and(|h| h.revision == 0) {
                        tracing::warn!(view = %r.name, "the catalog's definition (changed through the API) differs from the file's; the catalog's is used");
                    }
                    v.revision = r.revision;
                    let v = Arc::new(v);
                    pipeline.views.insert(v.clone());
                    self.installed.push(v);
                    if r.origin == "api" {
                        self.from_api.push(r.name.clone());
                    }
                }
                Err(e) => {
                    on_change(&r.name);
                    if pipeline.views.remove(&r.name).is_some() {
                        self.removed.push(r.name.clone());
                    }
                    self.failed.push((r, e.to_string()));
                }
            },
            Lifecycle::Paused | Lifecycle::Dropped => {
                if held.is_some() {
                    on_change(&r.name);
                }
                if pipeline.views.remove(&r.name).is_some() {
                    self.removed.push(r.name.clone());
                }
                if r.lifecycle == Lifecycle::Paused {
                    self.paused.push(r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
