//! REST handlers under /api/v1. Each validates its input, calls the cycle or storage, and
//! maps the result to a DTO; no station rules here.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{TimeDelta, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::ApiState;
use super::dto::OpcuaStatusDto;
use super::dto::{
    Health, InspectionDto, InspectionList, ItemDto, MqttStationDto, MqttStatusDto, Ready, RecipeDto, RecipeList,
    ServiceStateDto, StationDto, StationList, StatisticsDto, TrendsDto,
};
use super::error::ApiError;
#[allow(unused_imports, reason = "named by the OpenAPI attributes")]
use super::error::{ErrorBody, Guarded, Invalid, NotFound, Unavailable};
use crate::core::decision::Decision;
use crate::core::expected::{self, Expectation, ExpectedItem};
use crate::cycle::{CycleImage, ImageFormat, InspectRequest};
use crate::inference::decode_image;
use crate::storage::{ListFilter, TrendInterval};
use crate::supervisor::ServiceState;

/// Liveness: the daemon answers.
#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "health",
    responses((status = 200, description = "the daemon runs", body = Health))
)]
pub async fn health() -> Json<Health> {
    Json(Health { status: "healthy", version: env!("CARGO_PKG_VERSION") })
}

/// Readiness of every service; 503 while one is starting or degraded.
#[utoipa::path(
    get,
    path = "/api/v1/ready",
    tag = "health",
    responses((status = 200, description = "every service is ready", body = Ready), (status = 503, description = "starting or degraded: the services and why", body = Ready))
)]
pub async fn ready(State(state): State<ApiState>) -> Response {
    let report = state.readiness.report();
    let degraded = report.iter().any(|(_, s)| matches!(s, ServiceState::Degraded(_)));
    let all = report.iter().all(|(_, s)| *s == ServiceState::Ready);
    let services: BTreeMap<String, ServiceStateDto> = report
        .into_iter()
        .map(|(name, state)| {
            let dto = match state {
                ServiceState::Starting => ServiceStateDto { state: "starting", detail: None },
                ServiceState::Ready => ServiceStateDto { state: "ready", detail: None },
                ServiceState::Degraded(reason) => ServiceStateDto { state: "degraded", detail: Some(reason) },
            };
            (name, dto)
        })
        .collect();
    let status_text = if all {
        "ready"
    } else if degraded {
        "degraded"
    } else {
        "starting"
    };
    let status = if all { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Ready { status: status_text, services })).into_response()
}

/// Largest station_id / part_id form values, bytes.
const MAX_TEXT_FIELD: usize = 128;

