//! A view's page: a live chart of one aggregate per key over a chosen time range, with
//! windows from the batch layer, the speed layer or both told apart and incomplete
//! windows shaded; the same rows as a table. Updates come from the view's live stream.

use std::collections::{BTreeMap, HashMap};

use leptos::prelude::*;
use serde_json::{Map, Value};

use crate::chart::{Point, Series, TimeChart};
use crate::format::{clock, parse_ts, text};
use crate::{Conn, ViewInfo, client};

/// Rows per table page: a page with thousands of windows stays quick to render.
const PAGE: usize = 50;
/// Keys charted until the user picks their own.
const DEFAULT_KEYS: usize = 5;
/// Key chips offered (the busiest keys first).
const MAX_CHIPS: usize = 40;

type Row = Map<String, Value>;

fn rows_of(answer: &Option<Value>) -> Vec<Row> {
    answer
        .as_ref()
        .and_then(|a| a.get("rows"))
        .and_then(Value::as_array)
        .map(|rows| rows.iter().filter_map(|r| r.as_object().cloned()).collect())
        .unwrap_or_default()
}

fn key_of(info: &ViewInfo, row: &Row) -> String {
    if info.keys.is_empty() {
        return "all".into();
    }
    info.keys
        .iter()
        .map(|k| text(row.get(k)))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Keys by how many windows they have, then by name.
fn busiest_keys(info: &ViewInfo, rows: &[Row]) -> Vec<String> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in rows {
        *counts.entry(key_of(info, r)).or_default() += 1;
    }
    let mut keys: Vec<(String, usize)> = counts.into_iter().collect();
    keys.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    keys.into_iter().map(|(k, _)| k).collect()
}

/// Ranges offered, in microseconds back from the newest window (0 = everything).
const RANGES: [(&str, i64); 5] = [
    ("all", 0),
    ("1h", 3_600_000_000),
    ("6h", 21_600_000_000),
    ("24h", 86_400_000_000),
    ("7d", 604_800_000_000),
];

/// Edit, pause and drop buttons; what the last one did.
fn lifecycle_controls(name: String) -> impl IntoView {
    let done: RwSignal<Option<String>> = RwSignal::new(None);
    let act = move |method: &'static str, url: String, what: &'static str| {
        client::send(method, url, None, move |a| {
            done.set(Some(match a {
                Ok(_) => what.to_string(),
                Err(e) => e,
            }))
        });
    };
    let (pause, drop) = (name.clone(), name.clone());
    view! {
        <div class="controls lifecycle">
            <a class="chip" id="view-edit" href=format!("/views/new?replace={name}")>"edit"</a>
            <button id="view-pause" on:click=move |_| act("POST", format!("/api/v1/views/{pause}/pause"), "paused: resume it from the view editor")>"pause"</button>
            <button id="view-drop" on:click=move |_| act("DELETE", format!("/api/v1/views/{drop}"), "dropped")>"drop"</button>
            <span id="view-lifecycle" class="muted">{move || done.get()}</span>
        </div>
    }
}

