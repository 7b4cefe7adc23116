//! Pipelines refused with their file, key and reason, and what a good one holds.

use super::*;
use crate::config::from_toml_str;

async fn check(toml: &str) -> String {
    let config = from_toml_str(toml).unwrap();
    Pipeline::from_config(&config, &ConfigSource::File("t.toml".into()))
        .await
        .unwrap_err()
        .to_string()
}

const STREAM: &str = "[[streams]]\nname='r'\nevent-time='ts'\nfields=[{name='k',type='string'},{name='ts',type='timestamp'}]\n";

#[tokio::test]
async fn bad_pipelines_name_file_key_and_problem() {
    let e = check("[[streams]]\nname='r'\nevent-time='ts'\nfields=[{name='ts',type='timestamp'},{name='x',type='decimal'}]\n").await;
    assert!(
        e.contains("t.toml") && e.contains("streams[0].fields[1].type") && e.contains("decimal"),
        "{e}"
    );
    let e = check(&format!(
        "{STREAM}[[views]]\nname='v'\nsql='SELECT k, count(*) FROM other GROUP BY k'\n"
    ))
    .await;
    assert!(e.contains("views[0].sql") && e.contains("other"), "{e}");
    let e = check(&format!("{STREAM}[[views]]\nname='v'\nsql=\"SELECT q, date_bin(INTERVAL '1 minute', ts) AS w, count(*) FROM r GROUP BY q, w\"\n")).await;
    assert!(e.contains("views[0].sql") && e.contains("q"), "{e}");
    let e =
        check("[[streams]]\nname='r'\nevent-time='when'\nfields=[{name='ts',type='timestamp'}]\n")
            .await;
    assert!(
        e.contains("streams[0].event-time") && e.contains("when"),
        "{e}"
    );
}

/// A view joining two streams needs one speed process holding every partition of
/// both; an unbounded join or one over a stream with a dedup rule is refused.
#[tokio::test]
async fn joins_of_two_streams_name_what_they_cannot_do() {
    let two = format!(
        "{STREAM}[[streams]]\nname='o'\nevent-time='ts'\nfields=[{{name='k',type='string'}},{{name='ts',type='timestamp'}}]\n"
    );
    let join = "SELECT date_bin(INTERVAL '1 minute', r.ts) AS w, count(*) AS n FROM r JOIN o ON r.k = o.k AND o.ts BETWEEN r.ts AND r.ts + INTERVAL '1 minute' GROUP BY w";
    let e = check(&format!(
        "[speed]\nshard='0/2'\n{two}[[views]]\nname='v'\nsql=\"{join}\"\n"
    ))
    .await;
    assert!(
        e.contains("speed.shard") && e.contains("view `v` joins two streams"),
        "{e}"
    );
    let unbounded = "SELECT date_bin(INTERVAL '1 minute', r.ts) AS w, count(*) AS n FROM r JOIN o ON r.k = o.k GROUP BY w";
    let e = check(&format!("{two}[[views]]\nname='v'\nsql=\"{unbounded}\"\n")).await;
    assert!(
        e.contains("views[0].sql") && e.contains("time bound"),
        "{e}"
    );
    let dedup = two.replacen("event-time='ts'", "event-time='ts'\nid-field='k'", 1);
    let e = check(&format!("{dedup}[[views]]\nname='v'\nsql=\"{join}\"\n")).await;
    assert!(e.contains("`r` has a dedup rule"), "{e}");
    let ok = format!("{two}[[views]]\nname='v'\nsql=\"{join}\"\n");
    let config = from_toml_str(&ok).unwrap();
    let p = Pipeline::from_config(&config, &ConfigSource::File("t.toml".into()))
        .await
        .unwrap();
    assert_eq!(p.views_of("o").len(), 1, "the view reads both streams");
    assert_eq!(p.views_of("r").len(), 1);
}

/// A view named like a stream's master or dead-letter table would hide the table
/// from SQL: refused in the file (views and append views) and at runtime.
#[tokio::test]
async fn views_cannot_take_the_sql_names_of_stored_tables() {
    let sql =
        "SELECT k, date_bin(INTERVAL '1 minute', ts) AS w, count(*) AS n FROM r GROUP BY k, w";
    for name in ["master_r", "dead_letters_r"] {
        let e = check(&format!(
            "{STREAM}[[views]]\nname='{name}'\nsql=\"{sql}\"\n"
        ))
        .await;
        assert!(
            e.contains("views[0].name") && e.contains("SQL name of stream `r`"),
            "{e}"
        );
        let e = check(&format!(
            "{STREAM}[[append-views]]\nname='{name}'\nsql='SELECT k, ts FROM r'\n"
        ))
        .await;
        assert!(e.contains("append-views[0].name"), "{e}");
    }
    let config = from_toml_str(STREAM).unwrap();
    let pipeline = Pipeline::from_config(&config, &ConfigSource::File("t.toml".into()))
        .await
        .unwrap();
    let view = |name: &str| crate::config::ViewConfig {
        name: name.into(),
        sql: sql.into(),
        allowed_lateness_ms: 0,
        schedule: None,
    };
    let e = pipeline.compile_view(&view("master_r")).await.unwrap_err();
    assert!(e.to_string().contains("master table"), "{e}");
    // Another stream's prefix is only a name.
    pipeline.compile_view(&view("master_other")).await.unwrap();
}

