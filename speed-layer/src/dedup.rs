//! The speed layer's half of a stream's dedup rule ([`DedupSpec`]): the newest ingest
//! time of every id seen in each partition within the horizon.

use std::collections::HashMap;

use serde_json::Value;
use tributary_core::schema::DedupSpec;

/// Forget ids this many records after the last sweep at the earliest.
const SWEEP_EVERY: usize = 100_000;

/// The speed layer's side of a stream's dedup rule: the last ingest time of each recent id per partition.
#[derive(Debug)]
pub struct Deduplicator {
    spec: DedupSpec,
    last_seen: HashMap<(u32, String), i64>,
    /// The newest ingest time seen per partition: an id older than its partition's
    /// newest minus the horizon can never be a repeat's predecessor again (ingest time
    /// never decreases within a partition), however far other partitions have run.
    newest: HashMap<u32, i64>,
    since_sweep: usize,
    /// Sweep forgotten ids once this many records passed and as many ids are held.
    sweep_every: usize,
}

impl Deduplicator {
    /// A deduplicator for `spec`, holding no ids yet.
    pub fn new(spec: DedupSpec) -> Self {
        Deduplicator {
            spec,
            last_seen: HashMap::new(),
            newest: HashMap::new(),
            since_sweep: 0,
            sweep_every: SWEEP_EVERY,
        }
    }

    /// Sweep more often than the default (less memory, more time); the answers are the
    /// same, which the dedup property test checks with a small value.
    pub fn sweeping_every(mut self, records: usize) -> Self {
        self.sweep_every = records.max(1);
        self
    }

    /// Whether a valid record counts; records must come in log order per partition.
    pub fn keep(&mut self, partition: u32, ingest_ts: i64, record: &Value) -> bool {
        let id = match record.get(&self.spec.field) {
            None | Some(Value::Null) => return true,
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        let newest = self.newest.entry(partition).or_insert(i64::MIN);
        *newest = (*newest).max(ingest_ts);
        self.since_sweep += 1;
        if self.since_sweep >= self.sweep_every && self.last_seen.len() >= self.sweep_every {
            let (newest, horizon) = (&self.newest, self.spec.horizon_us);
            self.last_seen
                .retain(|(p, _), t| *t >= newest[p].saturating_sub(horizon));
            self.since_sweep = 0;
        }
        let previous = self.last_seen.insert((partition, id), ingest_ts);
        previous.is_none_or(|t| t < ingest_ts.saturating_sub(self.spec.horizon_us))
    }

    /// Ids remembered (for the state-size report).
    pub fn len(&self) -> usize {
        self.last_seen.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.last_seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn repeats_within_the_horizon_of_the_previous_one_count_once() {
        let mut d = Deduplicator::new(DedupSpec {
            field: "id".into(),
            horizon_us: 1_000,
        });
        let e = |id: Value| json!({ "id": id });
        assert!(d.keep(0, 0, &e(json!("a"))));
        assert!(!d.keep(0, 500, &e(json!("a"))));
        // Sliding: within the horizon of the previous copy, though not of the first.
        assert!(!d.keep(0, 1_400, &e(json!("a"))));
        assert!(d.keep(0, 2_401, &e(json!("a"))));
        // Other partitions and null ids are never duplicates.
        assert!(d.keep(1, 2_402, &e(json!("a"))));
        assert!(d.keep(0, 2_403, &e(Value::Null)));
        assert!(d.keep(0, 2_404, &e(Value::Null)));
        assert!(d.keep(0, 2_405, &e(json!(7))));
        assert!(!d.keep(0, 2_406, &e(json!(7))));
    }
}
