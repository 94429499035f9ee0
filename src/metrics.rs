//! Prometheus metrics (prometheus-client): one registry made by `app`, cloned into the
//! parts that record, rendered by `GET /metrics`. No global registry: a test daemon's
//! figures are its own.
//!
//! The inspection cycle is timed per stage, each from the trigger: `capture` (frame in
//! hand), `inference` (model run, preprocessing included), `commit` (image fsynced and row
//! committed), `published` (the snapshot that Modbus, OPC-UA and REST read includes it),
//! and `output` (the station's outputs set for it: GPIO stack light and reject gate).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    stage: HistogramFamily,
    inspections: Family<Labels, Counter>,
    gpio_triggers: Family<Labels, Counter>,
}

/// A stage of the inspection cycle, timed from the trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Capture,
    Inference,
    Commit,
    Published,
    Output,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Capture => "capture",
            Stage::Inference => "inference",
            Stage::Commit => "commit",
            Stage::Published => "published",
            Stage::Output => "output",
        }
    }
}

/// What became of a GPIO trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerOutcome {
    Accepted,
    /// Too many cycles running: the part was not inspected.
    Overrun,
    /// The cycle ended without a decision (camera, model, storage).
    Failed,
}

fn stage_histogram() -> Histogram {
    // 0.25 ms to ~4 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let stage = HistogramFamily::new_with_constructor(stage_histogram);
        registry.register(
            "stationd_inspection_stage_seconds",
            "Time from an inspection's trigger to the end of each stage",
            stage.clone(),
        );
        let inspections = Family::<Labels, Counter>::default();
        registry.register("stationd_inspections", "Inspections recorded, by station and decision", inspections.clone());
        let gpio_triggers = Family::<Labels, Counter>::default();
        registry.register(
            "stationd_gpio_triggers",
            "GPIO trigger edges, by station and outcome",
            gpio_triggers.clone(),
        );
        Metrics { inner: Arc::new(Inner { registry, stage, inspections, gpio_triggers }) }
    }

    /// Records that `stage` of an inspection of `station` ended `since_trigger` after its
    /// trigger.
    pub fn stage(&self, station: &str, stage: Stage, since_trigger: Duration) {
        let labels = vec![("station", station.to_owned()), ("stage", stage.as_str().to_owned())];
        self.inner.stage.get_or_create(&labels).observe(since_trigger.as_secs_f64());
    }

    pub fn inspection(&self, station: &str, decision: &str) {
        let labels = vec![("station", station.to_owned()), ("decision", decision.to_owned())];
        self.inner.inspections.get_or_create(&labels).inc();
    }

    pub fn gpio_trigger(&self, station: &str, outcome: TriggerOutcome) {
        let outcome = match outcome {
            TriggerOutcome::Accepted => "accepted",
            TriggerOutcome::Overrun => "overrun",
            TriggerOutcome::Failed => "failed",
        };
        let labels = vec![("station", station.to_owned()), ("outcome", outcome.to_owned())];
        self.inner.gpio_triggers.get_or_create(&labels).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_stage_histograms_and_counters() {
        let metrics = Metrics::new();
        metrics.stage("default", Stage::Capture, Duration::from_micros(900));
        metrics.inspection("default", "pass");
        metrics.gpio_trigger("default", TriggerOutcome::Overrun);
        let text = metrics.render();
        for line in [
            "stationd_inspection_stage_seconds_count{station=\"default\",stage=\"capture\"} 1",
            "stationd_inspection_stage_seconds_bucket{le=\"0.001\",station=\"default\",stage=\"capture\"} 1",
            "stationd_inspection_stage_seconds_bucket{le=\"0.0005\",station=\"default\",stage=\"capture\"} 0",
            "stationd_inspections_total{station=\"default\",decision=\"pass\"} 1",
            "stationd_gpio_triggers_total{station=\"default\",outcome=\"overrun\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
