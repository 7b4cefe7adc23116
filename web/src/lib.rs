//! Tributary's dashboard.
//!
//! Owns the Leptos components of the web UI: the overview, a page per view, the batch
//! page, the SQL console, the streams page and the login form. The serving layer renders
//! a page on the server (feature `ssr`) from a [`Bootstrap`] embedded in it as JSON; in
//! the browser (feature `hydrate`) the same components hydrate from that JSON, then take
//! their updates from the serving layer's server-sent events (views, status) and send
//! actions (recompute, SQL, replay) with `fetch` — no page reloads.

#![warn(missing_docs)]
// Leptos views are deeply nested types; the pages need more room than the default.
#![recursion_limit = "256"]

pub mod chart;
mod client;
mod format;
mod pages;

use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use format::text;

/// Id of the `<script type="application/json">` element that carries the bootstrap.
pub const BOOTSTRAP_ID: &str = "tributary-bootstrap";
/// Name wasm-bindgen gives the dashboard's JS and wasm files under `/pkg`.
pub const OUTPUT_NAME: &str = "tributary_web";

/// What a page needs to render: identical on server and client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Bootstrap {
    /// The page and its first data.
    pub page: Page,
    /// Every view, for the navigation.
    pub views: Vec<ViewInfo>,
    /// Every stream's name, for the navigation.
    pub streams: Vec<String>,
    /// False when the browser code is missing: the page then says it is not live.
    pub live: bool,
    /// Whether API tokens are switched on (the header then offers a log-out link).
    pub auth: bool,
}

/// The page shown, with the data it starts from (the API's JSON where there is one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Page {
    /// The pipeline's health: roles, streams, views, lag.
    Overview {
        /// `/api/v1/status`, when it could be read.
        status: Option<Value>,
    },
    /// One view's merged answer, as a chart and a table.
    View {
        /// The view.
        view: ViewInfo,
        /// Its answer from the view API, when it could be read.
        answer: Option<Value>,
    },
    /// Batch runs: history, progress, and buttons to start one.
    Batch {
        /// The run history, newest first.
        runs: Vec<Value>,
    },
    /// The view editor: a new view, or (`replace`) a new definition of one.
    NewView {
        /// The view being replaced: its name, SQL and lateness.
        replace: Option<Value>,
        /// Views no layer computes (paused, failed), to resume or replace.
        inactive: Vec<Value>,
    },
    /// The read-only SQL console.
    Sql {
        /// The tables a query may name.
        tables: Vec<String>,
    },
    /// One stream: its counters, recent events and dead letters.
    Streams {
        /// The stream's status, when it could be read.
        stream: Option<Value>,
        /// Its most recent events.
        recent: Vec<Value>,
        /// Its dead letters, when they could be read.
        dead_letters: Option<Value>,
    },
    /// The token form (API tokens switched on, no session yet).
    Login {
        /// Why the last attempt was refused.
        error: Option<String>,
    },
    /// A path no page answers.
    NotFound {
        /// What was not found.
        message: String,
    },
}

impl Page {
    fn nav_key(&self) -> &'static str {
        match self {
            Page::Overview { .. } => "overview",
            Page::View { .. } | Page::NewView { .. } => "views",
            Page::Batch { .. } => "batch",
            Page::Sql { .. } => "sql",
            Page::Streams { .. } => "streams",
            Page::Login { .. } | Page::NotFound { .. } => "",
        }
    }
}

/// What the dashboard knows of a view to show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ViewInfo {
    /// The view's name.
    pub name: String,
    /// The stream it reads.
    pub stream: String,
    /// Its group-key columns.
    pub keys: Vec<String>,
    /// Its window-start column.
    pub window: String,
    /// Its aggregate columns.
    pub values: Vec<String>,
}

impl ViewInfo {
    /// Table columns in display order.
    pub fn columns(&self) -> Vec<String> {
        let mut cols = vec![self.window.clone()];
        cols.extend(self.keys.iter().cloned());
        cols.extend(self.values.iter().cloned());
        cols.push("_source".into());
        cols.push("complete".into());
        cols
    }
}

