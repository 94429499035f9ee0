//! Prometheus metrics (prometheus-client): one registry made by `app`, cloned into the
//! parts that record, rendered by `GET /metrics`. No global registry: a test daemon's
//! figures are its own.
//!
//! The inspection cycle is timed per stage, each from the trigger: `capture` (frame in
//! hand), `inference` (model run, preprocessing included), `commit` (image fsynced and row
//! committed), `published` (the snapshot that Modbus, OPC-UA and REST read includes it),
//! and `output` (the station's outputs set for it: GPIO stack light and reject gate).
//! Requests are counted by the API's middleware; device, backlog and model gauges are set
//! by the `/metrics` handler from the services' state when scraped.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    api_requests: Family<Labels, Counter>,
    api_errors: Family<Labels, Counter>,
    device_up: Family<Labels, Gauge>,
    outbox_backlog: Family<Labels, Gauge>,
    model_ready: Gauge,
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
            "inspection_stage_seconds",
            "Time from an inspection's trigger to the end of each stage",
            stage.clone(),
        );
        let inspections = Family::<Labels, Counter>::default();
        registry.register("inspections", "Inspections recorded, by station and decision", inspections.clone());
        let gpio_triggers = Family::<Labels, Counter>::default();
        registry.register("gpio_triggers", "GPIO trigger edges, by station and outcome", gpio_triggers.clone());
        let api_requests = Family::<Labels, Counter>::default();
        registry.register("api_requests", "HTTP requests, by method, route and status", api_requests.clone());
        let api_errors = Family::<Labels, Counter>::default();
        registry.register("api_errors", "HTTP answers with a 4xx or 5xx status, by route", api_errors.clone());
        let device_up = Family::<Labels, Gauge>::default();
        registry.register("device_up", "1 while a device or link works, by kind and name", device_up.clone());
        let outbox_backlog = Family::<Labels, Gauge>::default();
        registry.register("outbox_backlog", "MQTT messages not yet acknowledged by the broker", outbox_backlog.clone());
        let model_ready = Gauge::default();
        registry.register("model_ready", "1 once the model is loaded and warmed", model_ready.clone());
        let inner = Inner {
            registry,
            stage,
            inspections,
            gpio_triggers,
            api_requests,
            api_errors,
            device_up,
            outbox_backlog,
            model_ready,
        };
        Metrics { inner: Arc::new(inner) }
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

    /// One HTTP answer; `route` is the matched route template, so ids do not become labels.
    pub fn api_request(&self, method: &str, route: &str, status: u16) {
        let labels =
            vec![("method", method.to_owned()), ("endpoint", route.to_owned()), ("status", status.to_string())];
        self.inner.api_requests.get_or_create(&labels).inc();
        if status >= 400 {
            let labels = vec![("endpoint", route.to_owned()), ("status", status.to_string())];
            self.inner.api_errors.get_or_create(&labels).inc();
        }
    }

    /// Set at scrape time from the services' own state.
    pub fn device_up(&self, kind: &str, name: &str, up: bool) {
        let labels = vec![("kind", kind.to_owned()), ("name", name.to_owned())];
        self.inner.device_up.get_or_create(&labels).set(i64::from(up));
    }

    pub fn outbox_backlog(&self, station: &str, backlog: u64) {
        let labels = vec![("station", station.to_owned())];
        self.inner.outbox_backlog.get_or_create(&labels).set(backlog as i64);
    }

    pub fn model_ready(&self, ready: bool) {
        self.inner.model_ready.set(i64::from(ready));
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
        metrics.api_request("GET", "/api/v1/inspections/{id}", 404);
        metrics.device_up("camera", "cam0", true);
        metrics.model_ready(true);
        let text = metrics.render();
        for line in [
            "inspection_stage_seconds_count{station=\"default\",stage=\"capture\"} 1",
            "inspection_stage_seconds_bucket{le=\"0.001\",station=\"default\",stage=\"capture\"} 1",
            "inspection_stage_seconds_bucket{le=\"0.0005\",station=\"default\",stage=\"capture\"} 0",
            "inspections_total{station=\"default\",decision=\"pass\"} 1",
            "gpio_triggers_total{station=\"default\",outcome=\"overrun\"} 1",
            "api_requests_total{method=\"GET\",endpoint=\"/api/v1/inspections/{id}\",status=\"404\"} 1",
            "api_errors_total{endpoint=\"/api/v1/inspections/{id}\",status=\"404\"} 1",
            "device_up{kind=\"camera\",name=\"cam0\"} 1",
            "model_ready 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
