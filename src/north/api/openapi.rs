//! The OpenAPI 3 document (`GET /openapi.json`), generated from the handlers' `#[utoipa::path]`
//! attributes and the DTOs' `ToSchema` derives, and `GET /docs`: a page that renders it
//! with no network (no CDN; stations are often offline).
//!
//! A test compares the router's routes with the document's paths, so a route without its
//! attribute fails `cargo test`.

use axum::Json;
use axum::response::Html;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::error::ErrorBody;
use super::{
    alerts, assembly, auth, cameras, coaching, config, drift, gpio, jobs, learning, models, pipelines, routes,
    wrenches, ws,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "stationd",
        description = "Factory edge station daemon: inspection, wrenches, devices, records.                        Every route but health, ready, metrics, login and refresh needs a bearer token                        from POST /api/v1/auth/login. Errors are {\"detail\": \"...\"}."
    ),
    paths(
        routes::health,
        assembly::list_assemblies,
        assembly::create_assembly,
        assembly::get_assembly,
        assembly::update_assembly,
        assembly::delete_assembly,
        assembly::publish_assembly,
        assembly::set_active,
        assembly::new_revision,
        assembly::revisions,
        assembly::coachable,
        assembly::list_steps,
        assembly::create_step,
        assembly::get_step,
        assembly::update_step,
        assembly::delete_step,
        assembly::move_step,
        assembly::allowed_moves,
        assembly::deletable,
        assembly::list_step_data,
        assembly::create_step_data,
        assembly::update_step_data,
        assembly::delete_step_data,
        assembly::list_operators,
        assembly::create_operator,
        assembly::active_operators,
        assembly::operator_by_name,
        assembly::rfid_login,
        assembly::operator_login,
        assembly::validate_password,
        assembly::get_operator,
        assembly::update_operator,
        assembly::delete_operator,
        coaching::status,
        coaching::start,
        coaching::pause,
        coaching::resume,
        coaching::complete,
        coaching::interrupt,
        coaching::set_step,
        coaching::qa,
        coaching::ws,
        coaching::list_records,
        coaching::recent_record,
        coaching::get_record,
        coaching::record_metrics,
        coaching::qa_report,
        coaching::qa_report_html,
        auth::login,
        auth::refresh,
        auth::logout,
        auth::me,
        auth::list_users,
        auth::create_user,
        auth::update_me,
        auth::change_my_password,
        auth::get_user,
        auth::update_user,
        auth::delete_user,
        auth::audit_log,
        config::get,
        config::put,
        alerts::list,
        alerts::acknowledge,
        routes::ready,
        routes::inspect_upload,
        routes::inspect_camera,
        routes::list_inspections,
        routes::export_csv,
        routes::get_inspection,
        routes::delete_inspection,
        routes::inspection_image,
        routes::inspection_heatmap,
        routes::statistics,
        routes::trends,
        routes::stations,
        routes::recipes,
        routes::mqtt_status,
        routes::opcua_status,
        wrenches::list,
        wrenches::connect,
        wrenches::disconnect,
        wrenches::status,
        wrenches::discover,
        wrenches::toggle,
        wrenches::state,
        wrenches::program,
        wrenches::sequence,
        wrenches::clear,
        wrenches::cancel,
        wrenches::vin,
        wrenches::set_time,
        wrenches::release,
        wrenches::get_release_control,
        wrenches::set_release_control,
        wrenches::get_torque_settings,
        wrenches::put_torque_settings,
        wrenches::list_tightenings,
        wrenches::get_tightening,
        cameras::list,
        cameras::get,
        cameras::frame,
        cameras::stream,
        cameras::get_config,
        cameras::put_config,
        models::list,
        models::upload,
        models::get,
        models::delete,
        models::activate,
        models::rollback,
        models::benchmark,
        jobs::list,
        jobs::create,
        jobs::get,
        jobs::start,
        jobs::cancel,
        jobs::fit,
        learning::stats,
        learning::next,
        learning::export,
        learning::enqueue,
        learning::annotate,
        drift::list,
        drift::get,
        drift::reset_reference,
        pipelines::list,
        pipelines::create,
        pipelines::get,
        pipelines::patch,
        pipelines::delete,
        pipelines::events,
        pipelines::active,
        pipelines::start,
        pipelines::stop,
        ws::upgrade,
        routes::storage,
        routes::storage_cleanup,
        gpio::lines,
        gpio::set_output,
        gpio::inject,
        routes::metrics,
        openapi_json,
        docs,
    ),
    modifiers(&BearerToken)
)]
struct ApiDoc;

struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut document = ApiDoc::openapi();
        document.info.version = env!("CARGO_PKG_VERSION").to_owned();
        document
    })
}

/// GET /openapi.json (public: it holds no station data).
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "this document", content_type = "application/json", body = Object),
              (status = 429, description = "rate limit exceeded (Retry-After)", body = ErrorBody)))]
pub async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(document())
}

/// GET /docs (public): the API reference, rendered in the browser from /openapi.json.
#[utoipa::path(get, path = "/docs", tag = "health",
    responses((status = 200, description = "an HTML page that needs no network", content_type = "text/html", body = String),
              (status = 429, description = "rate limit exceeded (Retry-After)", body = ErrorBody)))]
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}
