//! Decision rules: turn a model's output into pass / fail / uncertain.
//!
//! Pure functions of (rule, output). A defect is a domain value, not an error, and an
//! output that does not fit its rule (wrong length, NaN) yields `Uncertain` rather than a
//! panic: the operator looks at the part, the line keeps running.

/// What the station concluded about one part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Decision {
    Pass,
    Fail,
    Uncertain,
}

impl Decision {
    pub const ALL: [Decision; 3] = [Decision::Pass, Decision::Fail, Decision::Uncertain];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Pass => "pass",
            Decision::Fail => "fail",
            Decision::Uncertain => "uncertain",
        }
    }

    pub fn parse(text: &str) -> Option<Decision> {
        Decision::ALL.into_iter().find(|d| d.as_str() == text)
    }
}

/// One object a detection model found. `bbox` is `[x1, y1, x2, y2]` in image pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub class_name: String,
    pub confidence: f32,
    pub bbox: [f32; 4],
}

/// The decoded output of a model, by task.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelOutput {
    /// One probability per label, in the model's label order.
    Classification {
        probabilities: Vec<f32>,
    },
    Detection {
        detections: Vec<Detection>,
    },
    /// Higher is more anomalous.
    Anomaly {
        score: f32,
        /// Per-patch scores, when the model gives them (PatchCore does).
        map: Option<AnomalyMap>,
    },
}

/// An anomaly model's per-patch scores: `width × height` cells, row-major, each covering
/// the same share of the image.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyMap {
    pub width: u32,
    pub height: u32,
    pub values: Vec<f32>,
}

/// How to judge a model's output; built from model.toml with config overrides.
#[derive(Debug, Clone, PartialEq)]
pub enum DecisionRule {
    /// P(pass labels) >= `pass_threshold` → pass; <= `fail_threshold` → fail; else uncertain.
    Classification { labels: Vec<String>, pass_labels: Vec<String>, pass_threshold: f32, fail_threshold: f32 },
    /// A detection of a defect class with confidence >= `fail_threshold` → fail; one in
    /// `[uncertain_threshold, fail_threshold)` → uncertain; otherwise pass.
    Detection { defect_classes: Vec<String>, fail_threshold: f32, uncertain_threshold: f32 },
    /// score <= `pass_threshold` → pass; >= `fail_threshold` → fail; else uncertain.
    Anomaly { pass_threshold: f32, fail_threshold: f32 },
}

/// The outcome of applying a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub decision: Decision,
    /// Confidence in `decision`, 0..=1.
    pub confidence: f32,
    /// The top class (classification) or the strongest defect class (detection).
    pub label: Option<String>,
    /// Detections that count as defects under the rule.
    pub defects: Vec<Detection>,
}

impl Verdict {
    fn uncertain(confidence: f32, label: Option<String>) -> Verdict {
        Verdict { decision: Decision::Uncertain, confidence, label, defects: Vec::new() }
    }
}

pub fn decide(rule: &DecisionRule, output: &ModelOutput) -> Verdict {
    match (rule, output) {
        (
            DecisionRule::Classification { labels, pass_labels, pass_threshold, fail_threshold },
            ModelOutput::Classification { probabilities },
        ) => classify(labels, pass_labels, *pass_threshold, *fail_threshold, probabilities),
        (
            DecisionRule::Detection { defect_classes, fail_threshold, uncertain_threshold },
            ModelOutput::Detection { detections },
        ) => detect(defect_classes, *fail_threshold, *uncertain_threshold, detections),
        (DecisionRule::Anomaly { pass_threshold, fail_threshold }, ModelOutput::Anomaly { score, .. }) => {
            anomaly(*pass_threshold, *fail_threshold, *score)
        }
        // The model registry pairs rules with models of the same task; should they ever
        // disagree, nobody can vouch for the part.
        _ => Verdict::uncertain(0.0, None),
    }
}

