//! REST handlers for smart wrenches, release control and tightening results, with the
//! assembly seed's shapes: requests as its "Smart Wrench" and "Settings" sections give
//! them, answers as `{"status": ..., "msg": ...}`. Errors keep the API-wide
//! `{"detail": ...}` with a status code that says what went wrong.
//!
//! The seed addresses one wrench per station; stationd can have several, so every call
//! takes an optional `address` (host, host:port or the configured id) and falls back to
//! the only wrench when there is one.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::dto::{TighteningDto, TighteningList, hundredths, rfc3339};
use super::error::ApiError;
#[allow(unused_imports, reason = "named by the OpenAPI attributes")]
use super::error::{ErrorBody, Guarded, Invalid, NotFound, Unavailable};
use super::routes::query_error;
use crate::south::wrench::{Command, LinkState, WrenchError, WrenchSettings, WrenchStatus, Wrenches};
use crate::storage::TighteningFilter;

/// The seed's envelope.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Envelope<T: Serialize> {
    status: &'static str,
    msg: T,
}

impl<T: Serialize> Envelope<T> {
    pub(super) fn new(status: &'static str, msg: T) -> Envelope<T> {
        Envelope { status, msg }
    }
}

pub(super) fn ok<T: Serialize>(msg: T) -> Json<Envelope<T>> {
    Json(Envelope::new("ok", msg))
}

impl From<WrenchError> for ApiError {
    fn from(err: WrenchError) -> ApiError {
        let status = match &err {
            WrenchError::Disconnected | WrenchError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            WrenchError::Nak { .. } | WrenchError::Refused(_) | WrenchError::Duplicate(_) => StatusCode::CONFLICT,
            WrenchError::Unknown(_) => StatusCode::NOT_FOUND,
        };
        ApiError::new(status, err.to_string())
    }
}

