//! The streams page: a stream's schema, a sample of its newest events in the log, and
//! its dead letters with their reasons and a replay action.

use leptos::prelude::*;
use serde_json::Value;

use crate::client;
use crate::format::text;

fn load_recent(stream: String, recent: RwSignal<Vec<Value>>) {
    client::send(
        "GET",
        format!("/api/v1/streams/{stream}/recent?limit=20"),
        None,
        move |a| {
            if let Ok(v) = a {
                recent.set(
                    v.get("rows")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
        },
    );
}

fn load_dead(stream: String, dead: RwSignal<Option<Value>>) {
    client::send(
        "GET",
        format!("/api/v1/streams/{stream}/dead-letters?limit=100"),
        None,
        move |a| {
            if let Ok(v) = a {
                dead.set(Some(v));
            }
        },
    );
}

/// The stream's fields as table rows, the event time and partition key named.
fn schema_rows(stream: &Value) -> impl IntoView + use<> {
    let event_time = text(stream.get("event_time"));
    let key = text(stream.get("key"));
    stream
        .get("fields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            let n = text(f.get("name"));
            let role = if n == event_time { "event time" } else if n == key { "partition key" } else { "" };
            view! { <tr><td>{n.clone()}</td><td>{text(f.get("type"))}</td><td>{if f.get("nullable").and_then(Value::as_bool) == Some(true) { "yes" } else { "no" }}</td><td>{role}</td></tr> }
        })
        .collect_view()
}

#[component]
pub fn StreamsPage(
    streams: Vec<String>,
    stream: Option<Value>,
    recent: Vec<Value>,
    dead_letters: Option<Value>,
) -> impl IntoView {
    let name = stream
        .as_ref()
        .map(|s| text(s.get("name")))
        .unwrap_or_default();
    let tabs = streams
        .into_iter()
        .map(|s| {
            let class = if s == name { "chip on" } else { "chip" };
            view! { <a class=class href=format!("/streams/{s}")>{s.clone()}</a> }
        })
        .collect_view();
    let Some(stream) = stream else {
        return view! { <section class="page streams"><h2>"Streams"</h2><div class="view-list">{tabs}</div><p>"No stream configured."</p></section> }.into_any();
    };
    let recent = RwSignal::new(recent);
    let dead = RwSignal::new(dead_letters);
    let replay_result: RwSignal<Option<Result<Value, String>>> = RwSignal::new(None);

    let fields = schema_rows(&stream);

    let recent_rows = move || {
        recent
            .get()
            .into_iter()
            .map(|r| {
                view! {
                    <tr><td>{text(r.get("partition"))}</td><td>{text(r.get("offset"))}</td><td>{text(r.get("ingest_ts"))}</td>
                        <td><code>{r.get("event").map(|e| e.to_string()).unwrap_or_default()}</code></td></tr>
                }
            })
            .collect_view()
    };
    let dead_rows = move || {
        dead.get()
            .and_then(|d| d.get("rows").and_then(Value::as_array).cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                view! {
                    <tr><td>{text(r.get("received_at"))}</td><td>{text(r.get("source"))}</td><td>{text(r.get("index"))}</td>
                        <td>{text(r.get("field"))}</td><td class="reason">{text(r.get("reason"))}</td><td><code>{text(r.get("raw"))}</code></td></tr>
                }
            })
            .collect_view()
    };
    let n1 = name.clone();
    let n2 = name.clone();
    let replay = move |_| {
        let stream = n2.clone();
        replay_result.set(None);
        client::send(
            "POST",
            format!("/api/v1/streams/{stream}/dead-letters/replay"),
            None,
            move |a| {
                replay_result.set(Some(a));
                load_dead(stream.clone(), dead);
                load_recent(stream, recent);
            },
        );
    };
    let replay_view = move || {
        replay_result.get().map(|r| match r {
            Ok(v) => view! { <p id="replay-result" class="ok">{format!("replayed {} · still refused {}", text(v.get("replayed")), text(v.get("still_invalid")))}</p> }.into_any(),
            Err(e) => view! { <pre id="replay-result" class="error">{e}</pre> }.into_any(),
        })
    };
    let dedup = stream.get("dedup").filter(|d| !d.is_null()).map(|d| {
        format!(
            "duplicates of `{}` within {} ms count once",
            text(d.get("id_field")),
            text(d.get("horizon_ms"))
        )
    });
    view! {
        <section class="page streams">
            <h2>"Streams"</h2>
            <div class="view-list">{tabs}</div>
            <h3>{format!("{name}: schema")}</h3>
            <p class="muted">{format!("{} partitions", text(stream.get("partitions")))}{dedup.map(|d| format!(" · {d}"))}</p>
            <div class="table-wrap"><table id="schema"><thead><tr><th>"field"</th><th>"type"</th><th>"nullable"</th><th>"role"</th></tr></thead><tbody>{fields}</tbody></table></div>
            <h3>"Newest events in the log " <button id="recent-refresh" class="ghost" on:click=move |_| load_recent(n1.clone(), recent)>"refresh"</button></h3>
            <div class="table-wrap"><table id="recent"><thead><tr><th>"partition"</th><th>"offset"</th><th>"ingested"</th><th>"event"</th></tr></thead><tbody>{recent_rows}</tbody></table></div>
            <h3>"Dead letters " <span id="dead-total" class="badge">{move || text(dead.get().as_ref().and_then(|d| d.get("total")))}</span></h3>
            <p class="muted">"Records refused with their reasons. Fix the schema or the producer, then replay: the ones that pass now join the stream."</p>
            <div class="controls"><button id="replay" class="primary" on:click=replay>"Replay dead letters"</button></div>
            {replay_view}
            <div class="table-wrap"><table id="dead-letters"><thead><tr><th>"received"</th><th>"source"</th><th>"index"</th><th>"field"</th><th>"reason"</th><th>"record"</th></tr></thead><tbody>{dead_rows}</tbody></table></div>
        </section>
    }
    .into_any()
}
