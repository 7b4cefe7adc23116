//! The batch page: run history (status, duration, rows, errors in full) and a button
//! that starts a recompute and follows its progress until it ends.

use std::time::Duration;

use leptos::prelude::*;
use serde_json::Value;

use crate::format::{duration_ms, text};
use crate::{Conn, client};

/// How often a running run is polled for its progress.
const POLL: Duration = Duration::from_millis(250);

fn reload(runs: RwSignal<Vec<Value>>) {
    client::send("GET", "/api/v1/batch/runs".into(), None, move |a| {
        if let Ok(v) = a
            && let Some(list) = v.get("runs").and_then(Value::as_array)
        {
            runs.set(list.clone());
        }
    });
}

/// Follow run `id` until it ends, then reload the history.
fn follow(id: String, active: RwSignal<Option<Value>>, runs: RwSignal<Vec<Value>>) {
    let url = format!("/api/v1/batch/runs/{id}");
    client::send("GET", url, None, move |a| match a {
        Ok(rec) => {
            let running = rec.get("status").and_then(Value::as_str) == Some("running");
            active.set(Some(rec));
            if running {
                set_timeout(move || follow(id, active, runs), POLL);
            } else {
                reload(runs);
            }
        }
        Err(_) => set_timeout(move || follow(id, active, runs), POLL * 4),
    });
}

/// One run of the history as a table row.
fn run_row(r: Value) -> impl IntoView {
    let status = text(r.get("status"));
    let duration = r
        .get("duration_ms")
        .and_then(Value::as_f64)
        .map(duration_ms)
        .unwrap_or_else(|| "—".into());
    let views = r
        .get("views")
        .and_then(Value::as_array)
        .map(|v| {
            v.iter()
                .map(|x| text(Some(x)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let err = r.get("error").and_then(Value::as_str).map(str::to_string);
    view! {
        <tr class=format!("run {status}") data-id=text(r.get("id"))>
            <td>{text(r.get("id"))}</td>
            <td>{text(r.get("kind"))}</td>
            <td>{views}</td>
            <td><span class=format!("badge {status}")>{status.clone()}</span></td>
            <td>{text(r.get("started_at"))}</td>
            <td>{duration}</td>
            <td>{text(r.get("cutoff"))}</td>
            <td class="num">{text(r.get("rows_in"))}</td>
            <td class="num">{text(r.get("rows_out"))}</td>
            <td class="num">{text(r.get("files"))}</td>
            <td>{err.map(|e| view! { <pre class="error">{e}</pre> })}</td>
        </tr>
    }
}

#[component]
pub fn BatchPage(runs: Vec<Value>) -> impl IntoView {
    let conn = expect_context::<RwSignal<Conn>>();
    let runs = RwSignal::new(runs);
    let active: RwSignal<Option<Value>> = RwSignal::new(None);
    let error: RwSignal<Option<String>> = RwSignal::new(None);

    // Runs started elsewhere (schedule, CLI, API) show up as the status changes.
    Effect::new(move |_| {
        client::subscribe("/api/v1/status/live", "status", conn, move |s| {
            let last = s.pointer("/batch/last_run/id").cloned();
            let running = s.pointer("/batch/running/0/id").cloned();
            let newest = runs.with_untracked(|r| r.first().and_then(|r| r.get("id")).cloned());
            if (running.is_some() && running != newest) || (running.is_none() && last != newest) {
                reload(runs);
            }
        })
    });

    let start = move |kind: &'static str| {
        error.set(None);
        client::send(
            "POST",
            format!("/api/v1/batch/runs?kind={kind}"),
            None,
            move |a| match a {
                Ok(rec) => {
                    let id = text(rec.get("id"));
                    active.set(Some(rec));
                    reload(runs);
                    follow(id, active, runs);
                }
                Err(e) => error.set(Some(e)),
            },
        );
    };

    let progress = move || {
        active.get().map(|rec| {
            let done = rec.pointer("/progress/done").and_then(Value::as_u64).unwrap_or(0);
            let total = rec.pointer("/progress/total").and_then(Value::as_u64).unwrap_or(1).max(1);
            let stage = text(rec.pointer("/progress/stage"));
            let status = text(rec.get("status"));
            view! {
                <div class="run-progress" data-status=status.clone()>
                    <progress id="run-progress" max=total value=done></progress>
                    <span id="run-status">{format!("{} · {status} · {stage} ({done}/{total})", text(rec.get("id")))}</span>
                    {rec.get("error").and_then(Value::as_str).map(|e| view! { <pre class="error">{e.to_string()}</pre> })}
                </div>
            }
        })
    };

    let table = move || runs.get().into_iter().map(run_row).collect_view();

    view! {
        <section class="page batch">
            <h2>"Batch runs"</h2>
            <p class="muted">"A full run recomputes every view from the whole master table up to a new cutoff; an incremental run merges only the events since each view's last cutoff (a view whose SQL changed is recomputed in full). Serving switches to the result when it commits."</p>
            <div class="controls">
                <button id="run-full" class="primary" on:click=move |_| start("full")>"Run full recompute"</button>
                <button id="run-incremental" on:click=move |_| start("incremental")>"Run incremental"</button>
            </div>
            {move || error.get().map(|e| view! { <pre id="run-error" class="error">{e}</pre> })}
            {progress}
            <div class="table-wrap">
                <table id="runs">
                    <thead><tr><th>"run"</th><th>"kind"</th><th>"views"</th><th>"status"</th><th>"started"</th><th>"duration"</th><th>"cutoff"</th><th>"rows in"</th><th>"rows out"</th><th>"files"</th><th>"error"</th></tr></thead>
                    <tbody>{table}</tbody>
                </table>
            </div>
        </section>
    }
}
