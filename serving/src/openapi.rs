//! The OpenAPI document, generated from the handlers' annotations and served at
//! `/api/v1/openapi.json`.

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The view query's fixed parameters (key columns filter too, by their own names).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ViewParams {
    /// Windows starting at or after this (RFC 3339).
    from: Option<String>,
    /// Windows starting before this (RFC 3339).
    to: Option<String>,
    /// Column to order by; a leading `-` for descending.
    order: Option<String>,
    /// Rows to skip.
    #[param(minimum = 0)]
    offset: Option<u64>,
    /// Most rows to return.
    #[param(minimum = 0)]
    limit: Option<u64>,
    /// The N rows with the largest `by`.
    #[param(minimum = 0)]
    top: Option<u64>,
    /// The column `top` ranks by.
    by: Option<String>,
    /// `false` leaves out `_source` and `complete`.
    meta: Option<bool>,
    /// Time travel: the view as its batch-view table was at this Delta version (batch
    /// layer only).
    #[param(minimum = 0)]
    as_of_version: Option<u64>,
    /// Time travel: the view as its batch-view table was at this time (RFC 3339).
    as_of: Option<String>,
}

/// Records for a stream: a JSON array of objects, one object, or NDJSON.
#[utoipa::path(post, path = "/api/v1/streams/{stream}/events", tag = "ingest",
    params(("stream" = String, Path, description = "Stream name"),
           ("Idempotency-Key" = Option<String>, Header, description = "Makes the request idempotent: a retry with the same key and body adds nothing")),
    request_body(content = Vec<Object>, description = "Records", content_type = "application/json"),
    responses((status = 200, description = "Accepted and rejected records, with each rejection's field and reason", body = Object),
              (status = 400, description = "Not JSON, no valid record (the same report, every reason named), or too many event dates", body = crate::error::ErrorBody),
              (status = 404, description = "No such stream", body = crate::error::ErrorBody),
              (status = 409, description = "A request with this Idempotency-Key is still in progress", body = crate::error::ErrorBody),
              (status = 413, description = "Body or record count over the limit", body = crate::error::ErrorBody),
              (status = 415, description = "Not a JSON or NDJSON content type", body = crate::error::ErrorBody),
              (status = 422, description = "The Idempotency-Key was used for another body", body = crate::error::ErrorBody),
              (status = 503, description = "The log cannot take the write now", body = crate::error::ErrorBody)))]
#[allow(dead_code)]
fn post_events() {}

#[derive(OpenApi)]
#[openapi(
    info(title = "Tributary", description = "Lambda-architecture analytics: ingest, merged views, SQL, live push, batch runs."),
    paths(
        post_events,
        crate::api::list_views,
        crate::api::get_view,
        crate::live::live_view,
        crate::api::post_sql,
        crate::api::list_runs,
        crate::api::get_run,
        crate::api::start_run,
        crate::api::maintain,
        crate::api::speed_stats,
        crate::api::dead_letters,
        crate::streams::list_streams,
        crate::streams::recent,
        crate::streams::replay,
        crate::ops::status,
        crate::live::live_status,
        crate::ops::metrics,
        crate::ops::ready,
        crate::api::health,
    ),
    modifiers(&Security),
)]
pub struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /api/v1/openapi.json`: the generated document, with this deployment's view
/// and stream names as the values `{view}` and `{stream}` may take.
pub async fn document(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
) -> axum::Json<utoipa::openapi::OpenApi> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let pipeline = state.merger.pipeline();
    let views: Vec<String> = pipeline.views.iter().map(|v| v.name.clone()).collect();
    let streams: Vec<String> = pipeline.streams.iter().map(|s| s.name.clone()).collect();
    let mut api = ApiDoc::openapi();
    for item in api.paths.paths.values_mut() {
        for op in [&mut item.get, &mut item.post].into_iter().flatten() {
            for p in op.parameters.iter_mut().flatten() {
                let names = match p.name.as_str() {
                    "view" => &views,
                    "stream" => &streams,
                    _ => continue,
                };
                p.schema = Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some(names.clone()))
                        .into(),
                );
            }
        }
    }
    axum::Json(api)
}
