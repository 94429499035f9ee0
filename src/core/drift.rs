//! Camera drift: whether a camera's frames still look like they did when the station was
//! set up (the reconstruction-gateway seed's drift report). Pure: frames come in as RGB
//! bytes, `now` as an argument.
//!
//! Each frame is reduced to a few statistics ([`FrameStats`]: brightness, contrast,
//! sharpness and the mean of each colour channel). The first `reference_frames` frames
//! make the reference (mean and spread of each statistic); after that the newest
//! `window_frames` frames are compared with it. A statistic has drifted when the window's
//! mean is more than `medium_sigma` reference spreads away (each spread has a floor, so a
//! perfectly steady camera does not alarm on a one-level change). The report's severity
//! is the worst check's: low (no drift), medium or high.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};

/// The statistics of one frame. Brightness and colours are means on 0..=255, contrast is
/// the spread of brightness, sharpness the variance of the brightness Laplacian.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FrameStats {
    pub values: [f64; FEATURES.len()],
}

/// One statistic, its name in reports, and the floors of its spread (absolute, and
/// relative to the reference mean).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Feature {
    pub name: &'static str,
    floor: (f64, f64),
    /// What a drift of this statistic usually means, for the recommendation.
    cause: &'static str,
}

pub const FEATURES: [Feature; 6] = [
    Feature { name: "brightness", floor: (2.0, 0.02), cause: "lighting or exposure" },
    Feature { name: "contrast", floor: (1.5, 0.05), cause: "lighting or exposure" },
    Feature { name: "sharpness", floor: (1.0, 0.10), cause: "focus, vibration or a dirty lens" },
    Feature { name: "red", floor: (2.0, 0.02), cause: "lighting colour or white balance" },
    Feature { name: "green", floor: (2.0, 0.02), cause: "lighting colour or white balance" },
    Feature { name: "blue", floor: (2.0, 0.02), cause: "lighting colour or white balance" },
];

/// Frames larger than this a side are sampled on a grid, so the cost is bounded.
const MAX_SAMPLES_PER_SIDE: usize = 256;

impl FrameStats {
    /// Statistics of an RGB8 frame (`rgb.len() == width * height * 3`). `None` for a frame
    /// too small to have a Laplacian (under 3 pixels a side) or a short buffer.
    pub fn of_rgb(width: usize, height: usize, rgb: &[u8]) -> Option<FrameStats> {
        if width < 3 || height < 3 || rgb.len() < width * height * 3 {
            return None;
        }
        let luma = |x: usize, y: usize| {
            let i = (y * width + x) * 3;
            0.299 * f64::from(rgb[i]) + 0.587 * f64::from(rgb[i + 1]) + 0.114 * f64::from(rgb[i + 2])
        };
        let step_x = width.div_ceil(MAX_SAMPLES_PER_SIDE).max(1);
        let step_y = height.div_ceil(MAX_SAMPLES_PER_SIDE).max(1);
        let (mut n, mut sum, mut sum_sq) = (0.0, 0.0, 0.0);
        let mut colour = [0.0; 3];
        let (mut lap_n, mut lap_sum, mut lap_sq) = (0.0, 0.0, 0.0);
        for y in (0..height).step_by(step_y) {
            for x in (0..width).step_by(step_x) {
                let l = luma(x, y);
                n += 1.0;
                sum += l;
                sum_sq += l * l;
                let i = (y * width + x) * 3;
                for (c, total) in colour.iter_mut().enumerate() {
                    *total += f64::from(rgb[i + c]);
                }
                if (1..width - 1).contains(&x) && (1..height - 1).contains(&y) {
                    let lap = luma(x - 1, y) + luma(x + 1, y) + luma(x, y - 1) + luma(x, y + 1) - 4.0 * l;
                    lap_n += 1.0;
                    lap_sum += lap;
                    lap_sq += lap * lap;
                }
            }
        }
        let mean = sum / n;
        let contrast = (sum_sq / n - mean * mean).max(0.0).sqrt();
        let sharpness = if lap_n > 0.0 { (lap_sq / lap_n - (lap_sum / lap_n).powi(2)).max(0.0) } else { 0.0 };
        Some(FrameStats { values: [mean, contrast, sharpness, colour[0] / n, colour[1] / n, colour[2] / n] })
    }
}

