//! Several speed and serving processes on a real Kafka-protocol broker (tansu, started
//! by deploy/test.sh), beside two `ingest` and two `batch` processes: two `speed`
//! processes share the stream's partitions
//! (`speed.shard` 0/2 and 1/2), two `serve` processes gather both, and every answer is
//! checked against DataFusion's one-pass answer over the accepted events. One speed
//! process is SIGKILLed mid-stream: while its partition has no caught-up holder every
//! answer names it as missing and calls no window complete, and none ever counts an
//! event twice; once it has rebuilt, both serving processes are exact. A batch run
//! through one serving process moves the cutoff and releases speed segments; the other,
//! still on the older batch view, is refused the released states and reloads instead of
//! answering short. One serving process is SIGKILLed; the other answers on.

// A scenario test reads top to bottom as one story against running processes.
#![allow(clippy::too_many_lines)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::views::{Row, api_rows, pipeline, reference, same_rows};
use common::{IOT_STREAM, Tributary, kafka_brokers};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tributary_core::pipeline::Pipeline;

const VIEW: &str = "/api/v1/views/signal_by_type";

/// Event `i`: three device types, signals on both sides of the view's filter, event
/// times over an hour (several windows).
fn event(i: usize) -> Value {
    let device_type = ["pump", "fan", "valve"][i % 3];
    json!({
        "device": format!("d{}", i % 37),
        "device_type": device_type,
        "signal": (i % 40) as f64 + 0.5,
        "ts": format!("2026-01-01T00:{:02}:{:02}Z", (i / 7) % 60, i % 60),
    })
}

/// How one sampled answer relates to the reference over every accepted event.
fn check(p: &Pipeline, want: &[Row], answer: &Value, context: &str) -> Result<bool, String> {
    let view = p.view("signal_by_type").unwrap();
    let got = api_rows(&view, answer);
    let missing = answer["speed_missing_partitions"]
        .as_array()
        .ok_or_else(|| format!("{context}: no speed_missing_partitions in {answer}"))?;
    // Never more than the reference: an event counted twice would show here.
    for row in &got {
        let twin = want.iter().find(|w| {
            w["device_type"] == row["device_type"] && w["window_start"] == row["window_start"]
        });
        let Some(twin) = twin else {
            return Err(format!("{context}: a row the reference has not: {row:?}"));
        };
        if row["readings"].as_i64() > twin["readings"].as_i64() {
            return Err(format!("{context}: {row:?} counts more than {twin:?}"));
        }
    }
    if !missing.is_empty() {
        if got.iter().any(|r| r["complete"] == true) {
            return Err(format!(
                "{context}: partitions {missing:?} missing, yet a window is complete: {answer}"
            ));
        }
        return Ok(false);
    }
    Ok(same_rows(context, &got, want).is_ok())
}

