//! Continuous pipelines (the anomaly-inspection seed): a camera watched at a bounded frame
//! rate, each frame scored by the model, "N of M" confirmation (`core::monitor`), and a
//! raised anomaly stored and sent to the pipeline's sinks: MQTT (through the station's
//! durable outbox), a webhook (JSON POST, retried with backoff) and a folder (JSON, and
//! the frame as JPEG).
//!
//! All runs are futures of the one `pipelines` service, as wrench links are: runs start and
//! stop at run time through the API while the supervisor's service set is fixed. A run
//! marked active in storage starts again when the daemon starts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::core::decision;
use crate::core::monitor::{self, Confirmation};
use crate::cycle::{Inspector, encode_jpeg};
use crate::inference::ImageInput;
use crate::north::api::dto::PipelineEventDto;
use crate::storage::{PipelineEvent, PipelineSpec, SinkKind, StorageError};
use crate::supervisor::{Phase, ServiceContext, ServiceError, Supervisor};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("no pipeline {0}")]
    Unknown(Uuid),
    #[error("no active pipeline {0}")]
    NotActive(Uuid),
    #[error("pipeline {0} is already running")]
    AlreadyActive(Uuid),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the pipeline service has stopped")]
    Stopped,
}

/// A running pipeline as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStatus {
    pub id: Uuid,
    pub pipeline_id: Uuid,
    /// "starting", "running", or "error" (with `error`): a run whose camera or model fails
    /// keeps trying at its frame rate.
    pub status: &'static str,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub frames_processed: u64,
    pub anomalies_detected: u64,
    pub avg_inference_time_ms: Option<f64>,
    pub last_score: Option<f32>,
}

#[derive(Debug, Default)]
struct RunStats {
    frames: u64,
    anomalies: u64,
    inference_ms_total: f64,
    last_score: Option<f32>,
    error: Option<String>,
}

struct Run {
    pipeline_id: Uuid,
    started_at: DateTime<Utc>,
    token: CancellationToken,
    stats: Arc<Mutex<RunStats>>,
}

