//! PatchCore anomaly models fitted on the station (the anomaly seed's training, for one
//! architecture): normal images in, a registered anomaly model out.
//!
//! The backbone (`[anomaly] backbone_dir`, built by `tools/build_patchcore_backbone.py`) is
//! an ONNX graph from an RGB image to a `[1, D, H, W]` grid of patch features. A fit
//! 1. runs it with tract on every normal image, keeping every fifth image aside for
//!    calibration and the patches of the others as candidates;
//! 2. picks the memory bank from the candidates by greedy k-center coreset selection
//!    (`core::patchcore`);
//! 3. writes the fitted model: the backbone graph with the bank as a constant and the
//!    nearest-neighbour scoring appended (patch score = distance to the nearest bank row,
//!    image score = the highest patch score), so it is an ordinary ONNX anomaly model with
//!    two outputs, `score` and `anomaly_map`, that tract (or any ONNX runtime) runs;
//! 4. loads it like any model, scores the calibration images to set the thresholds, and
//!    scores the held-out images (normal and anomalous) for the image AUROC.
//!
//! The caller registers the folder in the model registry. Everything here blocks; the
//! jobs service runs it on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use serde::Deserialize;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::core::decision::ModelOutput;
use crate::core::patchcore;
use crate::inference::{self, Model, ModelError, ModelSpec};

/// Fewest normal images a fit takes (four in five go to the bank, one to calibration).
pub const MIN_NORMAL_IMAGES: usize = 10;
/// Most rows of a memory bank: scoring costs patches × rows × features per inspection.
pub const MAX_BANK_ROWS: usize = 10_000;
/// Images one fit may read, over all its sets. At the most, the candidates take about
/// 100 MB (1 600 bank images × 256 patches × 64 features) and the coreset some minutes.
pub const MAX_IMAGES: usize = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error("the backbone at {dir}: {message}")]
    Backbone { dir: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error("the fitted model: {0}")]
    Model(#[from] ModelError),
    #[error("cancelled")]
    Cancelled,
}

/// What to fit, on which images.
#[derive(Debug, Clone)]
pub struct FitRequest {
    pub name: String,
    pub version: String,
    /// Normal images: the bank's patches and the calibration set.
    pub normal: Vec<PathBuf>,
    /// Held-out images for the AUROC; the calibration images are the normal ones when
    /// this is empty.
    pub heldout_normal: Vec<PathBuf>,
    pub heldout_anomalous: Vec<PathBuf>,
    /// Share of the candidate patches kept in the bank, 0 < ratio <= 1.
    pub coreset_ratio: f64,
}

/// What a fit measured.
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    pub bank_images: usize,
    pub calibration_images: usize,
    pub candidate_patches: usize,
    pub bank_patches: usize,
    pub feature_dim: usize,
    pub pass_threshold: f32,
    pub fail_threshold: f32,
    /// Over the held-out set; `None` without anomalous images.
    pub image_auroc: Option<f64>,
    pub heldout_normal: usize,
    pub heldout_anomalous: usize,
    /// Shares of the held-out set the thresholds judge right.
    pub normal_passed: Option<f64>,
    pub anomalous_failed: Option<f64>,
}

/// The fit's stages, for progress: images are counted through all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Features,
    Coreset,
    Scoring,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Features => "features",
            Stage::Coreset => "coreset",
            Stage::Scoring => "scoring",
        }
    }
}

/// Told the stage, images done and images in all; returns false to cancel the fit.
pub type Progress<'a> = dyn FnMut(Stage, usize, usize) -> bool + 'a;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackbone {
    name: String,
    version: String,
    #[allow(dead_code, reason = "documentation for people")]
    description: Option<String>,
    input: inference::spec::RawInput,
}

/// A loaded backbone: its graph as tract runs it and as ONNX (to extend).
pub struct Backbone {
    pub name: String,
    pub version: String,
    size: (u32, u32),
    mean: [f32; 3],
    std: [f32; 3],
    plan: Arc<TypedRunnableModel>,
    proto: pb::ModelProto,
}