/// Inspects an uploaded image; answers once the record is committed.
#[utoipa::path(
    post,
    path = "/api/v1/inspect",
    tag = "inspections",
    request_body(content_type = "multipart/form-data", description = "fields: file (jpeg, png, bmp, tiff or webp), station_id, part_id, and either recipe (a name under [recipes]) or expected_items (JSON: [{\"name\": \"bolt\", \"quantity\": 4, \"aliases\": [\"M8 bolt\"]}]); without either, the station's recipe applies"),
    responses((status = 201, description = "inspected and committed; Location names the record", body = InspectionDto), (status = 409, description = "expected items, but the active model is not a detection model", body = ErrorBody), (status = 413, description = "upload too large", body = ErrorBody), (status = 415, description = "unsupported media type", body = ErrorBody), Guarded, Invalid, Unavailable),
    security(("bearer" = []))
)]
pub async fn inspect_upload(
    State(state): State<ApiState>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    // The only rejection is a body that is not multipart/form-data with a boundary.
    let mut multipart = multipart.map_err(|_| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send multipart/form-data with a `file` field (and optional station_id, part_id)",
        )
    })?;
    let mut file = None;
    let mut station_id = None;
    let mut part_id = None;
    let (mut recipe, mut items) = (None, None);
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "file" => {
                let declared = field.content_type().map(str::to_owned);
                let mut bytes = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    if bytes.len() + chunk.len() > state.max_upload_bytes {
                        return Err(ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("file is larger than {} MB", state.max_upload_bytes / (1024 * 1024)),
                        ));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                file = Some((declared, bytes));
            }
            "station_id" | "part_id" => {
                let text = field.text().await.map_err(multipart_error)?;
                if text.len() > MAX_TEXT_FIELD {
                    return Err(ApiError::unprocessable(format!("{name} is longer than {MAX_TEXT_FIELD} bytes")));
                }
                if name == "station_id" { station_id = Some(text) } else { part_id = Some(text) }
            }
            "recipe" => recipe = Some(field.text().await.map_err(multipart_error)?),
            "expected_items" => {
                let text = field.text().await.map_err(multipart_error)?;
                if text.len() > MAX_EXPECTED_ITEMS_JSON {
                    return Err(ApiError::unprocessable(format!(
                        "expected_items is longer than {MAX_EXPECTED_ITEMS_JSON} bytes"
                    )));
                }
                items = Some(text);
            }
            other => {
                return Err(ApiError::unprocessable(format!(
                    "unknown form field {other:?}; expected file, station_id, part_id, recipe, expected_items"
                )));
            }
        }
    }
    let (declared, bytes) = file.ok_or_else(|| ApiError::unprocessable("form field `file` is required"))?;
    if bytes.is_empty() {
        return Err(ApiError::unprocessable("form field `file` is empty"));
    }
    let format = upload_format(declared.as_deref(), &bytes)?;
    let station_id = station_id.filter(|s| !s.is_empty()).unwrap_or_else(|| "default".to_owned());
    let expected = expectation(&state, recipe, items)?;
    let request = InspectRequest {
        station_id,
        part_id: part_id.filter(|p| !p.is_empty()),
        image: CycleImage::Upload { bytes: bytes.into(), format },
        triggered_at: Instant::now(),
        expected,
    };
    created(state.inspector.inspect(request).await?)
}

/// Largest `expected_items` form value, bytes.
const MAX_EXPECTED_ITEMS_JSON: usize = 64 * 1024;

/// One expected item as a client sends it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemRequest {
    name: String,
    quantity: u32,
    /// Other class names the item may be detected as.
    #[serde(default)]
    aliases: Vec<String>,
}

/// A client's list, validated (422 naming the item at fault).
pub(crate) fn expected_items(field: &str, list: Vec<ItemRequest>) -> Result<Vec<ExpectedItem>, ApiError> {
    let items: Vec<ExpectedItem> =
        list.into_iter().map(|i| ExpectedItem { name: i.name, quantity: i.quantity, aliases: i.aliases }).collect();
    expected::validate(&items).map_err(|err| ApiError::unprocessable(format!("{field}: {err}")))?;
    Ok(items)
}

/// What a trigger asks the image to hold: a recipe by name, or a list (JSON). 422 for an
/// unknown recipe, both at once, or a list that does not parse or validate.
pub(crate) fn expectation(
    state: &ApiState,
    recipe: Option<String>,
    items: Option<String>,
) -> Result<Option<Expectation>, ApiError> {
    match (recipe.filter(|r| !r.is_empty()), items.filter(|i| !i.trim().is_empty())) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(ApiError::unprocessable("give recipe or expected_items, not both")),
        (Some(name), None) => state.inspector.recipe(&name).map(Some).ok_or_else(|| {
            let known: Vec<&String> = state.inspector.recipes().keys().collect();
            ApiError::unprocessable(format!("no recipe {name:?}; the config has {known:?}"))
        }),
        (None, Some(json)) => {
            let parsed: Vec<ItemRequest> =
                serde_json::from_str(&json).map_err(|err| ApiError::unprocessable(format!("expected_items: {err}")))?;
            Ok(Some(Expectation { recipe: None, items: expected_items("expected_items", parsed)? }))
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CameraQuery {
    station_id: Option<String>,
    part_id: Option<String>,
    /// A recipe under [recipes] whose items the image must hold (default: the station's).
    recipe: Option<String>,
}

/// Captures a fresh frame from the station's camera and inspects it.
#[utoipa::path(
    post,
    path = "/api/v1/inspect/camera",
    tag = "inspections",
    params(CameraQuery),
    responses((status = 201, description = "captured, inspected and committed", body = InspectionDto), (status = 409, description = "conflicts with the current state", body = ErrorBody), Guarded, Invalid, Unavailable),
    security(("bearer" = []))
)]
pub async fn inspect_camera(
    State(state): State<ApiState>,
    query: Result<Query<CameraQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let expected = expectation(&state, query.recipe, None)?;
    let request = InspectRequest {
        station_id: query.station_id.unwrap_or_else(|| "default".to_owned()),
        part_id: query.part_id.filter(|p| !p.is_empty()),
        image: CycleImage::Camera,
        triggered_at: Instant::now(),
        expected,
    };
    created(state.inspector.inspect(request).await?)
}

