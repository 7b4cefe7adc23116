//! Nothing a client sends can stop, poison or slow the pipeline (issue 13), each class
//! checked against the real binary: event times no layer can hold are refused; a
//! record a view cannot process is quarantined while every other view (and the
//! batch layer) keeps going; a far-future event cannot move the watermark; SQL that
//! would overflow the stack, allocate without bound or run for ever is refused or
//! cut off while `/health` answers; cross-site and rebound requests are refused;
//! weak tokens stop the start; retries with an idempotency key add nothing; the
//! embedded log is truncated once its records are archived and behind a cutoff.

mod common;

use std::time::{Duration, Instant};

use common::{Tributary, total_readings};
use serde_json::{Value, json};

const VIEW: &str = "/api/v1/views/signal_by_type";

fn reading(device: &str, ts: &str) -> Value {
    json!({"device": device, "device_type": "pump", "signal": 30.0, "ts": ts})
}

#[tokio::test]
async fn event_times_no_layer_can_hold_are_refused_and_the_pipeline_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start(dir.path(), "").await;
    for ts in [
        "0000-01-01T00:00:00Z",
        "2300-01-01T00:00:00Z",
        "1600-06-01T00:00:00Z",
    ] {
        let (status, report) = t.post("readings", &json!([reading("bad", ts)])).await;
        assert_eq!(status, 400, "{ts}: {report}");
        assert_eq!(report["errors"][0]["field"], "ts", "{report}");
        let reason = report["errors"][0]["reason"].as_str().unwrap();
        assert!(
            reason.contains("out of range") && reason.contains("1678-01-01"),
            "{reason}"
        );
        assert_eq!(report["dead_letters_stored"], true, "{report}");
    }
    // Epoch milliseconds far out are refused the same way.
    let (status, _) = t
        .post("readings", &json!([{"device": "e", "device_type": "pump", "signal": 30.0, "ts": 9_000_000_000_000_000i64}]))
        .await;
    assert_eq!(status, 400);
    // The edges of the range are accepted and processed by every layer.
    let events = json!([
        reading("a", "1678-01-01T00:00:00Z"),
        reading("b", "2261-12-31T23:59:59Z"),
        reading("c", "2026-01-01T00:00:00Z"),
    ]);
    let (status, report) = t.post("readings", &events).await;
    assert_eq!(status, 200, "{report}");
    t.wait_for(VIEW, |v| total_readings(v) == 3).await;
    t.run_batch().await;
    let (_, answer) = t.get(VIEW).await;
    assert_eq!(total_readings(&answer), 3, "{answer}");
    assert_eq!(t.get("/health").await.0, 200);
    let (_, letters) = t.get("/api/v1/streams/readings/dead-letters").await;
    assert!(letters["total"].as_u64().unwrap() >= 4, "{letters}");
}

const DIVIDING: &str = r#"
[[streams]]
name = "m"
event-time = "ts"
partitions = 2
fields = [
  { name = "n", type = "int64" },
  { name = "ts", type = "timestamp" },
]

[[views]]
name = "ratio"
sql = """
SELECT date_bin(INTERVAL '1 hour', ts) AS w, sum(100 / n) AS q, count(*) AS c
FROM m GROUP BY w
"""

[[views]]
name = "plain"
sql = """
SELECT date_bin(INTERVAL '1 hour', ts) AS w, count(*) AS c FROM m GROUP BY w
"""
"#;

fn count(answer: &Value) -> i64 {
    common::column_sum(answer, "c")
}