fn classify(
    labels: &[String],
    pass_labels: &[String],
    pass_threshold: f32,
    fail_threshold: f32,
    probabilities: &[f32],
) -> Verdict {
    if probabilities.len() != labels.len() || probabilities.iter().any(|p| !p.is_finite()) {
        return Verdict::uncertain(0.0, None);
    }
    let top = first_max(labels.iter().zip(probabilities)).cloned();
    let p_pass: f32 = labels
        .iter()
        .zip(probabilities)
        .filter(|(label, _)| pass_labels.contains(label))
        .map(|(_, p)| *p)
        .sum::<f32>()
        .clamp(0.0, 1.0);
    if p_pass >= pass_threshold {
        Verdict { decision: Decision::Pass, confidence: p_pass, label: top, defects: Vec::new() }
    } else if p_pass <= fail_threshold {
        // Name the most likely defect, even if a pass label is the top class overall.
        let defect =
            first_max(labels.iter().zip(probabilities).filter(|(label, _)| !pass_labels.contains(label))).cloned();
        Verdict { decision: Decision::Fail, confidence: 1.0 - p_pass, label: defect, defects: Vec::new() }
    } else {
        // Confidence of an uncertain verdict: how close P(pass) is to either threshold.
        Verdict::uncertain(p_pass.max(1.0 - p_pass), top)
    }
}

/// The label with the highest probability; on a tie, the first in model order, so that
/// a verdict never depends on how the iterator breaks ties.
fn first_max<'a>(pairs: impl Iterator<Item = (&'a String, &'a f32)>) -> Option<&'a String> {
    let mut best: Option<(&String, f32)> = None;
    for (label, p) in pairs {
        if best.is_none_or(|(_, best_p)| *p > best_p) {
            best = Some((label, *p));
        }
    }
    best.map(|(label, _)| label)
}

fn detect(
    defect_classes: &[String],
    fail_threshold: f32,
    uncertain_threshold: f32,
    detections: &[Detection],
) -> Verdict {
    let mut defects: Vec<Detection> = detections
        .iter()
        .filter(|d| defect_classes.contains(&d.class_name) && d.confidence.is_finite())
        .filter(|d| d.confidence >= uncertain_threshold)
        .cloned()
        .collect();
    defects.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    let Some(strongest) = defects.first() else {
        let best_other = detections.iter().map(|d| d.confidence).filter(|c| c.is_finite()).fold(0.0, f32::max);
        return Verdict {
            decision: Decision::Pass,
            confidence: if detections.is_empty() { 1.0 } else { best_other.max(1.0 - uncertain_threshold) },
            label: None,
            defects,
        };
    };
    let (decision, confidence, label) = (
        if strongest.confidence >= fail_threshold { Decision::Fail } else { Decision::Uncertain },
        strongest.confidence,
        Some(strongest.class_name.clone()),
    );
    if decision == Decision::Fail {
        defects.retain(|d| d.confidence >= fail_threshold);
    }
    Verdict { decision, confidence, label, defects }
}