/// 201 with a Location: the record is committed when this is sent.
fn created(record: crate::storage::InspectionRecord) -> Result<Response, ApiError> {
    let location = HeaderValue::from_str(&format!("/api/v1/inspections/{}", record.id)).expect("ascii");
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(InspectionDto::from(&record))).into_response())
}

const DECLARED_OK: [&str; 10] = [
    "image/jpeg",
    "image/jpg",
    "image/pjpeg",
    "image/png",
    "image/bmp",
    "image/x-bmp",
    "image/x-ms-bmp",
    "image/tiff",
    "image/webp",
    "application/octet-stream",
];

/// 415 for anything that is not one of the five accepted formats, by declared type and by
/// content; 422 for a file that claims an accepted image type but is not one.
fn upload_format(declared: Option<&str>, bytes: &[u8]) -> Result<ImageFormat, ApiError> {
    let unsupported = |what: &str| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported media type {what}; send jpeg, png, bmp, tiff or webp"),
        )
    };
    let declared = declared.map(|d| d.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    if let Some(d) = &declared
        && !DECLARED_OK.contains(&d.as_str())
    {
        return Err(unsupported(d));
    }
    match image::guess_format(bytes) {
        Ok(found) => {
            crate::cycle::accepted_format(found).ok_or_else(|| unsupported(&format!("{found:?}").to_ascii_lowercase()))
        }
        Err(_) if declared.as_deref().is_some_and(|d| d.starts_with("image/")) => {
            Err(ApiError::unprocessable("the image cannot be decoded: content does not match its type"))
        }
        Err(_) => Err(unsupported("(not an image)")),
    }
}

pub(crate) fn multipart_error(err: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::new(err.status(), format!("bad multipart body: {}", err.body_text()))
}

pub(super) fn query_error(err: QueryRejection) -> ApiError {
    ApiError::unprocessable(format!("bad query: {}", err.body_text()))
}

fn id_from(path: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let Path(raw) = path.map_err(|err| ApiError::bad_request(err.body_text()))?;
    Uuid::parse_str(&raw).map_err(|_| ApiError::not_found(format!("no inspection {raw:?}")))
}

fn decision_from(text: Option<&str>) -> Result<Option<Decision>, ApiError> {
    text.map(|d| {
        Decision::parse(d)
            .ok_or_else(|| ApiError::unprocessable(format!("decision must be pass, fail or uncertain, not {d:?}")))
    })
    .transpose()
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    station_id: Option<String>,
    decision: Option<String>,
    limit: Option<u32>,
    offset: Option<u64>,
}

pub const MAX_LIST_LIMIT: u32 = 500;

/// Inspection records, newest first, filtered and paged.
#[utoipa::path(
    get,
    path = "/api/v1/inspections",
    tag = "inspections",
    params(ListQuery),
    responses((status = 200, description = "done", body = InspectionList), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn list_inspections(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<InspectionList>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::unprocessable(format!("limit must be between 1 and {MAX_LIST_LIMIT}")));
    }
    let offset = query.offset.unwrap_or(0);
    let filter =
        ListFilter { station_id: query.station_id, decision: decision_from(query.decision.as_deref())?, since: None };
    let (records, total) = state.inspector.storage.call(move |db| db.list(&filter, limit, offset)).await?;
    Ok(Json(InspectionList { total, limit, offset, inspections: records.iter().map(InspectionDto::from).collect() }))
}

