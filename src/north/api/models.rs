//! The model registry over REST: `GET /api/v1/models`, `POST /models` (a model folder as
//! a zip, tar or tar.gz in the multipart field `file`), `GET`/`DELETE /models/{id}`,
//! `POST /models/{id}/activate` (a hot swap), `POST /models/rollback` and
//! `POST /models/{id}/benchmark`. The list is the anomaly seed's model shape with the
//! version, task and activation added. Changes are audited.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Multipart, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ApiState;
use super::auth::{Caller, ClientAddr};
use super::dto::rfc3339;
use super::error::ApiError;
#[allow(unused_imports, reason = "named by the OpenAPI attributes")]
use super::error::{ErrorBody, Guarded, Invalid, NotFound};
use crate::models::{MAX_ARCHIVE_BYTES, MAX_BENCHMARK_ITERATIONS, RegistryError};
use crate::storage::{ModelActivation, ModelRecord};

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> ApiError {
        match err {
            RegistryError::NotFound => ApiError::not_found("no model with that id"),
            RegistryError::NotAnArchive(detail) => ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, detail),
            RegistryError::Invalid(detail) => ApiError::unprocessable(detail),
            RegistryError::Conflict(detail) => ApiError::new(StatusCode::CONFLICT, detail),
            RegistryError::Storage(err) => err.into(),
        }
    }
}

/// One model version.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelDto {
    id: String,
    name: String,
    version: String,
    /// classification, detection or anomaly.
    task: String,
    /// Always `onnx`: stationd runs ONNX models with tract.
    format: &'static str,
    /// `active` for the model that serves, else `ready`.
    status: &'static str,
    description: String,
    /// `config` (the model `inference.model_dir` names) or `upload`.
    source: &'static str,
    /// model.toml's `[metrics]`, as its training script measured them.
    #[schema(value_type = Object)]
    metrics: serde_json::Value,
    /// SHA-256 of model.onnx.
    sha256: String,
    size_bytes: u64,
    created_at: String,
    created_by: Option<String>,
    active: bool,
    /// When and by whom the model was made active (only on the active model).
    activated_at: Option<String>,
    activated_by: Option<String>,
}

impl ModelDto {
    fn new(record: &ModelRecord, active: Option<&ModelActivation>) -> ModelDto {
        let active = active.filter(|a| a.model_id == record.id);
        ModelDto {
            id: record.id.to_string(),
            name: record.name.clone(),
            version: record.version.clone(),
            task: record.task.clone(),
            format: "onnx",
            status: if active.is_some() { "active" } else { "ready" },
            description: record.description.clone(),
            source: record.source.as_str(),
            metrics: serde_json::from_str(&record.metrics_json).unwrap_or_default(),
            sha256: record.sha256.clone(),
            size_bytes: record.size_bytes,
            created_at: rfc3339(record.created_at),
            created_by: record.created_by.clone(),
            active: active.is_some(),
            activated_at: active.map(|a| rfc3339(a.activated_at)),
            activated_by: active.and_then(|a| a.activated_by.clone()),
        }
    }
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found("no model with that id"))
}

/// Every registered model version, oldest first; `active` marks the one that serves.
#[utoipa::path(
    get,
    path = "/api/v1/models",
    tag = "models",
    responses((status = 200, description = "done", body = Vec<ModelDto>), Guarded),
    security(("bearer" = []))
)]
pub async fn list(State(state): State<ApiState>) -> Result<Json<Vec<ModelDto>>, ApiError> {
    let (models, active) = state.models.list().await?;
    Ok(Json(models.iter().map(|m| ModelDto::new(m, active.as_ref())).collect()))
}

#[utoipa::path(
    get,
    path = "/api/v1/models/{id}",
    tag = "models",
    params(("id" = String, Path)),
    responses((status = 200, description = "done", body = ModelDto), Guarded, NotFound),
    security(("bearer" = []))
)]
pub async fn get(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<ModelDto>, ApiError> {
    let (record, active) = state.models.get(parse_id(&id)?).await?;
    Ok(Json(ModelDto::new(&record, active.as_ref())))
}

/// Room for the multipart envelope around the archive.
pub const UPLOAD_LIMIT: usize = MAX_ARCHIVE_BYTES + 64 * 1024;

/// Registers a model folder (model.toml and model.onnx) sent as a zip, tar or tar.gz in
/// the form field `file`. The model is loaded and run once in tract before it is
/// accepted; it serves only once activated.
#[utoipa::path(
    post,
    path = "/api/v1/models",
    tag = "models",
    request_body(content_type = "multipart/form-data", description = "`file`: the model folder as .zip, .tar or .tar.gz"),
    responses(
        (status = 201, description = "registered", body = ModelDto),
        (status = 409, description = "this name and version are registered", body = ErrorBody),
        (status = 413, description = "the archive is too large", body = ErrorBody),
        (status = 415, description = "not multipart, or not a zip or tar archive", body = ErrorBody),
        Guarded, Invalid
    ),
    security(("bearer" = []))
)]
pub async fn upload(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Extension(client): Extension<ClientAddr>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut multipart = multipart.map_err(|_| {
        ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send multipart/form-data with the archive in a `file` field")
    })?;
    let mut archive = None;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        if field.name() != Some("file") {
            let name = field.name().unwrap_or_default().to_owned();
            return Err(ApiError::unprocessable(format!("unknown form field {name:?}; expected file")));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            if bytes.len() + chunk.len() > MAX_ARCHIVE_BYTES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the archive is larger than {} MiB", MAX_ARCHIVE_BYTES / (1024 * 1024)),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        archive = Some(bytes);
    }
    let archive = archive.ok_or_else(|| ApiError::unprocessable("form field `file` is required"))?;
    let record = state.models.upload(archive.into(), caller.username.clone()).await?;
    let detail = format!("model {} {} ({})", record.name, record.version, record.id);
    super::auth::audit(&state, &caller, client, "model_uploaded", detail).await?;
    let location = HeaderValue::from_str(&format!("/api/v1/models/{}", record.id)).expect("ascii");
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(ModelDto::new(&record, None))).into_response())
}

