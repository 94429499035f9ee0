//! Coaching and unit records, in the assembly seed's shapes: the coaching WebSocket (the
//! client sends `{"start": {...}}` or `{"interrupt": {...}}`, exactly one; the server
//! sends `{"status": <message type>, "msg": {...}}` for every step event), the REST
//! commands (start, pause, resume, set step, QA answer, interrupt, complete), and the
//! assembly records with per-step metrics and a QA report (JSON and a printable page).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::ApiState;
use super::auth::Caller;
use super::dto::{CoachingStatusDto, InspectionDto, TighteningDto, UnitEventDto, UnitRecordDto, UnitStepDto, rfc3339};
use super::error::ApiError;
#[allow(unused_imports, reason = "named by the OpenAPI attributes")]
use super::error::{ErrorBody, Guarded, Invalid, NotFound};
use super::wrenches::{Envelope, json_error, ok};
use crate::coaching::{CoachingError, CoachingMessage, StartRequest};
use crate::core::assembly::Input;
use crate::storage::{StorageError, UnitEvent, UnitFilter, UnitRecord};

impl From<CoachingError> for ApiError {
    fn from(err: CoachingError) -> ApiError {
        match err {
            CoachingError::NotFound(what) => ApiError::not_found(what),
            CoachingError::Refused(why) => ApiError::new(StatusCode::CONFLICT, why),
            CoachingError::Invalid(why) => ApiError::unprocessable(why),
            CoachingError::Storage(err) => err.into(),
            CoachingError::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "coaching has stopped"),
        }
    }
}

fn record_id(text: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    text.map(|t| {
        Uuid::parse_str(t).map_err(|_| ApiError::unprocessable(format!("assembly_record_id {t:?} is not a UUID")))
    })
    .transpose()
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartCoachingRequest {
    assembly_id: String,
    operator_id: i64,
    /// The unit's serial number.
    #[serde(alias = "serial_number")]
    serial: String,
    /// Start at this step (0 by default).
    step_index: Option<usize>,
}

impl StartCoachingRequest {
    fn request(self) -> Result<StartRequest, ApiError> {
        let assembly_id = Uuid::parse_str(&self.assembly_id)
            .map_err(|_| ApiError::unprocessable(format!("assembly_id {:?} is not a UUID", self.assembly_id)))?;
        Ok(StartRequest {
            assembly_id,
            operator_id: self.operator_id,
            serial: self.serial,
            first_step: self.step_index.unwrap_or(0),
        })
    }
}

#[derive(Deserialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct InterruptCoachingRequest {
    assembly_record_id: Option<String>,
    reason: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordRequest {
    /// When given, it must be the unit being built.
    assembly_record_id: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStepRequest {
    assembly_record_id: Option<String>,
    step_index: usize,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QaRequest {
    assembly_record_id: Option<String>,
    /// The operator's answer: true confirms the step, false rejects the unit.
    passed: bool,
}

type StatusAnswer = Json<Envelope<CoachingStatusDto>>;

fn status_answer(status: &crate::coaching::CoachingStatus) -> StatusAnswer {
    ok(CoachingStatusDto::from(status))
}

/// The coaching state: the unit being built, its step, and the last unit.
#[utoipa::path(get, path = "/api/v1/coaching", tag = "coaching",
    responses((status = 200, description = "done", body = Envelope<CoachingStatusDto>), Guarded),
    security(("bearer" = [])))]
pub async fn status(State(state): State<ApiState>) -> StatusAnswer {
    status_answer(&state.coaching.status())
}

/// Starts building a unit: a published assembly, an active operator, the unit's serial.
#[utoipa::path(post, path = "/api/v1/coaching/start", tag = "coaching", request_body = StartCoachingRequest,
    responses((status = 201, description = "the unit record is open and its first step running", body = Envelope<CoachingStatusDto>), (status = 404, description = "no such assembly or operator", body = ErrorBody), (status = 409, description = "a unit is being built, the assembly is a draft, the operator inactive, or the e-stop active", body = ErrorBody), Guarded, Invalid),
    security(("bearer" = [])))]
pub async fn start(
    State(state): State<ApiState>,
    body: Result<Json<StartCoachingRequest>, JsonRejection>,
) -> Result<(StatusCode, StatusAnswer), ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let status = state.coaching.start(body.request()?).await?;
    Ok((StatusCode::CREATED, status_answer(&status)))
}

async fn command(state: &ApiState, record: Option<&str>, input: Input) -> Result<StatusAnswer, ApiError> {
    let status = state.coaching.command(record_id(record)?, input).await?;
    Ok(status_answer(&status))
}

