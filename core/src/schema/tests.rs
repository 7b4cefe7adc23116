use super::*;
use crate::config::{FieldConfig, StreamConfig};
use serde_json::json;

fn readings() -> StreamSchema {
    let field = |n: &str, t: &str| FieldConfig {
        name: n.into(),
        field_type: t.into(),
        nullable: false,
    };
    let cfg = StreamConfig {
        name: "readings".into(),
        fields: vec![
            field("device", "string"),
            field("signal", "float64"),
            field("count", "int64"),
            field("ok", "bool"),
            field("ts", "timestamp"),
        ],
        event_time: "ts".into(),
        from_view: None,
        key: Some("device".into()),
        partitions: 4,
        id_field: None,
        dedup_horizon_ms: 0,
        max_string_bytes: 16 * 1024,
        max_event_lead_ms: 300_000,
    };
    StreamSchema::from_config(&cfg, "streams[0]").unwrap()
}

#[test]
fn valid_record_decodes_to_arrow() {
    let s = readings();
    let mut d = BatchDecoder::new(&s, true);
    let rec = json!({"device":"a","signal":1,"count":3,"ok":true,"ts":"2026-01-01T00:00:00Z"});
    d.push(
        &rec,
        LogPosition {
            partition: 1,
            offset: 7,
            ingest_ts: 42,
        },
    )
    .unwrap();
    let b = d.flush().unwrap();
    assert_eq!(b.num_rows(), 1);
    // Five fields, _ingest_ts, _partition, _offset, _event_date.
    assert_eq!(b.num_columns(), 9);
    assert_eq!(b.schema().field(4).data_type(), &timestamp_type());
    let day = b
        .column_by_name(EVENT_DATE)
        .unwrap()
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Date32Array>()
        .unwrap()
        .value(0);
    assert_eq!(day, 20_454, "2026-01-01 is day 20,454 of the epoch");
}

#[test]
fn errors_name_field_and_expectation() {
    let s = readings();
    let base = json!({"device":"a","signal":1.5,"count":3,"ok":true,"ts":"2026-01-01T00:00:00Z"});
    let with = |k: &str, v: Value| {
        let mut r = base.clone();
        r[k] = v;
        s.validate(&r).unwrap_err()
    };
    let e = with("count", json!(1.5));
    assert_eq!(e.field, "count");
    assert!(e.reason.contains("expected int64, got float 1.5"), "{e:?}");
    let e = with("signal", json!("high"));
    assert!(e.reason.contains("expected float64, got string"), "{e:?}");
    let e = with("ts", json!("yesterday"));
    assert_eq!(e.field, "ts");
    assert!(e.reason.contains("RFC 3339"), "{e:?}");
    let e = with("extra", json!(1));
    assert_eq!(e.field, "extra");
    let mut missing = base.clone();
    missing.as_object_mut().unwrap().remove("device");
    let e = s.validate(&missing).unwrap_err();
    assert_eq!(e.field, "device");
    assert!(e.reason.contains("missing"), "{e:?}");
    let e = s.validate(&json!([1, 2])).unwrap_err();
    assert!(e.reason.contains("expected a JSON object"), "{e:?}");
}

#[test]
fn epoch_millis_are_accepted_for_timestamps() {
    let s = readings();
    let r = json!({"device":"a","signal":1.5,"count":3,"ok":true,"ts":1_700_000_000_000i64});
    assert!(s.validate(&r).is_ok());
}

#[test]
fn partitioning_by_key_is_stable() {
    let s = readings();
    let r = json!({"device":"pump-7","signal":1.5,"count":3,"ok":true,"ts":1_700_000_000_000i64});
    let key = s.validate_record(&r).unwrap().key;
    assert_eq!(key.as_deref(), Some(b"pump-7".as_slice()));
    let p = s.partition_of(key.as_deref(), 0);
    assert_eq!(p, s.partition_of(key.as_deref(), 99));
    assert!(p < 4);
}