/// The bootstrap as JSON safe to embed in a `<script>` element: every `<`, `>` and `&`
/// becomes a `\u003c`-style escape (they only occur inside JSON strings), so no event string can
/// end the element (`</script>`) or open a comment (`<!--`) that swallows the page.
pub fn bootstrap_json(boot: &Bootstrap) -> String {
    serde_json::to_string(boot)
        .expect("bootstrap serializes")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// Whether the page's connection to the server works, shown in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conn {
    /// Rendered by the server; the browser code has not connected yet.
    Static,
    /// Connected: answers arrive live.
    Live,
    /// The last request or live stream failed; the browser retries.
    Unreachable,
}

/// The whole page: header, navigation and the page's body.
#[component]
pub fn App(
    /// What the page starts from.
    boot: Bootstrap,
) -> impl IntoView {
    let conn = RwSignal::new(Conn::Static);
    provide_context(conn);
    let active = boot.page.nav_key();
    let link = move |key: &'static str, href: String, label: &'static str| {
        let class = if key == active { "nav active" } else { "nav" };
        view! { <a class=class href=href data-nav=key>{label}</a> }
    };
    let first_view = boot
        .views
        .first()
        .map(|v| format!("/views/{}", v.name))
        .unwrap_or_else(|| "/".into());
    let banner = move || match conn.get() {
        Conn::Unreachable => Some(view! {
            <div id="conn-banner" class="banner" role="alert">
                "The Tributary server is unreachable. Showing the last data received; reconnecting…"
            </div>
        }),
        _ => None,
    };
    let conn_label = move || match conn.get() {
        Conn::Static => "static",
        Conn::Live => "live",
        Conn::Unreachable => "offline",
    };
    let logout = boot
        .auth
        .then(|| view! { <a class="nav" href="/logout">"Log out"</a> });
    let body = match boot.page {
        Page::Overview { status } => {
            let views = boot
                .views
                .iter()
                .map(|v| v.name.clone())
                .collect::<Vec<_>>();
            view! { <pages::overview::Overview status streams=boot.streams.clone() views/> }
                .into_any()
        }
        Page::View { view, answer } => {
            view! { <pages::view::ViewPage info=view answer views=boot.views.clone()/> }.into_any()
        }
        Page::Batch { runs } => view! { <pages::batch::BatchPage runs/> }.into_any(),
        Page::Sql { tables } => view! { <pages::sql::SqlPage tables/> }.into_any(),
        Page::NewView { replace, inactive } => view! {
            <pages::new_view::NewViewPage streams=boot.streams.clone() replace inactive/>
        }
        .into_any(),
        Page::Streams {
            stream,
            recent,
            dead_letters,
        } => view! {
            <pages::streams::StreamsPage streams=boot.streams.clone() stream recent dead_letters/>
        }
        .into_any(),
        Page::Login { error } => view! { <pages::login::Login error/> }.into_any(),
        Page::NotFound { message } => view! {
            <section class="page"><h2>"Not found"</h2><p class="error">{message}</p></section>
        }
        .into_any(),
    };
    view! {
        <header>
            <h1><a href="/">"Tributary"</a></h1>
            <nav class="top">
                {link("overview", "/".into(), "Overview")}
                {link("views", first_view, "Views")}
                {link("batch", "/batch".into(), "Batch")}
                {link("sql", "/sql".into(), "SQL")}
                {link("streams", "/streams".into(), "Streams")}
                {logout}
            </nav>
            <span class="spacer"></span>
            <span id="conn" class=move || format!("conn conn-{}", conn_label())>{conn_label}</span>
            <button id="theme-toggle" class="ghost" title="Switch light / dark" on:click=move |_| client::toggle_theme()>
                "◐"
            </button>
        </header>
        {banner}
        <main>{body}</main>
    }
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
