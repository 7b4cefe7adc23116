//! Layered configuration: a TOML file, overridden by `TRIBUTARY_…` environment variables.
//!
//! Keys are kebab-case; nested keys are reached from the environment with a double
//! underscore (`TRIBUTARY_HTTP__ADDR` overrides `http.addr`, `TRIBUTARY_STORAGE_ROOT`
//! overrides `storage-root`). Unknown keys are refused, so a typo never silently falls
//! back to a default.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// The example pipeline `tributary up` runs when there is no configuration file.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../examples/iot.toml");

/// Where a configuration came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    EmbeddedDefault,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::EmbeddedDefault => write!(f, "<embedded default: examples/iot.toml>"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Root of every table: a local directory, or an object-store URL (`s3://`,
    /// `abfss://`/`az://`, `gs://`) with `[storage]` saying where local state goes.
    #[serde(default = "default_storage_root")]
    pub storage_root: PathBuf,
    #[serde(default)]
    pub storage: crate::storage::StorageConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub speed: SpeedConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub generator: GeneratorConfig,
    #[serde(default)]
    pub streams: Vec<StreamConfig>,
    #[serde(default)]
    pub views: Vec<ViewConfig>,
    /// Static dimension tables views may join with.
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    #[serde(default)]
    pub sql: SqlConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// How log lines are written to stderr: `text` for people, `json` (one object per
    /// line) for log collectors. `--log-format` overrides it.
    #[serde(default)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// API tokens. None configured: every endpoint is open, and Tributary listens on a
/// loopback address only unless `allow-unauthenticated` says otherwise.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AuthConfig {
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Listen on a non-loopback address without tokens.
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

/// Shortest API token accepted: a token is a password that never expires.
pub const MIN_TOKEN_LEN: usize = 16;

