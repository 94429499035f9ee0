//! Station I/O: a GPIO trigger input starts an inspection of its station, and every live
//! result of a station (camera inspections, whatever triggered them; not uploads) drives
//! that station's outputs as `core::outputs` plans them.
//!
//! Triggers never wait for each other: each runs its own cycle (the camera serialises the
//! captures), up to `MAX_IN_FLIGHT`; busy stays on while any of a station's runs. A trigger beyond that cannot be inspected; it is
//! logged, counted and shown as uncertain, because an unjudged part must not pass.
//! Triggers by outcome and the `output` stage (trigger to outputs set) go to the metrics.
//! A station's ready output follows the daemon's readiness (checked every second).

use std::collections::{BTreeMap, VecDeque};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::bus::Notification;
use crate::core::decision::Decision;
use crate::core::outputs::{self, OutputCommand, OutputMap};
use crate::cycle::{CycleImage, InspectRequest, Inspector};
use crate::metrics::{Metrics, Stage, TriggerOutcome};
use crate::south::gpio::{GpioHandle, InputEdge};
use crate::storage::Source;
use crate::supervisor::{Phase, Readiness, ServiceContext, ServiceError, Supervisor};
use uuid::Uuid;

/// Cycles running at once from GPIO triggers.
const MAX_IN_FLIGHT: usize = 8;

pub fn spawn(
    supervisor: &mut Supervisor,
    gpio: GpioHandle,
    inspector: Inspector,
    notifications: &broadcast::Sender<Notification>,
    maps: BTreeMap<String, OutputMap>,
    metrics: Metrics,
    readiness: Readiness,
) {
    let io = StationIo { gpio, inspector, maps, metrics, readiness };
    let (edges, notifications) = (io.gpio.edges(), notifications.subscribe());
    supervisor.spawn("station-io", Phase::Intake, move |ctx| io.run(ctx, edges, notifications));
}

/// The ids seen once lately, oldest first.
#[derive(Default)]
struct RecentIds(VecDeque<Uuid>);

impl RecentIds {
    const CAPACITY: usize = 256;

    /// True the first time `id` is seen; the second sighting forgets it.
    fn first_sight(&mut self, id: Uuid) -> bool {
        if let Some(at) = self.0.iter().position(|seen| *seen == id) {
            self.0.remove(at);
            return false;
        }
        if self.0.len() == Self::CAPACITY {
            self.0.pop_front();
        }
        self.0.push_back(id);
        true
    }
}

/// What a result's outputs need.
struct Shown {
    id: Uuid,
    station_id: String,
    decision: Decision,
    triggered_at: Option<std::time::Instant>,
}

struct StationIo {
    gpio: GpioHandle,
    inspector: Inspector,
    maps: BTreeMap<String, OutputMap>,
    metrics: Metrics,
    readiness: Readiness,
}

