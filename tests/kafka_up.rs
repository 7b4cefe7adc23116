//! `tributary up` on a real Kafka-protocol broker (tansu, started by deploy/test.sh;
//! address in KAFKA_TEST_BROKERS): HTTP events and records written straight into the
//! topic end up in the view exactly once, invalid direct records in the dead letters,
//! and a SIGKILL loses or duplicates nothing.

// A scenario test reads top to bottom as one story against one running process.
#![allow(clippy::too_many_lines)]

mod common;

use std::time::{Duration, Instant};

use common::{Tributary, delta_rows, kafka_brokers, master_counts, total_readings};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

const VIEW: &str = "/api/v1/views/signal_by_type";

async fn produce_direct(topic: &str, payload: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()
        .unwrap();
    let record: FutureRecord<'_, (), str> = FutureRecord::to(topic).partition(0).payload(payload);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap();
}

#[tokio::test]
async fn up_on_kafka_counts_http_and_direct_records_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("e2e-{}-", std::process::id());
    let extra = format!(
        "[log]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopic-prefix = \"{prefix}\"\ntick-interval-ms = 200",
        kafka_brokers()
    );
    let mut t = Tributary::start(dir.path(), &extra).await;
    let topic = format!("{prefix}readings");

    let events = json!([
        {"device": "h1", "device_type": "pump", "signal": 20.0, "ts": "2026-01-01T00:01:00Z"},
        {"device": "h2", "device_type": "pump", "signal": 40.0, "ts": "2026-01-01T00:02:00Z"},
    ]);
    let (status, report) = t.post("readings", &events).await;
    assert_eq!(status, 200, "{report}");
    produce_direct(
        &topic,
        r#"{"device":"k1","device_type":"pump","signal":60.0,"ts":"2026-01-01T00:03:00Z"}"#,
    )
    .await;
    produce_direct(
        &topic,
        r#"{"device":"k2","device_type":"pump","signal":"loud","ts":"2026-01-01T00:03:00Z"}"#,
    )
    .await;

    let answer = t.wait_for(VIEW, |v| total_readings(v) == 3).await;
    let row = &answer["rows"][0];
    assert_eq!(row["avg_signal"], 40.0);
    assert_eq!(row["max_signal"], 60.0);
    assert_eq!(row["_source"], "speed");

    // A batch run takes everything over once the archiver and ticks have moved on.
    let mut answer = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        t.run_batch().await;
        answer = t.get(VIEW).await.1;
        if answer["rows"][0]["_source"] == "batch" {
            break;
        }
    }
    assert_eq!(
        answer["rows"][0]["_source"],
        "batch",
        "{answer}\n{}",
        t.logs()
    );
    assert_eq!(total_readings(&answer), 3);
    assert_eq!(answer["rows"][0]["avg_signal"], 40.0);

    // SIGKILL mid-stream, restart: the master table holds every acknowledged event once.
    let mut acked = 0;
    for i in 0..20 {
        let batch: Vec<Value> = (0..25)
            .map(|j| json!({"device": format!("b{i}-{j}"), "device_type": "fan", "signal": 16.0, "ts": "2026-01-01T00:05:00Z"}))
            .collect();
        let (status, _) = t.post("readings", &Value::Array(batch)).await;
        assert_eq!(status, 200);
        acked += 25;
        if i == 10 {
            t.kill9();
            t.restart().await;
        }
    }
    let want = 3 + acked;
    let answer = t.wait_for(VIEW, |v| total_readings(v) == want).await;
    assert_eq!(total_readings(&answer), want);

    let deadline = Instant::now() + Duration::from_secs(60);
    let counts = loop {
        let counts = master_counts(dir.path()).await;
        if counts.len() as i64 >= want {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "archiver did not catch up: {} of {want}\n{}",
            counts.len(),
            t.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        counts.values().all(|n| *n == 1),
        "duplicates: {:?}",
        counts.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    assert!(
        !counts.contains_key("k2"),
        "the invalid direct record is not archived"
    );

    // The invalid direct record is a dead letter with its reason and position (in
    // Delta once the spool is flushed, which the listing does).
    t.wait_for("/api/v1/streams/readings/dead-letters", |l| l["total"] == 1)
        .await;
    let letters: Vec<String> = delta_rows(
        &dir.path().join("data/dead_letters/readings"),
        "SELECT field, reason FROM t",
    )
    .await
    .into_iter()
    .map(|r| r.join(" | "))
    .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].contains("signal") && letters[0].contains("offset"),
        "{letters:?}"
    );
}