#[tokio::test]
async fn a_record_a_view_cannot_process_is_quarantined_and_every_view_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let config = Tributary::configure_pipeline(dir.path(), "", 200, DIVIDING);
    let mut t = Tributary::start_config(dir.path(), config).await;
    // n = 0 divides by zero in `ratio` only.
    let events: Vec<Value> = (0..20)
        .map(|i| json!({"n": if i % 5 == 0 { 0 } else { i }, "ts": "2026-01-01T00:10:00Z"}))
        .collect();
    let (status, report) = t.post("m", &Value::Array(events)).await;
    assert_eq!(status, 200, "{report}");
    t.wait_for("/api/v1/views/plain", |v| count(v) == 20).await;
    t.wait_for("/api/v1/views/ratio", |v| count(v) == 16).await;
    let status = t
        .wait_for("/api/v1/status", |s| s["views"][0]["quarantined"] == 4)
        .await;
    assert_eq!(status["views"][0]["state"], "degraded", "{status}");
    assert!(
        status["views"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("zero"),
        "{status}"
    );
    assert_eq!(status["views"][1]["state"], "running", "{status}");
    // The batch layer leaves out the same records instead of failing every run.
    let run = t.run_batch().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (_, ratio) = t.get("/api/v1/views/ratio").await;
    assert_eq!(count(&ratio), 16, "{ratio}");
    let (_, plain) = t.get("/api/v1/views/plain").await;
    assert_eq!(count(&plain), 20, "{plain}");
    // Quarantined records are dead letters with their view, partition and offset.
    let letters = t
        .wait_for("/api/v1/streams/m/dead-letters", |l| l["total"] == 4)
        .await;
    for letter in letters["rows"].as_array().unwrap() {
        assert_eq!(letter["source"], "view:ratio", "{letters}");
        assert!(
            letter["reason"].as_str().unwrap().contains("zero"),
            "{letters}"
        );
        assert!(
            letter["raw"].as_str().unwrap().contains("\"n\":0"),
            "{letters}"
        );
    }
    // A crash and restart replay the same log without stopping on the same records.
    t.kill9();
    t.restart().await;
    t.wait_for("/api/v1/views/ratio", |v| count(v) == 16).await;
    assert_eq!(t.get("/health").await.0, 200);
}

/// A view whose final expression fails for one group alone (integer division by zero
/// where a group has exactly two events) answers every other group and names the
/// failing one, in both layers; the SQL endpoint refuses it rather than answer short.
#[tokio::test]
async fn a_group_whose_row_cannot_be_computed_does_not_take_the_view_down() {
    let dir = tempfile::tempdir().unwrap();
    let config = Tributary::configure_pipeline(dir.path(), "", 200, DIVIDING);
    let t = Tributary::start_config(dir.path(), config).await;
    let sql = "SELECT n, date_bin(INTERVAL '1 hour', ts) AS w, 100 / (count(*) - 2) AS x, \
               count(*) AS c FROM m GROUP BY n, w";
    let (status, created) = t
        .post_json("/api/v1/views", &json!({"name": "spread", "sql": sql}))
        .await;
    assert_eq!(status, 201, "{created}");
    t.wait_for("/api/v1/views/spread/status", |s| s["state"] == "running")
        .await;
    // n = 1 once, n = 2 twice (its row divides by zero), n = 3 three times.
    let events: Vec<Value> = [1, 2, 2, 3, 3, 3]
        .iter()
        .map(|n| json!({"n": n, "ts": "2026-01-01T00:10:00Z"}))
        .collect();
    let (status, report) = t.post("m", &Value::Array(events)).await;
    assert_eq!(status, 200, "{report}");
    let check = |answer: &Value| {
        let rows = answer["rows"].as_array().unwrap();
        let xs: Vec<(i64, i64)> = rows
            .iter()
            .map(|r| (r["n"].as_i64().unwrap(), r["x"].as_i64().unwrap()))
            .collect();
        assert_eq!(xs, vec![(1, -100), (3, 100)], "{answer}");
        let failed = answer["failed_rows"].as_array().expect("failed_rows");
        assert_eq!(failed.len(), 1, "{answer}");
        assert_eq!(failed[0]["keys"]["n"], 2, "{answer}");
        assert_eq!(failed[0]["keys"]["w"], "2026-01-01T00:00:00Z", "{answer}");
        let error = failed[0]["error"].as_str().unwrap();
        assert!(error.contains("Divide by zero"), "{answer}");
    };
    let answer = t.wait_for("/api/v1/views/spread", |v| count(v) == 4).await;
    check(&answer);
    // From the batch layer's states the same.
    let run = t.run_batch().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (status, answer) = t.get("/api/v1/views/spread").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["cutoff"].is_string(), "{answer}");
    check(&answer);
    // The other views never noticed.
    let (_, plain) = t.get("/api/v1/views/plain").await;
    assert_eq!(count(&plain), 6, "{plain}");
    // SQL over the view would look whole without the group: refused, and says why.
    let (status, e) = t
        .post_json("/api/v1/sql", &json!({"sql": "SELECT sum(c) FROM spread"}))
        .await;
    assert_eq!(status, 422, "{e}");
    assert!(e["error"].as_str().unwrap().contains("failed_rows"), "{e}");
}

