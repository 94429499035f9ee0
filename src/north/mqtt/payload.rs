//! MQTT payloads. The inspection message carries the same JSON as the REST API's
//! `GET /api/v1/inspections/{id}`, plus `message_seq`: 1, 2, 3... per station, so a
//! subscriber can detect a gap (and deduplicate a redelivery by `id`).

use serde::Serialize;

use crate::north::api::dto::InspectionDto;
use crate::storage::InspectionRecord;

#[derive(Serialize)]
struct InspectionMessage {
    message_seq: i64,
    #[serde(flatten)]
    inspection: InspectionDto,
}

pub(super) fn inspection(record: &InspectionRecord, station_seq: i64) -> Vec<u8> {
    let message = InspectionMessage { message_seq: station_seq, inspection: InspectionDto::from(record) };
    serde_json::to_vec(&message).expect("plain data serialises")
}