/// How often the ready outputs follow the daemon's readiness.
const READY_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl StationIo {
    async fn run(
        self,
        ctx: ServiceContext,
        mut edges: broadcast::Receiver<InputEdge>,
        mut notifications: broadcast::Receiver<Notification>,
    ) -> Result<(), ServiceError> {
        ctx.set_ready();
        let mut cycles = FuturesUnordered::new();
        // Triggered cycles running, per station: busy stays on while any runs.
        let mut running: BTreeMap<String, usize> = BTreeMap::new();
        // Results whose outputs are set, by the notification or by the cycle's end,
        // whichever came first; the other one finds the id here and removes it. Results
        // of other triggers (PLC, REST) never come back for removal, so the memory is a
        // bounded window: both sightings of a GPIO result are milliseconds apart.
        let mut shown = RecentIds::default();
        let mut ready_check = tokio::time::interval(READY_CHECK);
        let mut ready_shown = None;
        loop {
            tokio::select! {
                () = ctx.token.cancelled() => break,
                _ = ready_check.tick() => {
                    let ready = self.readiness.all_ready();
                    if ready_shown != Some(ready) {
                        ready_shown = Some(ready);
                        for (station, map) in &self.maps {
                            self.drive(station, outputs::on_readiness(map, ready)).await;
                        }
                    }
                }
                edge = edges.recv() => match edge {
                    Ok(edge) => {
                        if let Some(station) = self.trigger_station(&edge) {
                            if cycles.len() >= MAX_IN_FLIGHT {
                                self.metrics.gpio_trigger(station, TriggerOutcome::Overrun);
                                tracing::error!(input = edge.input, station, "trigger overrun: part not inspected");
                                // Not inspected, so never passed; busy is left to the cycles running.
                                self.drive(station, outputs::on_result(&self.maps[station], None)).await;
                                continue;
                            }
                            self.metrics.gpio_trigger(station, TriggerOutcome::Accepted);
                            self.drive(station, outputs::on_trigger(&self.maps[station])).await;
                            *running.entry(station.to_owned()).or_default() += 1;
                            cycles.push(self.cycle(station.to_owned(), edge));
                        }
                    }
                    Err(RecvError::Lagged(n)) => tracing::error!(missed = n, "GPIO edges lost: this task fell behind"),
                    Err(RecvError::Closed) => break,
                },
                Some((station, outcome)) = cycles.next() => {
                    match outcome {
                        Ok(result) => {
                            if shown.first_sight(result.id) {
                                self.show(&result).await;
                            }
                        }
                        Err(()) => self.drive(&station, outputs::on_result(&self.maps[&station], None)).await,
                    }
                    let left = running.entry(station.clone()).or_default();
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        self.drive(&station, outputs::on_idle(&self.maps[&station])).await;
                    }
                }
                notification = notifications.recv() => match notification {
                    Ok(Notification::InspectionCompleted(summary)) if summary.source == Source::Camera => {
                        let result = Shown {
                            id: summary.id,
                            station_id: summary.station_id.clone(),
                            decision: summary.decision,
                            triggered_at: summary.triggered_at,
                        };
                        if shown.first_sight(result.id) {
                            self.show(&result).await;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "results missed for the outputs"),
                    Err(RecvError::Closed) => break,
                },
            }
        }
        // Intake stops: no new triggers, but the cycles already started finish and are
        // committed (their outputs are moot: the devices go to their safe state next).
        while cycles.next().await.is_some() {}
        Ok(())
    }

    /// The station an edge triggers, if its input is a trigger of a known station.
    fn trigger_station(&self, edge: &InputEdge) -> Option<&str> {
        let station = self.gpio.config().inputs.get(&edge.input)?.trigger.as_deref()?;
        self.maps.contains_key(station).then_some(station)
    }

    /// A live result: its station's outputs, and the output stage's time.
    async fn show(&self, result: &Shown) {
        let Some(map) = self.maps.get(&result.station_id).filter(|m| !m.is_empty()) else { return };
        self.drive(&result.station_id, outputs::on_result(map, Some(result.decision))).await;
        if let Some(triggered_at) = result.triggered_at {
            self.metrics.stage(&result.station_id, Stage::Output, triggered_at.elapsed());
        }
    }

    /// One triggered cycle; yields the station and the result, or `Err` when it failed
    /// before a decision.
    fn cycle(&self, station: String, edge: InputEdge) -> impl Future<Output = (String, Result<Shown, ()>)> + use<> {
        let inspector = self.inspector.clone();
        let metrics = self.metrics.clone();
        async move {
            let request = InspectRequest {
                station_id: station.clone(),
                part_id: None,
                image: CycleImage::Camera,
                triggered_at: edge.at,
                expected: None,
            };
            match inspector.inspect(request).await {
                Ok(record) => {
                    let shown = Shown {
                        id: record.id,
                        station_id: record.station_id,
                        decision: record.decision,
                        triggered_at: Some(edge.at),
                    };
                    (station, Ok(shown))
                }
                Err(err) => {
                    metrics.gpio_trigger(&station, TriggerOutcome::Failed);
                    tracing::error!(station, input = edge.input, cause = %err, "triggered inspection failed");
                    (station, Err(()))
                }
            }
        }
    }

    async fn drive(&self, station: &str, commands: Vec<OutputCommand>) {
        if commands.is_empty() {
            return;
        }
        if let Err(err) = self.gpio.apply(commands).await {
            tracing::error!(station, cause = %err, "station outputs not set");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_result_is_shown_once_and_the_memory_stays_bounded() {
        let mut shown = RecentIds::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert!(shown.first_sight(a), "the notification shows it");
        assert!(shown.first_sight(b));
        assert!(!shown.first_sight(a), "the cycle's end does not show it again");
        assert!(shown.first_sight(a), "and has forgotten it");
        // Results that are seen once only (PLC triggers) do not pile up.
        for n in 0..10_000u128 {
            shown.first_sight(Uuid::from_u128(100 + n));
        }
        assert_eq!(shown.0.len(), RecentIds::CAPACITY);
    }
}
