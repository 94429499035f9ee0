//! Work instructions and operators, in the assembly seed's shapes: assemblies (revisions
//! of one family; a published revision is frozen and only a new revision changes it),
//! steps in order, each step's action list (the seed's StepData), the step order checks
//! (allowed moves, deletable), and operators with RFID and password login.
//!
//! Answers are the seed's `{"status": "ok", "msg": ...}`; step and step-data changes
//! answer `{"id": n}` as the seed does. Errors keep the API-wide `{"detail": ...}`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ApiState;
use super::dto::{ItemDto, rfc3339};
use super::error::ApiError;
#[allow(unused_imports, reason = "named by the OpenAPI attributes")]
use super::error::{ErrorBody, Guarded, Invalid, NotFound};
use super::wrenches::{Envelope, json_error, ok};
use crate::core::assembly::{self as plan, Action, NokPolicy, TorqueCheck, VisionCheck};
use crate::storage::{
    Assembly, AssemblyError, AssemblyFields, NewOperator, Operator, OperatorUpdate, Step, StepAction, StepFields,
};

impl From<AssemblyError> for ApiError {
    fn from(err: AssemblyError) -> ApiError {
        match err {
            AssemblyError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            AssemblyError::Conflict(why) => ApiError::new(StatusCode::CONFLICT, why),
            AssemblyError::Storage(err) => err.into(),
        }
    }
}

fn assembly_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::not_found(format!("assembly {text} not found")))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AssemblyDto {
    id: String,
    /// Shared by every revision of this assembly.
    revision_id: String,
    revision: u32,
    name: String,
    description: String,
    image_link: Option<String>,
    published: bool,
    active: bool,
    approver: Option<String>,
    notes: Option<String>,
    step_count: u32,
    created_at: String,
    last_edited: String,
}

