//! The vocabulary between the core and everything around it: `Event` (inputs to the
//! core, a closed enum), `Effect` (what the core asks for), `Notification` (streamed to
//! subscribers such as the WebSocket, and later MQTT and OPC-UA subscriptions) and
//! `Snapshot` (the read side for REST, Modbus registers and OPC-UA variables).
//!
//! These are domain types: not `Serialize`. Each protocol front-end has its own DTOs.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, mpsc, watch};
use uuid::Uuid;

use crate::core::decision::Decision;
use crate::storage::Source;

/// The facts of one stored inspection that the core and the plant interfaces need.
#[derive(Debug, Clone, PartialEq)]
pub struct InspectionSummary {
    pub id: Uuid,
    /// Storage sequence number: strictly increasing across the whole station PC.
    pub seq: i64,
    pub station_id: String,
    pub part_id: Option<String>,
    /// Uploads are judged like live parts but drive no station outputs.
    pub source: Source,
    /// When its trigger arrived (this process only; `None` for records read back at start).
    pub triggered_at: Option<std::time::Instant>,
    pub decision: Decision,
    pub confidence: f32,
    pub label: Option<String>,
    pub objects_found: u32,
    /// Class and confidence of every detection (an expected-items step checks them).
    pub detected: Vec<(String, f32)>,
    /// Trigger to decision, milliseconds.
    pub cycle_time_ms: f64,
    pub inference_ms: f64,
    pub inspected_at: DateTime<Utc>,
}

/// The facts of one stored tightening (a wrench result committed to storage).
#[derive(Debug, Clone, PartialEq)]
pub struct TighteningSummary {
    /// Storage sequence number.
    pub seq: i64,
    pub wrench_id: String,
    pub station_id: Option<String>,
    /// The controller's own result number.
    pub tightening_id: u64,
    pub ok: bool,
    /// Integer hundredths of `torque_unit`, as the controller sent it.
    pub torque: i64,
    pub torque_unit: String,
    pub angle: i64,
    pub pset: Option<u32>,
    pub batch_counter: Option<u32>,
    /// Fetched after a link outage rather than pushed live.
    pub backfilled: bool,
    pub received_at: DateTime<Utc>,
}

/// Inputs to the core. Every input is one variant; there are no callbacks.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An inspection was committed to storage (never sent before the commit).
    InspectionRecorded(InspectionSummary),
    /// A wrench result was committed to storage (never sent before the commit).
    TighteningRecorded(TighteningSummary),
    /// The clock moved on: windows expire, the heartbeat advances.
    Tick,
}

/// What the core asks the world to do in response to an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Publish(Notification),
}

/// Streamed to subscribers, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    InspectionCompleted(Arc<InspectionSummary>),
    TighteningCompleted(Arc<TighteningSummary>),
    /// An alert was raised, escalated or cleared (from the `alerts` service, not the core).
    Alert(Arc<crate::storage::AlertRecord>),
    /// The coaching state changed: a unit started, moved on a step, paused or ended (from
    /// the `coaching` service, after the unit record committed it).
    Coaching(Arc<crate::coaching::CoachingStatus>),
}

/// A consistent read-side view of the station, replaced whole after every event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub taken_at: Option<DateTime<Utc>>,
    pub stations: BTreeMap<String, StationSnapshot>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StationSnapshot {
    pub pass_count: u64,
    pub fail_count: u64,
    pub uncertain_count: u64,
    /// 0..=100 over the last hour; `None` when nothing was inspected in that hour.
    pub pass_rate_1h: Option<f64>,
    /// Decisions in that hour.
    pub inspections_1h: usize,
    pub last: Option<Arc<InspectionSummary>>,
}

/// Channel capacities: a station produces a few events a second; these absorb bursts.
const EVENT_QUEUE: usize = 1024;
const NOTIFICATION_QUEUE: usize = 1024;

/// The cheap-to-clone ends that producers and readers hold.
#[derive(Clone)]
pub struct Bus {
    pub events: mpsc::Sender<Event>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub notifications: broadcast::Sender<Notification>,
}

/// The ends the core task owns.
pub struct CoreEnds {
    pub events: mpsc::Receiver<Event>,
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    pub notifications: broadcast::Sender<Notification>,
}

pub fn channels() -> (Bus, CoreEnds) {
    let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (notification_tx, _) = broadcast::channel(NOTIFICATION_QUEUE);
    (
        Bus { events: event_tx, snapshots: snapshot_rx, notifications: notification_tx.clone() },
        CoreEnds { events: event_rx, snapshots: snapshot_tx, notifications: notification_tx },
    )
}