pub(super) fn json_error(err: JsonRejection) -> ApiError {
    ApiError::new(
        if err.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            err.status()
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        },
        format!("bad request body: {}", err.body_text()),
    )
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ControllerDto {
    name: Option<String>,
    serial_number: Option<String>,
    supplier_code: Option<String>,
    software_version: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LastTighteningDto {
    tightening_id: u64,
    status: &'static str,
    torque: f64,
    torque_unit: String,
    angle: i64,
    program_nr: Option<u32>,
    batch_counter: Option<u32>,
    received_at: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WrenchDto {
    id: String,
    address: String,
    port: u16,
    station_id: Option<String>,
    connection_type: &'static str,
    manufacturer: Option<String>,
    model: Option<String>,
    configured: bool,
    link_state: &'static str,
    link_error: Option<String>,
    link_level_acks: bool,
    controller: ControllerDto,
    tool_enabled: Option<bool>,
    locked: bool,
    release_control_enabled: bool,
    released_tightenings: Option<u32>,
    batch_locked: Option<bool>,
    program_nr: Option<u32>,
    batch_counter: Option<u32>,
    vin: Option<String>,
    alarm: Option<String>,
    last_error: Option<String>,
    last_tightening: Option<LastTighteningDto>,
    results_stored: u64,
    reconnects: u64,
}

impl WrenchDto {
    fn new(s: WrenchStatus, release_control: bool) -> WrenchDto {
        WrenchDto {
            id: s.settings.id,
            address: s.settings.address,
            port: s.settings.port,
            station_id: s.settings.station_id,
            connection_type: "open-protocol",
            manufacturer: s.settings.manufacturer,
            model: s.settings.model,
            configured: s.settings.configured,
            link_state: s.link.as_str(),
            link_error: match s.link {
                LinkState::Down { reason } => Some(reason),
                _ => None,
            },
            link_level_acks: s.link_level_acks,
            controller: ControllerDto {
                name: s.controller_name,
                serial_number: s.controller_serial,
                supplier_code: s.supplier_code,
                software_version: s.controller_software,
            },
            tool_enabled: s.tool_enabled,
            locked: s.locked,
            release_control_enabled: release_control,
            released_tightenings: s.released,
            batch_locked: s.batch_locked,
            program_nr: s.pset,
            batch_counter: s.last.as_ref().and_then(|t| t.batch_counter),
            vin: s.vin,
            alarm: s.alarm,
            last_error: s.last_error,
            last_tightening: s.last.map(|t| LastTighteningDto {
                tightening_id: t.tightening_id,
                status: if t.ok { "ok" } else { "nok" },
                torque: hundredths(t.torque),
                torque_unit: t.torque_unit,
                angle: t.angle,
                program_nr: t.pset,
                batch_counter: t.batch_counter,
                received_at: rfc3339(t.received_at),
            }),
            results_stored: s.results_stored,
            reconnects: s.reconnects,
        }
    }
}

fn dto(wrenches: &Wrenches, id: &str) -> Result<WrenchDto, ApiError> {
    let status = wrenches.status(id).ok_or_else(|| ApiError::not_found(format!("no wrench {id:?}")))?;
    Ok(WrenchDto::new(status, wrenches.release_control()))
}

fn all(wrenches: &Wrenches) -> Vec<WrenchDto> {
    let release_control = wrenches.release_control();
    wrenches.statuses().into_iter().map(|s| WrenchDto::new(s, release_control)).collect()
}

/// The wrench a request means: by id or address, or the only one there is.
fn pick(wrenches: &Wrenches, address: Option<&str>) -> Result<String, ApiError> {
    match address {
        Some(key) => wrenches.find(key).ok_or_else(|| ApiError::not_found(format!("no wrench at {key:?}"))),
        None => {
            let ids = wrenches.ids();
            match ids.as_slice() {
                [only] => Ok(only.clone()),
                [] => Err(ApiError::not_found("no wrench is connected")),
                many => Err(ApiError::unprocessable(format!(
                    "several wrenches are connected ({}); say which with \"address\"",
                    many.join(", ")
                ))),
            }
        }
    }
}

/// Configured and connected wrenches with their link and tool state.
#[utoipa::path(
    get,
    path = "/api/v1/wrenches",
    tag = "wrenches",
    responses((status = 200, description = "done", body = Envelope<Vec<WrenchDto>>), Guarded),
    security(("bearer" = []))
)]
pub async fn list(State(state): State<ApiState>) -> Json<Envelope<Vec<WrenchDto>>> {
    ok(all(&state.wrenches))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectRequest {
    address: String,
    port: Option<u16>,
    timeout_ms: Option<u64>,
    connection_type: Option<String>,
    manufacturer: Option<String>,
    model: Option<String>,
    #[serde(default)]
    connection_parameters: ConnectionParameters,
}

/// What `connection_parameters` may carry; anything else is refused by name.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionParameters {
    id: Option<String>,
    station_id: Option<String>,
    result_revision: Option<u16>,
    link_level_acks: Option<bool>,
}

/// Longest wait for a new link to come up before answering 202.
const MAX_CONNECT_WAIT: Duration = Duration::from_secs(30);