#[tokio::test]
async fn bad_sinks_name_their_key() {
    let view = "[[views]]\nname='v'\nsql=\"SELECT k, date_bin(INTERVAL '1 minute', ts) AS w, count(*) AS n FROM r GROUP BY k, w\"\n";
    let e = check(&format!(
        "{STREAM}{view}[[sinks]]\nname='s'\nview='nope'\nkind='delta'\npath='x'\n"
    ))
    .await;
    assert!(e.contains("sinks[0].view") && e.contains("nope"), "{e}");
    let e = check(&format!(
        "{STREAM}{view}[[sinks]]\nname='s'\nview='v'\nkind='webhook'\nurl='http://h/'\n"
    ))
    .await;
    assert!(e.contains("sinks[0].secret"), "{e}");
    let e = check(&format!(
        "{STREAM}{view}[[sinks]]\nname='s'\nview='v'\nkind='delta'\npath='a'\n[[sinks]]\nname='s'\nview='v'\nkind='delta'\npath='b'\n"
    ))
    .await;
    assert!(e.contains("sinks[1].name") && e.contains("twice"), "{e}");
}

const KAFKA: &str = "[log]\nkind='kafka'\ntopic-prefix='t.'\n";
const UPSTREAM: &str = "[[views]]\nname='v'\nsql=\"SELECT k, date_bin(INTERVAL '1 minute', ts) AS w, count(*) AS n, avg(x) AS m FROM r GROUP BY k, w\"\n";
const STREAM_X: &str = "[[streams]]\nname='r'\nevent-time='ts'\nfields=[{name='k',type='string'},{name='x',type='float64'},{name='ts',type='timestamp'}]\n";

#[tokio::test]
async fn a_stream_from_a_view_takes_its_shape_and_feeds_views() {
    let toml = format!(
        "{KAFKA}[[sinks]]\nname='s'\nview='v'\nkind='kafka'\ntopic='t.c'\n{STREAM_X}[[streams]]\nname='c'\nfrom-view='v'\n{UPSTREAM}[[views]]\nname='d'\nsql=\"SELECT date_bin(INTERVAL '1 hour', w) AS h, count(*) AS windows, sum(n) AS n FROM c WHERE NOT _correction GROUP BY h\"\n"
    );
    let config = from_toml_str(&toml).unwrap();
    let p = Pipeline::from_config(&config, &ConfigSource::File("t.toml".into()))
        .await
        .unwrap();
    let c = p.stream("c").unwrap();
    let names: Vec<&str> = c.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "k",
            "w",
            "n",
            "m",
            "_key",
            "_view",
            "_version",
            "_complete",
            "_correction",
            "_retracted",
            "_emitted_at"
        ]
    );
    assert_eq!(c.event_time, "w");
    assert_eq!(c.dedup.as_ref().unwrap().field, "_key");
    assert_eq!(p.view("d").unwrap().stream, "c");
    assert_eq!(
        p.streams
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["r", "c"]
    );
}

#[tokio::test]
async fn chaining_mistakes_name_their_key() {
    let e = check(&format!(
        "{STREAM_X}[[streams]]\nname='c'\nfrom-view='v'\n{UPSTREAM}"
    ))
    .await;
    assert!(
        e.contains("streams[1].from-view") && e.contains("kafka"),
        "{e}"
    );
    let e = check(&format!(
        "{KAFKA}{STREAM_X}[[streams]]\nname='c'\nfrom-view='nope'\n{UPSTREAM}"
    ))
    .await;
    assert!(
        e.contains("streams[1].from-view") && e.contains("nope"),
        "{e}"
    );
    let e = check(&format!(
        "{KAFKA}{STREAM_X}[[streams]]\nname='c'\nfrom-view='v2'\n{UPSTREAM}[[views]]\nname='v2'\nsql=\"SELECT date_bin(INTERVAL '1 hour', w) AS h, count(*) AS n FROM c GROUP BY h\"\n"
    ))
    .await;
    assert!(e.contains("cycle"), "{e}");
    let e = check(&format!(
        "{KAFKA}[[sinks]]\nname='s'\nview='v'\nkind='kafka'\ntopic='t.r'\n{STREAM_X}{UPSTREAM}"
    ))
    .await;
    assert!(
        e.contains("sinks[0].topic") && e.contains("from-view"),
        "{e}"
    );
    let e = check(&format!(
        "{KAFKA}{STREAM_X}[[streams]]\nname='c'\nfrom-view='v'\nevent-time='w'\nfields=[{{name='w',type='timestamp'}}]\n{UPSTREAM}"
    ))
    .await;
    assert!(e.contains("streams[1].fields"), "{e}");
}
