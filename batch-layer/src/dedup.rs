//! The batch half of a stream's dedup rule ([`DedupSpec`]): drop a record when the
//! previous record of its partition with the same id was ingested within the horizon,
//! found with `lag(_ingest_ts)` over partition and id in offset order.
//! The deduplicated rows are planned in an ordinary session and reach the view's plan
//! as a [`crate::scan::MeteredTable`].

use datafusion::arrow::datatypes::DataType;
use datafusion::dataframe::DataFrame;
use datafusion::error::Result;
use datafusion::functions_window::expr_fn::lag;
use datafusion::logical_expr::{Expr, ExprFunctionExt};
use datafusion::prelude::{cast, col, lit};
use tributary_core::schema::{DedupSpec, INGEST_TS, OFFSET, PARTITION};

/// `df` (master-table rows) without the records the rule counts as repeats. Every
/// predecessor of a record is below the cutoff if the record is, so `df` may already
/// be cut.
pub fn without_repeats(df: DataFrame, spec: &DedupSpec) -> Result<DataFrame> {
    const PREVIOUS: &str = "__previous_ingest_ts";
    let micros = |e: Expr| cast(e, DataType::Int64);
    let previous = lag(col(INGEST_TS), Some(1), None)
        .partition_by(vec![col(PARTITION), col(spec.field.as_str())])
        .order_by(vec![col(OFFSET).sort(true, false)])
        .build()?
        .alias(PREVIOUS);
    let counts = col(spec.field.as_str())
        .is_null()
        .or(col(PREVIOUS).is_null())
        .or(micros(col(PREVIOUS)).lt(micros(col(INGEST_TS)) - lit(spec.horizon_us)));
    df.window(vec![previous])?.filter(counts)
}
