//! A checked pipeline: streams and compiled views, ready for every layer.

use std::sync::Arc;

use crate::config::{Config, ConfigSource};
use crate::dimension::DimensionTable;
use crate::error::{CoreError, Result};
use crate::schema::StreamSchema;
use crate::view::CompiledView;

mod resolve;

/// Streams and views of one configuration, validated and compiled.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Every stream, validated.
    pub streams: Vec<StreamSchema>,
    /// Every running view, compiled for both layers; shared by every clone, so a view
    /// created or dropped at runtime reaches every layer of the process at once.
    pub views: ViewSet,
    /// Every dimension table views may join with.
    pub tables: Vec<Arc<DimensionTable>>,
    /// Every append-mode view.
    pub append_views: Vec<Arc<crate::view::append::AppendView>>,
}

impl Pipeline {
    /// Check every stream and compile every view; errors name the file and the key.
    pub async fn from_config(config: &Config, source: &ConfigSource) -> Result<Pipeline> {
        let fail = |key: String, message: String| CoreError::Config {
            source_name: source.to_string(),
            key,
            message,
        };
        if let Some(expr) = &config.batch.schedule {
            crate::config::parse_schedule(expr).map_err(|m| fail("batch.schedule".into(), m))?;
        }
        for (i, view) in config.views.iter().enumerate() {
            if let Some(expr) = &view.schedule {
                crate::config::parse_schedule(expr)
                    .map_err(|m| fail(format!("views[{i}].schedule"), m))?;
            }
        }
        crate::config::check_settings(config).map_err(|(k, m)| fail(k, m))?;
        if let Some((i, message)) = config.auth.weak_token() {
            return Err(fail(format!("auth.tokens[{i}].token"), message));
        }
        // Dimension tables below may live in an object store: reach it as configured.
        crate::cloud::register(&config.storage.options)?;
        if config.log.kind == crate::config::LogKind::Kafka {
            config
                .log
                .security
                .validate()
                .map_err(|(key, message)| fail(key, message))?;
        }
        let plain = streams(config).map_err(|(k, m)| fail(k, m))?;
        let tables = tables(config).await.map_err(|(k, m)| fail(k, m))?;
        let (streams, views) = resolve::resolve(config, plain, &tables)
            .await
            .map_err(|(k, m)| fail(k, m))?;
        sinks(config, &views).map_err(|(k, m)| fail(k, m))?;
        sharded_joins(config, &views).map_err(|(k, m)| fail(k, m))?;
        let append_views = append_views(config, &streams, &tables, &views)
            .await
            .map_err(|(k, m)| fail(k, m))?;
        if config.generator.enabled && !streams.iter().any(|s| s.name == config.generator.stream) {
            return Err(fail(
                "generator.stream".into(),
                format!("`{}` is not a declared stream", config.generator.stream),
            ));
        }
        Ok(Pipeline {
            streams,
            views: ViewSet::new(views),
            tables,
            append_views,
        })
    }

    /// Reload dimension tables that changed (each checked at most every few seconds).
    pub async fn refresh_tables(&self) {
        for t in &self.tables {
            t.refresh().await;
        }
    }

    /// The stream called `name`.
    pub fn stream(&self, name: &str) -> Option<&StreamSchema> {
        self.streams.iter().find(|s| s.name == name)
    }

    /// The view called `name`.
    pub fn view(&self, name: &str) -> Option<Arc<CompiledView>> {
        self.views.get(name)
    }

    /// The append-mode view called `name`.
    pub fn append_view(&self, name: &str) -> Option<Arc<crate::view::append::AppendView>> {
        self.append_views.iter().find(|v| v.name == name).cloned()
    }

    /// Views that read `stream` (a view joining two streams reads both), as they are now.
    pub fn views_of(&self, stream: &str) -> Vec<Arc<CompiledView>> {
        self.views.iter().filter(|v| v.reads(stream)).collect()
    }

    /// Compile a view defined at runtime, checked as start-up checks one: against the
    /// streams and tables of this pipeline; the error says what is wrong with the SQL.
    pub async fn compile_view(&self, cfg: &crate::config::ViewConfig) -> Result<CompiledView> {
        let streams = self.streams.iter().map(|s| s.name.as_str());
        if let Some(message) = view_name_problem(&cfg.name, streams) {
            return Err(CoreError::View {
                view: cfg.name.clone(),
                message,
            });
        }
        CompiledView::compile_with(cfg, &self.streams, &self.tables).await
    }
}

/// The running views, shared by every clone of a [`Pipeline`]: readers take a snapshot
/// (an `Arc` of the list) and never hold the lock.
#[derive(Clone, Default)]
pub struct ViewSet(Arc<std::sync::RwLock<Arc<Vec<Arc<CompiledView>>>>>);

