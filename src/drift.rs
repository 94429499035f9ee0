//! The `drift` service: each camera's inspection frames go through `core::drift`, whose
//! reports are published on a `watch` (the REST API shows them, the alerts service turns
//! a drift into the `drift:<camera>` alert). A completed reference is stored, so that a
//! restart keeps comparing with the set-up state instead of learning from frames that
//! may have drifted already.
//!
//! The inspection cycle offers frames with `try_send`: when the service is behind, a
//! frame is skipped rather than a trigger delayed.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use image::RgbImage;
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::drift::{DriftConfig, DriftMonitor, DriftReport, FrameStats};
use crate::storage::{Storage, StorageError};
use crate::supervisor::{Phase, ServiceContext, ServiceError, Supervisor};

/// Every camera's latest report, by camera id.
pub type Reports = Arc<BTreeMap<String, DriftReport>>;

/// Frames waiting for the service; more are skipped.
const FRAME_QUEUE: usize = 8;

enum Command {
    Reset { camera: String, done: oneshot::Sender<Result<(), StorageError>> },
}

/// Cheap to clone: offers frames, reads reports, resets references.
#[derive(Clone)]
pub struct Drift {
    frames: mpsc::Sender<(String, Arc<RgbImage>)>,
    commands: mpsc::Sender<Command>,
    reports: watch::Receiver<Reports>,
}

impl Drift {
    /// Hands a camera frame to the service, unless it is behind.
    pub fn offer(&self, camera: &str, frame: Arc<RgbImage>) {
        let _ = self.frames.try_send((camera.to_owned(), frame));
    }

    pub fn reports(&self) -> Reports {
        self.reports.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<Reports> {
        self.reports.clone()
    }

    /// Forgets `camera`'s reference (stored too); the next frames learn a new one. `Ok(false)`
    /// for an unknown camera.
    pub async fn reset(&self, camera: &str) -> Result<bool, StorageError> {
        if !self.reports.borrow().contains_key(camera) {
            return Ok(false);
        }
        let (done, answer) = oneshot::channel();
        let command = Command::Reset { camera: camera.to_owned(), done };
        self.commands.send(command).await.map_err(|_| StorageError::Stopped)?;
        answer.await.map_err(|_| StorageError::Stopped)?.map(|()| true)
    }
}

pub fn spawn(supervisor: &mut Supervisor, config: DriftConfig, cameras: Vec<String>, storage: Storage) -> Drift {
    let (frames_tx, frames) = mpsc::channel(FRAME_QUEUE);
    let (commands_tx, commands) = mpsc::channel(4);
    let monitors: BTreeMap<String, DriftMonitor> =
        cameras.into_iter().map(|camera| (camera, DriftMonitor::new(config))).collect();
    let (reports_tx, reports) = watch::channel(render(&monitors));
    supervisor.spawn("drift", Phase::Publish, move |ctx| {
        run(Service { config, monitors, storage, reports: reports_tx }, frames, commands, ctx)
    });
    Drift { frames: frames_tx, commands: commands_tx, reports }
}

struct Service {
    config: DriftConfig,
    monitors: BTreeMap<String, DriftMonitor>,
    storage: Storage,
    reports: watch::Sender<Reports>,
}

fn render(monitors: &BTreeMap<String, DriftMonitor>) -> Reports {
    Arc::new(monitors.iter().map(|(camera, monitor)| (camera.clone(), monitor.report())).collect())
}

async fn run(
    mut service: Service,
    mut frames: mpsc::Receiver<(String, Arc<RgbImage>)>,
    mut commands: mpsc::Receiver<Command>,
    ctx: ServiceContext,
) -> Result<(), ServiceError> {
    let stored = match service.storage.call(|db| db.drift_references()).await {
        Ok(stored) => stored,
        Err(StorageError::Stopped) => return Ok(()),
        Err(err) => return Err(ServiceError::new(err)),
    };
    for (camera, summary, set_at) in stored {
        if let Some(monitor) = service.monitors.get_mut(&camera) {
            *monitor = DriftMonitor::with_reference(service.config, summary, set_at);
        }
    }
    service.reports.send_replace(render(&service.monitors));
    ctx.set_ready();
    loop {
        tokio::select! {
            () = ctx.token.cancelled() => return Ok(()),
            Some((camera, frame)) = frames.recv() => service.frame(camera, frame).await,
            Some(Command::Reset { camera, done }) = commands.recv() => {
                if let Some(monitor) = service.monitors.get_mut(&camera) {
                    monitor.reset_reference();
                }
                let cleared = service.storage.call(move |db| db.clear_drift_reference(&camera)).await;
                service.reports.send_replace(render(&service.monitors));
                let _ = done.send(cleared);
            }
        }
    }
}

impl Service {
    async fn frame(&mut self, camera: String, frame: Arc<RgbImage>) {
        if !self.monitors.contains_key(&camera) {
            return;
        }
        // A few hundred microseconds at most (sampled), but CPU work: off the runtime.
        let stats = tokio::task::spawn_blocking(move || {
            FrameStats::of_rgb(frame.width() as usize, frame.height() as usize, frame.as_raw())
        })
        .await;
        let Ok(Some(stats)) = stats else { return };
        let now = Utc::now();
        let Some(monitor) = self.monitors.get_mut(&camera) else { return };
        if let Some(reference) = monitor.push(stats, now) {
            tracing::info!(camera, frames = reference.frames, "drift reference learnt");
            let stored = camera.clone();
            if let Err(err) = self.storage.call(move |db| db.set_drift_reference(&stored, &reference, now)).await {
                tracing::warn!(camera, cause = %err, "the drift reference could not be stored; it is learnt again after a restart");
            }
        }
        let reports = render(&self.monitors);
        let before = self.reports.borrow().get(&camera).map(|r| r.severity);
        if let Some(report) = reports.get(&camera).filter(|r| Some(r.severity) != before) {
            tracing::warn!(
                camera,
                severity = report.severity.as_str(),
                recommendation = report.recommendation,
                "camera drift changed"
            );
        }
        self.reports.send_replace(reports);
    }
}