impl From<&Assembly> for AssemblyDto {
    fn from(a: &Assembly) -> AssemblyDto {
        AssemblyDto {
            id: a.id.to_string(),
            revision_id: a.family_id.to_string(),
            revision: a.revision,
            name: a.name.clone(),
            description: a.description.clone(),
            image_link: a.image_link.clone(),
            published: a.published,
            active: a.active,
            approver: a.approver.clone(),
            notes: a.notes.clone(),
            step_count: a.step_count,
            created_at: rfc3339(a.created_at),
            last_edited: rfc3339(a.edited_at),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StepDataDto {
    id: i64,
    step_id: i64,
    /// ml, qa-dwell, torque, torque-only, input, output or qa.
    data_type: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_class: Option<String>,
    /// Vision: "continuous" (inspect until a match) or "trigger" (wait for the station's triggers).
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dwell_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wrench_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    program_nr: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_torque: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tolerance: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nok_policy: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_nok: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_items: Option<Vec<ItemDto>>,
}

impl From<&StepAction> for StepDataDto {
    fn from(a: &StepAction) -> StepDataDto {
        let mut dto = StepDataDto {
            id: a.id,
            step_id: a.step_id,
            data_type: crate::storage::data_type(&a.action).to_lowercase().replace('_', "-"),
            name: a.name.clone(),
            expected_class: None,
            mode: None,
            dwell_s: None,
            wrench_id: None,
            program_nr: None,
            count: None,
            target_torque: None,
            tolerance: None,
            nok_policy: None,
            max_nok: None,
            line: None,
            level: None,
            prompt: None,
            expected_items: None,
        };
        match &a.action {
            Action::Vision(check) => {
                dto.expected_class = check.expected_class.clone();
                dto.expected_items = (!check.expected_items.is_empty()).then(|| ItemDto::list(&check.expected_items));
                dto.mode = Some(if check.continuous || check.dwell.is_some() { "continuous" } else { "trigger" });
                dto.dwell_s = check.dwell.map(|d| d.num_milliseconds() as f64 / 1000.0);
            }
            Action::Torque(check) => {
                dto.wrench_id = (!check.wrench.is_empty()).then(|| check.wrench.clone());
                dto.program_nr = check.pset;
                dto.count = Some(check.count);
                dto.target_torque = check.target;
                dto.tolerance = check.tolerance;
                (dto.nok_policy, dto.max_nok) = match check.nok {
                    NokPolicy::Fail => (Some("fail"), None),
                    NokPolicy::Rework { max_nok } => (Some("rework"), max_nok),
                };
            }
            Action::Input { line, active } | Action::Output { line, active } => {
                dto.line = Some(line.clone());
                dto.level = Some(*active);
            }
            Action::Qa { prompt } => dto.prompt = Some(prompt.clone()),
        }
        dto
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StepDto {
    id: i64,
    assembly_id: String,
    step_index: usize,
    name: String,
    description: String,
    image_link: Option<String>,
    video_link: Option<String>,
    overlay_link: Option<String>,
    camera_id: Option<String>,
    minimum_predict: f32,
    /// Expected duration, seconds.
    benchmark: Option<f64>,
    /// Active time after which the unit is aborted, seconds.
    timeout: Option<f64>,
    step_data: Vec<StepDataDto>,
}

impl From<&Step> for StepDto {
    fn from(s: &Step) -> StepDto {
        StepDto {
            id: s.id,
            assembly_id: s.assembly_id.to_string(),
            step_index: s.index,
            name: s.name.clone(),
            description: s.description.clone(),
            image_link: s.image_link.clone(),
            video_link: s.video_link.clone(),
            overlay_link: s.overlay_link.clone(),
            camera_id: s.camera_id.clone(),
            minimum_predict: s.minimum_predict,
            benchmark: s.benchmark,
            timeout: s.timeout,
            step_data: s.actions.iter().map(StepDataDto::from).collect(),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct IdDto {
    id: i64,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssemblyRequest {
    name: Option<String>,
    description: Option<String>,
    image_link: Option<String>,
    approver: Option<String>,
    notes: Option<String>,
}

fn text(key: &str, value: Option<String>, max: usize) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.chars().count() > max => {
            Err(ApiError::unprocessable(format!("{key} must have at most {max} characters")))
        }
        other => Ok(other),
    }
}

impl AssemblyRequest {
    fn fields(self) -> Result<AssemblyFields, ApiError> {
        if self.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(ApiError::unprocessable("name must not be empty"));
        }
        Ok(AssemblyFields {
            name: text("name", self.name, 200)?,
            description: text("description", self.description, 4000)?,
            image_link: text("image_link", self.image_link, 2000)?,
            approver: text("approver", self.approver, 200)?,
            notes: text("notes", self.notes, 4000)?,
        })
    }
}

/// Every revision of every assembly.
#[utoipa::path(get, path = "/api/v1/assemblies", tag = "assemblies",
    responses((status = 200, description = "done", body = Envelope<Vec<AssemblyDto>>), Guarded),
    security(("bearer" = [])))]
pub async fn list_assemblies(State(state): State<ApiState>) -> Result<Json<Envelope<Vec<AssemblyDto>>>, ApiError> {
    let all = state.inspector.storage.call(|db| db.assemblies()).await?;
    Ok(ok(all.iter().map(AssemblyDto::from).collect()))
}

/// Creates an assembly: revision 1 of a new family, a draft.
#[utoipa::path(post, path = "/api/v1/assemblies", tag = "assemblies", request_body = AssemblyRequest,
    responses((status = 201, description = "created", body = Envelope<AssemblyDto>), Guarded, Invalid),
    security(("bearer" = [])))]
pub async fn create_assembly(
    State(state): State<ApiState>,
    body: Result<Json<AssemblyRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Envelope<AssemblyDto>>), ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let fields = body.fields()?;
    if fields.name.is_none() {
        return Err(ApiError::unprocessable("name is required"));
    }
    let created = state.inspector.storage.call(move |db| db.insert_assembly(fields, Utc::now())).await?;
    Ok((StatusCode::CREATED, ok(AssemblyDto::from(&created))))
}

/// One assembly revision.
#[utoipa::path(get, path = "/api/v1/assemblies/{id}", tag = "assemblies", params(("id" = String, Path)),
    responses((status = 200, description = "done", body = Envelope<AssemblyDto>), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn get_assembly(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Envelope<AssemblyDto>>, ApiError> {
    let id = assembly_id(&id)?;
    let found = state.inspector.storage.call(move |db| db.assembly(id)).await?;
    let found = found.ok_or_else(|| ApiError::not_found(format!("assembly {id} not found")))?;
    Ok(ok(AssemblyDto::from(&found)))
}

/// Changes a draft revision's name, description, image, approver or notes.
#[utoipa::path(put, path = "/api/v1/assemblies/{id}", tag = "assemblies", params(("id" = String, Path)), request_body = AssemblyRequest,
    responses((status = 200, description = "done", body = Envelope<AssemblyDto>), (status = 409, description = "the revision is published (frozen)", body = ErrorBody), Guarded, NotFound, Invalid),
    security(("bearer" = [])))]
pub async fn update_assembly(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<AssemblyRequest>, JsonRejection>,
) -> Result<Json<Envelope<AssemblyDto>>, ApiError> {
    let id = assembly_id(&id)?;
    let Json(body) = body.map_err(json_error)?;
    let fields = body.fields()?;
    let updated = state.inspector.storage.edit(move |db| db.update_assembly(id, fields, Utc::now())).await?;
    Ok(ok(AssemblyDto::from(&updated)))
}

/// Deletes a revision that no unit was built to.
#[utoipa::path(delete, path = "/api/v1/assemblies/{id}", tag = "assemblies", params(("id" = String, Path)),
    responses((status = 200, description = "done", body = Envelope<String>), (status = 409, description = "units were built to it", body = ErrorBody), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn delete_assembly(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Envelope<&'static str>>, ApiError> {
    let id = assembly_id(&id)?;
    state.inspector.storage.edit(move |db| db.delete_assembly(id)).await?;
    Ok(ok(""))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    approver: Option<String>,
}

/// Publishes (freezes) a draft revision so that it can be coached.
#[utoipa::path(post, path = "/api/v1/assemblies/{id}/publish", tag = "assemblies", params(("id" = String, Path)), request_body = PublishRequest,
    responses((status = 200, description = "done", body = Envelope<AssemblyDto>), (status = 409, description = "already published, or no steps", body = ErrorBody), Guarded, NotFound, Invalid),
    security(("bearer" = [])))]
