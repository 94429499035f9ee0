//! Batch jobs over REST, in the inspection seed's shapes: `GET /api/v1/jobs`,
//! `POST /jobs` (`{name, input_dir, file_pattern}`, plus an optional `station_id`),
//! `GET /jobs/{id}` (status and progress), `POST /jobs/{id}/start` and
//! `POST /jobs/{id}/cancel`; and `POST /anomaly/fits`, which starts a PatchCore fit job
//! (the anomaly seed's training: 202 with the job, whose progress and result the jobs
//! routes show).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ApiState;
use super::auth::Caller;
use super::dto::rfc3339;
use super::error::ApiError;
#[allow(unused_imports, reason = "named by the OpenAPI attributes")]
use super::error::{ErrorBody, Guarded, Invalid, NotFound};
use crate::jobs::{FIT_SETS, FitParams, FitSource, JobError, NewJob};
use crate::storage::{JobKind, JobRecord, JobStatus};

impl From<JobError> for ApiError {
    fn from(err: JobError) -> ApiError {
        match err {
            JobError::NotFound => ApiError::not_found("no job with that id"),
            JobError::Invalid(detail) => ApiError::unprocessable(detail),
            JobError::Conflict(detail) => ApiError::new(StatusCode::CONFLICT, detail),
            JobError::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the jobs service has stopped"),
            JobError::Storage(err) => err.into(),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct JobDto {
    id: String,
    /// "batch" (inspect a folder's images) or "training" (fit a PatchCore anomaly model; the
    /// anomaly seed's job type).
    #[serde(rename = "type")]
    kind: &'static str,
    name: String,
    input_dir: String,
    file_pattern: String,
    station_id: String,
    /// pending, queued, running, completed, cancelled or failed.
    status: &'static str,
    /// Percent of the matched files processed; null until the files are listed.
    progress: Option<f64>,
    total: Option<u64>,
    processed: u64,
    passed: u64,
    failed: u64,
    uncertain: u64,
    /// Files that could not be inspected (unreadable, not an image).
    errors: u64,
    last_error: Option<String>,
    created_by: Option<String>,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    /// A fit's stage while it runs: features, coreset or scoring.
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<String>,
    /// What a fit was asked: model name and version, coreset ratio, image source.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    params: Option<serde_json::Value>,
    /// What a completed fit measured: the registered model's id, image AUROC on the held-out
    /// set, thresholds, bank size.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    metrics: Option<serde_json::Value>,
}

/// A job's `type` as the API names it: a fit is the anomaly seed's "training".
fn type_name(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Batch => "batch",
        JobKind::Fit => "training",
    }
}

impl From<&JobRecord> for JobDto {
    fn from(job: &JobRecord) -> JobDto {
        let p = &job.progress;
        let json = |text: &Option<String>| text.as_deref().and_then(|t| serde_json::from_str(t).ok());
        JobDto {
            id: job.id.to_string(),
            kind: type_name(job.kind),
            name: job.name.clone(),
            input_dir: job.input_dir.clone(),
            file_pattern: job.file_pattern.clone(),
            station_id: job.station_id.clone(),
            status: job.status.as_str(),
            progress: p
                .total
                .map(|t| if t == 0 { 100.0 } else { (1000.0 * p.processed as f64 / t as f64).round() / 10.0 }),
            total: p.total,
            processed: p.processed,
            passed: p.passed,
            failed: p.failed,
            uncertain: p.uncertain,
            errors: p.errors,
            last_error: job.last_error.clone(),
            created_by: job.created_by.clone(),
            created_at: rfc3339(job.created_at),
            started_at: job.started_at.map(rfc3339),
            finished_at: job.finished_at.map(rfc3339),
            stage: job.stage.clone().filter(|_| job.status == JobStatus::Running),
            params: json(&job.params),
            metrics: json(&job.result),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct JobList {
    jobs: Vec<JobDto>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// 1 to 1000; 100 when left out.
    limit: Option<u32>,
    /// `batch` or `training`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    kind: Option<String>,
    /// pending, queued, running, completed, cancelled or failed.
    status: Option<String>,
}

/// Batch jobs, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "jobs",
    params(JobQuery),
    responses((status = 200, description = "done", body = JobList), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(query) = query.map_err(super::routes::query_error)?;
    let kind = match query.kind.as_deref() {
        None => None,
        Some(text) => Some(
            [JobKind::Batch, JobKind::Fit]
                .into_iter()
                .find(|kind| type_name(*kind) == text)
                .ok_or_else(|| ApiError::unprocessable(format!("type {text:?}: expected batch or training")))?,
        ),
    };
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(JobStatus::parse(text).ok_or_else(|| {
            ApiError::unprocessable(format!(
                "status {text:?}: expected pending, queued, running, completed, cancelled or failed"
            ))
        })?),
    };
    let jobs = state.jobs.list(query.limit.unwrap_or(100).clamp(1, 1000), kind, status).await?;
    Ok(Json(JobList { jobs: jobs.iter().map(JobDto::from).collect() }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJobBody {
    name: String,
    /// A folder under the batch input root (`[jobs] input_root`).
    input_dir: String,
    /// A glob relative to `input_dir`: `*.jpg`, `**/*.png`.
    file_pattern: String,
    /// The station whose model and records the images go to; `default` when left out.
    station_id: Option<String>,
}

/// Creates a pending job; `POST /jobs/{id}/start` runs it.
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    tag = "jobs",
    request_body = NewJobBody,
    responses((status = 201, description = "created", body = JobDto), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewJobBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(super::wrenches::json_error)?;
    let new = NewJob {
        name: body.name,
        input_dir: body.input_dir,
        file_pattern: body.file_pattern,
        station_id: body.station_id.unwrap_or_else(|| "default".to_owned()),
        created_by: caller.username.clone(),
    };
    let job = state.jobs.create(new).await?;
    let location = HeaderValue::from_str(&format!("/api/v1/jobs/{}", job.id)).expect("ascii");
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(JobDto::from(&job))).into_response())
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found("no job with that id"))
}

/// A job's status and progress.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path)),
    responses((status = 200, description = "done", body = JobDto), Guarded, NotFound),
    security(("bearer" = []))
)]
pub async fn get(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<JobDto>, ApiError> {
    Ok(Json(JobDto::from(&state.jobs.get(parse_id(&id)?).await?)))
}

/// Starts a pending job; it waits (`queued`) while another job runs.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/start",
    tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 202, description = "queued to run", body = JobDto),
        (status = 409, description = "the job is not pending", body = ErrorBody),
        Guarded, NotFound
    ),
    security(("bearer" = []))
)]
pub async fn start(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = state.jobs.start(parse_id(&id)?).await?;
    Ok((StatusCode::ACCEPTED, Json(JobDto::from(&job))).into_response())
}

