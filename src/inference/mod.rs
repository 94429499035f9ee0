//! Model loading and inference with tract, on dedicated threads.
//!
//! A model is a folder with `model.onnx` and `model.toml` ([`spec`]). [`Model::load`]
//! parses the spec, loads and optimises the graph for a batch of one, and runs one warm-up
//! inference, so that a corrupt or mismatched model is refused at load with an error
//! (never a panic reaching the daemon) and the first real part is not slow.
//!
//! Inference and image decoding are CPU-bound, so they run on `inference.threads` OS
//! threads behind a queue ([`InferenceHandle`]), never on the tokio runtime: a slow model
//! must not delay REST replies, Modbus handshakes or wrench keep-alives.

pub mod spec;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use image::RgbImage;
use tokio::sync::{mpsc, oneshot, watch};
use tract_onnx::prelude::*;

use crate::core::decision::ModelOutput;
use crate::supervisor::{Phase, ServiceContext, Supervisor};
pub use spec::{ModelSpec, Task};

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error("model.onnx at {path}: {message}")]
    Graph { path: PathBuf, message: String },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("model output has {got} values, model.toml expects {expected}")]
    OutputShape { got: usize, expected: usize },
}

/// A loaded, optimised, warmed-up model.
pub struct Model {
    pub spec: ModelSpec,
    plan: Arc<TypedRunnableModel>,
}

impl Model {
    pub fn load(dir: &Path) -> Result<Model, ModelError> {
        let spec = ModelSpec::load(dir)?;
        let path = dir.join("model.onnx");
        let graph_error = |message: String| ModelError::Graph { path: path.clone(), message };
        let shape = [1, 3, spec.height as usize, spec.width as usize];
        // tract reports bad graphs as errors; the unwind guard is for the protobuf corner
        // cases nobody has fuzzed, so that a bad upload can never take the daemon down.
        let plan = std::panic::catch_unwind(AssertUnwindSafe(|| {
            tract_onnx::onnx()
                .model_for_path(&path)?
                .with_input_fact(0, f32::fact(shape).into())?
                .into_optimized()?
                .into_runnable()
        }))
        .map_err(|_| graph_error("the ONNX loader panicked on this file".into()))?
        .map_err(|err| graph_error(format!("{err:#}")))?;
        let model = Model { spec, plan };
        let blank = RgbImage::new(model.spec.width, model.spec.height);
        model.run(&blank)?;
        Ok(model)
    }

    /// Preprocesses `image` as model.toml says and runs the model.
    pub fn run(&self, image: &RgbImage) -> Result<ModelOutput, ModelError> {
        let input = self.preprocess(image);
        let outputs = self.plan.run(tvec!(input.into())).map_err(|err| ModelError::Run(format!("{err:#}")))?;
        let first = outputs.first().ok_or_else(|| ModelError::Run("the model produced no output".into()))?;
        let values: Vec<f32> = first
            .to_plain_array_view::<f32>()
            .map_err(|err| ModelError::Run(format!("{err:#}")))?
            .iter()
            .copied()
            .collect();
        self.decode(values)
    }

    fn preprocess(&self, image: &RgbImage) -> Tensor {
        let (width, height) = (self.spec.width, self.spec.height);
        let resized;
        let image = if image.dimensions() == (width, height) {
            image
        } else {
            resized = image::imageops::resize(image, width, height, image::imageops::FilterType::Triangle);
            &resized
        };
        let (mean, std) = (self.spec.mean, self.spec.std);
        let plane = (width * height) as usize;
        let mut data = vec![0f32; 3 * plane];
        for (index, pixel) in image.pixels().enumerate() {
            for channel in 0..3 {
                data[channel * plane + index] = (pixel[channel] as f32 / 255.0 - mean[channel]) / std[channel];
            }
        }
        Tensor::from_shape(&[1, 3, height as usize, width as usize], &data).expect("shape matches data length")
    }

