//! Answers of append-mode views: their Delta table read with the view API's filters,
//! order and pages (`from`/`to` on the stream's event time when the view keeps it, a
//! column's value by equality, `order=col` or `-col`, `offset`, `limit`).

use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{SessionContext, cast, ident, lit};
use datafusion::scalar::ScalarValue;
use serde_json::{Map, Value};
use tributary_core::schema::UTC;
use tributary_core::time::rfc3339;
use tributary_core::view::append::AppendView;

use crate::error::ServingError;
use crate::json::cell;
use crate::merge::ViewAnswer;
use crate::params::{count, once, time};

/// What a request asks of an append view.
#[derive(Default)]
struct Ask {
    from: Option<i64>,
    to: Option<i64>,
    equal: Vec<(String, String)>,
    order: Option<(String, bool)>,
    offset: usize,
    limit: Option<usize>,
}

fn ask(view: &AppendView, params: &[(String, String)]) -> Result<Ask, ServingError> {
    once(params, |k| {
        !matches!(
            k,
            "from" | "to" | "offset" | "limit" | "order" | "access_token"
        )
    })?;
    let mut a = Ask::default();
    let column = |param: &str, name: &str| {
        if view.schema.field_with_name(name).is_ok() {
            return Ok(name.to_string());
        }
        let names: Vec<&str> = view
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        Err(ServingError::bad(
            param,
            format!(
                "`{name}` is not a column of `{}` ({})",
                view.name,
                names.join(", ")
            ),
        ))
    };
    for (k, v) in params {
        match k.as_str() {
            "from" | "to" if view.event_time.is_none() => {
                return Err(ServingError::bad(
                    k,
                    format!("`{}` keeps no event-time column to bound", view.name),
                ));
            }
            "from" => a.from = Some(time(k, v)?),
            "to" => a.to = Some(time(k, v)?),
            "offset" => a.offset = count(k, v)? as usize,
            "limit" => a.limit = Some(count(k, v)? as usize),
            "order" => {
                let (name, desc) = match v.strip_prefix('-') {
                    Some(n) => (n, true),
                    None => (v.as_str(), false),
                };
                a.order = Some((column(k, name)?, desc));
            }
            "access_token" => {}
            other => a.equal.push((column(k, other)?, v.clone())),
        }
    }
    Ok(a)
}

fn ts(t: i64) -> datafusion::prelude::Expr {
    lit(ScalarValue::TimestampMicrosecond(Some(t), Some(UTC.into())))
}

/// The rows of append view `view` that `params` ask for.
pub async fn answer(
    storage: &tributary_core::storage::Storage,
    view: &AppendView,
    params: &[(String, String)],
) -> Result<ViewAnswer, ServingError> {
    let a = ask(view, params)?;
    let mut out = ViewAnswer {
        view: view.name.clone(),
        cutoff: None,
        speed_watermark: None,
        max_event_time: None,
        speed_position: None,
        freshness_ms: None,
        batch_version: None,
        speed_missing_partitions: Vec::new(),
        failed_rows: Vec::new(),
        total_rows: 0,
        next_offset: None,
        rows: Vec::new(),
    };
    let url = storage.append_view_table(&view.name);
    let what = || format!("append view `{}`", view.name);
    let table = tributary_core::delta::open(url)
        .await
        .map_err(|source| ServingError::Table {
            what: what(),
            source,
        })?;
    if table.version().is_none() {
        return Ok(out);
    }
    out.batch_version = table.version().map(|v| v as i64);
    out.cutoff = tributary_batch::append::cutoff(&table).await?.map(rfc3339);
    let ctx = tributary_core::cloud::session_context();
    let provider = crate::sql_tables::table_provider(&ctx.state(), &table).await?;
    let rows = select(&ctx, provider, view, &a).await?;
    out.total_rows = rows.0;
    out.rows = rows.1;
    let next = a.offset + out.rows.len();
    out.next_offset = (next < out.total_rows).then_some(next);
    Ok(out)
}

async fn select(
    ctx: &SessionContext,
    provider: std::sync::Arc<dyn datafusion::catalog::TableProvider>,
    view: &AppendView,
    a: &Ask,
) -> Result<(usize, Vec<Map<String, Value>>), ServingError> {
    let mut df = ctx.read_table(provider).map_err(ServingError::Engine)?;
    for (c, v) in &a.equal {
        df = df
            .filter(cast(ident(c), DataType::Utf8).eq(lit(v.clone())))
            .map_err(ServingError::Engine)?;
    }
    if let Some(et) = &view.event_time {
        if let Some(f) = a.from {
            df = df
                .filter(ident(et).gt_eq(ts(f)))
                .map_err(ServingError::Engine)?;
        }
        if let Some(t) = a.to {
            df = df
                .filter(ident(et).lt(ts(t)))
                .map_err(ServingError::Engine)?;
        }
    }
    let total = df.clone().count().await.map_err(ServingError::Engine)?;
    let order = a
        .order
        .clone()
        .or_else(|| view.event_time.clone().map(|e| (e, false)));
    if let Some((c, desc)) = order {
        df = df
            .sort(vec![ident(c).sort(!desc, false)])
            .map_err(ServingError::Engine)?;
    }
    let df = df.limit(a.offset, a.limit).map_err(ServingError::Engine)?;
    let batches = df.collect().await.map_err(ServingError::Engine)?;
    let mut rows = Vec::new();
    for b in &batches {
        let schema = b.schema();
        for i in 0..b.num_rows() {
            let mut obj = Map::new();
            for (c, f) in b.columns().iter().zip(schema.fields()) {
                obj.insert(f.name().clone(), cell(c.as_ref(), i));
            }
            rows.push(obj);
        }
    }
    Ok((total, rows))
}