const JOINING: &str = r#"
[[streams]]
name = "a"
event-time = "ts"
fields = [
  { name = "k", type = "string" },
  { name = "x", type = "int64" },
  { name = "ts", type = "timestamp" },
]

[[streams]]
name = "b"
event-time = "ts"
fields = [
  { name = "k", type = "string" },
  { name = "y", type = "int64" },
  { name = "ts", type = "timestamp" },
]

[[views]]
name = "ratios"
sql = """
SELECT date_bin(INTERVAL '1 hour', a.ts) AS w, count(*) AS n, sum(a.x / b.y) AS q
FROM a JOIN b ON a.k = b.k AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '5 minutes'
GROUP BY w
"""
"#;

/// A joined pair whose expression fails (a division by a zero of the other stream) is
/// left out alone, by the speed layer and by a batch run alike; the view keeps running.
#[tokio::test]
async fn a_pair_a_join_view_cannot_process_is_left_out_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = Tributary::configure_pipeline(dir.path(), "", 50, JOINING);
    let t = Tributary::start_config(dir.path(), config).await;
    let a = json!([
        {"k": "k1", "x": 10, "ts": "2026-01-01T00:10:00Z"},
        {"k": "k2", "x": 20, "ts": "2026-01-01T00:20:00Z"},
    ]);
    // k1 meets 2 (10 / 2 = 5) and 0 (fails); k2 meets 5 (20 / 5 = 4).
    let b = json!([
        {"k": "k1", "y": 2, "ts": "2026-01-01T00:11:00Z"},
        {"k": "k1", "y": 0, "ts": "2026-01-01T00:12:00Z"},
        {"k": "k2", "y": 5, "ts": "2026-01-01T00:21:00Z"},
    ]);
    for (stream, events) in [("a", a), ("b", b)] {
        let (status, report) = t.post(stream, &events).await;
        assert_eq!(status, 200, "{report}");
    }
    let n_q = |answer: &Value| -> Vec<(i64, i64)> {
        answer["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["n"].as_i64().unwrap(), r["q"].as_i64().unwrap()))
            .collect()
    };
    let answer = t
        .wait_for("/api/v1/views/ratios", |v| v["rows"][0]["n"] == 2)
        .await;
    assert_eq!(n_q(&answer), vec![(2, 9)], "{answer}");
    let (_, status) = t.get("/api/v1/views/ratios/status").await;
    assert_eq!(status["state"], "running", "{status}");
    let (_, stats) = t.get("/api/v1/speed/stats").await;
    let view = &stats["views"][0];
    assert_eq!(view["quarantined"], 1, "{stats}");
    assert!(
        view["last_error"]
            .as_str()
            .unwrap()
            .contains("Divide by zero"),
        "{stats}"
    );
    // A batch run over the same pairs leaves out the same one.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let run = t.run_batch().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let answer = t
        .wait_for("/api/v1/views/ratios", |v| {
            v["rows"][0]["_source"] == "batch"
        })
        .await;
    assert_eq!(n_q(&answer), vec![(2, 9)], "{answer}");
    // And the speed layer pairs a new event with the batch layer's (20 / 4 = 5).
    let (status, report) = t
        .post(
            "b",
            &json!([{"k": "k2", "y": 4, "ts": "2026-01-01T00:22:00Z"}]),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    let answer = t
        .wait_for("/api/v1/views/ratios", |v| v["rows"][0]["n"] == 3)
        .await;
    assert_eq!(n_q(&answer), vec![(3, 14)], "{answer}");
    assert_eq!(answer["rows"][0]["_source"], "both", "{answer}");
}

#[tokio::test]
async fn a_far_future_event_counts_but_does_not_move_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start(dir.path(), "").await;
    let now = chrono::Utc::now();
    let at = |d: chrono::TimeDelta| (now + d).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let events = json!([
        reading("a", &at(chrono::TimeDelta::minutes(-30))),
        reading("future", "2200-01-01T00:00:00Z"),
    ]);
    let (status, report) = t.post("readings", &events).await;
    assert_eq!(status, 200, "{report}");
    t.wait_for(VIEW, |v| total_readings(v) == 2).await;
    t.run_batch().await;
    let (_, answer) = t.get(VIEW).await;
    let limit = (now + chrono::TimeDelta::hours(1)).to_rfc3339();
    for key in ["speed_watermark", "watermark"] {
        if let Some(w) = answer[key].as_str() {
            assert!(w < limit.as_str(), "{key} {w} moved past {limit}: {answer}");
        }
    }
    let (_, status) = t.get("/api/v1/status").await;
    let w = status["views"][0]["watermark"].as_str().unwrap();
    assert!(w < limit.as_str(), "watermark {w}: {status}");
}

