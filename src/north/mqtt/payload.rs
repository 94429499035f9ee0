//! MQTT payloads. The inspection message carries the same JSON as the REST API's
//! `GET /api/v1/inspections/{id}`, plus `message_seq`: 1, 2, 3... per station, so a
//! subscriber can detect a gap (and deduplicate a redelivery by `id`). Tightenings go
//! the same way on their own topic, numbered in the same per-station sequence.

use serde::Serialize;

use crate::north::api::dto::{InspectionDto, PipelineEventDto, TighteningDto, UnitRecordDto};
use crate::storage::{InspectionRecord, PipelineEvent, TighteningRecord, UnitEvent, UnitRecord};

#[derive(Serialize)]
struct InspectionMessage {
    message_seq: i64,
    #[serde(flatten)]
    inspection: InspectionDto,
}

#[derive(Serialize)]
struct TighteningMessage {
    message_seq: i64,
    #[serde(flatten)]
    tightening: TighteningDto,
}

/// The same JSON as `GET /api/v1/tightenings/{id}`, plus `message_seq`.
pub(super) fn tightening(record: &TighteningRecord, station_seq: i64) -> Vec<u8> {
    let message = TighteningMessage { message_seq: station_seq, tightening: TighteningDto::from(record) };
    serde_json::to_vec(&message).expect("plain data serialises")
}

#[derive(Serialize)]
struct AnomalyMessage {
    message_seq: i64,
    #[serde(flatten)]
    event: PipelineEventDto,
}

/// A pipeline's raised anomaly, as `GET /api/v1/pipelines/{id}/events` lists it.
pub(super) fn anomaly(event: &PipelineEvent, station_seq: i64) -> Vec<u8> {
    let message = AnomalyMessage { message_seq: station_seq, event: PipelineEventDto::from(event) };
    serde_json::to_vec(&message).expect("plain data serialises")
}

pub(super) fn inspection(record: &InspectionRecord, station_seq: i64) -> Vec<u8> {
    let message = InspectionMessage { message_seq: station_seq, inspection: InspectionDto::from(record) };
    serde_json::to_vec(&message).expect("plain data serialises")
}

/// Severity of an alert, as the inspection seed's alerts use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Severity {
    Critical,
}

#[derive(Serialize)]
struct AlertMessage<'a> {
    id: String,
    severity: &'static str,
    title: &'a str,
    message: &'a str,
    source: &'a str,
    timestamp: String,
    acknowledged: bool,
}

/// The seed's alert shape (`id, severity, title, message, timestamp, acknowledged`) plus
/// `source`, the service or device it concerns.
pub(super) fn alert(severity: Severity, title: &str, message: &str, source: &str) -> Vec<u8> {
    let message = AlertMessage {
        id: uuid::Uuid::new_v4().to_string(),
        severity: match severity {
            Severity::Critical => "critical",
        },
        title,
        message,
        source,
        timestamp: crate::north::api::dto::rfc3339(chrono::Utc::now()),
        acknowledged: false,
    };
    serde_json::to_vec(&message).expect("plain data serialises")
}

/// An alert of the alert rules: the REST JSON of `GET /api/v1/alerts`.
pub(super) fn alert_record(alert: &crate::storage::AlertRecord) -> Vec<u8> {
    serde_json::to_vec(&crate::north::api::dto::AlertDto::from(alert)).expect("plain data serialises")
}

#[derive(Serialize)]
struct UnitRecordMessage {
    message_seq: i64,
    #[serde(flatten)]
    record: UnitRecordDto,
}

/// A finished unit record, as `GET /api/v1/assembly-records/{id}` gives it (with events).
pub(super) fn unit_record(record: &UnitRecord, events: &[UnitEvent], station_seq: i64) -> Vec<u8> {
    let message = UnitRecordMessage { message_seq: station_seq, record: UnitRecordDto::new(record, events, true) };
    serde_json::to_vec(&message).expect("plain data serialises")
}

/// The coaching state, as `GET /api/v1/coaching` gives it.
pub(super) fn coaching_state(status: &crate::coaching::CoachingStatus) -> Vec<u8> {
    serde_json::to_vec(&crate::north::api::dto::CoachingStatusDto::from(status)).expect("plain data serialises")
}