/// One image's patch features, patch-major: `grid.0 * grid.1` rows of `dim` values.
pub struct Features {
    pub rows: Vec<f32>,
    pub dim: usize,
    /// (width, height) of the patch grid.
    pub grid: (usize, usize),
}

impl Backbone {
    pub fn load(dir: &Path) -> Result<Backbone, FitError> {
        let error = |message: String| FitError::Backbone { dir: dir.to_owned(), message };
        let text = std::fs::read_to_string(dir.join("backbone.toml"))
            .map_err(|err| error(format!("cannot read backbone.toml: {err}")))?;
        let raw: RawBackbone = toml::from_str(&text).map_err(|err| error(format!("backbone.toml: {err}")))?;
        raw.input.check().map_err(|message| error(format!("backbone.toml: {message}")))?;
        let size = (raw.input.width, raw.input.height);
        let path = dir.join("model.onnx");
        let bytes = std::fs::read(&path).map_err(|err| error(format!("cannot read model.onnx: {err}")))?;
        let proto = pb::ModelProto::decode(bytes.as_slice()).map_err(|err| error(format!("model.onnx: {err}")))?;
        let plan = inference::plan_for(&path, size).map_err(|err| error(err.to_string()))?;
        let backbone = Backbone {
            name: raw.name,
            version: raw.version,
            size,
            mean: raw.input.mean,
            std: raw.input.std,
            plan,
            proto,
        };
        let probe = backbone.features(&image::RgbImage::new(size.0, size.1)).map_err(|err| error(err.to_string()))?;
        if probe.dim == 0 || probe.grid.0 * probe.grid.1 == 0 {
            return Err(error("the graph's first output must be [1, features, height, width]".into()));
        }
        Ok(backbone)
    }

    pub fn features(&self, image: &image::RgbImage) -> Result<Features, ModelError> {
        let input = inference::preprocess(image, self.size, self.mean, self.std);
        let outputs = self.plan.run(tvec!(input.into())).map_err(|err| ModelError::Run(format!("{err:#}")))?;
        let first = outputs.first().ok_or_else(|| ModelError::Run("the backbone produced no output".into()))?;
        let [1, dim, height, width] = first.shape()[..] else {
            return Err(ModelError::Run(format!("the backbone's output is {:?}, not [1, D, H, W]", first.shape())));
        };
        let planar = inference::plain_values(first)?;
        let patches = height * width;
        let mut rows = vec![0f32; planar.len()];
        for channel in 0..dim {
            for patch in 0..patches {
                rows[patch * dim + channel] = planar[channel * patches + patch];
            }
        }
        Ok(Features { rows, dim, grid: (width, height) })
    }

