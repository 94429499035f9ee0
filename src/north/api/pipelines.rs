//! REST handlers for continuous pipelines with the anomaly-inspection seed's shapes:
//! `/pipelines` (create, list, get, patch, delete), `/active-pipelines` (start, list with
//! live metrics, stop) and a pipeline's raised anomalies. Sinks are given inline in the
//! pipeline, each in the seed's sink shape (`{"type", "name", "config"}`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ApiState;
use super::dto::{PipelineEventDto, rfc3339};
use super::error::ApiError;
#[allow(unused_imports, reason = "named by the OpenAPI attributes")]
use super::error::{ErrorBody, Guarded, Invalid, NotFound};
use super::routes::query_error;
use super::wrenches::json_error;
use crate::pipelines::{PipelineError, Pipelines, RunStatus};
use crate::storage::{PipelineSpec, Sink, SinkKind};

impl From<PipelineError> for ApiError {
    fn from(err: PipelineError) -> ApiError {
        match err {
            PipelineError::Unknown(_) | PipelineError::NotActive(_) => ApiError::not_found(err.to_string()),
            PipelineError::AlreadyActive(_) => ApiError::new(StatusCode::CONFLICT, err.to_string()),
            PipelineError::Invalid(message) => ApiError::unprocessable(message),
            PipelineError::Storage(err) => err.into(),
            PipelineError::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
        }
    }
}

fn pipelines(state: &ApiState) -> &Pipelines {
    &state.pipelines
}