/// One inspection record.
#[utoipa::path(
    get,
    path = "/api/v1/inspections/{id}",
    tag = "inspections",
    params(("id" = String, Path)),
    responses((status = 200, description = "done", body = InspectionDto), Guarded, NotFound),
    security(("bearer" = []))
)]
pub async fn get_inspection(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<InspectionDto>, ApiError> {
    let id = id_from(path)?;
    let record = state.inspector.storage.call(move |db| db.get(id)).await?;
    record.map(|r| Json(InspectionDto::from(&r))).ok_or_else(|| ApiError::not_found(format!("no inspection {id}")))
}

/// Deletes an inspection record and its image.
#[utoipa::path(
    delete,
    path = "/api/v1/inspections/{id}",
    tag = "inspections",
    params(("id" = String, Path)),
    responses((status = 204, description = "done"), Guarded, NotFound),
    security(("bearer" = []))
)]
pub async fn delete_inspection(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = id_from(path)?;
    if state.inspector.storage.call(move |db| db.delete(id)).await? {
        tracing::info!(%id, "inspection deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no inspection {id}")))
    }
}

/// The stored image of an inspection.
#[utoipa::path(
    get,
    path = "/api/v1/inspections/{id}/image",
    tag = "inspections",
    params(("id" = String, Path)),
    responses((status = 200, description = "the stored image, in its format", content_type = "image/*", body = Vec<u8>), Guarded, NotFound),
    security(("bearer" = []))
)]
pub async fn inspection_image(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = id_from(path)?;
    let found = state
        .inspector
        .storage
        .call(move |db| Ok(db.get(id)?.and_then(|r| r.image).map(|image| (db.image_path(&image), image.content_type))))
        .await?;
    let (path, content_type) = found.ok_or_else(|| ApiError::not_found(format!("no image for inspection {id}")))?;
    let bytes = tokio::fs::read(&path).await.map_err(|err| {
        tracing::error!(cause = %err, path = %path.display(), "stored image unreadable");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "stored image unreadable; see the station log")
    })?;
    let content_type =
        HeaderValue::from_str(&content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}

/// An anomaly inspection's heatmap: its patch scores in colour over the stored image
/// (blue normal, red at and beyond the fail threshold), as PNG.
#[utoipa::path(
    get,
    path = "/api/v1/inspections/{id}/heatmap",
    tag = "inspections",
    params(("id" = String, Path)),
    responses((status = 200, description = "the heatmap over the image", content_type = "image/png", body = Vec<u8>), Guarded, NotFound),
    security(("bearer" = []))
)]
pub async fn inspection_heatmap(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = id_from(path)?;
    let found = state
        .inspector
        .storage
        .call(move |db| Ok(db.get(id)?.map(|r| (r.anomaly_map, r.image.map(|image| db.image_path(&image))))))
        .await?;
    let (map, image) = found.ok_or_else(|| ApiError::not_found(format!("no inspection {id}")))?;
    let map = map.ok_or_else(|| ApiError::not_found(format!("inspection {id} has no anomaly map")))?;
    let png = tokio::task::spawn_blocking(move || {
        // A missing or unreadable image still gives the map, on grey.
        let image = image.and_then(|path| std::fs::read(path).ok()).and_then(|b| decode_image(&b).ok());
        let rendered = crate::patchcore::render_heatmap(image, &map);
        let mut png = Vec::new();
        rendered.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).map(|()| png)
    })
    .await
    .map_err(|err| ApiError::internal(&err))?
    .map_err(|err| ApiError::internal(&err))?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("image/png"))], png).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StatisticsQuery {
    hours: Option<u32>,
    station_id: Option<String>,
    interval: Option<String>,
}

fn hours_from(hours: Option<u32>, default: u32) -> Result<u32, ApiError> {
    let hours = hours.unwrap_or(default);
    if (1..=168).contains(&hours) { Ok(hours) } else { Err(ApiError::unprocessable("hours must be between 1 and 168")) }
}

