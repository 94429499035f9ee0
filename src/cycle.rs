//! The inspection cycle: image in → inference → decision (core) → committed record →
//! `Event::InspectionRecorded` to the core. Every trigger source (REST upload, REST
//! camera, and later GPIO, Modbus, OPC-UA) runs a cycle through [`Inspector::inspect`].
//!
//! Ordering invariant: the caller gets its answer, and the core hears of the inspection,
//! only after the record (and its image) is committed. Acknowledging upstream on that
//! answer is therefore safe. The answer also waits for the core's snapshot to include
//! the record, so what a client reads next is consistent with what it was told.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::bus::{Bus, Event, InspectionSummary, Snapshot};
use crate::config::{StationConfig, ThresholdOverrides};
use crate::core::decision::{self, AnomalyMap, Detection, ModelOutput};
use crate::core::expected::{self, Expectation, ExpectedItem};
use crate::inference::{ImageInput, InferenceError, InferenceHandle, ModelInfo};
use crate::metrics::{Metrics, Stage};
use crate::south::camera::{CameraError, CameraHandle};
use crate::storage::{InspectionRecord, NewImage, NewInspection, Source, Storage, StorageError};

/// An image format the station accepts, with how it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFormat {
    pub extension: &'static str,
    pub content_type: &'static str,
}

pub const JPEG: ImageFormat = ImageFormat { extension: "jpg", content_type: "image/jpeg" };

/// The image formats stationd inspects and stores.
const ACCEPTED: [(image::ImageFormat, ImageFormat); 5] = [
    (image::ImageFormat::Jpeg, JPEG),
    (image::ImageFormat::Png, ImageFormat { extension: "png", content_type: "image/png" }),
    (image::ImageFormat::Bmp, ImageFormat { extension: "bmp", content_type: "image/bmp" }),
    (image::ImageFormat::Tiff, ImageFormat { extension: "tiff", content_type: "image/tiff" }),
    (image::ImageFormat::WebP, ImageFormat { extension: "webp", content_type: "image/webp" }),
];

/// How an image of `format` is stored, if stationd accepts that format.
pub fn accepted_format(format: image::ImageFormat) -> Option<ImageFormat> {
    ACCEPTED.iter().find(|(f, _)| *f == format).map(|(_, accepted)| *accepted)
}

pub enum CycleImage {
    Upload { bytes: bytes::Bytes, format: ImageFormat },
    Camera,
}