#[derive(Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigBody {
    /// Anomaly score at or above which a frame counts; null: the model's rule.
    threshold: Option<f32>,
    fps: Option<f64>,
    /// "N of M": frames that must count within the window before an anomaly is raised.
    confirm_frames: Option<u32>,
    confirm_window: Option<u32>,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    config: serde_json::Value,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct WebhookConfig {
    url: String,
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct FilesystemConfig {
    #[schema(value_type = String)]
    output_dir: PathBuf,
    #[serde(default = "yes")]
    save_images: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MqttConfig {}

fn yes() -> bool {
    true
}

fn sink_from_body(body: SinkBody) -> Result<Sink, ApiError> {
    let config = if body.config.is_null() { serde_json::json!({}) } else { body.config };
    let bad = |err: serde_json::Error| ApiError::unprocessable(format!("sink {:?} ({}): {err}", body.name, body.kind));
    let kind = match body.kind.as_str() {
        "mqtt" => {
            serde_json::from_value::<MqttConfig>(config).map_err(|err| {
                ApiError::unprocessable(format!(
                    "sink {:?}: an mqtt sink uses the station's [mqtt] connection and topic \
                     stationd/<station>/anomaly; it takes no config ({err})",
                    body.name
                ))
            })?;
            SinkKind::Mqtt
        }
        "webhook" => {
            let config: WebhookConfig = serde_json::from_value(config).map_err(bad)?;
            if config.method.as_deref().is_some_and(|m| !m.eq_ignore_ascii_case("POST")) {
                return Err(ApiError::unprocessable(format!("sink {:?}: webhooks are POSTed", body.name)));
            }
            SinkKind::Webhook { url: config.url, headers: config.headers.into_iter().collect() }
        }
        "filesystem" => {
            let config: FilesystemConfig = serde_json::from_value(config).map_err(bad)?;
            SinkKind::Filesystem { output_dir: config.output_dir, save_images: config.save_images }
        }
        other => {
            return Err(ApiError::unprocessable(format!(
                "sink type {other:?} is not one of \"mqtt\", \"webhook\", \"filesystem\""
            )));
        }
    };
    Ok(Sink { name: body.name, kind })
}

fn sink_to_body(sink: &Sink) -> SinkBody {
    let (kind, config) = match &sink.kind {
        SinkKind::Mqtt => ("mqtt", serde_json::json!({})),
        SinkKind::Webhook { url, headers } => {
            let headers: BTreeMap<&str, &str> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            ("webhook", serde_json::json!({"url": url, "method": "POST", "headers": headers}))
        }
        SinkKind::Filesystem { output_dir, save_images } => {
            ("filesystem", serde_json::json!({"output_dir": output_dir, "save_images": save_images}))
        }
    };
    SinkBody { kind: kind.to_owned(), name: sink.name.clone(), config }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PipelineDto {
    id: String,
    name: String,
    model_id: Option<String>,
    source_id: String,
    station_id: String,
    sinks: Vec<SinkBody>,
    config: ConfigBody,
    active: bool,
    created_at: String,
}

impl From<&PipelineSpec> for PipelineDto {
    fn from(spec: &PipelineSpec) -> PipelineDto {
        PipelineDto {
            id: spec.id.to_string(),
            name: spec.name.clone(),
            model_id: spec.model_id.clone(),
            source_id: spec.source_id.clone(),
            station_id: spec.station_id.clone(),
            sinks: spec.sinks.iter().map(sink_to_body).collect(),
            config: ConfigBody {
                threshold: spec.threshold,
                fps: Some(spec.fps),
                confirm_frames: Some(spec.confirm_frames),
                confirm_window: Some(spec.confirm_window),
            },
            active: spec.active,
            created_at: rfc3339(spec.created_at),
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineBody {
    name: Option<String>,
    model_id: Option<String>,
    source_id: Option<String>,
    station_id: Option<String>,
    sinks: Option<Vec<SinkBody>>,
    config: Option<ConfigBody>,
}

const DEFAULT_FPS: f64 = 5.0;

/// Applies a create or patch body onto `spec`.
fn apply(state: &ApiState, spec: &mut PipelineSpec, body: PipelineBody) -> Result<(), ApiError> {
    if let Some(name) = body.name {
        spec.name = name;
    }
    if body.model_id.is_some() {
        spec.model_id = body.model_id;
    }
    if let Some(source_id) = body.source_id {
        spec.source_id = source_id;
    }
    spec.station_id = match body.station_id {
        Some(station_id) => station_id,
        // The station that inspects with this camera, if there is one.
        None if spec.station_id.is_empty() => {
            let stations = state.inspector.stations_with_camera(&spec.source_id);
            stations.into_iter().next().or_else(|| state.inspector.station_ids().next().cloned()).unwrap_or_default()
        }
        None => std::mem::take(&mut spec.station_id),
    };
    if let Some(sinks) = body.sinks {
        spec.sinks = sinks.into_iter().map(sink_from_body).collect::<Result<_, _>>()?;
    }
    if let Some(config) = body.config {
        if config.threshold.is_some() {
            spec.threshold = config.threshold;
        }
        spec.fps = config.fps.unwrap_or(spec.fps);
        spec.confirm_frames = config.confirm_frames.unwrap_or(spec.confirm_frames);
        spec.confirm_window = config.confirm_window.unwrap_or(spec.confirm_window);
    }
    pipelines(state).validate(spec)?;
    Ok(())
}

fn pipeline_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found(format!("no pipeline {id}")))
}

/// POST /api/v1/pipelines
#[utoipa::path(
    post,
    path = "/api/v1/pipelines",
    tag = "pipelines",
    request_body = PipelineBody,
    responses((status = 201, description = "done", body = PipelineDto), (status = 409, description = "conflicts with the current state", body = ErrorBody), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<ApiState>,
    body: Result<Json<PipelineBody>, JsonRejection>,
) -> Result<(StatusCode, Json<PipelineDto>), ApiError> {
    let Json(body) = body.map_err(json_error)?;
    if body.name.is_none() || body.source_id.is_none() {
        return Err(ApiError::unprocessable("\"name\" and \"source_id\" are required"));
    }
    let mut spec = PipelineSpec {
        id: Uuid::new_v4(),
        name: String::new(),
        station_id: String::new(),
        source_id: String::new(),
        model_id: None,
        fps: DEFAULT_FPS,
        threshold: None,
        confirm_frames: 1,
        confirm_window: 1,
        sinks: Vec::new(),
        active: false,
        created_at: Utc::now(),
    };
    apply(&state, &mut spec, body)?;
    let stored = spec.clone();
    state.inspector.storage.call(move |db| db.put_pipeline(&stored)).await?;
    Ok((StatusCode::CREATED, Json(PipelineDto::from(&spec))))
}

/// GET /api/v1/pipelines
#[utoipa::path(
    get,
    path = "/api/v1/pipelines",
    tag = "pipelines",
    responses((status = 200, description = "done", body = Vec<PipelineDto>), Guarded),
    security(("bearer" = []))
)]
pub async fn list(State(state): State<ApiState>) -> Result<Json<Vec<PipelineDto>>, ApiError> {
    let specs = state.inspector.storage.call(|db| db.pipelines()).await?;
    Ok(Json(specs.iter().map(PipelineDto::from).collect()))
}

async fn load(state: &ApiState, id: &str) -> Result<PipelineSpec, ApiError> {
    let id = pipeline_id(id)?;
    let spec = state.inspector.storage.call(move |db| db.pipeline(id)).await?;
    spec.ok_or_else(|| ApiError::not_found(format!("no pipeline {id}")))
}

/// GET /api/v1/pipelines/{id}
#[utoipa::path(
    get,
    path = "/api/v1/pipelines/{id}",
    tag = "pipelines",
    params(("id" = String, Path)),
    responses((status = 200, description = "done", body = PipelineDto), Guarded, NotFound),
    security(("bearer" = []))
)]
pub async fn get(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<PipelineDto>, ApiError> {
    Ok(Json(PipelineDto::from(&load(&state, &id).await?)))
}

fn running(spec: &PipelineSpec) -> Result<(), ApiError> {
    if spec.active {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("pipeline {} is running; stop it first", spec.id)));
    }
    Ok(())
}

