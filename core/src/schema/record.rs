//! What ingest needs of a valid record: its event time and its key, read straight from
//! the bytes that arrived when the fast path can (no `serde_json::Value` tree), so a
//! record is parsed once on its way into the log and its bytes are stored as they came.

use std::cell::RefCell;

use serde_json::Value;

use super::fast_json::{self, Scratch, Slot};
use super::{FieldError, Scalar, StreamSchema, fnv1a};

/// A record that passed its stream's validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRecord {
    /// Its event time, in microseconds.
    pub event_ts: i64,
    /// Its key (see [`StreamSchema::partition_of`]), if the stream has a key field and
    /// the record a non-null value there.
    pub key: Option<Vec<u8>>,
}

thread_local! {
    // Reused by every record validated on this thread, so the fast path does not
    // allocate per record.
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

impl StreamSchema {
    /// Validate one record as its JSON text: the fast path reads the typed values
    /// without building a tree; whenever it declines, the full validator decides and
    /// words the error (the same result either way, see `fast_json`).
    pub fn validate_bytes(&self, payload: &[u8]) -> Result<ValidRecord, FieldError> {
        match std::str::from_utf8(payload) {
            Ok(text) => self.validate_str(text),
            // serde_json's slice reader says where the invalid byte is.
            Err(_) => {
                let value: Value = serde_json::from_slice(payload)
                    .map_err(|e| FieldError::new("", format!("malformed JSON: {e}")))?;
                self.validate_record(&value)
            }
        }
    }

    /// [`StreamSchema::validate_bytes`] for text whose UTF-8 was checked already (the
    /// request body as a whole), so it is not checked again per record.
    pub fn validate_str(&self, text: &str) -> Result<ValidRecord, FieldError> {
        let fast = SCRATCH.with_borrow_mut(|scratch| {
            fast_json::parse_str_into(self, text, scratch).then(|| self.valid_scratch(scratch))
        });
        if let Some(valid) = fast {
            return Ok(valid);
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| FieldError::new("", format!("malformed JSON: {e}")))?;
        self.validate_record(&value)
    }

    /// Validate one parsed record: [`StreamSchema::validate_bytes`] for a value.
    pub fn validate_record(&self, value: &Value) -> Result<ValidRecord, FieldError> {
        self.parse(value).map(|scalars| self.valid_record(&scalars))
    }

    /// The partition a record goes to: by key (FNV-1a) when it has one, else in turn.
    pub fn partition_of(&self, key: Option<&[u8]>, round_robin: u64) -> u32 {
        let n = self.partitions as u64;
        match key {
            Some(k) => (fnv1a(k) % n) as u32,
            None => (round_robin % n) as u32,
        }
    }

    fn valid_scratch(&self, scratch: &Scratch) -> ValidRecord {
        let event_ts = self
            .fields
            .iter()
            .zip(&scratch.slots)
            .find_map(|(f, v)| match v {
                Slot::Ts(us) if f.name == self.event_time => Some(*us),
                _ => None,
            });
        let key = self.key.as_deref().and_then(|k| {
            let i = self.fields.iter().position(|f| f.name == k)?;
            key_bytes(&scratch.scalar(i))
        });
        ValidRecord {
            event_ts: event_ts.expect("the event time is a required timestamp"),
            key,
        }
    }

    fn valid_record(&self, scalars: &[Scalar]) -> ValidRecord {
        let mut event_ts = None;
        let mut key = None;
        for (f, v) in self.fields.iter().zip(scalars) {
            if f.name == self.event_time
                && let Scalar::Ts(us) = v
            {
                event_ts = Some(*us);
            }
            if self.key.as_deref() == Some(f.name.as_str()) {
                key = key_bytes(v);
            }
        }
        ValidRecord {
            event_ts: event_ts.expect("the event time is a required timestamp"),
            key,
        }
    }
}

/// A key value as the bytes that pick its partition: text as is, other values in one
/// canonical form of their typed value, so `1` and `1.0` of a float key, or the same
/// instant written as RFC 3339 and as epoch milliseconds, are one key (a resend lands in
/// the partition of the original however it is spelled, which dedup relies on).
fn key_bytes(v: &Scalar) -> Option<Vec<u8>> {
    Some(match v {
        Scalar::Null => return None,
        Scalar::Str(s) => s.as_bytes().to_vec(),
        Scalar::Int(i) => i.to_string().into_bytes(),
        Scalar::Float(f) => f.to_string().into_bytes(),
        Scalar::Bool(b) => b.to_string().into_bytes(),
        // Microseconds since the epoch.
        Scalar::Ts(us) => us.to_string().into_bytes(),
    })
}

#[cfg(test)]
mod tests {

    use crate::config::{FieldConfig, StreamConfig};
    use crate::schema::StreamSchema;

    fn schema(key_type: &str) -> StreamSchema {
        let f = |n: &str, t: &str, nullable: bool| FieldConfig {
            name: n.into(),
            field_type: t.into(),
            nullable,
        };
        StreamSchema::from_config(
            &StreamConfig {
                name: "s".into(),
                fields: vec![
                    f("k", key_type, true),
                    f("v", "float64", true),
                    f("ts", "timestamp", false),
                ],
                event_time: "ts".into(),
                from_view: None,
                key: Some("k".into()),
                partitions: 8,
                id_field: None,
                dedup_horizon_ms: 0,
                max_string_bytes: 16 * 1024,
                max_event_lead_ms: 300_000,
            },
            "streams[0]",
        )
        .unwrap()
    }

    /// The bytes path and the value path agree on every record, on what the fast path
    /// takes and on what it leaves to the validator.
    #[test]
    fn bytes_and_values_validate_alike() {
        let s = schema("string");
        for text in [
            r#"{"k":"pump-7","v":1.5,"ts":1700000000000}"#,
            r#"{"k":"pump-7","v":2,"ts":"2023-11-14T22:13:20Z"}"#,
            r#"{"k":null,"ts":1700000000000}"#,
            r#"{"ts":1700000000000,"k":"a","k":"b"}"#,
            r#"{"k":"x","v":"loud","ts":1700000000000}"#,
            r#"{"k":"x","extra":1,"ts":1700000000000}"#,
            r#"{"k":"x"}"#,
            r#"[1,2]"#,
        ] {
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                s.validate_bytes(text.as_bytes()),
                s.validate_record(&value),
                "{text}"
            );
            assert_eq!(s.validate_str(text), s.validate_record(&value), "{text}");
        }
        let e = s.validate_bytes(b"{\"k\":").unwrap_err();
        assert!(e.reason.starts_with("malformed JSON"), "{e:?}");
        assert_eq!(s.validate_str("{\"k\":"), Err(e));
        let ok = s
            .validate_bytes(br#"{"k":"pump-7","ts":1700000000000}"#)
            .unwrap();
        assert_eq!(ok.event_ts, 1_700_000_000_000_000);
        assert_eq!(ok.key.as_deref(), Some(b"pump-7".as_slice()));
    }

    #[test]
    fn a_key_is_its_typed_value_however_it_is_spelled() {
        let key = |s: &StreamSchema, text: &str| s.validate_bytes(text.as_bytes()).unwrap().key;
        let floats = schema("float64");
        assert_eq!(
            key(&floats, r#"{"k":1,"ts":0}"#),
            key(&floats, r#"{"k":1.0,"ts":0}"#)
        );
        let times = schema("timestamp");
        assert_eq!(
            key(&times, r#"{"k":1700000000000,"ts":0}"#),
            key(&times, r#"{"k":"2023-11-14T22:13:20Z","ts":0}"#)
        );
        assert_eq!(key(&times, r#"{"k":null,"ts":0}"#), None);
        let s = schema("string");
        let p = s.partition_of(Some(b"pump-7"), 0);
        assert_eq!(p, s.partition_of(Some(b"pump-7"), 99));
        assert!(p < 8);
        assert_eq!(s.partition_of(None, 13), 5);
    }
}
