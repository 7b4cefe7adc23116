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

mod access;
mod http;
mod roles;
mod sinks;

pub use access::{AuthConfig, MIN_TOKEN_LEN, Scope, TokenConfig};
pub use http::{HttpConfig, SqlConfig};
pub use roles::{
    BallistaConfig, BatchConfig, BatchEngine, GeneratorConfig, LogConfig, LogKind, Schedule, Shard,
    SpeedConfig, parse_schedule,
};
pub use sinks::{EMITTED_FIELDS, MIN_SECRET_LEN, OutputMode, SinkConfig, SinkKind};

/// The example pipeline `tributary up` runs when there is no configuration file.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../examples/iot.toml");

/// Where a configuration came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A TOML file.
    File(PathBuf),
    /// The example built into the binary (`examples/iot.toml`).
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

/// A whole Tributary configuration: one TOML file, overridden by `TRIBUTARY_…` variables.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Root of every table: a local directory, or an object-store URL (`s3://`,
    /// `abfss://`/`az://`, `gs://`) with `[storage]` saying where local state goes.
    #[serde(default = "default_storage_root")]
    pub storage_root: PathBuf,
    /// `[storage]`: local state and object-store options.
    #[serde(default)]
    pub storage: crate::storage::StorageConfig,
    /// `[http]`: the listener, limits, TLS, CORS.
    #[serde(default)]
    pub http: HttpConfig,
    /// `[log]`: the embedded log or Kafka.
    #[serde(default)]
    pub log: LogConfig,
    /// `[speed]`: segments, polling, snapshots.
    #[serde(default)]
    pub speed: SpeedConfig,
    /// `[batch]`: the archiver, schedules, retention, recompute options.
    #[serde(default)]
    pub batch: BatchConfig,
    /// `[generator]`: the built-in IoT source.
    #[serde(default)]
    pub generator: GeneratorConfig,
    /// `[[streams]]`: the event streams and their schemas.
    #[serde(default)]
    pub streams: Vec<StreamConfig>,
    /// `[[views]]`: the views, one SQL each for both layers.
    #[serde(default)]
    pub views: Vec<ViewConfig>,
    /// Static dimension tables views may join with.
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    /// `[[append-views]]`: selections and projections over one stream, no aggregate,
    /// written into their own Delta table exactly once.
    #[serde(default)]
    pub append_views: Vec<AppendViewConfig>,
    /// `[[sinks]]`: views' rows delivered to webhooks, Kafka topics, Delta tables.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// Whether a serving process here delivers `[[sinks]]` (keep it on in exactly one
    /// serving process: two would deliver every row twice, with the same keys).
    #[serde(default = "default_true")]
    pub run_sinks: bool,
    /// With the roles in separate processes, how often each serving and speed process
    /// looks for view changes another process made in the view catalog.
    #[serde(default = "default_catalog_poll_ms")]
    pub catalog_poll_ms: u64,
    /// `[sql]`: the read-only SQL endpoint's limits.
    #[serde(default)]
    pub sql: SqlConfig,
    /// `[auth]`: API tokens.
    #[serde(default)]
    pub auth: AuthConfig,
    /// How log lines are written to stderr: `text` for people, `json` (one object per
    /// line) for log collectors. `--log-format` overrides it.
    #[serde(default)]
    pub log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A dimension table: a CSV or Parquet file or a Delta table, reloaded when it changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TableConfig {
    /// The name views join with.
    pub name: String,
    /// Relative paths are under `storage-root`.
    pub path: PathBuf,
    /// Inferred from the path (`.csv`, `.parquet`, a directory with `_delta_log`).
    #[serde(default)]
    pub format: Option<DimensionFormat>,
}

/// The file format of a dimension table.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DimensionFormat {
    /// A CSV file with a header row.
    Csv,
    /// A Parquet file.
    Parquet,
    /// A Delta table (a directory with `_delta_log`).
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

fn default_catalog_poll_ms() -> u64 {
    1_000
}

fn default_true() -> bool {
    true
}

fn default_storage_root() -> PathBuf {
    PathBuf::from("./tributary-data")
}

/// A stream of events: its schema, event-time field, partitions and dedup rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StreamConfig {
    /// The stream's name (the `POST /streams/{name}/events` path and the SQL table name).
    pub name: String,
    /// The fields of a record, in order (none for a stream `from-view`).
    #[serde(default)]
    pub fields: Vec<FieldConfig>,
    /// The field that holds each event's event time; must be a timestamp (for a stream
    /// `from-view`, the view's window unless set).
    #[serde(default)]
    pub event_time: String,
    /// A stream fed by a Kafka sink of this view (chaining): its fields are the view's
    /// columns plus the emitted rows' own (`_key`, `_version`, `_correction`, …), its
    /// event time the window, and `_key` its dedup id, so repeats count once.
    #[serde(default)]
    pub from_view: Option<String>,
    /// Records with the same key go to the same partition.
    #[serde(default)]
    pub key: Option<String>,
    /// Log partitions of the stream; records with the same key share one.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// A field that identifies an event: a record whose id was already seen in the
    /// same partition within `dedup-horizon-ms` of ingest time counts once.
    #[serde(default)]
    pub id_field: Option<String>,
    /// How long an id is remembered for deduplication, in ingest time.
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

