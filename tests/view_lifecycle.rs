//! Views managed at runtime: created over a stream with history (exact from the moment
//! they answer, against DataFusion's one-pass reference, and live afterwards), paused,
//! resumed, replaced and dropped; definitions survive a restart through the catalog;
//! a cataloged view that no longer compiles fails alone; with every role its own
//! process, a change made through one serving process is followed by all the others.

mod common;

use std::time::{Duration, Instant};

use common::views::{api_rows, pipeline, reference, reference_streams, same_rows};
use common::{IOT_STREAM, Tributary};
use serde_json::{Value, json};

const TYPES: [&str; 3] = ["pump", "fan", "valve"];

fn events(from: usize, n: usize) -> Vec<Value> {
    (from..from + n)
        .map(|i| {
            json!({
                "device": format!("d{}", i % 7),
                "device_type": TYPES[i % 3],
                "signal": (i % 40) as f64,
                "ts": format!("2026-01-01T{:02}:{:02}:00Z", (i / 60) % 24, i % 60),
            })
        })
        .collect()
}

const COUNTS: &str = "SELECT device, date_bin(INTERVAL '30 minutes', ts) AS window_start, \
                      count(*) AS n, sum(signal) AS total FROM readings GROUP BY device, window_start";
const LOUD: &str = "SELECT device_type, date_bin(INTERVAL '1 hour', ts) AS window_start, \
                    max(signal) AS peak, count(*) AS n FROM readings WHERE signal > 30 \
                    GROUP BY device_type, window_start";

/// Wait until `view` answers (its backfill done) and equals the one-pass reference of
/// `sql` over `all`.
async fn assert_exact(t: &Tributary, view: &str, sql: &str, all: &[Value]) {
    check_exact(t, view, sql, all, false).await
}

/// [`assert_exact`], where every answer must already be exact (a view just created,
/// resumed or replaced over acknowledged events: it answers only once exact).
async fn assert_exact_at_once(t: &Tributary, view: &str, sql: &str, all: &[Value]) {
    check_exact(t, view, sql, all, true).await
}

