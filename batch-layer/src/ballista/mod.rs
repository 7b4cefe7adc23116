//! Batch runs on Apache Ballista.
//!
//! A run ships each view's *partial* physical plan (the plan a local run executes) to a
//! Ballista scheduler, whose executors run it task by task, one file group each, and
//! send back every partition's states; this process reduces them into one row per
//! group, as a local run does with its partitions. Ballista runs DataFusion's own
//! accumulators, so the states are those of a local run over the same files, and
//! those the speed layer merges with. What cannot be shipped stays here: Delta's scan
//! (the snapshot's chosen Parquet files go as a plain listing table with the Delta
//! schema) and the local run's metering operator (the row count and newest event time
//! are a second, ordinary aggregate on the cluster). [`process`] runs the scheduler and
//! executors as roles of this binary, with Tributary's functions and object stores.

pub mod client;
pub mod process;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::arrow::array::{Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::catalog::TableProvider;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::empty::EmptyTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::expr_fn::{count, max};
use datafusion::logical_expr::{Expr, when};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::{cast, col, lit};
use datafusion::scalar::ScalarValue;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use deltalake::DeltaTable;
use tributary_core::config::BallistaConfig;
use tributary_core::schema::{INGEST_TS, StreamSchema};
use tributary_core::view::CompiledView;

use crate::error::BatchError;
use crate::read::Partial;
pub use client::{JobError, JobOutput};

/// A Ballista scheduler batch runs submit their plans to.
#[derive(Debug)]
pub struct Cluster {
    /// `host:port` of the scheduler's gRPC service, as configured (errors name it).
    scheduler: String,
    /// File groups a run's scan is split into: the tasks the executors share.
    partitions: usize,
    /// How long one job may take before it is cancelled and the run fails.
    job_timeout: Duration,
    /// Run locally when the scheduler cannot be reached (`fallback-to-local`).
    fallback_to_local: bool,
    /// Each submission gets a session of its own on the scheduler.
    sessions: AtomicU64,
    /// What the jobs since the last [`Cluster::take_usage`] cost: a run reads it into
    /// its record (runs of one batch layer never overlap).
    usage: Mutex<Usage>,
}

/// What a run's jobs cost on the cluster.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Jobs submitted.
    pub jobs: u64,
    /// Tasks run, by executor id.
    pub tasks: BTreeMap<String, u64>,
    /// Time jobs waited in the scheduler (stage planning included), in milliseconds.
    pub queued_ms: u64,
    /// Time their tasks ran, in milliseconds.
    pub running_ms: u64,
    /// Time their results took to fetch, in milliseconds.
    pub fetching_ms: u64,
    /// Why the run's plans ran in this process instead, when the scheduler could not
    /// be reached and `fallback-to-local` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fell_back: Option<String>,
}

impl Usage {
    fn add(&mut self, job: &JobOutput) {
        self.jobs += 1;
        for (executor, n) in &job.tasks {
            *self.tasks.entry(executor.clone()).or_default() += n;
        }
        self.queued_ms += job.queued.as_millis() as u64;
        self.running_ms += job.running.as_millis() as u64;
        self.fetching_ms += job.fetching.as_millis() as u64;
    }
}

impl Cluster {
    /// The cluster `[batch.ballista]` names.
    pub fn new(config: &BallistaConfig) -> Self {
        Cluster {
            scheduler: config.scheduler.clone(),
            partitions: config.partitions.max(1),
            job_timeout: Duration::from_millis(config.job_timeout_ms.max(1)),
            fallback_to_local: config.fallback_to_local,
            sessions: AtomicU64::new(0),
            usage: Mutex::new(Usage::default()),
        }
    }

    /// The scheduler's address.
    pub fn scheduler(&self) -> &str {
        &self.scheduler
    }

    /// Whether a run whose scheduler is unreachable runs its plans locally instead.
    pub fn falls_back(&self, e: &BatchError) -> bool {
        self.fallback_to_local
            && matches!(
                e,
                BatchError::Ballista {
                    source: JobError::Submit(_),
                    ..
                }
            )
    }

    /// Note that a run fell back to local execution, and why.
    pub(crate) fn note_fallback(&self, e: &BatchError) {
        tracing::warn!(error = %e, "Ballista unreachable; running the plans locally");
        self.usage.lock().expect("usage lock").fell_back = Some(e.to_string());
    }

    /// What the jobs since the last call cost; starts a new tally.
    pub fn take_usage(&self) -> Usage {
        std::mem::take(&mut *self.usage.lock().expect("usage lock"))
    }

    /// The view's states over `df` (the rows a run reads), computed on the cluster,
    /// with the number of rows and their newest event time.
    pub(crate) async fn partial_states(
        &self,
        view: &CompiledView,
        stream: &StreamSchema,
        df: DataFrame,
    ) -> Result<Partial, BatchError> {
        let query = |e| BatchError::query(&view.name, e);
        let (plan, _) = view
            .plan_partial(df.clone().into_view(), Some(self.partitions))
            .await
            .map_err(query)?;
        let partitions = plan.output_partitioning().partition_count();
        let batches = self.execute(&view.name, plan).await?;
        let states = view
            .finish_partial(batches, partitions)
            .await
            .map_err(query)?;
        let (rows, newest) = self.meter(view, stream, df).await?;
        Ok((states, rows, newest))
    }