pub async fn publish_assembly(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<PublishRequest>, JsonRejection>,
) -> Result<Json<Envelope<AssemblyDto>>, ApiError> {
    let id = assembly_id(&id)?;
    let Json(body) = body.map_err(json_error)?;
    let approver = text("approver", body.approver, 200)?;
    let published = state.inspector.storage.edit(move |db| db.publish_assembly(id, approver, Utc::now())).await?;
    Ok(ok(AssemblyDto::from(&published)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveRequest {
    active: bool,
}

/// Sets a revision active; the family's other revisions become inactive.
#[utoipa::path(put, path = "/api/v1/assemblies/{id}/active", tag = "assemblies", params(("id" = String, Path)), request_body = ActiveRequest,
    responses((status = 200, description = "done", body = Envelope<AssemblyDto>), Guarded, NotFound, Invalid),
    security(("bearer" = [])))]
pub async fn set_active(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<ActiveRequest>, JsonRejection>,
) -> Result<Json<Envelope<AssemblyDto>>, ApiError> {
    let id = assembly_id(&id)?;
    let Json(body) = body.map_err(json_error)?;
    let updated = state.inspector.storage.edit(move |db| db.set_assembly_active(id, body.active)).await?;
    Ok(ok(AssemblyDto::from(&updated)))
}

/// A new draft revision of this assembly with a copy of this revision's steps.
#[utoipa::path(post, path = "/api/v1/assemblies/{id}/revisions", tag = "assemblies", params(("id" = String, Path)),
    responses((status = 201, description = "created", body = Envelope<AssemblyDto>), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn new_revision(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Envelope<AssemblyDto>>), ApiError> {
    let id = assembly_id(&id)?;
    let created = state.inspector.storage.edit(move |db| db.new_assembly_revision(id, Utc::now())).await?;
    Ok((StatusCode::CREATED, ok(AssemblyDto::from(&created))))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RevisionFamilyDto {
    revision_id: String,
    name: String,
    /// The active revision's assembly id, if one is active.
    active_revision: Option<String>,
    revisions: Vec<AssemblyDto>,
}

/// Every assembly with its revisions.
#[utoipa::path(get, path = "/api/v1/assembly-revisions", tag = "assemblies",
    responses((status = 200, description = "done", body = Envelope<Vec<RevisionFamilyDto>>), Guarded),
    security(("bearer" = [])))]
pub async fn revisions(State(state): State<ApiState>) -> Result<Json<Envelope<Vec<RevisionFamilyDto>>>, ApiError> {
    let all = state.inspector.storage.call(|db| db.assemblies()).await?;
    let mut families: Vec<RevisionFamilyDto> = Vec::new();
    for assembly in &all {
        let family = assembly.family_id.to_string();
        if families.last().is_none_or(|f| f.revision_id != family) {
            families.push(RevisionFamilyDto {
                revision_id: family,
                name: String::new(),
                active_revision: None,
                revisions: Vec::new(),
            });
        }
        let entry = families.last_mut().expect("pushed above");
        entry.name = assembly.name.clone();
        if assembly.active {
            entry.active_revision = Some(assembly.id.to_string());
        }
        entry.revisions.push(AssemblyDto::from(assembly));
    }
    Ok(ok(families))
}

/// The newest published revision of each assembly: what can be coached.
#[utoipa::path(get, path = "/api/v1/assembly-revisions/coachable", tag = "assemblies",
    responses((status = 200, description = "done", body = Envelope<Vec<AssemblyDto>>), Guarded),
    security(("bearer" = [])))]
pub async fn coachable(State(state): State<ApiState>) -> Result<Json<Envelope<Vec<AssemblyDto>>>, ApiError> {
    let all = state.inspector.storage.call(|db| db.coachable_assemblies()).await?;
    Ok(ok(all.iter().map(AssemblyDto::from).collect()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    name: Option<String>,
    description: Option<String>,
    image_link: Option<String>,
    video_link: Option<String>,
    overlay_link: Option<String>,
    camera_id: Option<String>,
    minimum_predict: Option<f32>,
    /// Expected duration, seconds.
    benchmark: Option<f64>,
    /// Active time after which the unit is aborted, seconds.
    timeout: Option<f64>,
    /// On create: where to insert (the end by default).
    step_index: Option<usize>,
}

impl StepRequest {
    fn fields(self, state: &ApiState) -> Result<(StepFields, Option<usize>), ApiError> {
        if self.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(ApiError::unprocessable("name must not be empty"));
        }
        if self.minimum_predict.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
            return Err(ApiError::unprocessable("minimum_predict must be between 0 and 1"));
        }
        for (key, value) in [("benchmark", self.benchmark), ("timeout", self.timeout)] {
            if value.is_some_and(|v| !(v > 0.0 && v <= 86_400.0)) {
                return Err(ApiError::unprocessable(format!("{key} must be between 0 and 86400 seconds")));
            }
        }
        if let Some(camera) = &self.camera_id
            && !state.cameras.contains_key(camera)
        {
            return Err(ApiError::unprocessable(format!("camera_id: no camera {camera:?}")));
        }
        let fields = StepFields {
            name: text("name", self.name, 200)?,
            description: text("description", self.description, 4000)?,
            image_link: text("image_link", self.image_link, 2000)?,
            video_link: text("video_link", self.video_link, 2000)?,
            overlay_link: text("overlay_link", self.overlay_link, 2000)?,
            camera_id: self.camera_id,
            minimum_predict: self.minimum_predict,
            benchmark: self.benchmark,
            timeout: self.timeout,
        };
        Ok((fields, self.step_index))
    }
}

/// The steps of an assembly, in order, with their step data.
#[utoipa::path(get, path = "/api/v1/assemblies/{id}/steps", tag = "assemblies", params(("id" = String, Path)),
    responses((status = 200, description = "done", body = Envelope<Vec<StepDto>>), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn list_steps(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Envelope<Vec<StepDto>>>, ApiError> {
    let id = assembly_id(&id)?;
    let (assembly, steps) = state
        .inspector
        .storage
        .call(move |db| Ok::<_, crate::storage::StorageError>((db.assembly(id)?, db.steps(id)?)))
        .await?;
    assembly.ok_or_else(|| ApiError::not_found(format!("assembly {id} not found")))?;
    Ok(ok(steps.iter().map(StepDto::from).collect()))
}

/// Adds a step to a draft revision (at `step_index`, or at the end).
#[utoipa::path(post, path = "/api/v1/assemblies/{id}/steps", tag = "assemblies", params(("id" = String, Path)), request_body = StepRequest,
    responses((status = 201, description = "created", body = IdDto), (status = 409, description = "the revision is published (frozen)", body = ErrorBody), Guarded, NotFound, Invalid),
    security(("bearer" = [])))]
pub async fn create_step(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<StepRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<IdDto>), ApiError> {
    let id = assembly_id(&id)?;
    let Json(body) = body.map_err(json_error)?;
    let (fields, index) = body.fields(&state)?;
    if fields.name.is_none() {
        return Err(ApiError::unprocessable("name is required"));
    }
    let step = state.inspector.storage.edit(move |db| db.insert_step(id, fields, index, Utc::now())).await?;
    Ok((StatusCode::CREATED, Json(IdDto { id: step.id })))
}

async fn load_step(state: &ApiState, assembly: Uuid, step_id: i64) -> Result<(Vec<Step>, usize), ApiError> {
    let steps = state.inspector.storage.call(move |db| db.steps(assembly)).await?;
    let index = steps
        .iter()
        .position(|s| s.id == step_id)
        .ok_or_else(|| ApiError::not_found(format!("step {step_id} of assembly {assembly} not found")))?;
    Ok((steps, index))
}

