//! `GET /api/v1/alerts?severity=&acknowledged=&active=&limit=` and
//! `POST /api/v1/alerts/{id}/acknowledge`, in the inspection seed's shapes. An
//! acknowledgement is announced like a change, so dashboards and MQTT see who took it.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::auth::Caller;
use super::dto::AlertDto;
use super::error::ApiError;
#[allow(unused_imports, reason = "named by the OpenAPI attributes")]
use super::error::{ErrorBody, Guarded, Invalid, NotFound};
use crate::bus::Notification;
use crate::core::alerts::Severity;
use crate::storage::AlertFilter;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    severity: Option<String>,
    acknowledged: Option<bool>,
    active: Option<bool>,
    limit: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AlertList {
    alerts: Vec<AlertDto>,
}

/// Alerts, newest first, filtered by severity, acknowledgement and whether still active.
#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "alerts",
    params(AlertQuery),
    responses((status = 200, description = "done", body = AlertList), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<AlertQuery>, QueryRejection>,
) -> Result<Json<AlertList>, ApiError> {
    let Query(query) = query.map_err(super::routes::query_error)?;
    let severity = match query.severity.as_deref() {
        None => None,
        Some(text) => Some(Severity::parse(text).ok_or_else(|| {
            ApiError::unprocessable(format!("severity {text:?} is not one of info, warning, error, critical"))
        })?),
    };
    let filter = AlertFilter {
        severity,
        acknowledged: query.acknowledged,
        active: query.active,
        limit: query.limit.unwrap_or(100).clamp(1, 1000),
    };
    let alerts = state.inspector.storage.call(move |db| db.alerts(&filter)).await?;
    Ok(Json(AlertList { alerts: alerts.iter().map(AlertDto::from).collect() }))
}

/// Acknowledges an alert; the user is recorded and the change announced.
#[utoipa::path(
    post,
    path = "/api/v1/alerts/{id}/acknowledge",
    tag = "alerts",
    params(("id" = String, Path)),
    responses((status = 200, description = "done", body = AlertDto), Guarded, NotFound),
    security(("bearer" = []))
)]
pub async fn acknowledge(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<AlertDto>, ApiError> {
    let by = caller.username.clone();
    let alert = state.inspector.storage.call(move |db| db.acknowledge_alert(&id, &by, Utc::now())).await?;
    let alert = alert.ok_or_else(|| ApiError::not_found("no such alert"))?;
    tracing::info!(alert = alert.key, by = caller.username, "alert acknowledged");
    let dto = AlertDto::from(&alert);
    let _ = state.notifications.send(Notification::Alert(Arc::new(alert)));
    Ok(Json(dto))
}