impl std::fmt::Debug for ViewSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.iter().map(|v| v.name.clone()).collect();
        f.debug_tuple("ViewSet").field(&names).finish()
    }
}

impl ViewSet {
    /// A set of `views`.
    pub fn new(views: Vec<Arc<CompiledView>>) -> Self {
        ViewSet(Arc::new(std::sync::RwLock::new(Arc::new(views))))
    }

    /// The views now.
    pub fn snapshot(&self) -> Arc<Vec<Arc<CompiledView>>> {
        self.0.read().expect("view set lock").clone()
    }

    /// The views now, one by one.
    pub fn iter(&self) -> std::vec::IntoIter<Arc<CompiledView>> {
        self.snapshot().as_ref().clone().into_iter()
    }

    /// How many views there are.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The view called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<CompiledView>> {
        self.snapshot().iter().find(|v| v.name == name).cloned()
    }

    /// Add `view`, or replace the view of its name.
    pub fn insert(&self, view: Arc<CompiledView>) {
        let mut guard = self.0.write().expect("view set lock");
        let mut views = guard.as_ref().clone();
        views.retain(|v| v.name != view.name);
        views.push(view);
        *guard = Arc::new(views);
    }

    /// Remove the view called `name`; the view removed, if there was one.
    pub fn remove(&self, name: &str) -> Option<Arc<CompiledView>> {
        let mut guard = self.0.write().expect("view set lock");
        let found = guard.iter().find(|v| v.name == name).cloned()?;
        let views = guard.iter().filter(|v| v.name != name).cloned().collect();
        *guard = Arc::new(views);
        Some(found)
    }
}

impl IntoIterator for &ViewSet {
    type Item = Arc<CompiledView>;
    type IntoIter = std::vec::IntoIter<Arc<CompiledView>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// A configuration problem: the key at fault and what is wrong.
type Problem = (String, String);

/// Longest name of a stream, view, sink or table: names become directory names (at
/// most 255 bytes on common filesystems) and Kafka topic names (at most 249).
pub const MAX_NAME_LEN: usize = 128;

/// Whether `name` is a valid view, sink or table name (letters, digits and `_`, at
/// most [`MAX_NAME_LEN`]).
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why a view (or append view) may not be called `name`, if it may not: it must be a
/// plain name, and not the SQL endpoint's name of a stream's master or dead-letter table
/// (`master_<stream>`, `dead_letters_<stream>`), which it would hide from every query.
pub fn view_name_problem<'a>(
    name: &str,
    mut streams: impl Iterator<Item = &'a str>,
) -> Option<String> {
    if !is_plain_name(name) {
        return Some(format!(
            "`{name}` is not a valid view name (letters, digits and _ only, at most {MAX_NAME_LEN})"
        ));
    }
    streams.find_map(|s| {
        let table = if name.strip_prefix("master_") == Some(s) {
            "master table"
        } else if name.strip_prefix("dead_letters_") == Some(s) {
            "dead-letter table"
        } else {
            return None;
        };
        Some(format!(
            "`{name}` is the SQL name of stream `{s}`'s {table}: name the view otherwise"
        ))
    })
}

/// The streams declared with their fields, by their index in the configuration (those
/// `from-view` come from their view's shape: [`resolve`]).
fn streams(config: &Config) -> std::result::Result<Vec<(usize, StreamSchema)>, Problem> {
    let mut streams: Vec<(usize, StreamSchema)> = Vec::new();
    for (i, s) in config.streams.iter().enumerate() {
        let key = format!("streams[{i}]");
        if config.streams[..i].iter().any(|x| x.name == s.name) {
            return Err((
                format!("{key}.name"),
                format!("stream `{}` is declared twice", s.name),
            ));
        }
        if s.from_view.is_some() {
            continue;
        }
        let schema = StreamSchema::from_config(s, &key).map_err(|m| (key.clone(), m))?;
        streams.push((i, schema));
    }
    if config.streams.is_empty() {
        return Err(("streams".into(), "declare at least one stream".into()));
    }
    Ok(streams)
}

