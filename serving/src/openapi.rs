//! The OpenAPI document, generated from the handlers' annotations and served at
//! `/api/v1/openapi.json`.

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The view query's fixed parameters (key columns filter too, by their own names).
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
        crate::views::list_views,
        crate::views::get_view,
        crate::view_admin::create_view,
        crate::view_admin::replace_view,
        crate::view_admin::drop_view,
        crate::view_admin::pause_view,
        crate::view_admin::resume_view,
        crate::view_admin::view_status,
        crate::live::live_view,
        crate::sql::post_sql,
        crate::runs::list_runs,
        crate::runs::get_run,
        crate::runs::start_run,
        crate::runs::maintain,
        crate::ops::speed_stats,
        crate::dead_letters::list,
        crate::streams::list_streams,
        crate::streams::recent,
        crate::dead_letters::replay,
        crate::ops::status,
        crate::ops::sinks,
        crate::live::live_status,
        crate::ops::metrics,
        crate::ops::ready,
        crate::ops::health,
    ),
    modifiers(&Security),
)]
/// The OpenAPI document of the REST API (served at `/api/v1/openapi.json`).
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
