//! A join view's partners below the batch cutoff, read from the master table.
//!
//! Every event below a batch cutoff is archived (the batch run proved it before
//! committing the cutoff), so the master table holds exactly the events below it, and
//! for one cutoff that set never changes: the rows read are kept and reused until the
//! cutoff moves or an older event needs partners from further back in event time.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{SessionConfig, SessionContext, cast, col, lit};
use datafusion::scalar::ScalarValue;
use tributary_core::CoreError;
use tributary_core::schema::{EVENT_DATE, INGEST_TS, StreamSchema, UTC};
use tributary_core::storage::Storage;
use tributary_core::view::{SOURCE_COLUMN, SOURCE_SPEED};

use super::{Archive, Side};

const DAY_US: i64 = 86_400_000_000;

/// The master table's events of one stream below `cutoff` with event time from
/// `from_us` on, in the view's input layout.
#[derive(Debug)]
struct Below {
    cutoff: i64,
    from_us: i64,
    rows: Vec<RecordBatch>,
}

/// A join view's two streams' master tables, with what was last read of each.
#[derive(Debug)]
pub(crate) struct MasterArchive {
    /// Where the master tables are (none: nothing is below any cutoff, as in benches
    /// whose layer never learns of one).
    storage: Option<Storage>,
    /// Per side: the stream and the input layout its events are read into.
    streams: [(StreamSchema, SchemaRef); 2],
    /// Per side: the rows last read.
    held: [Option<Below>; 2],
}

impl MasterArchive {
    pub(crate) fn new(storage: Option<Storage>, streams: [(StreamSchema, SchemaRef); 2]) -> Self {
        MasterArchive {
            storage,
            streams,
            held: [None, None],
        }
    }
}

impl Archive for MasterArchive {
    async fn below(
        &mut self,
        side: Side,
        cutoff: i64,
        from_us: i64,
    ) -> Result<Vec<RecordBatch>, CoreError> {
        let Some(storage) = &self.storage else {
            return Ok(Vec::new());
        };
        let (stream, input) = &self.streams[side.index()];
        let slot = &mut self.held[side.index()];
        if let Some(held) = slot.as_ref()
            && held.cutoff == cutoff
            && held.from_us <= from_us
        {
            return Ok(held.rows.clone());
        }
        // Read as far back as was needed before too: late events tend to come again.
        let from_us = slot.as_ref().map_or(from_us, |h| h.from_us.min(from_us));
        let rows = read(storage, stream, input, cutoff, from_us).await?;
        tracing::debug!(stream = %stream.name, cutoff, from_us, rows = rows.iter().map(|b| b.num_rows()).sum::<usize>(), "join partners read from the master table");
        *slot = Some(Below {
            cutoff,
            from_us,
            rows: rows.clone(),
        });
        Ok(rows)
    }
}

async fn read(
    storage: &Storage,
    stream: &StreamSchema,
    input: &SchemaRef,
    cutoff: i64,
    from_us: i64,
) -> Result<Vec<RecordBatch>, CoreError> {
    let url = storage.master_table(&stream.name);
    let delta = |e: deltalake::DeltaTableError| CoreError::Table {
        path: url.to_string(),
        message: format!("reading join partners of `{}`: {e}", stream.name),
    };
    let table = tributary_core::delta::open(url.clone())
        .await
        .map_err(delta)?;
    if table.version().is_none() {
        return Ok(Vec::new());
    }
    // Strings as plain Utf8, the type the speed layer decodes them to.
    let mut config = SessionConfig::new();
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    let ctx = SessionContext::new_with_config_rt(config, tributary_core::cloud::runtime());
    table
        .update_datafusion_session(&ctx.state())
        .map_err(delta)?;
    let provider = table
        .table_provider()
        .with_session(Arc::new(ctx.state()))
        .await?;
    let ts = |t: i64| lit(ScalarValue::TimestampMicrosecond(Some(t), Some(UTC.into())));
    let day = i32::try_from(from_us.div_euclid(DAY_US)).unwrap_or(i32::MIN);
    let columns = input
        .fields()
        .iter()
        .filter(|f| f.name() != SOURCE_COLUMN)
        .map(|f| cast(col(f.name().as_str()), f.data_type().clone()).alias(f.name()))
        .chain(std::iter::once(lit(SOURCE_SPEED).alias(SOURCE_COLUMN)))
        .collect::<Vec<_>>();
    let rows = ctx
        .read_table(provider)?
        .filter(
            col(INGEST_TS)
                .lt(ts(cutoff))
                .and(col(stream.event_time.as_str()).gt_eq(ts(from_us)))
                // The table's partitions are event dates: whole days before are skipped.
                .and(col(EVENT_DATE).gt_eq(lit(ScalarValue::Date32(Some(day))))),
        )?
        .select(columns)?
        .collect()
        .await?;
    tributary_core::view::conform_to(input, rows)
}