fn action_lists(steps: &[Step]) -> Vec<Vec<Action>> {
    steps.iter().map(|s| s.actions.iter().map(|a| a.action.clone()).collect()).collect()
}

/// One step with its step data.
#[utoipa::path(get, path = "/api/v1/assemblies/{id}/steps/{step_id}", tag = "assemblies", params(("id" = String, Path), ("step_id" = i64, Path)),
    responses((status = 200, description = "done", body = Envelope<StepDto>), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn get_step(
    State(state): State<ApiState>,
    Path((id, step_id)): Path<(String, i64)>,
) -> Result<Json<Envelope<StepDto>>, ApiError> {
    let (steps, index) = load_step(&state, assembly_id(&id)?, step_id).await?;
    Ok(ok(StepDto::from(&steps[index])))
}

/// Changes a step of a draft revision.
#[utoipa::path(put, path = "/api/v1/assemblies/{id}/steps/{step_id}", tag = "assemblies", params(("id" = String, Path), ("step_id" = i64, Path)), request_body = StepRequest,
    responses((status = 200, description = "done", body = IdDto), (status = 409, description = "published, or the move breaks a step dependency", body = ErrorBody), Guarded, NotFound, Invalid),
    security(("bearer" = [])))]
pub async fn update_step(
    State(state): State<ApiState>,
    Path((id, step_id)): Path<(String, i64)>,
    body: Result<Json<StepRequest>, JsonRejection>,
) -> Result<Json<IdDto>, ApiError> {
    let id = assembly_id(&id)?;
    let Json(body) = body.map_err(json_error)?;
    let (fields, index) = body.fields(&state)?;
    if let Some(index) = index {
        move_checked(&state, id, step_id, index).await?;
    }
    let step = state.inspector.storage.edit(move |db| db.update_step(id, step_id, fields, Utc::now())).await?;
    Ok(Json(IdDto { id: step.id }))
}

/// Deletes a step of a draft revision, unless a later step depends on it.
#[utoipa::path(delete, path = "/api/v1/assemblies/{id}/steps/{step_id}", tag = "assemblies", params(("id" = String, Path), ("step_id" = i64, Path)),
    responses((status = 200, description = "done", body = IdDto), (status = 409, description = "published, or another step depends on it", body = ErrorBody), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn delete_step(
    State(state): State<ApiState>,
    Path((id, step_id)): Path<(String, i64)>,
) -> Result<Json<IdDto>, ApiError> {
    let id = assembly_id(&id)?;
    let (steps, index) = load_step(&state, id, step_id).await?;
    let dependents = plan::dependents(&action_lists(&steps), index);
    if !dependents.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("steps {dependents:?} depend on step {index}: change or delete them first"),
        ));
    }
    state.inspector.storage.edit(move |db| db.delete_step(id, step_id, Utc::now())).await?;
    Ok(Json(IdDto { id: step_id }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    step_index: usize,
}

/// Moves a step of a draft revision to another index, if its dependencies allow.
#[utoipa::path(post, path = "/api/v1/assemblies/{id}/steps/{step_id}/move", tag = "assemblies", params(("id" = String, Path), ("step_id" = i64, Path)), request_body = MoveRequest,
    responses((status = 200, description = "done", body = IdDto), (status = 409, description = "published, or the move breaks a dependency", body = ErrorBody), Guarded, NotFound, Invalid),
    security(("bearer" = [])))]
pub async fn move_step(
    State(state): State<ApiState>,
    Path((id, step_id)): Path<(String, i64)>,
    body: Result<Json<MoveRequest>, JsonRejection>,
) -> Result<Json<IdDto>, ApiError> {
    let id = assembly_id(&id)?;
    let Json(body) = body.map_err(json_error)?;
    move_checked(&state, id, step_id, body.step_index).await?;
    Ok(Json(IdDto { id: step_id }))
}

/// Moves a step to index `to`, refusing an index out of range (422) and a move that breaks
/// a step dependency (409). Both `/move` and a `PUT` with `step_index` come here.
async fn move_checked(state: &ApiState, id: Uuid, step_id: i64, to: usize) -> Result<(), ApiError> {
    let (steps, index) = load_step(state, id, step_id).await?;
    if to >= steps.len() {
        return Err(ApiError::unprocessable(format!("step_index must be below {}", steps.len())));
    }
    if !plan::allowed_moves(&action_lists(&steps), index).contains(&to) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("moving step {index} to {to} would break a step dependency"),
        ));
    }
    state.inspector.storage.edit(move |db| db.move_step(id, step_id, to, Utc::now())).await?;
    Ok(())
}

