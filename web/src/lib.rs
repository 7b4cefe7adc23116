//! Tributary's dashboard.
//!
//! Owns the Leptos components of the web UI. The serving layer renders them on the
//! server (feature `ssr`) with a [`Bootstrap`] of the views and the selected view's
//! current rows, embedded in the page as JSON; in the browser (feature `hydrate`) the
//! same components hydrate from that JSON and subscribe to the view's server-sent
//! events, so rows update live without a reload.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Id of the `<script type="application/json">` element that carries the bootstrap.
pub const BOOTSTRAP_ID: &str = "tributary-bootstrap";
/// Name wasm-bindgen gives the dashboard's JS and wasm files under `/pkg`.
pub const OUTPUT_NAME: &str = "tributary_web";

/// What the page needs to render: identical on server and client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Bootstrap {
    pub views: Vec<ViewInfo>,
    /// The view shown, if there is one.
    pub selected: Option<String>,
    /// Its answer when the page was rendered (the API's JSON).
    pub answer: Option<Value>,
    /// False when the browser code is missing: the page then says it is not live.
    pub live: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ViewInfo {
    pub name: String,
    pub stream: String,
    pub keys: Vec<String>,
    pub window: String,
    pub values: Vec<String>,
}

impl ViewInfo {
    /// Table columns in display order.
    pub fn columns(&self) -> Vec<String> {
        let mut cols = vec![self.window.clone()];
        cols.extend(self.keys.iter().cloned());
        cols.extend(self.values.iter().cloned());
        cols.push("_source".into());
        cols
    }
}

/// The bootstrap as JSON safe to embed in a `<script>` element.
pub fn bootstrap_json(boot: &Bootstrap) -> String {
    serde_json::to_string(boot)
        .expect("bootstrap serializes")
        .replace("</", "<\\/")
}

fn rows_of(answer: &Option<Value>) -> Vec<Map<String, Value>> {
    answer
        .as_ref()
        .and_then(|a| a.get("rows"))
        .and_then(|r| serde_json::from_value(r.clone()).ok())
        .unwrap_or_default()
}

fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "—".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{:.3}", f)
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string(),
            _ => n.to_string(),
        },
        Some(other) => other.to_string(),
    }
}

/// The dashboard page body.
#[component]
pub fn App(boot: Bootstrap) -> impl IntoView {
    let selected = boot.selected.clone();
    let info = selected
        .as_ref()
        .and_then(|s| boot.views.iter().find(|v| &v.name == s).cloned());
    let answer = RwSignal::new(boot.answer.clone());
    let status = RwSignal::new(
        if boot.live {
            "connecting…"
        } else {
            "not live"
        }
        .to_string(),
    );

    #[cfg(feature = "hydrate")]
    if let Some(name) = selected.clone() {
        Effect::new(move |_| subscribe(&name, answer, status));
    }

    let nav = boot
        .views
        .iter()
        .map(|v| {
            let class = if Some(&v.name) == selected.as_ref() { "view-link active" } else { "view-link" };
            let href = format!("/?view={}", v.name);
            view! { <li><a class=class href=href>{v.name.clone()}</a><span class="stream">{format!(" on {}", v.stream)}</span></li> }
        })
        .collect_view();

    let body = info.map(|info| {
        let columns = info.columns();
        let header = columns.iter().map(|c| view! { <th>{c.clone()}</th> }).collect_view();
        let meta = move || {
            let a = answer.get();
            let get = |k: &str| text(a.as_ref().and_then(|a| a.get(k)));
            format!(
                "cutoff {} · speed watermark {} · freshness {} ms",
                get("cutoff"),
                get("speed_watermark"),
                get("freshness_ms")
            )
        };
        let rows = move || {
            let cols = columns.clone();
            rows_of(&answer.get())
                .into_iter()
                .rev()
                .map(|row| {
                    let source = text(row.get("_source"));
                    let cells = cols
                        .iter()
                        .map(|c| view! { <td>{text(row.get(c))}</td> })
                        .collect_view();
                    view! { <tr class=format!("src-{source}")>{cells}</tr> }
                })
                .collect_view()
        };
        let count = move || rows_of(&answer.get()).len();
        view! {
            <section class="view">
                <h2>{info.name.clone()}</h2>
                <p class="meta"><span id="live-status" class="status">{move || status.get()}</span>" · "{meta}" · "<span id="row-count">{count}</span>" rows"</p>
                <table id="view-rows">
                    <thead><tr>{header}</tr></thead>
                    <tbody>{rows}</tbody>
                </table>
            </section>
        }
    });

    view! {
        <header><h1>"Tributary"</h1><p class="tagline">"one SQL view, batch and speed layers, one exact answer"</p></header>
        <main>
            <nav><h3>"Views"</h3><ul>{nav}</ul></nav>
            {body}
        </main>
    }
}

/// Open the view's live stream and feed the answer signal from it.
#[cfg(feature = "hydrate")]
fn subscribe(name: &str, answer: RwSignal<Option<Value>>, status: RwSignal<String>) {
    use wasm_bindgen::JsCast;
    use wasm_bindgen::closure::Closure;

    let url = format!("/api/v1/views/{name}/live");
    let Ok(source) = web_sys::EventSource::new(&url) else {
        status.set("cannot open live stream".into());
        return;
    };
    let on_view =
        Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
            if let Some(data) = e.data().as_string()
                && let Ok(v) = serde_json::from_str::<Value>(&data)
            {
                answer.set(Some(v));
                status.set("live".into());
            }
        });
    let _ = source.add_event_listener_with_callback("view", on_view.as_ref().unchecked_ref());
    on_view.forget();
    let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
        status.set("reconnecting…".into());
    });
    source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    on_error.forget();
    // The stream lives as long as the page.
    std::mem::forget(source);
}

/// Browser entry point: hydrate the server-rendered page from its bootstrap.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    let boot = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.get_element_by_id(BOOTSTRAP_ID))
        .and_then(|e| e.text_content())
        .and_then(|t| serde_json::from_str::<Bootstrap>(&t).ok());
    if let Some(boot) = boot {
        leptos::mount::hydrate_body(move || view! { <App boot/> });
    }
}