/// Mean and spread of each statistic over a set of frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub frames: usize,
    pub mean: [f64; FEATURES.len()],
    pub std: [f64; FEATURES.len()],
}

impl Summary {
    pub fn of<'a>(frames: impl Iterator<Item = &'a FrameStats> + Clone) -> Option<Summary> {
        let count = frames.clone().count();
        if count == 0 {
            return None;
        }
        let n = count as f64;
        let mut mean = [0.0; FEATURES.len()];
        for frame in frames.clone() {
            for (m, v) in mean.iter_mut().zip(frame.values) {
                *m += v / n;
            }
        }
        let mut std = [0.0; FEATURES.len()];
        for frame in frames {
            for ((s, v), m) in std.iter_mut().zip(frame.values).zip(mean) {
                *s += (v - m).powi(2) / n;
            }
        }
        Some(Summary { frames: count, mean, std: std.map(f64::sqrt) })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftConfig {
    pub reference_frames: usize,
    pub window_frames: usize,
    /// Shift, in reference spreads, from which a statistic has drifted (severity medium).
    pub medium_sigma: f64,
    /// Shift from which the drift is severe (severity high).
    pub high_sigma: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DriftSeverity {
    Low,
    Medium,
    High,
}

impl DriftSeverity {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftSeverity::Low => "low",
            DriftSeverity::Medium => "medium",
            DriftSeverity::High => "high",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub feature: &'static str,
    pub reference_mean: f64,
    pub reference_std: f64,
    pub current_mean: f64,
    /// |current - reference| in (floored) reference spreads.
    pub shift_sigma: f64,
    pub drifted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DriftReport {
    /// Frames in the reference so far, and how many it needs.
    pub reference_frames: (usize, usize),
    pub reference_set_at: Option<DateTime<Utc>>,
    /// Frames in the current window, and how many it needs before checks are made.
    pub window_frames: (usize, usize),
    pub drift_detected: bool,
    pub severity: DriftSeverity,
    /// Empty until both the reference and the window are full.
    pub checks: Vec<Check>,
    pub recommendation: String,
    pub last_frame_at: Option<DateTime<Utc>>,
}

/// One camera's reference and recent frames.
#[derive(Debug, Clone)]
pub struct DriftMonitor {
    config: DriftConfig,
    learning: Vec<FrameStats>,
    reference: Option<(Summary, DateTime<Utc>)>,
    recent: VecDeque<FrameStats>,
    last_frame_at: Option<DateTime<Utc>>,
}

impl DriftMonitor {
    pub fn new(config: DriftConfig) -> DriftMonitor {
        DriftMonitor { config, learning: Vec::new(), reference: None, recent: VecDeque::new(), last_frame_at: None }
    }

    /// A monitor whose reference was set earlier (restored from storage).
    pub fn with_reference(config: DriftConfig, reference: Summary, set_at: DateTime<Utc>) -> DriftMonitor {
        DriftMonitor { reference: Some((reference, set_at)), ..DriftMonitor::new(config) }
    }

    /// Adds a frame. Returns the reference when this frame completed it (to be stored).
    pub fn push(&mut self, stats: FrameStats, now: DateTime<Utc>) -> Option<Summary> {
        self.last_frame_at = Some(now);
        if self.reference.is_some() {
            self.recent.push_back(stats);
            while self.recent.len() > self.config.window_frames {
                self.recent.pop_front();
            }
            return None;
        }
        self.learning.push(stats);
        if self.learning.len() < self.config.reference_frames {
            return None;
        }
        let summary = Summary::of(self.learning.iter()).expect("at least one frame");
        self.learning.clear();
        self.reference = Some((summary, now));
        Some(summary)
    }

    /// Forgets the reference: the next `reference_frames` frames make a new one (after a
    /// deliberate change of lighting, lens or parts).
    pub fn reset_reference(&mut self) {
        self.learning.clear();
        self.reference = None;
        self.recent.clear();
    }

    pub fn report(&self) -> DriftReport {
        let config = &self.config;
        let mut report = DriftReport {
            reference_frames: (self.learning.len(), config.reference_frames),
            reference_set_at: None,
            window_frames: (self.recent.len(), config.window_frames),
            drift_detected: false,
            severity: DriftSeverity::Low,
            checks: Vec::new(),
            recommendation: String::new(),
            last_frame_at: self.last_frame_at,
        };
        let Some((reference, set_at)) = &self.reference else {
            report.recommendation = format!(
                "Learning the reference: {} of {} frames. Keep the station in its normal state meanwhile.",
                self.learning.len(),
                config.reference_frames
            );
            return report;
        };
        report.reference_frames = (reference.frames, config.reference_frames);
        report.reference_set_at = Some(*set_at);
        let current = match Summary::of(self.recent.iter()) {
            Some(current) if self.recent.len() >= config.window_frames => current,
            _ => {
                report.recommendation =
                    format!("Collecting the current window: {} of {} frames.", self.recent.len(), config.window_frames);
                return report;
            }
        };
        for (index, feature) in FEATURES.iter().enumerate() {
            let (reference_mean, reference_std) = (reference.mean[index], reference.std[index]);
            let spread = reference_std.max(feature.floor.0).max(feature.floor.1 * reference_mean.abs());
            let shift_sigma = (current.mean[index] - reference_mean).abs() / spread;
            let severity = if shift_sigma >= config.high_sigma {
                DriftSeverity::High
            } else if shift_sigma >= config.medium_sigma {
                DriftSeverity::Medium
            } else {
                DriftSeverity::Low
            };
            report.severity = report.severity.max(severity);
            report.checks.push(Check {
                feature: feature.name,
                reference_mean,
                reference_std,
                current_mean: current.mean[index],
                shift_sigma,
                drifted: severity > DriftSeverity::Low,
            });
        }
        report.drift_detected = report.severity > DriftSeverity::Low;
        report.recommendation = recommendation(&report.checks, report.severity);
        report
    }
}

fn recommendation(checks: &[Check], severity: DriftSeverity) -> String {
    let drifted: Vec<&Check> = checks.iter().filter(|c| c.drifted).collect();
    if drifted.is_empty() {
        return "No action needed.".to_owned();
    }
    let names: Vec<&str> = drifted.iter().map(|c| c.feature).collect();
    let mut causes: Vec<&str> = Vec::new();
    for check in &drifted {
        let cause = FEATURES.iter().find(|f| f.name == check.feature).map_or("the scene", |f| f.cause);
        if !causes.contains(&cause) {
            causes.push(cause);
        }
    }
    let urgency = match severity {
        DriftSeverity::High => "Stop and check",
        _ => "Check",
    };
    format!(
        "{urgency} the camera: {} moved away from the reference; likely {}. If the change was deliberate, \
         reset the reference; if the parts themselves changed, collect images and retrain the model.",
        names.join(", "),
        causes.join(", or ")
    )
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    fn frame(width: usize, height: usize, pixel: impl Fn(usize, usize) -> [u8; 3]) -> Vec<u8> {
        let mut rgb = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                rgb.extend_from_slice(&pixel(x, y));
            }
        }
        rgb
    }

    fn checkerboard(level: u8, amplitude: u8) -> impl Fn(usize, usize) -> [u8; 3] {
        move |x, y| {
            let v = if (x / 4 + y / 4) % 2 == 0 { level + amplitude } else { level - amplitude };
            [v, v, v]
        }
    }

    #[test]
    fn stats_see_brightness_contrast_sharpness_and_colour() {
        let flat = FrameStats::of_rgb(32, 32, &frame(32, 32, |_, _| [200, 100, 50])).unwrap();
        let [brightness, contrast, sharpness, red, green, blue] = flat.values;
        assert!((brightness - (0.299 * 200.0 + 0.587 * 100.0 + 0.114 * 50.0)).abs() < 1e-9);
        assert!(contrast < 1e-3 && sharpness < 1e-6, "{contrast} {sharpness}");
        assert_eq!((red, green, blue), (200.0, 100.0, 50.0));

        let sharp = FrameStats::of_rgb(64, 64, &frame(64, 64, checkerboard(128, 60))).unwrap();
        let soft = FrameStats::of_rgb(64, 64, &frame(64, 64, checkerboard(128, 20))).unwrap();
        assert!(sharp.values[1] > soft.values[1] && sharp.values[2] > 4.0 * soft.values[2]);
        // A large frame is sampled but reads the same.
        let large = FrameStats::of_rgb(1024, 1024, &frame(1024, 1024, |_, _| [90, 90, 90])).unwrap();
        assert!((large.values[0] - 90.0).abs() < 1e-9);
        assert_eq!(FrameStats::of_rgb(2, 2, &[0; 12]), None);
        assert_eq!(FrameStats::of_rgb(8, 8, &[0; 10]), None);
    }

    fn config() -> DriftConfig {
        DriftConfig { reference_frames: 5, window_frames: 3, medium_sigma: 3.0, high_sigma: 6.0 }
    }

    fn stats(brightness: f64) -> FrameStats {
        FrameStats { values: [brightness, 40.0, 300.0, brightness, brightness, brightness] }
    }

    fn render(report: &DriftReport) -> String {
        let mut out = format!(
            "reference {:?} window {:?} detected={} severity={}\n",
            report.reference_frames,
            report.window_frames,
            report.drift_detected,
            report.severity.as_str()
        );
        for check in report.checks.iter().filter(|c| c.drifted || c.feature == "contrast") {
            out += &format!(
                "  {} ref={:.1}±{:.1} now={:.1} shift={:.1}σ drifted={}\n",
                check.feature,
                check.reference_mean,
                check.reference_std,
                check.current_mean,
                check.shift_sigma,
                check.drifted
            );
        }
        out + &report.recommendation + "\n"
    }

    #[test]
    fn learning_then_steady_then_a_lighting_change() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut monitor = DriftMonitor::new(config());
        let mut log = String::new();
        for (i, b) in [100.0, 101.0, 99.0, 100.5, 99.5].into_iter().enumerate() {
            let completed = monitor.push(stats(b), now);
            assert_eq!(completed.is_some(), i == 4);
            if i == 1 {
                log += &render(&monitor.report());
            }
        }
        log += &render(&monitor.report());
        for b in [100.0, 101.0, 99.0] {
            monitor.push(stats(b), now);
        }
        log += &render(&monitor.report());
        // The lamp dims: 8 levels is 4 spreads (the floor, 2 levels, beats the 0.7 spread).
        for b in [92.0, 92.0, 92.0] {
            monitor.push(stats(b), now);
        }
        log += &render(&monitor.report());
        for b in [70.0, 70.0, 70.0] {
            monitor.push(stats(b), now);
        }
        log += &render(&monitor.report());
        monitor.reset_reference();
        log += &render(&monitor.report());
        expect![[r#"
            reference (2, 5) window (0, 3) detected=false severity=low
            Learning the reference: 2 of 5 frames. Keep the station in its normal state meanwhile.
            reference (5, 5) window (0, 3) detected=false severity=low
            Collecting the current window: 0 of 3 frames.
            reference (5, 5) window (3, 3) detected=false severity=low
              contrast ref=40.0±0.0 now=40.0 shift=0.0σ drifted=false
            No action needed.
            reference (5, 5) window (3, 3) detected=true severity=medium
              brightness ref=100.0±0.7 now=92.0 shift=4.0σ drifted=true
              contrast ref=40.0±0.0 now=40.0 shift=0.0σ drifted=false
              red ref=100.0±0.7 now=92.0 shift=4.0σ drifted=true
              green ref=100.0±0.7 now=92.0 shift=4.0σ drifted=true
              blue ref=100.0±0.7 now=92.0 shift=4.0σ drifted=true
            Check the camera: brightness, red, green, blue moved away from the reference; likely lighting or exposure, or lighting colour or white balance. If the change was deliberate, reset the reference; if the parts themselves changed, collect images and retrain the model.
            reference (5, 5) window (3, 3) detected=true severity=high
              brightness ref=100.0±0.7 now=70.0 shift=15.0σ drifted=true
              contrast ref=40.0±0.0 now=40.0 shift=0.0σ drifted=false
              red ref=100.0±0.7 now=70.0 shift=15.0σ drifted=true
              green ref=100.0±0.7 now=70.0 shift=15.0σ drifted=true
              blue ref=100.0±0.7 now=70.0 shift=15.0σ drifted=true
            Stop and check the camera: brightness, red, green, blue moved away from the reference; likely lighting or exposure, or lighting colour or white balance. If the change was deliberate, reset the reference; if the parts themselves changed, collect images and retrain the model.
            reference (0, 5) window (0, 3) detected=false severity=low
            Learning the reference: 0 of 5 frames. Keep the station in its normal state meanwhile.
        "#]]
        .assert_eq(&log);
    }
}
