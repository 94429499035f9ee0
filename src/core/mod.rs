//! The station's domain logic. Architecture Invariant: no I/O here. No clocks (`now` is
//! an argument), no files, no sockets, no SQL; `tidy::core_is_pure` greps for them.
//! Expected inputs (a failed part, a malformed model output) are domain values, never
//! errors or panics.
//!
//! `Core::handle(event, now) -> Vec<Effect>` is the whole interface; `core_task.rs` runs
//! it as the single owner of station state.

pub mod alerts;
pub mod assembly;
pub mod decision;
pub mod drift;
pub mod expected;
pub mod monitor;
pub mod outputs;
pub mod patchcore;
pub mod stats;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

use crate::bus::{Effect, Event, InspectionSummary, Notification, Snapshot, StationSnapshot};
use decision::Decision;
use stats::StationStats;

/// The pass-rate window published as PassRate1h.
pub const PASS_RATE_WINDOW: TimeDelta = TimeDelta::hours(1);

/// State of every station on this PC.
#[derive(Debug)]
pub struct Core {
    stations: BTreeMap<String, StationState>,
}

#[derive(Debug)]
struct StationState {
    stats: StationStats,
    last: Option<Arc<InspectionSummary>>,
}

impl StationState {
    fn new() -> StationState {
        StationState { stats: StationStats::new(PASS_RATE_WINDOW), last: None }
    }
}

/// What storage remembers of a station, to restore counters after a restart.
#[derive(Debug, Default)]
pub struct StationHistory {
    pub totals: BTreeMap<Decision, u64>,
    /// Decisions of the last hour, oldest first.
    pub recent: Vec<(DateTime<Utc>, Decision)>,
    pub last: Option<InspectionSummary>,
}

impl Core {
    pub fn new(station_ids: impl IntoIterator<Item = String>) -> Core {
        Core { stations: station_ids.into_iter().map(|id| (id, StationState::new())).collect() }
    }

    pub fn restore(&mut self, station_id: &str, history: StationHistory, now: DateTime<Utc>) {
        let state = self.stations.entry(station_id.to_owned()).or_insert_with(StationState::new);
        let total = |d| history.totals.get(&d).copied().unwrap_or(0);
        state.stats.add_totals(total(Decision::Pass), total(Decision::Fail), total(Decision::Uncertain));
        for (at, decision) in history.recent {
            state.stats.restore_window_entry(at, decision, now);
        }
        state.last = history.last.map(Arc::new);
    }

    pub fn handle(&mut self, event: Event, now: DateTime<Utc>) -> Vec<Effect> {
        match event {
            Event::InspectionRecorded(summary) => {
                // Stations come from the config; one that is not there still gets counted
                // rather than dropped, since the record is already stored.
                let state = self.stations.entry(summary.station_id.clone()).or_insert_with(StationState::new);
                state.stats.record(summary.inspected_at, summary.decision, now);
                let summary = Arc::new(summary);
                state.last = Some(summary.clone());
                vec![Effect::Publish(Notification::InspectionCompleted(summary))]
            }
            Event::TighteningRecorded(summary) => {
                // Joined into unit records by the assembly sequencer; for now streamed on.
                vec![Effect::Publish(Notification::TighteningCompleted(Arc::new(summary)))]
            }
            Event::Tick => Vec::new(),
        }
    }

