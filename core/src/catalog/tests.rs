//! The catalog's tests: rows, following, and a catalog of an older schema.

use super::*;

fn record(name: &str, lifecycle: Lifecycle, revision: i64) -> ViewRecord {
    ViewRecord {
        name: name.into(),
        sql: format!("SELECT {revision}"),
        allowed_lateness_ms: 0,
        lifecycle,
        revision,
        at: 1_000 * revision,
        origin: "api".into(),
        schedule: None,
    }
}

#[tokio::test]
async fn the_current_row_of_each_name_is_its_newest_revision() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::new(&Storage::open(dir.path()).unwrap());
    assert!(catalog.current().await.unwrap().is_empty());
    catalog
        .append(&[
            record("a", Lifecycle::Running, 1),
            record("b", Lifecycle::Running, 1),
        ])
        .await
        .unwrap();
    catalog
        .append(&[record("a", Lifecycle::Paused, 2)])
        .await
        .unwrap();
    let now = catalog.current().await.unwrap();
    assert_eq!(
        now,
        vec![
            record("a", Lifecycle::Paused, 2),
            record("b", Lifecycle::Running, 1)
        ]
    );
    assert_eq!(catalog.history().await.unwrap().len(), 3);
}

const FILE: &str = r#"
storage-root = "x"
[[streams]]
name = "r"
event-time = "ts"
fields = [{ name = "k", type = "string" }, { name = "ts", type = "timestamp" }]
[[views]]
name = "per_k"
sql = "SELECT k, date_bin(INTERVAL '1 minute', ts) AS w, count(*) AS n FROM r GROUP BY k, w"
"#;

#[tokio::test]
async fn a_process_follows_changes_another_made_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::new(&Storage::open(dir.path()).unwrap());
    let config = crate::config::from_toml_str(FILE).unwrap();
    let source = crate::config::ConfigSource::File("t.toml".into());
    let seeder = crate::pipeline::Pipeline::from_config(&config, &source)
        .await
        .unwrap();
    let follower = crate::pipeline::Pipeline::from_config(&config, &source)
        .await
        .unwrap();
    let none = |_: &str| {};
    // The follower reads before the seeder writes: the same revision either way.
    catalog
        .reconcile(&follower, &config.views, false, &none)
        .await
        .unwrap();
    catalog
        .reconcile(&seeder, &config.views, true, &none)
        .await
        .unwrap();
    assert_eq!(follower.view("per_k").unwrap().revision, 1);
    assert_eq!(seeder.view("per_k").unwrap().revision, 1);
    let held = follower.view("per_k").unwrap();
    let pass = catalog
        .reconcile(&follower, &config.views, false, &none)
        .await
        .unwrap();
    assert!(pass.installed.is_empty() && pass.removed.is_empty());
    assert!(Arc::ptr_eq(&held, &follower.view("per_k").unwrap()));

    // Replaced elsewhere: compiled again at the new revision, named beforehand.
    let mut replaced = catalog.current().await.unwrap().remove(0);
    replaced.sql = replaced.sql.replace("1 minute", "5 minutes");
    replaced.revision = 2;
    replaced.origin = "api".into();
    catalog
        .append(std::slice::from_ref(&replaced))
        .await
        .unwrap();
    let told = std::sync::Mutex::new(Vec::new());
    let tell = |name: &str| told.lock().unwrap().push(name.to_string());
    let pass = catalog
        .reconcile(&follower, &config.views, false, &tell)
        .await
        .unwrap();
    assert_eq!(pass.installed.len(), 1);
    assert_eq!(follower.view("per_k").unwrap().revision, 2);
    assert!(follower.view("per_k").unwrap().sql.contains("5 minutes"));
    assert_eq!(*told.lock().unwrap(), ["per_k"]);

    // Paused elsewhere: taken out.
    replaced.lifecycle = Lifecycle::Paused;
    replaced.revision = 3;
    catalog
        .append(std::slice::from_ref(&replaced))
        .await
        .unwrap();
    let pass = catalog
        .reconcile(&follower, &config.views, false, &none)
        .await
        .unwrap();
    assert_eq!(pass.removed, ["per_k"]);
    assert!(follower.view("per_k").is_none());
    assert_eq!(pass.paused.len(), 1);
}

#[tokio::test]
async fn a_catalog_written_before_schedules_were_kept_gains_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::new(&Storage::open(dir.path()).unwrap());
    // The seven columns of the first catalogs.
    let old = Arc::new(Schema::new(schema().fields()[..7].to_vec()));
    let r = record("a", Lifecycle::Running, 1);
    let utc = TimestampMicrosecondArray::from(vec![r.at]).with_timezone("UTC");
    let batch = RecordBatch::try_new(
        old,
        vec![
            Arc::new(StringArray::from(vec![r.name.clone()])),
            Arc::new(StringArray::from(vec![r.sql.clone()])),
            Arc::new(Int64Array::from(vec![0])),
            Arc::new(StringArray::from(vec!["running"])),
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(utc),
            Arc::new(StringArray::from(vec!["api"])),
        ],
    )
    .unwrap();
    crate::delta::open(catalog.url.clone())
        .await
        .unwrap()
        .write(vec![batch])
        .await
        .unwrap();
    assert_eq!(catalog.current().await.unwrap(), vec![r.clone()]);
    let mut scheduled = record("a", Lifecycle::Running, 2);
    scheduled.schedule = Some("0 * * * *".into());
    catalog
        .append(std::slice::from_ref(&scheduled))
        .await
        .unwrap();
    assert_eq!(catalog.history().await.unwrap(), vec![r, scheduled]);
}
