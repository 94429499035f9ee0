//! Continuous monitoring (pipelines): how anomalous one frame is, and the "N of M frames"
//! confirmation that turns a run of anomalous frames into one raised anomaly. A single
//! bad frame (a hand passing, a reflection) raises nothing; a sustained one raises once.

use std::collections::VecDeque;

use super::decision::{DecisionRule, ModelOutput};

/// A frame's anomaly score in 0..=1 for classification (1 - P(pass labels)) and detection
/// (the strongest defect's confidence, 0 without one), the model's own score for anomaly
/// models. `None` when the output does not fit the rule or is not finite: such a frame
/// counts as not anomalous, and the caller logs it.
pub fn anomaly_score(rule: &DecisionRule, output: &ModelOutput) -> Option<f32> {
    let score = match (rule, output) {
        (DecisionRule::Classification { labels, pass_labels, .. }, ModelOutput::Classification { probabilities }) => {
            if probabilities.len() != labels.len() {
                return None;
            }
            let pass = labels.iter().zip(probabilities).filter(|(l, _)| pass_labels.contains(l)).map(|(_, p)| *p);
            1.0 - pass.sum::<f32>().clamp(0.0, 1.0)
        }
        (DecisionRule::Detection { defect_classes, .. }, ModelOutput::Detection { detections }) => detections
            .iter()
            .filter(|d| defect_classes.contains(&d.class_name))
            .map(|d| d.confidence)
            .fold(0.0, f32::max),
        (DecisionRule::Anomaly { .. }, ModelOutput::Anomaly { score, .. }) => *score,
        _ => return None,
    };
    score.is_finite().then_some(score)
}

/// The score at or above which a frame is anomalous when a pipeline sets no threshold:
/// the rule's own fail boundary.
pub fn default_threshold(rule: &DecisionRule) -> f32 {
    match rule {
        DecisionRule::Classification { fail_threshold, .. } => 1.0 - fail_threshold,
        DecisionRule::Detection { fail_threshold, .. } | DecisionRule::Anomaly { fail_threshold, .. } => {
            *fail_threshold
        }
    }
}

/// "N of M": an anomaly is raised when at least `needed` of the last `window` frames were
/// anomalous, once; it can be raised again after the count fell below `needed`.
#[derive(Debug, Clone)]
pub struct Confirmation {
    needed: usize,
    window: usize,
    recent: VecDeque<bool>,
    raised: bool,
}

impl Confirmation {
    /// `1 <= needed <= window` (the config and the API check it; out-of-range values are
    /// clamped rather than panicking).
    pub fn new(needed: usize, window: usize) -> Confirmation {
        let window = window.max(1);
        Confirmation { needed: needed.clamp(1, window), window, recent: VecDeque::with_capacity(window), raised: false }
    }

    /// Adds a frame; true when this frame raises an anomaly.
    pub fn push(&mut self, anomalous: bool) -> bool {
        if self.recent.len() == self.window {
            self.recent.pop_front();
        }
        self.recent.push_back(anomalous);
        let count = self.anomalous_in_window();
        if count < self.needed {
            self.raised = false;
            return false;
        }
        let raise = !self.raised;
        self.raised = true;
        raise
    }

    pub fn anomalous_in_window(&self) -> usize {
        self.recent.iter().filter(|a| **a).count()
    }

    pub fn window(&self) -> usize {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::decision::Detection;

    fn run(needed: usize, window: usize, frames: &str) -> String {
        let mut confirmation = Confirmation::new(needed, window);
        frames.chars().map(|c| if confirmation.push(c == 'x') { '!' } else { '.' }).collect()
    }

    #[test]
    fn n_of_m_raises_once_per_episode() {
        // x = anomalous frame, ! = anomaly raised on that frame.
        expect_test::expect![[r#"
            frames  x.x..xxx...x.xx.xxxx
            1 of 1  !.!..!.....!.!..!...
            2 of 3  ..!...!......!......
            3 of 5  ......!.......!....."#]]
        .assert_eq(&format!(
            "frames  {f}\n1 of 1  {}\n2 of 3  {}\n3 of 5  {}",
            run(1, 1, "x.x..xxx...x.xx.xxxx"),
            run(2, 3, "x.x..xxx...x.xx.xxxx"),
            run(3, 5, "x.x..xxx...x.xx.xxxx"),
            f = "x.x..xxx...x.xx.xxxx",
        ));
        assert_eq!(run(9, 3, "xxx"), "..!", "needed is clamped to the window");
    }

    #[test]
    fn scores_by_task() {
        let classification = DecisionRule::Classification {
            labels: vec!["ok".into(), "scratch".into()],
            pass_labels: vec!["ok".into()],
            pass_threshold: 0.8,
            fail_threshold: 0.2,
        };
        let output = ModelOutput::Classification { probabilities: vec![0.25, 0.75] };
        assert_eq!(anomaly_score(&classification, &output), Some(0.75));
        assert_eq!(default_threshold(&classification), 0.8);
        let wrong_length = ModelOutput::Classification { probabilities: vec![1.0] };
        assert_eq!(anomaly_score(&classification, &wrong_length), None);

        let detection = DecisionRule::Detection {
            defect_classes: vec!["crack".into()],
            fail_threshold: 0.6,
            uncertain_threshold: 0.3,
        };
        let found = |class: &str, confidence| Detection { class_name: class.into(), confidence, bbox: [0.0; 4] };
        let output = ModelOutput::Detection { detections: vec![found("bolt", 0.99), found("crack", 0.7)] };
        assert_eq!(anomaly_score(&detection, &output), Some(0.7));

        let anomaly = DecisionRule::Anomaly { pass_threshold: 0.3, fail_threshold: 0.6 };
        assert_eq!(anomaly_score(&anomaly, &ModelOutput::Anomaly { score: f32::NAN, map: None }), None);
        assert_eq!(anomaly_score(&anomaly, &output), None, "a mismatched output scores nothing");
    }
}