/// Cancels a job that has not finished; a running one stops after its current file.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "cancelled (or cancelling)", body = JobDto),
        (status = 409, description = "the job has finished", body = ErrorBody),
        Guarded, NotFound
    ),
    security(("bearer" = []))
)]
pub async fn cancel(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<JobDto>, ApiError> {
    Ok(Json(JobDto::from(&state.jobs.cancel(parse_id(&id)?).await?)))
}

/// Largest request of `POST /anomaly/fits` (all its images).
pub const FIT_UPLOAD_LIMIT: usize = 1024 * 1024 * 1024;

/// Starts fitting a PatchCore anomaly model (engineer). Multipart fields: `name` (the
/// model's), `version` (default: `fit-<date>-<time>`), `coreset_ratio` (default 0.1), and
/// the images: either files in `normal` (at least 10; one in five calibrates the
/// threshold), `heldout_normal` and `heldout_anomalous` (for the image AUROC), or
/// `station_id` with `last_passed` (its newest passed images are the normal ones) and
/// `last_failed` (its newest failed ones, held out as anomalous). The fitted model is
/// registered, not activated.
#[utoipa::path(
    post,
    path = "/api/v1/anomaly/fits",
    tag = "jobs",
    request_body(content_type = "multipart/form-data", description = "name, version, coreset_ratio; files normal, heldout_normal, heldout_anomalous; or station_id, last_passed, last_failed"),
    responses(
        (status = 202, description = "the fit job, queued", body = JobDto),
        (status = 409, description = "the model version exists, or no backbone is configured", body = ErrorBody),
        (status = 413, description = "an image or the request is too large", body = ErrorBody),
        (status = 415, description = "a file is not an image", body = ErrorBody),
        Guarded, Invalid
    ),
    security(("bearer" = []))
)]
pub async fn fit(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Extension(client): Extension<super::auth::ClientAddr>,
    multipart: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut multipart = multipart.map_err(|_| {
        ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send multipart/form-data (name, and normal images)")
    })?;
    let id = Uuid::new_v4();
    let folder = state.jobs.fit_folder(id);
    let created = async {
        let params = receive_fit(&state, &mut multipart, &folder).await?.params()?;
        Ok::<_, ApiError>(state.jobs.create_fit(id, params, caller.username.clone()).await?)
    };
    let job = match created.await {
        Ok(job) => job,
        Err(err) => {
            // Refused: the images it brought go.
            let _ = tokio::fs::remove_dir_all(&folder).await;
            return Err(err);
        }
    };
    super::auth::audit(&state, &caller, client, "anomaly_fit_started", format!("job {}: {}", job.id, job.name)).await?;
    let location = HeaderValue::from_str(&format!("/api/v1/jobs/{}", job.id)).expect("ascii");
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(JobDto::from(&job))).into_response())
}

