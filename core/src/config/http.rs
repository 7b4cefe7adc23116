//! `[http]` and `[sql]`: the HTTP server's and the SQL endpoint's limits.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Limits of the read-only SQL endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SqlConfig {
    /// Memory one query may use (sorts, joins, aggregates) before it is refused.
    #[serde(default = "default_sql_memory_mb")]
    pub memory_limit_mb: usize,
    /// How long one query may run.
    #[serde(default = "default_sql_timeout_ms")]
    pub timeout_ms: u64,
    /// Most rows a JSON answer carries (Arrow answers are not capped).
    #[serde(default = "default_sql_max_rows")]
    pub max_rows: usize,
    /// Longest statement accepted, in bytes; checked before anything parses it.
    #[serde(default = "default_sql_max_statement_bytes")]
    pub max_statement_bytes: usize,
    /// Deepest nesting of parentheses and longest chain of operators a statement may
    /// have; checked on the tokens before parsing, so no recursive step of parser,
    /// planner or optimizer can run out of stack.
    #[serde(default = "default_sql_max_depth")]
    pub max_expression_depth: usize,
    /// Most bytes an answer (JSON or Arrow) may have; a larger one fails with 413.
    #[serde(default = "default_sql_max_answer_bytes")]
    pub max_answer_bytes: usize,
}

fn default_sql_max_statement_bytes() -> usize {
    64 * 1024
}
fn default_sql_max_depth() -> usize {
    256
}
fn default_sql_max_answer_bytes() -> usize {
    64 * 1024 * 1024
}

fn default_sql_memory_mb() -> usize {
    256
}
fn default_sql_timeout_ms() -> u64 {
    10_000
}
fn default_sql_max_rows() -> usize {
    100_000
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            memory_limit_mb: default_sql_memory_mb(),
            timeout_ms: default_sql_timeout_ms(),
            max_rows: default_sql_max_rows(),
            max_statement_bytes: default_sql_max_statement_bytes(),
            max_expression_depth: default_sql_max_depth(),
            max_answer_bytes: default_sql_max_answer_bytes(),
        }
    }
}

/// `[http]`: where Tributary listens and what a request may carry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpConfig {
    /// The address to listen on (`127.0.0.1:8080` by default).
    #[serde(default = "default_addr")]
    pub addr: String,
    /// Largest request body ingest accepts; larger bodies get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Most records one ingest request may carry; more get 413.
    #[serde(default = "default_max_records")]
    pub max_records_per_request: usize,
    /// Directory holding the dashboard's browser build (`pkg/`).
    #[serde(default = "default_site_dir")]
    pub site_dir: PathBuf,
    /// Live push sends a view's changes at most this often (changes in between coalesce).
    #[serde(default = "default_live_interval_ms")]
    pub live_interval_ms: u64,
    /// Browser origins allowed to call the API from other sites (CORS), e.g.
    /// `["https://grafana.example.com"]`; `["*"]` allows any. Empty: same origin only.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Requests per second each client address may send (0: no limit); over it, 429.
    #[serde(default)]
    pub rate_limit_per_second: u32,
    /// Requests a client may send at once before the rate applies (0: the rate).
    #[serde(default)]
    pub rate_limit_burst: u32,
    /// PEM certificate chain: with `tls-key`, serve HTTPS instead of HTTP.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls-cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Most distinct event dates (UTC days) one ingest request may span: each date is a
    /// partition of the master table and an open file of the archiver. History spread
    /// over more days belongs to `tributary backfill`.
    #[serde(default = "default_max_event_dates")]
    pub max_event_dates_per_request: usize,
    /// How long ingest remembers an `Idempotency-Key` and what it answered, so a retry
    /// within it adds nothing.
    #[serde(default = "default_idempotency_window_ms")]
    pub idempotency_window_ms: u64,
    /// Most idempotency keys remembered at once (the oldest are forgotten first).
    #[serde(default = "default_idempotency_max_keys")]
    pub idempotency_max_keys: usize,
    /// Most open connections at once; requests on further ones get 503 and the
    /// connection is closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most live (server-sent events) clients at once; further ones get 503.
    #[serde(default = "default_max_live_clients")]
    pub max_live_clients: usize,
    /// Host names (with or without port) the server answers to besides loopback names
    /// and addresses and the address it listens on; requests naming another `Host` are
    /// refused, which defeats DNS rebinding. `["*"]` accepts any.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

fn default_max_event_dates() -> usize {
    1_000
}
fn default_idempotency_window_ms() -> u64 {
    10 * 60 * 1000
}
fn default_idempotency_max_keys() -> usize {
    100_000
}
fn default_max_connections() -> usize {
    4_096
}
fn default_max_live_clients() -> usize {
    1_024
}

fn default_live_interval_ms() -> u64 {
    250
}

fn default_site_dir() -> PathBuf {
    PathBuf::from("target/site")
}

fn default_addr() -> String {
    "127.0.0.1:8080".into()
}
fn default_max_body() -> usize {
    16 * 1024 * 1024
}
fn default_max_records() -> usize {
    100_000
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: default_addr(),
            max_body_bytes: default_max_body(),
            max_records_per_request: default_max_records(),
            site_dir: default_site_dir(),
            live_interval_ms: default_live_interval_ms(),
            cors_origins: Vec::new(),
            rate_limit_per_second: 0,
            rate_limit_burst: 0,
            tls_cert: None,
            tls_key: None,
            max_event_dates_per_request: default_max_event_dates(),
            idempotency_window_ms: default_idempotency_window_ms(),
            idempotency_max_keys: default_idempotency_max_keys(),
            max_live_clients: default_max_live_clients(),
            max_connections: default_max_connections(),
            allowed_hosts: Vec::new(),
        }
    }
}
