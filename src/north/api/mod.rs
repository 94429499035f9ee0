//! The REST API (axum on hyper): routes under /api/v1, JSON errors, and a graceful stop
//! that refuses new connections and lets in-flight requests (and so in-flight inspection
//! cycles) finish.

mod alerts;
mod assembly;
pub mod auth;
mod cameras;
mod coaching;
pub mod config;
mod drift;
pub(crate) mod dto;
mod error;
mod gpio;
mod jobs;
mod learning;
mod models;
pub mod openapi;
mod pipelines;
mod routes;
mod wrenches;
mod ws;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::bus::Snapshot;
use crate::cycle::Inspector;
use crate::supervisor::{Readiness, ServiceContext, ServiceError};

#[derive(Clone)]
pub struct ApiState {
    pub inspector: Inspector,
    pub readiness: Readiness,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub max_upload_bytes: usize,
    /// Requests being served right now; shutdown tests and metrics read it.
    pub in_flight: Arc<watch::Sender<usize>>,
    /// `None` when MQTT is disabled.
    pub mqtt: Option<crate::north::mqtt::MqttHandle>,
    /// `None` when OPC-UA is disabled.
    pub opcua: Option<crate::north::opcua::OpcuaHandle>,
    pub wrenches: crate::south::wrench::Wrenches,
    /// `None` when the station has no GPIO lines.
    pub gpio: Option<crate::south::gpio::GpioHandle>,
    /// The simulated chip's wiring side, with `[gpio] backend = "sim"` only.
    pub gpio_sim: Option<crate::south::gpio::sim::GpioSimControl>,
    /// The cameras' configuration, keyed by camera id.
    pub cameras: Arc<BTreeMap<String, crate::config::CameraConfig>>,
    /// Camera streams open right now (at most `cameras::MAX_STREAMS`).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the API stops: endless responses (streams) end on it.
    pub stop: tokio_util::sync::CancellationToken,
    pub metrics: crate::metrics::Metrics,
    pub pipelines: crate::pipelines::Pipelines,
    pub coaching: crate::coaching::Coaching,
    pub models: crate::models::Registry,
    pub jobs: crate::jobs::Jobs,
    /// `None` when `[drift] enabled = false`.
    pub drift: Option<crate::drift::Drift>,
    pub state_dir: std::path::PathBuf,
    pub image_retention: Option<std::time::Duration>,
    /// The core's notifications, for the WebSocket.
    pub notifications: tokio::sync::broadcast::Sender<crate::bus::Notification>,
    /// Tokens, the user directory and the rate limits.
    pub auth: Arc<auth::AuthState>,
    /// The configuration file, for `GET`/`PUT /api/v1/config`.
    pub config_file: Arc<config::ConfigFile>,
}

impl ApiState {
    pub fn stream_limit() -> Arc<tokio::sync::Semaphore> {
        Arc::new(tokio::sync::Semaphore::new(cameras::MAX_STREAMS))
    }
}

/// Room for the multipart envelope and the text fields around the file.
const MULTIPART_OVERHEAD: usize = 64 * 1024;

