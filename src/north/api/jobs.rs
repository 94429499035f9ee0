//! Batch jobs over REST, in the inspection seed's shapes: `GET /api/v1/jobs`,
//! `POST /jobs` (`{name, input_dir, file_pattern}`, plus an optional `station_id`),
//! `GET /jobs/{id}` (status and progress), `POST /jobs/{id}/start` and
//! `POST /jobs/{id}/cancel`.

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
use crate::jobs::{JobError, NewJob};
use crate::storage::JobRecord;

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
}

impl From<&JobRecord> for JobDto {
    fn from(job: &JobRecord) -> JobDto {
        let p = &job.progress;
        JobDto {
            id: job.id.to_string(),
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
    let jobs = state.jobs.list(query.limit.unwrap_or(100).clamp(1, 1000)).await?;
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