    fn decode(&self, values: Vec<f32>) -> Result<ModelOutput, ModelError> {
        match self.spec.task {
            Task::Classification => {
                let expected = self.spec.labels.len();
                if values.len() != expected {
                    return Err(ModelError::OutputShape { got: values.len(), expected });
                }
                let probabilities = match self.spec.output_kind {
                    spec::OutputKind::Logits => softmax(&values),
                    _ => values,
                };
                Ok(ModelOutput::Classification { probabilities })
            }
            Task::Anomaly => match values.as_slice() {
                [score] => Ok(ModelOutput::Anomaly { score: *score }),
                _ => Err(ModelError::OutputShape { got: values.len(), expected: 1 }),
            },
            Task::Detection => Err(ModelError::Run("detection decoding is not supported yet".into())),
        }
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// An image to judge: still encoded (an upload), or already decoded (a camera frame).
pub enum ImageInput {
    Encoded(bytes::Bytes),
    Decoded(Arc<RgbImage>),
}

/// What one inference produced.
#[derive(Debug)]
pub struct Inferred {
    pub output: ModelOutput,
    /// Model time only (preprocessing included, decoding excluded).
    pub inference_ms: f64,
    pub width: u32,
    pub height: u32,
}

/// Why an inference request was not answered with a model output.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("the image cannot be decoded: {0}")]
    Undecodable(String),
    #[error("the model is not loaded yet")]
    NotReady,
    #[error("the inference service has stopped")]
    Stopped,
    #[error(transparent)]
    Model(#[from] ModelError),
}

enum Job {
    Infer { image: ImageInput, reply: oneshot::Sender<Result<Inferred, InferenceError>> },
    Stop,
}

/// Cheap to clone; submits images to the inference threads.
#[derive(Clone)]
pub struct InferenceHandle {
    jobs: mpsc::Sender<Job>,
    model: watch::Receiver<Option<Arc<ModelInfo>>>,
}

/// What the API shows about the active model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub spec: ModelSpec,
    pub dir: PathBuf,
}

/// Limits for decoding untrusted uploads: a 20 MB PNG can claim gigapixels.
const MAX_DECODED_SIDE: u32 = 16_384;
const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;

pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, InferenceError> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|err| InferenceError::Undecodable(err.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DECODED_SIDE);
    limits.max_image_height = Some(MAX_DECODED_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|err| InferenceError::Undecodable(err.to_string()))?;
    Ok(decoded.into_rgb8())
}