/// Counts and pass rate over a period, per station or for all.
#[utoipa::path(
    get,
    path = "/api/v1/statistics",
    tag = "inspections",
    params(StatisticsQuery),
    responses((status = 200, description = "done", body = StatisticsDto), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn statistics(
    State(state): State<ApiState>,
    query: Result<Query<StatisticsQuery>, QueryRejection>,
) -> Result<Json<StatisticsDto>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    if query.interval.is_some() {
        return Err(ApiError::unprocessable("interval belongs to /statistics/trends"));
    }
    let hours = hours_from(query.hours, 24)?;
    let filter = ListFilter {
        station_id: query.station_id.clone(),
        decision: None,
        since: Some(Utc::now() - TimeDelta::hours(hours as i64)),
    };
    let stats = state.inspector.storage.call(move |db| db.statistics(&filter)).await?;
    Ok(Json(StatisticsDto::new(stats, hours, query.station_id)))
}

/// Counts per hour or day over a period.
#[utoipa::path(
    get,
    path = "/api/v1/statistics/trends",
    tag = "inspections",
    params(StatisticsQuery),
    responses((status = 200, description = "done", body = TrendsDto), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn trends(
    State(state): State<ApiState>,
    query: Result<Query<StatisticsQuery>, QueryRejection>,
) -> Result<Json<TrendsDto>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let hours = hours_from(query.hours, 24)?;
    let interval = match query.interval.as_deref().unwrap_or("hour") {
        "hour" => TrendInterval::Hour,
        "day" => TrendInterval::Day,
        other => return Err(ApiError::unprocessable(format!("interval must be hour or day, not {other:?}"))),
    };
    let now = Utc::now();
    let filter =
        ListFilter { station_id: query.station_id, decision: None, since: Some(now - TimeDelta::hours(hours as i64)) };
    let buckets = state.inspector.storage.call(move |db| db.trends(&filter, interval, now)).await?;
    Ok(Json(TrendsDto::new(buckets, interval)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    station_id: Option<String>,
    decision: Option<String>,
    hours: Option<u32>,
}

/// Rows per storage round trip while streaming the CSV: memory stays flat however long
/// the history is.
const EXPORT_PAGE: u32 = 500;

/// Inspection records as CSV.
#[utoipa::path(
    get,
    path = "/api/v1/inspections/export",
    tag = "inspections",
    params(ExportQuery),
    responses((status = 200, description = "the records as CSV", content_type = "text/csv", body = String), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn export_csv(
    State(state): State<ApiState>,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let since = match query.hours {
        Some(hours) => Some(Utc::now() - TimeDelta::hours(hours_from(Some(hours), 24)? as i64)),
        None => None,
    };
    let filter =
        ListFilter { station_id: query.station_id, decision: decision_from(query.decision.as_deref())?, since };
    let storage = state.inspector.storage.clone();
    // State: (last seq sent, header written, finished).
    let stream = futures_util::stream::unfold((0i64, false, false), move |(after, header_done, finished)| {
        let (storage, filter) = (storage.clone(), filter.clone());
        async move {
            if finished {
                return None;
            }
            let page = match storage.call(move |db| db.page_after(&filter, after, EXPORT_PAGE)).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::error!(cause = %err, "CSV export aborted");
                    return Some((Err(std::io::Error::other(err.to_string())), (after, true, true)));
                }
            };
            let last = page.last().map_or(after, |r| r.seq);
            let done = page.len() < EXPORT_PAGE as usize;
            Some((csv_chunk(&page, !header_done), (last, true, done)))
        }
    });
    let headers = HeaderMap::from_iter([
        (header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8")),
        (header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"inspections.csv\"")),
    ]);
    Ok((headers, Body::from_stream(stream)).into_response())
}

fn csv_chunk(records: &[crate::storage::InspectionRecord], with_header: bool) -> Result<Vec<u8>, std::io::Error> {
    let mut writer = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
    if with_header {
        writer.write_record([
            "seq",
            "id",
            "timestamp",
            "station_id",
            "part_id",
            "source",
            "decision",
            "confidence",
            "label",
            "objects_found",
            "defects",
            "total_time_ms",
            "inference_time_ms",
            "model",
            "model_version",
            "image_url",
        ])?;
    }
    for r in records {
        let dto = InspectionDto::from(r);
        let defects: Vec<String> = r.defects.iter().map(|d| d.class_name.clone()).collect();
        writer.write_record([
            r.seq.to_string(),
            dto.id,
            dto.timestamp,
            dto.station_id,
            dto.part_id.unwrap_or_default(),
            dto.source,
            dto.decision.to_owned(),
            format!("{:.4}", dto.confidence),
            dto.label.unwrap_or_default(),
            dto.objects_found.to_string(),
            defects.join(";"),
            dto.total_time_ms.to_string(),
            dto.inference_time_ms.to_string(),
            dto.model.name,
            dto.model.version,
            dto.image_url.unwrap_or_default(),
        ])?;
    }
    writer.into_inner().map_err(|err| std::io::Error::other(err.to_string()))
}

/// Each station's live counters and rolling one-hour pass rate.
#[utoipa::path(
    get,
    path = "/api/v1/stations",
    tag = "inspections",
    responses((status = 200, description = "done", body = StationList), Guarded),
    security(("bearer" = []))
)]
pub async fn stations(State(state): State<ApiState>) -> Json<StationList> {
    let snapshot = state.snapshots.borrow().clone();
    let stations = snapshot.stations.iter().map(|(id, s)| StationDto::new(id, s)).collect();
    Json(StationList { stations })
}

