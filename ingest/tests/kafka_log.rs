//! The Kafka log against a real Kafka-protocol broker (tansu, started by
//! deploy/test.sh; its address in KAFKA_TEST_BROKERS). Fails, never skips, without one.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tributary_core::config::LogConfig;
use tributary_core::log::EventLog;
use tributary_ingest::log::conformance;
use tributary_ingest::log::kafka::{KafkaLog, TICK_HEADER, TRUSTED_HEADER};

fn brokers() -> String {
    std::env::var("KAFKA_TEST_BROKERS").expect(
        "KAFKA_TEST_BROKERS is not set: these tests need a Kafka-protocol broker; \
         ./deploy/test.sh installs and starts tansu",
    )
}

fn config(prefix: &str) -> LogConfig {
    LogConfig {
        brokers: brokers(),
        topic_prefix: format!("{prefix}-{}.", std::process::id()),
        max_timestamp_lead_ms: 60_000,
        ..LogConfig::default()
    }
}

async fn raw_send(
    cfg: &LogConfig,
    topic: &str,
    partition: i32,
    ts_ms: i64,
    headers: &[&str],
    payload: &str,
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .create()
        .unwrap();
    let mut h = OwnedHeaders::new();
    for key in headers {
        h = h.insert(Header {
            key,
            value: Some("1"),
        });
    }
    let record: FutureRecord<'_, (), str> = FutureRecord::to(topic)
        .partition(partition)
        .payload(payload)
        .timestamp(ts_ms)
        .headers(h);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap();
}

#[tokio::test]
async fn kafka_log_passes_the_shared_suite() {
    let log = KafkaLog::open(config("suite"), &[("s".into(), 2)])
        .await
        .unwrap();
    conformance::run_all(&log).await;
}

#[tokio::test]
async fn existing_topic_with_other_partition_count_is_refused() {
    let cfg = config("mismatch");
    KafkaLog::open(cfg.clone(), &[("s".into(), 2)])
        .await
        .unwrap();
    let err = KafkaLog::open(cfg, &[("s".into(), 3)])
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("has 2 partitions") && err.contains("declares 3"),
        "{err}"
    );
}

#[tokio::test]
async fn direct_records_future_stamps_and_ticks_derive_as_documented() {
    let cfg = config("derive");
    let log = KafkaLog::open(cfg.clone(), &[("s".into(), 1)])
        .await
        .unwrap();
    let topic = cfg.topic("s");
    // Tributary's own record sets the trusted clock.
    log.append("s", 0, vec![b"{\"a\":1}".to_vec()])
        .await
        .unwrap();
    let first = log.read("s", 0, 0, 10).await.unwrap();
    let t0 = first.records[0].ingest_ts;
    // A direct producer stamping the year 2100 moves ingest time at most the lead ahead.
    raw_send(&cfg, &topic, 0, 4_102_444_800_000, &[], "{\"a\":2}").await;
    // A direct producer with a clock behind: held at the running maximum.
    raw_send(&cfg, &topic, 0, 1_000, &[], "{\"a\":3}").await;
    // A tick: skipped by readers, but it moves the partition on.
    raw_send(
        &cfg,
        &topic,
        0,
        (t0 / 1000) + 1,
        &[TRUSTED_HEADER, TICK_HEADER],
        "",
    )
    .await;
    let all = log.read("s", 0, 0, 10).await.unwrap();
    assert_eq!(
        all.records.len(),
        3,
        "the tick is not an event: {:?}",
        all.records
    );
    assert_eq!(all.next_offset, 4, "the next read starts after the tick");
    assert_eq!(
        all.records[1].ingest_ts,
        t0 + 60_000_000,
        "capped at trusted + lead"
    );
    assert_eq!(all.records[2].ingest_ts, t0 + 60_000_000, "never decreases");
    // Reading again from the middle derives the same values (a fresh cursor too).
    let again = KafkaLog::open(cfg.clone(), &[("s".into(), 1)])
        .await
        .unwrap();
    let mid = again.read("s", 0, 2, 10).await.unwrap();
    assert_eq!(mid.records[0].ingest_ts, all.records[2].ingest_ts);
    // The bound at the end is the running maximum; before the first record, its stamp.
    assert_eq!(
        again.ingest_ts_bound("s", 0, 4).await.unwrap(),
        t0 + 60_000_000
    );
    assert_eq!(again.ingest_ts_bound("s", 0, 0).await.unwrap(), t0);
    // Ticks through the log API reach every partition.
    log.tick().await.unwrap();
    assert_eq!(log.end_offset("s", 0).await.unwrap(), 5);
}

