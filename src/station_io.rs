//! Station I/O: a GPIO trigger input starts an inspection of its station, and every live
//! result of a station (camera inspections, whatever triggered them; not uploads) drives
//! that station's outputs as `core::outputs` plans them.
//!
//! Triggers never wait for each other: each runs its own cycle (the camera serialises the
//! captures), up to `MAX_IN_FLIGHT`. A trigger beyond that cannot be inspected; it is
//! logged, counted and shown as uncertain, because an unjudged part must not pass.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::bus::Notification;
use crate::core::outputs::{self, OutputCommand, OutputMap};
use crate::cycle::{CycleImage, InspectRequest, Inspector};
use crate::south::gpio::{GpioHandle, InputEdge};
use crate::storage::Source;
use crate::supervisor::{Phase, ServiceContext, ServiceError, Supervisor};

/// Cycles running at once from GPIO triggers.
const MAX_IN_FLIGHT: usize = 8;

/// Counters for the status API.
#[derive(Debug, Default)]
pub struct TriggerCounters {
    pub accepted: AtomicU64,
    /// Triggers that came while `MAX_IN_FLIGHT` cycles were running.
    pub overruns: AtomicU64,
    /// Triggered cycles that ended without a decision (camera, model, storage).
    pub failed: AtomicU64,
}

pub fn spawn(
    supervisor: &mut Supervisor,
    gpio: GpioHandle,
    inspector: Inspector,
    notifications: &broadcast::Sender<Notification>,
    maps: BTreeMap<String, OutputMap>,
) -> Arc<TriggerCounters> {
    let counters = Arc::new(TriggerCounters::default());
    let io = StationIo { gpio, inspector, maps, counters: counters.clone() };
    let (edges, notifications) = (io.gpio.edges(), notifications.subscribe());
    supervisor.spawn("station-io", Phase::Intake, move |ctx| io.run(ctx, edges, notifications));
    counters
}

struct StationIo {
    gpio: GpioHandle,
    inspector: Inspector,
    maps: BTreeMap<String, OutputMap>,
    counters: Arc<TriggerCounters>,
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
                                self.counters.overruns.fetch_add(1, Ordering::Relaxed);
                                tracing::error!(input = edge.input, station, "trigger overrun: part not inspected");
                                self.drive(station, outputs::on_result(&self.maps[station], None)).await;
                                continue;
                            }
                            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
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
        let counters = self.counters.clone();
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
                    counters.failed.fetch_add(1, Ordering::Relaxed);
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