pub struct InspectRequest {
    pub station_id: String,
    pub part_id: Option<String>,
    pub image: CycleImage,
    /// When the trigger arrived; the cycle time is measured from here.
    pub triggered_at: Instant,
    /// What the image must hold; `None`: the station's recipe, if it has one.
    pub expected: Option<Expectation>,
}

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("unknown station {0:?}")]
    UnknownStation(String),
    #[error("station {0:?} has no camera configured")]
    NoCamera(String),
    #[error(transparent)]
    Camera(#[from] CameraError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error("the record could not be stored: {0}")]
    Storage(#[from] StorageError),
    #[error("the camera frame could not be encoded: {0}")]
    Encode(String),
    #[error("expected items need a detection model; model {0:?} is not one")]
    NotDetection(String),
}

/// Cheap to clone: handles to the services a cycle uses.
#[derive(Clone)]
pub struct Inspector {
    pub inference: InferenceHandle,
    pub storage: Storage,
    events: mpsc::Sender<Event>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    stations: Arc<BTreeMap<String, StationConfig>>,
    cameras: Arc<BTreeMap<String, CameraHandle>>,
    overrides: ThresholdOverrides,
    metrics: Metrics,
    /// Camera frames go to the drift monitor too (when `[drift]` is on).
    drift: Option<crate::drift::Drift>,
    recipes: Arc<BTreeMap<String, Vec<ExpectedItem>>>,
}

impl Inspector {
    pub fn new(
        inference: InferenceHandle,
        storage: Storage,
        bus: &Bus,
        stations: BTreeMap<String, StationConfig>,
        cameras: BTreeMap<String, CameraHandle>,
        overrides: ThresholdOverrides,
        metrics: Metrics,
    ) -> Inspector {
        Inspector {
            inference,
            storage,
            events: bus.events.clone(),
            snapshots: bus.snapshots.clone(),
            stations: Arc::new(stations),
            cameras: Arc::new(cameras),
            overrides,
            metrics,
            drift: None,
            recipes: Arc::default(),
        }
    }

    pub fn station_ids(&self) -> impl Iterator<Item = &String> {
        self.stations.keys()
    }

    pub fn has_station(&self, station_id: &str) -> bool {
        self.stations.contains_key(station_id)
    }

    /// The camera `station_id` inspects with, if the station exists and has one.
    pub fn camera_of(&self, station_id: &str) -> Option<&str> {
        self.stations.get(station_id)?.camera.as_deref()
    }

    pub fn cameras(&self) -> &BTreeMap<String, CameraHandle> {
        &self.cameras
    }

    /// `model`'s decision rule with the config's thresholds. Take the model from the
    /// inference result, not from the handle: during a hot swap they may differ.
    pub fn rule_for(&self, model: &ModelInfo) -> Result<decision::DecisionRule, InferenceError> {
        model.spec.rule(&self.overrides).map_err(|err| InferenceError::Model(err.into()))
    }

    /// Sends the camera frames of inspections to the drift monitor.
    pub fn with_drift(mut self, drift: Option<crate::drift::Drift>) -> Inspector {
        self.drift = drift;
        self
    }

    /// The recipes triggers may name, and stations check by default.
    pub fn with_recipes(mut self, recipes: BTreeMap<String, Vec<ExpectedItem>>) -> Inspector {
        self.recipes = Arc::new(recipes);
        self
    }

    pub fn recipes(&self) -> &BTreeMap<String, Vec<ExpectedItem>> {
        &self.recipes
    }

    /// Recipe `name` as an expectation, if there is one.
    pub fn recipe(&self, name: &str) -> Option<Expectation> {
        let items = self.recipes.get(name)?;
        Some(Expectation { recipe: Some(name.to_owned()), items: items.clone() })
    }

    /// The stations that check recipe `name` by default.
    pub fn stations_with_recipe(&self, name: &str) -> Vec<String> {
        let stations = self.stations.iter().filter(|(_, s)| s.recipe.as_deref() == Some(name));
        stations.map(|(id, _)| id.clone()).collect()
    }

    /// The stations that inspect with camera `camera_id`.
    pub fn stations_with_camera(&self, camera_id: &str) -> Vec<String> {
        let stations = self.stations.iter().filter(|(_, s)| s.camera.as_deref() == Some(camera_id));
        stations.map(|(id, _)| id.clone()).collect()
    }

    pub async fn inspect(&self, request: InspectRequest) -> Result<InspectionRecord, CycleError> {
        let station = self
            .stations
            .get(&request.station_id)
            .ok_or_else(|| CycleError::UnknownStation(request.station_id.clone()))?;
        let (input, stored_image, source) = match request.image {
            CycleImage::Upload { bytes, format } => (
                ImageInput::Encoded(bytes.clone()),
                NewImage { bytes, extension: format.extension, content_type: format.content_type },
                Source::Upload,
            ),
            CycleImage::Camera => {
                let camera_id =
                    station.camera.as_ref().ok_or_else(|| CycleError::NoCamera(request.station_id.clone()))?;
                let camera =
                    self.cameras.get(camera_id).ok_or_else(|| CycleError::NoCamera(request.station_id.clone()))?;
                let frame = camera.capture().await?;
                if let Some(drift) = &self.drift {
                    drift.offer(camera_id, frame.image.clone());
                }
                self.metrics.stage(&request.station_id, Stage::Capture, request.triggered_at.elapsed());
                let jpeg = encode_jpeg_off_runtime(frame.image.clone()).await?;
                (
                    ImageInput::Decoded(frame.image),
                    NewImage { bytes: jpeg, extension: JPEG.extension, content_type: JPEG.content_type },
                    Source::Camera,
                )
            }
        };

        let expected = request.expected.or_else(|| self.recipe(station.recipe.as_deref()?));

        let inferred = self.inference.infer(input).await?;
        self.metrics.stage(&request.station_id, Stage::Inference, request.triggered_at.elapsed());
        let model = inferred.model.clone();
        let rule = self.rule_for(&model)?;
        let mut verdict = decision::decide(&rule, &inferred.output);
        // The detections the rule did not count as defects are the parts found.
        let parts: Vec<Detection> = match &inferred.output {
            ModelOutput::Detection { detections } => {
                detections.iter().filter(|d| !verdict.defects.contains(d)).cloned().collect()
            }
            _ => Vec::new(),
        };
        if let Some(expected) = &expected {
            let ModelOutput::Detection { detections } = &inferred.output else {
                return Err(CycleError::NotDetection(format!("{} {}", model.spec.name, model.spec.version)));
            };
            let check =
                expected::check(&expected.items, detections.iter().map(|d| (d.class_name.as_str(), d.confidence)));
            verdict = expected::judge(verdict, &check);
        }
        let scores = match &inferred.output {
            ModelOutput::Classification { probabilities } => {
                model.spec.labels.iter().cloned().zip(probabilities.iter().copied()).collect()
            }
            ModelOutput::Anomaly { score, .. } => vec![("anomaly_score".to_owned(), *score)],
            ModelOutput::Detection { .. } => Vec::new(),
        };
        let new = NewInspection {
            id: Uuid::new_v4(),
            station_id: request.station_id,
            part_id: request.part_id,
            source,
            decision: verdict.decision,
            confidence: verdict.confidence,
            label: verdict.label,
            scores,
            defects: verdict.defects,
            parts,
            expected,
            mm_per_pixel: station.mm_per_pixel,
            anomaly_map: relative_map(&inferred.output, &rule),
            model_name: model.spec.name.clone(),
            model_version: model.spec.version.clone(),
            inference_ms: inferred.inference_ms,
            total_ms: request.triggered_at.elapsed().as_secs_f64() * 1000.0,
            image: Some(stored_image),
            image_width: inferred.width,
            image_height: inferred.height,
            inspected_at: Utc::now(),
        };
        let record = self.storage.call(move |db| db.insert_inspection(new)).await?;
        self.metrics.stage(&record.station_id, Stage::Commit, request.triggered_at.elapsed());
        self.metrics.inspection(&record.station_id, record.decision.as_str());

        let summary = InspectionSummary {
            id: record.id,
            seq: record.seq,
            station_id: record.station_id.clone(),
            part_id: record.part_id.clone(),
            source,
            triggered_at: Some(request.triggered_at),
            decision: record.decision,
            confidence: record.confidence,
            label: record.label.clone(),
            objects_found: record.detections().count() as u32,
            detected: record.detections().map(|d| (d.class_name.clone(), d.confidence)).collect(),
            cycle_time_ms: record.total_ms,
            inference_ms: record.inference_ms,
            inspected_at: record.inspected_at,
        };
        // The record is committed; if the core is already gone (shutdown), the counters
        // are rebuilt from storage at the next start.
        if self.events.send(Event::InspectionRecorded(summary)).await.is_ok() {
            // Read-your-writes: answer only once the snapshot (REST, and later Modbus and
            // OPC-UA) includes this record, so a client that got its answer never reads
            // counters without it. The core drains its queue before stopping, so this
            // wait ends during shutdown too; an error means the core is gone.
            let mut snapshots = self.snapshots.clone();
            let _ = snapshots
                .wait_for(|s| {
                    s.stations
                        .get(&record.station_id)
                        .and_then(|st| st.last.as_ref())
                        .is_some_and(|l| l.seq >= record.seq)
                })
                .await;
            self.metrics.stage(&record.station_id, Stage::Published, request.triggered_at.elapsed());
        }
        tracing::debug!(id = %record.id, station = record.station_id, decision = record.decision.as_str(), "inspection stored");
        Ok(record)
    }
}

/// An anomaly model's map with its cells divided by the fail threshold in force, so that
/// 1.0 is the fail level whatever the model's score scale.
fn relative_map(output: &ModelOutput, rule: &decision::DecisionRule) -> Option<AnomalyMap> {
    let (ModelOutput::Anomaly { map: Some(map), .. }, decision::DecisionRule::Anomaly { fail_threshold, .. }) =
        (output, rule)
    else {
        return None;
    };
    let scale = if *fail_threshold > 0.0 { 1.0 / fail_threshold } else { 1.0 };
    Some(AnomalyMap { values: map.values.iter().map(|v| v * scale).collect(), ..map.clone() })
}

/// `encode_jpeg` on the blocking pool: encoding a frame takes milliseconds.
pub(crate) async fn encode_jpeg_off_runtime(image: Arc<image::RgbImage>) -> Result<bytes::Bytes, CycleError> {
    tokio::task::spawn_blocking(move || encode_jpeg(&image)).await.map_err(|err| CycleError::Encode(err.to_string()))?
}

pub(crate) fn encode_jpeg(image: &image::RgbImage) -> Result<bytes::Bytes, CycleError> {
    let mut out = Vec::with_capacity(image.as_raw().len() / 8);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(image)
        .map_err(|err| CycleError::Encode(err.to_string()))?;
    Ok(out.into())
}