    /// The backbone's graph with `bank` (rows of `dim`) and the scoring appended.
    fn fitted_graph(&self, bank: &[f32], dim: usize, grid: (usize, usize)) -> Result<pb::ModelProto, FitError> {
        let mut model = self.proto.clone();
        let graph = model.graph.as_mut().ok_or_else(|| FitError::Invalid("the backbone has no graph".into()))?;
        let features = graph
            .output
            .first()
            .map(|o| o.name.clone())
            .ok_or_else(|| FitError::Invalid("the backbone graph has no output".into()))?;
        let rows = bank.len() / dim;
        let patches = grid.0 * grid.1;
        // The bank transposed ([dim, rows]) for the product, and its squared norms.
        let mut bank_t = vec![0f32; bank.len()];
        for r in 0..rows {
            for c in 0..dim {
                bank_t[c * rows + r] = bank[r * dim + c];
            }
        }
        let norms: Vec<f32> = bank.chunks(dim).map(|row| row.iter().map(|v| v * v).sum()).collect();
        graph.initializer.extend([
            float_tensor("pc_bank_t", &[dim as i64, rows as i64], bank_t),
            float_tensor("pc_bank_sq", &[1, rows as i64], norms),
            float_tensor("pc_minus_two", &[1], vec![-2.0]),
            int_tensor("pc_patch_shape", &[2], vec![dim as i64, patches as i64]),
            int_tensor("pc_axis1", &[1], vec![1]),
            int_tensor("pc_map_shape", &[4], vec![1, 1, grid.1 as i64, grid.0 as i64]),
        ]);
        // patches [P, D]; d² = |p|² + |b|² - 2 p·b; patch score = sqrt(min over the bank).
        graph.node.extend([
            node("Reshape", &[&features, "pc_patch_shape"], "pc_planar", &[]),
            node("Transpose", &["pc_planar"], "pc_patches", &[ints("perm", &[1, 0])]),
            node("Mul", &["pc_patches", "pc_patches"], "pc_squares", &[]),
            node("ReduceSum", &["pc_squares", "pc_axis1"], "pc_patch_sq", &[int("keepdims", 1)]),
            node("MatMul", &["pc_patches", "pc_bank_t"], "pc_dot", &[]),
            node("Mul", &["pc_dot", "pc_minus_two"], "pc_cross", &[]),
            node("Add", &["pc_cross", "pc_patch_sq"], "pc_partial", &[]),
            node("Add", &["pc_partial", "pc_bank_sq"], "pc_d2", &[]),
            node("ReduceMin", &["pc_d2"], "pc_nearest_sq", &[ints("axes", &[1]), int("keepdims", 0)]),
            node("Relu", &["pc_nearest_sq"], "pc_clamped", &[]),
            node("Sqrt", &["pc_clamped"], "pc_patch_scores", &[]),
            node("Reshape", &["pc_patch_scores", "pc_map_shape"], "anomaly_map", &[]),
            node("ReduceMax", &["pc_patch_scores"], "score", &[ints("axes", &[0]), int("keepdims", 1)]),
        ]);
        graph.output = vec![float_output("score"), float_output("anomaly_map")];
        graph.name = "patchcore".into();
        model.producer_name = "stationd PatchCore fit".into();
        Ok(model)
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attributes: &[pb::AttributeProto]) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|i| (*i).to_owned()).collect(),
        output: vec![output.into()],
        attribute: attributes.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

fn ints(name: &str, values: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn float_tensor(name: &str, dims: &[i64], values: Vec<f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: values,
        ..Default::default()
    }
}

fn int_tensor(name: &str, dims: &[i64], values: Vec<i64>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        int64_data: values,
        ..Default::default()
    }
}

fn float_output(name: &str) -> pb::ValueInfoProto {
    let tensor = pb::type_proto::Tensor { elem_type: pb::tensor_proto::DataType::Float as i32, shape: None };
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto { value: Some(pb::type_proto::Value::TensorType(tensor)), ..Default::default() }),
        ..Default::default()
    }
}

/// Blue below half the fail level, through green and yellow, to red at and beyond it.
fn heat(level: f32) -> [f32; 3] {
    let t = (level / 1.2).clamp(0.0, 1.0);
    let ramp = |x: f32| x.clamp(0.0, 1.0);
    [ramp(2.0 * t - 0.6), ramp(1.0 - (2.0 * t - 1.0).abs() * 1.2), ramp(1.0 - 2.5 * t)]
}