async fn check_exact(t: &Tributary, view: &str, sql: &str, all: &[Value], strict: bool) {
    // The configuration's own view is in IOT_STREAM already.
    let text = match IOT_STREAM.contains(&format!("name = \"{view}\"")) {
        true => IOT_STREAM.to_string(),
        false => format!("{IOT_STREAM}\n[[views]]\nname = \"{view}\"\nsql = \"{sql}\"\n"),
    };
    let p = pipeline(&text).await;
    let v = p.view(view).unwrap();
    let want = reference(&p, &v, all).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, answer) = t.get(&format!("/api/v1/views/{view}")).await;
        let verdict = match status {
            200 => same_rows(view, &api_rows(&v, &answer), &want),
            503 => Err(format!("not answering yet: {answer}")),
            other => panic!("{view}: {other} {answer}"),
        };
        match verdict {
            Ok(()) => return,
            Err(e) if strict && status == 200 => {
                // What decides `complete`, for a failure to be read without a rerun.
                let meta = [
                    "cutoff",
                    "speed_watermark",
                    "max_event_time",
                    "speed_position",
                ]
                .map(|k| format!("{k}={}", answer[k]))
                .join(" ");
                let missing = &answer["speed_missing_partitions"];
                panic!(
                    "an answer before it was exact: {e}\n{meta} missing={missing}\n{}",
                    t.logs()
                )
            }
            Err(e) if Instant::now() > deadline => panic!("{e}\n{}", t.logs()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn post_events(t: &Tributary, batch: &[Value]) {
    let (status, body) = t.post("readings", &json!(batch)).await;
    assert_eq!(status, 200, "{body}");
}

/// `batched` events in the batch layer and `recent` more only in the speed layer, then
/// view `counts` created over them: backfilling, then exact from its first answer.
/// Returns every event posted.
async fn create_over_history(t: &Tributary, batched: usize, recent: usize) -> Vec<Value> {
    let mut all = events(0, batched);
    post_events(t, &all).await;
    t.run_batch().await;
    let more = events(batched, recent);
    post_events(t, &more).await;
    all.extend(more);
    let (status, created) = t
        .post_json("/api/v1/views", &json!({"name": "counts", "sql": COUNTS}))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["state"], "backfilling", "{created}");
    assert_exact_at_once(t, "counts", COUNTS, &all).await;
    all
}

/// Definitions and bodies `POST /api/v1/views` refuses, each with its reason.
async fn refusals_name_the_problem(t: &Tributary) {
    let (status, e) = t
        .post_json("/api/v1/views", &json!({"name": "counts", "sql": COUNTS}))
        .await;
    assert_eq!(status, 409, "{e}");
    let bad = "SELECT colour, date_bin(INTERVAL '1 hour', ts) AS w, count(*) FROM readings GROUP BY colour, w";
    let (status, e) = t
        .post_json("/api/v1/views", &json!({"name": "bad", "sql": bad}))
        .await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("colour"), "{e}");
    let (status, e) = t
        .post_json("/api/v1/views", &json!({"name": "no way", "sql": COUNTS}))
        .await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("name"), "{e}");
    // A name too long for a directory or a topic is refused, not failed half way.
    let long = "v".repeat(5000);
    let (status, e) = t
        .post_json("/api/v1/views", &json!({"name": long, "sql": COUNTS}))
        .await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("at most 128"), "{e}");
    // A definition deep enough to overflow the planner's stack aborted the process;
    // it is refused on its tokens (the process answers the next request).
    let deep = format!(
        "SELECT date_bin(INTERVAL '1 hour', ts) AS w, sum({}) AS s FROM readings GROUP BY w",
        vec!["signal"; 3_001].join(" + ")
    );
    let (status, e) = t
        .post_json("/api/v1/views", &json!({"name": "deep", "sql": deep}))
        .await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("3000 operators"),
        "{e}"
    );
    // Bodies that are not the definition: a JSON error naming what is wrong.
    for (body, content_type, want, says) in [
        ("{\"name\": \"x\"}", "application/json", 422, "sql"),
        (
            "{\"name\": \"x\", \"sql\": \"\", \"colour\": 1}",
            "application/json",
            422,
            "colour",
        ),
        ("not json", "application/json", 400, "expected"),
        ("{}", "text/plain", 415, "Content-Type"),
    ] {
        let (status, e) = t
            .post_body("/api/v1/views", content_type, body.into())
            .await;
        assert_eq!(status, want, "{body}: {e}");
        assert!(e["error"].as_str().unwrap().contains(says), "{body}: {e}");
    }
}

