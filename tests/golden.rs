//! Golden view tests (the arroyo style): every case under `tests/golden/` runs against
//! the speed layer alone, the batch layer alone and the merged answer of the real
//! binary, and all three must equal the case's `expected.json` and DataFusion's
//! one-pass answer over the same events. See `tests/golden/README.md`.

// A scenario test reads top to bottom as one story against one running process.
#![allow(clippy::too_many_lines)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Tributary;
use common::cluster::Cluster;
use common::views::{
    Row, api_rows, assert_same_rows, late_events_streams, pipeline, reference_streams, sources,
};
use serde_json::{Map, Value, json};
use tributary_core::pipeline::Pipeline;

const BATCH_MARK: &str = "# batch run";
const WAIT_MARK: &str = "# wait ";
const STREAM_MARK: &str = "# stream ";

enum Item {
    /// An event of the named stream.
    Event(String, Value),
    BatchRun,
    /// Let this much ingest time pass (a dedup horizon, say).
    Wait(Duration),
}

struct Case {
    name: String,
    dir: PathBuf,
    pipeline_text: String,
    items: Vec<Item>,
}

impl Case {
    fn load(dir: &Path) -> Case {
        let pipeline_text = std::fs::read_to_string(dir.join("pipeline.toml")).unwrap();
        // Events go to the first declared stream until a `# stream NAME` line.
        let mut stream = first_stream(&pipeline_text);
        let mut items = Vec::new();
        for line in std::fs::read_to_string(dir.join("events.ndjson"))
            .unwrap()
            .lines()
        {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if line == BATCH_MARK {
                items.push(Item::BatchRun);
                continue;
            }
            if let Some(name) = line.strip_prefix(STREAM_MARK) {
                stream = name.trim().to_string();
                continue;
            }
            if let Some(ms) = line.strip_prefix(WAIT_MARK) {
                items.push(Item::Wait(Duration::from_millis(ms.parse().unwrap())));
                continue;
            }
            let event: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: bad event line {line}: {e}", dir.display()));
            items.push(Item::Event(stream.clone(), event));
        }
        Case {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            dir: dir.to_path_buf(),
            pipeline_text,
            items,
        }
    }

    /// The events that count under the stream's dedup rule, as the case is written: an
    /// id repeats within the horizon unless a `# wait` longer than it came between (a
    /// case keeps copies of one id on one key, hence one partition).
    fn counted(&self, p: &Pipeline) -> Vec<(String, Value)> {
        self.items
            .iter()
            .zip(self.counts(p))
            .filter_map(|(item, counts)| match item {
                Item::Event(s, e) if counts => Some((s.clone(), e.clone())),
                _ => None,
            })
            .collect()
    }

    /// Events that count, per stream.
    fn counted_per_stream(&self, p: &Pipeline) -> HashMap<String, u64> {
        let mut n = HashMap::new();
        for (s, _) in self.counted(p) {
            *n.entry(s).or_default() += 1;
        }
        n
    }

    /// Per item: whether it is an event that counts (accepted, and no repeat).
    fn counts(&self, p: &Pipeline) -> Vec<bool> {
        let mut seen = std::collections::HashSet::new();
        self.items
            .iter()
            .map(|item| match item {
                // Invalid records are rejected at ingest: no layer sees their ids.
                Item::Event(s, e) if p.stream(s).unwrap().validate(e).is_err() => false,
                Item::Event(s, e) => match (
                    &p.stream(s).unwrap().dedup,
                    &e[&p
                        .stream(s)
                        .unwrap()
                        .dedup
                        .as_ref()
                        .map(|d| d.field.clone())
                        .unwrap_or_default()],
                ) {
                    (None, _) | (_, Value::Null) => true,
                    (Some(_), id) => seen.insert(format!("{s}/{id}")),
                },
                Item::Wait(d) => {
                    // Cases with a wait have one stream (a dedup horizon's).
                    let stream = &p.streams[0];
                    if stream
                        .dedup
                        .as_ref()
                        .is_some_and(|s| d.as_micros() as i64 > s.horizon_us)
                    {
                        seen.clear();
                    }
                    false
                }
                Item::BatchRun => false,
            })
            .collect()
    }
}