/// Connects a wrench controller (Open Protocol) at run time.
#[utoipa::path(
    post,
    path = "/api/v1/wrenches/connect",
    tag = "wrenches",
    request_body = ConnectRequest,
    responses((status = 200, description = "connected", body = Envelope<WrenchDto>), (status = 202, description = "connecting", body = Envelope<WrenchDto>), (status = 409, description = "conflicts with the current state", body = ErrorBody), Guarded, Invalid, Unavailable),
    security(("bearer" = []))
)]
pub async fn connect(
    State(state): State<ApiState>,
    body: Result<Json<ConnectRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(json_error)?;
    if let Some(kind) = request.connection_type.as_deref()
        && !kind.eq_ignore_ascii_case("open-protocol")
        && !kind.eq_ignore_ascii_case("tcp")
    {
        return Err(ApiError::unprocessable(format!(
            "connection_type {kind:?} is not supported; stationd speaks \"open-protocol\" over TCP"
        )));
    }
    let address = request.address.trim().to_owned();
    if address.is_empty() || address.len() > 253 || address.contains(char::is_whitespace) {
        return Err(ApiError::unprocessable("address must be a host name or an IP address"));
    }
    let port = request.port.unwrap_or(4545);
    if port == 0 {
        return Err(ApiError::unprocessable("port must not be 0"));
    }
    let params = request.connection_parameters;
    if let Some(rev) = params.result_revision
        && !((1..=7).contains(&rev) || rev == 999)
    {
        return Err(ApiError::unprocessable("connection_parameters.result_revision must be 1 to 7, or 999"));
    }
    let mut settings = match state.wrenches.configured_at(&address, port) {
        // A configured wrench that was disconnected: same id (its results' key), same settings.
        Some(configured) => configured,
        None => {
            let id = params.id.unwrap_or_else(|| {
                format!("{address}-{port}")
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
                    .collect()
            });
            let mut settings = WrenchSettings::new(id, address, port);
            settings.station_id = params.station_id;
            settings.manufacturer = request.manufacturer;
            settings.model = request.model;
            settings
        }
    };
    let id = settings.id.clone();
    if let Some(ms) = request.timeout_ms {
        settings.connect_timeout = Duration::from_millis(ms.clamp(100, 60_000));
    }
    if let Some(rev) = params.result_revision {
        settings.session.result_revision = rev;
    }
    if let Some(link_level) = params.link_level_acks {
        settings.session.link_level = link_level;
    }
    let wait = settings.connect_timeout.min(MAX_CONNECT_WAIT) + Duration::from_secs(1);
    let mut watch = {
        state.wrenches.connect(settings)?;
        state.wrenches.watch(&id).ok_or_else(|| ApiError::from(WrenchError::Stopped))?
    };
    let _ =
        tokio::time::timeout(wait, watch.wait_for(|s| matches!(s.link, LinkState::Up | LinkState::Down { .. }))).await;
    let dto = dto(&state.wrenches, &id)?;
    if dto.link_state == "connected" {
        Ok((StatusCode::OK, ok(dto)).into_response())
    } else {
        // The link keeps trying in the background; the answer says how it stands.
        Ok((StatusCode::ACCEPTED, Json(Envelope { status: "connecting", msg: dto })).into_response())
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressBody {
    address: Option<String>,
}

/// Disconnects a wrench controller.
#[utoipa::path(
    post,
    path = "/api/v1/wrenches/disconnect",
    tag = "wrenches",
    request_body = AddressBody,
    responses((status = 200, description = "done", body = Envelope<WrenchDto>), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn disconnect(
    State(state): State<ApiState>,
    body: Result<Json<AddressBody>, JsonRejection>,
) -> Result<Json<Envelope<WrenchDto>>, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let address = body.address.ok_or_else(|| ApiError::unprocessable("address is required"))?;
    let id = pick(&state.wrenches, Some(&address))?;
    let mut last = dto(&state.wrenches, &id)?;
    state.wrenches.disconnect(&id)?;
    last.link_state = "disconnected";
    Ok(ok(last))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AddressQuery {
    address: Option<String>,
}

/// One wrench's link state by address.
#[utoipa::path(
    get,
    path = "/api/v1/wrenches/status",
    tag = "wrenches",
    params(AddressQuery),
    responses((status = 200, description = "done", body = Envelope<WrenchDto>), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn status(
    State(state): State<ApiState>,
    query: Result<Query<AddressQuery>, QueryRejection>,
) -> Result<Json<Envelope<WrenchDto>>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let id = pick(&state.wrenches, query.address.as_deref())?;
    Ok(ok(dto(&state.wrenches, &id)?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DiscoverQuery {
    /// `192.168.10.20-192.168.10.40` (IPv4, same /24 not required, at most 256 addresses).
    range: Option<String>,
    port: Option<u16>,
    timeout_ms: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DiscoveredDto {
    address: String,
    port: u16,
    /// The TCP port accepts connections. stationd does not send MID 0001 to it: single-
    /// client controllers would refuse their real client for a while afterwards.
    reachable: bool,
    /// Already one of ours.
    wrench_id: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DiscoverDto {
    configured: Vec<WrenchDto>,
    found: Vec<DiscoveredDto>,
    probed: usize,
}

/// Most addresses one discover call probes.
const MAX_PROBES: u32 = 256;
/// Probes in flight at once.
const PROBE_CONCURRENCY: usize = 32;

/// Configured wrenches plus a bounded probe of an address range on port 4545.
#[utoipa::path(
    get,
    path = "/api/v1/wrenches/discover",
    tag = "wrenches",
    params(DiscoverQuery),
    responses((status = 200, description = "done", body = Envelope<DiscoverDto>), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn discover(
    State(state): State<ApiState>,
    query: Result<Query<DiscoverQuery>, QueryRejection>,
) -> Result<Json<Envelope<DiscoverDto>>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let configured = all(&state.wrenches);
    let port = query.port.unwrap_or(4545);
    let timeout = Duration::from_millis(query.timeout_ms.unwrap_or(300).clamp(50, 5000));
    let addresses = match &query.range {
        Some(range) => parse_range(range)?,
        None => Vec::new(),
    };
    let probed = addresses.len();
    let found: Vec<DiscoveredDto> = futures_util::stream::iter(addresses)
        .map(|ip| async move {
            let addr = SocketAddr::from((ip, port));
            let reachable =
                matches!(tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)));
            (ip, reachable)
        })
        .buffer_unordered(PROBE_CONCURRENCY)
        .filter(|(_, reachable)| std::future::ready(*reachable))
        .map(|(ip, reachable)| DiscoveredDto {
            address: ip.to_string(),
            port,
            reachable,
            wrench_id: state.wrenches.find(&format!("{ip}:{port}")),
        })
        .collect()
        .await;
    Ok(ok(DiscoverDto { configured, found, probed }))
}

fn parse_range(range: &str) -> Result<Vec<std::net::Ipv4Addr>, ApiError> {
    let bad = || ApiError::unprocessable(format!("range {range:?} is not FIRST-LAST of IPv4 addresses"));
    let (first, last) = range.split_once('-').ok_or_else(bad)?;
    let first: std::net::Ipv4Addr = first.trim().parse().map_err(|_| bad())?;
    let last: std::net::Ipv4Addr = last.trim().parse().map_err(|_| bad())?;
    let (first, last) = (u32::from(first), u32::from(last));
    if last < first {
        return Err(bad());
    }
    if last - first >= MAX_PROBES {
        return Err(ApiError::unprocessable(format!("range covers more than {MAX_PROBES} addresses")));
    }
    Ok((first..=last).map(std::net::Ipv4Addr::from).collect())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToggleRequest {
    action: String,
    program_nr: Option<u32>,
    address: Option<String>,
}

/// Enables, disables, locks or unlocks the tool, optionally selecting a program.
#[utoipa::path(
    post,
    path = "/api/v1/wrenches/toggle",
    tag = "wrenches",
    request_body = ToggleRequest,
    responses((status = 200, description = "done", body = Envelope<WrenchDto>), (status = 409, description = "conflicts with the current state", body = ErrorBody), Guarded, Invalid, Unavailable),
    security(("bearer" = []))
)]
pub async fn toggle(
    State(state): State<ApiState>,
    body: Result<Json<ToggleRequest>, JsonRejection>,
) -> Result<Json<Envelope<WrenchDto>>, ApiError> {
    let Json(request) = body.map_err(json_error)?;
    let id = pick(&state.wrenches, request.address.as_deref())?;
    let pset = request.program_nr.map(check_program).transpose()?;
    let wrenches = &state.wrenches;
    match request.action.as_str() {
        "enable" => {
            if let Some(pset) = pset {
                wrenches.command(&id, Command::SelectPset(pset)).await?;
            }
            wrenches.command(&id, Command::EnableTool).await?;
        }
        "disable" => wrenches.command(&id, Command::DisableTool).await?,
        "lock" => wrenches.lock(&id, true).await?,
        "unlock" => wrenches.lock(&id, false).await?,
        other => {
            return Err(ApiError::unprocessable(format!(
                "action must be one of \"enable\", \"disable\", \"lock\", \"unlock\", not {other:?}"
            )));
        }
    }
    tracing::info!(wrench = id, action = request.action, "wrench toggled");
    Ok(ok(dto(wrenches, &id)?))
}

fn check_program(pset: u32) -> Result<u32, ApiError> {
    if (1..=999).contains(&pset) { Ok(pset) } else { Err(ApiError::unprocessable("program_nr must be 1 to 999")) }
}

/// One wrench's full state: tool, Pset, batch counter, VIN, alarm, last result.
#[utoipa::path(
    get,
    path = "/api/v1/wrenches/state",
    tag = "wrenches",
    params(AddressQuery),
    responses((status = 200, description = "done", body = Envelope<WrenchDto>), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn state(
    State(state): State<ApiState>,
    query: Result<Query<AddressQuery>, QueryRejection>,
) -> Result<Json<Envelope<WrenchDto>>, ApiError> {
    status(State(state), query).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgramRequest {
    program_nr: u32,
    program: ProgramSettings,
    address: Option<String>,
}

/// What Open Protocol lets a client set of a Pset; the rest is programmed on the
/// controller itself.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgramSettings {
    batch_size: Option<u32>,
    /// Also make it the selected Pset (MID 0018).
    #[serde(default)]
    select: bool,
}

/// Selects a Pset (program) on the controller.
#[utoipa::path(
    post,
    path = "/api/v1/wrenches/program",
    tag = "wrenches",
    request_body = ProgramRequest,
    responses((status = 200, description = "done", body = Envelope<WrenchDto>), (status = 409, description = "conflicts with the current state", body = ErrorBody), Guarded, Invalid, Unavailable),
    security(("bearer" = []))
)]
pub async fn program(
    State(state): State<ApiState>,
    body: Result<Json<ProgramRequest>, JsonRejection>,
) -> Result<Json<Envelope<WrenchDto>>, ApiError> {
    let Json(request) = body.map_err(json_error)?;
    let id = pick(&state.wrenches, request.address.as_deref())?;
    let pset = check_program(request.program_nr)?;
    if request.program.batch_size.is_none() && !request.program.select {
        return Err(ApiError::unprocessable("program needs batch_size and/or select"));
    }
    if let Some(size) = request.program.batch_size {
        if !(1..=9999).contains(&size) {
            return Err(ApiError::unprocessable("program.batch_size must be 1 to 9999"));
        }
        state.wrenches.command(&id, Command::SetBatchSize { pset, size }).await?;
    }
    if request.program.select {
        state.wrenches.command(&id, Command::SelectPset(pset)).await?;
    }
    Ok(ok(dto(&state.wrenches, &id)?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SequenceRequest {
    program_nr: u32,
    /// Number of tightenings in the sequence: the Pset's batch size.
    sequence_number: u32,
    address: Option<String>,
}

/// Sets the batch size for a program.
#[utoipa::path(
    post,
    path = "/api/v1/wrenches/sequence",
    tag = "wrenches",
    request_body = SequenceRequest,
    responses((status = 200, description = "done", body = Envelope<WrenchDto>), (status = 409, description = "conflicts with the current state", body = ErrorBody), Guarded, Invalid, Unavailable),
    security(("bearer" = []))
)]
pub async fn sequence(
    State(state): State<ApiState>,
    body: Result<Json<SequenceRequest>, JsonRejection>,
) -> Result<Json<Envelope<WrenchDto>>, ApiError> {
    let Json(request) = body.map_err(json_error)?;
    let id = pick(&state.wrenches, request.address.as_deref())?;
    let pset = check_program(request.program_nr)?;
    if !(1..=9999).contains(&request.sequence_number) {
        return Err(ApiError::unprocessable("sequence_number must be 1 to 9999"));
    }
    state.wrenches.command(&id, Command::SelectPset(pset)).await?;
    state.wrenches.command(&id, Command::SetBatchSize { pset, size: request.sequence_number }).await?;
    Ok(ok(dto(&state.wrenches, &id)?))
}

/// `POST /clear` and `/cancel` accept an empty body too.
fn optional_address(body: Result<Json<AddressBody>, JsonRejection>) -> Result<Option<String>, ApiError> {
    match body {
        Ok(Json(body)) => Ok(body.address),
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(None),
        Err(err) => Err(json_error(err)),
    }
}

/// Resets the batch counter.
#[utoipa::path(
    post,
    path = "/api/v1/wrenches/clear",
    tag = "wrenches",
    request_body = AddressBody,
    responses((status = 200, description = "done", body = Envelope<WrenchDto>), Guarded, Invalid, Unavailable),
    security(("bearer" = []))
)]
pub async fn clear(
    State(state): State<ApiState>,
    body: Result<Json<AddressBody>, JsonRejection>,
) -> Result<Json<Envelope<WrenchDto>>, ApiError> {
    let id = pick(&state.wrenches, optional_address(body)?.as_deref())?;
    state.wrenches.clear(&id).await?;
    if let Some(pset) = state.wrenches.status(&id).and_then(|s| s.pset) {
        state.wrenches.command(&id, Command::ResetBatch(pset)).await?;
    }
    Ok(ok(dto(&state.wrenches, &id)?))
}

/// Aborts the running job on the controller.
#[utoipa::path(
    post,
    path = "/api/v1/wrenches/cancel",
    tag = "wrenches",
    request_body = AddressBody,
    responses((status = 200, description = "done", body = Envelope<String>), Guarded, Invalid, Unavailable),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(state): State<ApiState>,
    body: Result<Json<AddressBody>, JsonRejection>,
) -> Result<Json<Envelope<&'static str>>, ApiError> {
    let id = pick(&state.wrenches, optional_address(body)?.as_deref())?;
    state.wrenches.command(&id, Command::AbortJob).await?;
    Ok(ok(""))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VinRequest {
    vin: String,
    address: Option<String>,
}

/// Sends a VIN or identifier to the controller.
#[utoipa::path(
    post,
    path = "/api/v1/wrenches/vin",
    tag = "wrenches",
    request_body = VinRequest,
    responses((status = 200, description = "done", body = Envelope<WrenchDto>), Guarded, Invalid, Unavailable),
    security(("bearer" = []))
)]
pub async fn vin(
    State(state): State<ApiState>,
    body: Result<Json<VinRequest>, JsonRejection>,
) -> Result<Json<Envelope<WrenchDto>>, ApiError> {
    let Json(request) = body.map_err(json_error)?;
    let vin = request.vin.trim();
    if vin.is_empty() || vin.len() > 25 || !vin.chars().all(|c| (' '..='~').contains(&c)) {
        return Err(ApiError::unprocessable("vin must be 1 to 25 printable ASCII characters"));
    }
    let id = pick(&state.wrenches, request.address.as_deref())?;
    state.wrenches.command(&id, Command::Vin(vin.to_owned())).await?;
    Ok(ok(dto(&state.wrenches, &id)?))
}

