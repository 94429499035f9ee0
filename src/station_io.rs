//! Station I/O: a GPIO trigger input starts an inspection of its station, and every live
//! result of a station (camera inspections, whatever triggered them; not uploads) drives
//! that station's outputs as `core::outputs` plans them.
//!
//! Triggers never wait for each other: each runs its own cycle (the camera serialises the
//! captures), up to `MAX_IN_FLIGHT`. A trigger beyond that cannot be inspected; it is
//! logged, counted and shown as uncertain, because an unjudged part must not pass.
//! Triggers by outcome and the `output` stage (trigger to outputs set) go to the metrics.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::bus::Notification;
use crate::core::outputs::{self, OutputCommand, OutputMap};
use crate::cycle::{CycleImage, InspectRequest, Inspector};
use crate::metrics::{Metrics, Stage, TriggerOutcome};
use crate::south::gpio::{GpioHandle, InputEdge};
use crate::storage::Source;
use crate::supervisor::{Phase, ServiceContext, ServiceError, Supervisor};

/// Cycles running at once from GPIO triggers.
const MAX_IN_FLIGHT: usize = 8;

pub fn spawn(
    supervisor: &mut Supervisor,
    gpio: GpioHandle,
    inspector: Inspector,
    notifications: &broadcast::Sender<Notification>,
    maps: BTreeMap<String, OutputMap>,
    metrics: Metrics,
) {
    let io = StationIo { gpio, inspector, maps, metrics };
    let (edges, notifications) = (io.gpio.edges(), notifications.subscribe());
    supervisor.spawn("station-io", Phase::Intake, move |ctx| io.run(ctx, edges, notifications));
}

struct StationIo {
    gpio: GpioHandle,
    inspector: Inspector,
    maps: BTreeMap<String, OutputMap>,
    metrics: Metrics,
}

impl StationIo {
    async fn run(
        self,
        ctx: ServiceContext,
        mut edges: broadcast::Receiver<InputEdge>,
        mut notifications: broadcast::Receiver<Notification>,
    ) -> Result<(), ServiceError> {
        ctx.set_ready();
        let mut cycles = FuturesUnordered::new();
        loop {
            tokio::select! {
                () = ctx.token.cancelled() => break,
                edge = edges.recv() => match edge {
                    Ok(edge) => {
                        if let Some(station) = self.trigger_station(&edge) {
                            if cycles.len() >= MAX_IN_FLIGHT {
                                self.metrics.gpio_trigger(station, TriggerOutcome::Overrun);
                                tracing::error!(input = edge.input, station, "trigger overrun: part not inspected");
                                self.drive(station, outputs::on_result(&self.maps[station], None)).await;
                                continue;
                            }
                            self.metrics.gpio_trigger(station, TriggerOutcome::Accepted);
                            self.drive(station, outputs::on_trigger(&self.maps[station])).await;
                            cycles.push(self.cycle(station.to_owned(), edge));
                        }
                    }
                    Err(RecvError::Lagged(n)) => tracing::error!(missed = n, "GPIO edges lost: this task fell behind"),
                    Err(RecvError::Closed) => break,
                },
                Some((station, failed)) = cycles.next() => {
                    if failed {
                        self.drive(&station, outputs::on_result(&self.maps[&station], None)).await;
                    }
                }
                notification = notifications.recv() => match notification {
                    Ok(Notification::InspectionCompleted(summary)) if summary.source == Source::Camera => {
                        if let Some(map) = self.maps.get(&summary.station_id) {
                            self.drive(&summary.station_id, outputs::on_result(map, Some(summary.decision))).await;
                            if let Some(triggered_at) = summary.triggered_at.filter(|_| !map.is_empty()) {
                                self.metrics.stage(&summary.station_id, Stage::Output, triggered_at.elapsed());
                            }
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

    /// One triggered cycle; yields the station and whether it failed before a decision.
    fn cycle(&self, station: String, edge: InputEdge) -> impl Future<Output = (String, bool)> + use<> {
        let inspector = self.inspector.clone();
        let metrics = self.metrics.clone();
        async move {
            let request = InspectRequest {
                station_id: station.clone(),
                part_id: None,
                image: CycleImage::Camera,
                triggered_at: edge.at,
            };
            match inspector.inspect(request).await {
                Ok(_) => (station, false),
                Err(err) => {
                    metrics.gpio_trigger(&station, TriggerOutcome::Failed);
                    tracing::error!(station, input = edge.input, cause = %err, "triggered inspection failed");
                    (station, true)
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