/// The recipes under `[recipes]` in the config: the items a kit or tray must hold, and the
/// stations that check each by default.
#[utoipa::path(
    get,
    path = "/api/v1/recipes",
    tag = "inspections",
    responses((status = 200, description = "done", body = RecipeList), Guarded),
    security(("bearer" = []))
)]
pub async fn recipes(State(state): State<ApiState>) -> Json<RecipeList> {
    let recipes = state.inspector.recipes().iter().map(|(name, items)| RecipeDto {
        name: name.clone(),
        items: ItemDto::list(items),
        stations: state.inspector.stations_with_recipe(name),
    });
    Json(RecipeList { recipes: recipes.collect() })
}

/// MQTT link and outbox backlog per station.
#[utoipa::path(
    get,
    path = "/api/v1/mqtt/status",
    tag = "plant interfaces",
    responses((status = 200, description = "done", body = MqttStatusDto), Guarded),
    security(("bearer" = []))
)]
pub async fn mqtt_status(State(state): State<ApiState>) -> Result<Json<MqttStatusDto>, ApiError> {
    let Some(mqtt) = &state.mqtt else {
        return Ok(Json(MqttStatusDto { enabled: false, broker: None, stations: Vec::new() }));
    };
    let mut stations = Vec::new();
    for (station_id, link) in &mqtt.links {
        let link = link.borrow().clone();
        let id = station_id.clone();
        let (backlog, oldest) = state.inspector.storage.call(move |db| db.outbox_backlog(&id)).await?;
        stations.push(MqttStationDto {
            station_id: station_id.clone(),
            connected: link.connected,
            backlog,
            oldest_pending_age_s: oldest.map(|at| (Utc::now() - at).num_milliseconds() as f64 / 1000.0),
            delivered: link.delivered,
            last_error: link.last_error,
        });
    }
    Ok(Json(MqttStatusDto { enabled: true, broker: Some(mqtt.broker.clone()), stations }))
}

/// OPC-UA server endpoint and sessions.
#[utoipa::path(
    get,
    path = "/api/v1/opcua/status",
    tag = "plant interfaces",
    responses((status = 200, description = "done", body = OpcuaStatusDto), Guarded),
    security(("bearer" = []))
)]
pub async fn opcua_status(State(state): State<ApiState>) -> Json<OpcuaStatusDto> {
    let station_count = state.inspector.station_ids().count();
    Json(match &state.opcua {
        Some(opcua) => OpcuaStatusDto {
            enabled: true,
            running: *opcua.running.borrow(),
            endpoint: Some(opcua.endpoint.clone()),
            station_count,
            nodes: opcua.nodes.clone(),
        },
        None => OpcuaStatusDto { enabled: false, running: false, endpoint: None, station_count, nodes: Vec::new() },
    })
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// GET /metrics: Prometheus text exposition. Device and backlog gauges are read from the
/// services' own state at scrape time.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4", body = String))
)]
pub async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let metrics = &state.metrics;
    for (service, service_state) in state.readiness.report() {
        let up = service_state == crate::supervisor::ServiceState::Ready;
        match service.strip_prefix("camera[").and_then(|s| s.strip_suffix(']')) {
            Some(camera) => metrics.device_up("camera", camera, up),
            None if matches!(service.as_str(), "gpio" | "opcua" | "modbus") => {
                metrics.device_up(&service, &service, up)
            }
            None => {}
        }
    }
    for wrench in state.wrenches.statuses() {
        metrics.device_up("wrench", &wrench.settings.id, wrench.link == crate::south::wrench::LinkState::Up);
    }
    if let Some(mqtt) = &state.mqtt {
        for (station, link) in &mqtt.links {
            metrics.device_up("mqtt", station, link.borrow().connected);
            let id = station.clone();
            if let Ok((backlog, _)) = state.inspector.storage.call(move |db| db.outbox_backlog(&id)).await {
                metrics.outbox_backlog(station, backlog);
            }
        }
    }
    metrics.model_ready(state.inspector.inference.model().is_some());
    let text = metrics.render();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}

