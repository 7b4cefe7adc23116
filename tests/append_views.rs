//! Append-mode views: a filtered projection of a stream, materialised into its own Delta
//! table exactly once through SIGKILLs (the same rows as the master table filtered, none
//! twice), answered by the view API with its filters and pages and by SQL.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Tributary, delta_rows, numbered_readings};
use serde_json::{Value, json};

const APPEND: &str = r#"
[[append-views]]
name = "loud"
sql = "SELECT device, device_type, signal, ts, signal * 2 AS doubled FROM readings WHERE signal > 30"
"#;

/// Events `from..from + n`, each its own device, signal `i % 60`.
fn batch(from: usize, n: usize) -> Value {
    numbered_readings(from, n, 60)
}

/// device → count, for the rows of `sql` over the Delta table at `path`.
async fn counts(path: &std::path::Path, sql: &str) -> BTreeMap<String, i64> {
    delta_rows(path, sql)
        .await
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap()))
        .collect()
}

#[tokio::test]
async fn an_append_view_is_written_exactly_once_through_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tributary::start(dir.path(), APPEND).await;
    let client = reqwest::Client::new();
    let mut next = 0;
    let mut acked = Vec::new();
    for round in 0..4 {
        let until = Instant::now() + Duration::from_millis(700 + 150 * round);
        while Instant::now() < until {
            let sent = client
                .post(format!("{}/api/v1/streams/readings/events", t.base))
                .json(&batch(next, 60))
                .send()
                .await;
            if sent.is_ok_and(|r| r.status().is_success()) {
                acked.extend(next..next + 60);
            }
            next += 60;
        }
        t.kill9();
        t.restart().await;
    }
    assert!(
        acked.len() >= 600,
        "too few events acknowledged: {}",
        acked.len()
    );
    let master = dir.path().join("data/master/readings");
    let append = dir.path().join("data/append/loud");
    let want_sql = "SELECT device, count(*) FROM t WHERE signal > 30 GROUP BY device";
    let got_sql = "SELECT device, count(*) FROM t GROUP BY device";
    let deadline = Instant::now() + Duration::from_secs(60);
    let (want, got) = loop {
        let want = counts(&master, want_sql).await;
        let got = counts(&append, got_sql).await;
        if (want == got && !want.is_empty()) || Instant::now() > deadline {
            break (want, got);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(got.values().all(|n| *n == 1), "rows written twice");
    assert_eq!(
        got, want,
        "the append view differs from the master table filtered"
    );
    // Every acknowledged loud event is there.
    for i in acked.iter().filter(|i| *i % 60 > 30) {
        let device = format!("e{i:06}");
        assert!(
            got.contains_key(&device),
            "acknowledged {device} is missing"
        );
    }

    api_reads(&t, &got, next).await;
}

/// The view API (filters, order, pages, live) and SQL read the table.
async fn api_reads(t: &Tributary, got: &BTreeMap<String, i64>, next: usize) {
    // The view API: filters, order and pages over the table.
    let (status, pumps) = t
        .get("/api/v1/views/loud?device_type=pump&order=-signal&limit=5")
        .await;
    assert_eq!(status, 200, "{pumps}");
    let rows = pumps["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "{pumps}");
    assert!(rows.iter().all(|r| r["device_type"] == "pump"
        && r["doubled"] == json!(r["signal"].as_f64().unwrap() * 2.0)));
    let signals: Vec<f64> = rows.iter().map(|r| r["signal"].as_f64().unwrap()).collect();
    assert!(signals.windows(2).all(|w| w[0] >= w[1]), "{signals:?}");
    let pump_total = got.keys().filter(|d| {
        let i: usize = d[1..].parse().unwrap();
        common::DEVICE_TYPES[i % 3] == "pump"
    });
    assert_eq!(
        pumps["total_rows"].as_u64().unwrap() as usize,
        pump_total.count()
    );
    assert!(pumps["cutoff"].is_string(), "{pumps}");
    let (status, hour) = t
        .get("/api/v1/views/loud?from=2026-01-01T01:00:00Z&to=2026-01-01T02:00:00Z&limit=1000")
        .await;
    assert_eq!(status, 200, "{hour}");
    assert!(
        hour["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["ts"].as_str().unwrap().starts_with("2026-01-01T01:"))
    );
    let (status, e) = t.get("/api/v1/views/loud?colour=red").await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("colour"), "{e}");
    // Live: the answer, then again once new rows are committed.
    let mut live = t
        .client
        .get(format!("{}/api/v1/views/loud/live?limit=1", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let first = next_view_event(&mut live).await;
    let (status, _) = t.post("readings", &batch(next, 60)).await;
    assert_eq!(status, 200);
    // (A pass may move the cutoff alone first: that is a change too.)
    let mut second = next_view_event(&mut live).await;
    while second["total_rows"] == first["total_rows"] {
        second = next_view_event(&mut live).await;
    }
    assert_eq!(
        second["total_rows"].as_u64().unwrap(),
        first["total_rows"].as_u64().unwrap() + 29,
        "{second}"
    );
    // And SQL.
    let (status, sql) = t
        .post_json(
            "/api/v1/sql",
            &json!({"sql": "SELECT count(*) AS n FROM loud"}),
        )
        .await;
    assert_eq!(status, 200, "{sql}");
    // (The live check above added 29 loud events.)
    assert_eq!(
        sql["rows"][0]["n"].as_u64().unwrap() as usize,
        got.len() + 29
    );
}

#[tokio::test]
async fn append_views_that_are_not_refuse_start_up_with_why() {
    let dir = tempfile::tempdir().unwrap();
    for (sql, why) in [
        (
            "SELECT device_type, count(*) FROM readings GROUP BY device_type",
            "aggregate",
        ),
        ("SELECT device FROM readings LIMIT 3", "LIMIT"),
        (
            "SELECT device, row_number() OVER (ORDER BY ts) FROM readings",
            "window function",
        ),
        ("SELECT colour FROM readings", "colour"),
    ] {
        let extra = format!("[[append-views]]\nname = \"bad\"\nsql = \"{sql}\"\n");
        let config = Tributary::configure(dir.path(), &extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["--config", config.to_str().unwrap(), "check"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sql} was accepted");
        assert!(
            err.contains("append-views[0].sql") && err.contains(why),
            "{sql}: {err}"
        );
    }
}

/// The next `view` event of a server-sent event stream, parsed.
async fn next_view_event(live: &mut reqwest::Response) -> Value {
    let mut text = String::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(30), live.chunk())
            .await
            .expect("no live event within 30 s")
            .unwrap()
            .expect("the live stream ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(start) = text.find("event: view\ndata: ")
            && let Some(end) = text[start..].find("\n\n")
        {
            let data = &text[start + "event: view\ndata: ".len()..start + end];
            return serde_json::from_str(data).unwrap();
        }
    }
}