#[tokio::test]
async fn records_carry_their_key() {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use tributary_core::log::NewRecord;
    let cfg = config("keys");
    let log = KafkaLog::open(cfg.clone(), &[("s".into(), 1)])
        .await
        .unwrap();
    log.append_records(
        "s",
        0,
        vec![NewRecord {
            key: Some(b"pump-7".to_vec()),
            payload: b"{}".to_vec(),
        }],
    )
    .await
    .unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", "key-check")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&cfg.topic("s"), 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let msg = consumer
        .poll(Duration::from_secs(10))
        .expect("a record within 10 s")
        .unwrap();
    assert_eq!(msg.key(), Some(&b"pump-7"[..]));
}

#[tokio::test]
async fn a_restarted_reader_starts_from_the_newest_derivation_checkpoint() {
    let cfg = config("checkpoint");
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("kafka-derivation");
    let opened = || async {
        KafkaLog::open(cfg.clone(), &[("s".into(), 1)])
            .await
            .unwrap()
    };
    // Tributary's clock and direct records far in the future and behind, so the
    // derivation is more than the record timestamps; a tick after each round (where
    // checkpoints go).
    let log = opened()
        .await
        .with_checkpoints(checkpoints.clone(), Duration::ZERO);
    let topic = cfg.topic("s");
    for i in 0..5 {
        let records = (0..80).map(|j| format!("{{\"i\":{}}}", i * 100 + j).into_bytes());
        log.append("s", 0, records.collect()).await.unwrap();
        raw_send(&cfg, &topic, 0, 4_102_444_800_000, &[], "{\"future\":1}").await;
        raw_send(&cfg, &topic, 0, 1_000, &[], "{\"past\":1}").await;
        log.tick().await.unwrap();
    }
    // One pass in reads of 100: each keeps a checkpoint after the last tick it passed.
    let mut truth = Vec::new();
    let mut from = 0;
    while from < 415 {
        let batch = log.read("s", 0, from, 100).await.unwrap();
        truth.extend(batch.records.iter().map(|r| (r.offset, r.ingest_ts)));
        from = batch.next_offset;
    }
    assert_eq!(truth.len(), 410, "five ticks are not events");
    let after = |from: u64| -> Vec<(u64, i64)> {
        truth.iter().copied().filter(|(o, _)| *o >= from).collect()
    };

    // A restarted process reading from 300 starts at the tick before it (offset 249):
    // it replays about 50 records; a process without checkpoints replays all 300.
    let restarted = opened()
        .await
        .with_checkpoints(checkpoints.clone(), Duration::ZERO);
    let plain = opened().await;
    for reader in [&restarted, &plain] {
        let mid = reader.read("s", 0, 300, 200).await.unwrap();
        let got: Vec<(u64, i64)> = mid
            .records
            .iter()
            .map(|r| (r.offset, r.ingest_ts))
            .collect();
        assert_eq!(got, after(300), "the same _ingest_ts either way");
    }
    assert_eq!(
        restarted.replayed(),
        300 - 249,
        "from the tick at offset 248"
    );
    assert_eq!(plain.replayed(), 300);
    // Finding where an ingest time starts: the same answer, without the replay.
    let ts = truth[240].1;
    let restarted = opened()
        .await
        .with_checkpoints(checkpoints.clone(), Duration::ZERO);
    let at = restarted.offset_for_ingest_ts("s", 0, ts).await.unwrap();
    assert_eq!(at, plain.offset_for_ingest_ts("s", 0, ts).await.unwrap());
    assert_eq!(at, truth.iter().find(|(_, t)| *t >= ts).unwrap().0);

    // A checkpoint that no longer matches the topic (as after it was deleted and
    // created again) is dropped, and the reader replays: still the same values.
    let file = checkpoints.join(format!("{topic}-0.json"));
    let mut points: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    for p in &mut points {
        p["last_ts_ms"] = serde_json::json!(7);
    }
    std::fs::write(&file, serde_json::to_vec(&points).unwrap()).unwrap();
    let stale = opened()
        .await
        .with_checkpoints(checkpoints.clone(), Duration::ZERO);
    let mid = stale.read("s", 0, 300, 200).await.unwrap();
    let got: Vec<(u64, i64)> = mid
        .records
        .iter()
        .map(|r| (r.offset, r.ingest_ts))
        .collect();
    assert_eq!(got, after(300));
    assert_eq!(stale.replayed(), 300);
    assert_eq!(
        stale.offset_for_ingest_ts("s", 0, ts).await.unwrap(),
        at,
        "a stale checkpoint never shortens the scan"
    );
}