enum Request {
    Start(Uuid, oneshot::Sender<Result<RunStatus, PipelineError>>),
    Stop(Uuid, oneshot::Sender<Result<(), PipelineError>>),
    List(oneshot::Sender<Vec<RunStatus>>),
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Pipelines {
    requests: mpsc::Sender<Request>,
    inspector: Inspector,
    mqtt_enabled: bool,
}

/// Frames per second a pipeline may ask for.
pub const MAX_FPS: f64 = 30.0;
/// The longest confirmation window.
pub const MAX_WINDOW: u32 = 100;
/// Webhook deliveries queued per run; beyond it the oldest is dropped (and logged).
const MAX_PENDING_WEBHOOKS: usize = 16;

pub fn spawn(supervisor: &mut Supervisor, inspector: Inspector, mqtt_enabled: bool) -> Pipelines {
    let (requests, rx) = mpsc::channel(16);
    let pipelines = Pipelines { requests, inspector: inspector.clone(), mqtt_enabled };
    supervisor.spawn("pipelines", Phase::Intake, move |ctx| serve(ctx, inspector, rx));
    pipelines
}

impl Pipelines {
    /// Checks a pipeline against the station's cameras, stations and MQTT, and the limits.
    pub fn validate(&self, spec: &PipelineSpec) -> Result<(), PipelineError> {
        let invalid = |message: String| Err(PipelineError::Invalid(message));
        if spec.name.trim().is_empty() || spec.name.len() > 200 {
            return invalid("name: 1 to 200 characters".into());
        }
        if !self.inspector.cameras().contains_key(&spec.source_id) {
            return invalid(format!("source_id: no camera {:?}", spec.source_id));
        }
        if !self.inspector.has_station(&spec.station_id) {
            return invalid(format!("station_id: no station {:?}", spec.station_id));
        }
        if !(spec.fps > 0.0 && spec.fps <= MAX_FPS) {
            return invalid(format!("config.fps: above 0 and at most {MAX_FPS}"));
        }
        if spec.threshold.is_some_and(|t| !t.is_finite() || t < 0.0) {
            return invalid("config.threshold: a finite score >= 0".into());
        }
        if !(1..=MAX_WINDOW).contains(&spec.confirm_window) || !(1..=spec.confirm_window).contains(&spec.confirm_frames)
        {
            return invalid(format!(
                "config: 1 <= confirm_frames <= confirm_window <= {MAX_WINDOW} (got {} of {})",
                spec.confirm_frames, spec.confirm_window
            ));
        }
        for sink in &spec.sinks {
            match &sink.kind {
                SinkKind::Mqtt if !self.mqtt_enabled => {
                    return invalid(format!("sink {:?}: MQTT is not enabled on this station ([mqtt])", sink.name));
                }
                SinkKind::Webhook { url, .. } => {
                    let uri: hyper::Uri =
                        url.parse().map_err(|_| PipelineError::Invalid(format!("sink {:?}: bad url", sink.name)))?;
                    if uri.scheme_str() != Some("http") || uri.host().is_none() {
                        return invalid(format!(
                            "sink {:?}: only http:// webhooks are supported (no TLS client yet)",
                            sink.name
                        ));
                    }
                }
                SinkKind::Filesystem { output_dir, .. } if !output_dir.is_absolute() => {
                    return invalid(format!("sink {:?}: output_dir must be an absolute path", sink.name));
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub async fn start(&self, pipeline_id: Uuid) -> Result<RunStatus, PipelineError> {
        self.ask(|reply| Request::Start(pipeline_id, reply)).await?
    }

    /// Stops a run by its id (the active pipeline id).
    pub async fn stop(&self, run_id: Uuid) -> Result<(), PipelineError> {
        self.ask(|reply| Request::Stop(run_id, reply)).await?
    }

    pub async fn runs(&self) -> Result<Vec<RunStatus>, PipelineError> {
        self.ask(Request::List).await
    }

    /// Sends a request to the service and waits for its answer.
    async fn ask<T>(&self, request: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, PipelineError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(request(reply)).await.map_err(|_| PipelineError::Stopped)?;
        answer.await.map_err(|_| PipelineError::Stopped)
    }
}

async fn serve(
    ctx: ServiceContext,
    inspector: Inspector,
    mut requests: mpsc::Receiver<Request>,
) -> Result<(), ServiceError> {
    let mut runs: BTreeMap<Uuid, Run> = BTreeMap::new();
    let mut futures: FuturesUnordered<BoxFuture<'static, Uuid>> = FuturesUnordered::new();
    let storage = inspector.storage.clone();
    // Runs that were active when the daemon stopped start again.
    let specs = storage.call(|db| db.pipelines()).await.map_err(ServiceError::new)?;
    for spec in specs.into_iter().filter(|s| s.active) {
        tracing::info!(pipeline = %spec.id, name = spec.name, "resuming pipeline");
        start(&inspector, spec, &mut runs, &mut futures);
    }
    ctx.set_ready();
    loop {
        tokio::select! {
            () = ctx.token.cancelled() => break,
            request = requests.recv() => match request {
                Some(Request::Start(pipeline_id, reply)) => {
                    let result = async {
                        if runs.values().any(|r| r.pipeline_id == pipeline_id) {
                            return Err(PipelineError::AlreadyActive(pipeline_id));
                        }
                        let spec = storage.call(move |db| db.pipeline(pipeline_id)).await?
                            .ok_or(PipelineError::Unknown(pipeline_id))?;
                        storage.call(move |db| db.set_pipeline_active(pipeline_id, true)).await?;
                        Ok(spec)
                    }.await;
                    let _ = reply.send(result.map(|spec| start(&inspector, spec, &mut runs, &mut futures)));
                }
                Some(Request::Stop(run_id, reply)) => {
                    let result = match runs.remove(&run_id) {
                        Some(run) => {
                            run.token.cancel();
                            let pipeline_id = run.pipeline_id;
                            storage.call(move |db| db.set_pipeline_active(pipeline_id, false)).await.map_err(Into::into)
                        }
                        None => Err(PipelineError::NotActive(run_id)),
                    };
                    let _ = reply.send(result);
                }
                Some(Request::List(reply)) => {
                    let _ = reply.send(runs.iter().map(|(id, run)| status(*id, run)).collect());
                }
                None => break,
            },
            Some(ended) = futures.next() => {
                // A run ends only when stopped (removed above) or at shutdown.
                runs.remove(&ended);
            }
        }
    }
    // Shutdown: stop every run (they stay marked active, so they resume at the next start)
    // and let each finish the frame and deliveries it is on.
    for run in runs.values() {
        run.token.cancel();
    }
    while futures.next().await.is_some() {}
    Ok(())
}

fn start(
    inspector: &Inspector,
    spec: PipelineSpec,
    runs: &mut BTreeMap<Uuid, Run>,
    futures: &mut FuturesUnordered<BoxFuture<'static, Uuid>>,
) -> RunStatus {
    let run_id = Uuid::new_v4();
    let run = Run {
        pipeline_id: spec.id,
        started_at: Utc::now(),
        token: CancellationToken::new(),
        stats: Arc::new(Mutex::new(RunStats::default())),
    };
    let (token, stats, inspector) = (run.token.clone(), run.stats.clone(), inspector.clone());
    futures.push(Box::pin(async move {
        watch(spec, inspector, stats, token).await;
        run_id
    }));
    let status = status(run_id, &run);
    runs.insert(run_id, run);
    status
}

fn status(id: Uuid, run: &Run) -> RunStatus {
    let stats = run.stats.lock().unwrap_or_else(|e| e.into_inner());
    let (status, error) = match (&stats.error, stats.frames) {
        (Some(error), _) => ("error", Some(error.clone())),
        (None, 0) => ("starting", None),
        (None, _) => ("running", None),
    };
    RunStatus {
        id,
        pipeline_id: run.pipeline_id,
        status,
        error,
        started_at: run.started_at,
        frames_processed: stats.frames,
        anomalies_detected: stats.anomalies,
        avg_inference_time_ms: (stats.frames > 0).then(|| stats.inference_ms_total / stats.frames as f64),
        last_score: stats.last_score,
    }
}

/// One run: frames at the pipeline's rate until cancelled.
async fn watch(spec: PipelineSpec, inspector: Inspector, stats: Arc<Mutex<RunStats>>, token: CancellationToken) {
    let set_error = |error: Option<String>| stats.lock().unwrap_or_else(|e| e.into_inner()).error = error;
    let Some(camera) = inspector.cameras().get(&spec.source_id).cloned() else {
        set_error(Some(format!("no camera {:?}", spec.source_id)));
        return;
    };
    let mut confirmation = Confirmation::new(spec.confirm_frames as usize, spec.confirm_window as usize);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / spec.fps));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut deliveries: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            Some(()) = deliveries.next() => continue,
            _ = ticker.tick() => {}
        }
        let frame = match camera.capture().await {
            Ok(frame) => frame,
            Err(err) => {
                set_error(Some(err.to_string()));
                continue;
            }
        };
        let inferred = match inspector.inference.infer(ImageInput::Decoded(frame.image.clone())).await {
            Ok(inferred) => inferred,
            Err(err) => {
                set_error(Some(err.to_string()));
                continue;
            }
        };
        let rule = match inspector.rule_for(&inferred.model) {
            Ok(rule) => rule,
            Err(err) => {
                set_error(Some(err.to_string()));
                continue;
            }
        };
        let score = monitor::anomaly_score(&rule, &inferred.output);
        let threshold = spec.threshold.unwrap_or_else(|| monitor::default_threshold(&rule));
        let anomalous = score.is_some_and(|s| s >= threshold);
        {
            let mut stats = stats.lock().unwrap_or_else(|e| e.into_inner());
            stats.frames += 1;
            stats.inference_ms_total += inferred.inference_ms;
            stats.last_score = score;
            stats.error = None;
        }
        if !confirmation.push(anomalous) {
            continue;
        }
        let event = PipelineEvent {
            seq: 0,
            id: Uuid::new_v4(),
            pipeline_id: spec.id,
            station_id: spec.station_id.clone(),
            score: score.unwrap_or_default(),
            threshold,
            frames_anomalous: confirmation.anomalous_in_window() as u32,
            frames_window: confirmation.window() as u32,
            label: decision::decide(&rule, &inferred.output).label,
            at: Utc::now(),
        };
        let publish = spec.sinks.iter().any(|s| s.kind == SinkKind::Mqtt);
        let event = match inspector.storage.call(move |db| db.insert_pipeline_event(event, publish)).await {
            Ok(event) => event,
            Err(err) => {
                set_error(Some(format!("anomaly not stored: {err}")));
                continue;
            }
        };
        stats.lock().unwrap_or_else(|e| e.into_inner()).anomalies += 1;
        tracing::warn!(pipeline = %spec.id, score = event.score, "anomaly raised");
        // The same JSON as `GET /pipelines/{id}/events` and the MQTT message.
        let body = Bytes::from(serde_json::to_vec(&PipelineEventDto::from(&event)).expect("plain data serialises"));
        for sink in &spec.sinks {
            match &sink.kind {
                SinkKind::Mqtt => {}
                SinkKind::Webhook { url, headers } => {
                    if deliveries.len() >= MAX_PENDING_WEBHOOKS {
                        tracing::error!(pipeline = %spec.id, sink = sink.name, "webhook backlog full; delivery dropped");
                        continue;
                    }
                    let request = WebhookRequest { url: url.clone(), headers: headers.clone(), body: body.clone() };
                    deliveries.push(Box::pin(deliver(client.clone(), request, sink.name.clone(), token.clone())));
                }
                SinkKind::Filesystem { output_dir, save_images } => {
                    let (dir, body, image) =
                        (output_dir.clone(), body.clone(), save_images.then(|| frame.image.clone()));
                    let id = event.id;
                    let written =
                        tokio::task::spawn_blocking(move || write_files(&dir, id, &body, image.as_deref())).await;
                    if let Ok(Err(err)) | Err(err) = written.map_err(|e| e.to_string()) {
                        tracing::error!(pipeline = %spec.id, sink = sink.name, cause = err, "anomaly not written");
                    }
                }
            }
        }
    }
    // Finish (or give up on, after their retries) the deliveries already queued.
    while deliveries.next().await.is_some() {}
}

fn write_files(dir: &Path, id: Uuid, json: &[u8], image: Option<&image::RgbImage>) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Some(image) = image {
        let jpeg = encode_jpeg(image).map_err(|e| e.to_string())?;
        std::fs::write(dir.join(format!("{id}.jpg")), jpeg).map_err(|e| e.to_string())?;
    }
    // The JSON last: a watcher that sees it finds the image already there.
    std::fs::write(dir.join(format!("{id}.json")), json).map_err(|e| e.to_string())
}