/// The fields of a fit request, its files already written under the job's folder.
#[derive(Default)]
struct FitForm {
    name: Option<String>,
    version: Option<String>,
    coreset_ratio: Option<String>,
    station_id: Option<String>,
    last_passed: Option<String>,
    last_failed: Option<String>,
    /// Files per set, in `FIT_SETS` order.
    files: [usize; 3],
}

impl FitForm {
    fn params(self) -> Result<FitParams, ApiError> {
        let number = |field: &str, text: Option<String>| -> Result<Option<f64>, ApiError> {
            text.map(|t| {
                t.trim().parse::<f64>().map_err(|_| ApiError::unprocessable(format!("{field} must be a number")))
            })
            .transpose()
        };
        let count = |field: &str, text: Option<String>| -> Result<Option<u32>, ApiError> {
            text.map(|t| {
                t.trim().parse::<u32>().map_err(|_| ApiError::unprocessable(format!("{field} must be a count")))
            })
            .transpose()
        };
        let name =
            self.name.filter(|n| !n.trim().is_empty()).ok_or_else(|| ApiError::unprocessable("name is required"))?;
        let source = match (self.station_id, self.files) {
            (Some(station_id), [0, 0, 0]) => FitSource::Station {
                station_id,
                last_passed: count("last_passed", self.last_passed)?
                    .ok_or_else(|| ApiError::unprocessable("last_passed is required with station_id"))?,
                last_failed: count("last_failed", self.last_failed)?.unwrap_or(0),
            },
            (Some(_), _) => return Err(ApiError::unprocessable("give images or station_id, not both")),
            (None, [normal, heldout_normal, heldout_anomalous]) => {
                if self.last_passed.is_some() || self.last_failed.is_some() {
                    return Err(ApiError::unprocessable("last_passed and last_failed need station_id"));
                }
                FitSource::Upload { normal, heldout_normal, heldout_anomalous }
            }
        };
        Ok(FitParams {
            model_name: name.trim().to_owned(),
            model_version: self
                .version
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| chrono::Utc::now().format("fit-%Y%m%d-%H%M%S").to_string()),
            coreset_ratio: number("coreset_ratio", self.coreset_ratio)?.unwrap_or(0.1),
            source,
        })
    }
}

/// Reads the form, writing each image to `<folder>/<set>/<n>.<ext>` as it arrives.
async fn receive_fit(
    state: &ApiState,
    multipart: &mut axum::extract::Multipart,
    folder: &std::path::Path,
) -> Result<FitForm, ApiError> {
    use tokio::io::AsyncWriteExt;
    let bad = |err: axum::extract::multipart::MultipartError| super::routes::multipart_error(err);
    let mut form = FitForm::default();
    while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_owned();
        if let Some(set) = FIT_SETS.iter().position(|s| *s == name) {
            let total: usize = form.files.iter().sum();
            if total >= crate::patchcore::MAX_IMAGES {
                return Err(ApiError::unprocessable(format!(
                    "a fit reads at most {} images",
                    crate::patchcore::MAX_IMAGES
                )));
            }
            let file_name = field.file_name().unwrap_or("?").to_owned();
            let mut bytes = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(bad)? {
                if bytes.len() + chunk.len() > state.max_upload_bytes {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("{name} file {file_name:?} is larger than {} MB", state.max_upload_bytes >> 20),
                    ));
                }
                bytes.extend_from_slice(&chunk);
            }
            let format = image::guess_format(&bytes).ok().and_then(crate::cycle::accepted_format).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("{name} file {file_name:?} is not a jpeg, png, bmp, tiff or webp image"),
                )
            })?;
            let dir = folder.join(name.as_str());
            tokio::fs::create_dir_all(&dir).await.map_err(|err| ApiError::internal(&err))?;
            let path = dir.join(format!("{:05}.{}", form.files[set], format.extension));
            let mut file = tokio::fs::File::create(&path).await.map_err(|err| ApiError::internal(&err))?;
            file.write_all(&bytes).await.map_err(|err| ApiError::internal(&err))?;
            form.files[set] += 1;
            continue;
        }
        let text = field.text().await.map_err(bad)?;
        if text.len() > 200 {
            return Err(ApiError::unprocessable(format!("{name} is longer than 200 bytes")));
        }
        let slot = match name.as_str() {
            "name" => &mut form.name,
            "version" => &mut form.version,
            "coreset_ratio" => &mut form.coreset_ratio,
            "station_id" => &mut form.station_id,
            "last_passed" => &mut form.last_passed,
            "last_failed" => &mut form.last_failed,
            other => {
                return Err(ApiError::unprocessable(format!(
                    "unknown form field {other:?}; expected name, version, coreset_ratio, normal, heldout_normal, \
                     heldout_anomalous, station_id, last_passed, last_failed"
                )));
            }
        };
        *slot = Some(text);
    }
    Ok(form)
}
