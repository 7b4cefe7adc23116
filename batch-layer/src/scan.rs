//! The batch run's input: the master table's rows in range, as a table the view's plan
//! reads, that counts them on the way.
//!
//! A run needs, besides the view's states, how many events it read and the newest event
//! time among them (the batch half of the watermark). Those are taken from the rows as
//! they stream past (`MeterExec`) rather than by a second scan of the master table;
//! the view's own `WHERE` stays above the meter (filters are not pushed into this
//! table), so every event in range is counted, kept by the view or not.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::dataframe::DataFrame;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions,
};
use futures::StreamExt;
use tributary_core::schema::{INGEST_TS, newest_watermark_time};

/// The master table's data files for a run over `_ingest_ts` in `[from, cutoff)`:
/// those whose statistics put every row inside the range (read without the range
/// filter, so their `_ingest_ts` column is not even decoded), and those that may hold
/// rows on both sides (read through the filter). Files wholly outside are left out.
#[derive(Debug, Default)]
pub struct RangeFiles {
    /// Files wholly inside the range.
    pub inside: Vec<String>,
    /// Files that may hold rows on both sides of an end of the range.
    pub edge: Vec<String>,
}

/// Split `table`'s files for a run over `_ingest_ts` in `[from, cutoff)` (`from` none: from the start).
pub fn range_files(
    table: &deltalake::DeltaTable,
    from: Option<i64>,
    cutoff: i64,
) -> deltalake::DeltaResult<RangeFiles> {
    let mut out = RangeFiles::default();
    for file in table.snapshot()?.log_data().iter() {
        let path = file.path().to_string();
        match ingest_ts_bounds(file.stats().as_deref()) {
            Some((min, max)) => {
                // Delta keeps timestamps in statistics to the millisecond, cut down: the
                // true maximum may be up to 999 µs above the one recorded.
                let max = max + 999;
                let after_start = from.is_none_or(|f| min >= f);
                if max < cutoff && after_start {
                    out.inside.push(path);
                } else if min < cutoff && from.is_none_or(|f| max >= f) {
                    out.edge.push(path);
                }
            }
            None => out.edge.push(path),
        }
    }
    Ok(out)
}

/// `_ingest_ts`'s smallest and largest values in a file's statistics, in microseconds.
fn ingest_ts_bounds(stats: Option<&str>) -> Option<(i64, i64)> {
    let stats: serde_json::Value = serde_json::from_str(stats?).ok()?;
    let at = |side: &str| {
        stats[side][tributary_core::schema::INGEST_TS]
            .as_str()
            .and_then(tributary_core::time::parse_rfc3339)
    };
    Some((at("minValues")?, at("maxValues")?))
}

/// Rows seen and the newest event time among them, shared by every partition's stream.
#[derive(Debug)]
pub struct Meter {
    rows: AtomicU64,
    newest: AtomicI64,
}

impl Default for Meter {
    fn default() -> Self {
        Meter {
            rows: AtomicU64::new(0),
            newest: AtomicI64::new(i64::MIN),
        }
    }
}

impl Meter {
    /// Rows counted, and the newest event time if any row had one.
    pub fn read(&self) -> (u64, Option<i64>) {
        let newest = self.newest.load(Ordering::Relaxed);
        (
            self.rows.load(Ordering::Relaxed),
            (newest != i64::MIN).then_some(newest),
        )
    }

    fn add(&self, rows: usize, newest: Option<i64>) {
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        if let Some(t) = newest {
            self.newest.fetch_max(t, Ordering::Relaxed);
        }
    }
}

/// A table whose scan is `df` planned in its own session (the session `df` came from),
/// metered. Each scan plans afresh, so the table can be scanned more than once.
#[derive(Debug)]
pub struct MeteredTable {
    df: DataFrame,
    schema: SchemaRef,
    event_time: String,
    /// The stream's watermark lead: event times count for the watermark only up to
    /// `_ingest_ts` plus this (when `df` has `_ingest_ts`), as in the speed layer.
    lead_us: i64,
    meter: Arc<Meter>,
}

impl MeteredTable {
    /// `df` must have a microsecond timestamp column `event_time`.
    pub fn new(df: DataFrame, event_time: &str, lead_us: i64, meter: Arc<Meter>) -> Self {
        let schema = Arc::new(df.schema().as_arrow().clone());
        MeteredTable {
            df,
            schema,
            event_time: event_time.to_string(),
            lead_us,
            meter,
        }
    }
}

