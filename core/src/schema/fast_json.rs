//! A fast path for decoding a record that is valid: serde visits the JSON object and
//! turns each field straight into its typed value, without building a `serde_json::Value`
//! tree (a map, a string and a number per field, per record).
//!
//! It only ever says "valid, and these are the values" or "don't know": whenever it
//! declines, the caller runs the full validator, which either finds the record valid
//! after all or gives the precise error. So every record it accepts must decode to the
//! same values the validator would give; the unit tests hold it to that.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::{FieldType, Scalar, StreamSchema, timestamp_in_range};

/// One field's value as the fast path read it. Strings are ranges of [`Scratch::text`],
/// so a record costs no allocation once the scratch has grown to its size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Slot {
    /// The record did not name the field.
    Missing,
    /// JSON `null`.
    Null,
    /// A string: `start..end` of the scratch's text.
    Str(u32, u32),
    /// An int64 field.
    Int(i64),
    /// A float64 field.
    Float(f64),
    /// A bool field.
    Bool(bool),
    /// A timestamp field, in microseconds.
    Ts(i64),
}

/// What the fast path reads a record into, kept by its caller from one record to the
/// next: a slot per field and the text of the record's strings.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// One per field of the schema, in field order.
    pub(crate) slots: Vec<Slot>,
    /// The string values, one after the other.
    pub(crate) text: String,
}

impl Scratch {
    /// The string a [`Slot::Str`] names.
    pub(crate) fn str(&self, start: u32, end: u32) -> &str {
        &self.text[start as usize..end as usize]
    }

    /// Hold the validator's values instead (a record the fast path declined).
    pub(crate) fn set(&mut self, scalars: Vec<Scalar>) {
        self.slots.clear();
        self.text.clear();
        for v in scalars {
            let slot = match v {
                Scalar::Null => Slot::Null,
                Scalar::Str(s) => {
                    // Strings are bounded by `max_string_bytes` (validated), far below 4 GiB.
                    let start = self.text.len() as u32;
                    self.text.push_str(&s);
                    Slot::Str(start, self.text.len() as u32)
                }
                Scalar::Int(v) => Slot::Int(v),
                Scalar::Float(v) => Slot::Float(v),
                Scalar::Bool(v) => Slot::Bool(v),
                Scalar::Ts(v) => Slot::Ts(v),
            };
            self.slots.push(slot);
        }
    }

    /// Slot `i` as the validator's [`Scalar`].
    pub(crate) fn scalar(&self, i: usize) -> Scalar {
        match self.slots[i] {
            Slot::Missing | Slot::Null => Scalar::Null,
            Slot::Str(a, b) => Scalar::Str(self.str(a, b).to_string()),
            Slot::Int(v) => Scalar::Int(v),
            Slot::Float(v) => Scalar::Float(v),
            Slot::Bool(v) => Scalar::Bool(v),
            Slot::Ts(v) => Scalar::Ts(v),
        }
    }
}

/// Read a valid record into `scratch` and say so, or return false to let the validator
/// decide. After `true`, every slot holds a value or `Null` (of a nullable field).
pub(crate) fn parse_into(schema: &StreamSchema, payload: &[u8], scratch: &mut Scratch) -> bool {
    // One UTF-8 check of the whole record, then serde_json's `str` reader, which need
    // not check each string again: a quarter less time per record than its slice reader
    // (measured on the benchmarks' IoT readings). Invalid UTF-8 is declined, so the
    // validator words the error.
    std::str::from_utf8(payload).is_ok_and(|text| parse_str_into(schema, text, scratch))
}

/// [`parse_into`] for text already known to be UTF-8 (an element of a request body
/// checked once as a whole).
pub(crate) fn parse_str_into(schema: &StreamSchema, text: &str, scratch: &mut Scratch) -> bool {
    scratch.slots.clear();
    scratch.slots.resize(schema.fields.len(), Slot::Missing);
    scratch.text.clear();
    let mut de = serde_json::Deserializer::from_str(text);
    let read = RecordSeed { schema, scratch }.deserialize(&mut de);
    if read.is_err() || de.end().is_err() {
        return false;
    }
    for (f, slot) in schema.fields.iter().zip(scratch.slots.iter_mut()) {
        if matches!(slot, Slot::Missing | Slot::Null) {
            if !f.nullable {
                return false;
            }
            *slot = Slot::Null;
        }
    }
    true
}

