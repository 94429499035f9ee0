//! Camera drift reports in the reconstruction-gateway seed's shape (`drift_detected`,
//! `severity` low|medium|high, `checks{}`, `recommendation`), one per camera:
//! `GET /api/v1/drift`, `GET /api/v1/drift/{camera}` and
//! `POST /api/v1/drift/{camera}/reference` to learn a new reference after a deliberate
//! change (audited).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::Serialize;

use super::ApiState;
use super::auth::{Caller, ClientAddr};
use super::dto::rfc3339;
use super::error::ApiError;
#[allow(unused_imports, reason = "named by the OpenAPI attributes")]
use super::error::{ErrorBody, Guarded, NotFound, Unavailable};
use crate::core::drift::DriftReport;

/// One statistic compared with its reference.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CheckDto {
    reference_mean: f64,
    reference_std: f64,
    current_mean: f64,
    /// |current - reference| in reference spreads (each spread has a floor).
    shift_sigma: f64,
    drifted: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DriftReportDto {
    camera_id: String,
    /// `learning` (collecting the reference), `collecting` (the current window is not
    /// full yet) or `monitoring`.
    state: &'static str,
    drift_detected: bool,
    /// low (no drift), medium or high.
    severity: &'static str,
    /// By statistic: brightness, contrast, sharpness, red, green, blue.
    checks: BTreeMap<&'static str, CheckDto>,
    recommendation: String,
    reference_frames: usize,
    reference_frames_needed: usize,
    reference_set_at: Option<String>,
    window_frames: usize,
    window_frames_needed: usize,
    last_frame_at: Option<String>,
}

impl DriftReportDto {
    fn new(camera_id: &str, report: &DriftReport) -> DriftReportDto {
        let state = if report.reference_set_at.is_none() {
            "learning"
        } else if report.checks.is_empty() {
            "collecting"
        } else {
            "monitoring"
        };
        DriftReportDto {
            camera_id: camera_id.to_owned(),
            state,
            drift_detected: report.drift_detected,
            severity: report.severity.as_str(),
            checks: report
                .checks
                .iter()
                .map(|c| {
                    let dto = CheckDto {
                        reference_mean: c.reference_mean,
                        reference_std: c.reference_std,
                        current_mean: c.current_mean,
                        shift_sigma: c.shift_sigma,
                        drifted: c.drifted,
                    };
                    (c.feature, dto)
                })
                .collect(),
            recommendation: report.recommendation.clone(),
            reference_frames: report.reference_frames.0,
            reference_frames_needed: report.reference_frames.1,
            reference_set_at: report.reference_set_at.map(rfc3339),
            window_frames: report.window_frames.0,
            window_frames_needed: report.window_frames.1,
            last_frame_at: report.last_frame_at.map(rfc3339),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DriftList {
    cameras: Vec<DriftReportDto>,
}

fn drift(state: &ApiState) -> Result<&crate::drift::Drift, ApiError> {
    state.drift.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "drift monitoring is off ([drift] enabled = false)")
    })
}

/// Every camera's drift report.
#[utoipa::path(
    get,
    path = "/api/v1/drift",
    tag = "models",
    responses((status = 200, description = "done", body = DriftList), Guarded, Unavailable),
    security(("bearer" = []))
)]
pub async fn list(State(state): State<ApiState>) -> Result<Json<DriftList>, ApiError> {
    let reports = drift(&state)?.reports();
    Ok(Json(DriftList { cameras: reports.iter().map(|(id, r)| DriftReportDto::new(id, r)).collect() }))
}

#[utoipa::path(
    get,
    path = "/api/v1/drift/{camera}",
    tag = "models",
    params(("camera" = String, Path)),
    responses((status = 200, description = "done", body = DriftReportDto), Guarded, NotFound, Unavailable),
    security(("bearer" = []))
)]
pub async fn get(State(state): State<ApiState>, Path(camera): Path<String>) -> Result<Json<DriftReportDto>, ApiError> {
    report(drift(&state)?, &camera)
}

fn report(service: &crate::drift::Drift, camera: &str) -> Result<Json<DriftReportDto>, ApiError> {
    let reports = service.reports();
    let report = reports.get(camera).ok_or_else(|| ApiError::not_found(format!("no camera {camera:?}")))?;
    Ok(Json(DriftReportDto::new(camera, report)))
}

/// Forgets the camera's reference: its next frames learn a new one. For a deliberate
/// change (new lighting, a cleaned lens, a new part variant), after which the old
/// reference would report drift for good.
#[utoipa::path(
    post,
    path = "/api/v1/drift/{camera}/reference",
    tag = "models",
    params(("camera" = String, Path)),
    responses((status = 200, description = "learning a new reference", body = DriftReportDto), Guarded, NotFound, Unavailable),
    security(("bearer" = []))
)]
pub async fn reset_reference(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Extension(client): Extension<ClientAddr>,
    Path(camera): Path<String>,
) -> Result<Json<DriftReportDto>, ApiError> {
    let service = drift(&state)?;
    if !service.reset(&camera).await? {
        return Err(ApiError::not_found(format!("no camera {camera:?}")));
    }
    super::auth::audit(&state, &caller, client, "drift_reference_reset", format!("camera {camera}")).await?;
    report(service, &camera)
}
