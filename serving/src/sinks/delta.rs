//! A Delta table as a sink: each delivery is one append commit carrying the `txn`
//! action (`tributary-sink-<name>`, delivery number), so a delivery re-sent after a
//! crash finds its number committed and is not written twice: exactly once.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::json::ReaderBuilder;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use tokio::sync::Mutex;
use tributary_core::view::{CompiledView, SOURCE_COLUMN};
use url::Url;

use super::plan::Delivery;
use super::targets::{DeliveryError, Target};

/// Appends deliveries to one Delta table.
pub struct DeltaSink {
    url: Url,
    app_id: String,
    schema: SchemaRef,
    /// The table handle, kept between deliveries (reloaded before each).
    table: Mutex<Option<deltalake::DeltaTable>>,
}

impl DeltaSink {
    /// The table at `url` for sink `name` over `view`'s rows.
    pub fn new(name: &str, url: Url, view: &CompiledView) -> DeltaSink {
        DeltaSink {
            url,
            app_id: format!("tributary-sink-{name}"),
            schema: table_schema(view),
            table: Mutex::new(None),
        }
    }
}

/// The view's output columns in types Delta stores (timestamps in microseconds, UTC;
/// unsigned integers as 64-bit), then the emission's own columns.
pub fn table_schema(view: &CompiledView) -> SchemaRef {
    let utc = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut fields: Vec<Field> = view
        .output_schema
        .fields()
        .iter()
        .filter(|f| f.name() != SOURCE_COLUMN)
        .map(|f| {
            let t = match f.data_type() {
                DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => utc(),
                DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32
                | DataType::UInt64
                | DataType::Int8
                | DataType::Int16
                | DataType::Int32 => DataType::Int64,
                DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
                DataType::Float16 | DataType::Float32 => DataType::Float64,
                other => other.clone(),
            };
            Field::new(f.name(), t, true)
        })
        .collect();
    fields.extend([
        Field::new("_key", DataType::Utf8, false),
        Field::new("_view", DataType::Utf8, false),
        Field::new("_version", DataType::Int64, false),
        Field::new("_complete", DataType::Boolean, false),
        Field::new("_correction", DataType::Boolean, false),
        Field::new("_retracted", DataType::Boolean, false),
        Field::new("_emitted_at", utc(), false),
    ]);
    Arc::new(Schema::new(fields))
}

#[async_trait]
impl Target for DeltaSink {
    async fn deliver(&self, delivery: &Delivery) -> Result<(), DeliveryError> {
        let mut guard = self.table.lock().await;
        let table = match guard.take() {
            Some(mut t) if t.version().is_some() => {
                t.update_incremental(None).await?;
                t
            }
            _ => tributary_core::delta::open(self.url.clone()).await?,
        };
        if table.version().is_some() {
            let done = table
                .snapshot()?
                .transaction_version(table.log_store().as_ref(), &self.app_id)
                .await?;
            if done.is_some_and(|v| v >= delivery.seq as i64) {
                // Committed before a crash or a lost answer: nothing to write.
                *guard = Some(table);
                return Ok(());
            }
        }
        let mut decoder = ReaderBuilder::new(self.schema.clone()).build_decoder()?;
        decoder.serialize(&delivery.rows)?;
        let batch = decoder.flush()?.unwrap_or_else(|| {
            datafusion::arrow::array::RecordBatch::new_empty(self.schema.clone())
        });
        let props = CommitProperties::default()
            .with_application_transaction(Transaction::new(&self.app_id, delivery.seq as i64));
        let table = table
            .write(vec![batch])
            .with_save_mode(SaveMode::Append)
            .with_commit_properties(props)
            .await?;
        *guard = Some(table);
        Ok(())
    }

    fn describe(&self) -> String {
        self.url.to_string()
    }
}
