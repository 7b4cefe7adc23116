//! The SQL console: read-only SQL over the merged views, master and dead-letter tables;
//! results as a table and a chart, errors with the position they point at.

use leptos::prelude::*;
use serde_json::{Value, json};

use crate::chart::BarChart;
use crate::client;
use crate::format::text;

/// Line and column of a parser error ("… at Line: 1, Column: 8"), both from 1.
fn error_position(message: &str) -> Option<(usize, usize)> {
    let rest = &message[message.find("Line: ")? + 6..];
    let line: usize = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let rest = &rest[rest.find("Column: ")? + 8..];
    let col: usize = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((line, col))
}

/// An error answer about `sql`, with the offending line and a caret under the position
/// the parser reports, when it reports one. Ids: `{id}` and `{id}-pointer`.
pub(crate) fn error_box(id: &'static str, e: String, sql: &str) -> impl IntoView + use<> {
    let pointer = error_position(&e).and_then(|(line, col)| {
        let src = sql.lines().nth(line.checked_sub(1)?)?.to_string();
        Some(format!("{src}\n{}^", " ".repeat(col.saturating_sub(1))))
    });
    let pointer_id = format!("{id}-pointer");
    view! {
        <div id=id class="error-box">
            <pre class="error">{e}</pre>
            {pointer.map(|p| view! { <pre id=pointer_id class="pointer">{p}</pre> })}
        </div>
    }
}

/// The first numeric column and the column labelling it (the first other one).
fn chartable(result: &Value) -> Option<(String, Option<String>)> {
    let cols = result.get("columns")?.as_array()?;
    let rows = result.get("rows")?.as_array()?;
    let names: Vec<String> = cols.iter().map(|c| text(c.get("name"))).collect();
    let numeric = names
        .iter()
        .find(|n| {
            !rows.is_empty()
                && rows.iter().all(|r| {
                    r.get(n.as_str())
                        .is_none_or(|v| v.is_number() || v.is_null())
                })
        })?
        .clone();
    let label = names.iter().find(|n| **n != numeric).cloned();
    Some((numeric, label))
}

#[component]
pub fn SqlPage(tables: Vec<String>) -> impl IntoView {
    let first = tables
        .first()
        .cloned()
        .unwrap_or_else(|| "master_events".into());
    let sql = RwSignal::new(format!("SELECT * FROM {first} LIMIT 20"));
    let result: RwSignal<Option<Value>> = RwSignal::new(None);
    let error: RwSignal<Option<String>> = RwSignal::new(None);
    let busy = RwSignal::new(false);

    let run = move || {
        busy.set(true);
        error.set(None);
        let body = json!({ "sql": sql.get_untracked() });
        client::send("POST", "/api/v1/sql".into(), Some(body), move |a| {
            busy.set(false);
            match a {
                Ok(v) => result.set(Some(v)),
                Err(e) => {
                    result.set(None);
                    error.set(Some(e));
                }
            }
        });
    };

    let error_view = move || {
        error
            .get()
            .map(|e| error_box("sql-error", e, &sql.get_untracked()))
    };

    let result_view = move || {
        result.get().map(|r| {
            let cols: Vec<String> = r
                .get("columns")
                .and_then(Value::as_array)
                .map(|c| c.iter().map(|c| text(c.get("name"))).collect())
                .unwrap_or_default();
            let rows = r.get("rows").and_then(Value::as_array).cloned().unwrap_or_default();
            let chart = chartable(&r).map(|(num, label)| {
                let take = rows.iter().take(200);
                let values = take.clone().map(|row| row.get(&num).and_then(Value::as_f64).unwrap_or(0.0)).collect();
                let labels = take
                    .enumerate()
                    .map(|(i, row)| label.as_ref().map(|l| text(row.get(l))).unwrap_or_else(|| (i + 1).to_string()))
                    .collect();
                view! { <h3>{format!("{num} by {}", label.clone().unwrap_or_else(|| "row".into()))}</h3><BarChart labels values id="sql-chart"/> }
            });
            let header = cols.iter().map(|c| view! { <th>{c.clone()}</th> }).collect_view();
            let body = rows
                .iter()
                .map(|row| {
                    let cells = cols.iter().map(|c| view! { <td>{text(row.get(c))}</td> }).collect_view();
                    view! { <tr>{cells}</tr> }
                })
                .collect_view();
            view! {
                <p class="meta" id="sql-meta">{format!("{} rows{} · {} ms", text(r.get("row_count")),
                    if r.get("truncated").and_then(Value::as_bool) == Some(true) { " (truncated)" } else { "" },
                    text(r.get("elapsed_ms")))}</p>
                <div class="table-wrap"><table id="sql-result"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table></div>
                {chart}
            }
        })
    };

    let hints = tables
        .into_iter()
        .map(|t| {
            let name = t.clone();
            view! { <button class="chip" on:click=move |_| sql.set(format!("SELECT * FROM {name} LIMIT 20"))>{t}</button> }
        })
        .collect_view();
    view! {
        <section class="page sql">
            <h2>"SQL console"</h2>
            <p class="muted">"Read-only DataFusion SQL. Tables: "<span class="chips">{hints}</span></p>
            <textarea id="sql-input" rows="6" spellcheck="false" prop:value=move || sql.get()
                on:input=move |ev| sql.set(event_target_value(&ev))
                on:keydown=move |ev| if ev.key() == "Enter" && (ev.ctrl_key() || ev.meta_key()) { ev.prevent_default(); run(); }></textarea>
            <div class="controls">
                <button id="sql-run" class="primary" disabled=move || busy.get() on:click=move |_| run()>"Run (Ctrl+Enter)"</button>
            </div>
            {error_view}
            {result_view}
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_positions_are_found_in_datafusion_messages() {
        let m = "SQL: sql parser error: Expected: an expression, found: FROM at Line: 2, Column: 8";
        assert_eq!(error_position(m), Some((2, 8)));
        assert_eq!(error_position("table 'x' not found"), None);
    }

    #[test]
    fn the_first_numeric_column_is_charted_against_the_first_other_one() {
        let r = json!({"columns": [{"name": "k"}, {"name": "n"}], "rows": [{"k": "a", "n": 1}, {"k": "b", "n": null}]});
        assert_eq!(chartable(&r), Some(("n".into(), Some("k".into()))));
        let r = json!({"columns": [{"name": "k"}], "rows": [{"k": "a"}]});
        assert_eq!(chartable(&r), None);
    }
}
