//! The tables the SQL endpoint offers, made only when a query names them: a view's
//! merged answer (or, when travelling in time, its batch states then, finalized), a
//! stream's master or dead-letter Delta table. A query over one view neither merges the
//! others nor opens any Delta log.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionState;
use datafusion::logical_expr::TableType;
use tributary_core::delta::AsOf;
use url::Url;

use crate::error::ServingError;
use crate::merge::Merger;

/// The default schema of an SQL query's session.
pub struct Tables {
    merger: Arc<Merger>,
    as_of: Option<AsOf>,
    /// A session on the query's runtime: Delta tables register their object store
    /// there. Not the query's own session, which holds this schema (no cycle).
    runtime: SessionState,
    /// Tables a query named that had no state at the time-travel point, and why.
    missing: Mutex<Vec<(String, String)>>,
    /// A view that could not be merged: the query's answer is this error.
    failure: Mutex<Option<ServingError>>,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables")
            .field("as_of", &self.as_of)
            .finish()
    }
}

enum Kind {
    View,
    Stored(Url),
}

impl Tables {
    pub fn new(merger: Arc<Merger>, as_of: Option<AsOf>, runtime: SessionState) -> Self {
        Tables {
            merger,
            as_of,
            runtime,
            missing: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
        }
    }

    /// Why the tables the query named had no state at the time-travel point.
    pub fn missing(&self) -> Vec<(String, String)> {
        self.missing.lock().expect("missing lock").clone()
    }

    /// The error a view's merge failed with, if one did.
    pub fn failure(&self) -> Option<ServingError> {
        self.failure.lock().expect("failure lock").take()
    }

    fn failed(&self, e: ServingError) -> DataFusionError {
        let text = e.to_string();
        *self.failure.lock().expect("failure lock") = Some(e);
        DataFusionError::Execution(text)
    }

    fn kind(&self, name: &str) -> Option<Kind> {
        let pipeline = self.merger.pipeline();
        if pipeline.view(name).is_some() {
            return Some(Kind::View);
        }
        let storage = self.merger.storage();
        if pipeline.append_view(name).is_some() {
            return Some(Kind::Stored(storage.append_view_table(name)));
        }
        pipeline.streams.iter().find_map(|s| {
            if name.strip_prefix("master_") == Some(s.name.as_str()) {
                Some(Kind::Stored(storage.master_table(&s.name)))
            } else if name.strip_prefix("dead_letters_") == Some(s.name.as_str()) {
                Some(Kind::Stored(storage.dead_letter_table(&s.name)))
            } else {
                None
            }
        })
    }

    fn all_names(&self) -> Vec<String> {
        let pipeline = self.merger.pipeline();
        let views = pipeline
            .views
            .iter()
            .map(|v| v.name.clone())
            .chain(pipeline.append_views.iter().map(|v| v.name.clone()));
        let stored = pipeline.streams.iter().flat_map(|s| {
            [
                format!("master_{}", s.name),
                format!("dead_letters_{}", s.name),
            ]
        });
        views.chain(stored).collect()
    }

    fn travelled(&self, name: &str, at: &AsOf, e: &dyn std::fmt::Display) {
        self.missing.lock().expect("missing lock").push((
            name.to_string(),
            format!("`{name}` has no state as of {at}: {e}"),
        ));
    }

    /// `rows` of view `name` when no group failed: a SQL answer without them would look
    /// whole, so a failed group refuses the query and names it.
    fn whole(
        &self,
        name: &str,
        rows: Vec<RecordBatch>,
        failed: &[serde_json::Value],
    ) -> Result<Vec<RecordBatch>> {
        match failed.first() {
            None => Ok(rows),
            Some(first) => Err(self.failed(ServingError::RowsFailed {
                view: name.to_string(),
                count: failed.len(),
                first: first.to_string(),
            })),
        }
    }

    async fn view(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let view = self.merger.pipeline().view(name).expect("kind checked");
        let rows = match &self.as_of {
            None => {
                let merged = self.merger.merged(name).await.map_err(|e| self.failed(e))?;
                self.whole(name, merged.rows, &merged.failed)?
            }
            Some(at) => {
                let storage = self.merger.storage();
                let states = match tributary_batch::views::load_as_of(storage, &view, at).await {
                    Ok(b) => b.map(|b| b.states).unwrap_or_default(),
                    Err(e) => {
                        self.travelled(name, at, &e);
                        return Ok(None);
                    }
                };
                let (rows, failed) = crate::merge::finalize(&view, states)
                    .await
                    .map_err(|e| self.failed(e))?;
                self.whole(name, rows, &failed)?
            }
        };
        let schema = rows
            .first()
            .map(|b| b.schema())
            .unwrap_or(view.output_schema.clone());
        Ok(Some(Arc::new(MemTable::try_new(schema, vec![rows])?)))
    }

    async fn stored(&self, name: &str, url: Url) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(at) = &self.as_of else {
            return stored_table(&self.runtime, url)
                .await
                .map_err(|e| self.failed(e));
        };
        let table = match tributary_core::delta::open_as_of(url, at).await {
            Ok(Some(table)) => table,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.travelled(name, at, &e);
                return Ok(None);
            }
        };
        table_provider(&self.runtime, &table)
            .await
            .map(Some)
            .map_err(|e| self.failed(e))
    }
}

#[async_trait]
impl SchemaProvider for Tables {
    fn table_names(&self) -> Vec<String> {
        self.all_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match self.kind(name) {
            None => Ok(None),
            Some(Kind::View) => self.view(name).await,
            Some(Kind::Stored(url)) => self.stored(name, url).await,
        }
    }

    async fn table_type(&self, name: &str) -> Result<Option<TableType>> {
        Ok(self.kind(name).map(|k| match k {
            Kind::View => TableType::View,
            Kind::Stored(_) => TableType::Base,
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.kind(name).is_some()
    }
}

/// The Delta table at `url` as a table of `session`'s queries, or `None` before its
/// first commit.
pub(crate) async fn stored_table(
    session: &dyn datafusion::catalog::Session,
    url: url::Url,
) -> Result<Option<Arc<dyn datafusion::catalog::TableProvider>>, ServingError> {
    let what = format!("table at {url}");
    let table = tributary_core::delta::open(url)
        .await
        .map_err(|source| ServingError::Table { what, source })?;
    if table.version().is_none() {
        return Ok(None);
    }
    table_provider(session, &table).await.map(Some)
}

/// An open Delta table as a table of `session`'s queries (its object store registered
/// with the session's runtime).
pub(crate) async fn table_provider(
    session: &dyn datafusion::catalog::Session,
    table: &deltalake::DeltaTable,
) -> Result<Arc<dyn datafusion::catalog::TableProvider>, ServingError> {
    let what = || format!("table at {}", table.table_url());
    table
        .update_datafusion_session(session)
        .map_err(|source| ServingError::Table {
            what: what(),
            source,
        })?;
    table.table_provider().await.map_err(ServingError::Engine)
}