/// One field of a stream's schema.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FieldConfig {
    /// The field's name in the JSON record.
    pub name: String,
    /// `string`, `int64`, `float64`, `bool` or `timestamp`.
    #[serde(rename = "type")]
    pub field_type: String,
    /// A nullable field may be missing or null; every other field is required.
    #[serde(default)]
    pub nullable: bool,
}

/// A view: one SQL query that both layers compute.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ViewConfig {
    /// The view's name (its API path and SQL table name).
    pub name: String,
    /// A windowed aggregate over one stream (and dimension tables), in DataFusion SQL.
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

/// An append-mode view: rows of one stream, selected and projected, kept for good.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AppendViewConfig {
    /// The view's name (its API path, SQL table name and Delta table).
    pub name: String,
    /// `SELECT … FROM <stream> [JOIN <table> …] [WHERE …]`, no aggregate.
    pub sql: String,
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

/// Settings whose value parses but cannot work: a zero that would stall a layer, an
/// address that cannot be listened on. `Err((key, message))` names the first.
pub fn check_settings(config: &Config) -> std::result::Result<(), (String, String)> {
    let at_least_one = [
        (
            "speed.max-batch-records",
            config.speed.max_batch_records as u64,
        ),
        ("speed.segment-width-ms", config.speed.segment_width_ms),
        ("batch.max-open-files", config.batch.max_open_files as u64),
        ("batch.target-file-mb", config.batch.target_file_mb),
        ("http.max-body-bytes", config.http.max_body_bytes as u64),
        (
            "http.max-records-per-request",
            config.http.max_records_per_request as u64,
        ),
    ];
    if let Some((key, _)) = at_least_one.iter().find(|(_, v)| *v == 0) {
        return Err((key.to_string(), "expected at least 1, got 0".into()));
    }
    let addr = &config.http.addr;
    let valid = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid {
        return Err((
            "http.addr".into(),
            format!("expected HOST:PORT (e.g. 127.0.0.1:8080), got `{addr}`"),
        ));
    }
    Ok(())
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
    fn a_scheduler_address_without_a_port_is_refused_at_load() {
        let ok = from_toml_str(
            "storage-root = 'x'\n[batch]\nengine = 'ballista'\n\
             [batch.ballista]\nscheduler = 'ballista-scheduler.svc:50050'\n",
        )
        .unwrap();
        assert_eq!(ok.batch.ballista.scheduler, "ballista-scheduler.svc:50050");
        for bad in ["ballista-scheduler", ":50050", "host:http", "host:70000"] {
            let text = format!("storage-root = 'x'\n[batch.ballista]\nscheduler = '{bad}'\n");
            let err = from_toml_str(&text).unwrap_err().to_string();
            assert!(err.contains("batch.ballista.scheduler"), "{err}");
            assert!(err.contains("HOST:PORT"), "{err}");
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn a_speed_shard_is_i_of_n_and_owns_every_nth_partition() {
        let c = from_toml_str("storage-root = 'x'\n[speed]\nshard = '1/3'\n").unwrap();
        let owned: Vec<u32> = (0..8).filter(|p| c.speed.shard.owns(*p)).collect();
        assert_eq!(owned, [1, 4, 7]);
        assert!(
            from_toml_str("storage-root = 'x'\n")
                .unwrap()
                .speed
                .shard
                .is_whole()
        );
        for bad in ["2/2", "1", "a/2", "0/0", "-1/2"] {
            let text = format!("storage-root = 'x'\n[speed]\nshard = '{bad}'\n");
            let err = from_toml_str(&text).unwrap_err().to_string();
            assert!(err.contains("speed.shard"), "{err}");
            assert!(err.contains(&format!("got `{bad}`")), "{err}");
        }
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

    #[test]
    fn settings_that_cannot_work_are_refused_by_key() {
        let base = "storage-root = \"x\"\n";
        let check =
            |extra: &str| check_settings(&from_toml_str(&format!("{base}{extra}")).unwrap());
        assert_eq!(check(""), Ok(()));
        assert_eq!(check("[http]\naddr = \"[::1]:9000\"\n"), Ok(()));
        for (extra, key) in [
            (
                "[speed]\nmax-batch-records = 0\n",
                "speed.max-batch-records",
            ),
            ("[speed]\nsegment-width-ms = 0\n", "speed.segment-width-ms"),
            ("[batch]\nmax-open-files = 0\n", "batch.max-open-files"),
            ("[http]\nmax-body-bytes = 0\n", "http.max-body-bytes"),
        ] {
            let (k, m) = check(extra).unwrap_err();
            assert_eq!(k, key);
            assert!(m.contains("at least 1"), "{m}");
        }
        for addr in ["nonsense", ":8080", "127.0.0.1:99999", "127.0.0.1"] {
            let (k, m) = check(&format!("[http]\naddr = \"{addr}\"\n")).unwrap_err();
            assert_eq!(k, "http.addr");
            assert!(m.contains(addr) && m.contains("HOST:PORT"), "{m}");
        }
    }
}
