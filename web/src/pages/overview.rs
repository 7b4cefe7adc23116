//! The overview: per stream, events in, dead letters and each consumer's log lag; per
//! view, the speed layer's watermark and state and the batch cutoff and its age; the last
//! batch run; each sink's deliveries and lag. Every number updates from `/api/v1/status/live` beside a chart of its
//! recent values.

use leptos::prelude::*;
use serde_json::Value;

use crate::chart::Sparkline;
use crate::format::{at, bytes, duration_ms, num_at, text};
use crate::{Conn, client};

/// Status samples kept for the small charts (one per second).
const HISTORY: usize = 90;

/// One number with its label and a chart of its recent values.
#[component]
fn Metric(
    label: &'static str,
    id: String,
    status: RwSignal<Option<Value>>,
    history: RwSignal<Vec<Value>>,
    pointer: String,
    /// How the number reads.
    #[prop(default = Kind::Count)]
    kind: Kind,
) -> impl IntoView {
    let p = pointer.clone();
    let value = move || {
        let s = status.get();
        match (kind, num_at(&s, &p)) {
            (Kind::Bytes, Some(n)) => bytes(n),
            (Kind::Millis, Some(n)) => duration_ms(n),
            _ => at(&s, &p),
        }
    };
    let spark = move || {
        let values: Vec<f64> = history
            .get()
            .iter()
            .map(|v| v.pointer(&pointer).and_then(Value::as_f64).unwrap_or(0.0))
            .collect();
        view! { <Sparkline values/> }
    };
    view! {
        <div class="metric">
            <span class="label">{label}</span>
            <span class="value" id=id>{value}</span>
            {spark}
        </div>
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Count,
    Bytes,
    Millis,
}

/// A stream's card: its rates, counters and lags, charted from the status history.
fn stream_card(
    s: String,
    status: RwSignal<Option<Value>>,
    history: RwSignal<Vec<Value>>,
) -> impl IntoView {
    let m = |label, field: &str, ptr: &str| {
        view! { <Metric label id=format!("stream-{s}-{field}") status history pointer=format!("/streams/{s}/{ptr}")/> }
    };
    view! {
        <article class="card" data-stream=s.clone()>
            <h3>{format!("stream {s}")}</h3>
            <div class="metrics">
                {m("events/s in (speed layer)", "rate", "speed/events_per_second")}
                {m("accepted", "accepted", "ingest/accepted")}
                {m("dead letters", "rejected", "ingest/rejected")}
                {m("log lag · speed", "speed-lag", "speed/lag")}
                {m("log lag · archiver", "archiver-lag", "archiver_lag")}
            </div>
            <a href=format!("/streams/{s}")>"schema, recent events, dead letters →"</a>
        </article>
    }
}

/// The batch card's line: the last finished run, and how many run now.
fn last_run_line(s: Option<Value>) -> impl IntoView {
    let running = s
        .as_ref()
        .and_then(|s| s.pointer("/batch/running"))
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    let last = s
        .as_ref()
        .and_then(|s| s.pointer("/batch/last_run"))
        .cloned();
    let line = match &last {
        Some(r) => format!(
            "{} · {} · {} rows in · {}",
            text(r.get("id")),
            text(r.get("status")),
            text(r.get("rows_in")),
            r.get("duration_ms")
                .and_then(Value::as_f64)
                .map(duration_ms)
                .unwrap_or_else(|| "—".into())
        ),
        None => "no run yet".into(),
    };
    view! {
        <p><span id="last-run">{line}</span>
           {(running > 0).then(|| view! { <span class="badge running">{format!("{running} running")}</span> })}</p>
    }
}

/// The sinks card: per sink, where it delivers, rows delivered, rows waiting and how long
/// the oldest has waited, failures and the last error (status `/sinks`).
fn sinks_card(s: Option<Value>) -> impl IntoView {
    let sinks = s
        .as_ref()
        .and_then(|s| s.get("sinks"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if sinks.is_empty() {
        return None;
    }
    let rows = sinks
        .into_iter()
        .map(|k| {
            let name = text(k.get("name"));
            let lag = k
                .get("lag_ms")
                .and_then(Value::as_f64)
                .map(duration_ms)
                .unwrap_or_else(|| "—".into());
            let error = k
                .get("last_error")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            view! {
                <tr data-sink=name.clone()>
                    <td>{name.clone()}</td>
                    <td>{format!("{} → {} {} ({})", text(k.get("view")), text(k.get("kind")), text(k.get("target")), text(k.get("mode")))}</td>
                    <td id=format!("sink-{name}-rows")>{text(k.get("rows"))}</td>
                    <td id=format!("sink-{name}-pending")>{text(k.get("pending_rows"))}</td>
                    <td id=format!("sink-{name}-lag")>{lag}</td>
                    <td id=format!("sink-{name}-failures")>{text(k.get("failures"))}</td>
                    <td class="error" id=format!("sink-{name}-error")>{error}</td>
                </tr>
            }
        })
        .collect_view();
    Some(view! {
        <article class="card sinks">
            <h3>"sinks"</h3>
            <table>
                <thead><tr><th>"sink"</th><th>"view → target"</th><th>"rows delivered"</th>
                    <th>"pending"</th><th>"lag"</th><th>"failures"</th><th>"last error"</th></tr></thead>
                <tbody>{rows}</tbody>
            </table>
        </article>
    })
}

#[component]
pub fn Overview(status: Option<Value>, streams: Vec<String>, views: Vec<String>) -> impl IntoView {
    let conn = expect_context::<RwSignal<Conn>>();
    let history = RwSignal::new(status.iter().cloned().collect::<Vec<_>>());
    let status = RwSignal::new(status);
    Effect::new(move |_| {
        client::subscribe("/api/v1/status/live", "status", conn, move |v| {
            history.update(|h| {
                h.push(v.clone());
                if h.len() > HISTORY {
                    h.remove(0);
                }
            });
            status.set(Some(v));
        })
    });
    let stream_cards = streams
        .into_iter()
        .map(|s| stream_card(s, status, history))
        .collect_view();
    let view_cards = views
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let base = format!("/views/{i}");
            let wm = base.clone();
            let cut = base.clone();
            let health = base.clone();
            let health_class = base.clone();
            let quarantined = base.clone();
            let error = base.clone();
            view! {
                <article class="card" data-view=v.clone()>
                    <h3><a href=format!("/views/{v}")>{format!("view {v}")}</a></h3>
                    <div class="metrics">
                        <div class="metric" title=move || at(&status.get(), &format!("{error}/last_error"))>
                            <span class="label">"state"</span>
                            <span class=move || format!("value small view-state-{}", at(&status.get(), &format!("{health_class}/state")))
                                id=format!("view-{v}-health")>{move || at(&status.get(), &format!("{health}/state"))}</span>
                            <span class="label" id=format!("view-{v}-quarantined")>{move || format!("{} quarantined", at(&status.get(), &format!("{quarantined}/quarantined")))}</span></div>
                        <div class="metric"><span class="label">"speed watermark"</span>
                            <span class="value small" id=format!("view-{v}-watermark")>{move || at(&status.get(), &format!("{wm}/watermark"))}</span></div>
                        <Metric label="speed state" id=format!("view-{v}-state") status history pointer=format!("{base}/state_bytes") kind=Kind::Bytes/>
                        <Metric label="late events" id=format!("view-{v}-late") status history pointer=format!("{base}/late_events")/>
                        <div class="metric"><span class="label">"batch cutoff"</span>
                            <span class="value small" id=format!("view-{v}-cutoff")>{move || at(&status.get(), &format!("{cut}/cutoff"))}</span></div>
                        <Metric label="cutoff age" id=format!("view-{v}-cutoff-age") status history pointer=format!("{base}/cutoff_age_ms") kind=Kind::Millis/>
                    </div>
                </article>
            }
        })
        .collect_view();
    let last_run = move || last_run_line(status.get());
    let sinks = move || sinks_card(status.get());
    view! {
        <section class="page overview">
            <h2>"Overview"</h2>
            <div class="cards">{stream_cards}</div>
            <div class="cards">{view_cards}</div>
            <article class="card">
                <h3><a href="/batch">"batch layer"</a></h3>
                {last_run}
            </article>
            {sinks}
        </section>
    }
}
