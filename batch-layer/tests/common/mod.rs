//! What the batch layer's integration tests share.

/// A stream of page clicks (two partitions) and a view counting them per page and hour.
pub const CLICKS: &str = r#"
[[streams]]
name = "clicks"
event-time = "ts"
partitions = 2
fields = [{ name = "page", type = "string" }, { name = "ts", type = "timestamp" }]

[[views]]
name = "per_page"
sql = "SELECT page, date_bin(INTERVAL '1 hour', ts) AS hour, count(*) AS n FROM clicks GROUP BY page, hour"
"#;
