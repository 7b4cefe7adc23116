//! `[log]`, `[speed]`, `[batch]` and `[generator]`: how each role runs.

use serde::{Deserialize, Serialize};

/// Which event log the pipeline uses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogKind {
    /// The durable log inside the `tributary up` process (redb files under the storage root).
    #[default]
    Embedded,
    /// An external Kafka-protocol cluster (Kafka, Redpanda, Event Hubs, tansu).
    Kafka,
}

/// `[log]`: the event log and how to reach it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogConfig {
    /// The embedded log or Kafka.
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
    /// Embedded log: megabytes of the log's page cache (redb's own default is a
    /// gigabyte, which a long-running process fills with pages the readers passed long
    /// ago; the operating system's page cache still holds the file).
    #[serde(default = "default_log_cache_mb")]
    pub cache_mb: u64,
    /// Kafka: checkpoint each partition's `_ingest_ts` derivation this often (in the
    /// local state folder), so a reader that opens a partition starts from the newest
    /// checkpoint before where it reads instead of from the first retained offset
    /// (0: never; start-up then replays the whole retention).
    #[serde(default = "default_derivation_checkpoint_ms")]
    pub derivation_checkpoint_ms: u64,
}

fn default_derivation_checkpoint_ms() -> u64 {
    10_000
}

fn default_log_cache_mb() -> u64 {
    64
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
            derivation_checkpoint_ms: default_derivation_checkpoint_ms(),
            retention_mb: 0,
            cache_mb: default_log_cache_mb(),
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

/// `[speed]`: how the speed layer reads the log and keeps its states.
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
    /// Which partitions of every stream this speed process holds, as `"I/N"`: those
    /// whose number modulo N is I. Several speed processes (one per I) share the
    /// partitions; the default `"0/1"` holds them all.
    #[serde(default)]
    pub shard: Shard,
    /// Where a separate `tributary serve` reaches the speed processes when there are
    /// several (one per shard; order does not matter). Empty: `url` alone.
    #[serde(default)]
    pub urls: Vec<String>,
}

impl SpeedConfig {
    /// Every speed process a separate serving process gathers states from.
    pub fn speed_urls(&self) -> Vec<String> {
        if self.urls.is_empty() {
            vec![self.url.clone()]
        } else {
            self.urls.clone()
        }
    }
}

/// `speed.shard`: partition `p` belongs to shard `p % count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This process's shard, below `count`.
    pub index: u32,
    /// How many speed processes share the partitions.
    pub count: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl Shard {
    /// Whether partition `p` is this shard's.
    pub fn owns(&self, partition: u32) -> bool {
        partition % self.count == self.index
    }

    /// Whether it is the only shard (it holds every partition).
    pub fn is_whole(&self) -> bool {
        self.count == 1
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = || format!("expected \"I/N\" with 0 <= I < N (e.g. \"0/2\"), got `{s}`");
        let (index, count) = s.split_once('/').ok_or_else(expected)?;
        let index: u32 = index.trim().parse().map_err(|_| expected())?;
        let count: u32 = count.trim().parse().map_err(|_| expected())?;
        if count == 0 || index >= count {
            return Err(expected());
        }
        Ok(Shard { index, count })
    }
}

impl Serialize for Shard {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Shard {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
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
            shard: Shard::default(),
            urls: Vec::new(),
        }
    }
}

/// `[batch]`: the archiver, recompute schedules, retries and retention.
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
    /// Serving reloads the batch views at once when the batch layer of its own process
    /// commits, and looks for commits of other processes this often.
    #[serde(default = "default_view_poll_ms")]
    pub view_poll_ms: u64,
    /// Where batch runs compute views' states: `local` (this process, every core) or
    /// `ballista` (a recompute cluster, `[batch.ballista]`).
    #[serde(default)]
    pub engine: BatchEngine,
    /// The Ballista cluster batch runs use when `engine = "ballista"`.
    #[serde(default)]
    pub ballista: BallistaConfig,
}

/// `batch.engine`: where a batch run's partial plans execute.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BatchEngine {
    /// DataFusion in this process.
    #[default]
    Local,
    /// An Apache Ballista scheduler and its executors (`tributary ballista-scheduler`,
    /// `tributary ballista-executor`), which run DataFusion's own accumulators, so the
    /// states they return are the ones a local run writes.
    Ballista,
}

impl BatchEngine {
    /// The engine's name, as the run history shows it.
    pub fn name(self) -> &'static str {
        match self {
            BatchEngine::Local => "local",
            BatchEngine::Ballista => "ballista",
        }
    }
}

/// `[batch.ballista]`: the recompute cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BallistaConfig {
    /// The scheduler's gRPC address, `host:port` (the host a name or an address).
    #[serde(
        default = "default_ballista_scheduler",
        deserialize_with = "scheduler_address"
    )]
    pub scheduler: String,
    /// Tasks a run's scan is split into (file groups): the cluster's parallelism. It
    /// should be at least the executors' cores together.
    #[serde(default = "default_ballista_partitions")]
    pub partitions: usize,
    /// How long one job (a view's plan) may run before it is cancelled and the run
    /// fails; it must cover the scheduler's executor timeout, after which the tasks of
    /// a lost executor run again elsewhere.
    #[serde(default = "default_ballista_job_timeout_ms")]
    pub job_timeout_ms: u64,
    /// When the scheduler cannot be reached, run the plans in this process instead of
    /// failing the run (the run history says so).
    #[serde(default)]
    pub fallback_to_local: bool,
}

/// A scheduler address is `HOST:PORT`: refused at load, not at the first run.
fn scheduler_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    let valid = text
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid {
        return Err(serde::de::Error::custom(format!(
            "expected the scheduler's HOST:PORT (e.g. ballista-scheduler:50050), got `{text}`"
        )));
    }
    Ok(text)
}

fn default_ballista_scheduler() -> String {
    "127.0.0.1:50050".into()
}
fn default_ballista_partitions() -> usize {
    8
}
fn default_ballista_job_timeout_ms() -> u64 {
    600_000
}

impl Default for BallistaConfig {
    fn default() -> Self {
        BallistaConfig {
            scheduler: default_ballista_scheduler(),
            partitions: default_ballista_partitions(),
            job_timeout_ms: default_ballista_job_timeout_ms(),
            fallback_to_local: false,
        }
    }
}

fn default_view_poll_ms() -> u64 {
    2_000
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
            view_poll_ms: default_view_poll_ms(),
            engine: BatchEngine::Local,
            ballista: BallistaConfig::default(),
        }
    }
}

/// A built-in source of IoT readings, so a newcomer sees live data at once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GeneratorConfig {
    /// Whether the generator posts events at start.
    #[serde(default)]
    pub enabled: bool,
    /// The stream it posts to (`readings` by default).
    #[serde(default = "default_gen_stream")]
    pub stream: String,
    /// Events per second it posts.
    #[serde(default = "default_gen_rate")]
    pub events_per_second: u32,
    /// How many devices its readings come from.
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