pub fn router(state: ApiState) -> Router {
    let upload_limit = state.max_upload_bytes + MULTIPART_OVERHEAD;
    let api = Router::new()
        .route("/health", get(routes::health))
        .route("/auth/login", post(auth::login))
        .route("/auth/refresh", post(auth::refresh))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/me", get(auth::me))
        .route("/users", get(auth::list_users).post(auth::create_user))
        .route("/users/me", axum::routing::put(auth::update_me))
        .route("/users/me/password", axum::routing::put(auth::change_my_password))
        .route("/users/{id}", get(auth::get_user).put(auth::update_user).delete(auth::delete_user))
        .route("/audit", get(auth::audit_log))
        .route("/config", get(config::get).put(config::put))
        .route("/alerts", get(alerts::list))
        .route("/alerts/{id}/acknowledge", post(alerts::acknowledge))
        .route("/ready", get(routes::ready))
        .route("/inspect", post(routes::inspect_upload).layer(DefaultBodyLimit::max(upload_limit)))
        .route("/inspect/camera", post(routes::inspect_camera))
        .route("/inspections", get(routes::list_inspections))
        .route("/inspections/export", get(routes::export_csv))
        .route("/inspections/{id}", get(routes::get_inspection).delete(routes::delete_inspection))
        .route("/inspections/{id}/image", get(routes::inspection_image))
        .route("/inspections/{id}/heatmap", get(routes::inspection_heatmap))
        .route("/statistics", get(routes::statistics))
        .route("/recipes", get(routes::recipes))
        .route("/statistics/trends", get(routes::trends))
        .route("/stations", get(routes::stations))
        .route("/mqtt/status", get(routes::mqtt_status))
        .route("/opcua/status", get(routes::opcua_status))
        .route("/wrenches", get(wrenches::list))
        .route("/wrenches/connect", post(wrenches::connect))
        .route("/wrenches/disconnect", post(wrenches::disconnect))
        .route("/wrenches/status", get(wrenches::status))
        .route("/wrenches/discover", get(wrenches::discover))
        .route("/wrenches/toggle", post(wrenches::toggle))
        .route("/wrenches/state", get(wrenches::state))
        .route("/wrenches/program", post(wrenches::program))
        .route("/wrenches/sequence", post(wrenches::sequence))
        .route("/wrenches/clear", post(wrenches::clear))
        .route("/wrenches/cancel", post(wrenches::cancel))
        .route("/wrenches/vin", post(wrenches::vin))
        .route("/wrenches/time", post(wrenches::set_time))
        .route("/wrenches/release", post(wrenches::release))
        .route("/settings/release-control", get(wrenches::get_release_control).post(wrenches::set_release_control))
        .route("/settings/torque", get(wrenches::get_torque_settings).put(wrenches::put_torque_settings))
        .route("/tightenings", get(wrenches::list_tightenings))
        .route("/tightenings/{id}", get(wrenches::get_tightening))
        .route("/cameras", get(cameras::list))
        .route("/cameras/{id}", get(cameras::get))
        .route("/cameras/{id}/frame", get(cameras::frame))
        .route("/cameras/{id}/stream", get(cameras::stream))
        .route("/cameras/{id}/config", get(cameras::get_config).put(cameras::put_config))
        .route("/models", get(models::list).post(models::upload).layer(DefaultBodyLimit::max(models::UPLOAD_LIMIT)))
        .route("/models/rollback", post(models::rollback))
        .route("/models/{id}", get(models::get).delete(models::delete))
        .route("/models/{id}/activate", post(models::activate))
        .route("/models/{id}/benchmark", post(models::benchmark))
        .route("/jobs", get(jobs::list).post(jobs::create))
        .route("/jobs/{id}", get(jobs::get))
        .route("/jobs/{id}/start", post(jobs::start))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/anomaly/fits", post(jobs::fit).layer(DefaultBodyLimit::max(jobs::FIT_UPLOAD_LIMIT)))
        .route("/learning/stats", get(learning::stats))
        .route("/learning/next", get(learning::next))
        .route("/learning/export", get(learning::export))
        .route("/learning/{id}", post(learning::enqueue))
        .route("/learning/{id}/annotations", post(learning::annotate))
        .route("/drift", get(drift::list))
        .route("/drift/{camera}", get(drift::get))
        .route("/drift/{camera}/reference", post(drift::reset_reference))
        .route("/pipelines", get(pipelines::list).post(pipelines::create))
        .route("/pipelines/{id}", get(pipelines::get).patch(pipelines::patch).delete(pipelines::delete))
        .route("/pipelines/{id}/events", get(pipelines::events))
        .route("/active-pipelines", get(pipelines::active).post(pipelines::start))
        .route("/active-pipelines/{id}", axum::routing::delete(pipelines::stop))
        .route("/ws", get(ws::upgrade))
        .route("/storage", get(routes::storage))
        .route("/storage/cleanup", post(routes::storage_cleanup))
        .route("/system/gpio", get(gpio::lines))
        .route("/system/gpio/{name}/set", post(gpio::set_output))
        .route("/system/gpio/{name}/inject", post(gpio::inject))
        .route("/assemblies", get(assembly::list_assemblies).post(assembly::create_assembly))
        .route(
            "/assemblies/{id}",
            get(assembly::get_assembly).put(assembly::update_assembly).delete(assembly::delete_assembly),
        )
        .route("/assemblies/{id}/publish", post(assembly::publish_assembly))
        .route("/assemblies/{id}/active", axum::routing::put(assembly::set_active))
        .route("/assemblies/{id}/revisions", post(assembly::new_revision))
        .route("/assembly-revisions", get(assembly::revisions))
        .route("/assembly-revisions/coachable", get(assembly::coachable))
        .route("/assemblies/{id}/steps", get(assembly::list_steps).post(assembly::create_step))
        .route(
            "/assemblies/{id}/steps/{step_id}",
            get(assembly::get_step).put(assembly::update_step).delete(assembly::delete_step),
        )
        .route("/assemblies/{id}/steps/{step_id}/move", post(assembly::move_step))
        .route("/assemblies/{id}/steps/{step_id}/allowed-moves", get(assembly::allowed_moves))
        .route("/assemblies/{id}/steps/{step_id}/deletable", get(assembly::deletable))
        .route("/steps/{step_id}/data", get(assembly::list_step_data).post(assembly::create_step_data))
        .route(
            "/steps/{step_id}/data/{data_id}",
            axum::routing::put(assembly::update_step_data).delete(assembly::delete_step_data),
        )
        .route("/operators", get(assembly::list_operators).post(assembly::create_operator))
        .route("/operators/active", get(assembly::active_operators))
        .route("/operators/by-name", get(assembly::operator_by_name))
        .route("/operators/rfid", post(assembly::rfid_login))
        .route("/operators/login", post(assembly::operator_login))
        .route("/operators/validate-password", post(assembly::validate_password))
        .route(
            "/operators/{id}",
            get(assembly::get_operator).put(assembly::update_operator).delete(assembly::delete_operator),
        )
        .route("/coaching", get(coaching::status))
        .route("/coaching/start", post(coaching::start))
        .route("/coaching/pause", post(coaching::pause))
        .route("/coaching/resume", post(coaching::resume))
        .route("/coaching/complete", post(coaching::complete))
        .route("/coaching/interrupt", post(coaching::interrupt))
        .route("/coaching/step", post(coaching::set_step))
        .route("/coaching/qa", post(coaching::qa))
        .route("/coaching/ws", get(coaching::ws))
        .route("/assembly-records", get(coaching::list_records))
        .route("/assembly-records/recent", get(coaching::recent_record))
        .route("/assembly-records/{id}", get(coaching::get_record))
        .route("/assembly-records/{id}/metrics", get(coaching::record_metrics))
        .route("/assembly-records/{id}/qa-report", get(coaching::qa_report))
        .route("/assembly-records/{id}/qa-report.html", get(coaching::qa_report_html));
    Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(routes::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/docs", get(openapi::docs))
        .fallback(routes::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), auth::guard))
        .layer(middleware::from_fn_with_state(state.clone(), count_in_flight))
        .with_state(state)
}

async fn count_in_flight(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    struct Guard(Arc<watch::Sender<usize>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.send_modify(|n| *n -= 1);
        }
    }
    state.in_flight.send_modify(|n| *n += 1);
    let _guard = Guard(state.in_flight.clone());
    // The route template, not the path: ids must not become metric labels.
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let method = request.method().clone();
    let response = next.run(request).await;
    state.metrics.api_request(method.as_str(), route.as_deref().unwrap_or("unmatched"), response.status().as_u16());
    response
}

/// Binds the listener; separate from `serve` so that the caller learns the bound address
/// (tests bind port 0) and a bind error is a start-up error, not a service failure.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until the service token is cancelled, then drains in-flight requests.
pub async fn serve(listener: TcpListener, mut state: ApiState, ctx: ServiceContext) -> Result<(), ServiceError> {
    state.stop = ctx.token.clone();
    let addr = listener.local_addr().map_err(ServiceError::new)?;
    tracing::info!(%addr, "REST API listening");
    ctx.set_ready();
    let token = ctx.token.clone();
    // The peer address keys the per-client rate limits and goes in the audit log.
    axum::serve(listener, router(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
        .map_err(ServiceError::new)
}