#[component]
pub fn ViewPage(info: ViewInfo, answer: Option<Value>, views: Vec<ViewInfo>) -> impl IntoView {
    let conn = expect_context::<RwSignal<Conn>>();
    let answer = RwSignal::new(answer);
    let rows = Memo::new(move |_| rows_of(&answer.get()));
    let metric = RwSignal::new(info.values.first().cloned().unwrap_or_default());
    // None: follow the busiest keys as data arrives; Some: the user's choice.
    let picked: RwSignal<Option<Vec<String>>> = RwSignal::new(None);
    let range = RwSignal::new("all".to_string());
    let page = RwSignal::new(0usize);

    let name = info.name.clone();
    Effect::new(move |_| {
        let url = format!("/api/v1/views/{name}/live");
        client::subscribe(&url, "view", conn, move |v| answer.set(Some(v)));
    });

    let info_k = info.clone();
    let ranked = Memo::new(move |_| busiest_keys(&info_k, &rows.get()));
    let selected = Memo::new(move |_| match picked.get() {
        Some(keys) => keys,
        None => ranked.get().into_iter().take(DEFAULT_KEYS).collect(),
    });
    // The rows in range and of the selected keys, newest first.
    let info_f = info.clone();
    let shown = Memo::new(move |_| in_range(&info_f, rows.get(), &selected.get(), &range.get()));

    let info_c = info.clone();
    let chart = move || {
        let series = series_of(&info_c, &shown.get(), selected.get(), &metric.get());
        view! { <TimeChart series id="view-chart"/> }
    };

    let metric_options = info
        .values
        .iter()
        .map(|v| view! { <option value=v.clone()>{v.clone()}</option> })
        .collect_view();
    let range_buttons = range_buttons(range, page);
    let columns = info.columns();
    let header = columns
        .iter()
        .map(|c| view! { <th>{c.clone()}</th> })
        .collect_view();
    let table_rows = move || {
        let start = page.get() * PAGE;
        shown
            .get()
            .into_iter()
            .skip(start)
            .take(PAGE)
            .map(|(_, row)| {
                let source = text(row.get("_source"));
                let open = row.get("complete").and_then(Value::as_bool) == Some(false);
                let cells = columns
                    .iter()
                    .map(|c| view! { <td>{text(row.get(c))}</td> })
                    .collect_view();
                let class = format!("src-{source}{}", if open { " open" } else { "" });
                view! { <tr class=class>{cells}</tr> }
            })
            .collect_view()
    };
    let pages = move || shown.get().len().div_ceil(PAGE).max(1);
    let meta = move || meta_line(answer.get().as_ref());
    let others = view_links(views, &info.name);
    view! {
        <section class="page view">
            <div class="view-list">{others}<a id="new-view" class="chip" href="/views/new">"+ new view"</a></div>
            {lifecycle_controls(info.name.clone())}
            <h2>{info.name.clone()}<span class="muted">{format!(" on {} · window {}", info.stream, info.window)}</span></h2>
            <p class="meta">{meta}" · "<span id="row-count">{move || rows.get().len()}</span>" windows"</p>
            <div class="controls">
                <label>"metric "
                    <select id="metric" prop:value=move || metric.get()
                        on:change=move |ev| metric.set(event_target_value(&ev))>{metric_options}</select>
                </label>
                <span class="segments">{range_buttons}</span>
            </div>
            <div class="chips" id="keys"><KeyChips ranked selected picked page/></div>
            {chart}
            <div class="table-head">
                <span><span id="shown-count">{move || shown.get().len()}</span>" rows shown"</span>
                <span class="pager">
                    <button id="page-prev" disabled=move || page.get() == 0 on:click=move |_| page.update(|p| *p = p.saturating_sub(1))>"‹"</button>
                    <span id="page-label">{move || format!("page {} of {}", page.get() + 1, pages())}</span>
                    <button id="page-next" disabled=move || { page.get() + 1 >= pages() } on:click=move |_| page.update(|p| *p += 1)>"›"</button>
                </span>
            </div>
            <div class="table-wrap">
                <table id="view-rows">
                    <thead><tr>{header}</tr></thead>
                    <tbody>{table_rows}</tbody>
                </table>
            </div>
        </section>
    }
}

/// The rows of `keys` whose window lies in `range` back from the newest, newest first.
fn in_range(info: &ViewInfo, rows: Vec<Row>, keys: &[String], range: &str) -> Vec<(i64, Row)> {
    let window = &info.window;
    let newest = rows
        .iter()
        .filter_map(|r| r.get(window).and_then(Value::as_str).and_then(parse_ts))
        .max()
        .unwrap_or(0);
    let span = RANGES
        .iter()
        .find(|(n, _)| *n == range)
        .map(|(_, s)| *s)
        .unwrap_or(0);
    let mut out: Vec<(i64, Row)> = rows
        .into_iter()
        .filter(|r| keys.contains(&key_of(info, r)))
        .filter_map(|r| {
            let t = r.get(window).and_then(Value::as_str).and_then(parse_ts)?;
            (span == 0 || t > newest - span).then_some((t, r))
        })
        .collect();
    out.sort_by_key(|r| std::cmp::Reverse(r.0));
    out
}

/// One chart series per selected key: `metric` over window time, oldest first.
fn series_of(
    info: &ViewInfo,
    shown: &[(i64, Row)],
    keys: Vec<String>,
    metric: &str,
) -> Vec<Series> {
    let mut by_key: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    for key in keys {
        by_key.entry(key).or_default();
    }
    for (t, r) in shown.iter().rev() {
        let Some(y) = r.get(metric).and_then(Value::as_f64) else {
            continue;
        };
        by_key.entry(key_of(info, r)).or_default().push(Point {
            x: *t,
            y,
            source: text(r.get("_source")),
            complete: r.get("complete").and_then(Value::as_bool).unwrap_or(true),
        });
    }
    by_key
        .into_iter()
        .map(|(label, points)| Series { label, points })
        .collect()
}

/// The line under the title: cutoff, watermark and freshness of the latest answer.
fn meta_line(answer: Option<&Value>) -> String {
    let get = |k: &str| text(answer.and_then(|a| a.get(k)));
    let wm = answer
        .and_then(|a| a.get("speed_watermark"))
        .and_then(Value::as_str)
        .and_then(parse_ts)
        .map(|t| clock(t, true))
        .unwrap_or_else(|| "—".into());
    let missing: Vec<String> = answer
        .and_then(|a| a.get("speed_missing_partitions"))
        .and_then(Value::as_array)
        .map(|ps| ps.iter().map(|p| p.to_string()).collect())
        .unwrap_or_default();
    let mut line = format!(
        "batch cutoff {} · watermark {} · freshness {} ms",
        get("cutoff"),
        wm,
        get("freshness_ms")
    );
    if !missing.is_empty() {
        // A speed process down or rebuilding: say so rather than show short counts as whole.
        line = format!(
            "{line} · speed partitions {} missing: recent counts are short, no window complete",
            missing.join(", ")
        );
    }
    if let Some(failed) = failed_line(answer) {
        line = format!("{line} · {failed}");
    }
    line
}

