//! Views Tributary refuses, and what the refusal says: always the user's SQL and the
//! reason, never the hidden columns the compilation adds.

use super::tests::compile;

#[tokio::test]
async fn refusals_say_what_is_wrong() {
    let cases = [
        ("SELEKT 1", "does not parse"),
        (
            "SELECT device_type, date_bin(INTERVAL '1 minute', ts) AS w, count(*) FROM nowhere GROUP BY device_type, w",
            "not found",
        ),
        (
            "SELECT nope, date_bin(INTERVAL '1 minute', ts) AS w, count(*) FROM readings GROUP BY nope, w",
            "nope",
        ),
        (
            "SELECT device_type, count(*) FROM readings GROUP BY device_type",
            "window",
        ),
        (
            "SELECT device_type, date_bin(INTERVAL '1 minute', ts) AS w, median(signal) FROM readings GROUP BY device_type, w",
            "median",
        ),
        (
            "SELECT device_type, date_bin(INTERVAL '1 minute', ts) AS w, corr(signal, signal) FROM readings GROUP BY device_type, w",
            "`corr` is not supported",
        ),
        (
            "SELECT device_type, date_bin(INTERVAL '1 minute', ts) AS w, first_value(signal ORDER BY ts) FROM readings GROUP BY device_type, w",
            "`first_value` is not supported",
        ),
        (
            "SELECT device_type, date_bin(INTERVAL '1 minute', ts) AS w, stddev(DISTINCT signal) FROM readings GROUP BY device_type, w",
            "stddev(DISTINCT",
        ),
        (
            "SELECT device_type, date_bin(INTERVAL '1 minute', ts) AS w, count(DISTINCT device) FROM readings GROUP BY device_type, w",
            "DISTINCT",
        ),
        (
            "SELECT device_type, date_bin(INTERVAL '1 minute', ts) AS w, count(*) FROM readings GROUP BY device_type, w ORDER BY w",
            "ORDER BY",
        ),
        (
            "SELECT device, count(*) FROM readings GROUP BY device, date_bin(INTERVAL '1 minute', ts)",
            "SELECT list",
        ),
        ("SELECT 1; SELECT 2", "exactly one"),
        ("INSERT INTO readings VALUES (1)", "SELECT"),
    ];
    for (sql, expected) in cases {
        let err = compile(sql).await.unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "{sql}\n  -> {err}\n  expected to contain `{expected}`"
        );
    }
}

#[tokio::test]
async fn unsupported_windows_are_refused_with_reasons() {
    let cases = [
        (
            "SELECT session(ts) AS s, count(*) FROM readings GROUP BY s",
            "needs a gap",
        ),
        (
            "SELECT session(ts, INTERVAL '5 minutes') AS s, date_bin(INTERVAL '1 minute', ts) AS t, count(*) FROM readings GROUP BY s, t",
            "only one window",
        ),
        (
            "SELECT session(ts, INTERVAL '1 month') AS s, count(*) FROM readings GROUP BY s",
            "months",
        ),
        (
            "SELECT session(ts, INTERVAL '1 minute') AS s, max(ts) AS session_end FROM readings GROUP BY s",
            "the column a session view adds",
        ),
        (
            "SELECT session(signal, INTERVAL '5 minutes') AS s, count(*) FROM readings GROUP BY s",
            "timestamp",
        ),
        (
            "SELECT date_bin(INTERVAL '1 month', ts) AS w, count(*) FROM readings GROUP BY w",
            "months",
        ),
        (
            "SELECT hop(ts, INTERVAL '1 minute', INTERVAL '5 minutes') AS w, count(*) FROM readings GROUP BY w",
            "slide must not exceed",
        ),
        (
            "SELECT hop(ts, INTERVAL '1 day', INTERVAL '1 millisecond') AS w, count(*) FROM readings GROUP BY w",
            "86400000 windows",
        ),
        (
            "SELECT hop(ts, INTERVAL '1 day', INTERVAL '1 minute') AS w, count(*) FROM readings GROUP BY w",
            "",
        ),
        (
            "SELECT hop(ts, INTERVAL '5 minutes', INTERVAL '1 minute') AS w, date_bin(INTERVAL '1 minute', ts) AS t, count(*) FROM readings GROUP BY w, t",
            "only one window",
        ),
        (
            "SELECT device, date_bin(INTERVAL '1 minute', ts) AS w, approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY signal) AS p, count(*) FROM (SELECT * FROM readings) GROUP BY device, w",
            "",
        ),
    ];
    for (sql, expected) in cases {
        let res = compile(sql).await;
        if expected.is_empty() {
            res.unwrap();
            continue;
        }
        let err = res.unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "{sql}\n  -> {err}\n  expected to contain `{expected}`"
        );
    }
}

/// Refusals speak of the user's SQL, never of the hidden `_src` the rewrite adds.
#[tokio::test]
async fn refusals_never_mention_the_hidden_source_column() {
    for sql in ["SELECT 1", "SELECT 1 AS x GROUP BY x", "SELECT now() AS t"] {
        let e = compile(sql).await.unwrap_err().to_string();
        assert!(!e.contains("_src"), "{sql}: {e}");
        assert!(e.contains("readings"), "{sql}: {e}");
    }
    let e = compile("SELECT devic, date_bin(INTERVAL '1 minute', ts) AS w, count(*) FROM readings GROUP BY devic, w")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("devic"), "{e}");
}

