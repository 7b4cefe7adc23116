//! The four roles as four processes on a real Kafka-protocol broker (tansu, started by
//! deploy/test.sh; address in KAFKA_TEST_BROKERS): events posted to `ingest` and
//! written straight into the topic are served exactly by `serve`, which reaches the
//! `speed` process over its internal endpoint and the batch views through the shared
//! storage root; the archiver (`batch`) is SIGKILLed and restarted mid-stream and the
//! master table still holds each event exactly once. Two archivers share the partitions
//! through their consumer group and resume from the table after every rebalance. The
//! same topology runs with its tables on S3 (SeaweedFS), as deploy/compose/ wires it.

// A scenario test reads top to bottom as one story against one running process.
#![allow(clippy::too_many_lines)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Tributary, kafka_brokers, master_counts, total_readings};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

const VIEW: &str = "/api/v1/views/signal_by_type";

fn by_type(v: &Value) -> BTreeMap<String, (f64, f64, i64, String)> {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["device_type"].as_str().unwrap().to_string(),
                (
                    r["avg_signal"].as_f64().unwrap(),
                    r["max_signal"].as_f64().unwrap(),
                    r["readings"].as_i64().unwrap(),
                    r["_source"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// Where the four processes keep their tables.
enum Tables {
    /// The shared local storage root.
    Local,
    /// An S3 root on the test server (SeaweedFS), as in deploy/compose/compose.yaml.
    S3,
}

#[tokio::test]
async fn four_processes_serve_exact_answers_and_survive_an_archiver_kill() {
    four_processes(Tables::Local).await;
}

#[tokio::test]
async fn four_processes_on_s3_serve_exact_answers_and_survive_an_archiver_kill() {
    four_processes(Tables::S3).await;
}

async fn four_processes(tables: Tables) {
    let dir = tempfile::tempdir().unwrap();
    let (tag, storage, root) = match tables {
        Tables::Local => ("local", String::new(), None),
        Tables::S3 => {
            let s3 = common::s3();
            let root = format!(
                "s3://{}/roles-{}-{}",
                s3.bucket,
                std::process::id(),
                chrono::Utc::now().timestamp_micros()
            );
            (
                "s3",
                s3.storage_section(&dir.path().join("local")),
                Some(root),
            )
        }
    };
    let prefix = format!("roles-{tag}-{}-", std::process::id());
    let config = Tributary::configure_kafka_with(dir.path(), &prefix, &storage);
    let env: Vec<(&str, &str)> = root
        .as_deref()
        .map(|r| ("TRIBUTARY_STORAGE_ROOT", r))
        .into_iter()
        .collect();
    let ingest = Tributary::start_role(dir.path(), &config, "ingest", &env).await;
    let speed = Tributary::start_role(dir.path(), &config, "speed", &env).await;
    let mut batch = Tributary::start_role(dir.path(), &config, "batch", &env).await;
    // A second archiver in the same consumer group: the partitions are shared out.
    let batch2 = Tributary::start_role(dir.path(), &config, "batch", &env).await;
    let mut serve_env = env.clone();
    serve_env.push(("TRIBUTARY_SPEED__URL", &speed.base));
    let serve = Tributary::start_role(dir.path(), &config, "serve", &serve_env).await;
    // Every role answers the orchestrator's readiness probe (deploy/k8s/), serve once
    // it has caught up.
    for role in [&ingest, &speed, &batch, &batch2, &serve] {
        role.wait_for("/ready", |_| true).await;
    }

    // Over HTTP to the ingest process, and straight into the topic.
    let (status, report) = ingest
        .post(
            "readings",
            &json!([
                {"device": "a", "device_type": "pump", "signal": 20.0, "ts": "2026-01-01T00:01:00Z"},
                {"device": "b", "device_type": "fan", "signal": 30.0, "ts": "2026-01-01T00:02:00Z"},
                {"device": "c", "device_type": "pump", "signal": 10.0, "ts": "2026-01-01T00:03:00Z"},
            ]),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()
        .unwrap();
    let direct = r#"{"device":"d","device_type":"pump","signal":40.0,"ts":"2026-01-01T00:04:00Z"}"#;
    let topic = format!("{prefix}readings");
    let record: FutureRecord<'_, (), str> = FutureRecord::to(&topic).partition(1).payload(direct);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap();

    let answer = serve.wait_for(VIEW, |v| total_readings(v) == 3).await;
    let rows = by_type(&answer);
    assert_eq!(rows["pump"], (30.0, 40.0, 2, "speed".into()), "{answer}");
    assert_eq!(rows["fan"], (30.0, 30.0, 1, "speed".into()), "{answer}");
    assert!(
        answer["freshness_ms"].is_i64(),
        "serving sees the speed process: {answer}"
    );

    // Kill the archiver mid-stream while events keep coming; restart it.
    let mut sent = 0;
    for i in 0..20 {
        let events: Vec<Value> = (0..20)
            .map(|j| json!({"device": format!("k{i}-{j}"), "device_type": "valve", "signal": 50.0, "ts": "2026-01-01T00:05:00Z"}))
            .collect();
        let (status, _) = ingest.post("readings", &Value::Array(events)).await;
        assert_eq!(status, 200);
        sent += 20;
        if i == 7 {
            batch.kill9();
        }
        if i == 12 {
            batch.restart().await;
        }
    }
    let want = 3 + sent;
    serve.wait_for(VIEW, |v| total_readings(v) == want).await;

    // Batch runs through `serve` until the batch layer covers everything.
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        serve.run_batch().await;
        let (_, a) = serve.get(VIEW).await;
        if by_type(&a).values().all(|r| r.3 == "batch") {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "batch never covered everything: {a}\n{}",
            batch.logs()
        );
    };
    let rows = by_type(&answer);
    assert_eq!(rows["pump"], (30.0, 40.0, 2, "batch".into()));
    assert_eq!(rows["valve"], (50.0, 50.0, sent, "batch".into()));
    assert_eq!(total_readings(&answer), want);

    // The master table: each event once (c is archived too: filters apply in views).
    let counts = match &root {
        None => master_counts(dir.path()).await,
        Some(root) => common::python_master_counts_s3(root),
    };
    assert_eq!(
        counts.len() as i64,
        want + 1,
        "{} distinct devices",
        counts.len()
    );
    assert!(
        counts.values().all(|n| *n == 1),
        "duplicates after the archiver kill"
    );

    // Both archivers held a share of the partitions at some point, and each resumed
    // from the master table whenever its share changed.
    let logs = batch2.logs();
    assert!(
        logs.contains("partitions=[0]") || logs.contains("partitions=[1]"),
        "the archivers never split the partitions:\n{logs}"
    );

    // The speed process released what the batch covers.
    let (_, stats) = serve.get("/api/v1/speed/stats").await;
    let segments: i64 = stats["views"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["segments"].as_i64().unwrap())
        .sum();
    assert!(
        segments <= 2,
        "speed segments kept after the batch run: {stats}"
    );
    drop(ingest);
    drop(speed);
}

#[tokio::test]
async fn with_tokens_the_speed_endpoint_needs_an_admin_token_which_serve_presents() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("roles-auth-{}-", std::process::id());
    let config = Tributary::configure_kafka(dir.path(), &prefix);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[auth]\ntokens = [\n  { name = \"reader\", token = \"reader-token-0123456789\", scopes = [\"read\"] },\n  \
         { name = \"ops\", token = \"admin-token-0123456789\", scopes = [\"admin\"] },\n]\n",
    );
    std::fs::write(&config, text).unwrap();
    let speed = Tributary::start_role(dir.path(), &config, "speed", &[]).await;
    let serve = Tributary::start_serve(dir.path(), &config, &speed).await;
    let stats = format!("{}/internal/v1/stats", speed.base);
    let status = |r: reqwest::Response| r.status().as_u16();
    let none = speed.client.get(&stats).send().await.unwrap();
    assert_eq!(status(none), 401);
    let reader = speed
        .client
        .get(&stats)
        .bearer_auth("reader-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(
        status(reader),
        403,
        "a read token cannot reach the internal endpoint"
    );
    let ops = speed
        .client
        .get(&stats)
        .bearer_auth("admin-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(status(ops), 200);
    // serve reaches the speed process with the admin token: a reader gets the view.
    let view = serve
        .client
        .get(format!("{}{VIEW}", serve.base))
        .bearer_auth("reader-token-0123456789")
        .send()
        .await
        .unwrap();
    let code = view.status().as_u16();
    let body: Value = view.json().await.unwrap();
    assert_eq!(code, 200, "{body}");

    // Tokens without admin: serve refuses to start, saying why.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replace("scopes = [\"admin\"]", "scopes = [\"ingest\"]");
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("TRIBUTARY_STORAGE_ROOT", dir.path().join("data"))
        .env("TRIBUTARY_HTTP__ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scope \"admin\""), "{stderr}");
}
