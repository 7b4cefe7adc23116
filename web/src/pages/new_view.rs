//! The view editor: a new view's name, SQL and lateness, or a new definition of an
//! existing one (`?replace=<view>`); the API's refusal with a caret under the position
//! it points at; then the view's state and backfill progress until it answers. Below,
//! the views no layer computes (paused, failed), each with a resume button.

use std::time::Duration;

use leptos::prelude::*;
use serde_json::{Value, json};

use crate::client;
use crate::format::text;
use crate::pages::sql::error_box;

/// How often a backfilling view's state is asked for.
const POLL: Duration = Duration::from_millis(500);

/// Ask for view `name`'s state until it runs (or stops being backfilled).
fn follow(name: String, state: RwSignal<Option<Value>>) {
    let url = format!("/api/v1/views/{name}/status");
    client::send("GET", url, None, move |a| match a {
        Ok(s) => {
            let backfilling = s.get("state").and_then(Value::as_str) == Some("backfilling");
            state.set(Some(s));
            if backfilling {
                set_timeout(move || follow(name, state), POLL);
            }
        }
        Err(_) => set_timeout(move || follow(name, state), POLL * 4),
    });
}

/// The outcome of a change: the view's state, or the error under the SQL.
fn answered(
    state: RwSignal<Option<Value>>,
    error: RwSignal<Option<String>>,
) -> impl Fn(client::Answer) {
    move |a| match a {
        Ok(s) => {
            let name = text(s.get("name"));
            state.set(Some(s));
            follow(name, state);
        }
        Err(e) => error.set(Some(e)),
    }
}

/// The views no layer computes, each with a resume button (paused ones).
fn inactive_list(
    inactive: Vec<Value>,
    state: RwSignal<Option<Value>>,
    error: RwSignal<Option<String>>,
) -> impl IntoView {
    let items = inactive
        .into_iter()
        .map(|v| {
            let name = text(v.get("name"));
            let st = text(v.get("state"));
            let why = v.get("error").and_then(Value::as_str).unwrap_or("").to_string();
            let resume = (st == "paused").then(|| {
                let n = name.clone();
                view! {
                    <button id=format!("resume-{name}") on:click=move |_| {
                        let url = format!("/api/v1/views/{n}/resume");
                        client::send("POST", url, None, answered(state, error));
                    }>"resume"</button>
                }
            });
            view! { <li data-view=name.clone()><b>{name.clone()}</b>" · "{st}" "<span class="error">{why}</span>" "{resume}
                <a href=format!("/views/new?replace={name}")>" edit"</a></li> }
        })
        .collect_view();
    view! { <h3>"Paused and failed views"</h3><ul id="inactive-views">{items}</ul> }
}

#[component]
pub fn NewViewPage(
    streams: Vec<String>,
    replace: Option<Value>,
    inactive: Vec<Value>,
) -> impl IntoView {
    let stream = streams.first().cloned().unwrap_or_else(|| "events".into());
    let replacing = replace.as_ref().map(|r| text(r.get("name")));
    let name = RwSignal::new(replacing.clone().unwrap_or_default());
    let sql = RwSignal::new(match &replace {
        Some(r) => text(r.get("sql")),
        None => format!(
            "SELECT date_bin(INTERVAL '10 minutes', ts) AS window_start,\n       count(*) AS events\nFROM {stream}\nGROUP BY window_start"
        ),
    });
    let lateness_ms = replace
        .as_ref()
        .and_then(|r| r.get("allowed_lateness_ms"))
        .and_then(Value::as_u64);
    let lateness = RwSignal::new(lateness_ms.unwrap_or(0).to_string());
    let error: RwSignal<Option<String>> = RwSignal::new(None);
    let state: RwSignal<Option<Value>> = RwSignal::new(None);
    let is_replace = replacing.is_some();
    let submit = move || {
        error.set(None);
        let lateness = lateness.get_untracked().trim().parse::<u64>().unwrap_or(0);
        let (method, url, body) = match is_replace {
            true => (
                "PUT",
                format!("/api/v1/views/{}", name.get_untracked()),
                json!({"sql": sql.get_untracked(), "allowed_lateness_ms": lateness}),
            ),
            false => (
                "POST",
                "/api/v1/views".to_string(),
                json!({"name": name.get_untracked(), "sql": sql.get_untracked(), "allowed_lateness_ms": lateness}),
            ),
        };
        client::send(method, url, Some(body), answered(state, error));
    };
    let error_view = move || {
        error
            .get()
            .map(|e| error_box("view-error", e, &sql.get_untracked()))
    };
    let state_view = move || {
        state.get().map(|s| {
            let n = text(s.get("name"));
            let st = text(s.get("state"));
            let stage = s
                .pointer("/backfill/stage")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let running = st == "running";
            view! {
                <p class="meta">"view "<b>{n.clone()}</b>": "
                    <span id="view-state" class=format!("view-state-{st}")>{st.clone()}</span>
                    " "<span id="view-backfill" class="muted">{stage}</span></p>
                {running.then(|| view! { <a id="view-open" href=format!("/views/{n}")>"open the view →"</a> })}
            }
        })
    };
    let title = match &replacing {
        Some(n) => format!("Replace view {n}"),
        None => "New view".into(),
    };
    view! {
        <section class="page new-view">
            <h2>{title}</h2>
            <p class="muted">"A windowed aggregate over one stream, checked as at start-up. It is
                backfilled from the master table and answers once exact."</p>
            <label>"name "<input id="view-name" prop:value=move || name.get() readonly=is_replace
                on:input=move |ev| name.set(event_target_value(&ev))/></label>
            <label>" allowed lateness (ms) "<input id="view-lateness" prop:value=move || lateness.get()
                on:input=move |ev| lateness.set(event_target_value(&ev))/></label>
            <textarea id="view-sql" rows="8" spellcheck="false" prop:value=move || sql.get()
                on:input=move |ev| sql.set(event_target_value(&ev))></textarea>
            <div class="controls">
                <button id="view-create" class="primary" on:click=move |_| submit()>
                    {if is_replace { "Replace" } else { "Create" }}</button>
            </div>
            {error_view}
            {state_view}
            {inactive_list(inactive, state, error)}
        </section>
    }
}