/// Sample `serve` until an answer is whole and exact; every answer on the way must
/// pass [`check`]. Returns how many answers named missing partitions.
async fn until_exact(p: &Pipeline, want: &[Row], serve: &Tributary, context: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut flagged = 0;
    loop {
        let (status, answer) = serve.get(VIEW).await;
        if status == 200 {
            match check(p, want, &answer, context) {
                Ok(true) => return flagged,
                Ok(false) => {
                    flagged += usize::from(answer["speed_missing_partitions"] != json!([]))
                }
                Err(e) => panic!("{e}\n{}", serve.logs()),
            }
        } else {
            // The only refusal allowed: a speed process down with the others (503).
            assert_eq!(status, 503, "{context}: {answer}");
        }
        assert!(
            Instant::now() < deadline,
            "{context}: never exact; last answer {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The partitions each speed process holds, as serving's status reports them.
async fn partitions_of(serve: &Tributary) -> Vec<(String, Vec<u64>)> {
    let (_, stats) = serve.get("/api/v1/speed/stats").await;
    stats["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("no shards in {stats}"))
        .iter()
        .map(|s| {
            let held = s["partitions"]["readings"]
                .as_array()
                .map(|a| a.iter().map(|p| p.as_u64().unwrap()).collect())
                .unwrap_or_default();
            (s["shard"].as_str().unwrap().to_string(), held)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_speed_and_two_serving_processes_stay_exact_through_kills() {
    let p = pipeline(&format!("storage-root = 'x'\n{IOT_STREAM}")).await;
    let view = p.view("signal_by_type").unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("shards-{}-", std::process::id());
    let config = Tributary::configure_kafka(dir.path(), &prefix);
    // Two of every role: ingest processes share the load, archivers the partitions.
    let mut ingests = Vec::new();
    let mut batches = Vec::new();
    for _ in 0..2 {
        ingests.push(Tributary::start_role(dir.path(), &config, "ingest", &[]).await);
        batches.push(Tributary::start_role(dir.path(), &config, "batch", &[]).await);
    }
    let mut speeds = Vec::new();
    for shard in ["0/2", "1/2"] {
        let env = [("TRIBUTARY_SPEED__SHARD", shard)];
        speeds.push(Tributary::start_role(dir.path(), &config, "speed", &env).await);
    }
    let urls = format!("[\"{}\", \"{}\"]", speeds[0].base, speeds[1].base);
    // Serve B looks for new batch views only once a minute: it learns of the run
    // serve A starts from the speed layer's refusal alone.
    let mut serve_a = Tributary::start_role(
        dir.path(),
        &config,
        "serve",
        &[("TRIBUTARY_SPEED__URLS", &urls)],
    )
    .await;
    let serve_b = Tributary::start_role(
        dir.path(),
        &config,
        "serve",
        &[
            ("TRIBUTARY_SPEED__URLS", &urls),
            ("TRIBUTARY_BATCH__VIEW_POLL_MS", "60000"),
        ],
    )
    .await;
    for role in ingests.iter().chain(&batches).chain(&speeds) {
        role.wait_for("/ready", |_| true).await;
    }
    for role in [&serve_a, &serve_b] {
        role.wait_for("/ready", |_| true).await;
    }
    let held = partitions_of(&serve_a).await;
    eprintln!("speed processes' partitions: {held:?}");
    assert_eq!(
        held,
        [("0/2".to_string(), vec![0]), ("1/2".to_string(), vec![1])]
    );

    // Events over HTTP, and straight into each partition of the topic.
    let mut accepted: Vec<Value> = Vec::new();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()
        .unwrap();
    let topic = format!("{prefix}readings");
    let post = |from: usize, n: usize| (from..from + n).map(event).collect::<Vec<_>>();
    for round in 0..4 {
        let events = post(round * 50, 50);
        let ingest = &ingests[round % 2];
        let (status, report) = ingest.post("readings", &Value::Array(events.clone())).await;
        assert_eq!(status, 200, "{report}");
        accepted.extend(events);
    }
    for i in 0..10 {
        let e = event(1000 + i);
        let payload = e.to_string();
        let record: FutureRecord<'_, (), str> = FutureRecord::to(&topic)
            .partition((i % 2) as i32)
            .payload(&payload);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
        accepted.push(e);
    }
    let want = reference(&p, &view, &accepted).await;
    for serve in [&serve_a, &serve_b] {
        until_exact(&p, &want, serve, "both speed processes up").await;
    }

    // Unchanged states are not sent again: asked with the generation it gave, a speed
    // process answers with that generation and no states.
    let states = format!("{}/internal/v1/views/signal_by_type/states", speeds[1].base);
    let first = reqwest::get(&states).await.unwrap();
    let generation = first.headers()["x-tributary-generation"]
        .to_str()
        .unwrap()
        .to_string();
    let full = first.bytes().await.unwrap().len();
    let again = reqwest::get(format!("{states}?known={generation}"))
        .await
        .unwrap();
    assert_eq!(
        again.headers()["x-tributary-generation"],
        generation.as_str()
    );
    let empty = again.bytes().await.unwrap().len();
    assert!(empty < full, "{empty} bytes again, {full} the first time");

    // From here to the end a sampler asks both serving processes all the time; every
    // answer is checked at the end against the reference over every accepted event
    // (events only accumulate, so no answer may ever count more than it).
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let bases = [serve_a.base.clone(), serve_b.base.clone()];
        let stop = stop.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut sampled = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for base in &bases {
                    let Ok(r) = client.get(format!("{base}{VIEW}")).send().await else {
                        continue;
                    };
                    if r.status() == 200
                        && let Ok(answer) = r.json::<Value>().await
                    {
                        sampled.push(answer);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sampled
        })
    };

    // SIGKILL speed 0 mid-stream: events keep coming while it is down and rebuilding.
    speeds[0].kill9();
    let killed = Instant::now();
    for round in 4..8 {
        let events = post(round * 50, 50);
        let ingest = &ingests[round % 2];
        let (status, report) = ingest.post("readings", &Value::Array(events.clone())).await;
        assert_eq!(status, 200, "{report}");
        accepted.extend(events);
        let (status, answer) = serve_b.get(VIEW).await;
        if status == 200 {
            let missing = &answer["speed_missing_partitions"];
            assert_eq!(missing, &json!([0]), "speed 0 is down: {answer}");
            check(
                &p,
                &reference(&p, &view, &accepted).await,
                &answer,
                "speed 0 down",
            )
            .unwrap();
        }
    }
    speeds[0].restart_same_port().await;
    let want = reference(&p, &view, &accepted).await;
    let flagged = until_exact(&p, &want, &serve_a, "speed 0 rebuilding").await;
    eprintln!(
        "speed 0 recovered {:?} after its kill ({flagged} answers on the way named its partition)",
        killed.elapsed()
    );
    until_exact(&p, &want, &serve_b, "speed 0 back").await;
    let (_, stats) = serve_a.get("/api/v1/speed/stats").await;
    eprintln!("recovery: {}", stats["shards"]);

    // A batch run through serve A moves the cutoff and releases speed segments; serve
    // B, still holding the older batch view, reloads when the speed layer refuses it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let run = serve_a.run_batch().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    // Serve A loads the new batch view and releases the speed segments it covers.
    let cutoff = run["cutoff_micros"].as_i64().expect("the run's cutoff");
    for speed in &speeds {
        speed
            .wait_for("/internal/v1/stats", |st| {
                st["views"][0]["cutoff"].as_i64() == Some(cutoff)
            })
            .await;
    }
    let (_, a) = serve_a.get(VIEW).await;
    let (status, b) = serve_b.get(VIEW).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(a["batch_version"], b["batch_version"], "{a}\n{b}");
    assert!(
        serve_b.logs().contains("loading the newer batch view"),
        "serve B did not learn of the run from the speed layer's refusal"
    );
    for (answer, name) in [(&a, "serve A after the run"), (&b, "serve B after the run")] {
        assert!(check(&p, &want, answer, name).unwrap(), "{name}: {answer}");
    }
    let sources: BTreeSet<&str> = b["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["_source"].as_str().unwrap())
        .collect();
    assert!(sources.contains("batch"), "{b}");

    // SIGKILL serve A: serve B answers on, exactly, with events still coming.
    serve_a.kill9();
    let events = post(2000, 40);
    let (status, report) = ingests[1]
        .post("readings", &Value::Array(events.clone()))
        .await;
    assert_eq!(status, 200, "{report}");
    accepted.extend(events);
    let want = reference(&p, &view, &accepted).await;
    until_exact(&p, &want, &serve_b, "serve A killed").await;
    serve_a.restart().await;
    until_exact(&p, &want, &serve_a, "serve A restarted").await;

    stop.store(true, Ordering::Relaxed);
    let sampled = sampler.await.unwrap();
    let mut flagged = 0;
    for answer in &sampled {
        match check(&p, &want, answer, "sampled") {
            Ok(_) => flagged += usize::from(answer["speed_missing_partitions"] != json!([])),
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!(
        "{} answers sampled, {flagged} of them naming missing partitions, none wrong",
        sampled.len()
    );
    assert!(flagged > 0, "the sampler never saw speed 0 missing");
}

#[tokio::test]
async fn a_process_cannot_both_serve_and_hold_a_speed_shard() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("shards-up-{}-", std::process::id());
    let config = Tributary::configure_kafka(dir.path(), &prefix);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("--config")
        .arg(&config)
        .arg("up")
        .env("TRIBUTARY_SPEED__SHARD", "1/2")
        .env("TRIBUTARY_STORAGE_ROOT", dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("speed.shard = \"1/2\""), "{stderr}");
    assert!(stderr.contains("speed.urls"), "{stderr}");
}
