//! Tributary serving layer.
//!
//! Owns the answer users see: the [`merge`] of batch states below the cutoff with
//! speed states above it through each view's final plan, the REST API (one module per resource: [`views`], [`runs`], [`streams`],
//! [`dead_letters`], [`sql`], [`ops`]), live
//! push ([`live`]), and the HTTP server that also hosts ingest and the dashboard.

#![warn(missing_docs)]

pub mod append_views;
pub mod auth;
mod connections;
pub mod dead_letters;
pub mod error;
pub mod feeds;
pub mod guard;
pub mod json;
pub mod lifecycle;
pub mod limit;
pub mod live;
pub mod merge;
pub mod openapi;
pub mod ops;
pub mod params;
mod process;
pub mod runs;
pub mod sinks;
pub mod sql;
mod sql_guard;
mod sql_tables;
pub mod state;
pub mod streams;
pub mod view_admin;
pub mod views;
pub mod web;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tributary_core::config::HttpConfig;
use tributary_core::shutdown::Shutdown;

pub use error::ServingError;
pub use merge::{Merger, ViewQuery};
pub use state::AppState;

/// The serving API routes, guarded by `auth` (`/health` stays open).
pub fn router(state: AppState, auth: &auth::Auth) -> Router {
    use tributary_core::config::Scope;
    let admin = Router::new()
        .route("/api/v1/batch/runs", axum::routing::post(runs::start_run))
        .route(
            "/api/v1/views",
            axum::routing::post(view_admin::create_view),
        )
        .route(
            "/api/v1/views/{view}",
            axum::routing::put(view_admin::replace_view).delete(view_admin::drop_view),
        )
        .route(
            "/api/v1/views/{view}/pause",
            axum::routing::post(view_admin::pause_view),
        )
        .route(
            "/api/v1/views/{view}/resume",
            axum::routing::post(view_admin::resume_view),
        )
        .route(
            "/api/v1/batch/maintenance",
            axum::routing::post(runs::maintain),
        )
        .route(
            "/api/v1/streams/{stream}/dead-letters/replay",
            axum::routing::post(dead_letters::replay),
        )
        .with_state(state.clone());
    let open = Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/api/v1/openapi.json", get(openapi::document))
        .with_state(state.clone());
    open.merge(auth.require(Scope::Admin, admin))
        .merge(auth.require(Scope::Read, read_router(state)))
}

fn read_router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/views", get(views::list_views))
        .route("/api/v1/views/{view}", get(views::get_view))
        .route("/api/v1/views/{view}/live", get(live::live_view))
        .route("/api/v1/views/{view}/status", get(view_admin::view_status))
        .route("/api/v1/batch/runs", get(runs::list_runs))
        .route("/api/v1/batch/runs/{id}", get(runs::get_run))
        .route("/api/v1/speed/stats", get(ops::speed_stats))
        .route("/api/v1/sql", axum::routing::post(sql::post_sql))
        .route("/api/v1/status", get(ops::status))
        .route("/api/v1/sinks", get(ops::sinks))
        .route("/api/v1/status/live", get(live::live_status))
        .route("/api/v1/streams", get(streams::list_streams))
        .route("/api/v1/streams/{stream}/recent", get(streams::recent))
        .route(
            "/api/v1/streams/{stream}/dead-letters",
            get(dead_letters::list),
        )
        .route("/metrics", get(ops::metrics))
        .with_state(state)
}

/// `GET /health` alone, for processes that run a role without the serving API.
pub fn health_router(
    roles: Vec<(String, std::sync::Arc<std::sync::atomic::AtomicBool>)>,
) -> Router {
    let roles = std::sync::Arc::new(roles);
    let ready = roles.clone();
    // A single-role process is ready when its role is up: the same answer on both
    // paths, so orchestrators can probe every role alike.
    Router::new()
        .route(
            "/health",
            get(move || async move { ops::health_of(&roles) }),
        )
        .route("/ready", get(move || async move { ops::health_of(&ready) }))
}

/// Keep serving's batch views current: reload whenever the batch layer commits, and
/// every `poll` in case another process committed.
pub async fn refresh_loop(
    state: AppState,
    poll: Duration,
    shutdown: Shutdown,
) -> Result<(), ServingError> {
    let mut committed = state.batch.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = committed.changed() => {}
            _ = tokio::time::sleep(poll) => {}
        }
        if let Err(e) = state.merger.refresh().await {
            tracing::warn!(error = %e, "could not refresh batch views");
        }
    }
}

/// Allow the API to be called from the browser origins in `origins` (CORS); `*` allows
/// any. An origin that is not a valid header value is refused.
pub fn with_cors(app: Router, origins: &[String]) -> Result<Router, ServingError> {
    use axum::http::{HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return Ok(app);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                o.parse::<HeaderValue>()
                    .map_err(|_| ServingError::Server(format!("`{o}` is not a valid origin")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    let cors = CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);
    Ok(app.layer(cors))
}

/// Serve `app` on `http.addr` until shutdown: HTTPS when `http.tls-cert` and
/// `http.tls-key` are set, with `http.rate-limit-per-second` applied per client address.
pub async fn run(http: HttpConfig, app: Router, shutdown: Shutdown) -> Result<(), ServingError> {
    let app = guard::with_guard(app, &http);
    let app = limit::with_rate_limit(app, http.rate_limit_per_second, http.rate_limit_burst)
        .into_make_service_with_connect_info::<SocketAddr>();
    let app = connections::ConnectionCap::new(app, http.max_connections.max(1));
    let bind_err = |source: std::io::Error| ServingError::Bind {
        addr: http.addr.clone(),
        source,
    };
    let tls = match (&http.tls_cert, &http.tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(
            axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|source| ServingError::Tls {
                    cert: cert.clone(),
                    key: key.clone(),
                    source,
                })?,
        ),
        _ => {
            return Err(ServingError::Server(
                "http.tls-cert and http.tls-key go together: set both for HTTPS, or neither".into(),
            ));
        }
    };
    let listener = std::net::TcpListener::bind(&http.addr).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    let Some(tls) = tls else {
        tracing::info!(%local, "serving HTTP");
        let listener = TcpListener::from_std(listener).map_err(bind_err)?;
        return axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(ServingError::Io);
    };
    tracing::info!(%local, "serving HTTPS");
    let handle = axum_server::Handle::new();
    let serve = axum_server::from_tcp_rustls(listener, tls)
        .handle(handle.clone())
        .serve(app);
    tokio::pin!(serve);
    tokio::select! {
        ended = &mut serve => return ended.map_err(ServingError::Io),
        _ = shutdown.cancelled() => {}
    }
    // Long-lived responses end on the shutdown signal themselves; others get this.
    handle.graceful_shutdown(Some(Duration::from_secs(10)));
    serve.await.map_err(ServingError::Io)
}
