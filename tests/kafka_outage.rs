//! Stopping the broker during ingest: requests get 503 with a retry hint instead of
//! hanging, no acknowledged event is lost, and everything resumes once the broker is
//! back, without restarting Tributary. Runs its own tansu (TANSU_BIN, provided by
//! deploy/test.sh) with SQLite storage so the broker keeps its data across the stop.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Tributary, total_readings};
use serde_json::{Value, json};

fn tansu(port: u16, db: &std::path::Path) -> Child {
    let bin = std::env::var("TANSU_BIN").expect(
        "TANSU_BIN is not set: this test starts and stops its own Kafka-protocol broker; \
         ./deploy/test.sh installs tansu and sets it",
    );
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .arg("--storage-engine")
        // tansu resolves the SQLite path against its working directory.
        .arg(format!(
            "sqlite://{}",
            db.file_name().unwrap().to_string_lossy()
        ))
        .current_dir(db.parent().unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting tansu");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn stop(mut broker: Child) {
    Command::new("kill")
        .arg("-TERM")
        .arg(broker.id().to_string())
        .status()
        .unwrap();
    broker.wait().unwrap();
}

fn events(from: usize, n: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| json!({"device": format!("o{i}"), "device_type": "pump", "signal": 50.0, "ts": "2026-01-01T00:00:00Z"}))
            .collect(),
    )
}

#[tokio::test]
async fn broker_outage_gives_503_and_resumes_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let db = dir.path().join("tansu.db");
    let broker = tansu(port, &db);
    let extra = format!(
        "[log]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:{port}\"\nproduce-timeout-ms = 2000\ntick-interval-ms = 200"
    );
    let t = Tributary::start(dir.path(), &extra).await;

    let (status, _) = t.post("readings", &events(0, 50)).await;
    assert_eq!(status, 200);
    let mut acked = 50;
    // Events of requests answered 503: the log may hold some of them, never more.
    let mut refused = 0;
    t.wait_for("/api/v1/views/signal_by_type", |v| total_readings(v) == 50)
        .await;

    stop(broker);
    // While the broker is down: a clear 503 with a retry hint, quickly, never a hang.
    let started = Instant::now();
    let resp = t
        .client
        .post(format!("{}/api/v1/streams/readings/events", t.base))
        .json(&events(1000, 25))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("event log"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    refused += 25;
    assert_eq!(t.get("/health").await.0, 200, "the process stays up");

    // The broker comes back on the same address with its data: ingest resumes.
    let broker = tansu(port, &db);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = 2000;
    loop {
        let (status, body) = t.post("readings", &events(next, 25)).await;
        next += 25;
        if status == 200 {
            acked += 25;
            break;
        }
        assert_eq!(status, 503);
        refused += 25;
        assert!(
            Instant::now() < deadline,
            "ingest did not resume: {body}\n{}",
            t.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (status, _) = t.post("readings", &events(next, 25)).await;
    assert_eq!(status, 200);
    acked += 25;

    // Every acknowledged event reaches the view (the 503 request may or may not have
    // been stored in part: the view holds at least the acknowledged ones).
    let answer = t
        .wait_for("/api/v1/views/signal_by_type", |v| {
            total_readings(v) >= acked
        })
        .await;
    assert!(total_readings(&answer) <= acked + refused, "{answer}");
    drop(t);
    stop(broker);
}
