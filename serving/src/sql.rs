//! `POST /api/v1/sql`: read-only DataFusion SQL over the merged views (each under its
//! name), the master tables (`master_<stream>`) and the dead-letter tables
//! (`dead_letters_<stream>`).
//!
//! Only one `SELECT` (or `WITH … SELECT`) statement, or its `EXPLAIN [ANALYZE]`, is
//! accepted: the statement kind is checked on the syntax tree first, for a precise
//! refusal, and DataFusion's own
//! read-only options (no DDL, DML or statements) guard the execution as well. Each query
//! runs in a fresh session with a memory pool of `sql.memory-limit-mb`, no spilling to
//! disk, no file or URL tables, and a `sql.timeout-ms` deadline; dropping the request
//! (a client that goes away) cancels it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{SetExpr, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use serde::Deserialize;
use serde_json::{Map, Value};
use tributary_core::config::SqlConfig;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;

use crate::error::{Body, ErrorBody, ServingError};
use crate::json::cell;
use crate::merge::Merger;
use crate::sql_tables::Tables;
use crate::state::AppState;
use tributary_core::delta::AsOf;

/// A query for the read-only SQL endpoint.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    /// One read-only query.
    pub sql: String,
    /// `json` (default) or `arrow` (an Arrow IPC stream).
    #[serde(default)]
    pub format: Option<String>,
    /// Time travel: read the master and dead-letter tables at this Delta version, and
    /// each view as its batch states were then (batch layer only).
    #[serde(default)]
    pub as_of_version: Option<u64>,
    /// Time travel by time (RFC 3339): each table's latest version at that time.
    #[serde(default)]
    pub as_of: Option<String>,
}

impl SqlRequest {
    /// The time-travel point asked for, if any (not both ways at once).
    pub fn as_of(&self) -> Result<Option<AsOf>, ServingError> {
        crate::params::parse_as_of(self.as_of_version, self.as_of.as_deref())
    }
}

/// A finished query.
pub struct SqlResult {
    /// The answer's schema.
    pub schema: SchemaRef,
    /// The answer's rows.
    pub batches: Vec<RecordBatch>,
    /// How long the query took.
    pub elapsed: Duration,
    /// More rows followed than `sql.max-rows`; they were not computed.
    pub truncated: bool,
}

/// Refuse anything but one read-only query, saying what it is.
pub fn check_read_only(sql: &str) -> Result<(), ServingError> {
    let statements = Parser::parse_sql(&GenericDialect {}, sql)
        .map_err(|e| ServingError::Sql(format!("SQL does not parse: {e}")))?;
    let [statement] = statements.as_slice() else {
        return Err(ServingError::Sql(format!(
            "send exactly one statement, got {}",
            statements.len()
        )));
    };
    // EXPLAIN [ANALYZE] of a query is read-only too (ANALYZE runs it, under the same
    // limits); of anything else it is refused like the statement itself.
    let statement = match statement {
        Statement::Explain { statement, .. } => statement.as_ref(),
        other => other,
    };
    let Statement::Query(query) = statement else {
        let kind = statement
            .to_string()
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
            .to_uppercase();
        return Err(ServingError::Forbidden(format!(
            "only read-only queries (SELECT) are allowed here, not `{kind} …`"
        )));
    };
    if let SetExpr::Select(select) = query.body.as_ref()
        && select.into.is_some()
    {
        return Err(ServingError::Forbidden(
            "SELECT … INTO writes a table: only read-only queries are allowed".into(),
        ));
    }
    Ok(())
}