impl InferenceHandle {
    pub async fn infer(&self, image: ImageInput) -> Result<Inferred, InferenceError> {
        if self.model.borrow().is_none() {
            return Err(InferenceError::NotReady);
        }
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job::Infer { image, reply }).await.map_err(|_| InferenceError::Stopped)?;
        answer.await.map_err(|_| InferenceError::Stopped)?
    }

    pub fn model(&self) -> Option<Arc<ModelInfo>> {
        self.model.borrow().clone()
    }

    /// Resolves once a model is loaded (or never, if loading failed).
    pub async fn wait_loaded(&self) -> Arc<ModelInfo> {
        let mut rx = self.model.clone();
        loop {
            if let Some(info) = rx.borrow_and_update().clone() {
                return info;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Queue depth in front of the inference threads; callers wait (backpressure) beyond it.
const JOB_QUEUE: usize = 64;

/// Starts `threads` inference threads. The first loads the model; the others wait for it.
/// A model that fails to load leaves the service degraded: inspections get 503 and
/// `/ready` names the cause, while records, health and statistics stay available.
pub fn spawn(supervisor: &mut Supervisor, model_dir: PathBuf, threads: usize) -> InferenceHandle {
    let (jobs_tx, jobs_rx) = mpsc::channel(JOB_QUEUE);
    let (model_tx, model_rx) = watch::channel(None);
    let shared = Arc::new(SharedQueue {
        jobs: Mutex::new(jobs_rx),
        load: Mutex::new(LoadState::Loading),
        loaded: Condvar::new(),
    });
    for index in 0..threads {
        let (shared, stop_shared) = (shared.clone(), shared.clone());
        let (model_dir, model_tx, stop_tx) = (model_dir.clone(), model_tx.clone(), jobs_tx.clone());
        supervisor.spawn_thread(
            format!("inference-{index}"),
            Phase::Inference,
            move |ctx: ServiceContext| {
                let model = if index == 0 {
                    let started = Instant::now();
                    let loaded = Model::load(&model_dir).map(Arc::new);
                    shared.finish_loading(loaded.as_ref().ok().cloned());
                    match loaded {
                        Ok(model) => {
                            tracing::info!(
                                model = model.spec.name,
                                version = model.spec.version,
                                load_ms = started.elapsed().as_millis() as u64,
                                "model loaded"
                            );
                            model_tx.send_replace(Some(Arc::new(ModelInfo { spec: model.spec.clone(), dir: model_dir })));
                            model
                        }
                        Err(err) => {
                            // No model, no inspections; but the station stays up, its
                            // records readable and the reason on /ready.
                            tracing::error!(cause = %err, dir = %model_dir.display(), "model not loaded; inspections refused");
                            ctx.set_degraded(format!("model not loaded: {err}"));
                            refuse_until_stop(&shared);
                            return Ok(());
                        }
                    }
                } else {
                    match shared.wait_loaded() {
                        Some(model) => model,
                        None => {
                            ctx.set_degraded("model not loaded");
                            refuse_until_stop(&shared);
                            return Ok(());
                        }
                    }
                };
                ctx.set_ready();
                serve(&shared, &model);
                Ok(())
            },
            async move {
                stop_shared.finish_loading(None);
                let _ = stop_tx.send(Job::Stop).await;
            },
        );
    }
    InferenceHandle { jobs: jobs_tx, model: model_rx }
}

enum LoadState {
    Loading,
    Loaded(Arc<Model>),
    /// Loading failed or the service is stopping: waiting threads give up.
    GaveUp,
}

struct SharedQueue {
    // Held only while taking the next job, by one thread at a time.
    jobs: Mutex<mpsc::Receiver<Job>>,
    load: Mutex<LoadState>,
    /// Signalled when `load` leaves `Loading`.
    loaded: Condvar,
}

impl SharedQueue {
    /// Records the outcome of loading (`None`: failed or stopping) and wakes the waiters.
    /// The first outcome wins: a stop during loading is not undone by the load finishing.
    fn finish_loading(&self, model: Option<Arc<Model>>) {
        let mut state = self.load.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*state, LoadState::Loading) {
            *state = model.map_or(LoadState::GaveUp, LoadState::Loaded);
        }
        self.loaded.notify_all();
    }

    fn wait_loaded(&self) -> Option<Arc<Model>> {
        let state = self.load.lock().unwrap_or_else(|e| e.into_inner());
        let state =
            self.loaded.wait_while(state, |s| matches!(s, LoadState::Loading)).unwrap_or_else(|e| e.into_inner());
        match &*state {
            LoadState::Loaded(model) => Some(model.clone()),
            _ => None,
        }
    }
}

fn serve(shared: &SharedQueue, model: &Model) {
    loop {
        let job = shared.jobs.lock().unwrap_or_else(|e| e.into_inner()).blocking_recv();
        match job {
            Some(Job::Infer { image, reply }) => {
                let _ = reply.send(infer_one(model, image));
            }
            Some(Job::Stop) | None => return,
        }
    }
}

/// Without a model: answers every job with `NotReady` until stopped.
fn refuse_until_stop(shared: &SharedQueue) {
    loop {
        let job = shared.jobs.lock().unwrap_or_else(|e| e.into_inner()).blocking_recv();
        match job {
            Some(Job::Infer { reply, .. }) => {
                let _ = reply.send(Err(InferenceError::NotReady));
            }
            Some(Job::Stop) | None => return,
        }
    }
}

fn infer_one(model: &Model, image: ImageInput) -> Result<Inferred, InferenceError> {
    let decoded;
    let image: &RgbImage = match &image {
        ImageInput::Encoded(bytes) => {
            decoded = decode_image(bytes)?;
            &decoded
        }
        ImageInput::Decoded(image) => image,
    };
    let started = Instant::now();
    let output = model.run(image)?;
    Ok(Inferred {
        output,
        inference_ms: started.elapsed().as_secs_f64() * 1000.0,
        width: image.width(),
        height: image.height(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_a_distribution() {
        let p = softmax(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[2] > p[1] && p[1] > p[0]);
    }

    #[test]
    fn corrupt_model_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy("models/parts-classifier/model.toml", dir.path().join("model.toml")).unwrap();
        let mut onnx = std::fs::read("models/parts-classifier/model.onnx").unwrap();
        onnx.truncate(onnx.len() / 3);
        std::fs::write(dir.path().join("model.onnx"), &onnx).unwrap();
        let err = Model::load(dir.path()).err().expect("a truncated model must not load");
        assert!(matches!(err, ModelError::Graph { .. }), "{err}");

        std::fs::write(dir.path().join("model.onnx"), b"not a model at all").unwrap();
        assert!(matches!(Model::load(dir.path()), Err(ModelError::Graph { .. })));
    }

    #[test]
    fn decode_limits_refuse_giant_images() {
        // A valid PNG header claiming 100k x 100k pixels.
        let mut png = Vec::new();
        png.extend_from_slice(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR");
        png.extend_from_slice(&100_000u32.to_be_bytes());
        png.extend_from_slice(&100_000u32.to_be_bytes());
        png.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(decode_image(&png), Err(InferenceError::Undecodable(_))));
    }
}
