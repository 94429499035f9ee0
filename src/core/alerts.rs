//! Alert rules: what the station raises for people to look at, from one observation of
//! its state at `now`. Pure: the `alerts` service gathers the observation, stores and
//! publishes the changes.
//!
//! Each rule is a condition with a key; an alert is raised when its condition starts to
//! hold and cleared when it stops, with a margin (hysteresis) on the numeric rules so that
//! a pass rate hovering at its target does not raise and clear on every part.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::drift::DriftSeverity;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Severity> {
        [Severity::Info, Severity::Warning, Severity::Error, Severity::Critical]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// What an alert is about; one alert at a time per key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum AlertKey {
    PassRate { station_id: String },
    DeviceDown { service: String },
    DiskLow,
    OutboxBacklog,
    Drift { camera: String },
}

impl AlertKey {
    /// A stable text form, stored with the alert.
    pub fn render(&self) -> String {
        match self {
            AlertKey::PassRate { station_id } => format!("pass_rate:{station_id}"),
            AlertKey::DeviceDown { service } => format!("device_down:{service}"),
            AlertKey::DiskLow => "disk_low".to_owned(),
            AlertKey::OutboxBacklog => "outbox_backlog".to_owned(),
            AlertKey::Drift { camera } => format!("drift:{camera}"),
        }
    }

    /// Reads back `render`'s form.
    pub fn parse(text: &str) -> Option<AlertKey> {
        match text.split_once(':') {
            Some(("pass_rate", station_id)) => Some(AlertKey::PassRate { station_id: station_id.to_owned() }),
            Some(("device_down", service)) => Some(AlertKey::DeviceDown { service: service.to_owned() }),
            Some(("drift", camera)) => Some(AlertKey::Drift { camera: camera.to_owned() }),
            None if text == "disk_low" => Some(AlertKey::DiskLow),
            None if text == "outbox_backlog" => Some(AlertKey::OutboxBacklog),
            _ => None,
        }
    }

