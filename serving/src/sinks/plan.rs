//! What a sink emits next: the view's merged rows compared with what it delivered.
//!
//! A row is known by its *identity* (its window and keys) and its *fingerprint* (its
//! values). The sink keeps, per identity, the version and fingerprint it delivered
//! last; a row whose fingerprint differs gets the next version. Every emitted row
//! carries `_key` = view, identity and version, so a consumer that sees a key twice
//! drops the second (repeats only happen with the same key: a delivery is planned
//! once, recorded before it is sent, and re-sent as it was until acknowledged).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tributary_core::config::OutputMode;

/// One row as emitted (or as the merged answer gives it).
pub type Row = Map<String, Value>;
/// An identity and what is delivered for it once a delivery is acknowledged.
pub type Mark = (String, Emitted);

/// What the sink delivered last for one identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emitted {
    /// The version delivered (1 for the first).
    pub version: u64,
    /// FNV-1a of the values delivered (see [`fingerprint`]).
    pub fingerprint: u64,
    /// Whether the window was complete when delivered: a later change is a correction.
    pub complete: bool,
    /// Whether the last delivery said the row is gone.
    pub retracted: bool,
}

/// One planned delivery: rows to send and what to record once they are acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The sink's delivery number (1, 2, …): a Delta sink's `txn` version, the webhook's
    /// `x-tributary-delivery`.
    pub seq: u64,
    /// The rows, as emitted.
    pub rows: Vec<Map<String, Value>>,
    /// Per identity, what is delivered once acknowledged.
    pub marks: Vec<(String, Emitted)>,
}

/// A sink's progress: everything it has had acknowledged, and the delivery in flight.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The last acknowledged delivery's number.
    pub delivered: u64,
    /// Per identity, the last acknowledged emission.
    pub rows: BTreeMap<String, Emitted>,
    /// Planned and recorded, not yet acknowledged: sent again, as it is, first.
    pub pending: Vec<Delivery>,
}

/// How the view's columns split into identity and values.
pub struct Shape<'a> {
    /// The view's name (first part of `_key`).
    pub view: &'a str,
    /// The window column.
    pub window: &'a str,
    /// Key columns.
    pub keys: &'a [String],
    /// Value columns.
    pub values: &'a [String],
}

impl Shape<'_> {
    /// The identity of `row`: its window and keys as a JSON array.
    pub fn identity(&self, row: &Map<String, Value>) -> String {
        let mut parts = vec![row.get(self.window).cloned().unwrap_or(Value::Null)];
        parts.extend(
            self.keys
                .iter()
                .map(|k| row.get(k).cloned().unwrap_or(Value::Null)),
        );
        Value::Array(parts).to_string()
    }

    /// The stable key of one emission.
    pub fn key(&self, identity: &str, version: u64) -> String {
        format!("{}:{identity}:{version}", self.view)
    }
}

/// FNV-1a over the values' canonical text: floats to 12 significant digits, so that
/// states added in another order (batch plus speed, or a recompute) do not count as a
/// change. Stable across builds, unlike std's hasher, because it is persisted.
pub fn fingerprint(row: &Map<String, Value>, values: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for v in values {
        let text = match row.get(v) {
            Some(Value::Number(n)) if n.is_f64() => {
                format!("{:.11e}", n.as_f64().unwrap_or(0.0))
            }
            Some(other) => other.to_string(),
            None => "null".into(),
        };
        eat(text.as_bytes());
        eat(&[0xff]);
    }
    h
}

