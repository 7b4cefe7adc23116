//! The embedded log passes the shared log suite, and keeps its data across reopen.

use tributary_core::log::EventLog;
use tributary_ingest::log::{EmbeddedLog, conformance};

#[tokio::test]
async fn embedded_log_passes_the_shared_suite() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), &[("s".into(), 2)]).unwrap();
    conformance::run_all(&log).await;
}

#[tokio::test]
async fn embedded_log_survives_reopen_with_monotonic_clock() {
    let dir = tempfile::tempdir().unwrap();
    let last_ts = {
        let log = EmbeddedLog::open(dir.path(), &[("s".into(), 1)]).unwrap();
        let ack = log.append("s", 0, vec![b"{}".to_vec(); 3]).await.unwrap();
        log.commit_position("c", "s", 0, 2).await.unwrap();
        ack.ingest_ts
    };
    let log = EmbeddedLog::open(dir.path(), &[("s".into(), 1)]).unwrap();
    assert_eq!(log.end_offset("s", 0).await.unwrap(), 3);
    assert_eq!(log.position("c", "s", 0).await.unwrap(), Some(2));
    let ack = log.append("s", 0, vec![b"{}".to_vec()]).await.unwrap();
    assert_eq!(ack.first_offset, 3);
    assert!(ack.ingest_ts >= last_ts);
}

#[tokio::test]
async fn second_open_of_the_same_log_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedLog::open(dir.path(), &[("s".into(), 1)]).unwrap();
    let err = EmbeddedLog::open(dir.path(), &[("s".into(), 1)])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("another tributary process"), "{err}");
}