/// The name of the first `[[streams]]` of a pipeline text.
fn first_stream(text: &str) -> String {
    let config = tributary_core::config::from_toml_str(text).unwrap();
    config.streams[0].name.clone()
}

/// The events a batch run over `counted` events per stream reads: each view reads its
/// stream's (both streams' for a view joining two).
fn needed(p: &Pipeline, counted: &HashMap<String, u64>) -> u64 {
    let n = |s: &str| counted.get(s).copied().unwrap_or(0);
    p.views
        .iter()
        .map(|v| n(&v.stream) + v.stream_join().map_or(0, |j| n(&j.other)))
        .sum()
}

/// Whether the case's views join two streams (then every one must: their runs read
/// everything below the cutoff each time, where the others read only what is new).
fn joins(p: &Pipeline) -> bool {
    let joins = p.views.iter().filter(|v| v.stream_join().is_some()).count();
    assert!(
        joins == 0 || joins == p.views.len(),
        "a golden case has views joining two streams or none"
    );
    joins > 0
}

fn cases() -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("pipeline.toml").exists())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no golden cases under {}", root.display());
    dirs.iter().map(|d| Case::load(d)).collect()
}

/// Start `up` on the case's pipeline; with `cluster`, batch runs go to that Ballista
/// cluster.
async fn start(case: &Case, cluster: Option<&Cluster>) -> (tempfile::TempDir, Tributary) {
    let dir = tempfile::tempdir().unwrap();
    // Dimension tables of the case live beside it; Tributary finds them under its root.
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    for f in std::fs::read_dir(&case.dir).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if name.ends_with(".csv") || name.ends_with(".parquet") {
            std::fs::copy(f.path(), dir.path().join("data").join(&name)).unwrap();
        }
    }
    let config = Tributary::configure_pipeline(dir.path(), "", 50, &case.pipeline_text);
    let env = cluster.map(Cluster::env).unwrap_or_default();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let t = Tributary::start_role(dir.path(), &config, "up", &env).await;
    (dir, t)
}

/// Post one event; returns how many the stream accepted (0 or 1).
async fn post(t: &Tributary, stream: &str, events: &[Value]) -> u64 {
    let (status, body) = t.post(stream, &Value::Array(events.to_vec())).await;
    assert!(
        status == 200 || status == 400,
        "ingest answered {status}: {body}"
    );
    body["accepted"].as_u64().unwrap_or(0)
}

/// Post the events waiting (all of one stream) in one request.
async fn post_pending(
    t: &Tributary,
    pending: &mut Vec<(String, Value)>,
    posted: &mut HashMap<String, u64>,
) {
    let Some((stream, _)) = pending.first().cloned() else {
        return;
    };
    let events: Vec<Value> = std::mem::take(pending)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    *posted.entry(stream.clone()).or_default() += post(t, &stream, &events).await;
}

/// Wait until the speed layer has read `n` events of `stream`.
async fn speed_has(t: &Tributary, stream: &str, n: u64) {
    t.wait_for("/api/v1/speed/stats", |s| {
        s["streams"][stream]["events"].as_u64() == Some(n)
    })
    .await;
}

