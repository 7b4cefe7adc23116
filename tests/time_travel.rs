//! Time travel through the SQL endpoint and the view API: the master table at an earlier
//! Delta version or time, and a view as its batch states were after an earlier batch
//! run; refusals name what is wrong.

mod common;

use std::time::Duration;

use common::{Tributary, total_readings};
use serde_json::{Value, json};

fn readings(from: usize, n: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| {
                json!({
                    "device": format!("t{i}"),
                    "device_type": "pump",
                    "signal": 30.0,
                    "ts": "2026-03-01T12:00:00Z",
                })
            })
            .collect(),
    )
}

async fn sql(t: &Tributary, body: Value) -> (u16, Value) {
    t.post_json("/api/v1/sql", &body).await
}

async fn master_version(dir: &std::path::Path) -> u64 {
    let url = url::Url::from_directory_path(dir.join("data/master/readings")).unwrap();
    deltalake::DeltaTable::try_from_url(url)
        .await
        .unwrap()
        .version()
        .unwrap() as u64
}

#[tokio::test]
async fn the_master_table_and_views_can_be_read_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start(dir.path(), "").await;
    t.post("readings", &readings(0, 10)).await;
    t.wait_for("/api/v1/views/signal_by_type", |v| total_readings(v) == 10)
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let first = t.run_batch().await;
    assert_eq!(first["rows_in"], 10, "{first}");
    let then_version = master_version(dir.path()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let then_time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    t.post("readings", &readings(10, 5)).await;
    t.wait_for("/api/v1/views/signal_by_type", |v| total_readings(v) == 15)
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    t.run_batch().await;

    let count = "SELECT count(*) AS n FROM master_readings";
    let view = "SELECT sum(readings) AS n FROM signal_by_type";
    let n = |v: &Value| v["rows"][0]["n"].as_i64().unwrap();
    let (status, now) = sql(&t, json!({ "sql": count })).await;
    assert_eq!((status, n(&now)), (200, 15), "{now}");
    let (status, past) = sql(&t, json!({ "sql": count, "as_of_version": then_version })).await;
    assert_eq!((status, n(&past)), (200, 10), "{past}");
    let (status, past) = sql(&t, json!({ "sql": count, "as_of": then_time })).await;
    assert_eq!((status, n(&past)), (200, 10), "{past}");
    // A view as of its first batch run: that run's states alone.
    let (status, past) = sql(&t, json!({ "sql": view, "as_of_version": 0 })).await;
    assert_eq!((status, n(&past)), (200, 10), "{past}");
    let (status, past) = sql(&t, json!({ "sql": view, "as_of": then_time })).await;
    assert_eq!((status, n(&past)), (200, 10), "{past}");
    let (status, now) = sql(&t, json!({ "sql": view })).await;
    assert_eq!((status, n(&now)), (200, 15), "{now}");

    // The view API travels the same way (batch states only, no speed layer).
    let view_api = "/api/v1/views/signal_by_type";
    let (status, past) = t.get(&format!("{view_api}?as_of_version=0")).await;
    assert_eq!((status, total_readings(&past)), (200, 10), "{past}");
    assert_eq!(past["batch_version"], 0, "{past}");
    assert!(past["freshness_ms"].is_null(), "{past}");
    assert!(
        past["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["_source"] == "batch"),
        "{past}"
    );
    let (status, past) = t.get(&format!("{view_api}?as_of={then_time}")).await;
    assert_eq!((status, total_readings(&past)), (200, 10), "{past}");
    let (status, now) = t.get(&format!("{view_api}?as_of_version=1")).await;
    assert_eq!((status, total_readings(&now)), (200, 15), "{now}");
    let (status, e) = t.get(&format!("{view_api}?as_of_version=9999")).await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("as of version 9999"),
        "{e}"
    );
    // Far past the newest version (schemathesis found this one hanging delta-rs).
    let (status, e) = t
        .get(&format!("{view_api}?as_of_version=9223372036854775808"))
        .await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("the newest is"),
        "{e}"
    );
    let (status, e) = t.get(&format!("{view_api}?as_of_version=soon")).await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("Delta version"),
        "{e}"
    );
    let (status, e) = t.get(&format!("{view_api}/live?as_of_version=0")).await;
    assert_eq!(status, 400, "{e}");

    // Refusals say what is wrong.
    let (status, e) = sql(&t, json!({ "sql": count, "as_of_version": 9999 })).await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("as of version 9999"),
        "{e}"
    );
    let (status, e) = sql(&t, json!({ "sql": count, "as_of": "yesterday" })).await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("RFC 3339"), "{e}");
    let (status, e) = sql(
        &t,
        json!({ "sql": count, "as_of": then_time, "as_of_version": 1 }),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("not both"), "{e}");
}
