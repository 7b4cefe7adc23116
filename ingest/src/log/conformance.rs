//! The shared test suite of the event-log trait. Each backend's tests call
//! [`run_all`] with a fresh log that has stream `s` with 2 partitions.

use tributary_core::log::EventLog;

fn payload(i: usize) -> Vec<u8> {
    format!("{{\"i\":{i}}}").into_bytes()
}

/// Run every check; panics with a message naming the failed property.
pub async fn run_all(log: &dyn EventLog) {
    append_and_read_back(log).await;
    ingest_ts_is_monotonic_and_bounds_hold(log).await;
    offsets_by_ingest_ts(log).await;
    consumer_positions(log).await;
    unknown_stream_is_an_error(log).await;
}

async fn append_and_read_back(log: &dyn EventLog) {
    let start = log.end_offset("s", 0).await.unwrap();
    let ack = log
        .append("s", 0, (0..10).map(payload).collect())
        .await
        .unwrap();
    assert_eq!(ack.first_offset, start, "append starts at the end offset");
    assert_eq!(ack.count, 10);
    assert_eq!(log.end_offset("s", 0).await.unwrap(), start + 10);
    let recs = log.read("s", 0, start + 3, 4).await.unwrap().records;
    assert_eq!(recs.len(), 4, "read honours max");
    assert_eq!(recs[0].offset, start + 3);
    assert_eq!(recs[0].payload, payload(3));
    assert_eq!(recs[3].offset, start + 6);
    let tail = log.read("s", 0, start + 10, 100).await.unwrap();
    assert_eq!(tail.next_offset, start + 10, "an empty read does not move");
    let tail = tail.records;
    assert!(tail.is_empty(), "reading at the end returns nothing");
    let other = log.end_offset("s", 1).await.unwrap();
    log.append("s", 1, vec![payload(99)]).await.unwrap();
    assert_eq!(
        log.end_offset("s", 0).await.unwrap(),
        start + 10,
        "partitions are independent"
    );
    assert_eq!(log.end_offset("s", 1).await.unwrap(), other + 1);
}

async fn ingest_ts_is_monotonic_and_bounds_hold(log: &dyn EventLog) {
    let mut handles = Vec::new();
    for i in 0..20 {
        handles.push(log.append("s", (i % 2) as u32, vec![payload(i), payload(i + 1)]));
    }
    for h in handles {
        h.await.unwrap();
    }
    for p in 0..2 {
        let recs = log.read("s", p, 0, 100_000).await.unwrap().records;
        for w in recs.windows(2) {
            assert!(
                w[0].ingest_ts <= w[1].ingest_ts,
                "ingest_ts decreased in partition {p}"
            );
            assert_eq!(w[0].offset + 1, w[1].offset, "offsets are dense");
        }
    }
    // The bound at the end of a partition holds for records appended later...
    let end = log.end_offset("s", 0).await.unwrap();
    let bound = log.ingest_ts_bound("s", 0, end).await.unwrap();
    let ack = log.append("s", 0, vec![payload(1)]).await.unwrap();
    let back = log.read("s", 0, ack.first_offset, 1).await.unwrap().records;
    assert!(
        ack.ingest_ts <= back[0].ingest_ts,
        "the ack's stamp is a lower bound"
    );
    assert!(
        back[0].ingest_ts >= bound,
        "an append after the bound is stamped at or after it"
    );
    // ...and inside the partition it never exceeds the records from that offset on.
    let recs = log.read("s", 0, 0, 100_000).await.unwrap().records;
    for r in recs.iter().step_by(5) {
        let b = log.ingest_ts_bound("s", 0, r.offset).await.unwrap();
        assert!(
            b <= r.ingest_ts,
            "bound above a record at or after its offset"
        );
    }
    let b0 = log.ingest_ts_bound("s", 0, 0).await.unwrap();
    assert_eq!(
        b0, recs[0].ingest_ts,
        "the bound is tight: the first record's stamp"
    );
}

async fn offsets_by_ingest_ts(log: &dyn EventLog) {
    let recs = log.read("s", 0, 0, 100_000).await.unwrap().records;
    let end = log.end_offset("s", 0).await.unwrap();
    for r in recs.iter().step_by(3) {
        let o = log.offset_for_ingest_ts("s", 0, r.ingest_ts).await.unwrap();
        assert!(o <= r.offset);
        let first = recs.iter().find(|x| x.ingest_ts >= r.ingest_ts).unwrap();
        assert_eq!(o, first.offset, "first offset at or after the time");
    }
    let last = recs.last().unwrap().ingest_ts;
    assert_eq!(
        log.offset_for_ingest_ts("s", 0, last + 1).await.unwrap(),
        end
    );
    assert_eq!(log.offset_for_ingest_ts("s", 0, i64::MIN).await.unwrap(), 0);
}

async fn consumer_positions(log: &dyn EventLog) {
    assert_eq!(log.position("c1", "s", 0).await.unwrap(), None);
    log.commit_position("c1", "s", 0, 5).await.unwrap();
    log.commit_position("c2", "s", 0, 7).await.unwrap();
    assert_eq!(log.position("c1", "s", 0).await.unwrap(), Some(5));
    assert_eq!(log.position("c2", "s", 0).await.unwrap(), Some(7));
    assert_eq!(log.position("c1", "s", 1).await.unwrap(), None);
    log.commit_position("c1", "s", 0, 9).await.unwrap();
    assert_eq!(log.position("c1", "s", 0).await.unwrap(), Some(9));
}

async fn unknown_stream_is_an_error(log: &dyn EventLog) {
    assert!(log.append("nope", 0, vec![payload(0)]).await.is_err());
    assert!(log.read("nope", 0, 0, 1).await.is_err());
    assert!(
        log.append("s", 7, vec![payload(0)]).await.is_err(),
        "partition out of range"
    );
}