/// Sets the controller's clock (MID 0082) to the station PC's local time: Open Protocol
/// timestamps are the controller's local wall clock.
#[utoipa::path(
    post,
    path = "/api/v1/wrenches/time",
    tag = "wrenches",
    request_body = AddressBody,
    responses((status = 200, description = "done", body = Envelope<String>), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn set_time(
    State(state): State<ApiState>,
    body: Result<Json<AddressBody>, JsonRejection>,
) -> Result<Json<Envelope<String>>, ApiError> {
    let id = pick(&state.wrenches, optional_address(body)?.as_deref())?;
    let time = crate::south::wrench::local_time_now();
    state.wrenches.command(&id, Command::SetTime(time.clone())).await?;
    Ok(ok(time))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// OK tightenings to release the tool for.
    count: u32,
    program_nr: Option<u32>,
    address: Option<String>,
}

/// Releases the tool for a number of OK tightenings (release control).
#[utoipa::path(
    post,
    path = "/api/v1/wrenches/release",
    tag = "wrenches",
    request_body = ReleaseRequest,
    responses((status = 200, description = "done", body = Envelope<WrenchDto>), (status = 409, description = "conflicts with the current state", body = ErrorBody), Guarded, Invalid, Unavailable),
    security(("bearer" = []))
)]
pub async fn release(
    State(state): State<ApiState>,
    body: Result<Json<ReleaseRequest>, JsonRejection>,
) -> Result<Json<Envelope<WrenchDto>>, ApiError> {
    let Json(request) = body.map_err(json_error)?;
    if !(1..=9999).contains(&request.count) {
        return Err(ApiError::unprocessable("count must be 1 to 9999"));
    }
    let pset = request.program_nr.map(check_program).transpose()?;
    let id = pick(&state.wrenches, request.address.as_deref())?;
    state.wrenches.release(&id, pset, request.count).await?;
    Ok(ok(dto(&state.wrenches, &id)?))
}

