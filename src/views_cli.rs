//! `tributary views …`: the runtime view API from the command line, against a running
//! serving process (`--url`, default the configuration's `http.addr`; `--token` or
//! TRIBUTARY_TOKEN when tokens are on). Prints the API's answer; a refusal exits 1
//! with the API's reason.

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

#[derive(Subcommand, Debug)]
pub enum ViewsCommand {
    /// Every view and its state (running, backfilling, paused, failed).
    List,
    /// One view's state and backfill progress.
    Status { name: String },
    /// Create a view; it answers once its backfill has made it exact.
    Create {
        name: String,
        /// The SQL (as in the configuration file).
        #[arg(long)]
        sql: String,
        #[arg(long, default_value_t = 0)]
        allowed_lateness_ms: u64,
        /// Incremental runs of this view alone on a cron schedule (UTC).
        #[arg(long)]
        schedule: Option<String>,
    },
    /// Give a view a new definition (recomputed over all history).
    Replace {
        name: String,
        #[arg(long)]
        sql: String,
        #[arg(long, default_value_t = 0)]
        allowed_lateness_ms: u64,
        /// Incremental runs of this view alone on a cron schedule (UTC).
        #[arg(long)]
        schedule: Option<String>,
    },
    /// Stop computing a view, keeping its definition.
    Pause { name: String },
    /// Compute a paused view again (backfilled anew).
    Resume { name: String },
    /// Remove a view, its states and its batch table.
    Drop { name: String },
}

/// Where the running process is, and the token to show it.
pub struct Target {
    pub url: String,
    pub token: Option<String>,
}

pub async fn run(target: Target, command: ViewsCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let (method, path, body) = match command {
        ViewsCommand::List => (Method::GET, "/api/v1/views".to_string(), None),
        ViewsCommand::Status { name } => {
            (Method::GET, format!("/api/v1/views/{name}/status"), None)
        }
        ViewsCommand::Create {
            name,
            sql,
            allowed_lateness_ms,
            schedule,
        } => (
            Method::POST,
            "/api/v1/views".to_string(),
            Some(
                json!({"name": name, "sql": sql, "allowed_lateness_ms": allowed_lateness_ms, "schedule": schedule}),
            ),
        ),
        ViewsCommand::Replace {
            name,
            sql,
            allowed_lateness_ms,
            schedule,
        } => (
            Method::PUT,
            format!("/api/v1/views/{name}"),
            Some(
                json!({"sql": sql, "allowed_lateness_ms": allowed_lateness_ms, "schedule": schedule}),
            ),
        ),
        ViewsCommand::Pause { name } => (Method::POST, format!("/api/v1/views/{name}/pause"), None),
        ViewsCommand::Resume { name } => {
            (Method::POST, format!("/api/v1/views/{name}/resume"), None)
        }
        ViewsCommand::Drop { name } => (Method::DELETE, format!("/api/v1/views/{name}"), None),
    };
    let url = format!("{}{path}", target.url.trim_end_matches('/'));
    let mut request = reqwest::Client::new().request(method, &url);
    if let Some(token) = &target.token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request
        .send()
        .await
        .with_context(|| format!("no answer from {url} (is a serving process running there?)"))?;
    let status = answer.status();
    let text = answer.text().await.unwrap_or_default();
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let why = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        bail!("{status}: {why}");
    }
    if !value.is_null() && value != Value::String(String::new()) {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(())
}
