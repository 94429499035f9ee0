//! Decoding a YOLO-style detection head in Rust, with per-class non-maximum suppression.
//! NMS is not left in the graph: tract does not run the `If` node exported detectors put
//! around it (docs/crates.md), so models are exported with their raw heads.
//!
//! The head is YOLOv8's: one tensor `[1, 4 + C, N]` (or `[1, N, 4 + C]`) holding, for
//! each of N candidates, the box centre and size in model-input pixels and C class scores
//! (already sigmoid). Pure: no model, no I/O.

use crate::core::decision::Detection;

/// What to keep of the candidates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeSettings {
    /// Candidates whose best class score is below this are dropped.
    pub confidence: f32,
    /// Boxes of one class overlapping a stronger one by more than this IoU are dropped.
    pub iou: f32,
    pub max_detections: usize,
}

/// Decodes `values` of `shape` into detections in image pixels: `scale` is (image width /
/// input width, image height / input height), `image` the image's size for clamping.
pub fn decode_yolo(
    values: &[f32],
    shape: &[usize],
    labels: &[String],
    settings: DecodeSettings,
    scale: (f32, f32),
    image: (f32, f32),
) -> Result<Vec<Detection>, String> {
    let rows = 4 + labels.len();
    let (candidates, transposed) = match shape {
        [1, a, n] if *a == rows => (*n, false),
        [1, n, a] if *a == rows => (*n, true),
        _ => return Err(format!("a detection head of shape {shape:?} is not [1, {rows}, N] or [1, N, {rows}]")),
    };
    if values.len() != rows * candidates {
        return Err(format!("{} values for shape {shape:?}", values.len()));
    }
    let at = |row: usize, candidate: usize| {
        if transposed { values[candidate * rows + row] } else { values[row * candidates + candidate] }
    };
    let mut found: Vec<(usize, Detection)> = Vec::new();
    for candidate in 0..candidates {
        let Some((class, score)) = (0..labels.len())
            .map(|c| (c, at(4 + c, candidate)))
            .filter(|(_, s)| s.is_finite())
            .max_by(|a, b| a.1.total_cmp(&b.1))
        else {
            continue;
        };
        if score < settings.confidence {
            continue;
        }
        let [cx, cy, w, h] = [0, 1, 2, 3].map(|row| at(row, candidate));
        if ![cx, cy, w, h].iter().all(|v| v.is_finite()) || w <= 0.0 || h <= 0.0 {
            continue;
        }
        let bbox = [
            ((cx - w / 2.0) * scale.0).clamp(0.0, image.0),
            ((cy - h / 2.0) * scale.1).clamp(0.0, image.1),
            ((cx + w / 2.0) * scale.0).clamp(0.0, image.0),
            ((cy + h / 2.0) * scale.1).clamp(0.0, image.1),
        ];
        found.push((class, Detection { class_name: labels[class].clone(), confidence: score, bbox }));
    }
    Ok(non_maximum_suppression(found, settings.iou, settings.max_detections))
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// Greedy per-class NMS: strongest first, dropping boxes of the same class that overlap a
/// kept one by more than `threshold`. At most `max` boxes, strongest first.
pub fn non_maximum_suppression(mut found: Vec<(usize, Detection)>, threshold: f32, max: usize) -> Vec<Detection> {
    found.sort_by(|a, b| b.1.confidence.total_cmp(&a.1.confidence));
    let mut kept: Vec<(usize, Detection)> = Vec::new();
    for (class, detection) in found {
        if kept.len() == max {
            break;
        }
        if kept.iter().all(|(k, d)| *k != class || iou(&d.bbox, &detection.bbox) <= threshold) {
            kept.push((class, detection));
        }
    }
    kept.into_iter().map(|(_, d)| d).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: DecodeSettings = DecodeSettings { confidence: 0.25, iou: 0.45, max_detections: 100 };

    fn labels() -> Vec<String> {
        vec!["bolt".into(), "nut".into()]
    }

    /// `[1, 6, N]` from candidates (cx, cy, w, h, bolt, nut).
    fn head(candidates: &[[f32; 6]]) -> (Vec<f32>, Vec<usize>) {
        let n = candidates.len();
        let mut values = vec![0.0; 6 * n];
        for (i, c) in candidates.iter().enumerate() {
            for row in 0..6 {
                values[row * n + i] = c[row];
            }
        }
        (values, vec![1, 6, n])
    }

    #[test]
    fn decodes_scales_and_suppresses_overlaps_per_class() {
        let (values, shape) = head(&[
            [32.0, 32.0, 20.0, 20.0, 0.9, 0.1],      // bolt
            [33.0, 32.0, 20.0, 20.0, 0.8, 0.1],      // the same bolt again: suppressed
            [33.0, 32.0, 20.0, 20.0, 0.1, 0.7],      // a nut at the same place: another class, kept
            [10.0, 10.0, 8.0, 8.0, 0.2, 0.1],        // too weak
            [60.0, 60.0, 10.0, 10.0, f32::NAN, 0.5], // NaN score ignored, nut kept, clamped
        ]);
        let found = decode_yolo(&values, &shape, &labels(), SETTINGS, (2.0, 2.0), (128.0, 128.0)).unwrap();
        let summary: Vec<(String, f32, [f32; 4])> =
            found.iter().map(|d| (d.class_name.clone(), d.confidence, d.bbox)).collect();
        assert_eq!(
            summary,
            [
                ("bolt".to_owned(), 0.9, [44.0, 44.0, 84.0, 84.0]),
                ("nut".to_owned(), 0.7, [46.0, 44.0, 86.0, 84.0]),
                ("nut".to_owned(), 0.5, [110.0, 110.0, 128.0, 128.0]),
            ]
        );

        // The transposed layout reads the same.
        let n = 5;
        let mut transposed = vec![0.0; values.len()];
        for i in 0..n {
            for row in 0..6 {
                transposed[i * 6 + row] = values[row * n + i];
            }
        }
        let again = decode_yolo(&transposed, &[1, n, 6], &labels(), SETTINGS, (2.0, 2.0), (128.0, 128.0)).unwrap();
        assert_eq!(again, found);
    }

    #[test]
    fn a_head_of_the_wrong_shape_is_an_error() {
        assert!(decode_yolo(&[0.0; 12], &[1, 3, 4], &labels(), SETTINGS, (1.0, 1.0), (8.0, 8.0)).is_err());
        assert!(decode_yolo(&[0.0; 5], &[1, 6, 1], &labels(), SETTINGS, (1.0, 1.0), (8.0, 8.0)).is_err());
    }

    #[test]
    fn at_most_max_detections_strongest_first() {
        let candidates: Vec<[f32; 6]> =
            (0..10).map(|i| [10.0 + 20.0 * i as f32, 10.0, 8.0, 8.0, 0.3 + 0.05 * i as f32, 0.0]).collect();
        let (values, shape) = head(&candidates);
        let settings = DecodeSettings { max_detections: 3, ..SETTINGS };
        let found = decode_yolo(&values, &shape, &labels(), settings, (1.0, 1.0), (256.0, 256.0)).unwrap();
        let confidences: Vec<f32> = found.iter().map(|d| (d.confidence * 100.0).round() / 100.0).collect();
        assert_eq!(confidences, [0.75, 0.7, 0.65]);
    }
}
