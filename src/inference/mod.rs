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

pub mod detect;
pub mod spec;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use image::RgbImage;
use tokio::sync::{mpsc, oneshot, watch};
use tract_onnx::prelude::*;

use crate::core::decision::{AnomalyMap, ModelOutput};
use crate::supervisor::{Phase, ServiceContext, StateReporter, Supervisor};
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
        let plan = plan_for(&dir.join("model.onnx"), (spec.width, spec.height))?;
        let model = Model { spec, plan };
        let blank = RgbImage::new(model.spec.width, model.spec.height);
        model.run(&blank)?;
        Ok(model)
    }

    /// Preprocesses `image` as model.toml says and runs the model.
    pub fn run(&self, image: &RgbImage) -> Result<ModelOutput, ModelError> {
        let spec = &self.spec;
        let input = preprocess(image, (spec.width, spec.height), spec.mean, spec.std);
        let outputs = self.plan.run(tvec!(input.into())).map_err(|err| ModelError::Run(format!("{err:#}")))?;
        let first = outputs.first().ok_or_else(|| ModelError::Run("the model produced no output".into()))?;
        let shape = first.shape().to_vec();
        let values = plain_values(first)?;
        let mut output = self.decode(values, &shape, image.dimensions())?;
        // An anomaly model's second output, if any, is its map: [1, 1, h, w], [1, h, w] or [h, w].
        if let (ModelOutput::Anomaly { map, .. }, Some(second)) = (&mut output, outputs.get(1)) {
            let dims: Vec<usize> = second.shape().iter().copied().filter(|&d| d != 1).collect();
            if let [height, width] = dims[..] {
                let values = plain_values(second)?;
                *map = Some(AnomalyMap { width: width as u32, height: height as u32, values });
            }
        }
        Ok(output)
    }

    /// Runs the model `iterations` times on a fixed noise image of its input size (so no
    /// resize); per-run milliseconds. The benchmark route and `cargo bench` time with it.
    pub fn time_runs(&self, iterations: usize) -> Result<Vec<f64>, ModelError> {
        let mut rng = fastrand::Rng::with_seed(7);
        let image = RgbImage::from_fn(self.spec.width, self.spec.height, |_, _| {
            image::Rgb([rng.u8(..), rng.u8(..), rng.u8(..)])
        });
        let mut times = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let started = Instant::now();
            self.run(&image)?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(times)
    }

    fn decode(&self, values: Vec<f32>, shape: &[usize], image: (u32, u32)) -> Result<ModelOutput, ModelError> {
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
                [score] => Ok(ModelOutput::Anomaly { score: *score, map: None }),
                _ => Err(ModelError::OutputShape { got: values.len(), expected: 1 }),
            },
            Task::Detection => {
                let spec = &self.spec;
                let scale = (image.0 as f32 / spec.width as f32, image.1 as f32 / spec.height as f32);
                let detections = detect::decode_yolo(
                    &values,
                    shape,
                    &spec.labels,
                    spec.detect,
                    scale,
                    (image.0 as f32, image.1 as f32),
                )
                .map_err(ModelError::Run)?;
                Ok(ModelOutput::Detection { detections })
            }
        }
    }
}

/// Loads the ONNX graph at `path` for one RGB image of `size`, optimised for tract.
pub(crate) fn plan_for(path: &Path, size: (u32, u32)) -> Result<Arc<TypedRunnableModel>, ModelError> {
    let graph_error = |message: String| ModelError::Graph { path: path.to_owned(), message };
    let shape = [1, 3, size.1 as usize, size.0 as usize];
    // tract reports bad graphs as errors; the unwind guard is for the protobuf corner
    // cases nobody has fuzzed, so that a bad upload can never take the daemon down.
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        tract_onnx::onnx()
            .model_for_path(path)?
            .with_input_fact(0, f32::fact(shape).into())?
            .into_optimized()?
            .into_runnable()
    }))
    .map_err(|_| graph_error("the ONNX loader panicked on this file".into()))?
    .map_err(|err| graph_error(format!("{err:#}")))
}

