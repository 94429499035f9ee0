//! REST handlers for the station's GPIO lines, in the assembly seed's `{"status", "msg"}`
//! envelope: the lines in use with their levels, setting an output by hand (commissioning
//! a stack light or a reject gate), and, with the simulated chip only, driving an input
//! so that a person can run the demo station from a browser or curl.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::error::ApiError;
#[allow(unused_imports, reason = "named by the OpenAPI attributes")]
use super::error::{ErrorBody, Guarded, Invalid, NotFound};
use super::wrenches::{Envelope, json_error, ok};
use crate::core::outputs::OutputCommand;
use crate::south::gpio::{Direction, GpioError, GpioHandle, LineStatus};

impl From<GpioError> for ApiError {
    fn from(err: GpioError) -> ApiError {
        let status = match &err {
            GpioError::Unknown(_) => StatusCode::NOT_FOUND,
            GpioError::NotAnOutput(_) | GpioError::NotAnInput(_) => StatusCode::UNPROCESSABLE_ENTITY,
            GpioError::Busy { .. }
            | GpioError::NotFound { .. }
            | GpioError::Io { .. }
            | GpioError::Unavailable(_)
            | GpioError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, err.to_string())
    }
}

fn gpio(state: &ApiState) -> Result<&GpioHandle, ApiError> {
    state.gpio.as_ref().ok_or_else(|| ApiError::not_found("this station has no GPIO lines configured ([gpio])"))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LineDto {
    name: String,
    direction: &'static str,
    /// `"/dev/gpiochip0:17"` or the line's name.
    line: String,
    active_low: bool,
    /// The logical level; `null` when it cannot be read (see `error`).
    active: Option<bool>,
    error: Option<String>,
    /// For a trigger input: the station it inspects.
    trigger: Option<String>,
    pulse_ms: Option<u64>,
}

impl From<LineStatus> for LineDto {
    fn from(line: LineStatus) -> LineDto {
        let (active, error) = match line.active {
            Ok(active) => (Some(active), None),
            Err(error) => (None, Some(error)),
        };
        LineDto {
            name: line.name,
            direction: match line.direction {
                Direction::Input => "input",
                Direction::Output => "output",
            },
            line: line.line,
            active_low: line.active_low,
            active,
            error,
            trigger: line.trigger,
            pulse_ms: line.pulse.map(|p| p.as_millis() as u64),
        }
    }
}

/// GET /api/v1/system/gpio
#[utoipa::path(
    get,
    path = "/api/v1/system/gpio",
    tag = "gpio",
    responses((status = 200, description = "done", body = Envelope<Vec<LineDto>>), Guarded),
    security(("bearer" = []))
)]
pub async fn lines(State(state): State<ApiState>) -> Result<Json<Envelope<Vec<LineDto>>>, ApiError> {
    let lines = gpio(&state)?.status().await?;
    Ok(ok(lines.into_iter().map(LineDto::from).collect()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetOutput {
    /// The logical level to drive.
    active: Option<bool>,
    /// `true` pulses a pulse output for its configured length.
    #[serde(default)]
    pulse: bool,
}

/// POST /api/v1/system/gpio/{name}/set {"active": true} | {"pulse": true}
#[utoipa::path(
    post,
    path = "/api/v1/system/gpio/{name}/set",
    tag = "gpio",
    params(("name" = String, Path)),
    request_body = SetOutput,
    responses((status = 200, description = "done", body = Envelope<String>), (status = 409, description = "conflicts with the current state", body = ErrorBody), Guarded, NotFound, Invalid),
    security(("bearer" = []))
)]
pub async fn set_output(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Json<SetOutput>, JsonRejection>,
) -> Result<Json<Envelope<&'static str>>, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let command = match (body.active, body.pulse) {
        (Some(active), false) => OutputCommand::Set { output: name, active },
        (None, true) => OutputCommand::Pulse { output: name },
        _ => return Err(ApiError::unprocessable("give exactly one of \"active\" (true or false) or \"pulse\": true")),
    };
    gpio(&state)?.apply(vec![command]).await?;
    Ok(ok(""))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Inject {
    /// "active", "inactive", or "pulse" (active, held past the debounce, then inactive).
    level: String,
    /// How long a pulse is held beyond the input's debounce (default 50, at most 10000).
    hold_ms: Option<u64>,
}

/// POST /api/v1/system/gpio/{name}/inject {"level": "pulse"}: sim backend only.
#[utoipa::path(
    post,
    path = "/api/v1/system/gpio/{name}/inject",
    tag = "gpio",
    params(("name" = String, Path)),
    request_body = Inject,
    responses((status = 200, description = "done", body = Envelope<String>), (status = 409, description = "conflicts with the current state", body = ErrorBody), Guarded, NotFound, Invalid),
    security(("bearer" = []))
)]
pub async fn inject(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Json<Inject>, JsonRejection>,
) -> Result<(StatusCode, Json<Envelope<&'static str>>), ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let gpio = gpio(&state)?;
    let sim = state.gpio_sim.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "inputs can be injected only with the simulated chip ([gpio] backend = \"sim\")",
        )
    })?;
    // The simulated chip refuses an unknown line or an output, before any wait.
    let debounce = gpio.config().inputs.get(&name).map(|input| input.debounce).unwrap_or_default();
    match body.level.as_str() {
        "active" => {
            sim.drive(&name, true)?;
        }
        "inactive" => {
            sim.drive(&name, false)?;
        }
        "pulse" => {
            let hold = Duration::from_millis(body.hold_ms.unwrap_or(50).min(10_000));
            sim.drive(&name, true)?;
            tokio::time::sleep(debounce + hold).await;
            sim.drive(&name, false)?;
        }
        other => {
            return Err(ApiError::unprocessable(format!(
                "level {other:?} is not one of \"active\", \"inactive\", \"pulse\""
            )));
        }
    }
    Ok((StatusCode::OK, ok("")))
}