/// The record's values in field order, or `None` to let the validator decide.
#[cfg(test)]
pub(crate) fn parse(schema: &StreamSchema, payload: &[u8]) -> Option<Vec<Scalar>> {
    let mut scratch = Scratch::default();
    parse_into(schema, payload, &mut scratch).then(|| {
        (0..schema.fields.len())
            .map(|i| scratch.scalar(i))
            .collect()
    })
}

struct RecordSeed<'s> {
    schema: &'s StreamSchema,
    scratch: &'s mut Scratch,
}

/// A decline, carried through serde as an error.
#[derive(Debug)]
struct Decline;

impl fmt::Display for Decline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("left to the validator")
    }
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed(self.schema))? {
            let Some(i) = key else {
                // Unknown fields are an error the validator words.
                let _ = map.next_value::<IgnoredAny>()?;
                return Err(serde::de::Error::custom(Decline));
            };
            // Like a JSON object read into a map, the last of repeated keys wins.
            let value = map.next_value_seed(FieldSeed {
                field_type: self.schema.fields[i].field_type,
                max_string_bytes: self.schema.max_string_bytes,
                text: &mut self.scratch.text,
            })?;
            self.scratch.slots[i] = value;
        }
        Ok(())
    }
}

/// A key as the index of its field (`None`: not a field of the schema), read without
/// copying it: serde's `Cow<str>` would allocate a `String` per key.
struct KeySeed<'s>(&'s StreamSchema);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.fields.iter().position(|f| f.name == v))
    }
}

struct FieldSeed<'t> {
    field_type: FieldType,
    /// Longer strings are declined, so the validator words the refusal.
    max_string_bytes: usize,
    /// Where a string value goes.
    text: &'t mut String,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Slot;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

