//! `[[sinks]]`: where a view's rows go besides the API (a webhook, a Kafka topic, a
//! Delta table), and when a row is emitted (the output mode).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::kafka_security::Secret;

/// The columns every emitted row carries besides the view's own, with their stream
/// field types (a stream `from-view` declares them).
pub const EMITTED_FIELDS: [(&str, &str); 7] = [
    ("_key", "string"),
    ("_view", "string"),
    ("_version", "int64"),
    ("_complete", "bool"),
    ("_correction", "bool"),
    ("_retracted", "bool"),
    ("_emitted_at", "timestamp"),
];

/// Shortest webhook secret accepted: receivers verify signatures with it, so a short
/// one could be guessed.
pub const MIN_SECRET_LEN: usize = 16;

/// One sink: a view's rows delivered to one target in one output mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SinkConfig {
    /// The sink's name (its state under the storage root, its status entry).
    pub name: String,
    /// The view whose merged rows it emits.
    pub view: String,
    /// `webhook`, `kafka` or `delta`.
    pub kind: SinkKind,
    /// When a row is emitted: `append` (once, when its window is complete; a change
    /// after that is a correction), `update` (each change), `complete` (every row,
    /// every `every-ms`).
    #[serde(default)]
    pub mode: OutputMode,
    /// How often the view is looked at (and, in `complete` mode, emitted whole).
    #[serde(default = "default_every_ms")]
    pub every_ms: u64,
    /// Webhook: the URL rows are POSTed to (`http://` or `https://`).
    #[serde(default)]
    pub url: Option<String>,
    /// Webhook: the key of the `x-tributary-signature` header (HMAC-SHA256 of the body),
    /// at least 16 characters. Never printed (status and errors leave it out).
    #[serde(default, skip_serializing)]
    pub secret: Option<Secret>,
    /// Webhook: how long one POST may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Kafka: the topic rows are produced to.
    #[serde(default)]
    pub topic: Option<String>,
    /// Kafka: bootstrap servers (default `log.brokers`, with `[log.security]`).
    #[serde(default)]
    pub brokers: Option<String>,
    /// Delta: the table's path; relative paths are under `storage-root`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Longest wait between two attempts of a failed delivery (the wait doubles from
    /// 200 ms up to this).
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Most rows in one delivery (one POST, one commit, one produce round).
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
}

fn default_every_ms() -> u64 {
    1_000
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_backoff_ms() -> u64 {
    30_000
}
fn default_max_rows() -> usize {
    1_000
}

/// Where a sink delivers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// HTTP POST of a JSON body, signed.
    Webhook,
    /// One Kafka record per row, keyed by the row's window and keys.
    Kafka,
    /// Rows appended to a Delta table, each delivery one commit, exactly once.
    Delta,
}

/// When a sink emits a row (Spark's output modes).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutputMode {
    /// A window is emitted once, when the watermark completes it; a late event after
    /// that emits a correction (the next version).
    #[default]
    Append,
    /// Every change of a window, as its next version.
    Update,
    /// The whole view, every `every-ms`.
    Complete,
}

impl OutputMode {
    /// The mode's name as configured.
    pub fn name(self) -> &'static str {
        match self {
            OutputMode::Append => "append",
            OutputMode::Update => "update",
            OutputMode::Complete => "complete",
        }
    }
}

impl SinkKind {
    /// The kind's name as configured.
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Webhook => "webhook",
            SinkKind::Kafka => "kafka",
            SinkKind::Delta => "delta",
        }
    }
}