/// The indexes this step may move to without breaking a dependency.
#[utoipa::path(get, path = "/api/v1/assemblies/{id}/steps/{step_id}/allowed-moves", tag = "assemblies", params(("id" = String, Path), ("step_id" = i64, Path)),
    responses((status = 200, description = "done", body = Envelope<Vec<usize>>), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn allowed_moves(
    State(state): State<ApiState>,
    Path((id, step_id)): Path<(String, i64)>,
) -> Result<Json<Envelope<Vec<usize>>>, ApiError> {
    let (steps, index) = load_step(&state, assembly_id(&id)?, step_id).await?;
    Ok(ok(plan::allowed_moves(&action_lists(&steps), index)))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeletableDto {
    deletable: bool,
    /// The steps that depend on this one.
    dependents: Vec<usize>,
}

/// Whether a step may be deleted: no later step may depend on it.
#[utoipa::path(get, path = "/api/v1/assemblies/{id}/steps/{step_id}/deletable", tag = "assemblies", params(("id" = String, Path), ("step_id" = i64, Path)),
    responses((status = 200, description = "done", body = Envelope<DeletableDto>), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn deletable(
    State(state): State<ApiState>,
    Path((id, step_id)): Path<(String, i64)>,
) -> Result<Json<Envelope<DeletableDto>>, ApiError> {
    let (steps, index) = load_step(&state, assembly_id(&id)?, step_id).await?;
    let dependents = plan::dependents(&action_lists(&steps), index);
    Ok(ok(DeletableDto { deletable: dependents.is_empty(), dependents }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDataRequest {
    /// ml, qa-dwell, torque, torque-only, input, output or qa (any case, `_` or `-`).
    data_type: String,
    name: Option<String>,
    /// ml, qa-dwell: the label the model must give (default: the station's decision is pass).
    expected_class: Option<String>,
    /// ml: "continuous" (default) or "trigger".
    mode: Option<String>,
    /// qa-dwell: how long to keep inspecting, seconds.
    dwell_s: Option<f64>,
    /// torque: the wrench (default: the station's only wrench).
    wrench_id: Option<String>,
    program_nr: Option<u32>,
    /// torque: OK tightenings needed.
    count: Option<u32>,
    target_torque: Option<f64>,
    tolerance: Option<f64>,
    /// torque: "rework" (default: a NOK does not count) or "fail" (the first NOK fails the unit).
    nok_policy: Option<String>,
    /// torque, rework: more NOKs than this in the step fail the unit.
    max_nok: Option<u32>,
    /// input, output: the GPIO line's name.
    line: Option<String>,
    /// input, output: the logical level (default true).
    level: Option<bool>,
    /// qa: what the operator confirms.
    prompt: Option<String>,
    /// ml, qa-dwell: the items the image must hold (a detection model); the step matches
    /// when every item is found in its quantity and the station's decision is pass.
    expected_items: Option<Vec<super::routes::ItemRequest>>,
}

impl StepDataRequest {
    fn action(self, state: &ApiState) -> Result<(String, Action), ApiError> {
        let kind = self.data_type.to_ascii_lowercase().replace('_', "-");
        let name = text("name", self.name, 200)?.unwrap_or_default();
        if self.expected_items.is_some() && self.expected_class.is_some() {
            return Err(ApiError::unprocessable("give expected_class or expected_items, not both"));
        }
        // Fields another data type uses are refused rather than silently dropped.
        let set = [
            ("expected_class", self.expected_class.is_some(), &["ml", "qa-dwell"][..]),
            ("expected_items", self.expected_items.is_some(), &["ml", "qa-dwell"]),
            ("mode", self.mode.is_some(), &["ml"]),
            ("dwell_s", self.dwell_s.is_some(), &["qa-dwell"]),
            ("wrench_id", self.wrench_id.is_some(), &["torque", "torque-only"]),
            ("program_nr", self.program_nr.is_some(), &["torque", "torque-only"]),
            ("count", self.count.is_some(), &["torque", "torque-only"]),
            ("target_torque", self.target_torque.is_some(), &["torque", "torque-only"]),
            ("tolerance", self.tolerance.is_some(), &["torque", "torque-only"]),
            ("nok_policy", self.nok_policy.is_some(), &["torque", "torque-only"]),
            ("max_nok", self.max_nok.is_some(), &["torque", "torque-only"]),
            ("line", self.line.is_some(), &["input", "output"]),
            ("level", self.level.is_some(), &["input", "output"]),
            ("prompt", self.prompt.is_some(), &["qa"]),
        ];
        let known = ["ml", "qa-dwell", "torque", "torque-only", "input", "output", "qa"];
        if known.contains(&kind.as_str())
            && let Some((field, _, _)) = set.iter().find(|(_, given, kinds)| *given && !kinds.contains(&kind.as_str()))
        {
            return Err(ApiError::unprocessable(format!("{field} does not apply to data_type {kind}")));
        }
        let line = |line: Option<String>, output: bool| -> Result<String, ApiError> {
            let line = line.ok_or_else(|| ApiError::unprocessable(format!("line is required for {kind}")))?;
            let gpio = state.gpio.as_ref().map(|g| g.config());
            let known =
                gpio.is_some_and(|g| if output { g.outputs.contains_key(&line) } else { g.inputs.contains_key(&line) });
            if !known {
                let what = if output { "output" } else { "input" };
                return Err(ApiError::unprocessable(format!("line: no GPIO {what} {line:?}")));
            }
            Ok(line)
        };
        let action = match kind.as_str() {
            "ml" | "qa-dwell" => {
                let continuous = match self.mode.as_deref() {
                    None | Some("continuous") => true,
                    Some("trigger") => false,
                    Some(other) => {
                        return Err(ApiError::unprocessable(format!(
                            "mode {other:?} is not one of continuous, trigger"
                        )));
                    }
                };
                let dwell = if kind == "qa-dwell" {
                    let s = self.dwell_s.ok_or_else(|| ApiError::unprocessable("dwell_s is required for qa-dwell"))?;
                    if !(s > 0.0 && s <= 3600.0) {
                        return Err(ApiError::unprocessable("dwell_s must be between 0 and 3600"));
                    }
                    Some(chrono::TimeDelta::milliseconds((s * 1000.0) as i64))
                } else {
                    None
                };
                let expected_items = match self.expected_items {
                    Some(list) => super::routes::expected_items("expected_items", list)?,
                    None => Vec::new(),
                };
                Action::Vision(VisionCheck {
                    expected_class: text("expected_class", self.expected_class, 200)?,
                    continuous,
                    dwell,
                    expected_items,
                })
            }
            "torque" | "torque-only" => {
                let count =
                    self.count.ok_or_else(|| ApiError::unprocessable(format!("count is required for {kind}")))?;
                if !(1..=99).contains(&count) {
                    return Err(ApiError::unprocessable("count must be between 1 and 99"));
                }
                if self.program_nr.is_some_and(|p| !(1..=999).contains(&p)) {
                    return Err(ApiError::unprocessable("program_nr must be between 1 and 999"));
                }
                if self.target_torque.is_some() != self.tolerance.is_some() || self.tolerance.is_some_and(|t| t <= 0.0)
                {
                    return Err(ApiError::unprocessable(
                        "target_torque and tolerance go together, with tolerance above 0",
                    ));
                }
                let wrench = self.wrench_id.unwrap_or_default();
                if !wrench.is_empty() && !state.wrenches.ids().contains(&wrench) {
                    return Err(ApiError::unprocessable(format!("wrench_id: no wrench {wrench:?}")));
                }
                let nok = match self.nok_policy.as_deref() {
                    None | Some("rework") => NokPolicy::Rework { max_nok: self.max_nok },
                    Some("fail") => NokPolicy::Fail,
                    Some(other) => {
                        return Err(ApiError::unprocessable(format!(
                            "nok_policy {other:?} is not one of rework, fail"
                        )));
                    }
                };
                Action::Torque(TorqueCheck {
                    wrench,
                    pset: self.program_nr,
                    count,
                    target: self.target_torque,
                    tolerance: self.tolerance,
                    nok,
                    only: kind == "torque-only",
                })
            }
            "input" => Action::Input { line: line(self.line, false)?, active: self.level.unwrap_or(true) },
            "output" => Action::Output { line: line(self.line, true)?, active: self.level.unwrap_or(true) },
            "qa" => Action::Qa { prompt: text("prompt", self.prompt, 1000)?.unwrap_or_else(|| name.clone()) },
            "ocr-check" | "ocr-capture" | "ocr-verify" | "ocr-entry" => {
                return Err(ApiError::unprocessable(format!(
                    "{kind} is not supported yet: stationd has no OCR model to read serial numbers with"
                )));
            }
            "video-only" => {
                return Err(ApiError::unprocessable("video-only is not supported: stationd records no video"));
            }
            other => {
                return Err(ApiError::unprocessable(format!(
                    "data_type {other:?} is not one of ml, qa-dwell, torque, torque-only, input, output, qa"
                )));
            }
        };
        Ok((name, action))
    }
}

/// A step's actions must not mix TORQUE_ONLY with vision.
fn check_mix(step: &Step, replacing: Option<i64>, action: &Action) -> Result<(), ApiError> {
    let mut actions: Vec<&Action> =
        step.actions.iter().filter(|a| Some(a.id) != replacing).map(|a| &a.action).collect();
    actions.push(action);
    let torque_only = actions.iter().any(|a| matches!(a, Action::Torque(t) if t.only));
    let vision = actions.iter().any(|a| matches!(a, Action::Vision(_)));
    if torque_only && vision {
        return Err(ApiError::unprocessable("a torque-only step has no vision check; use torque with ml"));
    }
    Ok(())
}

async fn step_of(state: &ApiState, step_id: i64) -> Result<(Uuid, Step), ApiError> {
    let found = state
        .inspector
        .storage
        .call(move |db| match db.step_assembly(step_id)? {
            Some(assembly) => Ok::<_, crate::storage::StorageError>(db.step(assembly, step_id)?.map(|s| (assembly, s))),
            None => Ok(None),
        })
        .await?;
    found.ok_or_else(|| ApiError::not_found(format!("step {step_id} not found")))
}

/// A step's actions (the seed's StepData), in order.
#[utoipa::path(get, path = "/api/v1/steps/{step_id}/data", tag = "assemblies", params(("step_id" = i64, Path)),
    responses((status = 200, description = "done", body = Envelope<Vec<StepDataDto>>), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn list_step_data(
    State(state): State<ApiState>,
    Path(step_id): Path<i64>,
) -> Result<Json<Envelope<Vec<StepDataDto>>>, ApiError> {
    let (_, step) = step_of(&state, step_id).await?;
    Ok(ok(step.actions.iter().map(StepDataDto::from).collect()))
}

/// Adds an action to the end of a step of a draft revision.
#[utoipa::path(post, path = "/api/v1/steps/{step_id}/data", tag = "assemblies", params(("step_id" = i64, Path)), request_body = StepDataRequest,
    responses((status = 201, description = "created", body = IdDto), (status = 409, description = "the revision is published (frozen)", body = ErrorBody), (status = 422, description = "invalid input, or not supported yet (OCR)", body = ErrorBody), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn create_step_data(
    State(state): State<ApiState>,
    Path(step_id): Path<i64>,
    body: Result<Json<StepDataRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<IdDto>), ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let (assembly, step) = step_of(&state, step_id).await?;
    let (name, action) = body.action(&state)?;
    check_mix(&step, None, &action)?;
    let stored = state
        .inspector
        .storage
        .edit(move |db| db.put_step_action(assembly, step_id, None, &name, &action, Utc::now()))
        .await?;
    Ok((StatusCode::CREATED, Json(IdDto { id: stored.id })))
}

/// Replaces an action of a step of a draft revision.
#[utoipa::path(put, path = "/api/v1/steps/{step_id}/data/{data_id}", tag = "assemblies", params(("step_id" = i64, Path), ("data_id" = i64, Path)), request_body = StepDataRequest,
    responses((status = 200, description = "done", body = IdDto), (status = 409, description = "the revision is published (frozen)", body = ErrorBody), (status = 422, description = "invalid input, or not supported yet (OCR)", body = ErrorBody), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn update_step_data(
    State(state): State<ApiState>,
    Path((step_id, data_id)): Path<(i64, i64)>,
    body: Result<Json<StepDataRequest>, JsonRejection>,
) -> Result<Json<IdDto>, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let (assembly, step) = step_of(&state, step_id).await?;
    let (name, action) = body.action(&state)?;
    check_mix(&step, Some(data_id), &action)?;
    state
        .inspector
        .storage
        .edit(move |db| db.put_step_action(assembly, step_id, Some(data_id), &name, &action, Utc::now()))
        .await?;
    Ok(Json(IdDto { id: data_id }))
}

/// Removes an action from a step of a draft revision.
#[utoipa::path(delete, path = "/api/v1/steps/{step_id}/data/{data_id}", tag = "assemblies", params(("step_id" = i64, Path), ("data_id" = i64, Path)),
    responses((status = 200, description = "done", body = IdDto), (status = 409, description = "the revision is published (frozen)", body = ErrorBody), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn delete_step_data(
    State(state): State<ApiState>,
    Path((step_id, data_id)): Path<(i64, i64)>,
) -> Result<Json<IdDto>, ApiError> {
    let (assembly, _) = step_of(&state, step_id).await?;
    state.inspector.storage.edit(move |db| db.delete_step_action(assembly, step_id, data_id, Utc::now())).await?;
    Ok(Json(IdDto { id: data_id }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OperatorDto {
    id: i64,
    first_name: String,
    last_name: String,
    num_records: u64,
    role: String,
    rfid: Option<String>,
    active: bool,
    has_password: bool,
    created_at: String,
}

impl From<&Operator> for OperatorDto {
    fn from(o: &Operator) -> OperatorDto {
        OperatorDto {
            id: o.id,
            first_name: o.first_name.clone(),
            last_name: o.last_name.clone(),
            num_records: o.num_records,
            role: o.role.clone(),
            rfid: o.rfid.clone(),
            active: o.active,
            has_password: o.has_password,
            created_at: rfc3339(o.created_at),
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorRequest {
    first_name: Option<String>,
    last_name: Option<String>,
    role: Option<String>,
    /// An empty string removes the tag.
    rfid: Option<String>,
    /// An empty string removes the password.
    password: Option<String>,
    active: Option<bool>,
}

fn name_field(key: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.trim().is_empty() || v.chars().count() > 100 => {
            Err(ApiError::unprocessable(format!("{key} must have 1 to 100 characters")))
        }
        other => Ok(other.map(|v| v.trim().to_owned())),
    }
}

/// The password rules for an operator: those of users, and no part of the operator's name.
fn operator_password_rules(first: &str, last: &str, password: &str) -> Result<(), ApiError> {
    crate::auth::check_password_rules("", password).map_err(ApiError::unprocessable)?;
    for part in [first, last] {
        if part.chars().count() >= 3 {
            crate::auth::check_password_rules(part, password)
                .map_err(|_| ApiError::unprocessable("password must not contain the operator's name"))?;
        }
    }
    Ok(())
}

impl OperatorRequest {
    async fn update(self, current: Option<&Operator>) -> Result<OperatorUpdate, ApiError> {
        let first_name = name_field("first_name", self.first_name)?;
        let last_name = name_field("last_name", self.last_name)?;
        let role = match self.role {
            Some(r) if r.trim().is_empty() || r.len() > 32 => {
                return Err(ApiError::unprocessable("role must have 1 to 32 characters"));
            }
            other => other,
        };
        let rfid = match self.rfid {
            Some(tag) if tag.is_empty() => Some(None),
            Some(tag) if tag.len() > 64 || !tag.chars().all(|c| c.is_ascii_graphic()) => {
                return Err(ApiError::unprocessable("rfid must have 1 to 64 printable ASCII characters"));
            }
            other => other.map(Some),
        };
        let password_hash = match self.password {
            Some(p) if p.is_empty() => Some(None),
            Some(p) => {
                let first = first_name.as_deref().or(current.map(|c| c.first_name.as_str())).unwrap_or_default();
                let last = last_name.as_deref().or(current.map(|c| c.last_name.as_str())).unwrap_or_default();
                operator_password_rules(first, last, &p)?;
                Some(Some(super::auth::hash_off_runtime(p).await?))
            }
            None => None,
        };
        Ok(OperatorUpdate { first_name, last_name, role, rfid, password_hash, active: self.active })
    }
}

/// Every operator.
#[utoipa::path(get, path = "/api/v1/operators", tag = "operators",
    responses((status = 200, description = "done", body = Envelope<Vec<OperatorDto>>), Guarded),
    security(("bearer" = [])))]
pub async fn list_operators(State(state): State<ApiState>) -> Result<Json<Envelope<Vec<OperatorDto>>>, ApiError> {
    let all = state.inspector.storage.call(|db| db.operators(false)).await?;
    Ok(ok(all.iter().map(OperatorDto::from).collect()))
}

/// The active operators.
#[utoipa::path(get, path = "/api/v1/operators/active", tag = "operators",
    responses((status = 200, description = "done", body = Envelope<Vec<OperatorDto>>), Guarded),
    security(("bearer" = [])))]
pub async fn active_operators(State(state): State<ApiState>) -> Result<Json<Envelope<Vec<OperatorDto>>>, ApiError> {
    let all = state.inspector.storage.call(|db| db.operators(true)).await?;
    Ok(ok(all.iter().map(OperatorDto::from).collect()))
}

/// Adds an operator (a password is optional: RFID alone may do).
#[utoipa::path(post, path = "/api/v1/operators", tag = "operators", request_body = OperatorRequest,
    responses((status = 201, description = "created", body = Envelope<OperatorDto>), (status = 409, description = "the name or the RFID tag is taken", body = ErrorBody), Guarded, Invalid),
    security(("bearer" = [])))]
pub async fn create_operator(
    State(state): State<ApiState>,
    body: Result<Json<OperatorRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Envelope<OperatorDto>>), ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let update = body.update(None).await?;
    let (Some(first_name), Some(last_name)) = (update.first_name, update.last_name) else {
        return Err(ApiError::unprocessable("first_name and last_name are required"));
    };
    let new = NewOperator {
        first_name,
        last_name,
        role: update.role.unwrap_or_else(|| "operator".into()),
        rfid: update.rfid.flatten(),
        password_hash: update.password_hash.flatten(),
        active: update.active.unwrap_or(true),
    };
    let created = state.inspector.storage.edit(move |db| db.insert_operator(new, Utc::now())).await?;
    Ok((StatusCode::CREATED, ok(OperatorDto::from(&created))))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct NameQuery {
    first_name: String,
    last_name: String,
}

/// The operator with this first and last name (case-insensitive).
#[utoipa::path(get, path = "/api/v1/operators/by-name", tag = "operators", params(NameQuery),
    responses((status = 200, description = "done", body = Envelope<OperatorDto>), Guarded, NotFound, Invalid),
    security(("bearer" = [])))]
pub async fn operator_by_name(
    State(state): State<ApiState>,
    query: Result<Query<NameQuery>, QueryRejection>,
) -> Result<Json<Envelope<OperatorDto>>, ApiError> {
    let Query(query) = query.map_err(super::routes::query_error)?;
    let found =
        state.inspector.storage.call(move |db| db.operator_by_name(&query.first_name, &query.last_name)).await?;
    let found = found.ok_or_else(|| ApiError::not_found("no operator with this name"))?;
    Ok(ok(OperatorDto::from(&found)))
}

/// One operator.
#[utoipa::path(get, path = "/api/v1/operators/{id}", tag = "operators", params(("id" = i64, Path)),
    responses((status = 200, description = "done", body = Envelope<OperatorDto>), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn get_operator(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
) -> Result<Json<Envelope<OperatorDto>>, ApiError> {
    let found = state.inspector.storage.call(move |db| db.operator(id)).await?;
    let found = found.ok_or_else(|| ApiError::not_found(format!("operator {id} not found")))?;
    Ok(ok(OperatorDto::from(&found)))
}

/// Changes an operator: name, role, RFID tag, password, active flag.
#[utoipa::path(put, path = "/api/v1/operators/{id}", tag = "operators", params(("id" = i64, Path)), request_body = OperatorRequest,
    responses((status = 200, description = "done", body = Envelope<OperatorDto>), (status = 409, description = "the name or the RFID tag is taken", body = ErrorBody), Guarded, NotFound, Invalid),
    security(("bearer" = [])))]
pub async fn update_operator(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
    body: Result<Json<OperatorRequest>, JsonRejection>,
) -> Result<Json<Envelope<OperatorDto>>, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let current = state.inspector.storage.call(move |db| db.operator(id)).await?;
    let current = current.ok_or_else(|| ApiError::not_found(format!("operator {id} not found")))?;
    let update = body.update(Some(&current)).await?;
    let updated = state.inspector.storage.edit(move |db| db.update_operator(id, update)).await?;
    Ok(ok(OperatorDto::from(&updated)))
}

/// Deletes an operator who never built a unit (others are deactivated instead).
#[utoipa::path(delete, path = "/api/v1/operators/{id}", tag = "operators", params(("id" = i64, Path)),
    responses((status = 200, description = "done", body = Envelope<String>), (status = 409, description = "the operator built units", body = ErrorBody), Guarded, NotFound),
    security(("bearer" = [])))]
pub async fn delete_operator(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
) -> Result<Json<Envelope<&'static str>>, ApiError> {
    state.inspector.storage.edit(move |db| db.delete_operator(id)).await?;
    Ok(ok(""))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RfidRequest {
    rfid: String,
}

/// The active operator with this RFID tag (badge login at the station).
#[utoipa::path(post, path = "/api/v1/operators/rfid", tag = "operators", request_body = RfidRequest,
    responses((status = 200, description = "done", body = Envelope<OperatorDto>), (status = 401, description = "missing, invalid or expired token, or no active operator has this tag", body = ErrorBody), (status = 403, description = "the caller's role is too low", body = ErrorBody), (status = 429, description = "rate limit exceeded (Retry-After)", body = ErrorBody), Invalid),
    security(("bearer" = [])))]
