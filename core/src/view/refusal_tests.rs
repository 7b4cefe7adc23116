//! Views Tributary refuses, and what the refusal says: always the user's SQL and the
//! reason, never the hidden columns the compilation adds.

use super::tests::compile;

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