/// Incremental batch runs until, together with the earlier ones (`covered`), they have
/// read `counted` events per stream for every view: each incremental run reads only
/// what is new (a view joining two streams reads all below its cutoff every time).
async fn batch_covers_incrementally(
    t: &Tributary,
    p: &Pipeline,
    counted: &HashMap<String, u64>,
    covered: &mut u64,
) {
    let need = needed(p, counted);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = t.run_batch_kind("incremental").await;
        assert_eq!(run["kind"], "incremental", "{run}");
        let read = run["rows_in"].as_u64().unwrap();
        match joins(p) {
            true if read > 0 => *covered = read,
            true => {}
            false => *covered += read,
        }
        if *covered == need {
            return;
        }
        assert!(
            *covered < need && Instant::now() < deadline,
            "incremental runs read {covered} events of {need}: {run}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Batch runs until `rows_in` covers `counted` events per stream for every view
/// (accepted, repeats not counted): the archiver may still be flushing.
async fn batch_covers(t: &Tributary, p: &Pipeline, counted: &HashMap<String, u64>) {
    let need = needed(p, counted);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = t.run_batch().await;
        if run["rows_in"].as_u64() == Some(need) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "batch runs never covered {need} events: {run}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn view_answer(t: &Tributary, view: &str) -> Value {
    let (status, answer) = t.get(&format!("/api/v1/views/{view}")).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// One test per case directory, so that one failing case hides no other. Adding a
/// directory without a line here fails `every_case_directory_has_its_test`.
macro_rules! golden_cases {
    ($($name:ident),* $(,)?) => {
        const CASES: &[&str] = &[$(stringify!($name)),*];
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                run_case(stringify!($name), false).await;
            }
        )*
        /// The same cases with the batch layer on a Ballista cluster (a scheduler and
        /// two executors of this binary): the same answers, from the cluster's states.
        mod on_ballista {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run_case(stringify!($name), true).await;
                }
            )*
        }
    };
}

golden_cases!(
    click_funnel,
    click_to_order,
    counts_having,
    dedup_orders,
    dimension_join,
    hopping_sketches,
    iot_tumbling,
    session_clicks,
    statistics
);

#[test]
fn every_case_directory_has_its_test() {
    let names: Vec<String> = cases().into_iter().map(|c| c.name).collect();
    assert_eq!(names, CASES, "add the new case to golden_cases! above");
}