/// Run `sql` under `limits` over the merged views and the stored tables.
/// `row_cap`: stop reading after this many rows (a JSON answer's `sql.max-rows`); an
/// Arrow answer is bounded by `sql.max-answer-bytes` alone.
pub async fn run(
    merger: &Arc<Merger>,
    sql: &str,
    limits: &SqlConfig,
    as_of: Option<&AsOf>,
    row_cap: Option<usize>,
) -> Result<SqlResult, ServingError> {
    crate::sql_guard::check_limits(sql, limits)?;
    check_read_only(sql)?;
    let started = Instant::now();
    let (ctx, tables) = session(merger, limits, as_of)?;
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let memory_limit = limits.memory_limit_mb.max(1) * 1024 * 1024;
    crate::sql_guard::register_guards(&ctx, memory_limit);
    let timeout = Duration::from_millis(limits.timeout_ms.max(1));
    let (max_rows, max_bytes) = (row_cap.unwrap_or(usize::MAX), limits.max_answer_bytes);
    let text = sql.to_string();
    // On the SQL runtime (see sql_guard): the deadline below fires on time however
    // long the query computes between yields, and aborting the task stops it at its
    // next one.
    let task = crate::sql_guard::runtime().spawn(async move {
        use futures::StreamExt;
        let df = ctx.sql_with_options(&text, options).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        // The answer is bounded as it streams, not after it is all in memory.
        let mut stream = df.execute_stream().await?;
        let (mut batches, mut rows, mut bytes, mut truncated) = (Vec::new(), 0usize, 0usize, false);
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            bytes += batch.get_array_memory_size();
            if bytes > max_bytes {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "{ANSWER_TOO_LARGE} {max_bytes} bytes (sql.max-answer-bytes)"
                )));
            }
            rows += batch.num_rows();
            batches.push(batch);
            if rows > max_rows {
                truncated = true;
                break;
            }
        }
        Ok::<_, DataFusionError>((schema, batches, truncated))
    });
    let abort = task.abort_handle();
    let (schema, batches, truncated) = match tokio::time::timeout(timeout, task).await {
        Err(_) => {
            abort.abort();
            return Err(ServingError::SqlTimeout(limits.timeout_ms));
        }
        Ok(Err(join)) => {
            return Err(ServingError::Server(format!("the query stopped: {join}")));
        }
        Ok(Ok(result)) => result,
    }
    .map_err(|e| {
        if let Some(failure) = tables.failure() {
            return failure;
        }
        let text = e.to_string();
        match tables
            .missing()
            .into_iter()
            .find(|(table, _)| text.contains(table.as_str()))
        {
            Some((_, reason)) => ServingError::bad("as_of", reason),
            None => query_error(e, limits),
        }
    })?;
    Ok(SqlResult {
        schema,
        batches,
        elapsed: started.elapsed(),
        truncated,
    })
}

/// A fresh session for one query: a memory pool of `sql.memory-limit-mb`, no spilling,
/// and the views and stored tables in its default schema.
fn session(
    merger: &Arc<Merger>,
    limits: &SqlConfig,
    as_of: Option<&AsOf>,
) -> Result<(SessionContext, Arc<Tables>), ServingError> {
    let runtime = tributary_core::cloud::runtime_with(
        RuntimeEnvBuilder::new()
            .with_memory_limit(limits.memory_limit_mb.max(1) * 1024 * 1024, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            ),
    )
    .map_err(ServingError::Engine)?;
    let ctx = SessionContext::new_with_config_rt(
        SessionConfig::new().with_information_schema(true),
        runtime.clone(),
    );
    // Tables are made when the query names them; one with no state at the time-travel
    // point is left out, and a query that names it is refused with that reason.
    let tables = Arc::new(Tables::new(
        merger.clone(),
        as_of.cloned(),
        SessionStateBuilder::new().with_runtime_env(runtime).build(),
    ));
    let catalog = ctx
        .state()
        .config()
        .options()
        .catalog
        .default_catalog
        .clone();
    ctx.catalog(&catalog)
        .ok_or_else(|| ServingError::Server(format!("no catalog `{catalog}`")))?
        .register_schema("public", tables.clone())
        .map_err(ServingError::Engine)?;
    Ok((ctx, tables))
}

/// How an answer over `sql.max-answer-bytes` is reported.
const ANSWER_TOO_LARGE: &str = "the answer is larger than";

fn query_error(e: DataFusionError, limits: &SqlConfig) -> ServingError {
    match e.find_root() {
        DataFusionError::ResourcesExhausted(m) if m.starts_with(ANSWER_TOO_LARGE) => {
            ServingError::SqlAnswerTooLarge(m.clone())
        }
        DataFusionError::ResourcesExhausted(m) => ServingError::SqlMemory {
            limit_mb: limits.memory_limit_mb,
            detail: m.clone(),
        },
        DataFusionError::Plan(m) | DataFusionError::SQL(_, Some(m)) => ServingError::Sql(m.clone()),
        DataFusionError::SchemaError(..)
        | DataFusionError::SQL(..)
        | DataFusionError::NotImplemented(_) => ServingError::Sql(e.strip_backtrace()),
        _ => ServingError::Sql(e.strip_backtrace()),
    }
}