impl AuthConfig {
    /// The first token that must not be used, and why: empty, short, with spaces or
    /// control characters, or the same as another. (An empty token would let
    /// `?access_token=` with nothing in it through.) Never says the token itself.
    pub fn weak_token(&self) -> Option<(usize, String)> {
        for (i, t) in self.tokens.iter().enumerate() {
            let name = &t.name;
            if t.token.len() < MIN_TOKEN_LEN {
                return Some((
                    i,
                    format!(
                        "token `{name}` has {} characters; use at least {MIN_TOKEN_LEN} random ones (e.g. `openssl rand -hex 24`)",
                        t.token.len()
                    ),
                ));
            }
            if !t.token.bytes().all(|b| b.is_ascii_graphic()) {
                return Some((
                    i,
                    format!("token `{name}` has spaces or control characters; use visible ASCII"),
                ));
            }
            if self.tokens[..i].iter().any(|o| o.token == t.token) {
                return Some((i, format!("token `{name}` is the same as another token")));
            }
            if t.scopes.is_empty() {
                return Some((i, format!("token `{name}` has no scopes")));
            }
        }
        None
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TokenConfig {
    /// Who holds it (named in refusals and logs, never the token itself).
    pub name: String,
    pub token: String,
    pub scopes: Vec<Scope>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Ingest,
    Read,
    /// Starting batch runs; includes `ingest` and `read`.
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

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

/// A dimension table: a CSV or Parquet file or a Delta table, reloaded when it changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TableConfig {
    pub name: String,
    /// Relative paths are under `storage-root`.
    pub path: PathBuf,
    /// Inferred from the path (`.csv`, `.parquet`, a directory with `_delta_log`).
    #[serde(default)]
    pub format: Option<DimensionFormat>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DimensionFormat {
    Csv,
    Parquet,
    Delta,
}

impl Config {
    /// The storage this configuration names, with the object stores registered (their
    /// options checked) when the root is one.
    pub fn open_storage(&self) -> Result<crate::storage::Storage> {
        let root = self.storage_root.to_string_lossy();
        crate::cloud::register(&self.storage.options)?;
        crate::storage::Storage::open_location(&root, self.storage.local_dir.as_deref())
    }
}

fn default_storage_root() -> PathBuf {
    PathBuf::from("./tributary-data")
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpConfig {
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

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogKind {
    #[default]
    Embedded,
    Kafka,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogConfig {
    #[serde(default)]
    pub kind: LogKind,
    /// Kafka bootstrap servers (`log.kind = "kafka"`).
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// A stream's topic is this prefix plus its name, unless `topics` names it.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Topic per stream, overriding the prefix rule.
    #[serde(default)]
    pub topics: std::collections::BTreeMap<String, String>,
    /// Replication factor of topics Tributary creates.
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// How far a record written straight into a topic may stamp itself ahead of the
    /// last timestamp Tributary itself wrote there (see ARCHITECTURE.md).
    #[serde(default = "default_lead_ms")]
    pub max_timestamp_lead_ms: i64,
    /// How often Tributary writes a tick into every partition, so that the derived
    /// ingest time of idle partitions keeps up with the clock.
    #[serde(default = "default_tick_ms")]
    pub tick_interval_ms: u64,
    /// How long a produce may wait for the broker before ingest answers 503.
    #[serde(default = "default_produce_timeout_ms")]
    pub produce_timeout_ms: u64,
    /// TLS and SASL to the brokers (`[log.security]`), checked at start-up.
    #[serde(default)]
    pub security: crate::kafka_security::KafkaSecurity,
    /// Passed to librdkafka as they are (tuning, or what `[log.security]` does not
    /// cover), after `[log.security]`'s properties, e.g. `"client.id" = "tributary"`.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
    /// Embedded log: records older than this (by `_ingest_ts`) are removed once the
    /// archiver has committed them (0: kept by age for ever). Never removes a record
    /// the master table does not hold yet.
    #[serde(default = "default_retention_hours_log")]
    pub retention_hours: u64,
    /// Embedded log: above this many megabytes on disk, the oldest archived records
    /// are removed first (0: no size bound). Unarchived records are never removed, so
    /// the log can stay above it while the archiver is behind (status says so).
    #[serde(default)]
    pub retention_mb: u64,
}

fn default_retention_hours_log() -> u64 {
    168
}

fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_topic_prefix() -> String {
    "tributary.".into()
}
fn default_replication() -> i32 {
    1
}
fn default_lead_ms() -> i64 {
    60_000
}
fn default_tick_ms() -> u64 {
    1_000
}
fn default_produce_timeout_ms() -> u64 {
    5_000
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            kind: LogKind::default(),
            brokers: default_brokers(),
            topic_prefix: default_topic_prefix(),
            topics: Default::default(),
            replication_factor: default_replication(),
            max_timestamp_lead_ms: default_lead_ms(),
            tick_interval_ms: default_tick_ms(),
            produce_timeout_ms: default_produce_timeout_ms(),
            security: Default::default(),
            options: Default::default(),
            retention_hours: default_retention_hours_log(),
            retention_mb: 0,
        }
    }
}

impl LogConfig {
    /// The topic that carries `stream`.
    pub fn topic(&self, stream: &str) -> String {
        self.topics
            .get(stream)
            .cloned()
            .unwrap_or_else(|| format!("{}{stream}", self.topic_prefix))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SpeedConfig {
    /// Width of one state segment in `_ingest_ts`; batch cutoffs are aligned to it.
    #[serde(default = "default_segment_width_ms")]
    pub segment_width_ms: u64,
    /// How long the speed layer waits for new records when the log is idle.
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// Most records read from one partition per micro-batch.
    #[serde(default = "default_micro_batch")]
    pub max_batch_records: usize,
    /// Where a separate `tributary serve` reaches a separate `tributary speed` (the
    /// speed process listens on its own `http.addr`).
    #[serde(default = "default_speed_url")]
    pub url: String,
    /// Threads that decode a micro-batch's partitions at once (0: one per core).
    #[serde(default)]
    pub decode_threads: usize,
    /// Snapshot the states this often under `<storage-root>/speed-snapshots`, and
    /// resume from the newest at start (0: never; a restart rebuilds from the cutoff).
    #[serde(default)]
    pub snapshot_interval_ms: u64,
}

fn default_speed_url() -> String {
    "http://127.0.0.1:8081".into()
}

fn default_segment_width_ms() -> u64 {
    1_000
}
fn default_poll_ms() -> u64 {
    20
}
fn default_micro_batch() -> usize {
    50_000
}

impl Default for SpeedConfig {
    fn default() -> Self {
        SpeedConfig {
            segment_width_ms: default_segment_width_ms(),
            poll_interval_ms: default_poll_ms(),
            max_batch_records: default_micro_batch(),
            url: default_speed_url(),
            decode_threads: 0,
            snapshot_interval_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BatchConfig {
    /// The archiver commits the records it holds once the oldest has waited this long
    /// (the master table's latency at low rates) ...
    #[serde(default = "default_flush_ms")]
    pub archive_flush_ms: u64,
    /// ... or once its open files reach `target-file-mb`, or it holds this many records.
    #[serde(default = "default_flush_records")]
    pub archive_flush_records: usize,
    /// When to recompute every view, as a cron expression in UTC (5 fields, or 6 with
    /// seconds first), e.g. `"*/10 * * * *"`. None: only on demand.
    #[serde(default)]
    pub schedule: Option<String>,
    /// When to compact, checkpoint and vacuum every table (cron, UTC). None: only on
    /// demand (`POST /api/v1/batch/maintenance`).
    #[serde(default = "default_maintenance_schedule")]
    pub maintenance_schedule: Option<String>,
    /// VACUUM keeps the files of every version younger than this (and time travel
    /// reaches this far back).
    #[serde(default = "default_retention_hours")]
    pub retention_hours: u64,
    /// The archiver's files are cut at about this size, and OPTIMIZE bin-packs smaller
    /// files (those of slow periods) into files of about this size.
    #[serde(default = "default_target_file_mb")]
    pub target_file_mb: u64,
    /// The archiver holds one open file per event date; once it holds this many, it
    /// commits (so records spread over many dates cannot exhaust memory or handles).
    #[serde(default = "default_max_open_files")]
    pub max_open_files: usize,
    /// Finished runs the run history keeps (in memory and in `batch-runs.jsonl`).
    #[serde(default = "default_history_limit")]
    pub history_limit: usize,
}

fn default_max_open_files() -> usize {
    64
}
fn default_history_limit() -> usize {
    1_000
}

fn default_maintenance_schedule() -> Option<String> {
    Some("0 30 3 * * *".into())
}
fn default_retention_hours() -> u64 {
    168
}
fn default_target_file_mb() -> u64 {
    128
}

/// A parsed `batch.schedule`.
pub type Schedule = croner::Cron;

/// Parse a cron expression of `batch.schedule`.
pub fn parse_schedule(expr: &str) -> std::result::Result<Schedule, String> {
    expr.parse::<croner::Cron>()
        .map_err(|e| format!("`{expr}` is not a cron expression: {e}"))
}

fn default_flush_ms() -> u64 {
    30_000
}
fn default_flush_records() -> usize {
    20_000_000
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            archive_flush_ms: default_flush_ms(),
            archive_flush_records: default_flush_records(),
            schedule: None,
            maintenance_schedule: default_maintenance_schedule(),
            retention_hours: default_retention_hours(),
            target_file_mb: default_target_file_mb(),
            max_open_files: default_max_open_files(),
            history_limit: default_history_limit(),
        }
    }
}

/// A built-in source of IoT readings, so a newcomer sees live data at once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GeneratorConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_gen_stream")]
    pub stream: String,
    #[serde(default = "default_gen_rate")]
    pub events_per_second: u32,
    #[serde(default = "default_gen_devices")]
    pub devices: u32,
}

fn default_gen_stream() -> String {
    "readings".into()
}
fn default_gen_rate() -> u32 {
    200
}
fn default_gen_devices() -> u32 {
    50
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            enabled: false,
            stream: default_gen_stream(),
            events_per_second: default_gen_rate(),
            devices: default_gen_devices(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StreamConfig {
    pub name: String,
    pub fields: Vec<FieldConfig>,
    /// The field that holds each event's event time; must be a timestamp.
    pub event_time: String,
    /// Records with the same key go to the same partition.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// A field that identifies an event: a record whose id was already seen in the
    /// same partition within `dedup-horizon-ms` of ingest time counts once.
    #[serde(default)]
    pub id_field: Option<String>,
    #[serde(default = "default_dedup_horizon_ms")]
    pub dedup_horizon_ms: u64,
    /// Longest string value a record may carry (bytes); longer ones are refused.
    #[serde(default = "default_max_string_bytes")]
    pub max_string_bytes: usize,
    /// How far an event time may lead the time the log took the event, as far as
    /// watermarks are concerned: a far-future event still counts in its window but moves
    /// the watermark no further than its ingest time plus this.
    #[serde(default = "default_max_event_lead_ms")]
    pub max_event_lead_ms: u64,
}

fn default_partitions() -> u32 {
    1
}
fn default_max_string_bytes() -> usize {
    16 * 1024
}
fn default_max_event_lead_ms() -> u64 {
    5 * 60 * 1000
}
fn default_dedup_horizon_ms() -> u64 {
    3_600_000
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FieldConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: String,
    /// A nullable field may be missing or null; every other field is required.
    #[serde(default)]
    pub nullable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ViewConfig {
    pub name: String,
    pub sql: String,
    /// How far behind the newest event time a window stays open: the watermark is the
    /// newest event time seen minus this, and a window is `complete` once the watermark
    /// has passed its end. Later events still count (they are reported as late).
    #[serde(default)]
    pub allowed_lateness_ms: u64,
    /// Incremental runs of this view alone on a cron schedule (UTC), besides any
    /// `batch.schedule` for every view.
    #[serde(default)]
    pub schedule: Option<String>,
}

/// Load the configuration from `path` (or the embedded default when `path` is `None`),
/// then apply `TRIBUTARY_…` environment overrides.
pub fn load(path: Option<&Path>) -> Result<(Config, ConfigSource)> {
    let (figment, source) = match path {
        Some(p) => {
            if !p.exists() {
                return Err(CoreError::Config {
                    source_name: p.display().to_string(),
                    key: String::new(),
                    message: "file not found".into(),
                });
            }
            (
                Figment::from(Toml::file_exact(p)),
                ConfigSource::File(p.to_path_buf()),
            )
        }
        None => {
            // The embedded default switches the generator on: a newcomer sees data at once.
            let generator = Toml::string("[generator]\nenabled = true\n");
            (
                Figment::from(Toml::string(EMBEDDED_DEFAULT)).merge(generator),
                ConfigSource::EmbeddedDefault,
            )
        }
    };
    let figment = figment.merge(env_provider());
    let config: Config = figment.extract().map_err(|e| figment_error(&source, e))?;
    Ok((config, source))
}

/// Parse a configuration from TOML text (used by tests and by `load`).
pub fn from_toml_str(text: &str) -> Result<Config> {
    let source = ConfigSource::EmbeddedDefault;
    Figment::from(Toml::string(text))
        .extract()
        .map_err(|e| figment_error(&source, e))
}

fn env_provider() -> Env {
    Env::prefixed("TRIBUTARY_")
        // TRIBUTARY_CONFIG names the file itself; it is not a key inside it.
        .filter(|k| k.as_str() != "config")
        .split("__")
        .map(|k| k.as_str().replace('_', "-").into())
}

fn figment_error(source: &ConfigSource, err: figment::Error) -> CoreError {
    let mut messages = Vec::new();
    let mut key = String::new();
    for e in err {
        if key.is_empty() && !e.path.is_empty() {
            key = e.path.join(".");
        }
        let origin = match &e.metadata {
            Some(m) if m.name.contains("environment") => " (from the environment)".to_string(),
            _ => String::new(),
        };
        messages.push(format!("{}{}", e.kind, origin));
    }
    CoreError::Config {
        source_name: source.to_string(),
        key,
        message: messages.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_enables_generator() {
        let (config, source) = load(None).unwrap();
        assert_eq!(source, ConfigSource::EmbeddedDefault);
        assert!(config.generator.enabled);
        assert_eq!(config.streams[0].name, "readings");
        assert_eq!(config.views[0].name, "signal_by_type");
    }

    #[test]
    fn unknown_key_is_refused_with_its_path() {
        let err = from_toml_str("storage-root = 'x'\n[http]\nadress = '1'\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("http"), "{text}");
        assert!(text.contains("adress"), "{text}");
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[log]\nkind = 'carrier-pigeon'\n").unwrap();
        let err = load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains("log.kind"), "{err}");
        assert!(err.contains("carrier-pigeon"), "{err}");
    }
}
