//! `model.toml`: what a model folder says about its model (task, input, labels,
//! thresholds, version, measured metrics), parsed strictly like the main config.

use std::path::Path;

use serde::Deserialize;

use crate::config::ThresholdOverrides;
use crate::core::decision::DecisionRule;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Classification,
    Detection,
    Anomaly,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Classification => "classification",
            Task::Detection => "detection",
            Task::Anomaly => "anomaly",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Probabilities,
    Logits,
    /// A single anomaly score.
    Score,
    /// A YOLOv8-style head, `[1, 4 + classes, N]` (decoded and NMS'd in Rust).
    Yolo,
}

/// A validated model.toml.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    pub task: Task,
    pub description: String,
    pub width: u32,
    pub height: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub output_kind: OutputKind,
    pub labels: Vec<String>,
    pub pass_labels: Vec<String>,
    /// Detection: the classes that are defects (the others are parts, counted but harmless).
    pub defect_labels: Vec<String>,
    /// Detection: candidate filtering and NMS.
    pub detect: super::detect::DecodeSettings,
    pub pass_threshold: f32,
    pub fail_threshold: f32,
    /// Held-out accuracy as measured by the training script, if reported.
    pub heldout_accuracy: Option<f64>,
    /// The `[metrics]` table as the training script wrote it (shown by the registry).
    pub metrics: toml::Table,
}

#[derive(Debug, thiserror::Error)]
#[error("model.toml: {0}")]
pub struct SpecError(pub String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    version: String,
    task: String,
    #[serde(default)]
    description: String,
    input: RawInput,
    output: RawOutput,
    thresholds: RawThresholds,
    #[serde(default)]
    metrics: Option<toml::Table>,
}

/// `[input]` of model.toml, and of a PatchCore backbone's backbone.toml.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInput {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) mean: [f32; 3],
    pub(crate) std: [f32; 3],
}