/// GET /api/v1/storage: what the state directory holds, by kind.
#[utoipa::path(
    get,
    path = "/api/v1/storage",
    tag = "storage",
    responses((status = 200, description = "done", body = super::dto::StorageDto), Guarded),
    security(("bearer" = []))
)]
pub async fn storage(State(state): State<ApiState>) -> Result<Json<super::dto::StorageDto>, ApiError> {
    use super::dto::{ImagesDto, RecordsDto, StorageDto};
    let usage = state.inspector.storage.call(|db| db.usage()).await?;
    Ok(Json(StorageDto {
        state_dir: state.state_dir.display().to_string(),
        database_bytes: usage.database_bytes,
        wal_bytes: usage.wal_bytes,
        images: ImagesDto { count: usage.images, bytes: usage.image_bytes },
        records: RecordsDto {
            inspections: usage.inspections,
            tightenings: usage.tightenings,
            pipeline_events: usage.pipeline_events,
        },
        outbox_pending: usage.outbox_pending,
        image_retention_days: state.image_retention.map(|keep| keep.as_secs() / 86_400),
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CleanupBody {
    /// Images of inspections older than this many days go; their records stay.
    older_than_days: u32,
}

/// POST /api/v1/storage/cleanup {"older_than_days": 30}
#[utoipa::path(
    post,
    path = "/api/v1/storage/cleanup",
    tag = "storage",
    request_body = CleanupBody,
    responses((status = 200, description = "done", body = super::dto::CleanupDto), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn storage_cleanup(
    State(state): State<ApiState>,
    body: Result<Json<CleanupBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<super::dto::CleanupDto>, ApiError> {
    let Json(body) = body.map_err(super::wrenches::json_error)?;
    if !(1..=36_500).contains(&body.older_than_days) {
        return Err(ApiError::unprocessable("older_than_days must be between 1 and 36500"));
    }
    let cutoff = Utc::now() - chrono::TimeDelta::days(i64::from(body.older_than_days));
    let cleanup = state.inspector.storage.call(move |db| db.remove_images_before(cutoff)).await?;
    tracing::info!(images = cleanup.images_removed, bytes = cleanup.bytes_freed, "storage cleanup by request");
    Ok(Json(super::dto::CleanupDto { images_removed: cleanup.images_removed, bytes_freed: cleanup.bytes_freed }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_format_rules() {
        let jpeg = std::fs::read("examples/parts/00_ok.jpg").unwrap();
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        let status = |declared: Option<&str>, bytes: &[u8]| {
            upload_format(declared, bytes).map(|f| f.extension).map_err(|e| e.status.as_u16())
        };
        assert_eq!(status(Some("image/jpeg"), &jpeg), Ok("jpg"));
        assert_eq!(status(None, &jpeg), Ok("jpg"));
        assert_eq!(status(Some("application/octet-stream"), &jpeg), Ok("jpg"));
        assert_eq!(status(Some("image/gif"), gif), Err(415));
        assert_eq!(status(Some("image/png"), gif), Err(415));
        assert_eq!(status(Some("text/plain"), b"hello"), Err(415));
        assert_eq!(status(None, b"hello"), Err(415));
        assert_eq!(status(Some("image/png"), b"hello"), Err(422));
    }
}
