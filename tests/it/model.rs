//! The bundled model through tract, on its held-out set (images the training script
//! wrote and never trained on).

use std::path::Path;

use stationd::core::decision::ModelOutput;
use stationd::inference::Model;

#[test]
fn bundled_classifier_heldout_accuracy() {
    let dir = Path::new("models/parts-classifier");
    let model = Model::load(dir).expect("bundled model loads");
    let mut files: Vec<_> = std::fs::read_dir(dir.join("heldout")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 150, "held-out set has {} images", files.len());
    let mut correct = 0;
    for file in &files {
        let expected = file.file_name().unwrap().to_str().unwrap().split('_').next().unwrap().to_owned();
        let image = image::open(file).unwrap().into_rgb8();
        let ModelOutput::Classification { probabilities } = model.run(&image).unwrap() else { panic!("classifier") };
        let top = (0..probabilities.len()).max_by(|&a, &b| probabilities[a].total_cmp(&probabilities[b])).unwrap();
        if model.spec.labels[top] == expected {
            correct += 1;
        }
    }
    let accuracy = correct as f64 / files.len() as f64;
    let reported = model.spec.heldout_accuracy.expect("model.toml reports held-out accuracy");
    eprintln!("held-out accuracy with tract: {accuracy:.4} ({correct}/{}); model.toml: {reported:.4}", files.len());
    assert!(accuracy >= 0.95, "held-out accuracy {accuracy:.4} < 0.95");
    // tract and the training script's onnxruntime must agree on the same files.
    assert!((accuracy - reported).abs() <= 0.02, "tract {accuracy:.4} vs model.toml {reported:.4}");
}

/// The bundled detector through tract on its held-out trays: the per-class counts (what an
/// expected-items check needs) must be right as often as model.toml reports, through the
/// daemon's own decoding and NMS. File names carry the true counts.
#[test]
fn bundled_detector_heldout_counts() {
    let dir = Path::new("models/kit-detector");
    let model = Model::load(dir).expect("bundled detector loads");
    let mut files: Vec<_> = std::fs::read_dir(dir.join("heldout")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 50, "held-out set has {} images", files.len());
    let mut right = 0;
    for file in &files {
        let stem = file.file_stem().unwrap().to_str().unwrap().to_owned();
        let image = image::open(file).unwrap().into_rgb8();
        let ModelOutput::Detection { detections } = model.run(&image).unwrap() else { panic!("detector") };
        let counts_right = model.spec.labels.iter().all(|label| {
            let expected: usize = stem
                .split('_')
                .find_map(|part| part.strip_prefix(label.as_str()).and_then(|n| n.parse().ok()))
                .unwrap_or_else(|| panic!("{stem} names no count for {label}"));
            detections.iter().filter(|d| &d.class_name == label).count() == expected
        });
        right += usize::from(counts_right);
    }
    let accuracy = right as f64 / files.len() as f64;
    let reported = model.spec.metrics["heldout_count_accuracy"].as_float().expect("model.toml reports it");
    eprintln!("held-out count accuracy with tract: {accuracy:.4} ({right}/{}); model.toml: {reported:.4}", files.len());
    assert!(accuracy >= 0.85, "held-out count accuracy {accuracy:.4} < 0.85");
    assert!((accuracy - reported).abs() <= 0.03, "tract {accuracy:.4} vs model.toml {reported:.4}");
}