/// `map` (patch scores divided by the fail threshold: 1.0 is the fail level), upsampled
/// and coloured over `image` (or over grey, 256 × 256, without one).
pub fn render_heatmap(image: Option<image::RgbImage>, map: &crate::core::decision::AnomalyMap) -> image::RgbImage {
    let base = image.unwrap_or_else(|| image::RgbImage::from_pixel(256, 256, image::Rgb([128, 128, 128])));
    let (width, height) = base.dimensions();
    let grid: image::ImageBuffer<image::Luma<f32>, Vec<f32>> = image::ImageBuffer::from_raw(
        map.width,
        map.height,
        map.values.iter().map(|v| if v.is_finite() { *v } else { 0.0 }).collect(),
    )
    .unwrap_or_else(|| image::ImageBuffer::new(1, 1));
    let levels = image::imageops::resize(&grid, width, height, image::imageops::FilterType::Triangle);
    let mut out = base;
    for (pixel, level) in out.pixels_mut().zip(levels.pixels()) {
        let colour = heat(level[0]);
        for channel in 0..3 {
            let blended = 0.5 * f32::from(pixel[channel]) + 0.5 * 255.0 * colour[channel];
            pixel[channel] = blended.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

fn read_image(path: &Path) -> Result<image::RgbImage, FitError> {
    let bytes =
        std::fs::read(path).map_err(|err| FitError::Image { path: path.to_owned(), message: err.to_string() })?;
    inference::decode_image(&bytes).map_err(|err| FitError::Image { path: path.to_owned(), message: err.to_string() })
}

/// Fits a model on `request`'s images with `backbone` and writes its folder (model.onnx,
/// model.toml) to `out`, which must not exist. Reports progress after every image. The
/// folder is built beside `out` and renamed into place once complete.
pub fn fit(
    backbone: &Backbone,
    request: &FitRequest,
    out: &Path,
    progress: &mut Progress<'_>,
) -> Result<FitReport, FitError> {
    let staging = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    let fitted = fit_into(backbone, request, &staging, progress).and_then(|report| {
        std::fs::rename(&staging, out).map_err(|err| FitError::Invalid(format!("{}: {err}", out.display())))?;
        Ok(report)
    });
    if fitted.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    fitted
}

/// What a fit accepts: `normal` normal images of `all` images in all, and the coreset
/// ratio. The jobs service checks it when a fit is asked for, so that the caller hears
/// at once; [`fit`] checks it again on the images it was really given.
pub fn check_request(normal: usize, all: usize, coreset_ratio: f64) -> Result<(), FitError> {
    if normal < MIN_NORMAL_IMAGES {
        return Err(FitError::Invalid(format!("a fit needs at least {MIN_NORMAL_IMAGES} normal images, not {normal}")));
    }
    if all > MAX_IMAGES {
        return Err(FitError::Invalid(format!("a fit reads at most {MAX_IMAGES} images, not {all}")));
    }
    if !(coreset_ratio > 0.0 && coreset_ratio <= 1.0) {
        return Err(FitError::Invalid("coreset_ratio must be above 0 and at most 1".into()));
    }
    Ok(())
}

fn fit_into(
    backbone: &Backbone,
    request: &FitRequest,
    staging: &Path,
    progress: &mut Progress<'_>,
) -> Result<FitReport, FitError> {
    let all = request.normal.len() + request.heldout_normal.len() + request.heldout_anomalous.len();
    check_request(request.normal.len(), all, request.coreset_ratio)?;
    let mut done = 0;
    let step = |stage: Stage, done: &mut usize, progress: &mut Progress<'_>| {
        *done += 1;
        if progress(stage, *done, all) { Ok(()) } else { Err(FitError::Cancelled) }
    };

    // 1. Patch features of the bank images; every fifth image is kept for calibration.
    let (mut candidates, mut shape) = (Vec::new(), None);
    let mut calibration = Vec::new();
    for (index, path) in request.normal.iter().enumerate() {
        if index % 5 == 4 {
            calibration.push(path.clone());
            continue;
        }
        let features = backbone.features(&read_image(path)?)?;
        shape = Some((features.dim, features.grid));
        candidates.extend_from_slice(&features.rows);
        step(Stage::Features, &mut done, progress)?;
    }
    let (dim, grid) = shape.expect("at least eight bank images");

    // 2. The coreset.
    let rows = candidates.len() / dim;
    let count = ((rows as f64 * request.coreset_ratio).ceil() as usize).clamp(1, MAX_BANK_ROWS);
    let mut keep_going = || progress(Stage::Coreset, done, all);
    let picks = keep_going()
        .then(|| patchcore::greedy_coreset(&candidates, dim, count, &mut keep_going))
        .flatten()
        .ok_or(FitError::Cancelled)?;
    let bank: Vec<f32> = picks.iter().flat_map(|&i| candidates[i * dim..(i + 1) * dim].iter().copied()).collect();
    drop(candidates);

    // 3. The fitted graph, with provisional thresholds (set after calibration).
    let graph = backbone.fitted_graph(&bank, dim, grid)?;
    std::fs::create_dir_all(staging).map_err(|err| FitError::Invalid(format!("{}: {err}", staging.display())))?;
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(staging.join(name), bytes).map_err(|err| FitError::Invalid(format!("{name}: {err}")))
    };
    write("model.onnx", &graph.encode_to_vec())?;
    let toml = |pass: f32, fail: f32, metrics: &str| model_toml(backbone, request, (pass, fail), metrics);
    write("model.toml", toml(0.0, 1.0, "").as_bytes())?;

    // 4. Score calibration and held-out images with the fitted model, as inspections will.
    let model = Model::load(staging)?;
    let score = |paths: &[PathBuf], done: &mut usize, progress: &mut Progress<'_>| {
        let mut scores = Vec::with_capacity(paths.len());
        for path in paths {
            match model.run(&read_image(path)?)? {
                ModelOutput::Anomaly { score, .. } => scores.push(score),
                _ => return Err(FitError::Invalid("the fitted model is not an anomaly model".into())),
            }
            step(Stage::Scoring, done, progress)?;
        }
        Ok(scores)
    };
    let calibration_scores = score(&calibration, &mut done, progress)?;
    let (pass, fail) = patchcore::thresholds(&calibration_scores)
        .ok_or_else(|| FitError::Invalid("the calibration images gave no finite score".into()))?;
    let normal_scores = if request.heldout_normal.is_empty() {
        calibration_scores
    } else {
        score(&request.heldout_normal, &mut done, progress)?
    };
    let anomalous_scores = score(&request.heldout_anomalous, &mut done, progress)?;
    let share = |scores: &[f32], judged: &dyn Fn(f32) -> bool| {
        (!scores.is_empty()).then(|| scores.iter().filter(|s| judged(**s)).count() as f64 / scores.len() as f64)
    };
    let report = FitReport {
        bank_images: request.normal.len() - calibration.len(),
        calibration_images: calibration.len(),
        candidate_patches: rows,
        bank_patches: picks.len(),
        feature_dim: dim,
        pass_threshold: pass,
        fail_threshold: fail,
        image_auroc: patchcore::auroc(&normal_scores, &anomalous_scores),
        heldout_normal: normal_scores.len(),
        heldout_anomalous: anomalous_scores.len(),
        normal_passed: share(&normal_scores, &|s| s <= pass),
        anomalous_failed: share(&anomalous_scores, &|s| s >= fail),
    };
    write("model.toml", toml(pass, fail, &metrics_toml(&report)).as_bytes())?;
    ModelSpec::load(staging).map_err(ModelError::from)?;
    Ok(report)
}

