//! REST handlers for the station's cameras: the list with each camera's state, one fresh
//! frame as JPEG, and an MJPEG stream (`multipart/x-mixed-replace`) for a browser or an
//! HMI. Frames come from the same camera thread as inspections, so a stream is rate
//! limited (`fps`, at most `MAX_STREAM_FPS`) and there are at most `MAX_STREAMS` at once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::error::ApiError;
#[allow(unused_imports, reason = "named by the OpenAPI attributes")]
use super::error::{ErrorBody, Guarded, Invalid, NotFound, Unavailable};
use super::routes::query_error;
use super::wrenches::{Envelope, json_error, ok};
use crate::config::{CameraBackend, CameraDevice, PixelFormat};
use crate::cycle::{CycleError, encode_jpeg_off_runtime};
use crate::south::camera::{CameraError, CameraHandle, CameraSettings, CameraState};

/// Streams served at once, over all cameras.
pub const MAX_STREAMS: usize = 4;
const MAX_STREAM_FPS: f64 = 15.0;
const DEFAULT_STREAM_FPS: f64 = 5.0;
const BOUNDARY: &str = "stationd-frame";

#[derive(Serialize, utoipa::ToSchema)]
pub struct CameraDto {
    id: String,
    /// "sim" (an image folder, replayed) or "v4l2".
    backend: &'static str,
    /// The folder, or the V4L2 device index or name.
    source: String,
    width: Option<u32>,
    height: Option<u32>,
    fps: Option<u32>,
    format: Option<&'static str>,
    /// "starting", "ready" or "failed".
    state: &'static str,
    error: Option<String>,
    /// Stations that inspect with it.
    stations: Vec<String>,
    captures: u64,
    capture_failures: u64,
}

fn camera<'a>(state: &'a ApiState, id: &str) -> Result<&'a CameraHandle, ApiError> {
    state.inspector.cameras().get(id).ok_or_else(|| ApiError::not_found(format!("no camera {id:?}")))
}

/// GET /api/v1/cameras
#[utoipa::path(
    get,
    path = "/api/v1/cameras",
    tag = "cameras",
    responses((status = 200, description = "done", body = Envelope<Vec<CameraDto>>), Guarded),
    security(("bearer" = []))
)]
pub async fn list(State(state): State<ApiState>) -> Json<Envelope<Vec<CameraDto>>> {
    let cameras = state.inspector.cameras().values().map(|handle| describe(&state, handle)).collect();
    ok(cameras)
}

/// GET /api/v1/cameras/{id}
#[utoipa::path(
    get,
    path = "/api/v1/cameras/{id}",
    tag = "cameras",
    params(("id" = String, Path)),
    responses((status = 200, description = "done", body = Envelope<CameraDto>), Guarded, NotFound),
    security(("bearer" = []))
)]
pub async fn get(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<Envelope<CameraDto>>, ApiError> {
    Ok(ok(describe(&state, camera(&state, &id)?)))
}

fn describe(state: &ApiState, handle: &CameraHandle) -> CameraDto {
    let (backend, source, width, height, fps, format) = match state.cameras.get(&handle.id).map(|c| &c.backend) {
        Some(CameraBackend::Sim { folder }) => ("sim", folder.display().to_string(), None, None, None, None),
        Some(CameraBackend::V4l2 { device, width, height, fps, format }) => (
            "v4l2",
            match device {
                CameraDevice::Index(index) => index.to_string(),
                CameraDevice::Name(name) => name.clone(),
            },
            Some(*width),
            Some(*height),
            Some(*fps),
            Some(match format {
                PixelFormat::Mjpeg => "mjpeg",
                PixelFormat::Yuyv => "yuyv",
            }),
        ),
        None => ("unknown", String::new(), None, None, None, None),
    };
    let (camera_state, error) = match handle.state() {
        CameraState::Starting => ("starting", None),
        CameraState::Ready => ("ready", None),
        CameraState::Failed(error) => ("failed", Some(error)),
    };
    CameraDto {
        id: handle.id.clone(),
        backend,
        source,
        width,
        height,
        fps,
        format,
        state: camera_state,
        error,
        stations: state.inspector.stations_with_camera(&handle.id),
        captures: handle.counters.captures.load(Ordering::Relaxed),
        capture_failures: handle.counters.failures.load(Ordering::Relaxed),
    }
}

/// One frame, captured now, as JPEG.
async fn capture_jpeg(handle: &CameraHandle) -> Result<Bytes, ApiError> {
    let frame = handle.capture().await.map_err(CycleError::from)?;
    Ok(encode_jpeg_off_runtime(frame.image).await?)
}

/// GET /api/v1/cameras/{id}/frame: the newest frame as image/jpeg.
#[utoipa::path(
    get,
    path = "/api/v1/cameras/{id}/frame",
    tag = "cameras",
    params(("id" = String, Path)),
    responses((status = 200, description = "a fresh frame", content_type = "image/jpeg", body = Vec<u8>), Guarded, NotFound, Unavailable),
    security(("bearer" = []))
)]
pub async fn frame(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let jpeg = capture_jpeg(camera(&state, &id)?).await?;
    Ok(([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "no-store")], jpeg).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    fps: Option<f64>,
}