#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseControl {
    release_control_enabled: bool,
}

/// Turns release control on or off; stored across restarts.
#[utoipa::path(
    post,
    path = "/api/v1/settings/release-control",
    tag = "wrenches",
    request_body = ReleaseControl,
    responses((status = 200, description = "done", body = Envelope<String>), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn set_release_control(
    State(state): State<ApiState>,
    body: Result<Json<ReleaseControl>, JsonRejection>,
) -> Result<Json<Envelope<&'static str>>, ApiError> {
    let Json(request) = body.map_err(json_error)?;
    state.wrenches.set_release_control(request.release_control_enabled).await?;
    tracing::info!(enabled = request.release_control_enabled, "release control switched");
    Ok(ok(""))
}

/// Whether release control is on.
#[utoipa::path(
    get,
    path = "/api/v1/settings/release-control",
    tag = "wrenches",
    responses((status = 200, description = "done", body = Envelope<ReleaseControl>), Guarded),
    security(("bearer" = []))
)]
pub async fn get_release_control(State(state): State<ApiState>) -> Json<Envelope<ReleaseControl>> {
    ok(ReleaseControl { release_control_enabled: state.wrenches.release_control() })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TorqueWrenchSettings {
    id: String,
    address: String,
    port: u16,
    station_id: Option<String>,
    result_revision: u16,
    link_level_acks: bool,
    keep_alive_s: u64,
    link_timeout_s: u64,
    reply_timeout_s: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TorqueSettings {
    release_control_enabled: bool,
    wrenches: Vec<TorqueWrenchSettings>,
}

/// Torque settings: default Pset, batch size, tool lock.
#[utoipa::path(
    get,
    path = "/api/v1/settings/torque",
    tag = "wrenches",
    responses((status = 200, description = "done", body = Envelope<TorqueSettings>), Guarded),
    security(("bearer" = []))
)]
pub async fn get_torque_settings(State(state): State<ApiState>) -> Json<Envelope<TorqueSettings>> {
    let wrenches = state
        .wrenches
        .statuses()
        .into_iter()
        .map(|s| TorqueWrenchSettings {
            result_revision: s.settings.session.result_revision,
            link_level_acks: s.settings.session.link_level,
            keep_alive_s: s.settings.session.keep_alive.as_secs(),
            link_timeout_s: s.settings.session.link_timeout.as_secs(),
            reply_timeout_s: s.settings.session.reply_timeout.as_secs(),
            id: s.settings.id,
            address: s.settings.address,
            port: s.settings.port,
            station_id: s.settings.station_id,
        })
        .collect();
    ok(TorqueSettings { release_control_enabled: state.wrenches.release_control(), wrenches })
}

