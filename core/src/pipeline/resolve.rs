//! Views and the streams they feed (chaining): a stream `from-view` takes its shape
//! from a view, and views over it compile only once it has one. Resolved in rounds:
//! compile every view that names no unresolved stream, shape every stream whose view is
//! compiled, until nothing moves; what is left names a missing view or a cycle.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;

use super::{Problem, view_name_problem};
use crate::config::{Config, EMITTED_FIELDS, FieldConfig, LogKind, StreamConfig};
use crate::dimension::DimensionTable;
use crate::error::CoreError;
use crate::schema::StreamSchema;
use crate::view::{CompiledView, SOURCE_COLUMN};

/// Every stream and view of `config`, each list in configuration order.
pub(super) async fn resolve(
    config: &Config,
    mut streams: Vec<(usize, StreamSchema)>,
    tables: &[Arc<DimensionTable>],
) -> Result<(Vec<StreamSchema>, Vec<Arc<CompiledView>>), Problem> {
    check_names(config)?;
    let mut views: Vec<(usize, Arc<CompiledView>)> = Vec::new();
    loop {
        let unresolved: Vec<&str> = config
            .streams
            .iter()
            .enumerate()
            .filter(|(i, s)| s.from_view.is_some() && !streams.iter().any(|(j, _)| j == i))
            .map(|(_, s)| s.name.as_str())
            .collect();
        let mut moved = false;
        for (i, v) in config.views.iter().enumerate() {
            if views.iter().any(|(j, _)| *j == i) || mentions(&v.sql, &unresolved) {
                continue;
            }
            let known: Vec<StreamSchema> = streams.iter().map(|(_, s)| s.clone()).collect();
            views.push((i, compile(i, v, &known, tables).await?));
            moved = true;
        }
        for (i, s) in config.streams.iter().enumerate() {
            let Some(from) = &s.from_view else { continue };
            if streams.iter().any(|(j, _)| *j == i) {
                continue;
            }
            if let Some((_, view)) = views.iter().find(|(_, v)| &v.name == from) {
                streams.push((i, derive(config, i, s, view)?));
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    left_over(config, &streams, &views)?;
    streams.sort_by_key(|(i, _)| *i);
    views.sort_by_key(|(i, _)| *i);
    Ok((
        streams.into_iter().map(|(_, s)| s).collect(),
        views.into_iter().map(|(_, v)| v).collect(),
    ))
}

fn check_names(config: &Config) -> Result<(), Problem> {
    for (i, v) in config.views.iter().enumerate() {
        let key = format!("views[{i}]");
        if config.views[..i].iter().any(|x| x.name == v.name) {
            return Err((
                format!("{key}.name"),
                format!("view `{}` is declared twice", v.name),
            ));
        }
        let streams = config.streams.iter().map(|s| s.name.as_str());
        if let Some(why) = view_name_problem(&v.name, streams) {
            return Err((format!("{key}.name"), why));
        }
    }
    Ok(())
}

/// Whether `sql` names any of `names` (as a word, any case): such a view waits for them.
fn mentions(sql: &str, names: &[&str]) -> bool {
    sql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|w| names.iter().any(|n| n.eq_ignore_ascii_case(w)))
}

async fn compile(
    i: usize,
    v: &crate::config::ViewConfig,
    streams: &[StreamSchema],
    tables: &[Arc<DimensionTable>],
) -> Result<Arc<CompiledView>, Problem> {
    let compiled = CompiledView::compile_with(v, streams, tables)
        .await
        .map_err(|e| {
            let message = match e {
                CoreError::View { message, .. } => message,
                other => other.to_string(),
            };
            (
                format!("views[{i}].sql"),
                format!("view `{}`: {message}", v.name),
            )
        })?;
    Ok(Arc::new(compiled))
}

/// The stream a view's Kafka sink feeds: the view's columns (the window its event time,
/// never null), then the emitted rows' own, `_key` its dedup id.
fn derive(
    config: &Config,
    i: usize,
    cfg: &StreamConfig,
    view: &CompiledView,
) -> Result<StreamSchema, Problem> {
    let key = format!("streams[{i}]");
    let at = |field: &str| format!("{key}.{field}");
    if config.log.kind != LogKind::Kafka {
        return Err((
            at("from-view"),
            "a stream fed by a view's sink needs log.kind = \"kafka\": the sink produces into the \
             stream's topic"
                .into(),
        ));
    }
    if !cfg.fields.is_empty() {
        return Err((
            at("fields"),
            format!(
                "a stream from-view takes its fields from view `{}`; declare none",
                view.name
            ),
        ));
    }
    let mut fields = Vec::new();
    for f in view.output_schema.fields() {
        if f.name() == SOURCE_COLUMN {
            continue;
        }
        let field_type = match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string",
            t if t.is_integer() => "int64",
            t if t.is_floating() => "float64",
            DataType::Boolean => "bool",
            DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => "timestamp",
            other => {
                return Err((
                    at("from-view"),
                    format!(
                        "column `{}` of view `{}` is {other}, which a stream field cannot hold",
                        f.name(),
                        view.name
                    ),
                ));
            }
        };
        fields.push(FieldConfig {
            name: f.name().clone(),
            field_type: field_type.into(),
            nullable: f.name() != &view.window,
        });
    }
    fields.extend(EMITTED_FIELDS.iter().map(|(name, t)| FieldConfig {
        name: (*name).into(),
        field_type: (*t).into(),
        nullable: false,
    }));
    let mut shaped = cfg.clone();
    shaped.fields = fields;
    if shaped.event_time.is_empty() {
        shaped.event_time = view.window.clone();
    }
    if shaped.id_field.is_none() {
        shaped.id_field = Some("_key".into());
    }
    StreamSchema::from_config(&shaped, &key).map_err(|m| (key, m))
}

fn left_over(
    config: &Config,
    streams: &[(usize, StreamSchema)],
    views: &[(usize, Arc<CompiledView>)],
) -> Result<(), Problem> {
    for (i, s) in config.streams.iter().enumerate() {
        let Some(from) = &s.from_view else { continue };
        if streams.iter().any(|(j, _)| *j == i) {
            continue;
        }
        let message = match config.views.iter().any(|v| &v.name == from) {
            true => format!(
                "view `{from}` reads (through its stream) what stream `{}` feeds: a cycle",
                s.name
            ),
            false => format!("`{from}` is not a declared view"),
        };
        return Err((format!("streams[{i}].from-view"), message));
    }
    if let Some((i, v)) = config
        .views
        .iter()
        .enumerate()
        .find(|(i, _)| !views.iter().any(|(j, _)| j == i))
    {
        return Err((
            format!("views[{i}].sql"),
            format!(
                "view `{}` reads a stream fed by a view that reads it back: a cycle",
                v.name
            ),
        ));
    }
    Ok(())
}