/// Pauses the unit: step timers stop and released wrenches are disabled.
#[utoipa::path(post, path = "/api/v1/coaching/pause", tag = "coaching", request_body = RecordRequest,
    responses((status = 200, description = "done", body = Envelope<CoachingStatusDto>), (status = 409, description = "no unit, another unit, or already paused", body = ErrorBody), Guarded, Invalid),
    security(("bearer" = [])))]
pub async fn pause(
    State(state): State<ApiState>,
    body: Result<Json<RecordRequest>, JsonRejection>,
) -> Result<StatusAnswer, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    command(&state, body.assembly_record_id.as_deref(), Input::Pause).await
}

/// Resumes a paused unit.
#[utoipa::path(post, path = "/api/v1/coaching/resume", tag = "coaching", request_body = RecordRequest,
    responses((status = 200, description = "done", body = Envelope<CoachingStatusDto>), (status = 409, description = "no unit, another unit, or not paused", body = ErrorBody), Guarded, Invalid),
    security(("bearer" = [])))]
pub async fn resume(
    State(state): State<ApiState>,
    body: Result<Json<RecordRequest>, JsonRejection>,
) -> Result<StatusAnswer, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    command(&state, body.assembly_record_id.as_deref(), Input::Resume).await
}

/// Ends the unit here (outcome incomplete unless every step was done).
#[utoipa::path(post, path = "/api/v1/coaching/complete", tag = "coaching", request_body = RecordRequest,
    responses((status = 200, description = "done", body = Envelope<CoachingStatusDto>), (status = 409, description = "no unit, or another unit", body = ErrorBody), Guarded, Invalid),
    security(("bearer" = [])))]
pub async fn complete(
    State(state): State<ApiState>,
    body: Result<Json<RecordRequest>, JsonRejection>,
) -> Result<StatusAnswer, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    command(&state, body.assembly_record_id.as_deref(), Input::Complete).await
}

/// Aborts the unit safely: wrenches disabled, outputs reset, the record closed as aborted.
#[utoipa::path(post, path = "/api/v1/coaching/interrupt", tag = "coaching", request_body = InterruptCoachingRequest,
    responses((status = 200, description = "done", body = Envelope<CoachingStatusDto>), (status = 409, description = "no unit, or another unit", body = ErrorBody), Guarded, Invalid),
    security(("bearer" = [])))]
pub async fn interrupt(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<InterruptCoachingRequest>, JsonRejection>,
) -> Result<StatusAnswer, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let reason = body.reason.unwrap_or_else(|| format!("interrupted by {}", caller.username));
    command(&state, body.assembly_record_id.as_deref(), Input::Interrupt { reason }).await
}

/// Moves the unit to another step (the current one is recorded as interrupted).
#[utoipa::path(post, path = "/api/v1/coaching/step", tag = "coaching", request_body = SetStepRequest,
    responses((status = 200, description = "done", body = Envelope<CoachingStatusDto>), (status = 409, description = "no unit, another unit, or no such step", body = ErrorBody), Guarded, Invalid),
    security(("bearer" = [])))]
pub async fn set_step(
    State(state): State<ApiState>,
    body: Result<Json<SetStepRequest>, JsonRejection>,
) -> Result<StatusAnswer, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    command(&state, body.assembly_record_id.as_deref(), Input::SetStep { index: body.step_index }).await
}

/// The operator's QA answer for the current step (also confirms an instruction step).
#[utoipa::path(post, path = "/api/v1/coaching/qa", tag = "coaching", request_body = QaRequest,
    responses((status = 200, description = "done", body = Envelope<CoachingStatusDto>), (status = 409, description = "no unit, another unit, or the step waits for no answer", body = ErrorBody), Guarded, Invalid),
    security(("bearer" = [])))]
pub async fn qa(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<QaRequest>, JsonRejection>,
) -> Result<StatusAnswer, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let input = Input::Qa { passed: body.passed, by: caller.username.clone() };
    command(&state, body.assembly_record_id.as_deref(), input).await
}

/// One WebSocket message, in the seed's envelope.
fn ws_text(status: &'static str, msg: impl Serialize) -> String {
    serde_json::to_string(&Envelope::new(status, msg)).expect("plain data serialises")
}

#[derive(Serialize)]
struct MessageDto {
    assembly_record_id: String,
    #[serde(flatten)]
    event: UnitEventDto,
}

