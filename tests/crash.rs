//! SIGKILL mid-stream: every acknowledged event ends up in the master table exactly
//! once, as read by delta-rs here and by the independent Python `deltalake` reader.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Tributary, master_counts, numbered_readings, python, python_json, total_readings};
use serde_json::{Value, json};

/// Events `from..from + n`, each its own device, signal `i % 100`.
fn batch(from: usize, n: usize) -> Value {
    numbered_readings(from, n, 100)
}

/// Post batches of 50 until `deadline` or `max` events; returns the ids acknowledged
/// (HTTP 200) and the next unused id. Failed requests (the process died) are skipped.
async fn post_until(
    base: String,
    start: usize,
    max: usize,
    deadline: Instant,
) -> (BTreeSet<usize>, usize) {
    let client = reqwest::Client::new();
    let mut acked = BTreeSet::new();
    let mut next = start;
    while next < start + max && Instant::now() < deadline {
        let sent = client
            .post(format!("{base}/api/v1/streams/readings/events"))
            .json(&batch(next, 50))
            .send()
            .await;
        if let Ok(resp) = sent
            && resp.status().as_u16() == 200
            && let Ok(report) = resp.json::<Value>().await
        {
            assert_eq!(report["accepted"], 50, "{report}");
            acked.extend(next..next + 50);
        }
        next += 50;
    }
    (acked, next)
}

#[tokio::test]
async fn sigkill_mid_stream_loses_and_duplicates_nothing() {
    // Fail before the long part if the independent reader is missing.
    python();
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tributary::start(dir.path(), "").await;

    // Post for a while, then kill -9 while requests are still in flight.
    let poster = tokio::spawn(post_until(
        t.base.clone(),
        0,
        1_000_000,
        Instant::now() + Duration::from_secs(3),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    t.kill9();
    let (mut acked, next) = poster.await.unwrap();
    assert!(
        acked.len() >= 500,
        "too few events acknowledged before the kill: {}",
        acked.len()
    );

    // Restart and keep going; then kill again right after more acknowledgements.
    t.restart().await;
    let (more, next) = post_until(
        t.base.clone(),
        next,
        2_000,
        Instant::now() + Duration::from_secs(30),
    )
    .await;
    acked.extend(more);
    t.kill9();
    t.restart().await;
    let (more, _) = post_until(
        t.base.clone(),
        next,
        500,
        Instant::now() + Duration::from_secs(30),
    )
    .await;
    acked.extend(more);

    // Wait for the archiver to catch up with everything acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    let counts = loop {
        let counts = master_counts(dir.path()).await;
        let done = acked
            .iter()
            .all(|i| counts.contains_key(&format!("e{i:06}")));
        if done {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "archiver did not catch up\n{}",
            t.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Exactly once: no id twice; every acknowledged id present. Ids whose request
    // died with the process may be present (the log had them) but never twice.
    eprintln!(
        "acknowledged {} events across two SIGKILLs; master table holds {} distinct",
        acked.len(),
        counts.len()
    );
    let dupes: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        dupes.is_empty(),
        "duplicated in the master table: {dupes:?}"
    );
    for i in &acked {
        assert!(
            counts.contains_key(&format!("e{i:06}")),
            "acknowledged e{i:06} lost"
        );
    }

    // The independent reader sees the same table.
    let script = format!(
        "import deltalake, json\n\
         t = deltalake.DeltaTable('{}')\n\
         d = t.to_pyarrow_table(columns=['device']).column('device').to_pylist()\n\
         print(json.dumps({{'rows': len(d), 'distinct': len(set(d)), 'version': t.version()}}))",
        dir.path().join("data/master/readings").display()
    );
    let seen = python_json(&script);
    let total: i64 = counts.values().sum();
    assert_eq!(seen["rows"].as_i64().unwrap(), total, "{seen}");
    assert_eq!(
        seen["distinct"].as_i64().unwrap(),
        counts.len() as i64,
        "{seen}"
    );

    // And the merged view counts each archived event once, whichever layer has it.
    let want: i64 = counts
        .keys()
        .filter(|d| d[1..].parse::<usize>().unwrap() % 100 > 15)
        .count() as i64;
    let total = total_readings;
    t.wait_for("/api/v1/views/signal_by_type", |v| total(v) == want)
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    t.run_batch().await;
    let (_, answer) = t.get("/api/v1/views/signal_by_type").await;
    assert_eq!(
        total(&answer),
        want,
        "after a batch run: {}",
        answer["cutoff"]
    );
}

/// Post batches of 50 until a request fails (the process died); returns the ids
/// acknowledged and the next unused id.
async fn post_until_down(base: String, start: usize) -> (BTreeSet<usize>, usize) {
    let client = reqwest::Client::new();
    let mut acked = BTreeSet::new();
    let mut next = start;
    loop {
        let sent = client
            .post(format!("{base}/api/v1/streams/readings/events"))
            .json(&batch(next, 50))
            .send()
            .await;
        next += 50;
        match sent {
            Ok(resp) if resp.status().as_u16() == 200 => match resp.json::<Value>().await {
                Ok(report) => {
                    assert_eq!(report["accepted"], 50, "{report}");
                    acked.extend(next - 50..next);
                }
                Err(_) => return (acked, next),
            },
            _ => return (acked, next),
        }
    }
}

/// Every id the master table holds, counted, must be each acknowledged id exactly once
/// (ids whose request died with the process may be there too, once).
async fn archived_exactly_once(t: &Tributary, dir: &std::path::Path, acked: &BTreeSet<usize>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let counts = loop {
        let counts = master_counts(dir).await;
        if acked
            .iter()
            .all(|i| counts.contains_key(&format!("e{i:06}")))
        {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "archiver did not catch up\n{}",
            t.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let dupes: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        dupes.is_empty(),
        "duplicated in the master table: {dupes:?}"
    );
    let total: i64 = counts.values().sum();
    assert!(
        total as usize >= acked.len(),
        "{total} rows for {} acknowledged",
        acked.len()
    );
    eprintln!(
        "acknowledged {} events; the master table holds {} rows, {} distinct ids",
        acked.len(),
        total,
        counts.len()
    );
}

#[tokio::test]
async fn twenty_sigkills_at_random_points_lose_and_duplicate_nothing() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    // Archive often, so kills land before, during and after Delta commits.
    let config = Tributary::configure_pipeline(dir.path(), "", 50, common::IOT_STREAM);
    let mut t = Tributary::start_config(dir.path(), config).await;
    let mut acked = BTreeSet::new();
    let mut next = 0;
    for _ in 0..20 {
        let poster = tokio::spawn(post_until_down(t.base.clone(), next));
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..900))).await;
        t.kill9();
        let (ok, n) = poster.await.unwrap();
        acked.extend(ok);
        next = n;
        t.restart().await;
    }
    archived_exactly_once(&t, dir.path(), &acked).await;
    assert!(
        acked.len() >= 1000,
        "too few events acknowledged: {}",
        acked.len()
    );
}

