//! Batch runs on a Ballista cluster (a scheduler and two executors of this binary, on
//! loopback): the states written are those of a local run over the same files, full
//! and incremental runs keep the merged view exact, and an unreachable scheduler fails
//! the run with the reason while the view keeps its states.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::{Tributary, delta_rows, total_readings};
use serde_json::{Value, json};

const VIEW: &str = "/api/v1/views/signal_by_type";

fn readings(from: usize, n: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| {
                let device_type = ["pump", "fan", "valve"][i % 3];
                json!({"device": format!("d{}", i % 37), "device_type": device_type,
                       "signal": 14.0 + (i % 41) as f64 * 0.37,
                       "ts": format!("2026-01-0{}T{:02}:{:02}:00Z", 1 + i % 3, i % 24, i % 60)})
            })
            .collect(),
    )
}

/// Every row of the view's latest batch states, as text, in a fixed order.
async fn states(dir: &std::path::Path) -> Vec<Vec<String>> {
    delta_rows(
        &dir.join("data/views/signal_by_type"),
        "SELECT * FROM t ORDER BY 1, 2",
    )
    .await
}

async fn start(dir: &std::path::Path, env: &[(&'static str, String)]) -> Tributary {
    let config = Tributary::configure(dir, "");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Tributary::start_role(dir, &config, "up", &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_ballista_write_the_states_of_a_local_run() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 2);
    let mut t = start(dir.path(), &cluster.env()).await;
    let (status, report) = t.post("readings", &readings(0, 300)).await;
    assert_eq!(status, 200, "{report}");
    let accepted = report["accepted"].as_i64().unwrap();
    assert_eq!(accepted, 300);
    t.wait_for(VIEW, |v| total_readings(v) > 0).await;
    // The run's cutoff is aligned to the segment width (1 s): let one boundary pass.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let run = t.run_batch().await;
    assert_eq!(run["engine"], "ballista", "{run}\n{}", cluster.logs());
    assert_eq!(run["rows_in"], 300, "{run}");
    assert_cluster_usage(&run, 2);
    let (_, view) = t.get(VIEW).await;
    let merged = total_readings(&view);
    assert!(
        view["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["_source"] == "batch"),
        "every event is below the cutoff: {view}"
    );

    // Incremental: only the new events go to the cluster, merged into the states.
    let (status, report) = t.post("readings", &readings(300, 60)).await;
    assert_eq!(status, 200, "{report}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let run = t.run_batch_kind("incremental").await;
        assert_eq!(run["engine"], "ballista", "{run}");
        if run["rows_in"] == 60 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{run}");
    }
    let after = t
        .wait_for(VIEW, |v| total_readings(v) == counted(360))
        .await;
    assert_eq!(merged, counted(300), "{view}");

    // A full run on the cluster, then the same table recomputed in this process.
    let run = t.run_batch().await;
    assert_eq!(
        (&run["engine"], &run["rows_in"]),
        (&json!("ballista"), &json!(360)),
        "{run}"
    );
    let on_ballista = states(dir.path()).await;
    assert!(!on_ballista.is_empty());
    t.terminate();
    let local = start(dir.path(), &[]).await;
    let run = local.run_batch().await;
    assert_eq!(
        (&run["engine"], &run["rows_in"]),
        (&json!("local"), &json!(360)),
        "{run}"
    );
    assert_same_states(&states(dir.path()).await, &on_ballista);
    let (_, view) = local.get(VIEW).await;
    assert_eq!(total_readings(&view), total_readings(&after));
    drop(cluster);
}

/// The run's record says what ran where: two jobs per view (states and meter), each
/// task by one of the cluster's executors, none falling back.
fn assert_cluster_usage(run: &Value, executors: usize) {
    let usage = &run["cluster"];
    let views = run["views"].as_array().unwrap().len() as u64;
    assert_eq!(usage["jobs"].as_u64(), Some(2 * views), "{run}");
    let tasks = usage["tasks"].as_object().expect("tasks by executor");
    assert!(!tasks.is_empty() && tasks.len() <= executors, "{run}");
    let total: u64 = tasks.values().map(|n| n.as_u64().unwrap()).sum();
    // Each view's states job has one task per file group (4 here), the meter one.
    assert!(total >= 2 * views, "{run}");
    assert!(usage.get("fell_back").is_none(), "{run}");
}

/// Events of `readings(0, n)` the view counts (`signal > 15`).
fn counted(n: usize) -> i64 {
    (0..n)
        .filter(|i| 14.0 + (i % 41) as f64 * 0.37 > 15.0)
        .count() as i64
}

/// The same states cell for cell: counts, maxima, keys and windows exactly; a float
/// sum may differ in its last bits only, since its addition order follows the scan's
/// split into partitions (8 tasks on the cluster, one per core here), as between any
/// two local runs on machines with different core counts.
fn assert_same_states(local: &[Vec<String>], cluster: &[Vec<String>]) {
    assert_eq!(local.len(), cluster.len(), "{local:?}\n{cluster:?}");
    for (l, c) in local.iter().zip(cluster) {
        assert_eq!(l.len(), c.len());
        for (a, b) in l.iter().zip(c) {
            if a == b {
                continue;
            }
            let (x, y): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
            assert!(
                (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                "local {l:?} vs cluster {c:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_scheduler_fails_the_run_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = format!("127.0.0.1:{}", common::free_port());
    let env = vec![
        ("TRIBUTARY_BATCH__ENGINE", "ballista".to_string()),
        ("TRIBUTARY_BATCH__BALLISTA__SCHEDULER", nobody.clone()),
    ];
    let t = start(dir.path(), &env).await;
    let (status, _) = t.post("readings", &readings(0, 10)).await;
    assert_eq!(status, 200);
    t.wait_for(VIEW, |v| total_readings(v) > 0).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let started = std::time::Instant::now();
    let (status, run) = t.post_path("/api/v1/batch/runs?wait=true&kind=full").await;
    assert_eq!(run["status"], "failed", "{status} {run}");
    assert_eq!(run["engine"], "ballista", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains(&nobody),
        "the error names the scheduler: {error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed fast: {:?}",
        started.elapsed()
    );
    // The merged view still answers (from the speed layer), exactly.
    let (_, view) = t.get(VIEW).await;
    assert!(total_readings(&view) > 0, "{view}");
    drop(t);

    // Told to, a run falls back to this process, and its record says why.
    let mut env = env;
    env.push((
        "TRIBUTARY_BATCH__BALLISTA__FALLBACK_TO_LOCAL",
        "true".into(),
    ));
    let t = start(dir.path(), &env).await;
    let run = t.run_batch().await;
    assert_eq!(
        (&run["engine"], &run["rows_in"]),
        (&json!("local"), &json!(10)),
        "{run}"
    );
    let why = run["cluster"]["fell_back"].as_str().unwrap_or_default();
    assert!(why.contains(&nobody), "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_lost_mid_run_never_half_writes_a_view() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 2);
    let mut env = cluster.env();
    env.push(("TRIBUTARY_BATCH__BALLISTA__JOB_TIMEOUT_MS", "60000".into()));
    let t = start(dir.path(), &env).await;
    let (status, report) = t.post("readings", &readings(0, 600)).await;
    assert_eq!(status, 200, "{report}");
    t.wait_for(VIEW, |v| total_readings(v) > 0).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let run = t.run_batch().await;
    assert_eq!(run["rows_in"], 600, "{run}\n{}", cluster.logs());
    let before = states(dir.path()).await;
    let (status, report) = t.post("readings", &readings(600, 60)).await;
    assert_eq!(status, 200, "{report}");
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // Executor 0 stops answering while the run's tasks are handed out, then dies.
    cluster.signal_executor(0, "STOP");
    let run = {
        let base = t.base.clone();
        let run = tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}/api/v1/batch/runs?wait=true&kind=full"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.signal_executor(0, "KILL");
        run.await.unwrap()
    };
    // Whether the scheduler had handed executor 0 a task it then gave to executor 1.
    let moved = cluster.logs().matches("on lost Executor").count();
    eprintln!("run with executor 0 lost: {run}; tasks moved off it: {moved}");
    match run["status"].as_str() {
        // Its tasks ran again on executor 1: the states cover every event.
        Some("succeeded") => {
            assert_eq!(run["rows_in"], 660, "{run}");
            t.wait_for(VIEW, |v| total_readings(v) == counted(660))
                .await;
        }
        // Or the run failed, saying so, and wrote nothing.
        Some("failed") => {
            let error = run["error"].as_str().unwrap();
            assert!(error.contains("job"), "{error}");
            assert_eq!(states(dir.path()).await, before, "the view kept its states");
        }
        _ => panic!("{run}\n{}", cluster.logs()),
    }

    // With a new executor the next run covers every event.
    cluster.add_executor();
    let run = t.run_batch().await;
    assert_eq!(
        (&run["status"], &run["rows_in"]),
        (&json!("succeeded"), &json!(660)),
        "{run}\n{}",
        cluster.logs()
    );
    let (_, view) = t.get(VIEW).await;
    assert_eq!(total_readings(&view), counted(660), "{view}");
}