async fn tables(config: &Config) -> std::result::Result<Vec<Arc<DimensionTable>>, Problem> {
    let mut tables: Vec<Arc<DimensionTable>> = Vec::new();
    for (i, t) in config.tables.iter().enumerate() {
        let key = format!("tables[{i}]");
        if !is_plain_name(&t.name) {
            return Err((
                format!("{key}.name"),
                format!(
                    "`{}` is not a valid table name (letters, digits and _ only, at most 128)",
                    t.name
                ),
            ));
        }
        if config.streams.iter().any(|s| s.name == t.name)
            || tables.iter().any(|x| x.name == t.name)
        {
            return Err((
                format!("{key}.name"),
                format!("`{}` is already the name of a stream or table", t.name),
            ));
        }
        let table = DimensionTable::load(&t.name, &t.path, t.format, &config.storage_root, &key)
            .await
            .map_err(|m| (key.clone(), m))?;
        tables.push(Arc::new(table));
    }
    Ok(tables)
}

/// A view joining two streams pairs events of any partition of one with any of the
/// other, which speed processes holding some partitions each cannot do.
fn sharded_joins(config: &Config, views: &[Arc<CompiledView>]) -> std::result::Result<(), Problem> {
    let sharded = config.speed.shard.count > 1 || config.speed.speed_urls().len() > 1;
    match views.iter().find(|v| v.stream_join().is_some()) {
        Some(v) if sharded => Err((
            "speed.shard".into(),
            format!(
                "view `{}` joins two streams, which needs one speed process holding every partition (speed.shard \"0/1\", one speed url)",
                v.name
            ),
        )),
        _ => Ok(()),
    }
}

fn sinks(config: &Config, views: &[Arc<CompiledView>]) -> std::result::Result<(), Problem> {
    let mut names: Vec<&str> = Vec::new();
    for (i, s) in config.sinks.iter().enumerate() {
        let key = format!("sinks[{i}]");
        if !is_plain_name(&s.name) {
            return Err((
                format!("{key}.name"),
                format!(
                    "`{}` is not a valid sink name (letters, digits and _ only, at most 128)",
                    s.name
                ),
            ));
        }
        if names.contains(&s.name.as_str()) {
            return Err((
                format!("{key}.name"),
                format!("sink `{}` is declared twice", s.name),
            ));
        }
        names.push(&s.name);
        if !views.iter().any(|v| v.name == s.view) {
            return Err((
                format!("{key}.view"),
                format!("`{}` is not a declared view", s.view),
            ));
        }
        s.validate()
            .map_err(|(field, message)| (format!("{key}.{field}"), message))?;
        chained(config, &key, s)?;
    }
    Ok(())
}

async fn append_views(
    config: &Config,
    streams: &[StreamSchema],
    tables: &[Arc<DimensionTable>],
    views: &[Arc<CompiledView>],
) -> std::result::Result<Vec<Arc<crate::view::append::AppendView>>, Problem> {
    let mut out: Vec<Arc<crate::view::append::AppendView>> = Vec::new();
    for (i, v) in config.append_views.iter().enumerate() {
        let key = format!("append-views[{i}]");
        let taken = views.iter().any(|x| x.name == v.name) || out.iter().any(|x| x.name == v.name);
        if taken {
            return Err((
                format!("{key}.name"),
                format!("`{}` is taken by another view", v.name),
            ));
        }
        if let Some(why) = view_name_problem(&v.name, streams.iter().map(|s| s.name.as_str())) {
            return Err((format!("{key}.name"), why));
        }
        let compiled = crate::view::append::AppendView::compile(v, streams, tables)
            .await
            .map_err(|e| {
                let message = match e {
                    CoreError::View { message, .. } => message,
                    other => other.to_string(),
                };
                (
                    format!("{key}.sql"),
                    format!("view `{}`: {message}", v.name),
                )
            })?;
        out.push(Arc::new(compiled));
    }
    Ok(out)
}

/// A Kafka sink producing into a stream's own topic feeds that stream: only a stream
/// declared `from-view` of the sink's view has the shape its rows have.
fn chained(
    config: &Config,
    key: &str,
    sink: &crate::config::SinkConfig,
) -> std::result::Result<(), Problem> {
    let (Some(topic), crate::config::SinkKind::Kafka) = (&sink.topic, sink.kind) else {
        return Ok(());
    };
    let same_cluster = sink
        .brokers
        .as_ref()
        .is_none_or(|b| *b == config.log.brokers);
    if config.log.kind != crate::config::LogKind::Kafka || !same_cluster {
        return Ok(());
    }
    let Some(stream) = config
        .streams
        .iter()
        .find(|s| &config.log.topic(&s.name) == topic)
    else {
        return Ok(());
    };
    match &stream.from_view {
        Some(v) if *v == sink.view => Ok(()),
        _ => Err((
            format!("{key}.topic"),
            format!(
                "`{topic}` is the topic of stream `{}`, which is not fed by view `{}`: declare \
                 that stream with from-view = \"{}\" (and no fields), or use another topic",
                stream.name, sink.view, sink.view
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
