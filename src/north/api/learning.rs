//! Active learning (the inspection seed): uncertain results wait for a label.
//! `GET /api/v1/learning/stats` (queue counts), `GET /learning/next?limit=` (the next
//! images to label), `POST /learning/{id}` (send any result for review),
//! `POST /learning/{id}/annotations` (the seed's `{annotations: [{class_name, bbox}],
//! reviewed_by}`) and `GET /learning/export?format=yolo|coco|classification`: a zip of
//! the labelled images and their labels, for retraining elsewhere.

use std::io::Write;
use std::path::Path;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ApiState;
use super::auth::Caller;
use super::dto::{DetectionDto, rfc3339};
use super::error::ApiError;
#[allow(unused_imports, reason = "named by the OpenAPI attributes")]
use super::error::{ErrorBody, Guarded, Invalid, NotFound};
use crate::storage::{Annotation, Enqueued, ReviewItem};

#[derive(Serialize, utoipa::ToSchema)]
pub struct LearningStats {
    /// Waiting for a label.
    pending: u64,
    /// Labelled, not yet in an exported dataset.
    labeled: u64,
    /// In an exported dataset (the seed's `trained`: stationd does not train on the station).
    exported: u64,
}

impl From<crate::storage::LearningCounts> for LearningStats {
    fn from(counts: crate::storage::LearningCounts) -> LearningStats {
        LearningStats { pending: counts.pending, labeled: counts.labeled, exported: counts.exported }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/learning/stats",
    tag = "learning",
    responses((status = 200, description = "done", body = LearningStats), Guarded),
    security(("bearer" = []))
)]
pub async fn stats(State(state): State<ApiState>) -> Result<Json<LearningStats>, ApiError> {
    let counts = state.inspector.storage.call(|db| db.learning_counts()).await?;
    Ok(Json(counts.into()))
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnnotationDto {
    class_name: String,
    /// `[x1, y1, x2, y2]` in image pixels; leave out for a label of the whole image.
    #[serde(default)]
    bbox: Option<[f32; 4]>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReviewItemDto {
    inspection_id: String,
    station_id: String,
    /// `uncertain` or `requested`.
    reason: String,
    decision: &'static str,
    confidence: f32,
    label: Option<String>,
    detections: Vec<DetectionDto>,
    image_url: String,
    image_width: u32,
    image_height: u32,
    inspected_at: String,
    queued_at: String,
    reviewed_by: Option<String>,
    reviewed_at: Option<String>,
    annotations: Vec<AnnotationDto>,
}

impl From<&ReviewItem> for ReviewItemDto {
    fn from(item: &ReviewItem) -> ReviewItemDto {
        let r = &item.record;
        ReviewItemDto {
            inspection_id: r.id.to_string(),
            station_id: r.station_id.clone(),
            reason: item.reason.clone(),
            decision: r.decision.as_str(),
            confidence: r.confidence,
            label: r.label.clone(),
            detections: DetectionDto::all(r),
            image_url: format!("/api/v1/inspections/{}/image", r.id),
            image_width: r.image_width,
            image_height: r.image_height,
            inspected_at: rfc3339(r.inspected_at),
            queued_at: rfc3339(item.queued_at),
            reviewed_by: item.reviewed_by.clone(),
            reviewed_at: item.reviewed_at.map(rfc3339),
            annotations: item
                .annotations
                .iter()
                .map(|a| AnnotationDto { class_name: a.class_name.clone(), bbox: a.bbox })
                .collect(),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReviewList {
    items: Vec<ReviewItemDto>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct NextQuery {
    /// 1 to 100; 10 when left out.
    limit: Option<u32>,
}

/// The oldest results waiting for a label.
#[utoipa::path(
    get,
    path = "/api/v1/learning/next",
    tag = "learning",
    params(NextQuery),
    responses((status = 200, description = "done", body = ReviewList), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn next(
    State(state): State<ApiState>,
    query: Result<Query<NextQuery>, QueryRejection>,
) -> Result<Json<ReviewList>, ApiError> {
    let Query(query) = query.map_err(super::routes::query_error)?;
    let limit = query.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::unprocessable("limit must be within 1..=100"));
    }
    let items = state.inspector.storage.call(move |db| db.learning_next(limit)).await?;
    Ok(Json(ReviewList { items: items.iter().map(ReviewItemDto::from).collect() }))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found("no such inspection"))
}

/// Sends a result for review (one that looks wrong to someone). 201 when queued, 200
/// when it already was.
#[utoipa::path(
    post,
    path = "/api/v1/learning/{id}",
    tag = "learning",
    params(("id" = String, Path, description = "an inspection id")),
    responses(
        (status = 201, description = "queued"),
        (status = 200, description = "already queued"),
        (status = 409, description = "the inspection's image is gone", body = ErrorBody),
        Guarded, NotFound
    ),
    security(("bearer" = []))
)]
pub async fn enqueue(State(state): State<ApiState>, UrlPath(id): UrlPath<String>) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    match state.inspector.storage.call(move |db| db.enqueue_for_review(id, Utc::now())).await? {
        Enqueued::Queued => Ok(StatusCode::CREATED),
        Enqueued::AlreadyQueued => Ok(StatusCode::OK),
        Enqueued::NoInspection => Err(ApiError::not_found("no such inspection")),
        Enqueued::NoImage => {
            Err(ApiError::new(StatusCode::CONFLICT, "the inspection's image was removed; there is nothing to label"))
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnnotationsBody {
    /// Empty: the image shows nothing to label (a background image).
    annotations: Vec<AnnotationDto>,
    /// Who labelled it; the caller's user name when left out.
    reviewed_by: Option<String>,
}

const MAX_ANNOTATIONS: usize = 500;

/// Labels a queued result. The labels replace earlier ones.
#[utoipa::path(
    post,
    path = "/api/v1/learning/{id}/annotations",
    tag = "learning",
    params(("id" = String, Path, description = "an inspection id in the queue")),
    request_body = AnnotationsBody,
    responses((status = 200, description = "labelled", body = LearningStats), Guarded, NotFound, Invalid),
    security(("bearer" = []))
)]
pub async fn annotate(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
    body: Result<Json<AnnotationsBody>, JsonRejection>,
) -> Result<Json<LearningStats>, ApiError> {
    let id = parse_id(&id)?;
    let Json(body) = body.map_err(super::wrenches::json_error)?;
    if body.annotations.len() > MAX_ANNOTATIONS {
        return Err(ApiError::unprocessable(format!("at most {MAX_ANNOTATIONS} annotations per image")));
    }
    let record = state.inspector.storage.call(move |db| db.get(id)).await?;
    let record = record.ok_or_else(|| ApiError::not_found("no such inspection"))?;
    let (width, height) = (record.image_width as f32, record.image_height as f32);
    let mut annotations = Vec::with_capacity(body.annotations.len());
    for (index, a) in body.annotations.into_iter().enumerate() {
        let name = a.class_name.trim();
        if name.is_empty() || name.len() > 64 || name.contains(['/', '\\', '\n']) {
            return Err(ApiError::unprocessable(format!(
                "annotations[{index}].class_name must be 1 to 64 characters without slashes or line breaks"
            )));
        }
        if let Some([x1, y1, x2, y2]) = a.bbox {
            let inside = [x1, y1, x2, y2].iter().all(|v| v.is_finite() && *v >= 0.0)
                && x2 <= width
                && y2 <= height
                && x1 < x2
                && y1 < y2;
            if !inside {
                return Err(ApiError::unprocessable(format!(
                    "annotations[{index}].bbox must be [x1, y1, x2, y2] with x1 < x2 <= {width}, y1 < y2 <= {height}"
                )));
            }
        }
        annotations.push(Annotation { class_name: name.to_owned(), bbox: a.bbox });
    }
    let reviewed_by = body.reviewed_by.filter(|r| !r.trim().is_empty()).unwrap_or_else(|| caller.username.clone());
    let stored = state
        .inspector
        .storage
        .call(move |db| {
            let stored = db.annotate(id, &annotations, &reviewed_by, Utc::now())?;
            stored.map(|()| db.learning_counts()).transpose()
        })
        .await?;
    let counts = stored.ok_or_else(|| ApiError::not_found("the inspection is not in the review queue"))?;
    Ok(Json(counts.into()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `yolo` (images/ and labels/ with class-index boxes), `coco` (one annotations.json) or
    /// `classification` (a folder per image label).
    format: String,
    /// Also items of earlier exports (default false: only what is new).
    include_exported: Option<bool>,
    /// At most this many items (default and maximum 100000).
    limit: Option<u32>,
}

/// A zip of the labelled images and their labels. The items in it count as exported from
/// then on (their images may age out with the retention).
#[utoipa::path(
    get,
    path = "/api/v1/learning/export",
    tag = "learning",
    params(ExportQuery),
    responses(
        (status = 200, description = "the dataset", content_type = "application/zip", body = Vec<u8>),
        Guarded, Invalid
    ),
    security(("bearer" = []))
)]
pub async fn export(
    State(state): State<ApiState>,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(super::routes::query_error)?;
    let format = match query.format.as_str() {
        "yolo" => Format::Yolo,
        "coco" => Format::Coco,
        "classification" => Format::Classification,
        other => {
            return Err(ApiError::unprocessable(format!("format {other:?} is not one of yolo, coco, classification")));
        }
    };
    let limit = query.limit.unwrap_or(100_000).clamp(1, 100_000);
    let include_exported = query.include_exported.unwrap_or(false);
    let items = state.inspector.storage.call(move |db| db.learning_labeled(include_exported, limit)).await?;
    let images_root = state.state_dir.join("images");
    // The zip is written to an unlinked temporary file and streamed from it: a dataset can
    // be far larger than the memory a station PC should spend on it.
    let (file, exported) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let path = images_root.with_file_name(format!(".export-{}.zip", Uuid::new_v4().simple()));
        let mut file = std::fs::File::options().read(true).write(true).create_new(true).open(&path)?;
        // Unlinked at once: the open handle keeps it until the download ends or fails.
        std::fs::remove_file(&path)?;
        let exported = write_dataset(&mut file, format, &items, &images_root)?;
        std::io::Seek::rewind(&mut file)?;
        Ok((file, exported))
    })
    .await
    .map_err(|err| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("export failed: {err}")))?
    .map_err(|err| {
        tracing::error!(cause = %err, "dataset export failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the dataset could not be written")
    })?;
    state.inspector.storage.call(move |db| db.mark_exported(&exported, Utc::now())).await?;
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    let name = format!("attachment; filename=\"stationd-dataset-{}.zip\"", query.format);
    let headers = HeaderMap::from_iter([
        (header::CONTENT_TYPE, HeaderValue::from_static("application/zip")),
        (header::CONTENT_DISPOSITION, HeaderValue::from_str(&name).expect("ascii")),
    ]);
    Ok((headers, Body::from_stream(stream)).into_response())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Yolo,
    Coco,
    Classification,
}