#[tokio::test]
async fn no_sql_query_can_stop_the_process_or_outrun_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start(dir.path(), "[sql]\ntimeout-ms = 2000").await;
    let deep = format!("SELECT 1{}", "+1".repeat(100_000));
    let nested = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
    for (what, sql, expected) in [
        ("a chain of 100,000 operators", deep.as_str(), 400),
        ("5,000 nested parentheses", nested.as_str(), 400),
        (
            "a 2 GB string",
            "SELECT length(repeat('x', 2000000000)) AS n",
            400,
        ),
        (
            "a 1 GB pad",
            "SELECT length(lpad('x', 1000000000)) AS n",
            400,
        ),
    ] {
        let started = Instant::now();
        let (status, body) = t.post_json("/api/v1/sql", &json!({ "sql": sql })).await;
        assert_eq!(status, expected, "{what}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what} took {:?}",
            started.elapsed()
        );
        assert_eq!(t.get("/health").await.0, 200, "after {what}");
    }
    // A big answer is cut at max-rows for JSON, not materialised.
    let (status, body) = t
        .post_json(
            "/api/v1/sql",
            &json!({ "sql": "SELECT value FROM range(1, 100000000)" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["truncated"], true);
    assert_eq!(body["rows"].as_array().unwrap().len(), 100_000);
    for (what, sql) in [
        (
            "a cross join of two large series",
            "SELECT count(*) AS n FROM generate_series(1, 200000) a, generate_series(1, 200000) b",
        ),
        (
            "a billion-row range",
            "SELECT sum(value) AS s FROM range(1, 1000000000000)",
        ),
    ] {
        let started = Instant::now();
        let (status, body) = t.post_json("/api/v1/sql", &json!({ "sql": sql })).await;
        let took = started.elapsed();
        assert!(status == 408 || status == 422, "{what}: {status} {body}");
        assert!(
            took < Duration::from_secs(5),
            "{what} answered after {took:?} (timeout 2 s)"
        );
        assert_eq!(t.get("/health").await.0, 200, "after {what}");
    }
}

#[tokio::test]
async fn cross_site_and_rebound_requests_are_refused_in_loopback_mode() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start(dir.path(), "").await;
    let url = format!("{}/api/v1/streams/readings/events", t.base);
    let body = json!([reading("x", "2026-01-01T00:00:00Z")]).to_string();
    // A page on another site can send text/plain without a preflight: refused.
    let r = t
        .client
        .post(&url)
        .header("content-type", "text/plain")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = t.client.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 415, "no content type");
    // A cross-site write carries its Origin: refused, even as JSON.
    let r = t
        .client
        .post(&url)
        .header("content-type", "application/json")
        .header("origin", "https://evil.example")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = t
        .client
        .post(format!("{}/api/v1/batch/runs", t.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "starting runs cross-site");
    // A rebound name reads nothing.
    let r = t
        .client
        .get(format!("{}{VIEW}", t.base))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
    // The same origin and plain clients pass.
    let r = t
        .client
        .post(&url)
        .header("content-type", "application/json")
        .header("origin", t.base.clone())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // CR/LF in a redirect target is encoded, not a panic.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/?view=%0d%0aSet-Cookie:%20x=1", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{:?}", r.status());
    assert!(r.headers().get("set-cookie").is_none());
}