fn anomaly(pass_threshold: f32, fail_threshold: f32, score: f32) -> Verdict {
    if !score.is_finite() {
        return Verdict::uncertain(0.0, None);
    }
    let decision = if score <= pass_threshold {
        Decision::Pass
    } else if score >= fail_threshold {
        Decision::Fail
    } else {
        Decision::Uncertain
    };
    // The score is not a probability; report how far it sits from the band's middle,
    // scaled so a score at either threshold is 0.5 and far outside approaches 1.
    let middle = (pass_threshold + fail_threshold) / 2.0;
    let half_band = ((fail_threshold - pass_threshold) / 2.0).max(f32::EPSILON);
    let distance = (score - middle).abs() / half_band;
    let confidence = if decision == Decision::Uncertain {
        0.5 * (1.0 - distance).clamp(0.0, 1.0)
    } else {
        (1.0 - 0.5 / distance.max(1.0)).clamp(0.5, 1.0)
    };
    Verdict { decision, confidence, label: None, defects: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn classification_rule() -> DecisionRule {
        DecisionRule::Classification {
            labels: labels(&["ok", "scratch", "dent"]),
            pass_labels: labels(&["ok"]),
            pass_threshold: 0.8,
            fail_threshold: 0.2,
        }
    }

    fn render(v: &Verdict) -> String {
        let defects: Vec<String> = v.defects.iter().map(|d| format!("{}@{:.2}", d.class_name, d.confidence)).collect();
        format!("{} {:.3} {:?} [{}]", v.decision.as_str(), v.confidence, v.label, defects.join(" "))
    }

    fn check(rule: &DecisionRule, outputs: &[ModelOutput], expect: Expect) {
        let lines: Vec<String> = outputs.iter().map(|o| render(&decide(rule, o))).collect();
        expect.assert_eq(&(lines.join("\n") + "\n"));
    }

    fn probs(p: &[f32]) -> ModelOutput {
        ModelOutput::Classification { probabilities: p.to_vec() }
    }

    #[test]
    fn classification_confidence_band() {
        check(
            &classification_rule(),
            &[
                probs(&[0.95, 0.03, 0.02]),
                probs(&[0.80, 0.10, 0.10]),
                probs(&[0.79, 0.20, 0.01]),
                probs(&[0.50, 0.10, 0.40]),
                probs(&[0.20, 0.70, 0.10]),
                probs(&[0.01, 0.09, 0.90]),
                probs(&[0.10, 0.45, 0.45]),
            ],
            expect![[r#"
                pass 0.950 Some("ok") []
                pass 0.800 Some("ok") []
                uncertain 0.790 Some("ok") []
                uncertain 0.500 Some("ok") []
                fail 0.800 Some("scratch") []
                fail 0.990 Some("dent") []
                fail 0.900 Some("scratch") []
            "#]],
        );
    }

    #[test]
    fn malformed_outputs_are_uncertain_not_errors() {
        check(
            &classification_rule(),
            &[probs(&[0.9, 0.1]), probs(&[f32::NAN, 0.0, 0.0]), ModelOutput::Anomaly { score: 0.1, map: None }],
            expect![[r#"
                uncertain 0.000 None []
                uncertain 0.000 None []
                uncertain 0.000 None []
            "#]],
        );
    }

    #[test]
    fn detection_defects_above_threshold_fail() {
        let rule = DecisionRule::Detection {
            defect_classes: labels(&["scratch", "dent"]),
            fail_threshold: 0.5,
            uncertain_threshold: 0.3,
        };
        let det = |class: &str, confidence: f32| Detection {
            class_name: class.into(),
            confidence,
            bbox: [0.0, 0.0, 10.0, 10.0],
        };
        check(
            &rule,
            &[
                ModelOutput::Detection { detections: vec![] },
                ModelOutput::Detection { detections: vec![det("bolt", 0.9), det("scratch", 0.2)] },
                ModelOutput::Detection { detections: vec![det("scratch", 0.4)] },
                ModelOutput::Detection { detections: vec![det("scratch", 0.4), det("dent", 0.8), det("dent", 0.6)] },
            ],
            expect![[r#"
                pass 1.000 None []
                pass 0.900 None []
                uncertain 0.400 Some("scratch") [scratch@0.40]
                fail 0.800 Some("dent") [dent@0.80 dent@0.60]
            "#]],
        );
    }

    #[test]
    fn anomaly_score_thresholds() {
        let rule = DecisionRule::Anomaly { pass_threshold: 0.4, fail_threshold: 0.6 };
        let scores = [0.0, 0.4, 0.45, 0.5, 0.6, 0.9, f32::INFINITY];
        check(
            &rule,
            &scores.map(|score| ModelOutput::Anomaly { score, map: None }),
            expect![[r#"
                pass 0.900 None []
                pass 0.500 None []
                uncertain 0.250 None []
                uncertain 0.500 None []
                fail 0.500 None []
                fail 0.875 None []
                uncertain 0.000 None []
            "#]],
        );
    }
}