pub async fn rfid_login(
    State(state): State<ApiState>,
    body: Result<Json<RfidRequest>, JsonRejection>,
) -> Result<Json<Envelope<OperatorDto>>, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let found = state.inspector.storage.call(move |db| db.operator_by_rfid(&body.rfid)).await?;
    match found {
        Some(operator) if operator.active => Ok(ok(OperatorDto::from(&operator))),
        _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, "no active operator has this RFID tag")),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorLoginRequest {
    first_name: String,
    last_name: String,
    password: String,
}

/// Checks an operator's name and password; answers the operator.
#[utoipa::path(post, path = "/api/v1/operators/login", tag = "operators", request_body = OperatorLoginRequest,
    responses((status = 200, description = "done", body = Envelope<OperatorDto>), (status = 401, description = "missing, invalid or expired token, or wrong name or password", body = ErrorBody), (status = 403, description = "the caller's role is too low", body = ErrorBody), (status = 429, description = "rate limit exceeded (Retry-After)", body = ErrorBody), Invalid),
    security(("bearer" = [])))]
pub async fn operator_login(
    State(state): State<ApiState>,
    body: Result<Json<OperatorLoginRequest>, JsonRejection>,
) -> Result<Json<Envelope<OperatorDto>>, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let (first, last) = (body.first_name.clone(), body.last_name.clone());
    let found = state
        .inspector
        .storage
        .call(move |db| match db.operator_by_name(&first, &last)? {
            Some(op) => {
                let hash = db.operator_password_hash(op.id)?;
                Ok::<_, crate::storage::StorageError>(Some((op, hash)))
            }
            None => Ok(None),
        })
        .await?;
    // The same work and the same answer whether or not the operator exists.
    let (operator, hash) = match found {
        Some((op, Some(hash))) if op.active => (Some(op), hash),
        _ => (None, crate::auth::decoy_hash().to_owned()),
    };
    let verified = super::auth::verify_off_runtime(body.password, hash).await?;
    match operator {
        Some(operator) if verified => Ok(ok(OperatorDto::from(&operator))),
        _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong name or password")),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordCheckRequest {
    password: String,
    first_name: Option<String>,
    last_name: Option<String>,
}

/// Checks a password against the rules without storing it.
#[utoipa::path(post, path = "/api/v1/operators/validate-password", tag = "operators", request_body = PasswordCheckRequest,
    responses((status = 200, description = "the password meets the rules", body = Envelope<String>), (status = 422, description = "the rule it breaks", body = ErrorBody), Guarded),
    security(("bearer" = [])))]
pub async fn validate_password(
    body: Result<Json<PasswordCheckRequest>, JsonRejection>,
) -> Result<Json<Envelope<&'static str>>, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let (first, last) = (body.first_name.unwrap_or_default(), body.last_name.unwrap_or_default());
    operator_password_rules(&first, &last, &body.password)?;
    Ok(ok(""))
}