fn message_text(message: &CoachingMessage) -> String {
    let event = UnitEventDto::from(&UnitEvent::from_message(&message.message, message.at));
    let status = event.kind;
    ws_text(status, MessageDto { assembly_record_id: message.record_id.to_string(), event })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WsRequest {
    start: Option<StartCoachingRequest>,
    interrupt: Option<InterruptCoachingRequest>,
}

/// The coaching WebSocket: send `{"start": {...}}` or `{"interrupt": {...}}`; receive the
/// state, then `{"status": type, "msg": event}` for every event of the unit being built.
#[utoipa::path(get, path = "/api/v1/coaching/ws", tag = "coaching",
    responses((status = 101, description = "WebSocket: state, started, step_advance, prediction, tightening, stray_tightening, input, output, qa, notice, paused, resumed, step_complete, step_interrupt, assembly_complete, error"), Guarded),
    security(("bearer" = [])))]
pub async fn ws(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade.on_upgrade(move |socket| serve_ws(state, caller, socket))
}

async fn serve_ws(state: ApiState, caller: Caller, mut socket: WebSocket) {
    let mut messages = state.coaching.messages();
    let mut status = state.coaching.watch();
    let first = ws_text("state", CoachingStatusDto::from(&**status.borrow_and_update()));
    if socket.send(WsMessage::Text(first.into())).await.is_err() {
        return;
    }
    loop {
        let text = tokio::select! {
            () = state.stop.cancelled() => break,
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Text(text))) => ws_request(&state, &caller, &text).await,
                Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
            message = messages.recv() => match message {
                Ok(message) => message_text(&message),
                Err(RecvError::Lagged(missed)) => ws_text("lagged", serde_json::json!({ "missed": missed })),
                Err(RecvError::Closed) => break,
            },
            changed = status.changed() => match changed {
                Ok(()) => ws_text("state", CoachingStatusDto::from(&**status.borrow_and_update())),
                Err(_) => break,
            },
        };
        if socket.send(WsMessage::Text(text.into())).await.is_err() {
            return;
        }
    }
    let _ = socket.send(WsMessage::Close(None)).await;
}