fn model_toml(backbone: &Backbone, request: &FitRequest, thresholds: (f32, f32), metrics: &str) -> String {
    let (width, height) = backbone.size;
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    format!(
        "# PatchCore anomaly model fitted by stationd on {normal} normal images with backbone {backbone} {bversion}.
# model.onnx is the backbone with the memory bank and nearest-neighbour scoring appended.
name = {name}
version = {version}
task = \"anomaly\"
description = {description}

[input]
width = {width}
height = {height}
mean = {mean:?}
std = {std:?}

[output]
# The image score (the highest patch score); the graph's second output is the patch map.
kind = \"score\"

[thresholds]
# From the calibration images' scores: up to pass_threshold passes, from fail_threshold fails.
pass_threshold = {pass}
fail_threshold = {fail}
{metrics}",
        normal = request.normal.len(),
        backbone = backbone.name,
        bversion = backbone.version,
        name = quote(&request.name),
        version = quote(&request.version),
        description = quote(&format!(
            "PatchCore on {} ({} normal images, coreset {:.0}%)",
            backbone.name,
            request.normal.len(),
            request.coreset_ratio * 100.0
        )),
        mean = backbone.mean,
        std = backbone.std,
        pass = thresholds.0,
        fail = thresholds.1,
    )
}

fn metrics_toml(report: &FitReport) -> String {
    let mut out = String::from("\n[metrics]\n");
    if let Some(auroc) = report.image_auroc {
        out += &format!("image_auroc = {auroc:.4}\n");
    }
    if let Some(share) = report.normal_passed {
        out += &format!("heldout_normal_passed = {share:.4}\n");
    }
    if let Some(share) = report.anomalous_failed {
        out += &format!("heldout_anomalous_failed = {share:.4}\n");
    }
    out += &format!(
        "heldout_normal = {}\nheldout_anomalous = {}\nbank_images = {}\ncalibration_images = {}\n\
         bank_patches = {}\ncandidate_patches = {}\nfeature_dim = {}\n",
        report.heldout_normal,
        report.heldout_anomalous,
        report.bank_images,
        report.calibration_images,
        report.bank_patches,
        report.candidate_patches,
        report.feature_dim
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heldout(prefix: &str, range: std::ops::RangeInclusive<u32>) -> Vec<PathBuf> {
        range.map(|i| PathBuf::from(format!("models/parts-classifier/heldout/{prefix}_{i:03}.jpg"))).collect()
    }

    #[test]
    fn a_fit_on_good_flanges_tells_dents_and_scratches_apart() {
        let backbone = Backbone::load(Path::new("models/patchcore-backbone")).unwrap();
        let request = FitRequest {
            name: "flange-patchcore".into(),
            version: "1".into(),
            normal: heldout("ok", 1..=20),
            heldout_normal: heldout("ok", 41..=60),
            heldout_anomalous: [heldout("dent", 1..=10), heldout("scratch", 1..=10)].concat(),
            coreset_ratio: 0.1,
        };
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("fitted");
        let mut seen = Vec::new();
        let report = fit(&backbone, &request, &out, &mut |stage, done, all| {
            seen.push((stage, done, all));
            true
        })
        .unwrap();
        assert_eq!((report.bank_images, report.calibration_images, report.feature_dim), (16, 4, 64));
        assert_eq!((report.candidate_patches, report.bank_patches), (16 * 256, 410));
        assert!(report.image_auroc.unwrap() >= 0.9, "{report:?}");
        assert!(report.pass_threshold < report.fail_threshold, "{report:?}");
        assert_eq!(seen.last(), Some(&(Stage::Scoring, 60, 60)));

        // The folder is an ordinary anomaly model with a map.
        let model = Model::load(&out).unwrap();
        let ModelOutput::Anomaly { score, map: Some(map) } =
            model.run(&read_image(&request.heldout_anomalous[0]).unwrap()).unwrap()
        else {
            panic!("no map");
        };
        assert_eq!((map.width, map.height, map.values.len()), (16, 16, 256));
        assert_eq!(map.values.iter().copied().fold(f32::MIN, f32::max), score);
        assert!(model.spec.metrics.contains_key("image_auroc"));

        // Cancelled from the progress callback: no folder.
        let out = dir.path().join("cancelled");
        let err = fit(&backbone, &request, &out, &mut |_, done, _| done < 5).unwrap_err();
        assert!(matches!(err, FitError::Cancelled), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn fits_refuse_too_few_images_and_a_bad_ratio() {
        let backbone = Backbone::load(Path::new("models/patchcore-backbone")).unwrap();
        let mut request = FitRequest {
            name: "x".into(),
            version: "1".into(),
            normal: heldout("ok", 1..=9),
            heldout_normal: Vec::new(),
            heldout_anomalous: Vec::new(),
            coreset_ratio: 0.1,
        };
        let out = tempfile::tempdir().unwrap();
        let err = fit(&backbone, &request, &out.path().join("m"), &mut |_, _, _| true).unwrap_err();
        assert!(err.to_string().contains("at least 10 normal images"), "{err}");
        request.normal = heldout("ok", 1..=10);
        request.coreset_ratio = 0.0;
        let err = fit(&backbone, &request, &out.path().join("m"), &mut |_, _, _| true).unwrap_err();
        assert!(err.to_string().contains("coreset_ratio"), "{err}");
    }
}
