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

pub mod process;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ballista_core::execution_plans::execute_physical_plan;
use ballista_core::extension::SessionConfigExt;
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
use datafusion::prelude::{SessionConfig, cast, col, lit};
use datafusion::scalar::ScalarValue;
use datafusion_proto::protobuf::PhysicalPlanNode;
use deltalake::DeltaTable;
use futures::TryStreamExt;
use tributary_core::config::BallistaConfig;
use tributary_core::schema::{INGEST_TS, StreamSchema};
use tributary_core::view::CompiledView;

use crate::error::BatchError;
use crate::read::Partial;

/// A Ballista scheduler batch runs submit their plans to.
#[derive(Debug)]
pub struct Cluster {
    /// `host:port` of the scheduler's gRPC service, as configured (errors name it).
    scheduler: String,
    /// File groups a run's scan is split into: the tasks the executors share.
    partitions: usize,
    /// Each submission gets a session of its own on the scheduler.
    sessions: AtomicU64,
}

impl Cluster {
    /// The cluster `[batch.ballista]` names.
    pub fn new(config: &BallistaConfig) -> Self {
        Cluster {
            scheduler: config.scheduler.clone(),
            partitions: config.partitions.max(1),
            sessions: AtomicU64::new(0),
        }
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
        let failed = |e: DataFusionError| BatchError::ballista(&self.scheduler, &view.name, e);
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
        let failed = |e: DataFusionError| BatchError::ballista(&self.scheduler, view, e);
        let config = SessionConfig::new_with_ballista();
        let session = format!(
            "tributary-{}-{}",
            std::process::id(),
            self.sessions.fetch_add(1, Ordering::Relaxed)
        );
        let stream = execute_physical_plan::<PhysicalPlanNode>(
            format!("http://{}", self.scheduler),
            &config.ballista_config(),
            plan,
            &BallistaPhysicalExtensionCodec::default(),
            session,
            config,
        )
        .await
        .map_err(failed)?;
        stream.try_collect().await.map_err(failed)
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
