//! Tributary with every table in an object store: a real S3-protocol server (SeaweedFS,
//! installed and started by deploy/test.sh; endpoint and credentials in `S3_TEST_*`).
//! The same guarantees as on local disk: every acknowledged event once in the master
//! table through SIGKILLs (read back by the independent Python reader), exact views
//! after full and incremental runs, SQL and time travel, maintenance, dead letters,
//! backfill from an S3 source; and
//! the store's put-if-absent, on
//! which every Delta commit relies, lets exactly one of racing commits win.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{Tributary, python_master_counts_s3, s3, total_readings};
use serde_json::{Value, json};

const VIEW: &str = "/api/v1/views/signal_by_type";

fn readings(from: usize, n: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| {
                let device_type = ["pump", "fan"][i % 2];
                json!({"device": format!("s{i:05}"), "device_type": device_type,
                       "signal": 20.0 + (i % 50) as f64,
                       "ts": format!("2026-01-01T00:{:02}:00Z", i % 60)})
            })
            .collect(),
    )
}

/// A prefix of its own in the bucket for each test run.
fn fresh_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

async fn start_on_s3(dir: &Path, root: &str) -> Tributary {
    let extra = s3().storage_section(&dir.join("local"));
    let config = Tributary::configure(dir, &extra);
    Tributary::start_role(dir, &config, "up", &[("TRIBUTARY_STORAGE_ROOT", root)]).await
}

