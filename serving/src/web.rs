//! Hosts the dashboard: each page is rendered on the server by the Leptos app with the
//! data it starts from (the same JSON the API serves), and `/pkg` serves the browser
//! build that hydrates it (built by `deploy/build-web.sh`). With API tokens on, pages
//! need the `read` scope; a browser without one is sent to `/login`, whose form keeps a
//! valid token in a session cookie (`SameSite=Strict`, `HttpOnly`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use hydration_context::SsrSharedContext;
use leptos::prelude::*;
use leptos::tachys::view::RenderHtml;
use serde_json::Value;
use tower_http::services::ServeDir;
use tributary_core::config::Scope;
use tributary_web::{App, BOOTSTRAP_ID, Bootstrap, OUTPUT_NAME, Page, ViewInfo, bootstrap_json};

use crate::auth::{Auth, COOKIE};
use crate::merge::ViewQuery;
use crate::state::AppState;

const STYLE: &str = include_str!("../../web/style.css");

#[derive(Clone)]
struct WebState {
    app: AppState,
    auth: Auth,
    live: bool,
}

/// The dashboard routes. `site_dir` holds `pkg/` from the browser build.
pub fn router(app: AppState, site_dir: PathBuf, auth: Auth) -> Router {
    let pkg = site_dir.join("pkg");
    let live = pkg.join(format!("{OUTPUT_NAME}.js")).exists();
    if !live {
        tracing::warn!(
            dir = %pkg.display(),
            "dashboard browser build not found: pages render but do not update live (run deploy/build-web.sh)"
        );
    }
    Router::new()
        .route("/", get(overview))
        .route("/views/new", get(new_view_page))
        .route("/views/{view}", get(view_page))
        .route("/batch", get(batch_page))
        .route("/sql", get(sql_page))
        .route("/streams", get(streams_page))
        .route("/streams/{stream}", get(stream_page))
        .route("/login", get(login_form).post(login))
        .route("/logout", get(logout))
        .route(
            "/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLE) }),
        )
        .nest_service("/pkg", ServeDir::new(pkg))
        .with_state(WebState { app, auth, live })
}

impl WebState {
    /// The page, or a redirect to the login form when the browser lacks a read token.
    fn page(&self, req: &Request, status: StatusCode, page: Page) -> Response {
        if !self.auth.allows(req, Scope::Read) {
            return Redirect::to("/login").into_response();
        }
        self.render(status, page)
    }

    fn render(&self, status: StatusCode, page: Page) -> Response {
        let pipeline = self.app.merger.pipeline();
        let views = pipeline
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
        let boot = Bootstrap {
            page,
            views,
            streams: pipeline.streams.iter().map(|s| s.name.clone()).collect(),
            live: self.live,
            auth: self.auth.enabled(),
        };
        (status, Html(render_page(boot))).into_response()
    }

    fn allowed(&self, req: &Request) -> bool {
        self.auth.allows(req, Scope::Read)
    }
}

fn json_or_null<T: serde::Serialize, E: std::fmt::Display>(
    r: Result<T, E>,
    what: &str,
) -> Option<Value> {
    match r {
        Ok(v) => serde_json::to_value(v).ok(),
        Err(e) => {
            tracing::warn!(error = %e, "dashboard could not load {what}");
            None
        }
    }
}

async fn overview(
    State(s): State<WebState>,
    Query(params): Query<Vec<(String, String)>>,
    req: Request,
) -> Response {
    // Links from before the dashboard had pages.
    if let Some((_, v)) = params.iter().find(|(k, _)| k == "view") {
        // Any text may arrive here: percent-encode it into one path segment, so the
        // Location header is always valid (CR/LF in it panicked the handler).
        let mut url = url::Url::parse("http://localhost/views/").expect("a valid base");
        url.path_segments_mut()
            .expect("an http URL has segments")
            .pop_if_empty()
            .push(v);
        return Redirect::to(url.path()).into_response();
    }
    if !s.allowed(&req) {
        return Redirect::to("/login").into_response();
    }
    let status = json_or_null(crate::ops::status_value(&s.app).await, "the status");
    s.render(StatusCode::OK, Page::Overview { status })
}

async fn view_page(State(s): State<WebState>, Path(view): Path<String>, req: Request) -> Response {
    if !s.allowed(&req) {
        return Redirect::to("/login").into_response();
    }
    let Some(v) = s.app.merger.pipeline().view(&view) else {
        let message = format!("There is no view `{view}`.");
        return s.render(StatusCode::NOT_FOUND, Page::NotFound { message });
    };
    let answer = json_or_null(
        s.app.merger.query(&view, &ViewQuery::default()).await,
        "the view",
    );
    let info = ViewInfo {
        name: v.name.clone(),
        stream: v.stream.clone(),
        keys: v.keys.clone(),
        window: v.window.clone(),
        values: v.values.clone(),
    };
    s.render(StatusCode::OK, Page::View { view: info, answer })
}

