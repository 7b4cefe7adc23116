//! Time helpers: Tributary keeps every timestamp as microseconds since the epoch, UTC.

use chrono::{DateTime, SecondsFormat, Utc};

/// The time now, in microseconds since the epoch.
pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

/// RFC 3339 text for a microsecond timestamp.
pub fn rfc3339(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| micros.to_string())
}

/// Parse RFC 3339 text into microseconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc).timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = parse_rfc3339("2026-11-21T07:00:00.5Z").unwrap();
        assert_eq!(rfc3339(t), "2026-11-21T07:00:00.500Z");
    }
}