    /// What the local run's meter counts: the rows, and the newest event time that may
    /// move the watermark (capped at `_ingest_ts` plus the stream's lead, as the speed
    /// layer caps it).
    async fn meter(
        &self,
        view: &CompiledView,
        stream: &StreamSchema,
        df: DataFrame,
    ) -> Result<(u64, Option<i64>), BatchError> {
        let failed = |e: DataFusionError| {
            BatchError::ballista(&self.scheduler, &view.name, JobError::Plan(e))
        };
        let has_ingest = df.schema().has_column_with_unqualified_name(INGEST_TS);
        let newest = newest_watermark_time(&view.event_time, has_ingest, stream.max_event_lead_us);
        let plan = df
            .aggregate(
                vec![],
                vec![count(lit(1)).alias("rows"), max(newest).alias("newest")],
            )
            .map_err(failed)?
            .create_physical_plan()
            .await
            .map_err(failed)?;
        let batches = self.execute(&view.name, plan).await?;
        let mut rows = 0;
        let mut newest = None;
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let column = |i: usize| {
                batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .cloned()
                    .ok_or_else(|| {
                        BatchError::View(
                            view.name.clone(),
                            format!("internal: the meter's column {i} is not Int64"),
                        )
                    })
            };
            let (counted, times) = (column(0)?, column(1)?);
            rows += counted.iter().flatten().sum::<i64>() as u64;
            newest = newest.max(times.iter().flatten().max());
        }
        Ok((rows, newest))
    }

    /// Run `plan` on the cluster; every partition's batches.
    async fn execute(
        &self,
        view: &str,
        plan: Arc<dyn ExecutionPlan>,
    ) -> Result<Vec<RecordBatch>, BatchError> {
        let failed = |source| BatchError::ballista(&self.scheduler, view, source);
        let codec = BallistaPhysicalExtensionCodec::default();
        let mut encoded = Vec::new();
        PhysicalPlanNode::try_from_physical_plan(plan, &codec)
            .and_then(|node| node.try_encode(&mut encoded))
            .map_err(|e| failed(JobError::Plan(e)))?;
        let session = format!(
            "tributary-{}-{}",
            std::process::id(),
            self.sessions.fetch_add(1, Ordering::Relaxed)
        );
        let job = client::run_job(&self.scheduler, encoded, session, self.job_timeout)
            .await
            .map_err(failed)?;
        self.usage.lock().expect("usage lock").add(&job);
        Ok(job.batches)
    }
}

/// The newest event time a row may move the watermark to, in microseconds: its event
/// time, capped at `_ingest_ts` plus `lead_us` when the rows have `_ingest_ts` (null
/// when either is null, as the local meter skips such rows).
fn newest_watermark_time(event_time: &str, has_ingest: bool, lead_us: i64) -> Expr {
    let event = cast(col(event_time), DataType::Int64);
    if !has_ingest {
        return event;
    }
    let capped = cast(col(INGEST_TS), DataType::Int64) + lit(lead_us);
    when(
        col(event_time).is_null().or(col(INGEST_TS).is_null()),
        lit(ScalarValue::Int64(None)),
    )
    .when(event.clone().lt(capped.clone()), event)
    .otherwise(capped)
    .expect("a CASE with branches builds")
}

/// `files` of the master table (paths relative to its root, as its log holds them) as
/// a Parquet listing table with the table's schema, which executors can scan: files
/// written before a nullable column was added read it as null. Partition columns are
/// left out; views read none.
pub(crate) async fn parquet_files_table(
    master: &DeltaTable,
    files: Vec<String>,
) -> Result<Arc<dyn TableProvider>, BatchError> {
    let what = || "master table (as Parquet files for Ballista)".to_string();
    let snapshot = master
        .snapshot()
        .map_err(|e| BatchError::delta(what(), e))?;
    let partition_columns = snapshot.metadata().partition_columns();
    let full = snapshot.snapshot().arrow_schema();
    let schema = Arc::new(Schema::new(
        full.fields()
            .iter()
            .filter(|f| !partition_columns.contains(f.name()))
            .cloned()
            .collect::<Vec<_>>(),
    ));
    if files.is_empty() {
        return Ok(Arc::new(EmptyTable::new(schema)));
    }
    let mut root = master.table_url().clone();
    if !root.path().ends_with('/') {
        root.set_path(&format!("{}/", root.path()));
    }
    let urls = files
        .iter()
        .map(|file| {
            let url = root.join(file).map_err(|e| BatchError::delta(what(), e))?;
            ListingTableUrl::parse(url.as_str()).map_err(|e| BatchError::delta(what(), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()));
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema);
    let table = ListingTable::try_new(config).map_err(|e| BatchError::delta(what(), e))?;
    Ok(Arc::new(table))
}