/// `image` as a model input: resized to `size` (bilinear) unless it has that size, scaled
/// to 0..1, normalised per channel, NCHW with a batch of one.
pub(crate) fn preprocess(image: &RgbImage, size: (u32, u32), mean: [f32; 3], std: [f32; 3]) -> Tensor {
    let (width, height) = size;
    let resized;
    let image = if image.dimensions() == size {
        image
    } else {
        resized = image::imageops::resize(image, width, height, image::imageops::FilterType::Triangle);
        &resized
    };
    let plane = (width * height) as usize;
    let mut data = vec![0f32; 3 * plane];
    for (index, pixel) in image.pixels().enumerate() {
        for channel in 0..3 {
            data[channel * plane + index] = (pixel[channel] as f32 / 255.0 - mean[channel]) / std[channel];
        }
    }
    Tensor::from_shape(&[1, 3, height as usize, width as usize], &data).expect("shape matches data length")
}

pub(crate) fn plain_values(tensor: &TValue) -> Result<Vec<f32>, ModelError> {
    let view = tensor.to_plain_array_view::<f32>().map_err(|err| ModelError::Run(format!("{err:#}")))?;
    Ok(view.iter().copied().collect())
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
    /// The model that produced `output`. During a hot swap this may already differ from
    /// [`InferenceHandle::model`]; the record names this one.
    pub model: Arc<ModelInfo>,
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

/// A model and what the API shows about it: its registry id, its spec and its folder.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub id: String,
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

/// The model the threads serve with, and its description.
struct Active {
    model: Model,
    info: Arc<ModelInfo>,
}

/// Cheap to clone; submits images to the inference threads and swaps their model.
#[derive(Clone)]
pub struct InferenceHandle {
    jobs: mpsc::Sender<Job>,
    shared: Arc<SharedQueue>,
    model: watch::Receiver<Option<Arc<ModelInfo>>>,
    /// One swap at a time, so that the last activation committed is the one served.
    swap: Arc<tokio::sync::Mutex<()>>,
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

    /// The model serving now.
    pub fn model(&self) -> Option<Arc<ModelInfo>> {
        self.model.borrow().clone()
    }

    /// Resolves once a model is loaded (or never, if none ever is).
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

    /// Takes the swap lock: the caller loads the new model ([`load_off_runtime`]), commits
    /// its activation, then [`SwapGuard::install`]s it. Triggers keep being served by the
    /// old model until `install` returns; jobs already running finish with the old one.
    pub async fn begin_swap(&self) -> SwapGuard<'_> {
        SwapGuard { handle: self, _lock: self.swap.lock().await }
    }
}

/// Held while a model is being swapped in; see [`InferenceHandle::begin_swap`].
pub struct SwapGuard<'a> {
    handle: &'a InferenceHandle,
    _lock: tokio::sync::MutexGuard<'a, ()>,
}

impl SwapGuard<'_> {
    pub fn install(self, loaded: Loaded) {
        let info = loaded.0.info.clone();
        self.handle.shared.install(loaded.0);
        tracing::info!(model = info.spec.name, version = info.spec.version, id = info.id, "model activated");
    }
}

/// A model loaded and warmed up, not yet serving.
pub struct Loaded(Arc<Active>);

impl Loaded {
    pub fn info(&self) -> &Arc<ModelInfo> {
        &self.0.info
    }

    /// See [`Model::time_runs`].
    pub fn time_runs(&self, iterations: usize) -> Result<Vec<f64>, ModelError> {
        self.0.model.time_runs(iterations)
    }
}

/// Loads and warms up the model in `dir` on the blocking pool, so that neither the
/// runtime nor the inference threads wait for it.
pub async fn load_off_runtime(id: String, dir: PathBuf) -> Result<Loaded, ModelError> {
    tokio::task::spawn_blocking(move || load(id, dir))
        .await
        .map_err(|err| ModelError::Run(format!("the loader failed: {err}")))?
}

fn load(id: String, dir: PathBuf) -> Result<Loaded, ModelError> {
    let model = Model::load(&dir)?;
    let info = Arc::new(ModelInfo { id, spec: model.spec.clone(), dir });
    Ok(Loaded(Arc::new(Active { model, info })))
}

/// Queue depth in front of the inference threads; callers wait (backpressure) beyond it.
const JOB_QUEUE: usize = 64;

