//! Cameras. A [`FrameSource`] backend (sim folder or V4L2 via nokhwa) is owned by one OS
//! thread per camera, because camera stacks block; the daemon holds a [`CameraHandle`]
//! and asks it for the newest frame.

pub mod sim;
#[cfg(feature = "camera-v4l2")]
pub mod v4l2;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use image::RgbImage;
use tokio::sync::{mpsc, oneshot, watch};

use crate::supervisor::{Phase, ServiceContext, Supervisor};

/// A captured frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub image: Arc<RgbImage>,
    pub captured_at: DateTime<Utc>,
    /// Where it came from, for logs and records (a file name, a device name).
    pub origin: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    #[error("camera {camera}: cannot open: {message}")]
    Open { camera: String, message: String },
    #[error("camera {camera}: capture failed: {message}")]
    Capture { camera: String, message: String },
    #[error("camera {camera} is not connected")]
    Disconnected { camera: String },
    #[error("camera {camera} has stopped")]
    Stopped { camera: String },
    #[error("camera {camera}: {setting} cannot be changed on this camera")]
    Unsupported { camera: String, setting: &'static str },
    #[error("camera {camera}: {message}")]
    Rejected { camera: String, message: String },
}

/// A camera's adjustable settings. In a change, the fields that are set are applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CameraSettings {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<u32>,
    /// Absolute exposure in the driver's unit (V4L2: 100 µs).
    pub exposure: Option<i64>,
}

impl CameraError {
    /// Whether trying again (after a reconnect) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CameraError::Capture { .. } | CameraError::Disconnected { .. })
    }
}

/// What a camera can do. Blocking by design: the adapter gives each backend its own thread.
/// Not `Send`: camera stacks (nokhwa's V4L2 handle among them) are tied to the thread that
/// opened them, so [`spawn`] opens the source on the thread that then owns it.
pub trait FrameSource: 'static {
    /// The newest frame: never one that was waiting in a driver buffer since before the call.
    fn capture(&mut self) -> Result<Frame, CameraError>;

    /// The settings in force.
    fn settings(&self) -> CameraSettings;

    /// Applies the fields of `change` that are set, all or none: a setting this camera
    /// cannot change is `Unsupported`, a value it refuses is `Rejected`. Lasts until the
    /// daemon restarts (the config file keeps the start-up settings).
    fn configure(&mut self, change: &CameraSettings) -> Result<CameraSettings, CameraError>;
}

/// State of a camera as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraState {
    Starting,
    Ready,
    Failed(String),
}

enum Request {
    Capture(oneshot::Sender<Result<Frame, CameraError>>),
    Settings(oneshot::Sender<Result<CameraSettings, CameraError>>),
    Configure(CameraSettings, oneshot::Sender<Result<CameraSettings, CameraError>>),
    Stop,
}

/// Capture counters, for the status API.
#[derive(Debug, Default)]
pub struct CameraCounters {
    pub captures: AtomicU64,
    pub failures: AtomicU64,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct CameraHandle {
    pub id: String,
    requests: mpsc::Sender<Request>,
    state: watch::Receiver<CameraState>,
    pub counters: Arc<CameraCounters>,
}

impl CameraHandle {
    pub async fn capture(&self) -> Result<Frame, CameraError> {
        self.ask(Request::Capture).await
    }

    pub async fn settings(&self) -> Result<CameraSettings, CameraError> {
        self.ask(Request::Settings).await
    }

    pub async fn configure(&self, change: CameraSettings) -> Result<CameraSettings, CameraError> {
        self.ask(|reply| Request::Configure(change, reply)).await
    }

    /// Sends a request to the camera's thread and waits for its answer.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, CameraError>>) -> Request,
    ) -> Result<T, CameraError> {
        let stopped = || CameraError::Stopped { camera: self.id.clone() };
        let (reply, answer) = oneshot::channel();
        self.requests.send(request(reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub fn state(&self) -> CameraState {
        self.state.borrow().clone()
    }
}

/// How long a camera that would not open waits before the next attempt (made when a
/// capture is requested).
const REOPEN_BACKOFF: Duration = Duration::from_secs(2);

/// Starts the thread owning camera `id`. `open` runs on that thread (camera handles stay on
/// the thread that opened them), at start and again on a capture after a failed open, at
/// most once per `REOPEN_BACKOFF`. A camera that will not open leaves its service degraded,
/// never the daemon down: uploads and records do not need it.
pub fn spawn<S, F>(supervisor: &mut Supervisor, id: String, mut open: F) -> CameraHandle
where
    S: FrameSource,
    F: FnMut() -> Result<S, CameraError> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel(8);
    let (state_tx, state_rx) = watch::channel(CameraState::Starting);
    let stop_tx = tx.clone();
    let camera_id = id.clone();
    let counters = Arc::new(CameraCounters::default());
    let counted = counters.clone();
    supervisor.spawn_thread(
        format!("camera[{id}]"),
        Phase::Devices,
        move |ctx: ServiceContext| {
            let mut try_open = || match open() {
                Ok(source) => {
                    state_tx.send_replace(CameraState::Ready);
                    ctx.set_ready();
                    Some(source)
                }
                Err(err) => {
                    tracing::error!(camera = camera_id, cause = %err, "camera unavailable");
                    state_tx.send_replace(CameraState::Failed(err.to_string()));
                    ctx.set_degraded(err.to_string());
                    None
                }
            };
            let mut source = try_open();
            let mut last_attempt = Instant::now();
            while let Some(request) = rx.blocking_recv() {
                match request {
                    Request::Capture(reply) => {
                        if source.is_none() && last_attempt.elapsed() >= REOPEN_BACKOFF {
                            last_attempt = Instant::now();
                            source = try_open();
                            if source.is_some() {
                                tracing::warn!(camera = camera_id, "camera opened after a failure");
                            }
                        }
                        let result = match source.as_mut() {
                            Some(source) => source.capture(),
                            None => Err(CameraError::Disconnected { camera: camera_id.clone() }),
                        };
                        let counter = if result.is_ok() { &counted.captures } else { &counted.failures };
                        counter.fetch_add(1, Ordering::Relaxed);
                        let _ = reply.send(result);
                    }
                    Request::Settings(reply) => {
                        let disconnected = || CameraError::Disconnected { camera: camera_id.clone() };
                        let _ = reply.send(source.as_ref().map(|s| s.settings()).ok_or_else(disconnected));
                    }
                    Request::Configure(change, reply) => {
                        let result = match source.as_mut() {
                            Some(source) => source.configure(&change),
                            None => Err(CameraError::Disconnected { camera: camera_id.clone() }),
                        };
                        if let Ok(settings) = &result {
                            tracing::info!(camera = camera_id, ?settings, "camera reconfigured");
                        }
                        let _ = reply.send(result);
                    }
                    Request::Stop => break,
                }
            }
            Ok(())
        },
        async move {
            let _ = stop_tx.send(Request::Stop).await;
        },
    );
    CameraHandle { id, requests: tx, state: state_rx, counters }
}