/// PATCH /api/v1/pipelines/{id}: only while it is not running.
#[utoipa::path(
    patch,
    path = "/api/v1/pipelines/{id}",
    tag = "pipelines",
    params(("id" = String, Path)),
    request_body = PipelineBody,
    responses((status = 200, description = "done", body = PipelineDto), Guarded, NotFound, Invalid),
    security(("bearer" = []))
)]
pub async fn patch(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<PipelineBody>, JsonRejection>,
) -> Result<Json<PipelineDto>, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let mut spec = load(&state, &id).await?;
    running(&spec)?;
    apply(&state, &mut spec, body)?;
    let stored = spec.clone();
    state.inspector.storage.call(move |db| db.put_pipeline(&stored)).await?;
    Ok(Json(PipelineDto::from(&spec)))
}

/// DELETE /api/v1/pipelines/{id}: only while it is not running; its anomalies stay.
#[utoipa::path(
    delete,
    path = "/api/v1/pipelines/{id}",
    tag = "pipelines",
    params(("id" = String, Path)),
    responses((status = 204, description = "done"), (status = 409, description = "conflicts with the current state", body = ErrorBody), Guarded, NotFound),
    security(("bearer" = []))
)]
pub async fn delete(State(state): State<ApiState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let spec = load(&state, &id).await?;
    running(&spec)?;
    state.inspector.storage.call(move |db| db.delete_pipeline(spec.id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    limit: Option<u32>,
}

/// GET /api/v1/pipelines/{id}/events?limit=50: raised anomalies, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/pipelines/{id}/events",
    tag = "pipelines",
    params(("id" = String, Path), EventsQuery),
    responses((status = 200, description = "done", body = Vec<PipelineEventDto>), Guarded, NotFound, Invalid),
    security(("bearer" = []))
)]
pub async fn events(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Vec<PipelineEventDto>>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::unprocessable("limit must be between 1 and 1000"));
    }
    let id = pipeline_id(&id)?;
    let events = state.inspector.storage.call(move |db| db.pipeline_events(Some(id), limit)).await?;
    Ok(Json(events.iter().map(PipelineEventDto::from).collect()))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MetricsDto {
    frames_processed: u64,
    anomalies_detected: u64,
    avg_inference_time_ms: Option<f64>,
    last_anomaly_score: Option<f32>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RunDto {
    id: String,
    pipeline_id: String,
    status: &'static str,
    error: Option<String>,
    started_at: String,
    metrics: MetricsDto,
}

impl From<RunStatus> for RunDto {
    fn from(run: RunStatus) -> RunDto {
        RunDto {
            id: run.id.to_string(),
            pipeline_id: run.pipeline_id.to_string(),
            status: run.status,
            error: run.error,
            started_at: rfc3339(run.started_at),
            metrics: MetricsDto {
                frames_processed: run.frames_processed,
                anomalies_detected: run.anomalies_detected,
                avg_inference_time_ms: run.avg_inference_time_ms.map(|ms| (ms * 100.0).round() / 100.0),
                last_anomaly_score: run.last_score,
            },
        }
    }
}

/// GET /api/v1/active-pipelines
#[utoipa::path(
    get,
    path = "/api/v1/active-pipelines",
    tag = "pipelines",
    responses((status = 200, description = "done", body = Vec<RunDto>), Guarded),
    security(("bearer" = []))
)]
pub async fn active(State(state): State<ApiState>) -> Result<Json<Vec<RunDto>>, ApiError> {
    Ok(Json(pipelines(&state).runs().await?.into_iter().map(RunDto::from).collect()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    pipeline_id: String,
}

/// POST /api/v1/active-pipelines {"pipeline_id"}: 201 with the run.
#[utoipa::path(
    post,
    path = "/api/v1/active-pipelines",
    tag = "pipelines",
    request_body = StartBody,
    responses((status = 201, description = "done", body = RunDto), (status = 409, description = "conflicts with the current state", body = ErrorBody), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn start(
    State(state): State<ApiState>,
    body: Result<Json<StartBody>, JsonRejection>,
) -> Result<(StatusCode, Json<RunDto>), ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let id = Uuid::parse_str(&body.pipeline_id)
        .map_err(|_| ApiError::unprocessable(format!("pipeline_id {:?} is not a pipeline id", body.pipeline_id)))?;
    let run = pipelines(&state).start(id).await.map_err(|err| match err {
        // The body names it, so an unknown pipeline is a bad request body, not a missing URL.
        PipelineError::Unknown(_) => ApiError::unprocessable(err.to_string()),
        other => other.into(),
    })?;
    Ok((StatusCode::CREATED, Json(RunDto::from(run))))
}

/// DELETE /api/v1/active-pipelines/{id}
#[utoipa::path(
    delete,
    path = "/api/v1/active-pipelines/{id}",
    tag = "pipelines",
    params(("id" = String, Path)),
    responses((status = 204, description = "done"), Guarded, NotFound),
    security(("bearer" = []))
)]
pub async fn stop(State(state): State<ApiState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found(format!("no active pipeline {id}")))?;
    pipelines(&state).stop(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
