//! Two speed processes (served over HTTP as `tributary speed` serves them) that hold
//! different catalog revisions of one view, as right after a change made elsewhere,
//! before both have followed it: their states are never added together, and the view's
//! backfill does not see the revision held until every process holds it.

use std::sync::Arc;

use tributary_core::CoreError;
use tributary_core::config::{ConfigSource, from_toml_str};
use tributary_core::pipeline::Pipeline;
use tributary_speed::ShardedSpeed;
use tributary_speed::SpeedLayer;
use tributary_speed::remote::RemoteSpeed;
use tributary_speed::source::SpeedSource;

mod common;
use common::CONFIG;

/// A speed process holding shard `shard` with revision `revision` of the view, served
/// on a free port; its base URL.
async fn speed_process(shard: &str, revision: i64) -> String {
    let text = format!("{CONFIG}\n[speed]\nshard = \"{shard}\"\n");
    let config = from_toml_str(&text).unwrap();
    let pipeline = Pipeline::from_config(&config, &ConfigSource::File("t.toml".into()))
        .await
        .unwrap();
    let mut view = (*pipeline.view("per_k").unwrap()).clone();
    view.revision = revision;
    pipeline.views.insert(Arc::new(view));
    let layer = SpeedLayer::new(&pipeline, &config.speed, &Default::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = tributary_speed::server::router(layer);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn gathered(revisions: [i64; 2]) -> ShardedSpeed {
    let config = from_toml_str(CONFIG).unwrap();
    let pipeline = Pipeline::from_config(&config, &ConfigSource::File("t.toml".into()))
        .await
        .unwrap();
    let shards = vec![
        RemoteSpeed::new(&speed_process("0/2", revisions[0]).await),
        RemoteSpeed::new(&speed_process("1/2", revisions[1]).await),
    ];
    ShardedSpeed::new(shards, &pipeline)
}

#[tokio::test]
async fn states_of_two_revisions_are_never_added() {
    let speed = gathered([2, 3]).await;
    match speed.snapshot("per_k", i64::MIN, None).await {
        Err(CoreError::RevisionMismatch { ours, theirs, .. }) => assert_eq!((ours, theirs), (2, 3)),
        other => panic!(
            "expected a revision mismatch, got {:?}",
            other.map(|s| s.revision)
        ),
    }
    // Until both hold revision 3, the backfill of revision 3 waits.
    assert_eq!(speed.holds_from("per_k", 3).await.unwrap(), None);
    assert_eq!(speed.holds_from("per_k", 2).await.unwrap(), None);

    let speed = gathered([3, 3]).await;
    let snap = speed.snapshot("per_k", i64::MIN, None).await.unwrap();
    assert_eq!(snap.revision, 3);
    assert!(speed.holds_from("per_k", 3).await.unwrap().is_some());
}