#[test]
fn empty_or_weak_tokens_stop_the_start() {
    for token in ["", "weak-tok", "has spaces in it, long enough"] {
        let dir = tempfile::tempdir().unwrap();
        let config = Tributary::configure(
            dir.path(),
            &format!(
                "[auth]\ntokens = [{{ name = \"ops\", token = \"{token}\", scopes = [\"admin\"] }}]"
            ),
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["up", "--config", config.to_str().unwrap()])
            .env(
                "TRIBUTARY_HTTP__ADDR",
                format!("127.0.0.1:{}", common::free_port()),
            )
            .output()
            .unwrap();
        assert!(!out.status.success(), "`{token}` was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("auth.tokens[0].token"), "{err}");
        assert!(
            token.is_empty() || !err.contains(token),
            "the token is never printed: {err}"
        );
    }
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start(dir.path(), "").await;
    let body = json!(
        (0..10)
            .map(|i| reading(&format!("d{i}"), "2026-01-01T00:00:00Z"))
            .collect::<Vec<_>>()
    )
    .to_string();
    let send = |key: &str, body: String| {
        t.client
            .post(format!("{}/api/v1/streams/readings/events", t.base))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body)
            .send()
    };
    let first: Value = send("req-1", body.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let again: Value = send("req-1", body.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first, again);
    let other = send("req-1", "[]".into()).await.unwrap();
    assert_eq!(other.status(), 422, "the key names another body");
    t.wait_for(VIEW, |v| total_readings(v) == 10).await;
    send("req-2", body).await.unwrap();
    t.wait_for(VIEW, |v| total_readings(v) == 20).await;
}

#[tokio::test]
async fn dead_letters_are_group_committed_and_keep_ingest_fast() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start(dir.path(), "").await;
    let started = Instant::now();
    let posts = (0..100).map(|i| {
        let t = &t;
        async move {
            t.post(
                "readings",
                &json!([reading("ok", "2026-01-01T00:00:00Z"), {"device": i, "ts": "x"}]),
            )
            .await
        }
    });
    for (status, report) in futures::future::join_all(posts).await {
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["dead_letters_stored"], true, "{report}");
    }
    let took = started.elapsed();
    let (_, letters) = t.get("/api/v1/streams/readings/dead-letters").await;
    assert_eq!(letters["total"], 100, "{letters}");
    let commits = std::fs::read_dir(dir.path().join("data/dead_letters/readings/_delta_log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert!(
        commits < 50,
        "100 requests made {commits} dead-letter commits"
    );
    assert!(took < Duration::from_secs(20), "100 requests took {took:?}");
}

#[tokio::test]
async fn the_embedded_log_is_truncated_once_archived_and_below_the_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start(dir.path(), "[log]\nretention-mb = 1").await;
    let events: Vec<Value> = (0..2000)
        .map(|i| reading(&format!("d{}", i % 40), "2026-01-01T00:00:00Z"))
        .collect();
    for _ in 0..5 {
        assert_eq!(
            t.post("readings", &Value::Array(events.clone())).await.0,
            200
        );
    }
    t.wait_for(VIEW, |v| total_readings(v) == 10_000).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    t.run_batch().await;
    let status = t
        .wait_for("/api/v1/status", |s| {
            s["log"]["retention"]["removed_records"]
                .as_u64()
                .unwrap_or(0)
                > 0
        })
        .await;
    assert!(
        status["log"]["retention"]["disk_bytes"].as_u64().is_some(),
        "{status}"
    );
    // Nothing needed was removed: the answer is the same.
    let (_, answer) = t.get(VIEW).await;
    assert_eq!(total_readings(&answer), 10_000, "{answer}");
}