    pub fn snapshot(&mut self, now: DateTime<Utc>) -> Snapshot {
        let stations = self
            .stations
            .iter_mut()
            .map(|(id, state)| {
                let snapshot = StationSnapshot {
                    pass_count: state.stats.pass_count,
                    fail_count: state.stats.fail_count,
                    uncertain_count: state.stats.uncertain_count,
                    pass_rate_1h: state.stats.pass_rate(now),
                    inspections_1h: state.stats.window_len(now),
                    last: state.last.clone(),
                };
                (id.clone(), snapshot)
            })
            .collect();
        Snapshot { taken_at: Some(now), stations }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;
    use uuid::Uuid;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn recorded(seq: i64, station: &str, decision: Decision, at: i64) -> Event {
        Event::InspectionRecorded(InspectionSummary {
            id: Uuid::from_u128(seq as u128),
            seq,
            station_id: station.into(),
            part_id: None,
            source: crate::storage::Source::Camera,
            triggered_at: None,
            decision,
            confidence: 0.9,
            label: None,
            objects_found: 0,
            detected: Vec::new(),
            cycle_time_ms: 12.0,
            inference_ms: 5.0,
            inspected_at: t(at),
        })
    }

    fn render(snapshot: &Snapshot) -> String {
        snapshot
            .stations
            .iter()
            .map(|(id, s)| {
                format!(
                    "{id}: pass={} fail={} uncertain={} rate1h={:?} last_seq={:?}\n",
                    s.pass_count,
                    s.fail_count,
                    s.uncertain_count,
                    s.pass_rate_1h.map(|r| format!("{r:.1}")),
                    s.last.as_ref().map(|l| l.seq)
                )
            })
            .collect()
    }

    /// A scenario: events in, rendered effects and snapshots out.
    #[test]
    fn scenario_counts_publishes_and_expires() {
        let mut core = Core::new(["line-1".to_owned(), "line-2".to_owned()]);
        let mut log = String::new();
        let script = [
            (recorded(1, "line-1", Decision::Pass, 0), 0),
            (recorded(2, "line-1", Decision::Fail, 10), 10),
            (recorded(3, "line-2", Decision::Uncertain, 20), 20),
            (Event::Tick, 3_605),
            (recorded(4, "line-1", Decision::Pass, 3_700), 3_700),
        ];
        for (event, now) in script {
            let effects = core.handle(event, t(now));
            for effect in &effects {
                let Effect::Publish(Notification::InspectionCompleted(s)) = effect else { continue };
                log.push_str(&format!("@{now} publish seq={} {}\n", s.seq, s.decision.as_str()));
            }
            log.push_str(&render(&core.snapshot(t(now))));
        }
        expect![[r#"
            @0 publish seq=1 pass
            line-1: pass=1 fail=0 uncertain=0 rate1h=Some("100.0") last_seq=Some(1)
            line-2: pass=0 fail=0 uncertain=0 rate1h=None last_seq=None
            @10 publish seq=2 fail
            line-1: pass=1 fail=1 uncertain=0 rate1h=Some("50.0") last_seq=Some(2)
            line-2: pass=0 fail=0 uncertain=0 rate1h=None last_seq=None
            @20 publish seq=3 uncertain
            line-1: pass=1 fail=1 uncertain=0 rate1h=Some("50.0") last_seq=Some(2)
            line-2: pass=0 fail=0 uncertain=1 rate1h=Some("0.0") last_seq=Some(3)
            line-1: pass=1 fail=1 uncertain=0 rate1h=Some("0.0") last_seq=Some(2)
            line-2: pass=0 fail=0 uncertain=1 rate1h=Some("0.0") last_seq=Some(3)
            @3700 publish seq=4 pass
            line-1: pass=2 fail=1 uncertain=0 rate1h=Some("100.0") last_seq=Some(4)
            line-2: pass=0 fail=0 uncertain=1 rate1h=None last_seq=Some(3)
        "#]]
        .assert_eq(&log);
    }

    #[test]
    fn restore_brings_back_counters_and_window() {
        let mut core = Core::new(["default".to_owned()]);
        let history = StationHistory {
            totals: [(Decision::Pass, 40), (Decision::Fail, 2)].into(),
            recent: vec![(t(-100), Decision::Pass), (t(-50), Decision::Fail)],
            last: None,
        };
        core.restore("default", history, t(0));
        expect![[r#"
            default: pass=40 fail=2 uncertain=0 rate1h=Some("50.0") last_seq=None
        "#]]
        .assert_eq(&render(&core.snapshot(t(0))));
    }
}