fn decline<E: serde::de::Error>() -> E {
    E::custom(Decline)
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Slot;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field value")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Slot, E> {
        Ok(Slot::Null)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Slot, E> {
        match self.field_type {
            FieldType::Bool => Ok(Slot::Bool(v)),
            _ => Err(decline()),
        }
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Slot, E> {
        match self.field_type {
            FieldType::Int64 => Ok(Slot::Int(v)),
            FieldType::Float64 => Ok(Slot::Float(v as f64)),
            FieldType::Timestamp => v
                .checked_mul(1000)
                .filter(|us| timestamp_in_range(*us))
                .map(Slot::Ts)
                .ok_or_else(decline),
            _ => Err(decline()),
        }
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Slot, E> {
        match (self.field_type, i64::try_from(v)) {
            (FieldType::Float64, _) => Ok(Slot::Float(v as f64)),
            (_, Ok(v)) => self.visit_i64(v),
            (_, Err(_)) => Err(decline()),
        }
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Slot, E> {
        match self.field_type {
            FieldType::Float64 => Ok(Slot::Float(v)),
            _ => Err(decline()),
        }
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Slot, E> {
        match self.field_type {
            // A scratch longer than u32 would need a record of 4 GiB; decline it anyway.
            FieldType::String if v.len() <= self.max_string_bytes => {
                let start = u32::try_from(self.text.len()).map_err(|_| decline())?;
                self.text.push_str(v);
                let end = u32::try_from(self.text.len()).map_err(|_| decline())?;
                Ok(Slot::Str(start, end))
            }
            FieldType::Timestamp => DateTime::parse_from_rfc3339(v)
                .ok()
                .map(|t| t.with_timezone(&Utc).timestamp_micros())
                .filter(|us| timestamp_in_range(*us))
                .map(Slot::Ts)
                .ok_or_else(decline),
            _ => Err(decline()),
        }
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Slot, A::Error> {
        Err(decline())
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Slot, A::Error> {
        Err(decline())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FieldConfig, StreamConfig};
    use crate::schema::{BatchDecoder, LogPosition};

    fn schema() -> StreamSchema {
        let f = |n: &str, t: &str, nullable: bool| FieldConfig {
            name: n.into(),
            field_type: t.into(),
            nullable,
        };
        StreamSchema::from_config(
            &StreamConfig {
                name: "s".into(),
                fields: vec![
                    f("s", "string", false),
                    f("i", "int64", false),
                    f("x", "float64", false),
                    f("b", "bool", true),
                    f("ts", "timestamp", false),
                ],
                event_time: "ts".into(),
                from_view: None,
                key: None,
                partitions: 1,
                id_field: None,
                dedup_horizon_ms: 0,
                max_string_bytes: 16 * 1024,
                max_event_lead_ms: 300_000,
            },
            "streams[0]",
        )
        .unwrap()
    }

    /// What the full validator makes of `bytes`: the record's values, or `None`.
    fn validator(s: &StreamSchema, bytes: &[u8]) -> Option<Vec<Scalar>> {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| s.parse(&v).ok())
    }

    #[test]
    fn accepts_exactly_what_the_validator_accepts_with_the_same_values() {
        let s = schema();
        let records = [
            r#"{"s":"a","i":1,"x":2.5,"b":true,"ts":"2026-01-01T00:00:00Z"}"#,
            r#"{"s":"a\u00e9\"","i":-7,"x":3,"ts":1767225600000}"#,
            r#"{"ts":"2026-01-01T01:00:00+01:00","x":1e3,"i":9223372036854775807,"s":"","b":null}"#,
            r#"{"s":"a","i":1,"x":18446744073709551615,"ts":"2026-01-01T00:00:00.123456Z"}"#,
            r#"{"s":"a","s":"b","i":1,"x":1.0,"ts":0}"#,
            r#"{"s":"a","i":1.0,"x":1,"ts":0}"#,
            r#"{"s":"a","i":9223372036854775808,"x":1,"ts":0}"#,
            r#"{"s":"a","i":1,"x":"1","ts":0}"#,
            r#"{"s":"a","i":1,"x":1,"ts":"2026-01-01"}"#,
            r#"{"s":"a","i":1,"x":1,"ts":1e3}"#,
            r#"{"s":"a","i":1,"x":1,"ts":9223372036854775807}"#,
            r#"{"s":"a","i":1,"x":1}"#,
            r#"{"s":null,"i":1,"x":1,"ts":0}"#,
            r#"{"s":"a","i":1,"x":1,"ts":0,"extra":1}"#,
            r#"{"s":["a"],"i":1,"x":1,"ts":0}"#,
            r#"{"s":"a","i":1,"x":1,"ts":0,"b":1}"#,
            r#"[1]"#,
            r#"{"s":"a","i":1,"x":1,"ts":0} trailing"#,
            r#"not json"#,
        ];
        let at = LogPosition {
            partition: 0,
            offset: 0,
            ingest_ts: 0,
        };
        for r in records {
            let fast = parse(&s, r.as_bytes());
            let slow = validator(&s, r.as_bytes());
            match (&fast, &slow) {
                (Some(f), Some(v)) => assert_eq!(f, v, "{r}"),
                (Some(_), None) => panic!("fast path accepted what the validator refuses: {r}"),
                // Declining is always allowed; the validator decides.
                (None, _) => {}
            }
            let mut d = BatchDecoder::new(&s, false);
            assert_eq!(
                d.push_bytes(r.as_bytes(), at).is_ok(),
                slow.is_some(),
                "{r}"
            );
        }
        // Invalid UTF-8 inside a string is declined, and the decoder refuses it.
        let bad = b"{\"s\":\"a\xff\",\"i\":1,\"x\":1,\"ts\":0}";
        assert_eq!(parse(&s, bad), None);
        assert!(serde_json::from_slice::<serde_json::Value>(bad).is_err());
        assert!(BatchDecoder::new(&s, false).push_bytes(bad, at).is_err());
        // The common shapes take the fast path.
        assert!(parse(&s, records[0].as_bytes()).is_some());
        assert!(parse(&s, records[1].as_bytes()).is_some());
    }

    use proptest::prelude::*;

    /// A JSON value for one field: mostly of the right shape, often not, with the
    /// edges that matter (out-of-range times, huge and fractional numbers, long
    /// strings, nulls, nesting).
    fn field_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|i| i.to_string()),
            any::<u64>().prop_map(|i| i.to_string()),
            any::<f64>()
                .prop_filter("JSON has no NaN or infinity", |x| x.is_finite())
                .prop_map(|x| format!("{x:?}")),
            (-20_000_000_000_000i64..20_000_000_000_000i64).prop_map(|ms| ms.to_string()),
            (0u32..10_000, 1u32..13, 1u32..29)
                .prop_map(|(y, m, d)| format!("\"{y:04}-{m:02}-{d:02}T00:00:00Z\"")),
            "[a-z\\\\\"é]{0,20}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            (0usize..40_000).prop_map(|n| format!("\"{}\"", "x".repeat(n))),
            Just("[1,2]".to_string()),
            Just("{\"a\":1}".to_string()),
        ]
    }

    fn record() -> impl Strategy<Value = String> {
        let names = prop_oneof![
            Just("s"),
            Just("i"),
            Just("x"),
            Just("b"),
            Just("ts"),
            Just("zz")
        ];
        prop::collection::vec((names, field_value()), 0..8).prop_map(|fields| {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", body.join(","))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever the bytes, the fast path never accepts what the validator refuses,
        /// agrees with it on the values, and the decoder accepts exactly what the
        /// validator accepts; accepted timestamps are in the range every layer holds.
        #[test]
        fn fast_path_and_validator_agree_on_any_record(r in record()) {
            let s = schema();
            let fast = parse(&s, r.as_bytes());
            let slow = validator(&s, r.as_bytes());
            if let Some(f) = &fast {
                prop_assert_eq!(Some(f), slow.as_ref(), "{}", r);
            }
            if let Some(values) = &slow {
                for v in values {
                    if let Scalar::Ts(us) = v {
                        prop_assert!(crate::schema::timestamp_in_range(*us), "{}", r);
                    }
                    if let Scalar::Str(text) = v {
                        prop_assert!(text.len() <= s.max_string_bytes, "{}", r);
                    }
                }
            }
            let at = LogPosition { partition: 0, offset: 0, ingest_ts: 0 };
            let mut d = BatchDecoder::new(&s, true);
            prop_assert_eq!(d.push_bytes(r.as_bytes(), at).is_ok(), slow.is_some(), "{}", r);
            // The columns the fast path fills (from its scratch, between two other
            // records so a stale slot would show) hold what the validator's values give.
            if slow.is_some() {
                let value: serde_json::Value = serde_json::from_str(&r).unwrap();
                let other = r#"{"s":"zz","i":3,"x":0.5,"b":false,"ts":5}"#;
                let mut fast = BatchDecoder::new(&s, true);
                let mut reference = BatchDecoder::new(&s, true);
                for d in [&mut fast, &mut reference] {
                    d.push_bytes(other.as_bytes(), at).unwrap();
                }
                fast.push_bytes(r.as_bytes(), at).unwrap();
                reference.push(&value, at).unwrap();
                for d in [&mut fast, &mut reference] {
                    d.push_bytes(other.as_bytes(), at).unwrap();
                }
                prop_assert_eq!(fast.flush().unwrap(), reference.flush().unwrap(), "{}", r);
            }
        }

        /// A record with one byte replaced by a non-ASCII one (mostly invalid UTF-8, inside
        /// a string or not): the fast path agrees with the validator or declines.
        #[test]
        fn a_record_with_a_non_ascii_byte(r in record(), at in any::<prop::sample::Index>(), b in 0x80u8..=0xff) {
            let s = schema();
            let mut bytes = r.into_bytes();
            let i = at.index(bytes.len());
            bytes[i] = b;
            if let Some(fast) = parse(&s, &bytes) {
                let slow = validator(&s, &bytes);
                prop_assert_eq!(Some(fast), slow);
            }
            let pos = LogPosition { partition: 0, offset: 0, ingest_ts: 0 };
            let valid = validator(&s, &bytes).is_some();
            prop_assert_eq!(BatchDecoder::new(&s, true).push_bytes(&bytes, pos).is_ok(), valid);
        }

        /// Arbitrary bytes (invalid UTF-8 among them) never panic either path, and the
        /// fast path accepts nothing the validator refuses.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let s = schema();
            if let Some(fast) = parse(&s, &bytes) {
                let slow = validator(&s, &bytes);
                prop_assert_eq!(Some(fast), slow);
            }
            let at = LogPosition { partition: 0, offset: 0, ingest_ts: 0 };
            let _ = BatchDecoder::new(&s, true).push_bytes(&bytes, at);
        }
    }
}