impl SinkConfig {
    /// Check the fields its kind needs; `Err((field, problem))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.every_ms == 0 {
            return Err(("every-ms", "must be at least 1".into()));
        }
        if self.max_rows == 0 {
            return Err(("max-rows", "must be at least 1".into()));
        }
        let needs = |field: &'static str| {
            (
                field,
                format!("a {} sink needs `{field}`", self.kind.name()),
            )
        };
        match self.kind {
            SinkKind::Webhook => {
                let url = self.url.as_deref().ok_or_else(|| needs("url"))?;
                match url::Url::parse(url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                    _ => {
                        return Err((
                            "url",
                            format!("`{url}` is not an http:// or https:// URL with a host"),
                        ));
                    }
                }
                let secret = self.secret.as_ref().ok_or_else(|| needs("secret"))?;
                if secret.expose().len() < MIN_SECRET_LEN {
                    return Err((
                        "secret",
                        format!(
                            "{} characters; receivers verify signatures with it, so use at \
                             least {MIN_SECRET_LEN}",
                            secret.expose().len()
                        ),
                    ));
                }
            }
            SinkKind::Kafka => {
                let topic = self.topic.as_deref().ok_or_else(|| needs("topic"))?;
                let valid = !topic.is_empty()
                    && topic.len() <= 249
                    && topic
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                if !valid {
                    return Err((
                        "topic",
                        format!(
                            "`{topic}` is not a valid Kafka topic name (letters, digits, `.`, `_`, `-`; at most 249)"
                        ),
                    ));
                }
            }
            SinkKind::Delta => {
                self.path.as_ref().ok_or_else(|| needs("path"))?;
            }
        }
        let unused: &[(&'static str, bool)] = &[
            ("url", self.url.is_some() && self.kind != SinkKind::Webhook),
            (
                "secret",
                self.secret.is_some() && self.kind != SinkKind::Webhook,
            ),
            (
                "topic",
                self.topic.is_some() && self.kind != SinkKind::Kafka,
            ),
            (
                "brokers",
                self.brokers.is_some() && self.kind != SinkKind::Kafka,
            ),
            ("path", self.path.is_some() && self.kind != SinkKind::Delta),
        ];
        if let Some((field, _)) = unused.iter().find(|(_, set)| *set) {
            return Err((
                field,
                format!("a {} sink does not use `{field}`", self.kind.name()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(extra: &str) -> Result<SinkConfig, String> {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(&format!("name='s'\nview='v'\n{extra}")))
            .extract::<SinkConfig>()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn each_kind_names_the_field_it_misses() {
        let s = sink("kind='webhook'").unwrap();
        assert_eq!(s.validate().unwrap_err().0, "url");
        let s = sink("kind='webhook'\nurl='ftp://x'").unwrap();
        assert!(s.validate().unwrap_err().1.contains("ftp://x"));
        let s = sink("kind='webhook'\nurl='http://x/hook'").unwrap();
        assert_eq!(s.validate().unwrap_err().0, "secret");
        let s = sink("kind='webhook'\nurl='http://x/hook'\nsecret='short'").unwrap();
        assert_eq!(s.validate().unwrap_err().0, "secret");
        let s = sink("kind='webhook'\nurl='http://x/hook'\nsecret='0123456789abcdef'").unwrap();
        assert_eq!(s.validate(), Ok(()));
        let s = sink("kind='kafka'\ntopic='a b'").unwrap();
        assert_eq!(s.validate().unwrap_err().0, "topic");
        let s = sink("kind='kafka'\ntopic='alerts'\npath='x'").unwrap();
        assert_eq!(s.validate().unwrap_err().0, "path");
        let s = sink("kind='delta'").unwrap();
        assert_eq!(s.validate().unwrap_err().0, "path");
        let s = sink("kind='delta'\npath='out'\nevery-ms=0").unwrap();
        assert_eq!(s.validate().unwrap_err().0, "every-ms");
    }

    #[test]
    fn unknown_kinds_modes_and_keys_are_refused() {
        assert!(sink("kind='email'").unwrap_err().contains("email"));
        assert!(
            sink("kind='delta'\npath='x'\nmode='sometimes'")
                .unwrap_err()
                .contains("sometimes")
        );
        assert!(
            sink("kind='delta'\npath='x'\ntopik='t'")
                .unwrap_err()
                .contains("topik")
        );
    }
}