async fn ws_request(state: &ApiState, caller: &Caller, text: &str) -> String {
    let request = match serde_json::from_str::<WsRequest>(text) {
        Ok(request) => request,
        Err(err) => return ws_text("error", format!("bad message: {err}")),
    };
    let answer = match (request.start, request.interrupt) {
        (Some(start), None) => match start.request() {
            Ok(start) => state.coaching.start(start).await.map(|s| ("started", s)).map_err(ApiError::from),
            Err(err) => Err(err),
        },
        (None, Some(interrupt)) => match record_id(interrupt.assembly_record_id.as_deref()) {
            Ok(id) => {
                let reason = interrupt.reason.unwrap_or_else(|| format!("interrupted by {}", caller.username));
                let answer = state.coaching.command(id, Input::Interrupt { reason }).await;
                answer.map(|s| ("interrupted", s)).map_err(ApiError::from)
            }
            Err(err) => Err(err),
        },
        _ => return ws_text("error", "send exactly one of start and interrupt"),
    };
    match answer {
        Ok((status, coaching)) => ws_text(status, CoachingStatusDto::from(&*coaching)),
        Err(err) => ws_text("error", err.detail),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RecordQuery {
    assembly_id: Option<String>,
    operator_id: Option<i64>,
    serial: Option<String>,
    /// 1..=1000, 100 by default; the `recent` route always answers one.
    limit: Option<u32>,
}

impl RecordQuery {
    fn filter(self, limit: u32) -> Result<UnitFilter, ApiError> {
        let assembly_id = match self.assembly_id {
            Some(text) => Some(
                Uuid::parse_str(&text)
                    .map_err(|_| ApiError::unprocessable(format!("assembly_id {text:?} is not a UUID")))?,
            ),
            None => None,
        };
        Ok(UnitFilter { assembly_id, operator_id: self.operator_id, serial: self.serial, limit })
    }
}

async fn records(state: &ApiState, filter: UnitFilter) -> Result<Vec<UnitRecordDto>, ApiError> {
    let found = state
        .inspector
        .storage
        .call(move |db| {
            let units = db.unit_records(&filter)?;
            units
                .into_iter()
                .map(|u| {
                    let events = db.unit_events(u.seq)?;
                    Ok::<_, StorageError>((u, events))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(found.iter().map(|(u, e)| UnitRecordDto::new(u, e, false)).collect())
}

/// Unit records, newest first, by assembly, operator or serial.
#[utoipa::path(get, path = "/api/v1/assembly-records", tag = "coaching", params(RecordQuery),
    responses((status = 200, description = "done", body = Envelope<Vec<UnitRecordDto>>), Guarded, Invalid),
    security(("bearer" = [])))]
pub async fn list_records(
    State(state): State<ApiState>,
    query: Result<Query<RecordQuery>, QueryRejection>,
) -> Result<Json<Envelope<Vec<UnitRecordDto>>>, ApiError> {
    let Query(query) = query.map_err(super::routes::query_error)?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    Ok(ok(records(&state, query.filter(limit)?).await?))
}

/// The most recent unit record for an assembly or an operator (an array of at most one).
#[utoipa::path(get, path = "/api/v1/assembly-records/recent", tag = "coaching", params(RecordQuery),
    responses((status = 200, description = "done", body = Envelope<Vec<UnitRecordDto>>), Guarded, Invalid),
    security(("bearer" = [])))]
pub async fn recent_record(
    State(state): State<ApiState>,
    query: Result<Query<RecordQuery>, QueryRejection>,
) -> Result<Json<Envelope<Vec<UnitRecordDto>>>, ApiError> {
    let Query(query) = query.map_err(super::routes::query_error)?;
    Ok(ok(records(&state, query.filter(1)?).await?))
}

async fn load_record(state: &ApiState, id: &str) -> Result<(UnitRecord, Vec<UnitEvent>), ApiError> {
    let missing = || ApiError::not_found(format!("assembly record {id} not found"));
    let uuid = Uuid::parse_str(id).map_err(|_| missing())?;
    let found = state
        .inspector
        .storage
        .call(move |db| match db.unit_record(uuid)? {
            Some(unit) => {
                let events = db.unit_events(unit.seq)?;
                Ok::<_, StorageError>(Some((unit, events)))
            }
            None => Ok(None),
        })
        .await?;
    found.ok_or_else(missing)
}

/// One unit record with its steps and every event.
#[utoipa::path(get, path = "/api/v1/assembly-records/{id}", tag = "coaching", params(("id" = String, Path)),
    responses((status = 200, description = "done", body = Envelope<UnitRecordDto>), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn get_record(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Envelope<UnitRecordDto>>, ApiError> {
    let (unit, events) = load_record(&state, &id).await?;
    Ok(ok(UnitRecordDto::new(&unit, &events, true)))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RecordMetricsDto {
    assembly_record_id: String,
    operator_id: i64,
    /// Active time of the whole unit, pauses excluded, seconds.
    active_s: Option<f64>,
    steps_completed: usize,
    steps_over_benchmark: usize,
    tightenings_ok: u32,
    tightenings_nok: u32,
    tightenings_stray: u32,
    steps: Vec<UnitStepDto>,
}

/// Per-step metrics of a unit record: active time, benchmark, predictions, tightenings.
#[utoipa::path(get, path = "/api/v1/assembly-records/{id}/metrics", tag = "coaching", params(("id" = String, Path)),
    responses((status = 200, description = "done", body = Envelope<RecordMetricsDto>), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn record_metrics(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Envelope<RecordMetricsDto>>, ApiError> {
    let (unit, events) = load_record(&state, &id).await?;
    let steps = super::dto::unit_steps(&events);
    Ok(ok(RecordMetricsDto {
        assembly_record_id: unit.id.to_string(),
        operator_id: unit.operator_id,
        active_s: events.iter().find(|e| e.kind == "assembly_complete").and_then(|e| e.value),
        steps_completed: steps.iter().filter(|s| s.status == "complete").count(),
        steps_over_benchmark: steps.iter().filter(|s| s.over_benchmark == Some(true)).count(),
        tightenings_ok: steps.iter().map(|s| s.tightenings_ok).sum(),
        tightenings_nok: steps.iter().map(|s| s.tightenings_nok).sum(),
        tightenings_stray: steps.iter().map(|s| s.tightenings_stray).sum(),
        steps,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct QaReportDto {
    /// PASS only for a completed unit whose every step completed.
    verdict: &'static str,
    generated_at: String,
    record: UnitRecordDto,
    inspections: Vec<InspectionDto>,
    tightenings: Vec<TighteningDto>,
}

async fn qa_report_of(state: &ApiState, id: &str) -> Result<QaReportDto, ApiError> {
    let (unit, events) = load_record(state, id).await?;
    let inspection_ids: Vec<Uuid> = events.iter().filter_map(|e| e.inspection_id).collect();
    let tightening_seqs: Vec<i64> = events.iter().filter_map(|e| e.tightening_seq).collect();
    let (inspections, tightenings) = state
        .inspector
        .storage
        .call(move |db| {
            let mut inspections = Vec::new();
            for id in inspection_ids {
                inspections.extend(db.get(id)?);
            }
            let mut tightenings = Vec::new();
            for seq in tightening_seqs {
                tightenings.extend(db.tightening_by_seq(seq)?);
            }
            Ok::<_, StorageError>((inspections, tightenings))
        })
        .await?;
    let verdict = match unit.outcome {
        Some(crate::core::assembly::Outcome::Completed) => "PASS",
        Some(_) => "FAIL",
        None => "IN PROGRESS",
    };
    Ok(QaReportDto {
        verdict,
        generated_at: rfc3339(chrono::Utc::now()),
        record: UnitRecordDto::new(&unit, &events, true),
        inspections: inspections.iter().map(InspectionDto::from).collect(),
        tightenings: tightenings.iter().map(TighteningDto::from).collect(),
    })
}

/// The QA report of a unit: verdict, steps, every inspection and tightening, every event.
#[utoipa::path(get, path = "/api/v1/assembly-records/{id}/qa-report", tag = "coaching", params(("id" = String, Path)),
    responses((status = 200, description = "done", body = Envelope<QaReportDto>), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn qa_report(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Envelope<QaReportDto>>, ApiError> {
    Ok(ok(qa_report_of(&state, &id).await?))
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| escape(&v.to_string()))
}

/// The QA report as a self-contained printable HTML page.
#[utoipa::path(get, path = "/api/v1/assembly-records/{id}/qa-report.html", tag = "coaching", params(("id" = String, Path)),
    responses((status = 200, description = "a printable HTML page", content_type = "text/html"), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn qa_report_html(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let report = qa_report_of(&state, &id).await?;
    let r = &report.record;
    let mut html = String::new();
    html.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>QA report ");
    html.push_str(&escape(&r.serial));
    html.push_str(
        "</title><style>body{font:13px sans-serif;margin:2em}table{border-collapse:collapse;width:100%;margin:1em 0}\
         td,th{border:1px solid #999;padding:3px 6px;text-align:left}th{background:#eee}\
         .PASS{color:#070}.FAIL{color:#b00}@media print{a{display:none}}</style></head><body>",
    );
    html.push_str(&format!(
        "<h1>QA report: unit {}</h1><h2 class=\"{}\">{}</h2><table>\
         <tr><th>Assembly</th><td>{} (revision {})</td></tr><tr><th>Operator</th><td>{} (id {})</td></tr>\
         <tr><th>Station</th><td>{}</td></tr><tr><th>Started</th><td>{}</td></tr><tr><th>Ended</th><td>{}</td></tr>\
         <tr><th>Outcome</th><td>{}</td></tr><tr><th>Reason</th><td>{}</td></tr><tr><th>Record</th><td>{}</td></tr>\
         <tr><th>Generated</th><td>{}</td></tr></table>",
        escape(&r.serial),
        report.verdict.replace(' ', "-"),
        report.verdict,
        escape(&r.assembly_name),
        r.revision,
        escape(&r.operator_name),
        r.operator_id,
        escape(&r.station_id),
        escape(&r.started_at),
        opt(r.ended_at.as_deref()),
        opt(r.outcome),
        opt(r.reason.as_deref()),
        escape(&r.id),
        escape(&report.generated_at),
    ));
    html.push_str(
        "<h3>Steps</h3><table><tr><th>#</th><th>Step</th><th>Status</th><th>Active s</th><th>Over benchmark</th>\
         <th>Predictions</th><th>Tightenings OK / NOK / stray</th><th>QA</th><th>Note</th></tr>",
    );
    for s in &r.steps {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {} / {}</td><td>{}</td><td>{}</td></tr>",
            s.step_index,
            escape(&s.name),
            s.status,
            opt(s.active_s),
            opt(s.over_benchmark),
            s.predictions,
            s.tightenings_ok,
            s.tightenings_nok,
            s.tightenings_stray,
            opt(s.qa_passed),
            opt(s.reason.as_deref()),
        ));
    }
    html.push_str("</table><h3>Tightenings</h3><table><tr><th>Seq</th><th>Wrench</th><th>Status</th><th>Torque</th><th>Angle</th><th>Program</th><th>Received</th></tr>");
    for t in &report.tightenings {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            t.id,
            escape(&t.wrench_id),
            t.status,
            t.torque,
            escape(&t.torque_unit),
            t.angle,
            opt(t.program_nr),
            escape(&t.received_at),
        ));
    }
    html.push_str("</table><h3>Inspections</h3><table><tr><th>Id</th><th>Decision</th><th>Label</th><th>Confidence</th><th>At</th></tr>");
    for i in &report.inspections {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td></tr>",
            escape(&i.id),
            escape(i.decision),
            opt(i.label.as_deref()),
            i.confidence,
            escape(&i.timestamp),
        ));
    }
    html.push_str("</table></body></html>");
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
}
