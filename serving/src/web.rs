//! Hosts the dashboard: `/` renders the Leptos app on the server with the views and
//! the selected view's current answer; `/pkg` serves the browser build that hydrates
//! it (built by `deploy/build-web.sh`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use hydration_context::SsrSharedContext;
use leptos::prelude::*;
use leptos::tachys::view::RenderHtml;
use tower_http::services::ServeDir;
use tributary_web::{App, BOOTSTRAP_ID, Bootstrap, OUTPUT_NAME, ViewInfo, bootstrap_json};

use crate::api::AppState;
use crate::merge::ViewQuery;

const STYLE: &str = include_str!("../../web/style.css");

#[derive(Clone)]
struct WebState {
    app: AppState,
    live: bool,
}

/// The dashboard routes. `site_dir` holds `pkg/` from the browser build.
pub fn router(app: AppState, site_dir: PathBuf) -> Router {
    let pkg = site_dir.join("pkg");
    let live = pkg.join(format!("{OUTPUT_NAME}.js")).exists();
    if !live {
        tracing::warn!(
            dir = %pkg.display(),
            "dashboard browser build not found: pages render but do not update live (run deploy/build-web.sh)"
        );
    }
    Router::new()
        .route("/", get(index))
        .route(
            "/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLE) }),
        )
        .nest_service("/pkg", ServeDir::new(pkg))
        .with_state(WebState { app, live })
}

async fn index(
    State(state): State<WebState>,
    Query(params): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let pipeline = state.app.merger.pipeline();
    let views: Vec<ViewInfo> = pipeline
        .views
        .iter()
        .map(|v| ViewInfo {
            name: v.name.clone(),
            stream: v.stream.clone(),
            keys: v.keys.clone(),
            window: v.window.clone(),
            values: v.values.clone(),
        })
        .collect();
    let selected = params
        .get("view")
        .filter(|v| pipeline.view(v).is_some())
        .cloned()
        .or_else(|| views.first().map(|v| v.name.clone()));
    let answer = match &selected {
        Some(v) => {
            let q = ViewQuery::default();
            match state.app.merger.query(v, &q).await {
                Ok(a) => serde_json::to_value(a).ok(),
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard could not query the view");
                    None
                }
            }
        }
        None => None,
    };
    let boot = Bootstrap {
        views,
        selected,
        answer,
        live: state.live,
    };
    Html(render_page(boot))
}

/// The whole HTML document: head, bootstrap, hydration script and the app's body.
pub fn render_page(boot: Bootstrap) -> String {
    let json = bootstrap_json(&boot);
    let live = boot.live;
    let owner = Owner::new_root(Some(Arc::new(SsrSharedContext::new())));
    let body = owner.with(|| view! { <App boot/> }.to_html());
    let hydrate = if live {
        format!(
            "<script>window.__RESOLVED_RESOURCES=[];window.__SERIALIZED_ERRORS=[];window.__INCOMPLETE_CHUNKS=[];</script>\
             <script type=\"module\">import init, {{ hydrate }} from '/pkg/{OUTPUT_NAME}.js';\
             init({{module_or_path: '/pkg/{OUTPUT_NAME}_bg.wasm'}}).then(() => hydrate());</script>"
        )
    } else {
        String::new()
    };
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"/>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\
         <title>Tributary</title><link rel=\"icon\" href=\"data:,\"/><link rel=\"stylesheet\" href=\"/style.css\"/>\
         <script type=\"application/json\" id=\"{BOOTSTRAP_ID}\">{json}</script>{hydrate}</head>\
         <body>{body}</body></html>"
    )
}