fn multipart_error(err: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::new(err.status(), format!("bad multipart body: {}", err.body_text()))
}

/// Deletes an uploaded model that does not serve.
#[utoipa::path(
    delete,
    path = "/api/v1/models/{id}",
    tag = "models",
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "deleted"),
        (status = 409, description = "the model is active, or is the config's", body = ErrorBody),
        Guarded, NotFound
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Extension(client): Extension<ClientAddr>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let record = state.models.delete(parse_id(&id)?).await?;
    let detail = format!("model {} {} ({})", record.name, record.version, record.id);
    super::auth::audit(&state, &caller, client, "model_deleted", detail).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Makes the model serve: it is loaded and warmed up while the current model serves,
/// then swapped in; no trigger fails or waits for the load. Answers once the new model
/// serves, with its description.
#[utoipa::path(
    post,
    path = "/api/v1/models/{id}/activate",
    tag = "models",
    params(("id" = String, Path)),
    responses((status = 200, description = "the model serves", body = ModelDto), Guarded, NotFound, Invalid),
    security(("bearer" = []))
)]
pub async fn activate(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Extension(client): Extension<ClientAddr>,
    Path(id): Path<String>,
) -> Result<Json<ModelDto>, ApiError> {
    let activation = state.models.activate(parse_id(&id)?, &caller.username, "activate").await?;
    activated(&state, &caller, client, activation, "model_activated").await
}

/// Activates the model that served before the current one.
#[utoipa::path(
    post,
    path = "/api/v1/models/rollback",
    tag = "models",
    responses(
        (status = 200, description = "the earlier model serves", body = ModelDto),
        (status = 409, description = "no earlier model", body = ErrorBody),
        Guarded, Invalid
    ),
    security(("bearer" = []))
)]
pub async fn rollback(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Extension(client): Extension<ClientAddr>,
) -> Result<Json<ModelDto>, ApiError> {
    let activation = state.models.rollback(&caller.username).await?;
    activated(&state, &caller, client, activation, "model_rolled_back").await
}

async fn activated(
    state: &ApiState,
    caller: &Caller,
    client: ClientAddr,
    activation: ModelActivation,
    action: &'static str,
) -> Result<Json<ModelDto>, ApiError> {
    let (record, active) = state.models.get(activation.model_id).await?;
    let detail = format!("model {} {} ({})", record.name, record.version, record.id);
    super::auth::audit(state, caller, client, action, detail).await?;
    Ok(Json(ModelDto::new(&record, active.as_ref())))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkBody {
    /// 1 to 1000; 50 when left out.
    iterations: Option<usize>,
}

/// Latency of one model with tract, one thread.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BenchmarkDto {
    model_id: String,
    runtime: &'static str,
    threads: u32,
    iterations: usize,
    mean_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    min_ms: f64,
    max_ms: f64,
}

/// Times the model with tract on a fixed image, one inference at a time on one thread,
/// after three warm-up runs. It loads its own copy of the model and runs beside live
/// inspections, which it slows down on a busy station.
#[utoipa::path(
    post,
    path = "/api/v1/models/{id}/benchmark",
    tag = "models",
    params(("id" = String, Path)),
    request_body = BenchmarkBody,
    responses((status = 200, description = "done", body = BenchmarkDto), Guarded, NotFound, Invalid),
    security(("bearer" = []))
)]
pub async fn benchmark(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<BenchmarkBody>, JsonRejection>,
) -> Result<Json<BenchmarkDto>, ApiError> {
    let id = parse_id(&id)?;
    let iterations = match body {
        Ok(Json(body)) => body.iterations.unwrap_or(50),
        // No body at all: the defaults.
        Err(JsonRejection::MissingJsonContentType(_)) => 50,
        Err(err) => return Err(super::wrenches::json_error(err)),
    };
    if !(1..=MAX_BENCHMARK_ITERATIONS).contains(&iterations) {
        return Err(ApiError::unprocessable(format!("iterations must be within 1..={MAX_BENCHMARK_ITERATIONS}")));
    }
    let figures = state.models.benchmark(id, iterations).await?;
    Ok(Json(BenchmarkDto {
        model_id: id.to_string(),
        runtime: "tract",
        threads: 1,
        iterations: figures.iterations,
        mean_ms: figures.mean_ms,
        p50_ms: figures.p50_ms,
        p99_ms: figures.p99_ms,
        min_ms: figures.min_ms,
        max_ms: figures.max_ms,
    }))
}