async fn run_case(name: &str, on_ballista: bool) {
    let bless = std::env::var("GOLDEN_BLESS").is_ok();
    let case = cases()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no golden case directory `{name}`"));
    {
        let p = pipeline(&format!(
            "storage-root = \"{}\"\n{}",
            case.dir.display(),
            case.pipeline_text
        ))
        .await;
        let events = case.counted(&p);
        let expected_path = case.dir.join("expected.json");
        // The one-pass reference first: the layers are held to it and to the file.
        let mut want = Map::new();
        for v in p.views.snapshot().iter() {
            want.insert(
                v.name.clone(),
                json!({
                    "rows": reference_streams(&p, v, &events).await,
                    "late_events": late_events_streams(&p, v, &events),
                }),
            );
        }
        let want = Value::Object(want);
        // Blessing holds the layers to the reference and writes the file only once
        // they all agree with it (at the end).
        let golden: Value = if bless {
            want.clone()
        } else {
            serde_json::from_str(
                &std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
                    panic!(
                        "{}: {e} (GOLDEN_BLESS=1 writes it)",
                        expected_path.display()
                    )
                }),
            )
            .unwrap()
        };
        let expected_rows = |view: &str| -> Vec<Row> {
            serde_json::from_value(golden[view]["rows"].clone()).unwrap()
        };
        for v in p.views.snapshot().iter() {
            assert_same_rows(
                &format!(
                    "{}: {} golden file vs one-pass DataFusion",
                    case.name, v.name
                ),
                &expected_rows(&v.name),
                &serde_json::from_value::<Vec<Row>>(want[&v.name]["rows"].clone()).unwrap(),
            );
        }

        // Speed layer alone, then batch layer alone.
        let cluster_dir = tempfile::tempdir().unwrap();
        let cluster = on_ballista.then(|| Cluster::start(cluster_dir.path(), 2));
        let (_dir, t) = start(&case, cluster.as_ref()).await;
        let mut accepted: HashMap<String, u64> = HashMap::new();
        for item in &case.items {
            match item {
                Item::Event(stream, e) => {
                    let n = accepted.entry(stream.clone()).or_default();
                    *n += post(&t, stream, std::slice::from_ref(e)).await;
                    speed_has(&t, stream, *n).await;
                }
                Item::Wait(d) => tokio::time::sleep(*d).await,
                Item::BatchRun => {}
            }
        }
        let (_, stats) = t.get("/api/v1/speed/stats").await;
        for v in p.views.snapshot().iter() {
            let answer = view_answer(&t, &v.name).await;
            assert!(
                sources(&answer).iter().all(|s| s == "speed"),
                "{}: before any batch run every row is the speed layer's: {answer}",
                case.name
            );
            assert_same_rows(
                &format!("{}: {} speed layer alone", case.name, v.name),
                &api_rows(v, &answer),
                &expected_rows(&v.name),
            );
            let late = stats["views"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["view"] == v.name.as_str())
                .unwrap()["late_events"]
                .clone();
            assert_eq!(
                late, golden[&v.name]["late_events"],
                "{}: {} late events",
                case.name, v.name
            );
        }
        batch_covers(&t, &p, &case.counted_per_stream(&p)).await;
        for v in p.views.snapshot().iter() {
            let answer = view_answer(&t, &v.name).await;
            assert!(
                sources(&answer).iter().all(|s| s == "batch"),
                "{}: after a batch run over every event each row is the batch layer's: {answer}",
                case.name
            );
            assert_same_rows(
                &format!("{}: {} batch layer alone", case.name, v.name),
                &api_rows(v, &answer),
                &expected_rows(&v.name),
            );
        }
        drop(t);

        // Merged: an incremental batch run at each mark (the first finds no states and
        // computes them in full), the rest from the speed layer.
        let (_dir, t) = start(&case, cluster.as_ref()).await;
        let mut covered = 0;
        let mut posted: HashMap<String, u64> = HashMap::new();
        let mut counted: HashMap<String, u64> = HashMap::new();
        // Consecutive events of one stream go in one request.
        let mut pending: Vec<(String, Value)> = Vec::new();
        for (item, counts) in case.items.iter().zip(case.counts(&p)) {
            if let (Item::Event(stream, _), true) = (item, counts) {
                *counted.entry(stream.clone()).or_default() += 1;
            }
            if let Item::Event(stream, e) = item
                && pending.last().is_none_or(|(s, _)| s == stream)
            {
                pending.push((stream.clone(), e.clone()));
                continue;
            }
            post_pending(&t, &mut pending, &mut posted).await;
            match item {
                Item::Event(stream, e) => pending.push((stream.clone(), e.clone())),
                Item::BatchRun => batch_covers_incrementally(&t, &p, &counted, &mut covered).await,
                Item::Wait(d) => tokio::time::sleep(*d).await,
            }
        }
        post_pending(&t, &mut pending, &mut posted).await;
        for (stream, n) in &posted {
            speed_has(&t, stream, *n).await;
        }
        for v in p.views.snapshot().iter() {
            let answer = view_answer(&t, &v.name).await;
            assert!(answer["cutoff"].is_string(), "{}: {answer}", case.name);
            let from = sources(&answer);
            assert!(
                from.iter().any(|s| s != "batch") && from.iter().any(|s| s != "speed"),
                "{}: the merged answer should mix both layers: {answer}",
                case.name
            );
            assert_same_rows(
                &format!("{}: {} merged", case.name, v.name),
                &api_rows(v, &answer),
                &expected_rows(&v.name),
            );
        }
        // Incremental runs up to every event: the batch states they merged are the
        // answer a full recompute gives (the batch-alone phase above).
        batch_covers_incrementally(&t, &p, &case.counted_per_stream(&p), &mut covered).await;
        for v in p.views.snapshot().iter() {
            let answer = view_answer(&t, &v.name).await;
            assert!(
                sources(&answer).iter().all(|s| s == "batch"),
                "{}: after incremental runs over every event each row is the batch layer's: {answer}",
                case.name
            );
            assert_same_rows(
                &format!("{}: {} incremental batch runs", case.name, v.name),
                &api_rows(v, &answer),
                &expected_rows(&v.name),
            );
        }
        // Every run went where the configuration sent it.
        let engine = if on_ballista { "ballista" } else { "local" };
        let (_, runs) = t.get("/api/v1/batch/runs").await;
        let runs = runs["runs"].as_array().unwrap();
        assert!(!runs.is_empty());
        for run in runs {
            assert_eq!(run["engine"], engine, "{}: {run}", case.name);
        }
        if bless {
            std::fs::write(
                &expected_path,
                serde_json::to_string_pretty(&want).unwrap() + "\n",
            )
            .unwrap();
        }
    }
}
