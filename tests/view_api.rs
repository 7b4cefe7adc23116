//! The view API's query contract on a running `tributary up`: IN filters, ordering,
//! pagination, top-k, rows without metadata, and a clear 400 naming the parameter for
//! every malformed one.

mod common;

use common::{Tributary, total_readings};
use serde_json::{Value, json};

const VIEW: &str = "/api/v1/views/signal_by_type";

#[tokio::test]
async fn filters_order_pages_and_ranks_view_rows() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start(dir.path(), "").await;
    // pump: 5 readings, fan: 3, valve: 2, drill: 1 — all in one window.
    let mut events = Vec::new();
    for (kind, n) in [("pump", 5), ("fan", 3), ("valve", 2), ("drill", 1)] {
        for i in 0..n {
            events.push(json!({"device": format!("{kind}{i}"), "device_type": kind,
                               "signal": 20.0 + i as f64, "ts": "2026-01-01T00:01:00Z"}));
        }
    }
    let (status, _) = t.post("readings", &Value::Array(events)).await;
    assert_eq!(status, 200);
    t.wait_for(VIEW, |v| total_readings(v) == 11).await;
    let types = |v: &Value| -> Vec<String> {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["device_type"].as_str().unwrap().to_string())
            .collect()
    };

    let (_, v) = t
        .get(&format!("{VIEW}?device_type=pump&device_type=fan"))
        .await;
    assert_eq!(types(&v), ["fan", "pump"]);

    let (_, v) = t.get(&format!("{VIEW}?order=-readings")).await;
    assert_eq!(types(&v), ["pump", "fan", "valve", "drill"]);
    let (_, v) = t.get(&format!("{VIEW}?order=readings")).await;
    assert_eq!(types(&v), ["drill", "valve", "fan", "pump"]);

    let (_, v) = t.get(&format!("{VIEW}?order=device_type&limit=3")).await;
    assert_eq!(types(&v), ["drill", "fan", "pump"]);
    assert_eq!(
        (v["total_rows"].clone(), v["next_offset"].clone()),
        (json!(4), json!(3))
    );
    let (_, v) = t
        .get(&format!("{VIEW}?order=device_type&limit=3&offset=3"))
        .await;
    assert_eq!(types(&v), ["valve"]);
    assert!(v["next_offset"].is_null(), "{v}");

    let (_, v) = t.get(&format!("{VIEW}?top=2&by=readings")).await;
    assert_eq!(types(&v), ["pump", "fan"]);
    assert_eq!(v["rows"][0]["readings"], 5);

    let (_, v) = t.get(&format!("{VIEW}?meta=false&device_type=drill")).await;
    let row = v["rows"][0].as_object().unwrap();
    assert!(
        !row.contains_key("_source") && !row.contains_key("complete"),
        "{v}"
    );
    let (_, v) = t.get(&format!("{VIEW}?device_type=drill")).await;
    assert_eq!(v["rows"][0]["_source"], "speed");

    for (query, param) in [
        ("limit=-1", "limit"),
        ("offset=many", "offset"),
        ("order=nope", "order"),
        ("top=3", "top"),
        ("by=readings", "by"),
        ("top=2&by=readings&limit=1", "top"),
        ("top=2&by=colour", "by"),
        ("meta=maybe", "meta"),
        ("from=yesterday", "from"),
        ("colour=red", "colour"),
        // A fixed parameter twice is refused, not one of them taken silently.
        ("limit=5&limit=6", "limit"),
        (
            "from=2026-01-01T00:00:00Z&from=2026-01-02T00:00:00Z",
            "from",
        ),
    ] {
        let (status, v) = t.get(&format!("{VIEW}?{query}")).await;
        assert_eq!(status, 400, "{query}: {v}");
        let text = v["error"].as_str().unwrap();
        assert!(text.contains(&format!("`{param}`")), "{query}: {text}");
    }
    let (status, _) = t.get("/api/v1/views/nope").await;
    assert_eq!(status, 404);
}

/// Requests that arrive together after a change share one merge of the states: under
/// load, each computing its own made answers fall further and further behind.
#[tokio::test]
async fn requests_after_a_change_share_one_merge() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start(dir.path(), "").await;
    let merges = |s: &Value| s["serving"]["merges"].as_u64().unwrap();
    for round in 0..5usize {
        let body = common::numbered_readings(round * 10, 10, 30);
        assert_eq!(t.post("readings", &body).await.0, 200);
        t.wait_for("/api/v1/speed/stats", |s| {
            s["streams"]["readings"]["events"].as_u64() == Some((round as u64 + 1) * 10)
        })
        .await;
        let (_, before) = t.get("/api/v1/status").await;
        let asks = (0..64).map(|_| t.get(VIEW));
        for (status, v) in futures::future::join_all(asks).await {
            assert_eq!(status, 200, "{v}");
        }
        let (_, after) = t.get("/api/v1/status").await;
        let computed = merges(&after) - merges(&before);
        assert_eq!(
            computed, 1,
            "64 requests of one change computed {computed} merges"
        );
    }
}