/// `_src` tells the layers apart: a view may neither read it nor name a column so.
#[tokio::test]
async fn the_hidden_source_column_is_reserved() {
    for sql in [
        "SELECT device, date_bin(INTERVAL '1 minute', ts) AS w, count(*) AS _src FROM readings GROUP BY device, w",
        "SELECT device, date_bin(INTERVAL '1 minute', ts) AS w, sum(_src) AS s FROM readings GROUP BY device, w",
        "SELECT device, date_bin(INTERVAL '1 minute', ts) AS w, count(*) AS n FROM readings WHERE \"_SRC\" = 2 GROUP BY device, w",
    ] {
        let e = compile(sql).await.unwrap_err().to_string();
        assert!(e.contains("`_src` is reserved"), "{sql}: {e}");
    }
}

/// Answers add `_source` and `complete` to each row; an empty name cannot be asked for.
#[tokio::test]
async fn output_names_that_answers_cannot_carry_are_refused() {
    for (name, says) in [
        ("complete", "carries already"),
        ("_source", "carries already"),
        ("\"\"", "empty name"),
    ] {
        let sql = format!(
            "SELECT device, date_bin(INTERVAL '1 minute', ts) AS w, count(*) AS {name} FROM readings GROUP BY device, w"
        );
        let e = compile(&sql).await.unwrap_err().to_string();
        assert!(e.contains(says), "{sql}: {e}");
    }
}

/// The two layers evaluate a view at different times: a function of the clock or of
/// chance would make their states disagree.
#[tokio::test]
async fn functions_that_are_not_of_the_rows_are_refused() {
    for (expr, name) in [
        ("max(now())", "now"),
        ("sum(random())", "random"),
        ("count(*) FILTER (WHERE ts < now())", "now"),
        ("min(uuid())", "uuid"),
    ] {
        let sql = format!(
            "SELECT device, date_bin(INTERVAL '1 minute', ts) AS w, {expr} AS x FROM readings GROUP BY device, w"
        );
        let e = compile(&sql).await.unwrap_err().to_string();
        assert!(e.contains(&format!("`{name}()`")), "{sql}: {e}");
    }
    let e = compile(
        "SELECT device, date_bin(INTERVAL '1 minute', ts) AS w, count(*) AS n FROM readings WHERE ts > now() - INTERVAL '1 day' GROUP BY device, w",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("`now()`"), "{e}");
    // Functions of the rows stay allowed.
    compile("SELECT device, date_bin(INTERVAL '1 minute', ts) AS w, max(abs(signal) + length(device)) AS x FROM readings WHERE upper(device) <> 'X' GROUP BY device, w")
        .await
        .unwrap();
}

/// Aggregate arguments DataFusion checks only when a group starts, and widths finer
/// than event times, are refused when the view is made (not event by event).
#[tokio::test]
async fn aggregate_arguments_and_widths_are_checked_up_front() {
    for (part, says) in [
        ("approx_percentile_cont(signal, 1.5)", "between 0.0 and 1.0"),
        (
            "approx_percentile_cont(signal, signal)",
            "must be a literal",
        ),
    ] {
        let sql = format!(
            "SELECT device, date_bin(INTERVAL '1 minute', ts) AS w, {part} AS p FROM readings GROUP BY device, w"
        );
        let e = compile(&sql).await.unwrap_err().to_string();
        assert!(e.contains(says), "{sql}: {e}");
    }
    for width in ["1 nanosecond", "1 day 1 nanosecond"] {
        let sql = format!(
            "SELECT device, date_bin(INTERVAL '{width}', ts) AS w, count(*) AS n FROM readings GROUP BY device, w"
        );
        let e = compile(&sql).await.unwrap_err().to_string();
        assert!(e.contains("whole microseconds"), "{sql}: {e}");
    }
    compile("SELECT device, date_bin(INTERVAL '1 microsecond', ts) AS w, approx_percentile_cont(signal, 0.9) AS p FROM readings GROUP BY device, w")
        .await
        .unwrap();
}

/// A definition nested or chained deep enough overflowed the planner's stack and
/// aborted the process (a runtime view with 3,000 `+` did); up to the limit it plans on
/// an ordinary thread's stack.
#[tokio::test]
async fn definitions_deeper_than_the_limit_are_refused_before_planning() {
    let view = |expr: &str| {
        format!(
            "SELECT device_type, date_bin(INTERVAL '1 minute', ts) AS w, sum({expr}) AS s \
             FROM readings GROUP BY device_type, w"
        )
    };
    let chain = |n: usize| vec!["signal"; n + 1].join(" + ");
    let nested = |n: usize| format!("{}signal{}", "abs(".repeat(n), ")".repeat(n));
    for (sql, why) in [
        (view(&chain(3_000)), "3000 operators"),
        (view(&chain(129)), "129 operators; the limit is 128"),
        (view(&nested(3_000)), "3001 deep"),
    ] {
        let e = compile(&sql).await.unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
    // At the limit, it plans on a test thread's 2 MiB stack in a debug build (250
    // operators did not); DataFusion's parser refuses nesting past 50 on its own.
    compile(&view(&chain(128))).await.unwrap();
    compile(&view(&nested(40))).await.unwrap();
}