/// Only release control changes at runtime; link timings are set in the config file.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TorqueSettingsUpdate {
    release_control_enabled: Option<bool>,
}

/// Changes the torque settings.
#[utoipa::path(
    put,
    path = "/api/v1/settings/torque",
    tag = "wrenches",
    request_body = TorqueSettingsUpdate,
    responses((status = 200, description = "done", body = Envelope<String>), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn put_torque_settings(
    State(state): State<ApiState>,
    body: Result<Json<TorqueSettingsUpdate>, JsonRejection>,
) -> Result<Json<Envelope<&'static str>>, ApiError> {
    let Json(update) = body.map_err(|err| {
        let mut err = json_error(err);
        err.detail.push_str(" (only release_control_enabled changes at runtime; the rest is in the config file)");
        err
    })?;
    if let Some(enabled) = update.release_control_enabled {
        state.wrenches.set_release_control(enabled).await?;
    }
    Ok(ok(""))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TighteningQuery {
    wrench_id: Option<String>,
    station_id: Option<String>,
    status: Option<String>,
    program_nr: Option<u32>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    limit: Option<u32>,
    offset: Option<u32>,
}

/// Stored tightening results, newest first, filtered and paged.
#[utoipa::path(
    get,
    path = "/api/v1/tightenings",
    tag = "wrenches",
    params(TighteningQuery),
    responses((status = 200, description = "done", body = TighteningList), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn list_tightenings(
    State(state): State<ApiState>,
    query: Result<Query<TighteningQuery>, QueryRejection>,
) -> Result<Json<TighteningList>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=super::routes::MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::unprocessable(format!("limit must be between 1 and {}", super::routes::MAX_LIST_LIMIT)));
    }
    let ok_filter = match query.status.as_deref() {
        None => None,
        Some("ok") => Some(true),
        Some("nok") => Some(false),
        Some(other) => return Err(ApiError::unprocessable(format!("status must be ok or nok, not {other:?}"))),
    };
    let offset = query.offset.unwrap_or(0);
    let filter = TighteningFilter {
        wrench_id: query.wrench_id,
        station_id: query.station_id,
        ok: ok_filter,
        pset: query.program_nr,
        since: query.since,
        until: query.until,
    };
    let (records, total) = state.inspector.storage.call(move |db| db.list_tightenings(&filter, limit, offset)).await?;
    Ok(Json(TighteningList { items: records.iter().map(TighteningDto::from).collect(), total, limit, offset }))
}

/// One tightening result.
#[utoipa::path(
    get,
    path = "/api/v1/tightenings/{id}",
    tag = "wrenches",
    params(("id" = String, Path)),
    responses((status = 200, description = "done", body = TighteningDto), Guarded, NotFound),
    security(("bearer" = []))
)]
pub async fn get_tightening(
    State(state): State<ApiState>,
    path: Result<Path<i64>, PathRejection>,
) -> Result<Json<TighteningDto>, ApiError> {
    let Path(seq) = path.map_err(|_| ApiError::not_found("no such tightening"))?;
    let record = state.inspector.storage.call(move |db| db.tightening_by_seq(seq)).await?;
    record.map(|r| Json(TighteningDto::from(&r))).ok_or_else(|| ApiError::not_found(format!("no tightening {seq}")))
}