#[tokio::test]
async fn up_on_s3_archives_every_event_once_through_sigkills_and_serves_exact_views() {
    let dir = tempfile::tempdir().unwrap();
    let root = format!("s3://{}/{}", s3().bucket, fresh_prefix("up"));
    let mut t = start_on_s3(dir.path(), &root).await;
    let mut acked = BTreeSet::new();
    let mut next = 0;
    for round in 0..3 {
        for _ in 0..4 {
            let (status, report) = t.post("readings", &readings(next, 50)).await;
            assert_eq!(status, 200, "{report}");
            acked.extend(next..next + 50);
            next += 50;
        }
        if round < 2 {
            t.kill9();
            t.restart().await;
        }
    }
    let (status, report) = t
        .post(
            "readings",
            &json!([{"device": "bad", "device_type": "pump", "signal": "loud", "ts": "2026-01-01T00:00:00Z"}]),
        )
        .await;
    assert_eq!(status, 400, "{report}");
    assert_eq!(report["dead_letters_stored"], true, "{report}");

    // Archived exactly once, as an independent reader sees the table on S3.
    let deadline = Instant::now() + Duration::from_secs(90);
    let counts = loop {
        let counts = python_master_counts_s3(&root);
        if acked
            .iter()
            .all(|i| counts.contains_key(&format!("s{i:05}")))
        {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "the archiver did not catch up: {} of {}\n{}",
            counts.len(),
            acked.len(),
            t.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let dupes: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(dupes.is_empty(), "duplicated on S3: {dupes:?}");
    assert_eq!(counts.len(), acked.len());

    // Full and incremental runs on S3 keep the merged view exact. A run's cutoff is
    // aligned down to the segment width (1 s here), so the first run covers every
    // acknowledged event only once a boundary has passed since the last one.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let first = t.run_batch().await;
    assert_eq!(first["rows_in"], acked.len() as u64, "{first}");
    t.wait_for(VIEW, |v| total_readings(v) == acked.len() as i64)
        .await;
    let (status, report) = t.post("readings", &readings(next, 30)).await;
    assert_eq!(status, 200, "{report}");
    t.run_batch_kind("incremental").await;
    t.wait_for(VIEW, |v| total_readings(v) == acked.len() as i64 + 30)
        .await;

    let total = acked.len() as i64 + 30;

    // SQL over the tables on S3, now and as of the view's first run (time travel).
    let n = |v: &Value| v["rows"][0]["n"].as_i64().unwrap();
    let now_sql = json!({"sql": "SELECT count(*) AS n FROM master_readings"});
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The last events reach the master table within `archive-flush-ms`.
        let (status, now) = t.post_json("/api/v1/sql", &now_sql).await;
        assert_eq!(status, 200, "{now}");
        if n(&now) == total {
            break;
        }
        assert!(Instant::now() < deadline, "{now}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let past_sql =
        json!({"sql": "SELECT sum(readings) AS n FROM signal_by_type", "as_of_version": 0});
    let (status, past) = t.post_json("/api/v1/sql", &past_sql).await;
    assert_eq!((status, n(&past)), (200, acked.len() as i64), "{past}");

    // Maintenance compacts and vacuums on S3; the answer stays the same.
    let master = t.maintain("master/readings").await;
    assert_eq!(master["files_after"], 1, "{master}");
    t.run_batch().await;
    t.wait_for(VIEW, |v| total_readings(v) == total).await;
    assert_eq!(python_master_counts_s3(&root).len() as i64, total);

    let (_, letters) = t.get("/api/v1/streams/readings/dead-letters").await;
    assert_eq!(letters["total"], 1, "{letters}");
    // Nothing but local state is on this machine: no table under the local directory.
    let local: Vec<String> = std::fs::read_dir(dir.path().join("local"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for table_dir in ["master", "views", "dead_letters"] {
        assert!(!local.contains(&table_dir.to_string()), "{local:?}");
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing under the default root"
    );
}

#[tokio::test]
async fn put_if_absent_lets_exactly_one_of_racing_commits_win() {
    use deltalake::logstore::object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
    let s3 = s3();
    register_test_store();
    let url = url::Url::parse(&format!("s3://{}/{}/", s3.bucket, fresh_prefix("race"))).unwrap();
    let store =
        deltalake::logstore::store_for(&url, std::iter::empty::<(String, String)>()).unwrap();
    let commit = deltalake::logstore::object_store::path::Path::from(format!(
        "{}_delta_log/00000000000000000000.json",
        url.path().trim_start_matches('/')
    ));
    let racers = (0..16).map(|i| {
        let (store, commit) = (store.clone(), commit.clone());
        async move {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            store
                .put_opts(&commit, PutPayload::from(format!("writer {i}")), opts)
                .await
        }
    });
    let outcomes = futures::future::join_all(racers).await;
    let won = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(won, 1, "{outcomes:?}");
    for o in &outcomes {
        if let Err(e) = o {
            assert!(
                matches!(
                    e,
                    deltalake::logstore::object_store::Error::AlreadyExists { .. }
                ),
                "a losing commit is told the version is taken: {e}"
            );
        }
    }

    // Two Delta appends committing at once both land, one version each: the loser of
    // the race is told, and commits again as the next version.
    let table_url = url.join("table/").unwrap();
    let write = |n: i64| {
        let table_url = table_url.clone();
        async move {
            use deltalake::arrow::array::Int64Array;
            use deltalake::arrow::datatypes::{DataType, Field, Schema};
            let schema =
                std::sync::Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
            let batch = deltalake::arrow::array::RecordBatch::try_new(
                schema,
                vec![std::sync::Arc::new(Int64Array::from(vec![n]))],
            )
            .unwrap();
            let table = tributary_core::delta::open(table_url).await.unwrap();
            table.write(vec![batch]).await.map(|t| t.version())
        }
    };
    assert_eq!(write(0).await.unwrap(), Some(0));
    let (a, b) = tokio::join!(write(1), write(2));
    let versions: BTreeSet<_> = [a.unwrap(), b.unwrap()].into_iter().collect();
    assert_eq!(
        versions,
        BTreeSet::from([Some(1), Some(2)]),
        "two commits, two versions"
    );
    let table = tributary_core::delta::open(table_url).await.unwrap();
    assert_eq!(table.version(), Some(2));
}

/// Reach the test server from this process as `[storage.options]` would.
fn register_test_store() {
    tributary_core::cloud::register(&s3().options()).unwrap();
}

#[tokio::test]
async fn backfill_reads_a_source_on_s3_into_a_master_table_on_s3() {
    use deltalake::logstore::object_store::{ObjectStore, PutPayload};
    register_test_store();
    let dir = tempfile::tempdir().unwrap();
    let prefix = fresh_prefix("backfill");
    let root = format!("s3://{}/{prefix}/tables", s3().bucket);
    let source = url::Url::parse(&format!("s3://{}/{prefix}/old.ndjson", s3().bucket)).unwrap();
    let lines: Vec<String> = readings(0, 40)
        .as_array()
        .unwrap()
        .iter()
        .map(Value::to_string)
        .chain(std::iter::once(
            r#"{"device":"bad","device_type":"pump","signal":"loud","ts":"2026-01-01T00:00:00Z"}"#
                .to_string(),
        ))
        .collect();
    let (store, path) = tributary_core::cloud::store_for(&source).unwrap();
    store
        .put_opts(
            &path,
            PutPayload::from(lines.join("\n")),
            Default::default(),
        )
        .await
        .unwrap();

    let config = Tributary::configure(dir.path(), &s3().storage_section(&dir.path().join("local")));
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .arg("--config")
            .arg(&config)
            .args(["backfill", "--stream", "readings", source.as_str()])
            .env("TRIBUTARY_STORAGE_ROOT", &root)
            .output()
            .unwrap()
    };
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["accepted"].as_i64(), report["rejected"].as_i64()),
        (Some(40), Some(1)),
        "{report}"
    );
    // Run again: the chunks' `txn` actions make it add nothing.
    let again: Value = serde_json::from_slice(&run().stdout).unwrap();
    let counts = python_master_counts_s3(&root);
    assert_eq!(counts.len(), 40, "{again}");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}

#[tokio::test]
async fn a_dimension_table_on_s3_joins_in_both_layers() {
    dimension_join_on_s3(false).await;
}

/// The same on a Ballista cluster whose executors read the master table's files and the
/// dimension table from the object store.
#[tokio::test]
async fn batch_runs_on_ballista_read_the_tables_on_s3() {
    dimension_join_on_s3(true).await;
}

async fn dimension_join_on_s3(on_ballista: bool) {
    use deltalake::logstore::object_store::{ObjectStore, PutPayload};
    register_test_store();
    let dir = tempfile::tempdir().unwrap();
    let prefix = fresh_prefix("dimension");
    let root = format!("s3://{}/{prefix}/tables", s3().bucket);
    let csv = url::Url::parse(&format!("s3://{}/{prefix}/devices.csv", s3().bucket)).unwrap();
    let (store, path) = tributary_core::cloud::store_for(&csv).unwrap();
    store
        .put_opts(
            &path,
            PutPayload::from("device,site\ns00000,plant-a\ns00001,plant-b\n"),
            Default::default(),
        )
        .await
        .unwrap();
    let pipeline = format!(
        r#"
[[tables]]
name = "devices"
path = "{csv}"

[[streams]]
name = "readings"
event-time = "ts"
key = "device"
partitions = 2
fields = [
  {{ name = "device", type = "string" }},
  {{ name = "device_type", type = "string" }},
  {{ name = "signal", type = "float64" }},
  {{ name = "ts", type = "timestamp" }},
]

[[views]]
name = "by_site"
sql = """
SELECT d.site, date_bin(INTERVAL '10 minutes', r.ts) AS window_start, count(*) AS readings
FROM readings r JOIN devices d ON r.device = d.device
GROUP BY d.site, window_start
"""
"#
    );
    let config = Tributary::configure_pipeline(
        dir.path(),
        &s3().storage_section(&dir.path().join("local")),
        200,
        &pipeline,
    );
    let cluster = on_ballista.then(|| Cluster::start_with(dir.path(), 2, Some(&config)));
    let mut env = cluster.as_ref().map(Cluster::env).unwrap_or_default();
    env.push(("TRIBUTARY_STORAGE_ROOT", root.clone()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let t = Tributary::start_role(dir.path(), &config, "up", &env).await;
    let engine = if on_ballista { "ballista" } else { "local" };
    // Two known devices (one reading each) and one the table does not know.
    let (status, report) = t.post("readings", &readings(0, 3)).await;
    assert_eq!(status, 200, "{report}");
    let sites = |v: &Value| -> BTreeMap<String, i64> {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["site"].as_str().unwrap().to_string(),
                    r["readings"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let want = BTreeMap::from([("plant-a".to_string(), 1), ("plant-b".to_string(), 1)]);
    let view = "/api/v1/views/by_site";
    t.wait_for(view, |v| sites(v) == want).await;
    // The batch layer joins with the same table on S3.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let run = t.run_batch().await;
        assert_eq!(run["engine"], engine, "{run}");
        let (_, v) = t.get(view).await;
        if v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["_source"] == "batch")
        {
            assert_eq!(sites(&v), want, "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the batch never covered the events: {v}"
        );
    }
}