/// Whether the watermark has completed the row's window (the merged answer's flag).
fn is_complete(row: &Map<String, Value>) -> bool {
    row.get("complete")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The rows to emit now, given the view's current merged rows (with `complete`), and
/// the marks to record once they are delivered. `now` is RFC 3339 text.
pub fn plan(
    mode: OutputMode,
    shape: &Shape<'_>,
    progress: &Progress,
    current: &[Map<String, Value>],
    now: &str,
) -> (Vec<Row>, Vec<Mark>) {
    let mut out = Vec::new();
    let mut marks = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for row in current {
        let identity = shape.identity(row);
        let fp = fingerprint(row, shape.values);
        let complete = is_complete(row);
        let before = progress.rows.get(&identity);
        seen.insert(identity.clone());
        let changed = before.is_none_or(|e| e.retracted || e.fingerprint != fp);
        let emit = match mode {
            OutputMode::Append => complete && changed,
            OutputMode::Update => changed,
            OutputMode::Complete => true,
        };
        if !emit {
            continue;
        }
        let version = match before {
            Some(e) if changed => e.version + 1,
            Some(e) => e.version,
            None => 1,
        };
        let correction = before.is_some_and(|e| e.complete && changed);
        let mut emitted = Map::new();
        for c in std::iter::once(shape.window)
            .chain(shape.keys.iter().map(String::as_str))
            .chain(shape.values.iter().map(String::as_str))
        {
            emitted.insert(c.into(), row.get(c).cloned().unwrap_or(Value::Null));
        }
        let flags = Flags {
            complete,
            correction,
            retracted: false,
        };
        meta(&mut emitted, shape, &identity, version, flags, now);
        out.push(emitted);
        let complete = complete || before.is_some_and(|e| e.complete);
        let e = Emitted {
            version,
            fingerprint: fp,
            complete,
            retracted: false,
        };
        marks.push((identity, e));
    }
    retractions(shape, progress, &seen, now, &mut out, &mut marks);
    (out, marks)
}

/// Rows delivered before that the view no longer has (a `HAVING` no longer met):
/// emitted once more with null values and `_retracted`, so consumers can drop them.
fn retractions(
    shape: &Shape<'_>,
    progress: &Progress,
    seen: &std::collections::HashSet<String>,
    now: &str,
    out: &mut Vec<Map<String, Value>>,
    marks: &mut Vec<(String, Emitted)>,
) {
    for (identity, e) in &progress.rows {
        if e.retracted || seen.contains(identity) {
            continue;
        }
        let mut row = Map::new();
        let parts: Vec<Value> = serde_json::from_str(identity).unwrap_or_default();
        let columns = std::iter::once(shape.window).chain(shape.keys.iter().map(String::as_str));
        for (c, v) in columns.zip(parts) {
            row.insert(c.into(), v);
        }
        for v in shape.values {
            row.insert(v.clone(), Value::Null);
        }
        let version = e.version + 1;
        let flags = Flags {
            complete: e.complete,
            correction: e.complete,
            retracted: true,
        };
        meta(&mut row, shape, identity, version, flags, now);
        out.push(row);
        let mark = Emitted {
            version,
            fingerprint: 0,
            complete: e.complete,
            retracted: true,
        };
        marks.push((identity.clone(), mark));
    }
}

/// What an emitted row says about itself besides its columns.
#[derive(Clone, Copy)]
struct Flags {
    complete: bool,
    correction: bool,
    retracted: bool,
}

fn meta(
    row: &mut Map<String, Value>,
    shape: &Shape<'_>,
    identity: &str,
    version: u64,
    flags: Flags,
    now: &str,
) {
    row.insert("_key".into(), Value::String(shape.key(identity, version)));
    row.insert("_view".into(), Value::String(shape.view.into()));
    row.insert("_version".into(), Value::from(version));
    row.insert("_complete".into(), Value::Bool(flags.complete));
    row.insert("_correction".into(), Value::Bool(flags.correction));
    row.insert("_retracted".into(), Value::Bool(flags.retracted));
    row.insert("_emitted_at".into(), Value::String(now.into()));
}

impl Progress {
    /// Record a delivery planned from `rows` and `marks`, numbered after the last one.
    pub fn push(&mut self, rows: Vec<Map<String, Value>>, marks: Vec<(String, Emitted)>) {
        let seq = self
            .pending
            .last()
            .map_or(self.delivered, |d| d.seq)
            .saturating_add(1);
        self.pending.push(Delivery { seq, rows, marks });
    }

    /// The first pending delivery was acknowledged: its marks become the delivered state.
    pub fn acknowledge(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let d = self.pending.remove(0);
        self.delivered = d.seq;
        self.rows.extend(d.marks);
    }

    /// The state the next plan compares with: delivered plus every pending mark.
    pub fn planned(&self) -> Progress {
        let mut p = Progress {
            delivered: self.delivered,
            rows: self.rows.clone(),
            pending: Vec::new(),
        };
        for d in &self.pending {
            p.rows.extend(d.marks.iter().cloned());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEYS: &[&str] = &["device"];

    fn shape<'a>(keys: &'a [String], values: &'a [String]) -> Shape<'a> {
        Shape {
            view: "v",
            window: "w",
            keys,
            values,
        }
    }

    fn row(w: &str, device: &str, n: i64, complete: bool) -> Map<String, Value> {
        json!({"w": w, "device": device, "n": n, "complete": complete, "_source": "speed"})
            .as_object()
            .unwrap()
            .clone()
    }

    fn run(
        mode: OutputMode,
        progress: &mut Progress,
        rows: &[Map<String, Value>],
    ) -> Vec<Map<String, Value>> {
        let keys: Vec<String> = KEYS.iter().map(|s| s.to_string()).collect();
        let values = vec!["n".to_string()];
        let (out, marks) = plan(mode, &shape(&keys, &values), progress, rows, "now");
        if !out.is_empty() {
            progress.push(out.clone(), marks);
            progress.acknowledge();
        }
        out
    }

    fn keys(rows: &[Map<String, Value>]) -> Vec<String> {
        rows.iter()
            .map(|r| r["_key"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn append_emits_a_window_once_complete_then_corrections() {
        let mut p = Progress::default();
        assert!(run(OutputMode::Append, &mut p, &[row("t0", "a", 1, false)]).is_empty());
        let out = run(OutputMode::Append, &mut p, &[row("t0", "a", 2, true)]);
        assert_eq!(keys(&out), vec![r#"v:["t0","a"]:1"#]);
        assert_eq!(out[0]["n"], json!(2));
        assert_eq!(out[0]["_correction"], json!(false));
        assert!(run(OutputMode::Append, &mut p, &[row("t0", "a", 2, true)]).is_empty());
        let out = run(OutputMode::Append, &mut p, &[row("t0", "a", 3, true)]);
        assert_eq!(keys(&out), vec![r#"v:["t0","a"]:2"#]);
        assert_eq!(out[0]["_correction"], json!(true));
    }

    #[test]
    fn update_emits_each_change_and_retracts_what_is_gone() {
        let mut p = Progress::default();
        let out = run(OutputMode::Update, &mut p, &[row("t0", "a", 1, false)]);
        assert_eq!(out[0]["_version"], json!(1));
        assert!(run(OutputMode::Update, &mut p, &[row("t0", "a", 1, false)]).is_empty());
        let out = run(
            OutputMode::Update,
            &mut p,
            &[row("t0", "a", 2, false), row("t0", "b", 1, false)],
        );
        assert_eq!(keys(&out), vec![r#"v:["t0","a"]:2"#, r#"v:["t0","b"]:1"#]);
        let out = run(OutputMode::Update, &mut p, &[row("t0", "b", 1, false)]);
        assert_eq!(keys(&out), vec![r#"v:["t0","a"]:3"#]);
        assert_eq!(out[0]["_retracted"], json!(true));
        assert_eq!(out[0]["n"], Value::Null);
        assert_eq!(out[0]["device"], json!("a"));
        assert!(run(OutputMode::Update, &mut p, &[row("t0", "b", 1, false)]).is_empty());
        // Back again: the next version, not a repeat of version 1.
        let out = run(
            OutputMode::Update,
            &mut p,
            &[row("t0", "a", 1, false), row("t0", "b", 1, false)],
        );
        assert_eq!(keys(&out), vec![r#"v:["t0","a"]:4"#]);
    }

    #[test]
    fn complete_emits_everything_unchanged_rows_with_their_key() {
        let mut p = Progress::default();
        let rows = [row("t0", "a", 1, true), row("t1", "a", 5, false)];
        let first = run(OutputMode::Complete, &mut p, &rows);
        let again = run(OutputMode::Complete, &mut p, &rows);
        assert_eq!(keys(&first), keys(&again));
        assert_eq!(first.len(), 2);
    }

    #[test]
    fn pending_deliveries_count_as_planned() {
        let keys_: Vec<String> = vec!["device".into()];
        let values = vec!["n".to_string()];
        let s = shape(&keys_, &values);
        let mut p = Progress::default();
        let (out, marks) = plan(OutputMode::Update, &s, &p, &[row("t0", "a", 1, false)], "x");
        p.push(out, marks);
        // Not acknowledged yet: planning again against the planned state emits nothing.
        let (out, _) = plan(
            OutputMode::Update,
            &s,
            &p.planned(),
            &[row("t0", "a", 1, false)],
            "x",
        );
        assert!(out.is_empty());
        assert_eq!(p.pending[0].seq, 1);
        p.acknowledge();
        assert_eq!(p.delivered, 1);
        assert!(p.pending.is_empty());
    }

    #[test]
    fn float_noise_is_not_a_change() {
        let values = vec!["x".to_string()];
        let a = json!({"x": 0.1 + 0.2}).as_object().unwrap().clone();
        let b = json!({"x": 0.3}).as_object().unwrap().clone();
        assert_eq!(fingerprint(&a, &values), fingerprint(&b, &values));
        let c = json!({"x": 0.31}).as_object().unwrap().clone();
        assert_ne!(fingerprint(&a, &values), fingerprint(&c, &values));
    }
}
