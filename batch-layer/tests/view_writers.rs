//! Two writers of one view's batch states (two serving processes backfilling a view
//! created at runtime) against a real Delta table: whatever the order, the table ends
//! with one writer's states, never both.

use tributary_batch::views::{self, Scope, Stamp};
use tributary_core::config::{self, ConfigSource};
use tributary_core::pipeline::Pipeline;
use tributary_core::schema::{BatchDecoder, LogPosition};
use tributary_core::storage::Storage;
use tributary_core::view::{CompiledView, SOURCE_BATCH, tag_source};

mod common;

use common::CLICKS as CONFIG;

/// The view's partial states over one click per page in `pages`.
async fn states(
    p: &Pipeline,
    view: &CompiledView,
    pages: &[&str],
) -> Vec<datafusion::arrow::record_batch::RecordBatch> {
    let mut dec = BatchDecoder::new(p.stream("clicks").unwrap(), false);
    for (i, page) in pages.iter().enumerate() {
        let record = format!("{{\"page\":\"{page}\",\"ts\":\"2026-01-01T00:30:00Z\"}}");
        let at = LogPosition {
            partition: 0,
            offset: i as u64,
            ingest_ts: 1,
        };
        dec.push_bytes(record.as_bytes(), at).unwrap();
    }
    let batch = tag_source(&dec.flush().unwrap(), SOURCE_BATCH, &view.input_schema).unwrap();
    view.run_partial_batches(vec![batch]).await.unwrap()
}

fn stamp(cutoff: i64) -> Stamp<'static> {
    Stamp {
        cutoff,
        max_event_ts: None,
        definition: 1,
        run_id: "test",
        kind: "full",
    }
}

/// Writer B opened the table before it existed; writer A then created it with its
/// states. B's commit must not leave A's states in place beside its own (delta-rs
/// retries the loser of version 0 without a conflict check): it fails, and B's run,
/// tried again, overwrites what it now sees.
#[tokio::test]
async fn a_writer_that_saw_no_table_does_not_add_to_another_writers_states() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config::from_toml_str(CONFIG).unwrap();
    let p = Pipeline::from_config(&cfg, &ConfigSource::EmbeddedDefault)
        .await
        .unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let view = p.view("per_page").unwrap().clone();
    let stale = tributary_core::delta::open(storage.batch_view_table(&view.name))
        .await
        .unwrap();
    assert_eq!(stale.version(), None);

    let a = states(&p, &view, &["a", "b"]).await;
    views::write(&storage, &view, stamp(10), Scope::All, a)
        .await
        .unwrap();
    let b = states(&p, &view, &["c"]).await;
    let lost = views::write_to(stale, &view, stamp(20), Scope::All, b.clone()).await;
    assert!(lost.is_err(), "{lost:?}");
    let held = views::load(&storage, &view).await.unwrap().unwrap();
    assert_eq!(
        (held.cutoff, held.version),
        (10, 0),
        "A's states, as version 0"
    );
    let rows: usize = held.states.iter().map(|s| s.num_rows()).sum();
    assert_eq!(rows, 2);

    views::write(&storage, &view, stamp(20), Scope::All, b)
        .await
        .unwrap();
    let held = views::load(&storage, &view).await.unwrap().unwrap();
    let rows: usize = held.states.iter().map(|s| s.num_rows()).sum();
    assert_eq!(held.cutoff, 20);
    assert_eq!(
        rows, 1,
        "only the last writer's states (page c), not both writers'"
    );
}