#[async_trait]
impl TableProvider for MeteredTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Read only the columns asked for, plus the event time the meter needs.
        let wanted: Vec<String> = match projection {
            Some(p) => p
                .iter()
                .map(|i| self.schema.field(*i).name().clone())
                .collect(),
            None => self
                .schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
        };
        let mut read = wanted.clone();
        for needed in [self.event_time.as_str(), INGEST_TS] {
            if !read.iter().any(|c| c == needed) && self.schema.index_of(needed).is_ok() {
                read.push(needed.to_string());
            }
        }
        let names: Vec<&str> = read.iter().map(String::as_str).collect();
        let plan = self
            .df
            .clone()
            .select_columns(&names)?
            .create_physical_plan()
            .await?;
        let event_time = plan.schema().index_of(&self.event_time)?;
        let ingest_ts = plan.schema().index_of(INGEST_TS).ok();
        let metered: Arc<dyn ExecutionPlan> = Arc::new(MeterExec {
            input: plan,
            event_time,
            ingest_ts,
            lead_us: self.lead_us,
            meter: self.meter.clone(),
        });
        if wanted.len() == read.len() {
            return Ok(metered);
        }
        let schema = metered.schema();
        let exprs = wanted
            .iter()
            .map(|name| {
                let column = datafusion::physical_expr::expressions::col(name, &schema)?;
                Ok((column, name.clone()))
            })
            .collect::<Result<Vec<(Arc<dyn PhysicalExpr>, String)>>>()?;
        Ok(Arc::new(ProjectionExec::try_new(exprs, metered)?))
    }
}

/// Passes its input through, adding each batch's rows and newest event time to a
/// [`Meter`].
#[derive(Debug)]
struct MeterExec {
    input: Arc<dyn ExecutionPlan>,
    event_time: usize,
    /// `_ingest_ts`, when the input has it: caps each event's watermark time.
    ingest_ts: Option<usize>,
    lead_us: i64,
    meter: Arc<Meter>,
}

impl DisplayAs for MeterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "MeterExec")
    }
}

impl ExecutionPlan for MeterExec {
    fn name(&self) -> &str {
        "MeterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(MeterExec {
            input: children.swap_remove(0),
            event_time: self.event_time,
            ingest_ts: self.ingest_ts,
            lead_us: self.lead_us,
            meter: self.meter.clone(),
        }))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(
                datafusion::physical_plan::ChildrenPropertiesMode::Recompute,
            ),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let (column, meter) = (self.event_time, self.meter.clone());
        let (ingest, lead_us) = (self.ingest_ts, self.lead_us);
        let metered = input.map(move |batch| {
            let batch = batch?;
            let micros = |i: usize| {
                batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .ok_or_else(|| {
                        DataFusionError::Internal(format!(
                            "column {} is {}, not a microsecond timestamp",
                            batch.schema().field(i).name(),
                            batch.column(i).data_type()
                        ))
                    })
            };
            let times = micros(column)?;
            let ingest = ingest.map(micros).transpose()?;
            meter.add(
                batch.num_rows(),
                newest_watermark_time(times, ingest, lead_us),
            );
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, metered)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::datasource::MemTable;

    #[tokio::test]
    async fn counts_every_row_below_a_filter_and_keeps_the_newest_time() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Float64, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        let part = |v: Vec<f64>, ts: Vec<Option<i64>>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Float64Array::from(v)),
                    Arc::new(TimestampMicrosecondArray::from(ts)),
                ],
            )
            .unwrap()
        };
        // Two partitions, so both streams feed the one meter.
        let table = MemTable::try_new(
            schema.clone(),
            vec![
                vec![part(vec![1.0, 20.0], vec![Some(5), None])],
                vec![part(vec![30.0, 2.0, 3.0], vec![Some(9), Some(7), Some(1)])],
            ],
        )
        .unwrap();
        let inner = tributary_core::cloud::session_context();
        let df = inner.read_table(Arc::new(table)).unwrap();
        let meter = Arc::new(Meter::default());
        let outer = tributary_core::cloud::session_context();
        outer
            .register_table("t", Arc::new(MeteredTable::new(df, "ts", 0, meter.clone())))
            .unwrap();
        // The query reads `v` only and keeps two rows: the meter still sees all five.
        let out = outer
            .sql("SELECT sum(v) FROM t WHERE v > 10")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let sum = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .value(0);
        assert_eq!(sum, 50.0);
        assert_eq!(meter.read(), (5, Some(9)));
    }

    #[test]
    fn statistics_bound_ingest_times_to_the_millisecond() {
        let stats = r#"{"numRecords":2,"minValues":{"_ingest_ts":"2026-01-01T00:00:01.000Z"},
            "maxValues":{"_ingest_ts":"2026-01-01T00:00:02.500Z"}}"#;
        let (min, max) = ingest_ts_bounds(Some(stats)).unwrap();
        assert_eq!(max - min, 1_500_000);
        assert_eq!(ingest_ts_bounds(Some(r#"{"numRecords":2}"#)), None);
        assert_eq!(ingest_ts_bounds(None), None);
    }

    #[test]
    fn an_empty_meter_has_no_newest_time() {
        assert_eq!(Meter::default().read(), (0, None));
    }
}
