//! What the speed layer's integration tests share.

/// A stream `r` of two partitions and a view `per_k` counting per key and minute; a
/// test appends its own `[speed]` table.
pub const CONFIG: &str = r#"
storage-root = "x"
[[streams]]
name = "r"
event-time = "ts"
partitions = 2
fields = [{ name = "k", type = "string" }, { name = "ts", type = "timestamp" }]
[[views]]
name = "per_k"
sql = "SELECT k, date_bin(INTERVAL '1 minute', ts) AS w, count(*) AS n FROM r GROUP BY k, w"
"#;