struct WebhookRequest {
    url: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

/// Attempts before a webhook delivery is given up (and logged).
const WEBHOOK_ATTEMPTS: u32 = 5;
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

async fn deliver(
    client: Client<HttpConnector, Full<Bytes>>,
    request: WebhookRequest,
    sink: String,
    token: CancellationToken,
) {
    let mut backoff = Duration::from_millis(500);
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        let mut builder = hyper::Request::post(&request.url).header(hyper::header::CONTENT_TYPE, "application/json");
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let outcome = match builder.body(Full::new(request.body.clone())) {
            Ok(http_request) => match tokio::time::timeout(WEBHOOK_TIMEOUT, client.request(http_request)).await {
                Ok(Ok(response)) if response.status().is_success() => return,
                Ok(Ok(response)) => format!("answered {}", response.status()),
                Ok(Err(err)) => err.to_string(),
                Err(_) => "timed out".to_owned(),
            },
            Err(err) => {
                tracing::error!(sink, cause = %err, "webhook request cannot be built; dropped");
                return;
            }
        };
        tracing::warn!(sink, attempt, cause = outcome, "webhook delivery failed");
        if attempt == WEBHOOK_ATTEMPTS {
            break;
        }
        // The daemon stopping ends the retries: the event is stored, and MQTT is the
        // durable channel.
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = token.cancelled() => {
                tracing::error!(sink, url = request.url, "webhook delivery dropped at shutdown");
                return;
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(8));
    }
    tracing::error!(sink, url = request.url, "webhook delivery given up after {WEBHOOK_ATTEMPTS} attempts");
}