/// Writes the dataset; returns the queue keys (inspection seqs) of the items in it.
/// Items whose image file has gone are left out.
fn write_dataset(
    out: &mut std::fs::File,
    format: Format,
    items: &[ReviewItem],
    images_root: &Path,
) -> std::io::Result<Vec<i64>> {
    let mut zip = zip::ZipWriter::new(out);
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let text = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let zip_error = |err: zip::result::ZipError| std::io::Error::other(err.to_string());

    // Object classes (boxes) for yolo and coco, in name order, so indices are stable.
    let mut classes: Vec<&str> =
        items.iter().flat_map(|i| &i.annotations).filter(|a| a.bbox.is_some()).map(|a| a.class_name.as_str()).collect();
    classes.sort_unstable();
    classes.dedup();
    let class_index = |name: &str| classes.binary_search(&name).unwrap_or(0);

    let mut coco_images = Vec::new();
    let mut coco_annotations = Vec::new();
    let mut exported = Vec::new();
    for item in items {
        let record = &item.record;
        let Some(image) = &record.image else { continue };
        let Ok(bytes) = std::fs::read(images_root.join(&image.relative_path)) else { continue };
        let extension = Path::new(&image.relative_path).extension().and_then(|e| e.to_str()).unwrap_or("jpg");
        let file_name = format!("{}.{extension}", record.id.simple());
        let (width, height) = (record.image_width as f32, record.image_height as f32);
        match format {
            Format::Yolo => {
                zip.start_file(format!("images/{file_name}"), stored).map_err(zip_error)?;
                zip.write_all(&bytes)?;
                let mut labels = String::new();
                for a in &item.annotations {
                    let Some([x1, y1, x2, y2]) = a.bbox else { continue };
                    labels += &format!(
                        "{} {:.6} {:.6} {:.6} {:.6}\n",
                        class_index(&a.class_name),
                        (x1 + x2) / 2.0 / width,
                        (y1 + y2) / 2.0 / height,
                        (x2 - x1) / width,
                        (y2 - y1) / height
                    );
                }
                zip.start_file(format!("labels/{}.txt", record.id.simple()), text).map_err(zip_error)?;
                zip.write_all(labels.as_bytes())?;
            }
            Format::Coco => {
                zip.start_file(format!("images/{file_name}"), stored).map_err(zip_error)?;
                zip.write_all(&bytes)?;
                let image_id = coco_images.len() + 1;
                coco_images.push(serde_json::json!({
                    "id": image_id, "file_name": file_name, "width": record.image_width, "height": record.image_height,
                }));
                for a in &item.annotations {
                    let Some([x1, y1, x2, y2]) = a.bbox else { continue };
                    coco_annotations.push(serde_json::json!({
                        "id": coco_annotations.len() + 1,
                        "image_id": image_id,
                        "category_id": class_index(&a.class_name) + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }));
                }
            }
            Format::Classification => {
                // The image's label: its annotation without a box (the first one).
                let Some(label) = item.annotations.iter().find(|a| a.bbox.is_none()) else { continue };
                zip.start_file(format!("{}/{file_name}", label.class_name), stored).map_err(zip_error)?;
                zip.write_all(&bytes)?;
            }
        }
        exported.push(record.seq);
    }
    match format {
        Format::Yolo => {
            zip.start_file("classes.txt", text).map_err(zip_error)?;
            zip.write_all(classes.iter().map(|c| format!("{c}\n")).collect::<String>().as_bytes())?;
            let names: Vec<String> = classes.iter().enumerate().map(|(i, c)| format!("  {i}: {c}")).collect();
            zip.start_file("data.yaml", text).map_err(zip_error)?;
            zip.write_all(format!("path: .\ntrain: images\nval: images\nnames:\n{}\n", names.join("\n")).as_bytes())?;
        }
        Format::Coco => {
            let categories: Vec<_> = classes
                .iter()
                .enumerate()
                .map(|(i, c)| serde_json::json!({"id": i + 1, "name": c, "supercategory": "part"}))
                .collect();
            let document = serde_json::json!({
                "info": {"description": "stationd active-learning export", "date_created": rfc3339(Utc::now())},
                "images": coco_images,
                "annotations": coco_annotations,
                "categories": categories,
            });
            zip.start_file("annotations.json", text).map_err(zip_error)?;
            zip.write_all(document.to_string().as_bytes())?;
        }
        Format::Classification => {}
    }
    zip.finish().map_err(zip_error)?;
    Ok(exported)
}
