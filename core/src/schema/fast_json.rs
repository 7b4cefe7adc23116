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

/// The record's values in field order, or `None` to let the validator decide.
pub(crate) fn parse(schema: &StreamSchema, payload: &[u8]) -> Option<Vec<Scalar>> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let slots = RecordSeed { schema }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    let mut out = Vec::with_capacity(slots.len());
    for (f, slot) in schema.fields.iter().zip(slots) {
        match slot {
            Some(Scalar::Null) | None if f.nullable => out.push(Scalar::Null),
            Some(Scalar::Null) | None => return None,
            Some(v) => out.push(v),
        }
    }
    Some(out)
}

struct RecordSeed<'s> {
    schema: &'s StreamSchema,
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
    type Value = Vec<Option<Scalar>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = Vec<Option<Scalar>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut slots: Vec<Option<Scalar>> = vec![None; self.schema.fields.len()];
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let Some(i) = self.schema.fields.iter().position(|f| f.name == *key) else {
                // Unknown fields are an error the validator words.
                let _ = map.next_value::<IgnoredAny>()?;
                return Err(serde::de::Error::custom(Decline));
            };
            // Like a JSON object read into a map, the last of repeated keys wins.
            slots[i] = Some(map.next_value_seed(FieldSeed {
                field_type: self.schema.fields[i].field_type,
                max_string_bytes: self.schema.max_string_bytes,
            })?);
        }
        Ok(slots)
    }
}

struct FieldSeed {
    field_type: FieldType,
    /// Longer strings are declined, so the validator words the refusal.
    max_string_bytes: usize,
}

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Scalar;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

fn decline<E: serde::de::Error>() -> E {
    E::custom(Decline)
}

impl<'de> Visitor<'de> for FieldSeed {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field value")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
        match self.field_type {
            FieldType::Bool => Ok(Scalar::Bool(v)),
            _ => Err(decline()),
        }
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
        match self.field_type {
            FieldType::Int64 => Ok(Scalar::Int(v)),
            FieldType::Float64 => Ok(Scalar::Float(v as f64)),
            FieldType::Timestamp => v
                .checked_mul(1000)
                .filter(|us| timestamp_in_range(*us))
                .map(Scalar::Ts)
                .ok_or_else(decline),
            _ => Err(decline()),
        }
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
        match (self.field_type, i64::try_from(v)) {
            (FieldType::Float64, _) => Ok(Scalar::Float(v as f64)),
            (_, Ok(v)) => self.visit_i64(v),
            (_, Err(_)) => Err(decline()),
        }
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
        match self.field_type {
            FieldType::Float64 => Ok(Scalar::Float(v)),
            _ => Err(decline()),
        }
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
        match self.field_type {
            FieldType::String if v.len() <= self.max_string_bytes => Ok(Scalar::Str(v.to_string())),
            FieldType::Timestamp => DateTime::parse_from_rfc3339(v)
                .ok()
                .map(|t| t.with_timezone(&Utc).timestamp_micros())
                .filter(|us| timestamp_in_range(*us))
                .map(Scalar::Ts)
                .ok_or_else(decline),
            _ => Err(decline()),
        }
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Scalar, A::Error> {
        Err(decline())
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Scalar, A::Error> {
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
            let slow = serde_json::from_str::<serde_json::Value>(r)
                .ok()
                .and_then(|v| s.parse(&v).ok());
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
            let slow = serde_json::from_str::<serde_json::Value>(&r).ok().and_then(|v| s.parse(&v).ok());
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
        }

        /// Arbitrary bytes never panic either path.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let s = schema();
            let _ = parse(&s, &bytes);
            let at = LogPosition { partition: 0, offset: 0, ingest_ts: 0 };
            let _ = BatchDecoder::new(&s, true).push_bytes(&bytes, at);
        }
    }
}