impl RawInput {
    /// A size the loader can plan for and a normalisation that divides.
    pub(crate) fn check(&self) -> Result<(), String> {
        if !(8..=4096).contains(&self.width) || !(8..=4096).contains(&self.height) {
            return Err("`input`: width and height must be within 8..=4096".into());
        }
        if self.std.iter().any(|s| !s.is_normal() || *s <= 0.0) {
            return Err("`input.std`: every value must be > 0".into());
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    kind: String,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    pass_labels: Vec<String>,
    #[serde(default)]
    defect_labels: Vec<String>,
    confidence_threshold: Option<f32>,
    iou_threshold: Option<f32>,
    max_detections: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThresholds {
    pass_threshold: f32,
    fail_threshold: f32,
}

impl ModelSpec {
    pub fn load(dir: &Path) -> Result<ModelSpec, SpecError> {
        let path = dir.join("model.toml");
        let text = std::fs::read_to_string(&path)
            .map_err(|err| SpecError(format!("cannot read {}: {err}", path.display())))?;
        ModelSpec::parse(&text)
    }

    pub fn parse(text: &str) -> Result<ModelSpec, SpecError> {
        let de = toml::Deserializer::parse(text).map_err(|err| SpecError(err.message().to_owned()))?;
        let raw: RawSpec = serde_path_to_error::deserialize(de)
            .map_err(|err| SpecError(format!("`{}`: {}", err.path(), err.inner().message())))?;
        let task = match raw.task.as_str() {
            "classification" => Task::Classification,
            "anomaly" => Task::Anomaly,
            "detection" => Task::Detection,
            other => return Err(SpecError(format!("`task`: unknown task {other:?}"))),
        };
        let output_kind = match (task, raw.output.kind.as_str()) {
            (Task::Classification, "probabilities") => OutputKind::Probabilities,
            (Task::Classification, "logits") => OutputKind::Logits,
            (Task::Anomaly, "score") => OutputKind::Score,
            (Task::Detection, "yolov8") => OutputKind::Yolo,
            (_, other) => {
                return Err(SpecError(format!("`output.kind`: {other:?} does not fit task {}", task.as_str())));
            }
        };
        let input = &raw.input;
        input.check().map_err(SpecError)?;
        if task == Task::Classification {
            if raw.output.labels.len() < 2 {
                return Err(SpecError("`output.labels`: a classifier needs at least two labels".into()));
            }
            if raw.output.pass_labels.is_empty()
                || raw.output.pass_labels.iter().any(|l| !raw.output.labels.contains(l))
            {
                return Err(SpecError("`output.pass_labels`: must name one or more of `output.labels`".into()));
            }
        }
        if task == Task::Detection {
            if raw.output.labels.is_empty() {
                return Err(SpecError("`output.labels`: a detector needs its class names".into()));
            }
            if raw.output.defect_labels.iter().any(|l| !raw.output.labels.contains(l)) {
                return Err(SpecError("`output.defect_labels`: must name classes of `output.labels`".into()));
            }
        } else if !raw.output.defect_labels.is_empty()
            || raw.output.confidence_threshold.is_some()
            || raw.output.iou_threshold.is_some()
            || raw.output.max_detections.is_some()
        {
            return Err(SpecError(
                "`output`: defect_labels, confidence_threshold, iou_threshold and max_detections are for detection models"
                    .into(),
            ));
        }
        let detect = super::detect::DecodeSettings {
            confidence: raw.output.confidence_threshold.unwrap_or(0.25),
            iou: raw.output.iou_threshold.unwrap_or(0.45),
            max_detections: raw.output.max_detections.unwrap_or(100),
        };
        if !(0.0..=1.0).contains(&detect.confidence) || !(0.0..=1.0).contains(&detect.iou) {
            return Err(SpecError("`output`: confidence_threshold and iou_threshold must be within 0..=1".into()));
        }
        if !(1..=10_000).contains(&detect.max_detections) {
            return Err(SpecError("`output.max_detections`: must be within 1..=10000".into()));
        }
        let heldout_accuracy =
            raw.metrics.as_ref().and_then(|m| m.get("heldout_accuracy")).and_then(toml::Value::as_float);
        let spec = ModelSpec {
            name: raw.name,
            version: raw.version,
            task,
            description: raw.description,
            width: input.width,
            height: input.height,
            mean: input.mean,
            std: input.std,
            output_kind,
            labels: raw.output.labels,
            pass_labels: raw.output.pass_labels,
            defect_labels: raw.output.defect_labels,
            detect,
            pass_threshold: raw.thresholds.pass_threshold,
            fail_threshold: raw.thresholds.fail_threshold,
            heldout_accuracy,
            metrics: raw.metrics.unwrap_or_default(),
        };
        spec.rule(&ThresholdOverrides::default())?;
        Ok(spec)
    }

    /// The decision rule for this model, with the config's threshold overrides applied.
    pub fn rule(&self, overrides: &ThresholdOverrides) -> Result<DecisionRule, SpecError> {
        let pass_threshold = overrides.pass_threshold.unwrap_or(self.pass_threshold);
        let fail_threshold = overrides.fail_threshold.unwrap_or(self.fail_threshold);
        match self.task {
            Task::Classification => {
                if !(0.0..=1.0).contains(&pass_threshold)
                    || !(0.0..=1.0).contains(&fail_threshold)
                    || fail_threshold >= pass_threshold
                {
                    return Err(SpecError(format!(
                        "thresholds: need 0 <= fail_threshold ({fail_threshold}) < pass_threshold ({pass_threshold}) <= 1"
                    )));
                }
                Ok(DecisionRule::Classification {
                    labels: self.labels.clone(),
                    pass_labels: self.pass_labels.clone(),
                    pass_threshold,
                    fail_threshold,
                })
            }
            Task::Anomaly => {
                if pass_threshold >= fail_threshold {
                    return Err(SpecError(format!(
                        "thresholds: anomaly scores need pass_threshold ({pass_threshold}) < fail_threshold ({fail_threshold})"
                    )));
                }
                Ok(DecisionRule::Anomaly { pass_threshold, fail_threshold })
            }
            Task::Detection => {
                // A defect detection at or above fail_threshold fails; one from
                // pass_threshold up is uncertain; weaker ones do not count.
                if !(0.0 < pass_threshold && pass_threshold < fail_threshold && fail_threshold <= 1.0) {
                    return Err(SpecError(format!(
                        "thresholds: detection needs 0 < pass_threshold ({pass_threshold}) < fail_threshold ({fail_threshold}) <= 1"
                    )));
                }
                Ok(DecisionRule::Detection {
                    defect_classes: self.defect_labels.clone(),
                    fail_threshold,
                    uncertain_threshold: pass_threshold,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUNDLED: &str = include_str!("../../models/parts-classifier/model.toml");

    #[test]
    fn bundled_spec_parses() {
        let spec = ModelSpec::parse(BUNDLED).unwrap();
        assert_eq!(spec.labels, ["ok", "scratch", "dent"]);
        assert_eq!((spec.width, spec.height), (64, 64));
        assert!(spec.heldout_accuracy.unwrap() >= 0.95);
    }

    #[test]
    fn config_overrides_replace_model_thresholds() {
        let spec = ModelSpec::parse(BUNDLED).unwrap();
        let overrides = ThresholdOverrides { pass_threshold: Some(0.9), fail_threshold: None };
        let DecisionRule::Classification { pass_threshold, fail_threshold, .. } = spec.rule(&overrides).unwrap() else {
            panic!("classification rule expected")
        };
        assert_eq!((pass_threshold, fail_threshold), (0.9, 0.2));
        let bad = ThresholdOverrides { pass_threshold: Some(0.1), fail_threshold: None };
        assert!(spec.rule(&bad).is_err());
    }

    const DETECTOR: &str = r#"
name = "kit-detector"
version = "0.1.0"
task = "detection"
[input]
width = 96
height = 96
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]
[output]
kind = "yolov8"
labels = ["bolt", "nut", "scratch"]
defect_labels = ["scratch"]
iou_threshold = 0.5
[thresholds]
pass_threshold = 0.3
fail_threshold = 0.6
"#;

    #[test]
    fn detection_specs_give_a_detection_rule() {
        let spec = ModelSpec::parse(DETECTOR).unwrap();
        assert_eq!((spec.detect.confidence, spec.detect.iou, spec.detect.max_detections), (0.25, 0.5, 100));
        let rule = spec.rule(&ThresholdOverrides::default()).unwrap();
        assert_eq!(
            rule,
            DecisionRule::Detection {
                defect_classes: vec!["scratch".into()],
                fail_threshold: 0.6,
                uncertain_threshold: 0.3
            }
        );
        for (text, expected) in [
            (DETECTOR.replace("defect_labels = [\"scratch\"]", "defect_labels = [\"dent\"]"), "`output.defect_labels`"),
            (DETECTOR.replace("kind = \"yolov8\"", "kind = \"score\""), "`output.kind`"),
            (DETECTOR.replace("fail_threshold = 0.6", "fail_threshold = 0.2"), "detection needs 0 < pass_threshold"),
            (
                BUNDLED.replace("pass_labels = [\"ok\"]", "pass_labels = [\"ok\"]\nmax_detections = 5"),
                "are for detection models",
            ),
        ] {
            let err = ModelSpec::parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should contain {expected}");
        }
    }

    #[test]
    fn bad_specs_are_refused_with_the_key() {
        let cases = [
            (BUNDLED.replace("task = \"classification\"", "task = \"segmentation\""), "`task`: unknown task"),
            (BUNDLED.replace("pass_labels = [\"ok\"]", "pass_labels = [\"good\"]"), "`output.pass_labels`"),
            (BUNDLED.replace("width = 64", "width = 64\nwidht = 3"), "`input.widht`"),
            (BUNDLED.replace("kind = \"probabilities\"", "kind = \"score\""), "`output.kind`"),
        ];
        for (text, expected) in cases {
            let err = ModelSpec::parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should contain {expected}");
        }
    }
}