/// Groups whose row the view could not compute (left out of the rows shown): how many,
/// and the first one's keys and error, so a missing row is never silent.
fn failed_line(answer: Option<&Value>) -> Option<String> {
    let failed = answer?.get("failed_rows")?.as_array()?;
    let first = failed.first()?;
    let keys = first
        .get("keys")
        .and_then(Value::as_object)
        .map(|k| {
            k.iter()
                .map(|(name, v)| format!("{name}={}", text(Some(v))))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let error = text(first.get("error"));
    let rows = if failed.len() == 1 { "row" } else { "rows" };
    Some(format!(
        "{} {rows} could not be computed and are not shown (first: {keys}: {error})",
        failed.len()
    ))
}

/// One button per time range; choosing one goes back to the first page.
fn range_buttons(range: RwSignal<String>, page: RwSignal<usize>) -> impl IntoView {
    RANGES
        .iter()
        .map(|(n, _)| {
            let n = n.to_string();
            let m = n.clone();
            view! {
                <button class=move || if range.get() == m { "seg on" } else { "seg" } data-range=n.clone()
                    on:click=move |_| { range.set(n.clone()); page.set(0); }>{n.clone()}</button>
            }
        })
        .collect_view()
}

/// Links to every view, the current one marked.
fn view_links(views: Vec<ViewInfo>, current: &str) -> impl IntoView + use<> {
    views
        .into_iter()
        .map(|v| {
            let class = if v.name == current { "chip on" } else { "chip" };
            view! { <a class=class href=format!("/views/{}", v.name)>{v.name.clone()}</a> }
        })
        .collect_view()
}

/// The key chips: the busiest keys, the selected ones on; a click toggles a key.
#[component]
fn KeyChips(
    ranked: Memo<Vec<String>>,
    selected: Memo<Vec<String>>,
    picked: RwSignal<Option<Vec<String>>>,
    page: RwSignal<usize>,
) -> impl IntoView {
    move || {
        let chosen = selected.get();
        ranked
            .get()
            .into_iter()
            .take(MAX_CHIPS)
            .map(|k| {
                let on = chosen.contains(&k);
                let key = k.clone();
                view! {
                    <button class=if on { "chip on" } else { "chip" } data-key=k.clone()
                        on:click=move |_| {
                            let mut keys = selected.get_untracked();
                            if let Some(i) = keys.iter().position(|x| *x == key) {
                                keys.remove(i);
                            } else {
                                keys.push(key.clone());
                            }
                            picked.set(Some(keys));
                            page.set(0);
                        }>{k.clone()}</button>
                }
            })
            .collect_view()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_meta_line_names_missing_speed_partitions() {
        let whole = json!({"cutoff": "c", "freshness_ms": 3, "speed_missing_partitions": []});
        assert!(!meta_line(Some(&whole)).contains("missing"));
        let short = json!({"cutoff": "c", "freshness_ms": 3, "speed_missing_partitions": [0, 2]});
        assert!(
            meta_line(Some(&short)).contains("speed partitions 0, 2 missing"),
            "{}",
            meta_line(Some(&short))
        );
    }

    #[test]
    fn the_meta_line_says_which_rows_could_not_be_computed() {
        let none = json!({"cutoff": "c", "freshness_ms": 3, "failed_rows": []});
        assert!(!meta_line(Some(&none)).contains("could not"));
        let failed = json!({"cutoff": "c", "freshness_ms": 3, "failed_rows": [
            {"keys": {"device": "d7", "window_start": "2026-12-06T10:00:00Z"}, "error": "Divide by zero error"},
            {"keys": {"device": "d9", "window_start": "2026-12-06T10:00:00Z"}, "error": "Divide by zero error"},
        ]});
        let line = meta_line(Some(&failed));
        assert!(
            line.contains("2 rows could not be computed")
                && line.contains("device=d7")
                && line.contains("Divide by zero error"),
            "{line}"
        );
    }

    #[test]
    fn keys_rank_by_windows_and_join_several_key_columns() {
        let info = ViewInfo {
            name: "v".into(),
            stream: "s".into(),
            keys: vec!["a".into(), "b".into()],
            window: "w".into(),
            values: vec!["n".into()],
        };
        let rows = rows_of(&Some(json!({"rows": [
            {"a": "x", "b": 1}, {"a": "y", "b": 2}, {"a": "y", "b": 2}
        ]})));
        assert_eq!(busiest_keys(&info, &rows), vec!["y / 2", "x / 1"]);
    }
}