    /// The station an alert concerns, when it is one station's.
    pub fn station(&self) -> Option<&str> {
        match self {
            AlertKey::PassRate { station_id } => Some(station_id),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertRules {
    /// Percent, 0..=100.
    pub pass_rate_target: f64,
    /// Fewer inspections in the last hour than this say nothing about the pass rate.
    pub pass_rate_min_inspections: usize,
    /// Percent of the state directory's file system that must stay free.
    pub disk_free_min_percent: f64,
    /// Undelivered MQTT messages, all stations.
    pub outbox_backlog_max: u64,
}

/// Margins before a raised numeric alert clears.
const PASS_RATE_MARGIN: f64 = 2.0;
const DISK_MARGIN: f64 = 2.0;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StationObservation {
    /// Percent over the last hour.
    pub pass_rate_1h: Option<f64>,
    pub inspections_1h: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub stations: BTreeMap<String, StationObservation>,
    /// Degraded services and why.
    pub degraded: BTreeMap<String, String>,
    /// Free and total bytes of the state directory's file system; `None` if unknown.
    pub disk: Option<(u64, u64)>,
    pub outbox_backlog: u64,
    /// Cameras whose frames drifted from their reference (`core::drift`), with what moved.
    pub drift: BTreeMap<String, (DriftSeverity, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AlertChange {
    Raised { key: AlertKey, severity: Severity, title: String, message: String },
    Cleared { key: AlertKey, message: String },
}

/// The alerts in force, by key.
#[derive(Debug, Default)]
pub struct AlertBook {
    active: BTreeMap<AlertKey, Severity>,
}

impl AlertBook {
    pub fn new() -> AlertBook {
        AlertBook::default()
    }

    /// Starts from alerts still active in storage (a restart does not raise them again).
    pub fn restore(keys: impl IntoIterator<Item = (AlertKey, Severity)>) -> AlertBook {
        AlertBook { active: keys.into_iter().collect() }
    }

    pub fn is_active(&self, key: &AlertKey) -> bool {
        self.active.contains_key(key)
    }

    /// Applies the rules to one observation. A rule whose input is missing from the
    /// observation (a station gone from the config) clears.
    pub fn evaluate(&mut self, rules: &AlertRules, seen: &Observation, _now: DateTime<Utc>) -> Vec<AlertChange> {
        let mut holding: BTreeMap<AlertKey, (Severity, String, String)> = BTreeMap::new();
        let mut keep: BTreeSet<AlertKey> = BTreeSet::new();

        for (station_id, station) in &seen.stations {
            let key = AlertKey::PassRate { station_id: station_id.clone() };
            let Some(rate) = station.pass_rate_1h.filter(|_| station.inspections_1h >= rules.pass_rate_min_inspections)
            else {
                continue;
            };
            if rate < rules.pass_rate_target {
                let message = format!(
                    "Pass rate {rate:.0}% is below the {:.0}% target (station {station_id}, last hour, {} inspections)",
                    rules.pass_rate_target, station.inspections_1h
                );
                holding.insert(key, (Severity::Warning, "Pass rate below threshold".to_owned(), message));
            } else if rate < rules.pass_rate_target + PASS_RATE_MARGIN {
                keep.insert(key);
            }
        }
        for (service, reason) in &seen.degraded {
            let key = AlertKey::DeviceDown { service: service.clone() };
            holding.insert(key, (Severity::Error, "Device down".to_owned(), format!("{service}: {reason}")));
        }
        if let Some((free, total)) = seen.disk.filter(|(_, total)| *total > 0) {
            let percent = 100.0 * free as f64 / total as f64;
            if percent < rules.disk_free_min_percent {
                let message = format!(
                    "{percent:.1}% of the state directory's disk is free ({} MiB); below {:.0}%. Old images go with POST /api/v1/storage/cleanup",
                    free / (1024 * 1024),
                    rules.disk_free_min_percent
                );
                let severity =
                    if percent < rules.disk_free_min_percent / 2.0 { Severity::Critical } else { Severity::Error };
                holding.insert(AlertKey::DiskLow, (severity, "Disk space low".to_owned(), message));
            } else if percent < rules.disk_free_min_percent + DISK_MARGIN {
                keep.insert(AlertKey::DiskLow);
            }
        }
        if seen.outbox_backlog > rules.outbox_backlog_max {
            let message = format!(
                "{} MQTT messages wait for the broker (more than {}); they are kept and sent when it is back",
                seen.outbox_backlog, rules.outbox_backlog_max
            );
            holding.insert(AlertKey::OutboxBacklog, (Severity::Warning, "MQTT outbox backlog".to_owned(), message));
        }

        for (camera, (severity, what)) in &seen.drift {
            let severity = match severity {
                DriftSeverity::Low => continue,
                DriftSeverity::Medium => Severity::Warning,
                DriftSeverity::High => Severity::Error,
            };
            let message = format!("Camera {camera}'s frames moved away from its reference: {what}");
            holding.insert(AlertKey::Drift { camera: camera.clone() }, (severity, "Camera drift".to_owned(), message));
        }

        let mut changes = Vec::new();
        let cleared: Vec<AlertKey> =
            self.active.keys().filter(|k| !holding.contains_key(*k) && !keep.contains(*k)).cloned().collect();
        for key in cleared {
            self.active.remove(&key);
            changes.push(AlertChange::Cleared { message: cleared_message(&key), key });
        }
        for (key, (severity, title, message)) in holding {
            // A new alert, or the same condition grown worse (a higher severity).
            let raise = self.active.get(&key).is_none_or(|active| severity > *active);
            if raise {
                self.active.insert(key.clone(), severity);
                changes.push(AlertChange::Raised { key, severity, title, message });
            }
        }
        changes
    }
}

fn cleared_message(key: &AlertKey) -> String {
    match key {
        AlertKey::PassRate { station_id } => format!("Pass rate of station {station_id} is back on target"),
        AlertKey::DeviceDown { service } => format!("{service} is ready again"),
        AlertKey::DiskLow => "Disk space is back above its minimum".to_owned(),
        AlertKey::OutboxBacklog => "MQTT outbox backlog is back under its limit".to_owned(),
        AlertKey::Drift { camera } => format!("Camera {camera}'s frames are back in line with its reference"),
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    fn rules() -> AlertRules {
        AlertRules {
            pass_rate_target: 90.0,
            pass_rate_min_inspections: 20,
            disk_free_min_percent: 10.0,
            outbox_backlog_max: 1000,
        }
    }

    fn station(rate: f64, n: usize) -> Observation {
        let mut seen = Observation::default();
        seen.stations.insert("s1".into(), StationObservation { pass_rate_1h: Some(rate), inspections_1h: n });
        seen
    }

    fn check(book: &mut AlertBook, script: &[Observation], expect: Expect) {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut log = String::new();
        for (step, seen) in script.iter().enumerate() {
            for change in book.evaluate(&rules(), seen, now) {
                let line = match change {
                    AlertChange::Raised { key, severity, title, message } => {
                        format!("{step}: raise {} {} {title:?}: {message}\n", key.render(), severity.as_str())
                    }
                    AlertChange::Cleared { key, message } => format!("{step}: clear {}: {message}\n", key.render()),
                };
                log.push_str(&line);
            }
        }
        expect.assert_eq(&log);
    }

    #[test]
    fn pass_rate_needs_enough_parts_and_clears_with_a_margin() {
        let mut book = AlertBook::new();
        check(
            &mut book,
            &[station(50.0, 19), station(85.0, 20), station(86.0, 25), station(91.0, 30), station(92.5, 31)],
            expect![[r#"
                1: raise pass_rate:s1 warning "Pass rate below threshold": Pass rate 85% is below the 90% target (station s1, last hour, 20 inspections)
                4: clear pass_rate:s1: Pass rate of station s1 is back on target
            "#]],
        );
    }

    #[test]
    fn devices_disk_and_backlog() {
        let mut book = AlertBook::new();
        let mut down = Observation::default();
        down.degraded.insert("camera[cam0]".into(), "no frames: device unplugged".into());
        down.disk = Some((8 * 1024 * 1024 * 1024, 100 * 1024 * 1024 * 1024));
        down.outbox_backlog = 1001;
        let mut worse = down.clone();
        worse.disk = Some((4 * 1024 * 1024 * 1024, 100 * 1024 * 1024 * 1024));
        let mut better = worse.clone();
        better.degraded.clear();
        better.disk = Some((11 * 1024 * 1024 * 1024, 100 * 1024 * 1024 * 1024));
        better.outbox_backlog = 10;
        let mut fine = better.clone();
        fine.disk = Some((13 * 1024 * 1024 * 1024, 100 * 1024 * 1024 * 1024));
        check(
            &mut book,
            &[down, worse, better, fine],
            expect![[r#"
                0: raise device_down:camera[cam0] error "Device down": camera[cam0]: no frames: device unplugged
                0: raise disk_low error "Disk space low": 8.0% of the state directory's disk is free (8192 MiB); below 10%. Old images go with POST /api/v1/storage/cleanup
                0: raise outbox_backlog warning "MQTT outbox backlog": 1001 MQTT messages wait for the broker (more than 1000); they are kept and sent when it is back
                1: raise disk_low critical "Disk space low": 4.0% of the state directory's disk is free (4096 MiB); below 10%. Old images go with POST /api/v1/storage/cleanup
                2: clear device_down:camera[cam0]: camera[cam0] is ready again
                2: clear outbox_backlog: MQTT outbox backlog is back under its limit
                3: clear disk_low: Disk space is back above its minimum
            "#]],
        );
    }

    #[test]
    fn camera_drift_raises_escalates_and_clears() {
        let mut book = AlertBook::new();
        let drift = |severity: DriftSeverity| {
            let mut seen = Observation::default();
            seen.drift.insert("cam0".into(), (severity, "brightness 4.0σ".into()));
            seen
        };
        check(
            &mut book,
            &[
                drift(DriftSeverity::Low),
                drift(DriftSeverity::Medium),
                drift(DriftSeverity::High),
                drift(DriftSeverity::Medium),
                drift(DriftSeverity::Low),
            ],
            expect![[r#"
                1: raise drift:cam0 warning "Camera drift": Camera cam0's frames moved away from its reference: brightness 4.0σ
                2: raise drift:cam0 error "Camera drift": Camera cam0's frames moved away from its reference: brightness 4.0σ
                4: clear drift:cam0: Camera cam0's frames are back in line with its reference
            "#]],
        );
    }

    #[test]
    fn keys_round_trip() {
        for key in [
            AlertKey::PassRate { station_id: "line-2".into() },
            AlertKey::DeviceDown { service: "camera[cam0]".into() },
            AlertKey::DiskLow,
            AlertKey::OutboxBacklog,
            AlertKey::Drift { camera: "cam0".into() },
        ] {
            assert_eq!(AlertKey::parse(&key.render()), Some(key));
        }
        assert_eq!(AlertKey::parse("no_such_rule"), None);
    }

    #[test]
    fn restored_alerts_are_not_raised_again() {
        let key = AlertKey::PassRate { station_id: "s1".into() };
        let mut book = AlertBook::restore([(key.clone(), Severity::Warning)]);
        check(&mut book, &[station(80.0, 40)], expect![""]);
        assert!(book.is_active(&key));
        check(
            &mut book,
            &[Observation::default()],
            expect![[r#"
            0: clear pass_rate:s1: Pass rate of station s1 is back on target
        "#]],
        );
    }
}