/// JSON rows (at most `max_rows`). A view's `_src` column says which layer each row came
/// from: 1 batch, 2 speed, 3 both.
pub fn to_json(result: &SqlResult, max_rows: usize) -> Value {
    let mut rows = Vec::new();
    let mut total = 0usize;
    for b in &result.batches {
        total += b.num_rows();
        for i in 0..b.num_rows() {
            if rows.len() >= max_rows {
                break;
            }
            let mut obj = Map::new();
            for (c, f) in b.columns().iter().zip(b.schema().fields()) {
                obj.insert(f.name().clone(), cell(c.as_ref(), i));
            }
            rows.push(Value::Object(obj));
        }
    }
    let columns: Vec<Value> = result
        .schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect();
    serde_json::json!({
        "columns": columns,
        "rows": rows,
        "row_count": total,
        "truncated": result.truncated || total > rows.len(),
        "elapsed_ms": result.elapsed.as_millis() as u64,
    })
}

/// A stream's dead letters, newest first: how many there are, and up to `limit` of them.
pub async fn dead_letters(
    merger: &Merger,
    stream: &str,
    limit: usize,
) -> Result<(u64, Vec<Value>), ServingError> {
    let ctx = tributary_core::cloud::session_context();
    let Some(provider) =
        crate::sql_tables::stored_table(&ctx.state(), merger.storage().dead_letter_table(stream))
            .await?
    else {
        return Ok((0, Vec::new()));
    };
    ctx.register_table("dead_letters", provider)
        .map_err(ServingError::Engine)?;
    let total = ctx
        .table("dead_letters")
        .await
        .map_err(ServingError::Engine)?
        .count()
        .await
        .map_err(ServingError::Engine)? as u64;
    let df = ctx
        .sql(&format!(
            // `*`: tables written before quarantine have no `partition` column.
            "SELECT * FROM dead_letters ORDER BY received_at DESC LIMIT {limit}"
        ))
        .await
        .map_err(ServingError::Engine)?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(ServingError::Engine)?;
    let result = SqlResult {
        schema,
        batches,
        elapsed: Duration::ZERO,
        truncated: false,
    };
    let rows = to_json(&result, limit)["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok((total, rows))
}

#[utoipa::path(post, path = "/api/v1/sql", tag = "sql",
    request_body = SqlRequest,
    responses((status = 200, description = "Columns and rows (JSON), or an Arrow IPC stream", body = Object),
              (status = 400, description = "SQL that does not parse or plan, or a bad format", body = ErrorBody),
              (status = 403, description = "Not a read-only query", body = ErrorBody),
              (status = 408, description = "Past the time limit, cancelled", body = ErrorBody),
              (status = 422, description = "Over the memory limit", body = ErrorBody)))]
/// `POST /api/v1/sql` with `{"sql": "...", "format": "json" | "arrow"}`.
pub async fn post_sql(
    State(state): State<AppState>,
    Body(request): Body<SqlRequest>,
) -> Result<axum::response::Response, ServingError> {
    let arrow = match request.format.as_deref() {
        None | Some("json") => false,
        Some("arrow") => true,
        Some(other) => {
            return Err(ServingError::bad(
                "format",
                format!("expected `json` or `arrow`, got `{other}`"),
            ));
        }
    };
    let as_of = request.as_of()?;
    let cap = (!arrow).then_some(state.sql.max_rows);
    let result = run(&state.merger, &request.sql, &state.sql, as_of.as_ref(), cap).await?;
    if arrow {
        let bytes = tributary_speed::source::to_ipc(&result.schema, &result.batches)
            .map_err(|e| ServingError::Server(e.to_string()))?;
        return Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "application/vnd.apache.arrow.stream",
            )],
            bytes,
        )
            .into_response());
    }
    Ok(Json(to_json(&result, state.sql.max_rows)).into_response())
}