#[tokio::test]
async fn a_view_created_at_runtime_is_exact_at_once_and_follows_its_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tributary::start(dir.path(), "").await;
    let mut all = create_over_history(&t, 600, 300).await;
    let (_, s) = t.get("/api/v1/views/counts/status").await;
    assert_eq!(s["state"], "running", "{s}");
    // Live afterwards: new events reach it through the speed layer.
    let more = events(900, 200);
    post_events(&t, &more).await;
    all.extend(more);
    assert_exact(&t, "counts", COUNTS, &all).await;
    // The file's view never stopped answering.
    let (status, _) = t.get("/api/v1/views/signal_by_type").await;
    assert_eq!(status, 200);

    refusals_name_the_problem(&t).await;

    // Paused: no answer; events meanwhile still count once resumed.
    let (status, p) = t.post_path("/api/v1/views/counts/pause").await;
    assert_eq!((status, p["state"].as_str()), (200, Some("paused")), "{p}");
    let (status, e) = t.get("/api/v1/views/counts").await;
    assert_eq!(status, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains("paused"), "{e}");
    let more = events(1100, 150);
    post_events(&t, &more).await;
    all.extend(more);
    let (status, r) = t.post_path("/api/v1/views/counts/resume").await;
    assert_eq!(status, 200, "{r}");
    assert_exact_at_once(&t, "counts", COUNTS, &all).await;

    // Replaced: the new SQL, recomputed over all history.
    let replaced = t
        .client
        .put(format!("{}/api/v1/views/counts", t.base))
        .json(&json!({"sql": LOUD}))
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), 200);
    assert_exact_at_once(&t, "counts", LOUD, &all).await;

    // The command line speaks the same API.
    let out = t.command(&["views", "--url", &t.base, "status", "counts"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("\"running\""),
        "{text}"
    );
    let out = t.command(&[
        "views", "--url", &t.base, "create", "counts", "--sql", COUNTS,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("exists"), "{err}");

    // Definitions survive a restart (the catalog), and stay exact.
    t.kill9();
    t.restart().await;
    assert_exact(&t, "counts", LOUD, &all).await;

    // Dropped: gone, with its batch table.
    let dropped = t
        .client
        .delete(format!("{}/api/v1/views/counts", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(dropped.status(), 204);
    let (status, _) = t.get("/api/v1/views/counts").await;
    assert_eq!(status, 404);
    assert!(!dir.path().join("data/views/counts").exists());
    t.kill9();
    t.restart().await;
    let (status, _) = t.get("/api/v1/views/counts").await;
    assert_eq!(status, 404, "a dropped view came back after a restart");
}

/// A view whose SQL changed in the file between two runs: its batch states are of the
/// old definition, so it is backfilled at start and never answers from them.
#[tokio::test]
async fn a_view_changed_in_the_file_is_recomputed_before_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let file_view = |sql: &str| format!("[[views]]\nname = \"counts\"\nsql = \"{sql}\"\n");
    let mut t = Tributary::start(dir.path(), &file_view(COUNTS)).await;
    let mut all = events(0, 500);
    post_events(&t, &all).await;
    // Batch runs until the batch states hold every event so far (the archiver first).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        t.run_batch().await;
        let (_, answer) = t.get("/api/v1/views/counts").await;
        let rows = answer["rows"].as_array().cloned().unwrap_or_default();
        if !rows.is_empty() && rows.iter().all(|r| r["_source"] == "batch") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never all in the batch layer: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let more = events(500, 200);
    post_events(&t, &more).await;
    all.extend(more);
    assert_exact(&t, "counts", COUNTS, &all).await;
    t.terminate();
    let config = t.config.clone().unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    // The same columns and states, other rows: only the definition tells them apart.
    let filtered = COUNTS.replace("FROM readings", "FROM readings WHERE signal > 20");
    std::fs::write(&config, text.replace(COUNTS, &filtered)).unwrap();
    t.restart().await;
    assert_exact_at_once(&t, "counts", &filtered, &all).await;
}

const CLICKS: &str = "[[streams]]\nname = \"clicks\"\nevent-time = \"ts\"\nfields = [{ name = \"user\", type = \"string\" }, { name = \"ts\", type = \"timestamp\" }]\n";

/// Clicks of the readings' devices, two minutes apart.
fn clicks(from: usize, n: usize) -> Vec<Value> {
    (from..from + n)
        .map(|i| {
            let minute = i * 2;
            json!({
                "user": format!("d{}", i % 7),
                "ts": format!("2026-01-01T{:02}:{:02}:30Z", (minute / 60) % 24, minute % 60),
            })
        })
        .collect()
}

const JOINED: &str = "SELECT r.device_type, date_bin(INTERVAL '1 hour', r.ts) AS window_start, \
                      count(*) AS n, sum(r.signal) AS total FROM readings r JOIN clicks c \
                      ON r.device = c.user AND c.ts BETWEEN r.ts - INTERVAL '3 minutes' \
                      AND r.ts + INTERVAL '2 minutes' GROUP BY r.device_type, window_start";

/// A view joining two streams, created at runtime over events in both layers and
/// while more arrive (late ones too): its speed part looks older partners up in the
/// master table only below a batch cutoff (the backfill's), never below its own
/// provisional one, and the merged answer equals the one-pass join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_joining_two_streams_created_at_runtime_is_exact_at_once() {
    joined_at_runtime(JOINED).await;
}

/// The same join as a LEFT join: readings without a click count too, and a late click
/// takes back the "no click" row of a reading archived a run ago.
const LEFT_JOINED: &str = "SELECT r.device_type, date_bin(INTERVAL '1 hour', r.ts) AS window_start, \
                      count(*) AS n, count(c.user) AS clicked, avg(r.signal) AS mean \
                      FROM readings r LEFT JOIN clicks c \
                      ON r.device = c.user AND c.ts BETWEEN r.ts - INTERVAL '3 minutes' \
                      AND r.ts + INTERVAL '2 minutes' GROUP BY r.device_type, window_start";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_left_join_of_two_streams_created_at_runtime_is_exact_at_once() {
    joined_at_runtime(LEFT_JOINED).await;
}

/// Create the view `joined` as `sql` at runtime, between events of both streams in both
/// layers and before late ones, and wait for its answer to equal the one-pass join.
async fn joined_at_runtime(sql: &str) {
    let dir = tempfile::tempdir().unwrap();
    let t = Tributary::start(dir.path(), CLICKS).await;
    let mut all: Vec<(String, Value)> = Vec::new();
    let mut post_both = async |readings: Vec<Value>, clicks: Vec<Value>| {
        post_events(&t, &readings).await;
        let (status, body) = t.post("clicks", &json!(clicks)).await;
        assert_eq!(status, 200, "{body}");
        all.extend(readings.into_iter().map(|e| ("readings".to_string(), e)));
        all.extend(clicks.into_iter().map(|e| ("clicks".to_string(), e)));
    };
    post_both(events(0, 300), clicks(0, 150)).await;
    t.run_batch().await;
    post_both(events(300, 100), clicks(150, 50)).await;
    let (status, created) = t
        .post_json("/api/v1/views", &json!({"name": "joined", "sql": sql}))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["state"], "backfilling", "{created}");
    // Late ones too: partners of the first hour, archived a run ago.
    post_both(events(400, 100), clicks(5, 40)).await;
    let text = format!("{IOT_STREAM}\n{CLICKS}\n[[views]]\nname = \"joined\"\nsql = \"{sql}\"\n");
    let p = pipeline(&text).await;
    let v = p.view("joined").unwrap();
    let want = reference_streams(&p, &v, &all).await;
    assert!(want.len() > 3, "the join pairs events: {want:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, answer) = t.get("/api/v1/views/joined").await;
        let verdict = match status {
            200 => same_rows("joined", &api_rows(&v, &answer), &want),
            503 => Err(format!("not answering yet: {answer}")),
            other => panic!("joined: {other} {answer}"),
        };
        match verdict {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => panic!("{e}\n{}", t.logs()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn a_cataloged_view_that_no_longer_compiles_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tributary::start(dir.path(), CLICKS).await;
    let sql = "SELECT user, date_bin(INTERVAL '1 hour', ts) AS w, count(*) AS n FROM clicks GROUP BY user, w";
    let (status, created) = t
        .post_json("/api/v1/views", &json!({"name": "per_user", "sql": sql}))
        .await;
    assert_eq!(status, 201, "{created}");
    t.wait_for("/api/v1/views/per_user/status", |s| s["state"] == "running")
        .await;
    t.terminate();
    // The stream it reads is gone from the file; the file's own view does not read it.
    let config = t.config.clone().unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(CLICKS, "");
    std::fs::write(&config, text).unwrap();
    t.restart().await;
    let (_, s) = t.get("/api/v1/views/per_user/status").await;
    assert_eq!(s["state"], "failed", "{s}");
    assert!(s["error"].as_str().unwrap().contains("clicks"), "{s}");
    let (status, e) = t.get("/api/v1/views/per_user").await;
    assert_eq!(status, 409, "{e}");
    let (_, list) = t.get("/api/v1/views").await;
    assert_eq!(list["inactive"][0]["name"], "per_user", "{list}");
    post_events(&t, &events(0, 100)).await;
    assert_exact(&t, "signal_by_type", "", &events(0, 100)).await;
}

/// The same on the Kafka log (tansu): the speed layer's start for a new view comes from
/// Kafka's derived ingest times, the backfill's wait from the archiver's positions there.
#[tokio::test]
async fn on_kafka_a_view_created_at_runtime_is_exact_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("lifecycle{}.", common::free_port());
    let config = Tributary::configure_kafka(dir.path(), &prefix);
    let t = Tributary::start_config(dir.path(), config).await;
    let mut all = create_over_history(&t, 400, 200).await;
    let more = events(600, 100);
    post_events(&t, &more).await;
    all.extend(more);
    assert_exact(&t, "counts", COUNTS, &all).await;
}

/// Wait until serving process `t` has followed the catalog to `revision` of view
/// `counts`, in one of `states`.
async fn until_followed(t: &Tributary, revision: i64, states: &[&str]) {
    t.wait_for("/api/v1/views/counts/status", |s| {
        s["revision"] == revision && states.iter().any(|state| s["state"] == *state)
    })
    .await;
}

const NEW: &[&str] = &["backfilling", "running"];

/// With every role its own process (tansu): an ingest and a batch process, two speed
/// processes sharing the partitions, two serving processes. A change made through one
/// serving process reaches the other and both speed processes through the catalog; in
/// both serving processes every answer is exact from the moment the view answers.
// A scenario test reads top to bottom as one story against running processes.
#[allow(clippy::too_many_lines)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_roles_apart_every_process_follows_a_change_made_through_one() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("lifecycle-roles{}.", common::free_port());
    let config = Tributary::configure_kafka(dir.path(), &prefix);
    let poll = ("TRIBUTARY_CATALOG_POLL_MS", "200");
    let ingest = Tributary::start_role(dir.path(), &config, "ingest", &[]).await;
    let batch = Tributary::start_role(dir.path(), &config, "batch", &[]).await;
    let mut speeds = Vec::new();
    for shard in ["0/2", "1/2"] {
        let env = [("TRIBUTARY_SPEED__SHARD", shard), poll];
        speeds.push(Tributary::start_role(dir.path(), &config, "speed", &env).await);
    }
    let urls = format!("[\"{}\", \"{}\"]", speeds[0].base, speeds[1].base);
    let env = [("TRIBUTARY_SPEED__URLS", urls.as_str()), poll];
    let a = Tributary::start_role(dir.path(), &config, "serve", &env).await;
    let b = Tributary::start_role(dir.path(), &config, "serve", &env).await;
    for role in [&ingest, &batch, &speeds[0], &speeds[1], &a, &b] {
        role.wait_for("/ready", |_| true).await;
    }

    // History in the batch layer and only in the speed layer; the view made through A.
    let mut all = events(0, 400);
    post_events(&ingest, &all).await;
    a.wait_for("/api/v1/views/signal_by_type", |v| v["total_rows"] != 0)
        .await;
    a.run_batch().await;
    let more = events(400, 200);
    post_events(&ingest, &more).await;
    all.extend(more);
    let (status, created) = a
        .post_json("/api/v1/views", &json!({"name": "counts", "sql": COUNTS}))
        .await;
    assert_eq!(status, 201, "{created}");
    for serve in [&a, &b] {
        until_followed(serve, 1, NEW).await;
        assert_exact_at_once(serve, "counts", COUNTS, &all).await;
    }
    let more = events(600, 150);
    post_events(&ingest, &more).await;
    all.extend(more);
    for serve in [&a, &b] {
        assert_exact(serve, "counts", COUNTS, &all).await;
    }

    // Replaced through B: both recompute it over all history.
    let replaced = b
        .client
        .put(format!("{}/api/v1/views/counts", b.base))
        .json(&json!({"sql": LOUD}))
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), 200);
    for serve in [&b, &a] {
        until_followed(serve, 2, NEW).await;
        assert_exact_at_once(serve, "counts", LOUD, &all).await;
    }

    // Paused through A: B stops answering it; resumed through B, exact in both.
    let (status, p) = a.post_path("/api/v1/views/counts/pause").await;
    assert_eq!(status, 200, "{p}");
    until_followed(&b, 3, &["paused"]).await;
    let (status, e) = b.get("/api/v1/views/counts").await;
    assert_eq!(status, 409, "{e}");
    let more = events(750, 100);
    post_events(&ingest, &more).await;
    all.extend(more);
    let (status, r) = b.post_path("/api/v1/views/counts/resume").await;
    assert_eq!(status, 200, "{r}");
    for serve in [&b, &a] {
        until_followed(serve, 4, NEW).await;
        assert_exact_at_once(serve, "counts", LOUD, &all).await;
    }

    // Dropped through A: gone from B too, and from the speed processes.
    let dropped = a
        .client
        .delete(format!("{}/api/v1/views/counts", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(dropped.status(), 204);
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.get("/api/v1/views/counts").await.0 != 404 {
        assert!(Instant::now() < deadline, "B still answers a dropped view");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for speed in &speeds {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, stats) = speed.get("/internal/v1/stats").await;
            let views = stats["views"].as_array().cloned().unwrap_or_default();
            if !views.iter().any(|v| v["view"] == "counts") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a speed process kept the view: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The file's view never stopped answering in either.
    for serve in [&a, &b] {
        assert_eq!(serve.get("/api/v1/views/signal_by_type").await.0, 200);
    }
}

/// With the roles apart, a serving process restarted with a view changed in the file
/// seeds the new definition; the running speed process follows it from the catalog,
/// and the serving process answers only once its batch states are of the new
/// definition and reach where the speed process holds it from. (Either of the serving
/// process's checks brings it there: the definition of its batch states at start, or,
/// without that, the later finding that the speed process holds the view from above
/// them; with neither it answers 503 for ever, which fails this test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_roles_apart_a_file_change_reaches_the_running_speed_process() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("lifecycle-file{}.", common::free_port());
    let more = format!("[[views]]\nname = \"counts\"\nsql = \"{COUNTS}\"\n");
    let config = Tributary::configure_kafka_with(dir.path(), &prefix, &more);
    let poll = ("TRIBUTARY_CATALOG_POLL_MS", "200");
    let ingest = Tributary::start_role(dir.path(), &config, "ingest", &[]).await;
    let batch = Tributary::start_role(dir.path(), &config, "batch", &[]).await;
    let speed = Tributary::start_role(dir.path(), &config, "speed", &[poll]).await;
    let env = [("TRIBUTARY_SPEED__URL", speed.base.as_str()), poll];
    let mut serve = Tributary::start_role(dir.path(), &config, "serve", &env).await;
    for role in [&ingest, &batch, &speed, &serve] {
        role.wait_for("/ready", |_| true).await;
    }
    let mut all = events(0, 400);
    post_events(&ingest, &all).await;
    assert_exact(&serve, "counts", COUNTS, &all).await;
    serve.run_batch().await;
    let recent = events(400, 150);
    post_events(&ingest, &recent).await;
    all.extend(recent);
    assert_exact(&serve, "counts", COUNTS, &all).await;

    serve.terminate();
    let filtered = COUNTS.replace("FROM readings", "FROM readings WHERE signal > 20");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(COUNTS, &filtered)).unwrap();
    serve.restart().await;
    assert_exact_at_once(&serve, "counts", &filtered, &all).await;
    let (_, s) = serve.get("/api/v1/views/counts/status").await;
    assert_eq!(s["revision"], 2, "{s}");
    let recent = events(550, 100);
    post_events(&ingest, &recent).await;
    all.extend(recent);
    assert_exact(&serve, "counts", &filtered, &all).await;
}
