//! How values read on screen: the same on the server and in the browser.

use serde_json::Value;

/// A JSON value as a table cell: numbers without trailing zeros, `—` for null.
pub fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "—".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string(),
            _ => n.to_string(),
        },
        Some(other) => other.to_string(),
    }
}

/// The value at a JSON pointer, as a cell.
pub fn at(v: &Option<Value>, pointer: &str) -> String {
    text(v.as_ref().and_then(|v| v.pointer(pointer)))
}

/// The number at a JSON pointer.
pub fn num_at(v: &Option<Value>, pointer: &str) -> Option<f64> {
    v.as_ref()?.pointer(pointer)?.as_f64()
}

/// Bytes in the largest unit that keeps a number ≥ 1.
pub fn bytes(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut n = n;
    let mut unit = 0;
    while n >= 1024.0 && unit + 1 < units.len() {
        n /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n:.0} B")
    } else {
        format!("{n:.1} {}", units[unit])
    }
}

/// Milliseconds as the largest sensible unit.
pub fn duration_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 60_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms < 3_600_000.0 {
        format!("{:.1} min", ms / 60_000.0)
    } else {
        format!("{:.1} h", ms / 3_600_000.0)
    }
}

/// Microseconds since the epoch of an RFC 3339 timestamp as the API writes it.
pub fn parse_ts(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// `HH:MM` (or `MM-DD HH:MM` when `with_date`) of a time in microseconds, UTC.
pub fn clock(us: i64, with_date: bool) -> String {
    let Some(t) = chrono::DateTime::from_timestamp_micros(us) else {
        return "—".into();
    };
    if with_date {
        t.format("%m-%d %H:%M").to_string()
    } else {
        t.format("%H:%M").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_drop_trailing_zeros_and_show_null_as_a_dash() {
        assert_eq!(text(Some(&json!(80.0))), "80");
        assert_eq!(text(Some(&json!(2.5))), "2.5");
        assert_eq!(text(Some(&json!(3))), "3");
        assert_eq!(text(None), "—");
        assert_eq!(text(Some(&Value::Null)), "—");
    }

    #[test]
    fn timestamps_round_trip_through_the_clock() {
        let us = parse_ts("2030-01-01T00:05:00Z").unwrap();
        assert_eq!(us, 1_893_456_300_000_000);
        assert_eq!(clock(us, true), "01-01 00:05");
        assert_eq!(
            parse_ts("2024-02-29T23:59:59.5Z"),
            Some(1_709_251_199_500_000)
        );
        assert_eq!(parse_ts("2024-02-29 23:59:59"), None);
        assert_eq!(parse_ts("not a time"), None);
    }

    #[test]
    fn sizes_and_durations_pick_a_readable_unit() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(duration_ms(250.0), "250 ms");
        assert_eq!(duration_ms(90_000.0), "1.5 min");
    }
}