/// Dead letters are answered once they are in the local spool, before their Delta
/// commit: a SIGKILL right after the answers loses none and duplicates none of them.
#[tokio::test]
async fn sigkill_before_the_dead_letter_flush_loses_and_duplicates_no_letter() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tributary::start(dir.path(), "").await;
    let posts = (0..40).map(|i| {
        let t = &t;
        async move {
            t.post(
                "readings",
                &json!([{"device": format!("bad-{i}"), "device_type": "pump", "signal": "loud",
                         "ts": "2026-01-01T00:00:00Z"}]),
            )
            .await
        }
    });
    for (status, report) in futures::future::join_all(posts).await {
        assert_eq!(status, 400, "{report}");
        assert_eq!(report["dead_letters_stored"], true, "{report}");
    }
    t.kill9();
    t.restart().await;
    // The restart moves what the spool holds; the listing would too.
    let status = t
        .wait_for("/api/v1/status", |s| {
            s["streams"]["readings"]["dead_letters_spooled"] == 0
        })
        .await;
    let (_, letters) = t
        .get("/api/v1/streams/readings/dead-letters?limit=1000")
        .await;
    assert_eq!(letters["total"], 40, "{letters} {status}");
    let devices: BTreeSet<String> = letters["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let raw: Value = serde_json::from_str(r["raw"].as_str().unwrap()).unwrap();
            raw["device"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(devices.len(), 40, "{letters}");
}