/// Starts `threads` inference threads serving whichever model is active. The first loads
/// `initial` (the registry's active model: its id and folder, or why there is none). A
/// model that fails to load leaves the service degraded: inspections get 503 and `/ready`
/// names the cause, while records, health and statistics stay available, and activating
/// a model through the API brings it back.
pub fn spawn(
    supervisor: &mut Supervisor,
    initial: Result<(String, PathBuf), String>,
    threads: usize,
) -> InferenceHandle {
    let (jobs_tx, jobs_rx) = mpsc::channel(JOB_QUEUE);
    let (model_tx, model_rx) = watch::channel(None);
    let shared = Arc::new(SharedQueue {
        jobs: Mutex::new(jobs_rx),
        active: Mutex::new(None),
        announce: model_tx,
        reporter: Mutex::new(None),
    });
    let mut initial = Some(initial);
    for index in 0..threads {
        let (shared, stop_tx) = (shared.clone(), jobs_tx.clone());
        let initial = initial.take();
        supervisor.spawn_thread(
            format!("inference-{index}"),
            Phase::Inference,
            move |ctx: ServiceContext| {
                if let Some(initial) = initial {
                    *shared.reporter.lock().unwrap_or_else(|e| e.into_inner()) = Some(ctx.reporter());
                    let started = Instant::now();
                    let loaded = initial.and_then(|(id, dir)| {
                        load(id, dir.clone()).map_err(|err| format!("model not loaded from {}: {err}", dir.display()))
                    });
                    match loaded {
                        Ok(loaded) => {
                            let spec = &loaded.0.info.spec;
                            let load_ms = started.elapsed().as_millis() as u64;
                            tracing::info!(model = spec.name, version = spec.version, load_ms, "model loaded");
                            shared.install(loaded.0);
                        }
                        Err(reason) => {
                            // No model, no inspections; but the station stays up, its
                            // records readable and the reason on /ready.
                            tracing::error!(cause = %reason, "no model; inspections refused until one is activated");
                            ctx.set_degraded(reason);
                        }
                    }
                } else {
                    ctx.set_ready();
                }
                serve(&shared);
                Ok(())
            },
            async move {
                let _ = stop_tx.send(Job::Stop).await;
            },
        );
    }
    InferenceHandle { jobs: jobs_tx, shared, model: model_rx, swap: Arc::new(tokio::sync::Mutex::new(())) }
}

struct SharedQueue {
    // Held only while taking the next job, by one thread at a time.
    jobs: Mutex<mpsc::Receiver<Job>>,
    /// Locked only to read or replace the `Arc`, never while a model runs.
    active: Mutex<Option<Arc<Active>>>,
    announce: watch::Sender<Option<Arc<ModelInfo>>>,
    /// The first thread's readiness: degraded until a model serves.
    reporter: Mutex<Option<StateReporter>>,
}

impl SharedQueue {
    fn install(&self, active: Arc<Active>) {
        let info = active.info.clone();
        *self.active.lock().unwrap_or_else(|e| e.into_inner()) = Some(active);
        self.announce.send_replace(Some(info));
        if let Some(reporter) = &*self.reporter.lock().unwrap_or_else(|e| e.into_inner()) {
            reporter.set_ready();
        }
    }

    fn active(&self) -> Option<Arc<Active>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn serve(shared: &SharedQueue) {
    loop {
        let job = shared.jobs.lock().unwrap_or_else(|e| e.into_inner()).blocking_recv();
        match job {
            Some(Job::Infer { image, reply }) => {
                // The model is picked per job: a swap takes effect at the next job, and
                // the old model is dropped when the last job using it has finished.
                let result = match shared.active() {
                    Some(active) => infer_one(&active, image),
                    None => Err(InferenceError::NotReady),
                };
                let _ = reply.send(result);
            }
            Some(Job::Stop) | None => return,
        }
    }
}

fn infer_one(active: &Active, image: ImageInput) -> Result<Inferred, InferenceError> {
    let decoded;
    let image: &RgbImage = match &image {
        ImageInput::Encoded(bytes) => {
            decoded = decode_image(bytes)?;
            &decoded
        }
        ImageInput::Decoded(image) => image,
    };
    let started = Instant::now();
    let output = active.model.run(image)?;
    Ok(Inferred {
        output,
        model: active.info.clone(),
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
