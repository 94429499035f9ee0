//! API errors: a status code and `{"detail": "..."}`, as every seed document does it.
//! Internal failures are logged with their cause and answered without internals.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::cycle::CycleError;
use crate::inference::InferenceError;
use crate::storage::StorageError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    pub detail: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> ApiError {
        ApiError { status, detail: detail.into() }
    }

    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, detail)
    }

    pub fn unprocessable(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, detail)
    }

    pub(super) fn internal(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(cause = %cause, "request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the station log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { detail: &self.detail })).into_response()
    }
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> ApiError {
        match err {
            StorageError::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage is shutting down"),
            other => ApiError::internal(&other),
        }
    }
}

impl From<CycleError> for ApiError {
    fn from(err: CycleError) -> ApiError {
        match err {
            CycleError::UnknownStation(_) => ApiError::unprocessable(err.to_string()),
            CycleError::NoCamera(_) | CycleError::NotDetection(_) => {
                ApiError::new(StatusCode::CONFLICT, err.to_string())
            }
            CycleError::Camera(ref camera) => {
                tracing::warn!(cause = %camera, "camera capture failed");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string())
            }
            CycleError::Inference(InferenceError::Undecodable(reason)) => {
                ApiError::unprocessable(format!("the image cannot be decoded: {}", reason.trim_end()))
            }
            CycleError::Inference(InferenceError::NotReady | InferenceError::Stopped) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string())
            }
            CycleError::Storage(storage) => storage.into(),
            CycleError::Inference(InferenceError::Model(_)) | CycleError::Encode(_) => ApiError::internal(&err),
        }
    }
}

/// What every route behind the guard may answer (401, 403, 429), for the OpenAPI
/// attributes: `responses((status = 200, ...), Guarded)`.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code, reason = "describes answers for the OpenAPI document; never built")]
pub enum Guarded {
    #[response(status = 401, description = "missing, invalid or expired token")]
    Unauthorized(ErrorBody<'static>),
    #[response(status = 403, description = "the caller's role is too low")]
    Forbidden(ErrorBody<'static>),
    #[response(status = 429, description = "rate limit exceeded (Retry-After)")]
    TooManyRequests(ErrorBody<'static>),
}

/// 404 for the OpenAPI attributes.
#[derive(utoipa::IntoResponses)]
#[response(status = 404, description = "not found")]
#[allow(dead_code, reason = "describes an answer for the OpenAPI document; never built")]
pub struct NotFound(ErrorBody<'static>);

/// 422 for the OpenAPI attributes.
#[derive(utoipa::IntoResponses)]
#[response(status = 422, description = "invalid input; the detail names it")]
#[allow(dead_code, reason = "describes an answer for the OpenAPI document; never built")]
pub struct Invalid(ErrorBody<'static>);

/// 503 for the OpenAPI attributes.
#[derive(utoipa::IntoResponses)]
#[response(status = 503, description = "a device or service is unavailable")]
#[allow(dead_code, reason = "describes an answer for the OpenAPI document; never built")]
pub struct Unavailable(ErrorBody<'static>);