async fn batch_page(State(s): State<WebState>, req: Request) -> Response {
    let runs = s
        .app
        .batch
        .history()
        .into_iter()
        .filter_map(|r| serde_json::to_value(r).ok())
        .collect();
    s.page(&req, StatusCode::OK, Page::Batch { runs })
}

async fn new_view_page(
    State(s): State<WebState>,
    Query(params): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    let views = &s.app.views;
    let replace = params
        .get("replace")
        .and_then(|name| views.state(name))
        .and_then(|v| serde_json::to_value(v).ok());
    let inactive = views
        .inactive()
        .into_iter()
        .filter_map(|v| serde_json::to_value(v).ok())
        .collect();
    s.page(&req, StatusCode::OK, Page::NewView { replace, inactive })
}

async fn sql_page(State(s): State<WebState>, req: Request) -> Response {
    let pipeline = s.app.merger.pipeline();
    let mut tables: Vec<String> = pipeline.views.iter().map(|v| v.name.clone()).collect();
    for st in &pipeline.streams {
        tables.push(format!("master_{}", st.name));
        tables.push(format!("dead_letters_{}", st.name));
    }
    s.page(&req, StatusCode::OK, Page::Sql { tables })
}

async fn streams_page(State(s): State<WebState>, req: Request) -> Response {
    match s.app.merger.pipeline().streams.first() {
        Some(first) => Redirect::to(&format!("/streams/{}", first.name)).into_response(),
        None => s.page(
            &req,
            StatusCode::OK,
            Page::Streams {
                stream: None,
                recent: Vec::new(),
                dead_letters: None,
            },
        ),
    }
}

async fn stream_page(
    State(s): State<WebState>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    if !s.allowed(&req) {
        return Redirect::to("/login").into_response();
    }
    let Some(schema) = s.app.merger.pipeline().stream(&name).cloned() else {
        let message = format!("There is no stream `{name}`.");
        return s.render(StatusCode::NOT_FOUND, Page::NotFound { message });
    };
    let stream = crate::streams::stream_docs(&s.app)
        .into_iter()
        .find(|d| d.get("name").and_then(Value::as_str) == Some(name.as_str()));
    let recent = json_or_null(
        crate::streams::recent_rows(&s.app, &schema, 20).await,
        "recent events",
    )
    .and_then(|v| v.as_array().cloned())
    .unwrap_or_default();
    crate::dead_letters::flush_dead_letters(&s.app, &name).await;
    let dead_letters = json_or_null(
        crate::sql::dead_letters(&s.app.merger, &name, 100).await,
        "dead letters",
    )
    .map(|v| serde_json::json!({ "stream": name, "total": v[0], "rows": v[1] }));
    s.render(
        StatusCode::OK,
        Page::Streams {
            stream,
            recent,
            dead_letters,
        },
    )
}

async fn login_form(State(s): State<WebState>) -> Response {
    if !s.auth.enabled() {
        return Redirect::to("/").into_response();
    }
    s.render(StatusCode::OK, Page::Login { error: None })
}

async fn login(State(s): State<WebState>, body: Bytes) -> Response {
    let token = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    if !s.auth.token_allows(&token, Scope::Read) {
        let error = if token.is_empty() {
            "Enter an API token."
        } else {
            "That token is unknown or lacks the read scope."
        };
        return s.render(
            StatusCode::UNAUTHORIZED,
            Page::Login {
                error: Some(error.into()),
            },
        );
    }
    let value: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    let cookie = format!("{COOKIE}={value}; {}", s.auth.cookie_attributes());
    session_cookie(Redirect::to("/").into_response(), &cookie)
}

async fn logout(State(s): State<WebState>) -> Response {
    let cookie = format!("{COOKIE}=; {}; Max-Age=0", s.auth.cookie_attributes());
    session_cookie(Redirect::to("/login").into_response(), &cookie)
}

fn session_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
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
             init({{module_or_path: '/pkg/{OUTPUT_NAME}_bg.wasm'}}).then(() => {{ hydrate(); document.body.dataset.hydrated = 'true'; }});</script>"
        )
    } else {
        String::new()
    };
    // The saved theme applies before the first paint, so a dark page never flashes light.
    let theme = "<script>try{var t=localStorage.getItem('tributary-theme');\
                 if(t)document.documentElement.setAttribute('data-theme',t)}catch(e){}</script>";
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"/>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\
         <title>Tributary</title><link rel=\"icon\" href=\"data:,\"/><link rel=\"stylesheet\" href=\"/style.css\"/>\
         {theme}<script type=\"application/json\" id=\"{BOOTSTRAP_ID}\">{json}</script>{hydrate}</head>\
         <body>{body}</body></html>"
    )
}
