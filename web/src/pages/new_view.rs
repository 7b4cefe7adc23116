//! The view editor: a new view's name, SQL and lateness; the API's refusal with a caret
//! under the position it points at; then the view's state and backfill progress until it answers.

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

#[component]
pub fn NewViewPage(streams: Vec<String>) -> impl IntoView {
    let stream = streams.first().cloned().unwrap_or_else(|| "events".into());
    let name = RwSignal::new(String::new());
    let sql = RwSignal::new(format!(
        "SELECT date_bin(INTERVAL '10 minutes', ts) AS window_start,\n       count(*) AS events\nFROM {stream}\nGROUP BY window_start"
    ));
    let lateness = RwSignal::new("0".to_string());
    let error: RwSignal<Option<String>> = RwSignal::new(None);
    let state: RwSignal<Option<Value>> = RwSignal::new(None);
    let busy = RwSignal::new(false);
    let create = move || {
        busy.set(true);
        error.set(None);
        let body = json!({
            "name": name.get_untracked(),
            "sql": sql.get_untracked(),
            "allowed_lateness_ms": lateness.get_untracked().trim().parse::<u64>().unwrap_or(0),
        });
        client::send("POST", "/api/v1/views".into(), Some(body), move |a| {
            busy.set(false);
            match a {
                Ok(s) => {
                    let created = text(s.get("name"));
                    state.set(Some(s));
                    follow(created, state);
                }
                Err(e) => error.set(Some(e)),
            }
        });
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
    view! {
        <section class="page new-view">
            <h2>"New view"</h2>
            <p class="muted">"A windowed aggregate over one stream, checked as at start-up. It is
                backfilled from the master table and answers once exact."</p>
            <label>"name "<input id="view-name" prop:value=move || name.get()
                on:input=move |ev| name.set(event_target_value(&ev))/></label>
            <label>" allowed lateness (ms) "<input id="view-lateness" prop:value=move || lateness.get()
                on:input=move |ev| lateness.set(event_target_value(&ev))/></label>
            <textarea id="view-sql" rows="8" spellcheck="false" prop:value=move || sql.get()
                on:input=move |ev| sql.set(event_target_value(&ev))></textarea>
            <div class="controls">
                <button id="view-create" class="primary" disabled=move || busy.get() on:click=move |_| create()>"Create"</button>
            </div>
            {error_view}
            {state_view}
        </section>
    }
}