/// GET /api/v1/cameras/{id}/stream?fps=5: MJPEG until the client goes away or the daemon
/// stops. A frame that fails to capture ends the stream (the client reconnects).
#[utoipa::path(
    get,
    path = "/api/v1/cameras/{id}/stream",
    tag = "cameras",
    params(("id" = String, Path), StreamQuery),
    responses((status = 200, description = "MJPEG, multipart/x-mixed-replace, at most 15 fps", content_type = "multipart/x-mixed-replace", body = Vec<u8>), Guarded, NotFound, Invalid, Unavailable),
    security(("bearer" = []))
)]
pub async fn stream(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let fps = query.fps.unwrap_or(DEFAULT_STREAM_FPS);
    if !(fps > 0.0 && fps <= MAX_STREAM_FPS) {
        return Err(ApiError::unprocessable(format!("fps must be above 0 and at most {MAX_STREAM_FPS}")));
    }
    let handle = camera(&state, &id)?.clone();
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{MAX_STREAMS} streams are already open; close one"))
    })?;
    // The first frame is captured before answering, so a dead camera is a 503, not an
    // empty stream.
    let first = capture_jpeg(&handle).await?;
    let stop = state.stop.clone();
    let period = Duration::from_secs_f64(1.0 / fps);
    let frames = futures_util::stream::unfold(
        (Some(first), handle, tokio::time::interval(period), permit),
        move |(next, handle, mut ticker, permit)| {
            let stop = stop.clone();
            async move {
                let jpeg = match next {
                    Some(jpeg) => jpeg,
                    None => {
                        tokio::select! {
                            _ = ticker.tick() => {}
                            () = stop.cancelled() => return None,
                        }
                        match capture_jpeg(&handle).await {
                            Ok(jpeg) => jpeg,
                            Err(err) => {
                                tracing::warn!(camera = handle.id, cause = err.detail, "stream ended");
                                return None;
                            }
                        }
                    }
                };
                let part = multipart_part(&jpeg);
                Some((Ok::<_, std::convert::Infallible>(part), (None, handle, ticker, permit)))
            }
        },
    );
    Ok((
        [
            (header::CONTENT_TYPE, format!("multipart/x-mixed-replace; boundary={BOUNDARY}")),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        Body::from_stream(frames),
    )
        .into_response())
}

fn multipart_part(jpeg: &[u8]) -> Bytes {
    let head = format!("--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n", jpeg.len());
    let mut part = Vec::with_capacity(head.len() + jpeg.len() + 2);
    part.extend_from_slice(head.as_bytes());
    part.extend_from_slice(jpeg);
    part.extend_from_slice(b"\r\n");
    part.into()
}

#[derive(Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CameraConfigBody {
    /// "1280x720", or `width` and `height`.
    #[serde(skip_serializing)]
    resolution: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    fps: Option<u32>,
    /// Absolute exposure in the driver's unit (V4L2: 100 µs).
    exposure: Option<i64>,
}

impl From<CameraSettings> for CameraConfigBody {
    fn from(settings: CameraSettings) -> CameraConfigBody {
        CameraConfigBody {
            resolution: None,
            width: settings.width,
            height: settings.height,
            fps: settings.fps,
            exposure: settings.exposure,
        }
    }
}

/// GET /api/v1/cameras/{id}/config: the settings in force (null: the source's own).
#[utoipa::path(
    get,
    path = "/api/v1/cameras/{id}/config",
    tag = "cameras",
    params(("id" = String, Path)),
    responses((status = 200, description = "done", body = Envelope<CameraConfigBody>), Guarded, NotFound),
    security(("bearer" = []))
)]
pub async fn get_config(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Envelope<CameraConfigBody>>, ApiError> {
    let settings = camera(&state, &id)?.settings().await.map_err(CycleError::from)?;
    Ok(ok(settings.into()))
}

/// PUT /api/v1/cameras/{id}/config: changes what the camera allows, until the daemon
/// restarts (the config file holds the start-up settings).
#[utoipa::path(
    put,
    path = "/api/v1/cameras/{id}/config",
    tag = "cameras",
    params(("id" = String, Path)),
    request_body = CameraConfigBody,
    responses((status = 200, description = "done", body = Envelope<CameraConfigBody>), Guarded, NotFound, Invalid, Unavailable),
    security(("bearer" = []))
)]
pub async fn put_config(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<CameraConfigBody>, JsonRejection>,
) -> Result<Json<Envelope<CameraConfigBody>>, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let (mut width, mut height) = (body.width, body.height);
    if let Some(resolution) = &body.resolution {
        let parsed =
            resolution.split_once(['x', 'X']).and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)));
        let Some((w, h)) = parsed else {
            return Err(ApiError::unprocessable(format!("resolution {resolution:?} is not WIDTHxHEIGHT")));
        };
        if width.is_some_and(|x| x != w) || height.is_some_and(|x| x != h) {
            return Err(ApiError::unprocessable("resolution disagrees with width/height"));
        }
        (width, height) = (Some(w), Some(h));
    }
    if width.is_none() && height.is_none() && body.fps.is_none() && body.exposure.is_none() {
        return Err(ApiError::unprocessable("nothing to change: give resolution, width and height, fps or exposure"));
    }
    let change = CameraSettings { width, height, fps: body.fps, exposure: body.exposure };
    let settings = camera(&state, &id)?.configure(change).await.map_err(|err| match err {
        CameraError::Unsupported { .. } | CameraError::Rejected { .. } => ApiError::unprocessable(err.to_string()),
        other => CycleError::from(other).into(),
    })?;
    Ok(ok(settings.into()))
}