#[tokio::test]
async fn live_clients_of_one_question_share_one_feed_and_their_number_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start(dir.path(), "[http]\nmax-live-clients = 6").await;
    let url = format!("{}{VIEW}/live?device_type=pump", t.base);
    let mut clients = Vec::new();
    for _ in 0..5 {
        let r = t.client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        clients.push(r);
    }
    let status = t
        .wait_for("/api/v1/status", |s| s["live"]["clients"] == 5)
        .await;
    assert_eq!(
        status["live"]["feeds"], 1,
        "five clients, one question: {status}"
    );
    // Another question is another feed; past the limit, 503.
    let other = t
        .client
        .get(format!("{}{VIEW}/live", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    let refused = t.client.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let status = t
        .wait_for("/api/v1/status", |s| s["live"]["feeds"] == 2)
        .await;
    assert_eq!(status["live"]["clients"], 6, "{status}");
    // Clients that leave give their places back, and idle feeds stop.
    drop(clients);
    drop(other);
    t.wait_for("/api/v1/status", |s| {
        s["live"]["clients"] == 0 && s["live"]["feeds"] == 0
    })
    .await;
}

#[tokio::test]
async fn records_straight_into_kafka_cannot_stop_the_pipeline_either() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("bad-{}-", std::process::id());
    let extra = format!(
        "[log]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopic-prefix = \"{prefix}\"\ntick-interval-ms = 200",
        common::kafka_brokers()
    );
    let config = Tributary::configure_pipeline(dir.path(), &extra, 200, DIVIDING);
    let t = Tributary::start_config(dir.path(), config).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka_brokers())
        .create()
        .unwrap();
    let topic = format!("{prefix}m");
    for payload in [
        r#"{"n":4,"ts":"2026-01-01T00:10:00Z"}"#,
        r#"{"n":0,"ts":"2026-01-01T00:10:00Z"}"#,
        r#"{"n":2,"ts":"0000-01-01T00:00:00Z"}"#,
        r#"{"n":2,"ts":"2300-01-01T00:00:00Z"}"#,
        r#"{"n":5,"ts":"2026-01-01T00:20:00Z"}"#,
    ] {
        let record: FutureRecord<'_, (), str> =
            FutureRecord::to(&topic).partition(0).payload(payload);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }
    // Out-of-range records are invalid for every layer; n = 0 is quarantined by `ratio`.
    t.wait_for("/api/v1/views/plain", |v| count(v) == 3).await;
    t.wait_for("/api/v1/views/ratio", |v| count(v) == 2).await;
    t.run_batch().await;
    let (_, ratio) = t.get("/api/v1/views/ratio").await;
    assert_eq!(count(&ratio), 2, "{ratio}");
    let letters = t
        .wait_for("/api/v1/streams/m/dead-letters", |l| l["total"] == 3)
        .await;
    let text = letters.to_string();
    assert!(
        text.contains("out of range") && text.contains("view:ratio"),
        "{letters}"
    );
    assert_eq!(t.get("/health").await.0, 200);
}

#[tokio::test]
async fn event_strings_cannot_break_out_of_the_dashboards_bootstrap() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start(dir.path(), "").await;
    let nasty = "<!--<script></script></script>&";
    let event = json!([{"device": "d", "device_type": nasty, "signal": 30.0, "ts": "2026-01-01T00:00:00Z"}]);
    assert_eq!(t.post("readings", &event).await.0, 200);
    t.wait_for(VIEW, |v| total_readings(v) == 1).await;
    let html = t
        .client
        .get(format!("{}/views/signal_by_type", t.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open = "id=\"tributary-bootstrap\">";
    let start = html.find(open).expect("the page has its bootstrap") + open.len();
    let end = start + html[start..].find("</script>").unwrap();
    let bootstrap = &html[start..end];
    assert!(
        !bootstrap.contains('<') && !bootstrap.contains('>'),
        "{bootstrap}"
    );
    let parsed: Value = serde_json::from_str(bootstrap).unwrap();
    assert!(
        parsed.to_string().contains(nasty),
        "the string survives intact"
    );
}
