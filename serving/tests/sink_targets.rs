//! A Delta sink takes a delivery once however often it is re-sent (its number is the
//! commit's `txn` version), and a sink's progress file round-trips.

use serde_json::{Map, Value, json};
use tributary_core::config::{ConfigSource, OutputMode, from_toml_str};
use tributary_core::pipeline::Pipeline;
use tributary_core::storage::Storage;
use tributary_serving::sinks::delta::DeltaSink;
use tributary_serving::sinks::plan::{self, Progress, Shape};
use tributary_serving::sinks::progress::ProgressFile;
use tributary_serving::sinks::targets::Target;

const PIPELINE: &str = r#"
[[streams]]
name = "r"
event-time = "ts"
fields = [{ name = "k", type = "string" }, { name = "x", type = "float64" }, { name = "ts", type = "timestamp" }]

[[views]]
name = "v"
sql = "SELECT k, date_bin(INTERVAL '1 minute', ts) AS w, count(*) AS n, avg(x) AS mean FROM r GROUP BY k, w"
"#;

fn row(w: &str, k: &str, n: i64, mean: f64) -> Map<String, Value> {
    json!({"w": w, "k": k, "n": n, "mean": mean, "complete": true})
        .as_object()
        .unwrap()
        .clone()
}

async fn count(url: &url::Url) -> usize {
    let table = deltalake::DeltaTable::try_from_url(url.clone())
        .await
        .unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    let batches = ctx
        .sql("SELECT * FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    batches.iter().map(|b| b.num_rows()).sum()
}

#[tokio::test]
async fn a_resent_delivery_is_committed_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = from_toml_str(PIPELINE).unwrap();
    let pipeline = Pipeline::from_config(&config, &ConfigSource::EmbeddedDefault)
        .await
        .unwrap();
    let view = pipeline.view("v").unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let url = storage.table_at(std::path::Path::new("out/table")).unwrap();
    let shape = Shape {
        view: &view.name,
        window: &view.window,
        keys: &view.keys,
        values: &view.values,
    };
    let mut progress = Progress::default();
    let now = "2026-01-01T00:00:00Z";
    let first = [
        row("2026-01-01T00:00:00Z", "a", 2, 1.5),
        row("2026-01-01T00:00:00Z", "b", 1, 3.0),
    ];
    let (rows, marks) = plan::plan(OutputMode::Update, &shape, &progress, &first, now);
    progress.push(rows, marks);
    let sink = DeltaSink::new("s", url.clone(), &view);
    sink.deliver(&progress.pending[0]).await.unwrap();
    assert_eq!(count(&url).await, 2);
    // The answer was lost (a crash before the progress file said so): sent again.
    let again = DeltaSink::new("s", url.clone(), &view);
    again.deliver(&progress.pending[0]).await.unwrap();
    assert_eq!(count(&url).await, 2, "a re-sent delivery was written twice");
    progress.acknowledge();
    let second = [row("2026-01-01T00:00:00Z", "a", 3, 2.0), first[1].clone()];
    let (rows, marks) = plan::plan(OutputMode::Update, &shape, &progress, &second, now);
    assert_eq!(rows.len(), 1);
    progress.push(rows, marks);
    again.deliver(&progress.pending[0]).await.unwrap();
    assert_eq!(count(&url).await, 3);

    // The progress, pending delivery included, survives a restart.
    let file = ProgressFile::of(&storage, "s").unwrap();
    assert_eq!(file.load().await.unwrap(), Progress::default());
    file.save(&progress).await.unwrap();
    assert_eq!(file.load().await.unwrap(), progress);
}
